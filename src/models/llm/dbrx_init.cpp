#include "models/llm/dbrx_init.h"

#include <fstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/paths.h"
#include "core/progress.h"
#include "core/rng.h"
#include "models/llm/dbrx_model.h"

namespace tessera {

using nlohmann::json;

namespace {

void write_json(const std::filesystem::path& path, const json& value) {
  std::ofstream out(path);
  if (!out) fail("{}: cannot write", path.string());
  out << value.dump(2) << "\n";
  if (!out) fail("{}: write failed", path.string());
}

bool is_norm(const std::string& name) { return name.find("norm") != std::string::npos; }

}  // namespace

void write_dbrx_tokenizer_files(const std::filesystem::path& dir) {
  const std::vector<std::pair<int, std::string>> specials = {
      {100257, "<|endoftext|>"}, {100258, "<|fim_prefix|>"}, {100259, "<|fim_middle|>"},
      {100260, "<|fim_suffix|>"}, {100276, "<|endofprompt|>"}, {100277, "<|pad|>"},
      {100278, "<|im_start|>"},  {100279, "<|im_end|>"}};
  json added = json::object();
  for (const auto& [id, content] : specials)
    added[std::to_string(id)] = {{"content", content}, {"lstrip", false}, {"rstrip", false},
                                 {"normalized", false}, {"single_word", false}, {"special", true}};
  json config = {
      {"added_tokens_decoder", added},
      {"bos_token", "<|endoftext|>"},
      {"eos_token", "<|endoftext|>"},
      {"pad_token", "<|pad|>"},
      {"unk_token", "<|endoftext|>"},
      {"model_max_length", 32768},
      {"tokenizer_class", "TiktokenTokenizerWrapper"},
      {"chat_template",
       "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
       "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"},
  };
  write_json(dir / "tokenizer_config.json", config);
  const auto ranks = models_dir() / "tokenizers" / "cl100k_base.tiktoken";
  std::error_code ec;
  if (std::filesystem::exists(ranks))
    std::filesystem::copy_file(ranks, dir / "cl100k_base.tiktoken", std::filesystem::copy_options::overwrite_existing, ec);
  if (ec) fail("{}: cannot copy the tokenizer: {}", (dir / "cl100k_base.tiktoken").string(), ec.message());
}

void write_random_dbrx(const DbrxConfig& config, const std::filesystem::path& dir, const DbrxInitOptions& options) {
  config.validate("preset");
  if (options.dtype != DType::F32 && options.dtype != DType::BF16 && options.dtype != DType::F16)
    fail("--dtype must be f32, bf16 or f16");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail("{}: cannot create folder: {}", dir.string(), ec.message());

  json cfg = config.to_json();
  cfg["torch_dtype"] = options.dtype == DType::F32 ? "float32" : options.dtype == DType::BF16 ? "bfloat16" : "float16";
  write_json(dir / "config.json", cfg);
  write_dbrx_tokenizer_files(dir);

  // Header first (offsets follow from the shapes), then the data, streamed.
  const auto shapes = DbrxModel::weight_shapes(config);
  const size_t elem = dtype_size(options.dtype);
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  size_t offset = 0;
  for (const auto& [name, shape] : shapes) {
    const size_t bytes = static_cast<size_t>(shape_numel(shape)) * elem;
    header[name] = {{"dtype", std::string(dtype_safetensors_name(options.dtype))},
                    {"shape", shape},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');

  const auto path = dir / "model.safetensors";
  const auto tmp = dir / "model.safetensors.tmp";
  std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
  if (!out) fail("{}: cannot write", tmp.string());
  const uint64_t len = text.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((len >> (8 * i)) & 0xff));
  out.write(text.data(), static_cast<std::streamsize>(text.size()));

  Rng rng(options.seed);
  ProgressBar bar("init", static_cast<int64_t>(offset), "B");
  if (!options.progress) bar.finish();
  constexpr size_t kChunk = 1 << 20;
  std::vector<float> values;
  std::vector<char> encoded(kChunk * elem);
  size_t written = 0;
  for (const auto& [name, shape] : shapes) {
    size_t remaining = static_cast<size_t>(shape_numel(shape));
    while (remaining > 0) {
      const size_t n = std::min(remaining, kChunk);
      values.resize(n);
      for (auto& v : values) v = is_norm(name) ? 1.0f : static_cast<float>(rng.normal()) * options.init_std;
      convert_from_f32(options.dtype, values.data(), encoded.data(), n);
      out.write(encoded.data(), static_cast<std::streamsize>(n * elem));
      remaining -= n;
      written += n * elem;
      if (options.progress) bar.update(static_cast<int64_t>(written));
    }
  }
  out.flush();
  if (!out) fail("{}: write failed (disk full?)", tmp.string());
  out.close();
  if (options.progress) bar.finish();
  std::filesystem::rename(tmp, path, ec);
  if (ec) fail("{}: cannot move into place: {}", path.string(), ec.message());
}

}  // namespace tessera
