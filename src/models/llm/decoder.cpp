#include "models/llm/decoder.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "core/thread_pool.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/quant.h"

namespace tessera {

using kernels::WeightMatrix;

namespace {

size_t tensor_bytes(const Tensor& t) { return t.defined() ? t.nbytes() : 0; }

// One row of an embedding table as f32, whatever its storage type.
void embedding_row(const Tensor& table, int32_t id, float* out) {
  const int64_t d = table.dim(1);
  const auto* base = static_cast<const std::byte*>(table.raw()) + dtype_bytes(table.dtype(), static_cast<size_t>(id) * d);
  if (dtype_is_quantized(table.dtype()))
    kernels::dequantize_row(table.dtype(), base, out, d);
  else
    convert_to_f32(table.dtype(), base, out, static_cast<size_t>(d));
}

}  // namespace

DecoderModel::DecoderModel(DecoderConfig config, DecoderWeights weights, std::string name,
                           std::shared_ptr<void> keep_alive)
    : config_(std::move(config)), weights_(std::move(weights)), keep_alive_(std::move(keep_alive)) {
  const auto& c = config_;
  info_.architecture = c.architecture;
  info_.name = std::move(name);
  info_.vocab_size = c.vocab_size;
  info_.max_seq_len = c.max_seq_len;
  info_.n_layers = c.n_layers;
  info_.kv_heads = c.kv_heads;
  info_.head_dim = c.head_dim;
  info_.parameters = c.parameters;
  info_.active_parameters = c.active_parameters;
  // Quantized models keep an f16 cache: half the memory, and llama.cpp's default.
  info_.kv_dtype = !weights_.layers.empty() && dtype_is_quantized(weights_.layers[0].wo.dtype()) ? DType::F16 : DType::F32;
  weight_bytes_ = tensor_bytes(weights_.embedding) + tensor_bytes(weights_.final_norm);
  if (weights_.lm_head.raw() != weights_.embedding.raw()) weight_bytes_ += tensor_bytes(weights_.lm_head);
  for (const auto& l : weights_.layers)
    for (const Tensor* t : {&l.attn_norm, &l.wqkv, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.router, &l.gate, &l.up,
                            &l.down})
      weight_bytes_ += tensor_bytes(*t);
  const int64_t half = c.head_dim / 2;
  inv_freq_.resize(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    // float32 arithmetic, matching how the references build their inverse frequencies.
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(c.head_dim);
    inv_freq_[i] = 1.0f / std::pow(static_cast<float>(c.rope_theta), exponent);
  }
}

void DecoderModel::norm(const Tensor& weight, const float* x, int64_t rows, float* y) const {
  const int64_t d = config_.d_model;
  const WeightMatrix w{weight.raw(), weight.dtype(), 1, d};
  if (config_.norm == NormKind::LayerNorm)
    kernels::layer_norm(x, rows, d, w, config_.norm_eps, y);
  else
    kernels::rms_norm(x, rows, d, w, config_.norm_eps, y);
}

void DecoderModel::rope(float* x, int64_t heads, int64_t pos) const {
  if (config_.rope == RopeStyle::RotateHalf)
    kernels::rope_rotate_half(x, heads, config_.head_dim, pos, inv_freq_.data());
  else
    kernels::rope_interleaved(x, heads, config_.head_dim, pos, inv_freq_.data());
}

void DecoderModel::attention(int64_t layer, const float* x, const RowPlaces& rows, float* out) {
  const auto& c = config_;
  const auto& lw = weights_.layers[layer];
  const int64_t hd = c.head_dim, nh = c.n_heads, nkv = c.kv_heads;
  const int64_t qkv_dim = (nh + 2 * nkv) * hd;
  const int64_t n = static_cast<int64_t>(rows.pos.size());

  std::vector<float> qkv(static_cast<size_t>(n * qkv_dim));
  if (lw.wqkv.defined()) {
    kernels::matmul_nt(x, n, WeightMatrix::of(lw.wqkv), qkv.data());
  } else {
    // Separate projections in one parallel loop, scattered into the fused row layout [q | k | v]
    // (a single row is that layout already).
    const int64_t widths[3] = {lw.wq.dim(0), lw.wk.dim(0), lw.wv.dim(0)};
    std::vector<float> separate;
    if (n > 1) separate.resize(static_cast<size_t>(n * qkv_dim));
    float* base = n > 1 ? separate.data() : qkv.data();
    float* outs[3] = {base, base + n * widths[0], base + n * (widths[0] + widths[1])};
    kernels::matmul_nt_multi(x, n, {{WeightMatrix::of(lw.wq), outs[0]}, {WeightMatrix::of(lw.wk), outs[1]},
                                    {WeightMatrix::of(lw.wv), outs[2]}});
    if (n > 1) {
      int64_t offset = 0;
      for (int i = 0; i < 3; ++i) {
        for (int64_t t = 0; t < n; ++t)
          std::copy_n(outs[i] + t * widths[i], widths[i], qkv.data() + t * qkv_dim + offset);
        offset += widths[i];
      }
    }
  }
  if (c.clip_qkv) kernels::clamp(qkv.data(), n * qkv_dim, *c.clip_qkv);

  int64_t longest = 0;
  for (int64_t t = 0; t < n; ++t) {
    float* row = qkv.data() + t * qkv_dim;
    const int64_t pos = rows.pos[t];
    rope(row, nh, pos);
    rope(row + nh * hd, nkv, pos);
    rows.cache[t]->store(layer, pos, row + nh * hd, row + (nh + nkv) * hd);
    longest = std::max(longest, pos + 1);
  }

  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const int64_t group = nh / nkv;
  // Jobs are (row, kv head, span of positions): the query heads of one group share each cached
  // row. Decoding has few (row, kv head) pairs, so their positions are split into spans that
  // keep every thread busy, merged below.
  const int64_t pairs = n * nkv;
  const auto threads = static_cast<int64_t>(ThreadPool::global().size());
  int64_t parts = 1;
  if (pairs < 2 * threads && longest >= 64) {
    const int64_t base = threads / std::gcd(pairs, threads);  // makes the job count a multiple of threads
    const int64_t want = (2 * threads + pairs - 1) / pairs;
    parts = std::min(base * ((want + base - 1) / base), std::max<int64_t>(1, longest / 32));
  }
  std::vector<float> part_max(static_cast<size_t>(n * nh * parts)), part_sum(part_max.size());
  std::vector<float> part_acc(part_max.size() * static_cast<size_t>(hd));
  parallel_for(static_cast<size_t>(pairs * parts), 1, [&](size_t begin, size_t end) {
    std::vector<kernels::KvRun> runs;
    for (size_t job = begin; job < end; ++job) {
      // The longest rows first, so the short ones even out the threads at the end.
      const int64_t t = n - 1 - static_cast<int64_t>(job) / (nkv * parts);
      const int64_t g = static_cast<int64_t>(job) / parts % nkv, c = static_cast<int64_t>(job) % parts;
      const KvCache& cache = *rows.cache[t];
      const int64_t visible = rows.pos[t] + 1;  // causal: positions 0..pos
      const int64_t j0 = visible * c / parts, j1 = visible * (c + 1) / parts;
      const int64_t bt = cache.block_tokens(), stride = cache.row_size();
      const size_t head_bytes = static_cast<size_t>(g * hd) * dtype_size(cache.dtype());
      runs.clear();
      for (int64_t j = j0, run = 0; j < j1; j += run) {
        run = std::min(bt - j % bt, j1 - j);  // positions stay contiguous within a cache block
        runs.push_back({static_cast<const char*>(cache.keys(layer, j)) + head_bytes,
                        static_cast<const char*>(cache.values(layer, j)) + head_bytes, run});
      }
      const int64_t o = (t * nh + g * group) * parts + c;
      kernels::attention_partial(qkv.data() + t * qkv_dim + g * group * hd, group, hd, scale, runs.data(),
                                 static_cast<int64_t>(runs.size()), stride, cache.dtype() == DType::F16,
                                 part_max.data() + o, part_sum.data() + o, part_acc.data() + o * hd, parts);
    }
  });
  std::vector<float> context(static_cast<size_t>(n * nh * hd));
  for (int64_t r = 0; r < n * nh; ++r)
    kernels::attention_merge(part_max.data() + r * parts, part_sum.data() + r * parts,
                             part_acc.data() + r * parts * hd, parts, hd, context.data() + r * hd);
  kernels::matmul_nt(context.data(), n, WeightMatrix::of(lw.wo), out);
}

void DecoderModel::dense_mlp(int64_t layer, const float* x, int64_t n, float* out) {
  const auto& lw = weights_.layers[layer];
  const int64_t f = config_.ffn_hidden;
  std::vector<float> gate(static_cast<size_t>(n * f)), up(gate.size());
  kernels::matmul_nt_multi(x, n, {{WeightMatrix::of(lw.gate), gate.data()}, {WeightMatrix::of(lw.up), up.data()}});
  kernels::silu_mul(gate.data(), up.data(), n * f);
  kernels::matmul_nt(gate.data(), n, WeightMatrix::of(lw.down), out);
}

void DecoderModel::experts(int64_t layer, const float* x, int64_t n, float* out) {
  const auto& c = config_;
  const auto& lw = weights_.layers[layer];
  const int64_t d = c.d_model, ne = c.n_experts, k = c.top_k, f = c.ffn_hidden;

  // Router: softmax over all experts, keep the top k, optionally renormalise by their p-norm.
  std::vector<float> probs(static_cast<size_t>(n * ne));
  kernels::matmul_nt(x, n, WeightMatrix::of(lw.router), probs.data());
  std::vector<std::vector<std::pair<int64_t, float>>> routed(static_cast<size_t>(ne));  // expert -> (token, weight)
  std::vector<int64_t> order(static_cast<size_t>(ne));
  for (int64_t t = 0; t < n; ++t) {
    float* p = probs.data() + t * ne;
    kernels::softmax(p, ne);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
    float norm = 1.0f;
    if (c.expert_weight_norm_p) {
      const double pw = *c.expert_weight_norm_p;
      double acc = 0;
      for (int64_t i = 0; i < k; ++i) acc += std::pow(std::fabs(static_cast<double>(p[order[i]])), pw);
      norm = static_cast<float>(std::pow(acc, 1.0 / pw));
    }
    for (int64_t i = 0; i < k; ++i) routed[order[i]].push_back({t, p[order[i]] / norm});
  }

  std::fill(out, out + n * d, 0.0f);
  const WeightMatrix gate = WeightMatrix::of(lw.gate), up = WeightMatrix::of(lw.up), down = WeightMatrix::of(lw.down);
  std::vector<int64_t> active;
  size_t most = 0;
  for (int64_t e = 0; e < ne; ++e) {
    if (!routed[e].empty()) active.push_back(e);
    most = std::max(most, routed[e].size());
  }
  // One expert's whole MLP for its tokens, into o ([tokens, d]).
  auto run_expert = [&](int64_t e, std::vector<float>& xs, std::vector<float>& g, std::vector<float>& u,
                        std::vector<float>& o) {
    const auto& tokens = routed[e];
    const int64_t m = static_cast<int64_t>(tokens.size());
    xs.resize(static_cast<size_t>(m * d));
    for (int64_t i = 0; i < m; ++i) std::copy_n(x + tokens[i].first * d, d, xs.data() + i * d);
    g.resize(static_cast<size_t>(m * f));
    u.resize(static_cast<size_t>(m * f));
    o.resize(static_cast<size_t>(m * d));
    kernels::matmul_nt(xs.data(), m, gate.row_block(e * f, (e + 1) * f), g.data());
    kernels::matmul_nt(xs.data(), m, up.row_block(e * f, (e + 1) * f), u.data());
    kernels::silu_mul(g.data(), u.data(), m * f);
    if (lw.down_is_nn)
      kernels::matmul_nn(g.data(), m, down.row_block(e * f, (e + 1) * f), o.data(), false);
    else
      kernels::matmul_nt(g.data(), m, down.row_block(e * d, (e + 1) * d), o.data());
  };
  if (most <= 2 && active.size() > 1) {
    // Decoding: each expert sees a token or two, too little work to split one matrix across
    // threads; the experts themselves run in parallel instead (one synchronisation per layer).
    std::vector<std::vector<float>> outs(active.size());
    parallel_for(active.size(), 1, [&](size_t b, size_t e_end) {
      std::vector<float> xs, g, u;
      for (size_t i = b; i < e_end; ++i) run_expert(active[i], xs, g, u, outs[i]);
    });
    for (size_t i = 0; i < active.size(); ++i) {
      const auto& tokens = routed[active[i]];
      for (size_t t = 0; t < tokens.size(); ++t)
        kernels::axpy(tokens[t].second, outs[i].data() + t * d, out + tokens[t].first * d, d);
    }
    return;
  }
  std::vector<float> xs, g, u, o;
  for (int64_t e : active) {
    run_expert(e, xs, g, u, o);
    const auto& tokens = routed[e];
    for (size_t i = 0; i < tokens.size(); ++i) kernels::axpy(tokens[i].second, o.data() + i * d, out + tokens[i].first * d, d);
  }
}

void DecoderModel::validate_and_reserve(std::span<const BatchSequence> batch) {
  const auto& c = config_;
  if (batch.empty()) fail("{}: forward with no sequences", info_.name);
  for (size_t s = 0; s < batch.size(); ++s) {
    const BatchSequence& seq = batch[s];
    if (!seq.cache) fail("{}: sequence {} of the batch has no KV cache", info_.name, s);
    const KvCache& cache = *seq.cache;
    if (seq.tokens.empty()) fail("forward: no tokens (sequence {} of the batch)", s);
    if (cache.max_length() == 0 || cache.layers() != c.n_layers || cache.row_size() != c.kv_heads * c.head_dim)
      fail("{}: the KV cache of sequence {} was not made for this model (use new_cache())", info_.name, s);
    const int64_t end = cache.length() + static_cast<int64_t>(seq.tokens.size());
    if (end > c.max_seq_len) fail("{}: sequence of {} tokens exceeds max_seq_len {}", info_.name, end, c.max_seq_len);
    if (end > cache.max_length())
      fail("{}: sequence of {} tokens exceeds its KV cache's max_length {}", info_.name, end, cache.max_length());
    for (int32_t id : seq.tokens)
      if (id < 0 || id >= c.vocab_size) fail("{}: token id {} is out of range (vocab_size {})", info_.name, id, c.vocab_size);
    for (size_t o = 0; o < s; ++o)
      if (batch[o].cache == seq.cache)
        fail("{}: sequences {} and {} of the batch share one KV cache", info_.name, o, s);
  }
  // All or nothing: a sequence that finds no room undoes the reservations made before it.
  std::vector<int64_t> had(batch.size());
  for (size_t s = 0; s < batch.size(); ++s) {
    KvCache& cache = *batch[s].cache;
    had[s] = cache.capacity();
    const int64_t end = cache.length() + static_cast<int64_t>(batch[s].tokens.size());
    if (cache.try_reserve(end)) continue;
    for (size_t o = 0; o < s; ++o) batch[o].cache->release_beyond(had[o]);
    fail("KV cache is full: no room for {} more positions of sequence {} of the batch ({} blocks free in its pool)",
         batch[s].tokens.size(), s, cache.pool()->free_blocks());
  }
}

Tensor DecoderModel::forward_batch(std::span<const BatchSequence> batch) {
  const auto& c = config_;
  validate_and_reserve(batch);

  RowPlaces rows;
  for (const BatchSequence& seq : batch) {
    const int64_t start = seq.cache->length();
    for (size_t t = 0; t < seq.tokens.size(); ++t) {
      rows.cache.push_back(seq.cache);
      rows.pos.push_back(start + static_cast<int64_t>(t));
    }
  }
  const int64_t n = static_cast<int64_t>(rows.pos.size());
  const int64_t d = c.d_model;
  std::vector<float> hidden(static_cast<size_t>(n * d)), normed(hidden.size()), branch(hidden.size());
  {
    int64_t r = 0;
    for (const BatchSequence& seq : batch)
      for (int32_t id : seq.tokens) embedding_row(weights_.embedding, id, hidden.data() + r++ * d);
  }

  for (int64_t l = 0; l < c.n_layers; ++l) {
    const auto& lw = weights_.layers[l];
    norm(lw.attn_norm, hidden.data(), n, normed.data());
    attention(l, normed.data(), rows, branch.data());
    kernels::add_inplace(hidden.data(), branch.data(), n * d);
    norm(lw.ffn_norm, hidden.data(), n, normed.data());
    if (c.n_experts > 0)
      experts(l, normed.data(), n, branch.data());
    else
      dense_mlp(l, normed.data(), n, branch.data());
    kernels::add_inplace(hidden.data(), branch.data(), n * d);
  }
  for (const BatchSequence& seq : batch) seq.cache->advance(static_cast<int64_t>(seq.tokens.size()));

  // The rows that get logits, gathered in batch order.
  int64_t picked = 0, r = 0;
  for (const BatchSequence& seq : batch) {
    const int64_t len = static_cast<int64_t>(seq.tokens.size());
    const int64_t first = seq.all_logits ? 0 : len - 1;
    if (picked != r + first)
      std::copy_n(hidden.data() + (r + first) * d, (len - first) * d, hidden.data() + picked * d);
    picked += len - first;
    r += len;
  }
  norm(weights_.final_norm, hidden.data(), picked, normed.data());
  Tensor logits = Tensor::empty({picked, c.vocab_size});
  kernels::matmul_nt(normed.data(), picked, WeightMatrix::of(weights_.lm_head), logits.data<float>());
  return logits;
}

}  // namespace tessera
