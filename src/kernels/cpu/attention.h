#pragma once
// Attention of cached keys and values for the decoder: the query heads that share one key/value
// head (grouped-query attention) are computed together, so each cached row is converted and
// read once for the whole group, and a span of positions can be split among threads and merged
// afterwards (the partial softmax sums are carried with their maximum).
#include <cstdint>

namespace tessera::kernels {

// `count` consecutive cached positions: keys and values rows `stride` elements apart.
struct KvRun {
  const void* keys = nullptr;
  const void* values = nullptr;
  int64_t count = 0;
};

// For each of `heads` queries (q + h * dim, dim floats each) against the positions of `runs`
// (f16 rows when `f16`, otherwise f32): s_j = scale * q . k_j, then, with o = h * out_stride,
//   max[o] = max_j s_j,  sum[o] = sum_j e_j,  acc[o * dim + i] = sum_j e_j * v_j[i]
// where e_j = exp(s_j - max[o]); softmax(s) . V is acc / sum. With f16 rows the query and the
// weights e_j are rounded to f16 first, as f16 matrix products round their operands. No
// positions give max = -inf, sum = 0 and acc = 0.
void attention_partial(const float* q, int64_t heads, int64_t dim, float scale, const KvRun* runs, int64_t nruns,
                       int64_t stride, bool f16, float* max, float* sum, float* acc, int64_t out_stride = 1);

// Combines `parts` consecutive partial results of one head (max[p], sum[p], acc + p * dim, each
// over a different span of positions) into softmax(s) . V over all their positions.
void attention_merge(const float* max, const float* sum, const float* acc, int64_t parts, int64_t dim, float* out);

}  // namespace tessera::kernels
