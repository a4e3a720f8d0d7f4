#pragma once
// safetensors: an 8-byte little-endian header length, a JSON header mapping names to
// {dtype, shape, data_offsets}, then the raw data. Files are memory-mapped and tensors are
// views into the mapping (zero-copy). Every structural problem is reported as one line naming
// the file: header past the end, overlapping or out-of-range offsets, unknown dtypes, sizes
// that do not match the shape.
#include <cstddef>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace tessera {

struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  size_t begin = 0;  // offsets into the data section
  size_t end = 0;
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // in header order
  std::map<std::string, std::string> metadata;
  size_t data_start = 0;                  // byte offset of the data section in the file
};

// Parses and validates the header of a whole file held in memory. `origin` names the file in
// error messages. Throws tessera::Error.
SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file, const std::string& origin);

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const SafetensorsEntry& entry(const std::string& name) const;
  Tensor get(const std::string& name) const;  // a view into the mapping
  std::vector<std::string> names() const;

 private:
  std::filesystem::path path_;
  std::shared_ptr<MappedFile> mapping_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

// A model's weights: model.safetensors, or shards listed by model.safetensors.index.json, or
// else every *.safetensors file in the folder.
class SafetensorsCheckpoint {
 public:
  explicit SafetensorsCheckpoint(const std::filesystem::path& dir);

  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  Tensor get(const std::string& name) const;  // throws naming the folder if missing
  const SafetensorsEntry& entry(const std::string& name) const;
  const std::filesystem::path& file_of(const std::string& name) const;
  std::vector<std::string> names() const;
  size_t total_bytes() const;  // size of all tensor data

 private:
  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;
};

// Writes tensors (any dtype, any strides) to `path` atomically (a temporary file renamed into
// place), header padded to 8 bytes so the data is aligned.
void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace tessera
