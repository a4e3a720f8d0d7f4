#pragma once
// One error type for everything a user can cause: bad files, bad flags, bad requests.
// The message is a single line that names the file/field and the problem; the CLI prints it
// and exits with code 2, the server turns it into an error object.
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace tessera {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

template <typename... Args>
[[noreturn]] inline void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace tessera
