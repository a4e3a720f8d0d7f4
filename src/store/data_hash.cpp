#include "store/data_hash.h"

#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <fstream>
#include <memory>
#include <system_error>

#include <fmt/format.h>

#include "core/error.h"

namespace tessera {

namespace {

namespace fs = std::filesystem;

struct DataFile {
  std::string name;  // relative to where it was found, with '/' separators
  fs::path path;
};

bool hidden(const fs::path& p) {
  const std::string name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

void collect(const fs::path& root, std::vector<DataFile>& out) {
  std::error_code ec;
  const auto status = fs::status(root, ec);
  if (ec || !fs::exists(status)) fail("{}: no such file or folder (hashing the training data)", root.string());
  if (fs::is_regular_file(status)) {
    out.push_back({root.filename().generic_string(), root});
    return;
  }
  if (!fs::is_directory(status)) fail("{}: neither a file nor a folder (hashing the training data)", root.string());
  fs::recursive_directory_iterator it(root, fs::directory_options::follow_directory_symlink, ec), end;
  if (ec) fail("{}: cannot list the folder: {}", root.string(), ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) fail("{}: cannot list the folder: {}", root.string(), ec.message());
    if (hidden(it->path())) {
      if (it->is_directory(ec)) it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file(ec)) out.push_back({it->path().lexically_relative(root).generic_string(), it->path()});
  }
}

struct DigestContext {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ~DigestContext() { EVP_MD_CTX_free(ctx); }
};

}  // namespace

std::string hash_data_files(const std::vector<fs::path>& paths) {
  std::vector<DataFile> files;
  for (const auto& p : paths) collect(p, files);
  // Ties (the same relative name under two folders) are broken by the full path, so the order
  // of `paths` does not matter either.
  std::sort(files.begin(), files.end(), [](const DataFile& a, const DataFile& b) {
    return a.name != b.name ? a.name < b.name : a.path.generic_string() < b.path.generic_string();
  });

  DigestContext digest;
  if (!digest.ctx || EVP_DigestInit_ex(digest.ctx, EVP_sha256(), nullptr) != 1) fail("SHA-256 is not available");
  auto update = [&](const void* data, size_t size) {
    if (EVP_DigestUpdate(digest.ctx, data, size) != 1) fail("SHA-256 failed");
  };
  std::vector<char> buffer(size_t{1} << 20);
  for (const auto& f : files) {
    std::ifstream in(f.path, std::ios::binary);
    if (!in) fail("{}: cannot read the file (hashing the training data)", f.path.string());
    std::error_code ec;
    const uint64_t size = fs::file_size(f.path, ec);
    if (ec) fail("{}: cannot read the size: {}", f.path.string(), ec.message());
    update(f.name.data(), f.name.size() + 1);  // with its terminating NUL
    std::array<unsigned char, 8> le{};
    for (size_t i = 0; i < 8; ++i) le[i] = static_cast<unsigned char>(size >> (8 * i));
    update(le.data(), le.size());
    uint64_t read = 0;
    while (in) {
      in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
      const auto got = static_cast<size_t>(in.gcount());
      if (got) update(buffer.data(), got);
      read += got;
    }
    if (in.bad() || read != size) fail("{}: the file changed or could not be read while hashing", f.path.string());
  }
  std::array<unsigned char, EVP_MAX_MD_SIZE> out{};
  unsigned int length = 0;
  if (EVP_DigestFinal_ex(digest.ctx, out.data(), &length) != 1 || length != 32) fail("SHA-256 failed");
  std::string hex;
  hex.reserve(64);
  for (unsigned int i = 0; i < length; ++i) hex += fmt::format("{:02x}", out[i]);
  return hex;
}

}  // namespace tessera
