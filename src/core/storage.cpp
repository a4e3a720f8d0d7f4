#include "core/storage.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <string_view>

#include "core/error.h"

namespace tessera {

namespace {
class HeapStorage final : public Storage {
 public:
  explicit HeapStorage(size_t bytes) : size_(bytes) {
    size_t rounded = (bytes + 63) / 64 * 64;
    if (rounded == 0) rounded = 64;
    data_ = static_cast<std::byte*>(std::aligned_alloc(64, rounded));
    if (!data_) fail("out of memory allocating {} bytes", bytes);
    std::memset(data_, 0, rounded);
  }
  ~HeapStorage() override { std::free(data_); }
  std::byte* data() override { return data_; }
  size_t size() const override { return size_; }

 private:
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};
}  // namespace

std::shared_ptr<Storage> Storage::allocate(size_t bytes) { return std::make_shared<HeapStorage>(bytes); }

namespace {

constexpr size_t kHugePage = size_t{2} << 20;

bool transparent_huge_pages_offered() {
  std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  return std::getline(in, line) && line.find("[never]") == std::string::npos;
}

size_t mem_available_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  size_t kb = 0;
  while (in >> key >> kb) {
    if (key == "MemAvailable:") return kb * 1024;
    in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return 0;
}

}  // namespace

FileResidency weights_residency(size_t file_bytes) {
  const char* env = std::getenv("TESSERA_HUGEPAGES");
  const std::string_view choice = env ? env : "";
  if (choice == "0" || !transparent_huge_pages_offered()) return FileResidency::Mapped;
  if (choice == "1") return FileResidency::HugePages;
  const bool big = file_bytes >= (size_t{32} << 20);
  const bool fits = mem_available_bytes() >= file_bytes + file_bytes / 2 + (size_t{512} << 20);
  return big && fits ? FileResidency::HugePages : FileResidency::Mapped;
}

MappedFile::MappedFile(const std::filesystem::path& path, FileResidency residency) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", path.string(), std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail("{}: cannot stat: {}", path.string(), std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file", path.string());
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0 && residency == FileResidency::HugePages) {
    // Anonymous memory aligned to 2 MB and advised for huge pages, filled by reading the file.
    const size_t rounded = (size_ + kHugePage - 1) / kHugePage * kHugePage;
    region_size_ = rounded + kHugePage;
    region_ = ::mmap(nullptr, region_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region_ == MAP_FAILED) {
      region_ = nullptr;  // no room: fall back to mapping the file
    } else {
      auto* aligned = reinterpret_cast<std::byte*>((reinterpret_cast<uintptr_t>(region_) + kHugePage - 1) &
                                                   ~uintptr_t{kHugePage - 1});
      ::madvise(aligned, rounded, MADV_HUGEPAGE);
      size_t done = 0;
      while (done < size_) {
        const ssize_t got = ::pread(fd, aligned + done, std::min(size_ - done, size_t{64} << 20), static_cast<off_t>(done));
        if (got <= 0) {
          const int err = got < 0 ? errno : EIO;
          if (got < 0 && err == EINTR) continue;
          ::munmap(region_, region_size_);
          ::close(fd);
          fail("{}: cannot read: {}", path.string(), got < 0 ? std::strerror(err) : "file shrank while being read");
        }
        done += static_cast<size_t>(got);
      }
      ::mprotect(aligned, rounded, PROT_READ);
      data_ = aligned;
      residency_ = FileResidency::HugePages;
    }
  }
  if (size_ > 0 && !data_) {
    void* mapped = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (mapped == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      fail("{}: cannot map: {}", path.string(), std::strerror(err));
    }
    data_ = static_cast<std::byte*>(mapped);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (region_)
    ::munmap(region_, region_size_);
  else if (data_)
    ::munmap(data_, size_);
}

}  // namespace tessera
