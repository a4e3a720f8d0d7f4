#pragma once
// Helpers shared by the tests: paths, temporary folders, running the tessera binary.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <string>

#include "core/error.h"
#include "core/paths.h"

namespace tessera::testing {

inline std::filesystem::path source_dir() { return source_tree_dir(); }
// The tessera executable next to the tests (tests/test_paths.cpp).
const char* tessera_binary();
inline std::filesystem::path fixtures() { return source_dir() / "tests" / "fixtures"; }

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() / ("tessera-test-" + std::to_string(rd()) + std::to_string(getpid()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// The message of the tessera::Error that fn throws, or "" when it throws none.
inline std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

inline void write_file(const std::filesystem::path& path, const std::string& content) {
  std::ofstream out(path, std::ios::binary);
  out << content;
}

inline std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct CommandResult {
  int exit_code = -1;
  std::string out;   // stdout
  std::string err;   // stderr
  long peak_rss_kb = 0;
};

// Runs the tessera binary with `args` (a shell-quoted string), capturing stdout and stderr.
// The peak RSS is the child's (getrusage of the waited-for process).
inline CommandResult run_tessera(const std::string& args, const std::string& stdin_path = "/dev/null") {
  TempDir tmp;
  const auto out = tmp / "out", err = tmp / "err";
  const std::string cmd = std::string("'") + tessera_binary() + "' " + args + " >'" + out.string() + "' 2>'" +
                          err.string() + "' <'" + stdin_path + "'";
  CommandResult r;
  pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  struct rusage usage {};
  wait4(pid, &status, 0, &usage);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.peak_rss_kb = usage.ru_maxrss;
  r.out = read_file(out);
  r.err = read_file(err);
  return r;
}

// Sets an environment variable (or unsets it, for a null value) for one scope and puts back
// what was there.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      setenv(name, value, 1);
    else
      unsetenv(name);
  }
  ScopedEnv(const char* name, const std::string& value) : ScopedEnv(name, value.c_str()) {}
  ~ScopedEnv() {
    if (old_)
      setenv(name_, old_->c_str(), 1);
    else
      unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace tessera::testing
