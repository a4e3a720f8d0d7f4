#include "training/dbrx_training_model.h"

#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>

#include <fmt/format.h>

#include "autograd/ops.h"
#include "autograd/tape.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "formats/safetensors.h"
#include "kernels/cpu/gemm.h"
#include "models/llm/dbrx_init.h"
#include "models/llm/dbrx_model.h"

namespace tessera::training {

namespace ag = tessera::autograd;

namespace {

bool is_norm_weight(const std::string& name) {
  return name.ends_with("norm_1.weight") || name.ends_with("norm_2.weight") || name.ends_with("norm_f.weight");
}

std::string block(int64_t layer, const char* rest) { return fmt::format("transformer.blocks.{}.{}", layer, rest); }

// Rows of the logits computed at once by the fused classifier: bounds its buffer to ~64 MB.
int64_t classifier_chunk(int64_t vocab) { return std::max<int64_t>(1, (16 << 20) / std::max<int64_t>(1, vocab)); }

// What one layer keeps from its forward for its backward.
struct LayerActivations {
  std::vector<float> x;                     // layer input [n, d]
  std::vector<float> mean1, rstd1, ln1;     // norm_1
  std::vector<float> qkv_pre, qkv;          // before clip; after clip and RoPE [n, qkv]
  std::vector<float> ctx;                   // attention output before out_proj [n, d]
  std::vector<float> h;                     // residual after attention [n, d]
  std::vector<float> mean2, rstd2, ln2;     // norm_2
  std::vector<float> jitter;                // router input noise [n, d] (training with jitter)
  std::vector<float> router_in;             // ln2 * jitter
  std::vector<float> probs;                 // router softmax [n, E]
  std::vector<int32_t> top_index;           // [n, k]
  std::vector<float> top_weight;            // [n, k]
  struct Expert {
    std::vector<int32_t> token, slot;       // routed tokens and their top-k slot
    std::vector<float> x, gate, up, act, y; // [m, d], [m, F] x3, [m, d]
  };
  std::vector<Expert> experts;
};

}  // namespace

void keep_freed_memory_for_reuse() {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

DbrxTrainingModel::DbrxTrainingModel(const DbrxConfig& config, bool) : config_(config) {
  config_.validate("model config");
  layout();
}

DbrxTrainingModel::DbrxTrainingModel(const DbrxConfig& config, uint64_t seed, float init_std)
    : DbrxTrainingModel(config, true) {
  Rng rng(seed);
  for (const auto& p : params_) {
    float* v = values_.data() + p.offset;
    if (is_norm_weight(p.name))
      std::fill(v, v + p.size, 1.0f);
    else
      for (size_t i = 0; i < p.size; ++i) v[i] = static_cast<float>(rng.normal()) * init_std;
  }
}

void DbrxTrainingModel::layout() {
  size_t offset = 0;
  for (auto& [name, shape] : DbrxModel::weight_shapes(config_)) {
    Parameter p;
    p.name = name;
    p.shape = shape;
    p.offset = offset;
    p.size = static_cast<size_t>(shape_numel(shape));
    p.decay = !is_norm_weight(name);
    offset += p.size;
    params_.push_back(std::move(p));
  }
  values_.assign(offset, 0.0f);
  grads_.assign(offset, 0.0f);
  const int64_t hd = config_.head_dim();
  inv_freq_.resize(static_cast<size_t>(hd / 2));
  for (int64_t i = 0; i < hd / 2; ++i)
    inv_freq_[i] = 1.0f / std::pow(static_cast<float>(config_.rope_theta), static_cast<float>(2 * i) / static_cast<float>(hd));
}

const Parameter& DbrxTrainingModel::parameter(const std::string& name) const {
  for (const auto& p : params_)
    if (p.name == name) return p;
  fail("no parameter named '{}'", name);
}

void DbrxTrainingModel::zero_grad() { std::fill(grads_.begin(), grads_.end(), 0.0f); }

DbrxTrainingModel DbrxTrainingModel::load(const std::filesystem::path& dir) {
  DbrxTrainingModel model(DbrxConfig::load(dir / "config.json"), true);
  SafetensorsCheckpoint checkpoint(dir);
  for (const auto& p : model.params_) {
    const Tensor t = checkpoint.get(p.name);
    if (t.shape() != p.shape)
      fail("{}: weight '{}' has shape {}, expected {} from config.json", checkpoint.file_of(p.name).string(), p.name,
           shape_str(t.shape()), shape_str(p.shape));
    if (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16)
      fail("{}: weight '{}' has dtype {}; training needs f32, bf16 or f16", checkpoint.file_of(p.name).string(),
           p.name, dtype_name(t.dtype()));
    convert_to_f32(t.dtype(), t.raw(), model.values_.data() + p.offset, p.size);
  }
  return model;
}

void save_model_folder(const std::filesystem::path& dir, const std::string& weights_file,
                       const std::vector<Parameter>& params, std::span<const float> values,
                       const nlohmann::json& config) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail("{}: cannot create folder: {}", dir.string(), ec.message());
  std::vector<std::pair<std::string, Tensor>> tensors;
  tensors.reserve(params.size());
  for (const auto& p : params) {
    Tensor t = Tensor::empty(p.shape);
    std::copy_n(values.data() + p.offset, p.size, t.data<float>());
    tensors.emplace_back(p.name, std::move(t));
  }
  write_safetensors(dir / weights_file, tensors, {{"format", "pt"}});
  const auto tmp = dir / "config.json.tmp";
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << config.dump(2) << "\n";
    if (!out) fail("{}: cannot write", tmp.string());
  }
  std::filesystem::rename(tmp, dir / "config.json", ec);
  if (ec) fail("{}: cannot move into place: {}", (dir / "config.json").string(), ec.message());
}

void DbrxTrainingModel::save(const std::filesystem::path& dir) const {
  nlohmann::json cfg = config_.to_json();
  cfg["torch_dtype"] = "float32";
  save_model_folder(dir, "model.safetensors", params_, values_, cfg);
  std::error_code ec;
  bool copied = false;
  if (!tokenizer_source_.empty() && std::filesystem::is_directory(tokenizer_source_, ec)) {
    for (const auto& entry : std::filesystem::directory_iterator(tokenizer_source_, ec)) {
      const std::string name = entry.path().filename().string();
      if (name != "tokenizer.json" && name != "tokenizer_config.json" && name != "special_tokens_map.json" &&
          entry.path().extension() != ".tiktoken")
        continue;
      std::error_code copy_ec;
      std::filesystem::copy_file(entry.path(), dir / name, std::filesystem::copy_options::overwrite_existing, copy_ec);
      if (copy_ec) fail("{}: cannot copy into {}: {}", entry.path().string(), dir.string(), copy_ec.message());
      copied = true;
    }
  }
  if (!copied) write_dbrx_tokenizer_files(dir);
}

StepLoss DbrxTrainingModel::forward_backward(const TokenBatch& batch, float ce_scale, float aux_scale, Rng* jitter) {
  return run(batch, true, ce_scale, aux_scale, jitter);
}

StepLoss DbrxTrainingModel::evaluate(const TokenBatch& batch) { return run(batch, false, 0.0f, 0.0f, nullptr); }

StepLoss DbrxTrainingModel::run(const TokenBatch& batch, bool backward, float ce_scale, float aux_scale, Rng* jitter) {
  const auto& c = config_;
  const int64_t n = batch.rows * batch.seq, d = c.d_model, hd = c.head_dim(), nh = c.n_heads, nkv = c.kv_n_heads;
  const int64_t qkv_dim = c.qkv_dim(), ne = c.moe_num_experts, k = c.moe_top_k, f = c.ffn_hidden_size;
  const int64_t vocab = c.vocab_size, layers = c.n_layers;
  if (batch.rows <= 0 || batch.seq <= 0) fail("training batch is empty");
  if (batch.seq > c.max_seq_len) fail("sequence length {} is over the model's max_seq_len {}", batch.seq, c.max_seq_len);
  for (int64_t i = 0; i < n; ++i) {
    if (batch.inputs[i] < 0 || batch.inputs[i] >= vocab) fail("token id {} is outside the vocabulary (size {})", batch.inputs[i], vocab);
    if (batch.targets[i] >= vocab) fail("target id {} is outside the vocabulary (size {})", batch.targets[i], vocab);
  }
  const bool use_jitter = backward && jitter != nullptr && c.moe_jitter_eps && *c.moe_jitter_eps > 0;

  auto w = [&](const std::string& name) { return values_.data() + parameter(name).offset; };
  auto g = [&](const std::string& name) { return grads_.data() + parameter(name).offset; };

  std::vector<int64_t> positions(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) positions[i] = i % batch.seq;
  const ag::AttentionShape attn{batch.rows, batch.seq, nh, nkv, hd, qkv_dim, batch.segment_starts};
  if (batch.segment_starts)
    for (int64_t i = 0; i < n; ++i)
      if (batch.segment_starts[i] < 0 || batch.segment_starts[i] > i % batch.seq)
        fail("segment start {} of position {} is outside its row", batch.segment_starts[i], i % batch.seq);
  const ag::RopeTable rope(batch.seq, hd, inv_freq_.data());

  ag::Tape tape;
  std::vector<float> stream(static_cast<size_t>(n * d));
  std::vector<float> dstream;  // gradient of the residual stream while going back
  if (backward) dstream.assign(stream.size(), 0.0f);

  ag::embedding_forward(batch.inputs, n, w("transformer.wte.weight"), d, stream.data());
  if (backward)
    tape.push([&] { ag::embedding_backward(batch.inputs, n, dstream.data(), d, g("transformer.wte.weight")); });

  std::vector<LayerActivations> acts(static_cast<size_t>(layers));
  std::vector<double> pick_count(static_cast<size_t>(ne), 0.0), prob_sum(static_cast<size_t>(ne), 0.0);

  for (int64_t l = 0; l < layers; ++l) {
    LayerActivations& a = acts[l];
    a.x = stream;
    a.mean1.resize(n);
    a.rstd1.resize(n);
    a.ln1.resize(n * d);
    ag::layer_norm_forward(a.x.data(), n, d, w(block(l, "norm_attn_norm.norm_1.weight")), c.layer_norm_eps,
                           a.ln1.data(), a.mean1.data(), a.rstd1.data());
    a.qkv_pre.resize(n * qkv_dim);
    ag::linear_forward(a.ln1.data(), n, d, w(block(l, "norm_attn_norm.attn.Wqkv.weight")), qkv_dim, a.qkv_pre.data());
    a.qkv.resize(n * qkv_dim);
    if (c.clip_qkv)
      ag::clamp_forward(a.qkv_pre.data(), n * qkv_dim, *c.clip_qkv, a.qkv.data());
    else
      a.qkv = a.qkv_pre;
    ag::rope_forward(a.qkv.data(), n, qkv_dim, nh, positions.data(), rope);
    ag::rope_forward(a.qkv.data() + nh * hd, n, qkv_dim, nkv, positions.data(), rope);
    a.ctx.resize(n * nh * hd);
    ag::attention_forward(attn, a.qkv.data(), a.qkv.data() + nh * hd, a.qkv.data() + (nh + nkv) * hd, a.ctx.data());
    a.h.resize(n * d);
    ag::linear_forward(a.ctx.data(), n, nh * hd, w(block(l, "norm_attn_norm.attn.out_proj.weight")), d, a.h.data());
    for (int64_t i = 0; i < n * d; ++i) a.h[i] += a.x[i];

    a.mean2.resize(n);
    a.rstd2.resize(n);
    a.ln2.resize(n * d);
    ag::layer_norm_forward(a.h.data(), n, d, w(block(l, "norm_attn_norm.norm_2.weight")), c.layer_norm_eps,
                           a.ln2.data(), a.mean2.data(), a.rstd2.data());
    const float* router_in = a.ln2.data();
    if (use_jitter) {
      const double eps = *c.moe_jitter_eps;
      a.jitter.resize(n * d);
      a.router_in.resize(n * d);
      for (int64_t i = 0; i < n * d; ++i) {
        a.jitter[i] = static_cast<float>(1.0 - eps + 2.0 * eps * jitter->uniform());
        a.router_in[i] = a.ln2[i] * a.jitter[i];
      }
      router_in = a.router_in.data();
    }
    std::vector<float> router_logits(n * ne);
    ag::linear_forward(router_in, n, d, w(block(l, "ffn.router.layer.weight")), ne, router_logits.data());
    a.probs.resize(n * ne);
    ag::softmax_forward(router_logits.data(), n, ne, a.probs.data());
    a.top_index.resize(n * k);
    a.top_weight.resize(n * k);
    a.experts.assign(static_cast<size_t>(ne), {});
    for (int64_t t = 0; t < n; ++t) {
      ag::top_k_route(a.probs.data() + t * ne, ne, k, c.moe_normalize_expert_weights, a.top_index.data() + t * k,
                      a.top_weight.data() + t * k);
      for (int64_t s = 0; s < k; ++s) {
        const int32_t e = a.top_index[t * k + s];
        a.experts[e].token.push_back(static_cast<int32_t>(t));
        a.experts[e].slot.push_back(static_cast<int32_t>(s));
        pick_count[e] += 1.0;
      }
      for (int64_t e = 0; e < ne; ++e) prob_sum[e] += a.probs[t * ne + e];
    }

    // Each expert multiplies only its own tokens (dropless); outputs are weighted and summed.
    const float* w1 = w(block(l, "ffn.experts.mlp.w1"));
    const float* v1 = w(block(l, "ffn.experts.mlp.v1"));
    const float* w2 = w(block(l, "ffn.experts.mlp.w2"));
    stream = a.h;
    for (int64_t e = 0; e < ne; ++e) {
      auto& ex = a.experts[e];
      const int64_t m = static_cast<int64_t>(ex.token.size());
      if (m == 0) continue;
      ex.x.resize(m * d);
      for (int64_t i = 0; i < m; ++i) std::copy_n(a.ln2.data() + ex.token[i] * d, d, ex.x.data() + i * d);
      ex.gate.resize(m * f);
      ex.up.resize(m * f);
      ex.act.resize(m * f);
      ex.y.resize(m * d);
      ag::linear_forward(ex.x.data(), m, d, w1 + e * f * d, f, ex.gate.data());
      ag::linear_forward(ex.x.data(), m, d, v1 + e * f * d, f, ex.up.data());
      ag::swiglu_forward(ex.gate.data(), ex.up.data(), m * f, ex.act.data());
      // w2 holds each expert as [F, d], used as act . w2.
      ag::gemm(false, false, m, d, f, 1.0f, ex.act.data(), f, w2 + e * f * d, d, 0.0f, ex.y.data(), d);
      for (int64_t i = 0; i < m; ++i) {
        const float weight = a.top_weight[ex.token[i] * k + ex.slot[i]];
        float* out = stream.data() + ex.token[i] * d;
        const float* y = ex.y.data() + i * d;
        for (int64_t j = 0; j < d; ++j) out[j] += weight * y[j];
      }
    }

    if (backward)
      tape.push([&, l] {
        LayerActivations& a = acts[l];
        // stream = h + experts(ln2(h)): dh starts as dstream, the expert path adds to it.
        std::vector<float> dh = dstream;
        std::vector<float> dln2(n * d, 0.0f);
        std::vector<float> dtop(n * k, 0.0f);
        float* dw1 = g(block(l, "ffn.experts.mlp.w1"));
        float* dv1 = g(block(l, "ffn.experts.mlp.v1"));
        float* dw2 = g(block(l, "ffn.experts.mlp.w2"));
        const float* w1 = w(block(l, "ffn.experts.mlp.w1"));
        const float* v1 = w(block(l, "ffn.experts.mlp.v1"));
        const float* w2 = w(block(l, "ffn.experts.mlp.w2"));
        for (int64_t e = 0; e < ne; ++e) {
          auto& ex = a.experts[e];
          const int64_t m = static_cast<int64_t>(ex.token.size());
          if (m == 0) continue;
          std::vector<float> dy(m * d), dact(m * f), dgate(m * f, 0.0f), dup(m * f, 0.0f), dx(m * d, 0.0f);
          for (int64_t i = 0; i < m; ++i) {
            const int64_t t = ex.token[i], slot = ex.slot[i];
            const float weight = a.top_weight[t * k + slot];
            const float* up = dstream.data() + t * d;
            const float* y = ex.y.data() + i * d;
            double dot = 0;
            for (int64_t j = 0; j < d; ++j) {
              dy[i * d + j] = weight * up[j];
              dot += static_cast<double>(up[j]) * y[j];
            }
            dtop[t * k + slot] += static_cast<float>(dot);
          }
          ag::gemm(false, true, m, f, d, 1.0f, dy.data(), d, w2 + e * f * d, d, 0.0f, dact.data(), f);
          ag::gemm(true, false, f, d, m, 1.0f, ex.act.data(), f, dy.data(), d, 1.0f, dw2 + e * f * d, d);
          ag::swiglu_backward(dact.data(), ex.gate.data(), ex.up.data(), m * f, dgate.data(), dup.data());
          ag::linear_backward(dgate.data(), ex.x.data(), m, d, w1 + e * f * d, f, dx.data(), dw1 + e * f * d);
          ag::linear_backward(dup.data(), ex.x.data(), m, d, v1 + e * f * d, f, dx.data(), dv1 + e * f * d);
          for (int64_t i = 0; i < m; ++i) {
            float* to = dln2.data() + ex.token[i] * d;
            const float* from = dx.data() + i * d;
            for (int64_t j = 0; j < d; ++j) to[j] += from[j];
          }
        }
        // Router: the routing weights' gradient, plus the load-balancing loss's, reach the
        // softmax probabilities; the top-k choice itself passes no gradient.
        std::vector<float> dprobs(n * ne, 0.0f);
        for (int64_t t = 0; t < n; ++t)
          ag::top_k_route_backward(dtop.data() + t * k, a.probs.data() + t * ne, a.top_index.data() + t * k, k,
                                   c.moe_normalize_expert_weights, dprobs.data() + t * ne);
        const double rows_all = static_cast<double>(layers * n);
        for (int64_t e = 0; e < ne; ++e) {
          const float daux = static_cast<float>(aux_scale * c.moe_loss_weight * static_cast<double>(ne) *
                                                (pick_count[e] / rows_all) / rows_all);
          for (int64_t t = 0; t < n; ++t) dprobs[t * ne + e] += daux;
        }
        std::vector<float> dlogits(n * ne, 0.0f);
        ag::softmax_backward(dprobs.data(), a.probs.data(), n, ne, dlogits.data());
        const float* router_in = a.jitter.empty() ? a.ln2.data() : a.router_in.data();
        if (a.jitter.empty()) {
          ag::linear_backward(dlogits.data(), router_in, n, d, w(block(l, "ffn.router.layer.weight")), ne, dln2.data(),
                              g(block(l, "ffn.router.layer.weight")));
        } else {
          std::vector<float> drouter(n * d, 0.0f);
          ag::linear_backward(dlogits.data(), router_in, n, d, w(block(l, "ffn.router.layer.weight")), ne,
                              drouter.data(), g(block(l, "ffn.router.layer.weight")));
          for (int64_t i = 0; i < n * d; ++i) dln2[i] += drouter[i] * a.jitter[i];
        }
        ag::layer_norm_backward(dln2.data(), a.h.data(), n, d, w(block(l, "norm_attn_norm.norm_2.weight")),
                                a.mean2.data(), a.rstd2.data(), dh.data(), g(block(l, "norm_attn_norm.norm_2.weight")));

        // h = x + out_proj(attention(rope(clip(Wqkv . ln1(x)))))
        std::vector<float> dctx(n * nh * hd, 0.0f);
        ag::linear_backward(dh.data(), a.ctx.data(), n, nh * hd, w(block(l, "norm_attn_norm.attn.out_proj.weight")), d,
                            dctx.data(), g(block(l, "norm_attn_norm.attn.out_proj.weight")));
        std::vector<float> dqkv(n * qkv_dim, 0.0f);
        ag::attention_backward(attn, a.qkv.data(), a.qkv.data() + nh * hd, a.qkv.data() + (nh + nkv) * hd, dctx.data(),
                               dqkv.data(), dqkv.data() + nh * hd, dqkv.data() + (nh + nkv) * hd);
        ag::rope_backward(dqkv.data(), n, qkv_dim, nh, positions.data(), rope);
        ag::rope_backward(dqkv.data() + nh * hd, n, qkv_dim, nkv, positions.data(), rope);
        std::vector<float> dpre;
        if (c.clip_qkv) {
          dpre.assign(n * qkv_dim, 0.0f);
          ag::clamp_backward(dqkv.data(), a.qkv_pre.data(), n * qkv_dim, *c.clip_qkv, dpre.data());
        } else {
          dpre = std::move(dqkv);
        }
        std::vector<float> dln1(n * d, 0.0f);
        ag::linear_backward(dpre.data(), a.ln1.data(), n, d, w(block(l, "norm_attn_norm.attn.Wqkv.weight")), qkv_dim,
                            dln1.data(), g(block(l, "norm_attn_norm.attn.Wqkv.weight")));
        // dx = dh (residual) + the norm_1 path.
        ag::layer_norm_backward(dln1.data(), a.x.data(), n, d, w(block(l, "norm_attn_norm.norm_1.weight")),
                                a.mean1.data(), a.rstd1.data(), dh.data(), g(block(l, "norm_attn_norm.norm_1.weight")));
        dstream = std::move(dh);
        a = LayerActivations{};  // free this layer's activations as soon as they are used
      });
  }

  StepLoss result;
  // Load balancing over all layers' router outputs, as transformers' load_balancing_loss_func.
  const double rows_all = static_cast<double>(layers * n);
  for (int64_t e = 0; e < ne; ++e) result.aux_loss += (pick_count[e] / rows_all) * (prob_sum[e] / rows_all);
  result.aux_loss *= static_cast<double>(ne);

  // Final norm and the classifier with cross-entropy, fused and chunked over rows: the logits of
  // a whole batch over a large vocabulary would not fit, and their gradient is known at once.
  std::vector<float> mean_f(n), rstd_f(n), lnf(n * d);
  ag::layer_norm_forward(stream.data(), n, d, w("transformer.norm_f.weight"), c.layer_norm_eps, lnf.data(),
                         mean_f.data(), rstd_f.data());
  const std::string head = c.tie_word_embeddings ? "transformer.wte.weight" : "lm_head.weight";
  const float* w_head = w(head);
  std::vector<float> dlnf;
  if (backward) dlnf.assign(n * d, 0.0f);
  const int64_t chunk = classifier_chunk(vocab);
  std::vector<float> logits(static_cast<size_t>(std::min(chunk, n) * vocab));
  for (int64_t r0 = 0; r0 < n; r0 += chunk) {
    const int64_t rows = std::min(chunk, n - r0);
    ag::linear_forward(lnf.data() + r0 * d, rows, d, w_head, vocab, logits.data());
    for (int64_t r = 0; r < rows; ++r) result.counted += batch.targets[r0 + r] >= 0 ? 1 : 0;
    result.ce_sum += ag::cross_entropy(logits.data(), batch.targets + r0, rows, vocab, ce_scale,
                                       backward ? logits.data() : nullptr);
    if (backward)
      ag::linear_backward(logits.data(), lnf.data() + r0 * d, rows, d, w_head, vocab, dlnf.data() + r0 * d, g(head));
  }
  if (!backward) return result;

  ag::layer_norm_backward(dlnf.data(), stream.data(), n, d, w("transformer.norm_f.weight"), mean_f.data(),
                          rstd_f.data(), dstream.data(), g("transformer.norm_f.weight"));
  tape.backward();
  return result;
}

}  // namespace tessera::training
