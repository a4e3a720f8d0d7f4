#pragma once
// The forward and backward of every op a DBRX training step uses, side by side, over plain f32
// arrays in row-major order. A backward never overwrites an input gradient: it adds into it
// (`+=`), so a value used twice (the residual stream) collects both contributions. Parameter
// gradients accumulate the same way, which is what gradient accumulation needs.
//
// Shapes are given in the comments as [rows, cols]. Work is threaded over the global pool.
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

namespace tessera::autograd {

// C = alpha * op(A) . op(B) + beta * C, as kernels::sgemm, tiled into pieces of the sizes the
// kernel runs fastest at.
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

// y[n, m] = x[n, k] . w[m, k]^T  (a bias-free nn.Linear with weight [out, in]).
void linear_forward(const float* x, int64_t n, int64_t k, const float* w, int64_t m, float* y);
// dx[n, k] += dy . w;  dw[m, k] += dy^T . x.  Either output may be null to skip it.
void linear_backward(const float* dy, const float* x, int64_t n, int64_t k, const float* w, int64_t m, float* dx,
                     float* dw);

// y[t] = table[ids[t]] for t < n, rows of width d.
void embedding_forward(const int32_t* ids, int64_t n, const float* table, int64_t d, float* y);
void embedding_backward(const int32_t* ids, int64_t n, const float* dy, int64_t d, float* dtable);

// LayerNorm over rows of width d, without bias unless one is given. Saves each row's mean and
// 1/std for the backward.
void layer_norm_forward(const float* x, int64_t rows, int64_t d, const float* weight, float eps, float* y, float* mean,
                        float* rstd, const float* bias = nullptr);
// dx may be null (only the weight's gradient is wanted).
void layer_norm_backward(const float* dy, const float* x, int64_t rows, int64_t d, const float* weight,
                         const float* mean, const float* rstd, float* dx, float* dweight);

// y = clamp(x, -limit, limit). The gradient passes where -limit <= x <= limit (as torch's clamp).
void clamp_forward(const float* x, int64_t n, float limit, float* y);
void clamp_backward(const float* dy, const float* x, int64_t n, float limit, float* dx);

// Rotary embedding, rotate-half layout: cos and sin of every (position, frequency) pair,
// computed once per pass (float32 angles, as the references compute them).
struct RopeTable {
  RopeTable(int64_t positions, int64_t head_dim, const float* inv_freq);
  int64_t half = 0;
  std::vector<float> cos, sin;  // [positions, half]
};
// Rotates, in place, `heads` heads of width head_dim in each of `rows` rows of stride `stride`,
// row r at position positions[r]. The backward is the inverse rotation, also in place (on the
// gradient).
void rope_forward(float* x, int64_t rows, int64_t stride, int64_t heads, const int64_t* positions,
                  const RopeTable& table);
void rope_backward(float* dx, int64_t rows, int64_t stride, int64_t heads, const int64_t* positions,
                   const RopeTable& table);

// Causal multi-head attention with grouped KV heads over `batch` sequences of length t. q, k, v
// point into rows of stride ld (a fused qkv buffer): head h of row r starts at q + r * ld + h * hd.
// ctx is [batch * t, heads * hd]. The backward recomputes the attention weights instead of
// keeping them (batch * heads * t^2 floats would dominate memory at long sequences). dq, dk, dv
// have the layout of q, k, v and are added into.
// With segment_start (one entry per row, batch * t), the rows of a sequence hold several packed
// examples: row i sees keys from segment_start[i] (its example's first position) to itself.
struct AttentionShape {
  int64_t batch = 0, t = 0, heads = 0, kv_heads = 0, head_dim = 0, ld = 0;
  const int32_t* segment_start = nullptr;
};
void attention_forward(const AttentionShape& s, const float* q, const float* k, const float* v, float* ctx);
void attention_backward(const AttentionShape& s, const float* q, const float* k, const float* v, const float* dctx,
                        float* dq, float* dk, float* dv);

// out = silu(gate) * up, element-wise; the backward adds into dgate and dup.
void swiglu_forward(const float* gate, const float* up, int64_t n, float* out);
void swiglu_backward(const float* dout, const float* gate, const float* up, int64_t n, float* dgate, float* dup);

// Row-wise softmax of x[rows, n] into y. The backward: dx += y * (dy - sum(dy * y)).
void softmax_forward(const float* x, int64_t rows, int64_t n, float* y);
void softmax_backward(const float* dy, const float* y, int64_t rows, int64_t n, float* dx);

// DBRX's expert choice for one token: the top_k largest probabilities (ties to the lower index),
// optionally divided by their p-norm. `index` and `weight` get top_k entries.
void top_k_route(const float* probs, int64_t experts, int64_t top_k, std::optional<double> norm_p, int32_t* index,
                 float* weight);
// Gradient of the routing weights back to the probabilities of the chosen experts (dprobs is
// added into at index[i]; the others get nothing, as top-k is piecewise constant).
void top_k_route_backward(const float* dweight, const float* probs, const int32_t* index, int64_t top_k,
                          std::optional<double> norm_p, float* dprobs);

// Cross-entropy of logits[rows, vocab] against targets (a negative target is ignored).
// Returns the summed loss over counted rows and, when dlogits is given, writes
// dlogits = scale * (softmax - onehot) for counted rows and 0 for ignored ones. logits and
// dlogits may be the same buffer.
double cross_entropy(const float* logits, const int32_t* targets, int64_t rows, int64_t vocab, float scale,
                     float* dlogits);

}  // namespace tessera::autograd
