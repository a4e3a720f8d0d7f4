// The paged KV cache (block accounting, prefix reuse, eviction, copy-on-write) and the batched
// forward pass that runs many sequences over their own caches in one step.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "core/paths.h"
#include "models/llm/dbrx_model.h"
#include "models/llm/kv_cache.h"
#include "serving/generate.h"
#include "test_util.h"

using namespace tessera;
using tessera::testing::error_of;
namespace fs = std::filesystem;

namespace {

constexpr int64_t kLayers = 2, kHeads = 2, kHeadDim = 8, kRow = kHeads * kHeadDim;

std::shared_ptr<KvBlockPool> small_pool(int64_t block_tokens, int64_t max_blocks, DType dtype = DType::F32) {
  return std::make_shared<KvBlockPool>(kLayers, kHeads, kHeadDim, dtype, block_tokens, max_blocks);
}

// A value that tells apart layer, key/value, position, the token there and the element.
float cell(int64_t layer, int kv, int64_t pos, int32_t token, int64_t i) {
  return static_cast<float>(layer * 100000 + kv * 50000 + pos * 100 + token % 50) + static_cast<float>(i) / 32.0f;
}

// Writes positions [length, tokens.size()) the way a model would: content depends on the
// token and the position.
void fill(KvCache& cache, const std::vector<int32_t>& tokens) {
  cache.reserve(static_cast<int64_t>(tokens.size()));
  std::vector<float> k(kRow), v(kRow);
  const int64_t from = cache.length();
  for (int64_t p = from; p < static_cast<int64_t>(tokens.size()); ++p) {
    for (int64_t l = 0; l < kLayers; ++l) {
      for (int64_t i = 0; i < kRow; ++i) {
        k[i] = cell(l, 0, p, tokens[p], i);
        v[i] = cell(l, 1, p, tokens[p], i);
      }
      cache.store(l, p, k.data(), v.data());
    }
  }
  cache.advance(static_cast<int64_t>(tokens.size()) - from);
}

// Whether the cache holds what fill() writes for `tokens` at positions [0, length()).
bool holds(const KvCache& cache, const std::vector<int32_t>& tokens) {
  for (int64_t p = 0; p < cache.length(); ++p)
    for (int64_t l = 0; l < kLayers; ++l)
      for (int64_t i = 0; i < kRow; ++i) {
        const float k = static_cast<const float*>(cache.keys(l, p))[i];
        const float v = static_cast<const float*>(cache.values(l, p))[i];
        if (k != cell(l, 0, p, tokens[p], i) || v != cell(l, 1, p, tokens[p], i)) return false;
      }
  return true;
}

std::vector<int32_t> count_up(int32_t from, size_t n) {
  std::vector<int32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = from + static_cast<int32_t>(i);
  return t;
}

}  // namespace

TEST(KvCache, PoolCountsBlocksAndRefusesCleanlyWhenFull) {
  auto pool = small_pool(4, 6);
  EXPECT_EQ(pool->bytes_per_block(), size_t(kLayers * 2 * 4 * kRow * 4));
  EXPECT_EQ(pool->allocated_bytes(), 0u);
  EXPECT_EQ(pool->free_blocks(), 6);
  {
    KvCache a(pool, 100);
    a.reserve(10);
    EXPECT_EQ(a.blocks(), 3);
    EXPECT_EQ(a.capacity(), 12);
    EXPECT_EQ(a.bytes(), 3 * pool->bytes_per_block());
    EXPECT_EQ(pool->used_blocks(), 3);
    EXPECT_EQ(pool->free_blocks(), 3);

    KvCache b(pool, 100);
    fill(b, {1, 2});
    EXPECT_FALSE(b.try_reserve(14));  // 4 blocks, 2 left
    EXPECT_EQ(b.blocks(), 1);
    EXPECT_EQ(b.length(), 2);
    EXPECT_EQ(pool->used_blocks(), 4);
    EXPECT_TRUE(holds(b, {1, 2}));
    EXPECT_NE(error_of([&] { b.reserve(14); }).find("KV cache is full"), std::string::npos);
    EXPECT_TRUE(b.try_reserve(12));
    EXPECT_EQ(pool->free_blocks(), 0);
    EXPECT_LE(pool->allocated_bytes(), 6 * pool->bytes_per_block());

    a.clear();
    EXPECT_EQ(a.blocks(), 0);
    EXPECT_EQ(pool->used_blocks(), 3);
    KvCache moved = std::move(b);
    EXPECT_EQ(moved.blocks(), 3);
    EXPECT_EQ(pool->used_blocks(), 3);
  }
  EXPECT_EQ(pool->used_blocks(), 0);
  EXPECT_EQ(pool->cached_blocks(), 0);  // nothing was published
  EXPECT_EQ(pool->free_blocks(), 6);

  EXPECT_EQ(small_pool(16, 0)->free_blocks(), std::numeric_limits<int64_t>::max());
  EXPECT_THROW(KvBlockPool(2, 2, 8, DType::Q8_0), Error);
  EXPECT_THROW(KvBlockPool(2, 2, 8, DType::F32, 0), Error);
}

TEST(KvCache, MemoryComesInChunksNotUpFront) {
  // 128 KiB blocks, room for 1000 of them.
  auto pool = std::make_shared<KvBlockPool>(4, 4, 64, DType::F32, 16, 1000);
  KvCache cache(pool, 1 << 20);
  cache.reserve(16);
  EXPECT_GE(pool->allocated_bytes(), pool->bytes_per_block());
  EXPECT_LT(pool->allocated_bytes(), 100 * pool->bytes_per_block());
  const void* first = cache.keys(0, 0);
  cache.reserve(16 * 200);  // more chunks; blocks already handed out stay where they are
  EXPECT_EQ(cache.keys(0, 0), first);
  EXPECT_LT(pool->allocated_bytes(), 400 * pool->bytes_per_block());
}

TEST(KvCache, PositionsSpanBlocksAndF16Rounds) {
  KvCache cache(small_pool(4, 0), 64);
  const auto tokens = count_up(3, 10);
  fill(cache, tokens);
  EXPECT_TRUE(holds(cache, tokens));
  EXPECT_EQ(cache.contiguous_from(0), 4);
  EXPECT_EQ(cache.contiguous_from(5), 3);
  EXPECT_EQ(cache.contiguous_from(8), 2);  // capped at length()
  EXPECT_EQ(cache.contiguous_from(10), 0);
  // Within a block, rows follow each other at row_size() elements.
  EXPECT_EQ(static_cast<const float*>(cache.keys(1, 5)) + kRow, cache.keys(1, 6));

  KvCache half(small_pool(4, 0, DType::F16), 64);
  half.reserve(1);
  std::vector<float> k(kRow, 1.0f / 3.0f), v(kRow, -2.5f);
  half.store(0, 0, k.data(), v.data());
  EXPECT_EQ(f16_to_f32(static_cast<const uint16_t*>(half.keys(0, 0))[3]), f16_to_f32(f32_to_f16(1.0f / 3.0f)));
  EXPECT_EQ(f16_to_f32(static_cast<const uint16_t*>(half.values(0, 0))[3]), -2.5f);
  EXPECT_THROW(half.store(0, 4, k.data(), v.data()), Error);  // not reserved
}

TEST(KvCache, SecondSequenceReusesTheSharedPrefix) {
  auto pool = small_pool(16, 0);
  auto a_tokens = count_up(1000, 40);
  KvCache a(pool, 256);
  fill(a, a_tokens);
  a.publish(a_tokens);

  auto b_tokens = a_tokens;
  b_tokens.insert(b_tokens.end(), {7, 8, 9});
  KvCache b(pool, 256);
  EXPECT_EQ(b.reuse_prefix(b_tokens), 32);
  EXPECT_EQ(b.length(), 32);
  EXPECT_EQ(pool->used_blocks(), 3);  // the two adopted blocks are a's
  EXPECT_TRUE(holds(b, b_tokens));
  fill(b, b_tokens);
  EXPECT_TRUE(holds(b, b_tokens));
  EXPECT_TRUE(holds(a, a_tokens));

  // At least one token must still run: 32 tokens reuse one block only.
  KvCache c(pool, 256);
  EXPECT_EQ(c.reuse_prefix(std::vector<int32_t>(a_tokens.begin(), a_tokens.begin() + 32)), 16);
  // Matching is chained: the same second block after a different first one is not reused.
  auto d_tokens = a_tokens;
  d_tokens[3] = 1;
  KvCache d(pool, 256);
  EXPECT_EQ(d.reuse_prefix(d_tokens), 0);
  EXPECT_EQ(d.length(), 0);
  // Only an empty cache adopts blocks.
  EXPECT_THROW(a.reuse_prefix(b_tokens), Error);
  EXPECT_THROW(a.publish(b_tokens), Error);  // more tokens than positions

  // Publishing a leading part (a prompt, say) offers only the full blocks it covers.
  const auto e_tokens = count_up(5000, 40);
  KvCache e(pool, 256);
  fill(e, e_tokens);
  e.publish(std::span(e_tokens).first(20));
  KvCache f(pool, 256);
  EXPECT_EQ(f.reuse_prefix(e_tokens), 16);
  EXPECT_TRUE(holds(f, e_tokens));
}

TEST(KvCache, PublishedBlocksOutliveTheirSequenceUntilEvictedOldestFirst) {
  auto pool = small_pool(4, 4);
  const auto a = count_up(10, 8), b = count_up(50, 8);
  for (const auto* tokens : {&a, &b}) {
    KvCache cache(pool, 64);
    fill(cache, *tokens);
    cache.publish(*tokens);
  }
  EXPECT_EQ(pool->used_blocks(), 0);
  EXPECT_EQ(pool->cached_blocks(), 4);
  EXPECT_EQ(pool->free_blocks(), 4);  // cached blocks are evictable

  // A new sequence needs one block: the least recently released goes, which is the end of a.
  KvCache other(pool, 64);
  fill(other, {1, 2, 3});
  EXPECT_EQ(pool->cached_blocks(), 3);
  auto a_more = a;
  a_more.push_back(0);
  KvCache again(pool, 64);
  EXPECT_EQ(again.reuse_prefix(a_more), 4);
  EXPECT_TRUE(holds(again, a));
  EXPECT_EQ(pool->cached_blocks(), 2);  // the adopted block is in use again
  EXPECT_EQ(pool->used_blocks(), 2);
  auto b_more = b;
  b_more.push_back(0);
  KvCache b_again(pool, 64);
  EXPECT_EQ(b_again.reuse_prefix(b_more), 8);
  EXPECT_TRUE(holds(b_again, b));
  EXPECT_EQ(pool->free_blocks(), 0);
  EXPECT_FALSE(KvCache(pool, 64).try_reserve(1));
}

TEST(KvCache, TruncateIntoASharedBlockCopiesBeforeWriting) {
  auto pool = small_pool(4, 0);
  const auto base = count_up(20, 8);
  KvCache owner(pool, 64);
  fill(owner, base);
  owner.publish(base);

  auto longer = base;
  longer.push_back(99);
  KvCache other(pool, 64);
  ASSERT_EQ(other.reuse_prefix(longer), 8);
  other.truncate(6);  // keeps half of the shared second block
  EXPECT_EQ(other.length(), 6);
  std::vector<float> k(kRow, 0.5f), v(kRow, 0.25f);
  EXPECT_THROW(other.store(0, 6, k.data(), v.data()), Error);  // not yet private

  auto diverged = base;
  diverged[6] = 77;
  diverged[7] = 78;
  fill(other, diverged);  // reserve makes the block private first
  EXPECT_TRUE(holds(other, diverged));
  EXPECT_TRUE(holds(owner, base));
  EXPECT_EQ(pool->used_blocks(), 3);  // two of owner's, one private copy
  EXPECT_EQ(other.keys(0, 0), owner.keys(0, 0));
  EXPECT_NE(other.keys(0, 4), owner.keys(0, 4));

  // The publisher itself may not write into what it published either.
  owner.truncate(5);
  fill(owner, diverged);
  EXPECT_TRUE(holds(owner, diverged));
  KvCache third(pool, 64);
  ASSERT_EQ(third.reuse_prefix(longer), 8);
  EXPECT_TRUE(holds(third, base));
}

// ---------------------------------------------------------------------------------------------
// Batched forward

namespace {

struct Step {
  std::vector<int32_t> history;  // already in the cache
  std::vector<int32_t> fresh;    // run in the batch
  bool all_logits = false;
};

// A prefill of 7 tokens, two single-token decodes at different positions, and a 4-token
// all_logits run after a short history.
std::vector<Step> mixed_steps() {
  return {{{}, {5, 9, 14, 2, 77, 31, 8}, false},
          {{3, 1, 4, 1, 5}, {9}, false},
          {count_up(40, 21), {2}, false},
          {{100, 101, 102}, {6, 28, 49, 90}, true}};
}

double max_rel_diff(const float* a, const float* b, int64_t n) {
  double scale = 1e-6, diff = 0;
  for (int64_t i = 0; i < n; ++i) scale = std::max(scale, std::fabs(double(b[i])));
  for (int64_t i = 0; i < n; ++i) diff = std::max(diff, std::fabs(double(a[i]) - b[i]));
  return diff / scale;
}

// Batched logits against each sequence run alone; then one more decode step per sequence to
// check that the batch wrote the right keys and values. Returns the largest relative error.
double batch_vs_alone(LanguageModel& model, const std::shared_ptr<KvBlockPool>& pool) {
  const auto steps = mixed_steps();
  const int64_t vocab = model.info().vocab_size;
  std::vector<KvCache> caches, alone;
  for (const Step& s : steps) {
    caches.push_back(pool ? model.new_cache(pool) : model.new_cache());
    alone.push_back(model.new_cache());
    if (!s.history.empty()) {
      model.forward(s.history, caches.back(), false);
      model.forward(s.history, alone.back(), false);
    }
  }
  std::vector<BatchSequence> batch;
  for (size_t i = 0; i < steps.size(); ++i) batch.push_back({steps[i].fresh, &caches[i], steps[i].all_logits});
  const Tensor logits = model.forward_batch(batch);
  int64_t rows = 0;
  for (const Step& s : steps) rows += s.all_logits ? static_cast<int64_t>(s.fresh.size()) : 1;
  EXPECT_EQ(logits.dim(0), rows);
  EXPECT_EQ(logits.dim(1), vocab);

  double worst = 0;
  int64_t row = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    const Tensor ref = model.forward(steps[i].fresh, alone[i], steps[i].all_logits);
    worst = std::max(worst, max_rel_diff(logits.data<float>() + row * vocab, ref.data<float>(), ref.numel()));
    row += ref.dim(0);
    EXPECT_EQ(caches[i].length(), alone[i].length());
  }
  // Next step, batched again, all sequences decoding one token.
  const std::vector<int32_t> next = {11};
  batch.clear();
  for (auto& c : caches) batch.push_back({next, &c, false});
  const Tensor second = model.forward_batch(batch);
  for (size_t i = 0; i < steps.size(); ++i) {
    const Tensor ref = model.forward(next, alone[i], false);
    worst = std::max(worst, max_rel_diff(second.data<float>() + i * vocab, ref.data<float>(), vocab));
  }
  return worst;
}

fs::path dbrx_fixture() { return tessera::testing::fixtures() / "dbrx" / "e4_top2_d64_clip_f32"; }
fs::path smollm_path() { return models_dir() / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"; }

}  // namespace

TEST(BatchForward, F32DbrxMatchesEachSequenceAlone) {
  auto model = DbrxModel::load(dbrx_fixture());
  ASSERT_EQ(model->info().kv_dtype, DType::F32);
  EXPECT_LE(batch_vs_alone(*model, nullptr), 1e-4);
  EXPECT_LE(batch_vs_alone(*model, model->new_block_pool(0, 4)), 1e-4);  // small blocks: many per sequence
}

TEST(BatchForward, QuantizedGgufWithF16CacheMatchesEachSequenceAlone) {
  for (const fs::path& path : {tessera::testing::fixtures() / "dbrx_gguf" / "e4_top2_d64_clip_f32.q8_0.gguf", smollm_path()}) {
    ASSERT_TRUE(fs::exists(path)) << path << " is missing: run scripts/setup";
    auto model = load_language_model(path);
    ASSERT_EQ(model->info().kv_dtype, DType::F16) << path;
    EXPECT_LE(batch_vs_alone(*model, model->new_block_pool(64)), 1e-4) << path;
  }
}

TEST(BatchForward, BadBatchesChangeNoCache) {
  auto model = DbrxModel::load(dbrx_fixture());
  auto pool = model->new_block_pool(3, 4);  // 12 positions in all
  KvCache a = model->new_cache(pool), b = model->new_cache(pool);
  model->forward(std::vector<int32_t>{1, 2, 3}, a, false);
  const std::vector<int32_t> two = {4, 5}, bad = {4, 256}, five = count_up(1, 5), long_run = count_up(1, 9);
  const std::vector<int32_t> too_long(130, 1);
  auto unchanged = [&] { return a.length() == 3 && a.blocks() == 1 && b.length() == 0 && b.blocks() == 0; };

  std::vector<BatchSequence> batch = {{two, &a}, {bad, &b}};
  EXPECT_NE(error_of([&] { model->forward_batch(batch); }).find("token id 256 is out of range"), std::string::npos);
  EXPECT_TRUE(unchanged());
  batch = {{two, &a}, {two, &a}};
  EXPECT_NE(error_of([&] { model->forward_batch(batch); }).find("share one KV cache"), std::string::npos);
  EXPECT_TRUE(unchanged());
  // a fits (one more block), b's 9 positions do not: a's new block is given back.
  batch = {{five, &a}, {long_run, &b}};
  const std::string full = error_of([&] { model->forward_batch(batch); });
  EXPECT_NE(full.find("KV cache is full"), std::string::npos) << full;
  EXPECT_TRUE(unchanged());
  EXPECT_EQ(pool->used_blocks(), 1);
  batch = {{too_long, &b}};
  EXPECT_NE(error_of([&] { model->forward_batch(batch); }).find("exceeds max_seq_len"), std::string::npos);
  KvCache empty;
  batch = {{two, &empty}};
  EXPECT_THROW(model->forward_batch(batch), Error);
  KvCache foreign(3, 2, 8, 64);
  batch = {{two, &foreign}};
  EXPECT_THROW(model->forward_batch(batch), Error);
  EXPECT_THROW(model->forward_batch({}), Error);
  EXPECT_THROW(model->new_cache(std::make_shared<KvBlockPool>(3, 2, 8, DType::F32)), Error);
  EXPECT_TRUE(unchanged());
  // And a good batch still runs.
  batch = {{two, &a}, {two, &b}};
  EXPECT_EQ(model->forward_batch(batch).dim(0), 2);
  EXPECT_EQ(a.length(), 5);
  EXPECT_EQ(b.length(), 2);
}

TEST(BatchForward, GenerationWithAReusedPrefixGivesTheSameTokens) {
  auto model = DbrxModel::load(dbrx_fixture());
  const Tokenizer tokenizer = Tokenizer::load_for_model(dbrx_fixture());
  auto pool = model->new_block_pool(0, 16);
  GenerationRequest request;
  request.prompt = count_up(30, 40);
  request.sampling.temperature = 0;
  request.sampling.max_tokens = 12;
  request.sampling.ignore_eos = true;

  Session fresh;
  const auto expected = generate(*model, tokenizer, fresh, request).tokens;

  Session first{model->new_cache(pool), {}};
  EXPECT_EQ(generate(*model, tokenizer, first, request).tokens, expected);
  first.cache.publish(first.tokens);

  Session second{model->new_cache(pool), {}};
  const int64_t reused = second.cache.reuse_prefix(request.prompt);
  EXPECT_EQ(reused, 32);
  second.tokens.assign(request.prompt.begin(), request.prompt.begin() + reused);
  const auto again = generate(*model, tokenizer, second, request);
  EXPECT_EQ(again.stats.prefilled_tokens, 8);
  EXPECT_EQ(again.tokens, expected);

  // The first session takes a prompt that diverges inside a published block: it rewinds into
  // it and gets its own copy, and the second session's blocks are untouched.
  GenerationRequest other = request;
  other.prompt[20] = 7;
  Session reference;
  EXPECT_EQ(generate(*model, tokenizer, first, other).tokens, generate(*model, tokenizer, reference, other).tokens);
  GenerationRequest follow = request;
  follow.prompt = second.tokens;
  follow.prompt.push_back(3);
  Session reference2;
  EXPECT_EQ(generate(*model, tokenizer, second, follow).tokens, generate(*model, tokenizer, reference2, follow).tokens);
}

TEST(KvCache, CacheLimitFreesTheOldestCachedBlocks) {
  auto pool = small_pool(4, 8);
  pool->set_cache_limit(2);
  const auto a = count_up(10, 8), b = count_up(50, 8);
  for (const auto* tokens : {&a, &b}) {
    KvCache cache(pool, 64);
    fill(cache, *tokens);
    cache.publish(*tokens);
  }
  EXPECT_EQ(pool->cached_blocks(), 2);  // a's two blocks went first
  auto b_more = b;
  b_more.push_back(0);
  KvCache again(pool, 64);
  EXPECT_EQ(again.reuse_prefix(b_more), 8);
  auto a_more = a;
  a_more.push_back(0);
  KvCache gone(pool, 64);
  EXPECT_EQ(gone.reuse_prefix(a_more), 0);
}
