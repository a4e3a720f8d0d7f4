#pragma once
// Bytes that tensors view: an aligned heap block, or a read-only memory-mapped file, so that
// weights on disk are used in place (zero-copy) instead of being read into memory.
#include <cstddef>
#include <filesystem>
#include <memory>

namespace tessera {

enum class Device : uint8_t { CPU, CUDA };

class Storage {
 public:
  virtual ~Storage() = default;
  virtual std::byte* data() = 0;
  virtual size_t size() const = 0;
  virtual bool is_mapped() const { return false; }
  virtual Device device() const { return Device::CPU; }
  const std::byte* data() const { return const_cast<Storage*>(this)->data(); }

  // 64-byte aligned, zero-filled heap memory.
  static std::shared_ptr<Storage> allocate(size_t bytes);
};

class MappedFile final : public Storage {
 public:
  // Maps the whole file read-only; throws tessera::Error naming the file on failure.
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile() override;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::byte* data() override { return data_; }
  size_t size() const override { return size_; }
  bool is_mapped() const override { return true; }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::byte* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace tessera
