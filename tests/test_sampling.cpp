// The sampler draws from exactly the distribution its filters describe.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <vector>

#include "core/error.h"
#include "serving/sampling.h"

using namespace tessera;

namespace {

// Frequencies of each id over many draws.
std::vector<double> frequencies(const SamplingParams& params, const std::vector<float>& logits, int draws = 40000) {
  Sampler sampler(params);
  std::vector<double> freq(logits.size(), 0.0);
  for (int i = 0; i < draws; ++i) {
    std::vector<float> l = logits;
    freq[sampler.sample(l, {}, 0)] += 1.0 / draws;
  }
  return freq;
}

std::vector<double> softmax(const std::vector<float>& logits, float t) {
  std::vector<double> p(logits.size());
  double total = 0;
  for (size_t i = 0; i < p.size(); ++i) total += p[i] = std::exp(logits[i] / t);
  for (auto& v : p) v /= total;
  return p;
}

const std::vector<float> kLogits = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f, -3.0f};

}  // namespace

TEST(Sampler, TemperatureMatchesSoftmax) {
  SamplingParams p;
  p.seed = 1;
  p.temperature = 0.7f;
  auto f = frequencies(p, kLogits);
  auto expected = softmax(kLogits, 0.7f);
  for (size_t i = 0; i < f.size(); ++i) EXPECT_NEAR(f[i], expected[i], 0.01) << i;
}

TEST(Sampler, TopKTopPAndMinPRenormaliseTheKeptTokens) {
  auto expected = softmax(kLogits, 1.0f);  // {0.574, 0.211, 0.128, 0.078, 0.029, 0.004}
  SamplingParams p;
  p.seed = 2;
  p.top_k = 2;
  auto f = frequencies(p, kLogits);
  EXPECT_NEAR(f[0], expected[0] / (expected[0] + expected[1]), 0.01);
  EXPECT_EQ(f[2] + f[3] + f[4] + f[5], 0.0);

  p.top_k = 0;
  p.top_p = 0.85f;  // 0.574 + 0.211 < 0.85 <= + 0.128: three tokens
  f = frequencies(p, kLogits);
  const double kept = expected[0] + expected[1] + expected[2];
  EXPECT_NEAR(f[2], expected[2] / kept, 0.01);
  EXPECT_EQ(f[3] + f[4] + f[5], 0.0);

  p.top_p = 1.0f;
  p.min_p = 0.1f;  // keeps p >= 0.0574: the first four
  f = frequencies(p, kLogits);
  EXPECT_GT(f[3], 0.0);
  EXPECT_EQ(f[4] + f[5], 0.0);
}

TEST(Sampler, TopPOverALargeVocabularyGrowsItsWindow) {
  std::vector<float> flat(5000, 0.0f);  // uniform: top_p 0.5 needs 2500 tokens
  SamplingParams p;
  p.seed = 3;
  p.top_p = 0.5f;
  Sampler sampler(p);
  std::map<int32_t, int> seen;
  for (int i = 0; i < 20000; ++i) {
    std::vector<float> l = flat;
    seen[sampler.sample(l, {}, 0)]++;
  }
  EXPECT_GT(seen.size(), 2000u);
  EXPECT_LE(seen.size(), 2501u);
}

TEST(Sampler, PenaltiesFollowTheirDefinitions) {
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 2.0f;
  Sampler s(p);
  std::vector<float> l = {3.0f, 2.0f, -1.0f};
  const int32_t context[] = {0, 2};
  EXPECT_EQ(s.sample(l, context, 0), 1);  // 3/2 = 1.5 < 2
  EXPECT_FLOAT_EQ(l[0], 1.5f);
  EXPECT_FLOAT_EQ(l[2], -2.0f);  // negative logits are multiplied

  SamplingParams q;
  q.temperature = 0;
  q.frequency_penalty = 0.4f;
  q.presence_penalty = 0.3f;
  Sampler s2(q);
  std::vector<float> m = {3.0f, 2.5f};
  const int32_t ctx[] = {0, 0, 0, 1};  // the last three are generated: id 0 twice, id 1 once
  s2.sample(m, ctx, 3);
  EXPECT_FLOAT_EQ(m[0], 3.0f - 2 * 0.4f - 0.3f);
  EXPECT_FLOAT_EQ(m[1], 2.5f - 0.4f - 0.3f);
}

TEST(Sampler, RejectsBadParameters) {
  SamplingParams p;
  p.top_p = 1.5f;
  EXPECT_THROW(p.validate(), Error);
  p = {};
  p.temperature = -0.1f;
  EXPECT_THROW(p.validate(), Error);
  p = {};
  p.stop = {""};
  EXPECT_THROW(p.validate(), Error);
}
