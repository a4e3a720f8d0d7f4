#include "formats/safetensors.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace tessera {

using nlohmann::json;

SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file, const std::string& origin) {
  if (file.size() < 8) fail("{}: not a safetensors file ({} bytes, too short for the header length)", origin, file.size());
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(file[i]);
  if (header_len > file.size() - 8)
    fail("{}: header length {} runs past the end of the file ({} bytes)", origin, header_len, file.size());
  if (header_len > 100'000'000) fail("{}: header length {} is implausibly large", origin, header_len);

  const char* text = reinterpret_cast<const char*>(file.data() + 8);
  json header;
  try {
    header = json::parse(text, text + header_len);
  } catch (const json::exception& e) {
    fail("{}: header is not valid JSON ({})", origin, e.what());
  }
  if (!header.is_object()) fail("{}: header is not a JSON object", origin);

  SafetensorsHeader out;
  out.data_start = 8 + header_len;
  const size_t data_size = file.size() - out.data_start;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      if (!value.is_object()) fail("{}: __metadata__ is not an object", origin);
      for (const auto& [key, item] : value.items()) {
        if (!item.is_string()) fail("{}: __metadata__.{} is not a string", origin, key);
        out.metadata[key] = item.get<std::string>();
      }
      continue;
    }
    if (!value.is_object()) fail("{}: tensor '{}' is not an object", origin, name);
    SafetensorsEntry entry;
    entry.name = name;
    auto dtype_it = value.find("dtype");
    if (dtype_it == value.end() || !dtype_it->is_string()) fail("{}: tensor '{}' has no dtype", origin, name);
    auto dtype = dtype_from_safetensors(dtype_it->get<std::string>());
    if (!dtype) fail("{}: tensor '{}' has unsupported dtype '{}'", origin, name, dtype_it->get<std::string>());
    entry.dtype = *dtype;

    auto shape_it = value.find("shape");
    if (shape_it == value.end() || !shape_it->is_array()) fail("{}: tensor '{}' has no shape", origin, name);
    uint64_t numel = 1;
    for (const auto& d : *shape_it) {
      if (!d.is_number_unsigned()) fail("{}: tensor '{}' has a bad shape entry {}", origin, name, d.dump());
      uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && numel > std::numeric_limits<uint64_t>::max() / dim / 8)
        fail("{}: tensor '{}' shape is too large", origin, name);
      numel *= dim;
      entry.shape.push_back(static_cast<int64_t>(dim));
    }

    auto offsets_it = value.find("data_offsets");
    if (offsets_it == value.end() || !offsets_it->is_array() || offsets_it->size() != 2 ||
        !(*offsets_it)[0].is_number_unsigned() || !(*offsets_it)[1].is_number_unsigned())
      fail("{}: tensor '{}' has bad data_offsets", origin, name);
    uint64_t begin = (*offsets_it)[0].get<uint64_t>(), end = (*offsets_it)[1].get<uint64_t>();
    if (begin > end) fail("{}: tensor '{}' data_offsets [{}, {}] are reversed", origin, name, begin, end);
    if (end > data_size)
      fail("{}: tensor '{}' data_offsets [{}, {}] run past the end of the data ({} bytes; file truncated?)", origin,
           name, begin, end, data_size);
    if (end - begin != numel * dtype_size(entry.dtype))
      fail("{}: tensor '{}' has {} bytes but shape {} of {} needs {}", origin, name, end - begin,
           shape_str(entry.shape), dtype_name(entry.dtype), numel * dtype_size(entry.dtype));
    entry.begin = begin;
    entry.end = end;
    out.entries.push_back(std::move(entry));
  }

  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& entry : out.entries) by_offset.push_back(&entry);
  std::sort(by_offset.begin(), by_offset.end(),
            [](auto* a, auto* b) { return a->begin != b->begin ? a->begin < b->begin : a->end < b->end; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    if (by_offset[i]->begin < by_offset[i - 1]->end)
      fail("{}: tensors '{}' and '{}' overlap", origin, by_offset[i - 1]->name, by_offset[i]->name);
  }
  return out;
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path)
    : path_(path), mapping_(std::make_shared<MappedFile>(path)) {
  header_ = parse_safetensors_header(std::span<const std::byte>(mapping_->data(), mapping_->size()), path.string());
  for (size_t i = 0; i < header_.entries.size(); ++i) index_[header_.entries[i].name] = i;
}

const SafetensorsEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail("{}: no tensor named '{}'", path_.string(), name);
  return header_.entries[it->second];
}

Tensor SafetensorsFile::get(const std::string& name) const {
  const SafetensorsEntry& e = entry(name);
  return Tensor(mapping_, header_.data_start + e.begin, e.dtype, e.shape);
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& e : header_.entries) out.push_back(e.name);
  return out;
}

SafetensorsCheckpoint::SafetensorsCheckpoint(const std::filesystem::path& dir) : dir_(dir) {
  namespace fs = std::filesystem;
  std::vector<fs::path> shard_paths;
  const fs::path index_path = dir / "model.safetensors.index.json";
  if (fs::exists(index_path)) {
    json index;
    try {
      std::ifstream in(index_path);
      index = json::parse(in);
    } catch (const json::exception& e) {
      fail("{}: not valid JSON ({})", index_path.string(), e.what());
    }
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      fail("{}: no weight_map object", index_path.string());
    std::map<std::string, size_t> shard_ids;
    std::vector<std::pair<std::string, std::string>> expected;
    for (const auto& [name, file] : index["weight_map"].items()) {
      if (!file.is_string()) fail("{}: weight_map.{} is not a file name", index_path.string(), name);
      std::string shard = file.get<std::string>();
      if (shard.find('/') != std::string::npos || shard == "..")
        fail("{}: weight_map.{} names a file outside the folder", index_path.string(), name);
      if (!shard_ids.count(shard)) {
        shard_ids[shard] = shard_paths.size();
        shard_paths.push_back(dir / shard);
      }
      expected.emplace_back(name, shard);
    }
    for (const auto& path : shard_paths) {
      if (!fs::exists(path)) fail("{}: shard {} is missing", index_path.string(), path.filename().string());
      files_.push_back(std::make_unique<SafetensorsFile>(path));
    }
    for (const auto& [name, shard] : expected) {
      size_t id = shard_ids[shard];
      if (!files_[id]->contains(name))
        fail("{}: index says '{}' is in {}, but it is not there", index_path.string(), name, shard);
      where_[name] = id;
    }
    return;
  }
  if (fs::exists(dir / "model.safetensors")) {
    shard_paths.push_back(dir / "model.safetensors");
  } else if (fs::is_directory(dir)) {
    for (const auto& item : fs::directory_iterator(dir))
      if (item.path().extension() == ".safetensors") shard_paths.push_back(item.path());
    std::sort(shard_paths.begin(), shard_paths.end());
  }
  if (shard_paths.empty()) fail("{}: no model.safetensors (or *.safetensors weights) found", dir.string());
  for (const auto& path : shard_paths) {
    files_.push_back(std::make_unique<SafetensorsFile>(path));
    for (const auto& name : files_.back()->names()) {
      if (where_.count(name)) fail("{}: tensor '{}' appears in more than one file", dir.string(), name);
      where_[name] = files_.size() - 1;
    }
  }
}

Tensor SafetensorsCheckpoint::get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail("{}: weight '{}' is missing", dir_.string(), name);
  return files_[it->second]->get(name);
}

const SafetensorsEntry& SafetensorsCheckpoint::entry(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail("{}: weight '{}' is missing", dir_.string(), name);
  return files_[it->second]->entry(name);
}

const std::filesystem::path& SafetensorsCheckpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail("{}: weight '{}' is missing", dir_.string(), name);
  return files_[it->second]->path();
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  for (const auto& [name, _] : where_) out.push_back(name);
  return out;
}

size_t SafetensorsCheckpoint::total_bytes() const {
  size_t total = 0;
  for (const auto& file : files_)
    for (const auto& e : file->header().entries) total += e.end - e.begin;
  return total;
}

void write_safetensors(const std::filesystem::path& path,
                       const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  size_t offset = 0;
  std::vector<Tensor> contiguous;
  for (const auto& [name, tensor] : tensors) {
    if (header.contains(name)) fail("{}: tensor '{}' written twice", path.string(), name);
    contiguous.push_back(tensor.contiguous());
    size_t bytes = tensor.nbytes();
    header[name] = {{"dtype", std::string(dtype_safetensors_name(tensor.dtype()))},
                    {"shape", tensor.shape()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');

  const std::filesystem::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) fail("{}: cannot write", tmp.string());
    uint64_t len = text.size();
    char len_bytes[8];
    for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<char>((len >> (8 * i)) & 0xff);
    out.write(len_bytes, 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& tensor : contiguous)
      out.write(static_cast<const char*>(tensor.raw()), static_cast<std::streamsize>(tensor.nbytes()));
    out.flush();
    if (!out) fail("{}: write failed (disk full?)", tmp.string());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) fail("{}: cannot move into place: {}", path.string(), ec.message());
}

}  // namespace tessera
