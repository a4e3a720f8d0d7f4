#include "models/llm/quantize.h"

#include <cstring>

#include <fmt/format.h>

#include "core/error.h"
#include "core/progress.h"
#include "core/thread_pool.h"
#include "formats/gguf.h"
#include "kernels/cpu/quant.h"
#include "models/llm/language_model.h"

namespace tessera {

namespace {

// Row `r` of a float matrix as f32.
void read_row(const Tensor& t, int64_t r, float* out) {
  const int64_t cols = t.dim(-1);
  const auto* base = static_cast<const std::byte*>(t.raw()) + dtype_bytes(t.dtype(), static_cast<size_t>(r * cols));
  if (dtype_is_quantized(t.dtype()))
    kernels::dequantize_row(t.dtype(), base, out, cols);
  else
    convert_to_f32(t.dtype(), base, out, static_cast<size_t>(cols));
}

Tensor convert_matrix(const Tensor& t, DType dtype) {
  if (!t.defined() || t.dtype() == dtype) return t;
  const int64_t cols = t.dim(-1);
  if (dtype_is_quantized(dtype) && cols % static_cast<int64_t>(dtype_block_elems(dtype)) != 0) return t;
  const int64_t rows = t.numel() / cols;
  Tensor out = Tensor::empty(t.shape(), dtype);
  const size_t row_bytes = dtype_bytes(dtype, static_cast<size_t>(cols));
  parallel_for(static_cast<size_t>(rows), 16, [&](size_t r0, size_t r1) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (size_t r = r0; r < r1; ++r) {
      read_row(t, static_cast<int64_t>(r), row.data());
      void* dst = static_cast<std::byte*>(out.raw()) + r * row_bytes;
      if (dtype_is_quantized(dtype))
        kernels::quantize_row(dtype, row.data(), dst, cols);
      else
        convert_from_f32(dtype, row.data(), dst, static_cast<size_t>(cols));
    }
  });
  return out;
}

// [E*F, d] used as x.W per expert -> [E*d, F] used as x.W^T, in f32.
Tensor transpose_experts(const Tensor& down, int64_t experts) {
  const int64_t f = down.dim(0) / experts, d = down.dim(1);
  Tensor out = Tensor::empty({experts * d, f}, DType::F32);
  std::vector<float> row(static_cast<size_t>(d));
  for (int64_t e = 0; e < experts; ++e)
    for (int64_t i = 0; i < f; ++i) {
      read_row(down, e * f + i, row.data());
      for (int64_t j = 0; j < d; ++j) out.data<float>()[(e * d + j) * f + i] = row[j];
    }
  return out;
}

}  // namespace

DecoderWeights quantize_weights(const DecoderConfig& config, const DecoderWeights& weights, DType dtype,
                                bool show_progress) {
  if (dtype != DType::Q8_0 && dtype != DType::Q4_0 && dtype != DType::Q4_1 && dtype != DType::F32 &&
      dtype != DType::F16 && dtype != DType::BF16)
    fail("quantize: unsupported target type {} (use q8_0, q4_0, q4_1, f16, bf16 or f32)", dtype_name(dtype));
  // The output projection decides every token's distribution: 4-bit targets keep it at 8 bits.
  const DType head_type = dtype_is_quantized(dtype) ? DType::Q8_0 : dtype;
  DecoderWeights out;
  ProgressBar bar("quantize", static_cast<int64_t>(weights.layers.size()) + 2, "layers");
  if (!show_progress) bar.finish();
  out.embedding = convert_matrix(weights.embedding, dtype);
  out.final_norm = weights.final_norm;
  out.lm_head = weights.lm_head.raw() == weights.embedding.raw() ? out.embedding : convert_matrix(weights.lm_head, head_type);
  if (show_progress) bar.add(2);
  for (const auto& l : weights.layers) {
    DecoderLayer q = l;
    for (auto [src, dst] : {std::pair{&l.wqkv, &q.wqkv}, {&l.wq, &q.wq}, {&l.wk, &q.wk}, {&l.wv, &q.wv}, {&l.wo, &q.wo},
                            {&l.gate, &q.gate}, {&l.up, &q.up}})
      *dst = convert_matrix(*src, dtype);
    if (l.down_is_nn) {
      q.down = convert_matrix(transpose_experts(l.down, config.n_experts), dtype);
      q.down_is_nn = false;
    } else {
      q.down = convert_matrix(l.down, dtype);
    }
    out.layers.push_back(std::move(q));
    if (show_progress) bar.add(1);
  }
  return out;
}

}  // namespace tessera

namespace tessera {

std::unique_ptr<LanguageModel> quantize_model(const LanguageModel& model, DType dtype) {
  const auto* decoder = dynamic_cast<const DecoderModel*>(&model);
  if (!decoder) fail("{}: this model cannot be quantized", model.info().name);
  return std::make_unique<DecoderModel>(decoder->config(),
                                        quantize_weights(decoder->config(), decoder->weights(), dtype, true),
                                        model.info().name, decoder->keep_alive());
}

void write_decoder_gguf(const DecoderConfig& c, const DecoderWeights& w, const std::filesystem::path& path,
                        const std::vector<std::pair<std::string, GgufValue>>& extra) {
  const std::string& arch = c.architecture;
  if (arch != "dbrx" && arch != "llama") fail("{}: cannot write architecture '{}' as GGUF", path.string(), arch);
  for (const auto& l : w.layers)
    if (l.down_is_nn) fail("{}: expert down projections must be transposed first (quantize_weights)", path.string());
  GgufWriter out(path);
  const std::string p = arch + ".";
  out.set_string("general.architecture", arch);
  out.set_string("general.name", path.stem().string());
  out.set_u32(p + "context_length", static_cast<uint32_t>(c.max_seq_len));
  out.set_u32(p + "embedding_length", static_cast<uint32_t>(c.d_model));
  out.set_u32(p + "block_count", static_cast<uint32_t>(c.n_layers));
  out.set_u32(p + "feed_forward_length", static_cast<uint32_t>(c.ffn_hidden));
  out.set_u32(p + "attention.head_count", static_cast<uint32_t>(c.n_heads));
  out.set_u32(p + "attention.head_count_kv", static_cast<uint32_t>(c.kv_heads));
  out.set_f32(p + "rope.freq_base", static_cast<float>(c.rope_theta));
  if (arch == "llama" && c.rope != RopeStyle::Interleaved)
    fail("{}: llama weights with rotate-half rotary embeddings would need their Q/K rows permuted", path.string());
  for (const auto& [key, value] : extra) out.set(key, value);
  if (arch == "dbrx") {
    if (c.expert_weight_norm_p != 1.0)
      fail("{}: GGUF dbrx files assume expert weights normalised to sum 1; this model uses {}", path.string(),
           c.expert_weight_norm_p ? fmt::format("p = {}", *c.expert_weight_norm_p) : "none");
    out.set_f32(p + "attention.clamp_kqv", c.clip_qkv.value_or(0.0f));
    out.set_u32(p + "expert_count", static_cast<uint32_t>(c.n_experts));
    out.set_u32(p + "expert_used_count", static_cast<uint32_t>(c.top_k));
    out.set_f32(p + "attention.layer_norm_epsilon", c.norm_eps);
  } else {
    out.set_f32(p + "attention.layer_norm_rms_epsilon", c.norm_eps);
    out.set_u32(p + "rope.dimension_count", static_cast<uint32_t>(c.head_dim));
  }
  auto blk = [](int64_t i, const char* name) { return fmt::format("blk.{}.{}", i, name); };
  out.add_tensor("token_embd.weight", w.embedding);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const auto& l = w.layers[i];
    out.add_tensor(blk(i, "attn_norm.weight"), l.attn_norm.to(DType::F32));
    out.add_tensor(blk(i, "attn_output.weight"), l.wo);
    if (arch == "dbrx") {
      out.add_tensor(blk(i, "attn_qkv.weight"), l.wqkv);
      out.add_tensor(blk(i, "attn_output_norm.weight"), l.ffn_norm.to(DType::F32));
      out.add_tensor(blk(i, "ffn_gate_inp.weight"), l.router);
      out.add_tensor(blk(i, "ffn_gate_exps.weight"), l.gate.view({c.n_experts, c.ffn_hidden, c.d_model}));
      out.add_tensor(blk(i, "ffn_up_exps.weight"), l.up.view({c.n_experts, c.ffn_hidden, c.d_model}));
      out.add_tensor(blk(i, "ffn_down_exps.weight"), l.down.view({c.n_experts, c.d_model, c.ffn_hidden}));
    } else {
      out.add_tensor(blk(i, "attn_q.weight"), l.wq);
      out.add_tensor(blk(i, "attn_k.weight"), l.wk);
      out.add_tensor(blk(i, "attn_v.weight"), l.wv);
      out.add_tensor(blk(i, "ffn_norm.weight"), l.ffn_norm.to(DType::F32));
      out.add_tensor(blk(i, "ffn_gate.weight"), l.gate);
      out.add_tensor(blk(i, "ffn_up.weight"), l.up);
      out.add_tensor(blk(i, "ffn_down.weight"), l.down);
    }
  }
  out.add_tensor("output_norm.weight", w.final_norm.to(DType::F32));
  if (w.lm_head.raw() != w.embedding.raw()) out.add_tensor("output.weight", w.lm_head);
  out.write();
}

}  // namespace tessera

namespace tessera {

std::filesystem::path quantize_model_files(const std::filesystem::path& source, DType dtype,
                                           const std::filesystem::path& out_dir) {
  namespace fs = std::filesystem;
  auto model = load_language_model(source);
  const auto* decoder = dynamic_cast<const DecoderModel*>(model.get());
  if (!decoder) fail("{}: this model cannot be quantized", source.string());
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) fail("{}: cannot create folder: {}", out_dir.string(), ec.message());

  std::vector<std::pair<std::string, GgufValue>> extra;
  const fs::path source_dir = fs::is_directory(source) ? source : source.parent_path();
  bool copied_tokenizer = false;
  for (const auto& item : fs::directory_iterator(source_dir)) {
    const auto name = item.path().filename().string();
    if (name == "tokenizer.json" || name == "tokenizer_config.json" || item.path().extension() == ".tiktoken" ||
        name == "generation_config.json") {
      fs::copy_file(item.path(), out_dir / name, fs::copy_options::overwrite_existing, ec);
      if (ec) fail("{}: cannot copy: {}", (out_dir / name).string(), ec.message());
      copied_tokenizer |= name != "generation_config.json";
    }
  }
  if (!copied_tokenizer && fs::is_regular_file(source)) {
    GgufFile file(source);
    for (const auto& [key, value] : file.metadata())
      if (key.rfind("tokenizer.", 0) == 0) extra.emplace_back(key, value);
  }
  const DecoderWeights weights = quantize_weights(decoder->config(), decoder->weights(), dtype, true);
  const fs::path out = out_dir / "model.gguf";
  write_decoder_gguf(decoder->config(), weights, out, extra);
  return out;
}

}  // namespace tessera
