// The training engine's gradients: every op against central finite differences, and a whole
// DBRX step (loss and every parameter's gradient) against transformers' DbrxForCausalLM
// (tests/fixtures/dbrx_grad, made by tools/golden/make_dbrx_grad_golden.py).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <numeric>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "core/rng.h"
#include "formats/safetensors.h"
#include "test_util.h"
#include "training/dbrx_training_model.h"

namespace tessera {
namespace {

namespace ag = autograd;
namespace fs = std::filesystem;

std::vector<float> random_vector(Rng& rng, size_t n, float scale = 1.0f) {
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(rng.normal()) * scale;
  return v;
}

// Checks d(sum(r * f(x)))/dx computed by `analytic` against central differences on x. The
// forward is evaluated in double from float outputs, with a step that keeps float error small.
void check_gradient(const std::string& what, std::vector<float>& x, const std::vector<float>& analytic,
                    const std::function<double()>& objective, double tolerance = 2e-3, float step = 1e-2f) {
  ASSERT_EQ(x.size(), analytic.size()) << what;
  double max_err = 0, max_ref = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const float saved = x[i];
    x[i] = saved + step;
    const double up = objective();
    x[i] = saved - step;
    const double down = objective();
    x[i] = saved;
    const double numeric = (up - down) / (2.0 * step);
    max_err = std::max(max_err, std::fabs(numeric - analytic[i]));
    max_ref = std::max(max_ref, std::fabs(numeric));
  }
  EXPECT_GT(max_ref, 0.0) << what << ": the objective does not depend on the input";
  EXPECT_LE(max_err, tolerance * std::max(1.0, max_ref)) << what << " (largest gradient " << max_ref << ")";
}

double weighted_sum(const std::vector<float>& y, const std::vector<float>& r) {
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += static_cast<double>(y[i]) * r[i];
  return s;
}

TEST(AutogradOps, LinearMatchesFiniteDifferences) {
  Rng rng(1);
  const int64_t n = 5, k = 7, m = 3;
  auto x = random_vector(rng, n * k), wt = random_vector(rng, m * k), r = random_vector(rng, n * m);
  std::vector<float> y(n * m), dx(n * k, 0.0f), dw(m * k, 0.0f);
  auto objective = [&] {
    ag::linear_forward(x.data(), n, k, wt.data(), m, y.data());
    return weighted_sum(y, r);
  };
  ag::linear_backward(r.data(), x.data(), n, k, wt.data(), m, dx.data(), dw.data());
  check_gradient("linear dx", x, dx, objective);
  check_gradient("linear dw", wt, dw, objective);
}

TEST(AutogradOps, LayerNormMatchesFiniteDifferences) {
  Rng rng(2);
  const int64_t rows = 4, d = 9;
  auto x = random_vector(rng, rows * d, 2.0f), weight = random_vector(rng, d), r = random_vector(rng, rows * d);
  std::vector<float> y(rows * d), mean(rows), rstd(rows), dx(rows * d, 0.0f), dw(d, 0.0f);
  auto objective = [&] {
    ag::layer_norm_forward(x.data(), rows, d, weight.data(), 1e-5f, y.data(), mean.data(), rstd.data());
    return weighted_sum(y, r);
  };
  objective();
  ag::layer_norm_backward(r.data(), x.data(), rows, d, weight.data(), mean.data(), rstd.data(), dx.data(), dw.data());
  check_gradient("layer_norm dx", x, dx, objective, 3e-3, 1e-3f);
  check_gradient("layer_norm dweight", weight, dw, objective);
}

TEST(AutogradOps, RopeBackwardIsTheInverseRotation) {
  Rng rng(3);
  const int64_t rows = 6, heads = 2, hd = 8, stride = 20;
  std::vector<int64_t> pos = {0, 1, 2, 5, 17, 300};
  std::vector<float> inv_freq(hd / 2);
  for (int64_t i = 0; i < hd / 2; ++i) inv_freq[i] = 1.0f / std::pow(10000.0f, 2.0f * i / hd);
  const ag::RopeTable table(301, hd, inv_freq.data());
  auto x = random_vector(rng, rows * stride), r = random_vector(rng, rows * stride);
  std::vector<float> y, dx = r;
  auto objective = [&] {
    y = x;
    ag::rope_forward(y.data(), rows, stride, heads, pos.data(), table);
    return weighted_sum(y, r);
  };
  ag::rope_backward(dx.data(), rows, stride, heads, pos.data(), table);
  check_gradient("rope dx", x, dx, objective);
}

TEST(AutogradOps, CausalGroupedAttentionMatchesFiniteDifferences) {
  Rng rng(4);
  const ag::AttentionShape s{2, 5, 4, 2, 3, 30};  // 2 sequences of 5, 4 heads sharing 2 kv heads
  const int64_t n = s.batch * s.t, ctx_n = n * s.heads * s.head_dim;
  auto qkv = random_vector(rng, n * s.ld), r = random_vector(rng, ctx_n);
  const int64_t koff = s.heads * s.head_dim, voff = koff + s.kv_heads * s.head_dim;
  std::vector<float> ctx(ctx_n), dqkv(n * s.ld, 0.0f);
  auto objective = [&] {
    ag::attention_forward(s, qkv.data(), qkv.data() + koff, qkv.data() + voff, ctx.data());
    return weighted_sum(ctx, r);
  };
  ag::attention_backward(s, qkv.data(), qkv.data() + koff, qkv.data() + voff, r.data(), dqkv.data(),
                         dqkv.data() + koff, dqkv.data() + voff);
  // Columns past q, k and v (ld is wider than them) must get no gradient.
  for (int64_t row = 0; row < n; ++row)
    for (int64_t col = voff + s.kv_heads * s.head_dim; col < s.ld; ++col) EXPECT_EQ(dqkv[row * s.ld + col], 0.0f);
  check_gradient("attention dq dk dv", qkv, dqkv, objective);
}

// Sequences longer than one query block (64 rows): forward against a plain triple loop, and the
// backward on a sample of coordinates against finite differences.
TEST(AutogradOps, LongSequenceAttentionAcrossQueryBlocks) {
  Rng rng(9);
  const ag::AttentionShape s{2, 150, 2, 1, 4, 16};
  const int64_t n = s.batch * s.t, koff = 8, voff = 12, ctx_w = 8;
  auto qkv = random_vector(rng, n * s.ld), r = random_vector(rng, n * ctx_w);
  std::vector<float> ctx(n * ctx_w), dqkv(n * s.ld, 0.0f);
  ag::attention_forward(s, qkv.data(), qkv.data() + koff, qkv.data() + voff, ctx.data());
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.heads; ++h)
      for (int64_t i = 0; i < s.t; i += 7) {
        const float* q = qkv.data() + (b * s.t + i) * s.ld + h * 4;
        std::vector<double> w(i + 1);
        double mx = -1e30, sum = 0;
        for (int64_t j = 0; j <= i; ++j) {
          const float* k = qkv.data() + (b * s.t + j) * s.ld + koff;
          double dot = 0;
          for (int d = 0; d < 4; ++d) dot += static_cast<double>(q[d]) * k[d];
          w[j] = dot / 2.0;
          mx = std::max(mx, w[j]);
        }
        for (auto& x : w) sum += (x = std::exp(x - mx));
        for (int d = 0; d < 4; ++d) {
          double want = 0;
          for (int64_t j = 0; j <= i; ++j) want += w[j] / sum * qkv[(b * s.t + j) * s.ld + voff + d];
          ASSERT_NEAR(ctx[(b * s.t + i) * ctx_w + h * 4 + d], want, 1e-5) << "row " << i << " head " << h;
        }
      }
  ag::attention_backward(s, qkv.data(), qkv.data() + koff, qkv.data() + voff, r.data(), dqkv.data(),
                         dqkv.data() + koff, dqkv.data() + voff);
  auto objective = [&] {
    ag::attention_forward(s, qkv.data(), qkv.data() + koff, qkv.data() + voff, ctx.data());
    return weighted_sum(ctx, r);
  };
  for (int trial = 0; trial < 60; ++trial) {
    const size_t i = static_cast<size_t>(rng.below(static_cast<uint64_t>(n * s.ld)));
    if (i % s.ld >= 16) continue;
    const float saved = qkv[i];
    qkv[i] = saved + 1e-2f;
    const double up = objective();
    qkv[i] = saved - 1e-2f;
    const double down = objective();
    qkv[i] = saved;
    EXPECT_NEAR((up - down) / 2e-2, dqkv[i], 2e-3 * std::max(1.0, std::fabs(static_cast<double>(dqkv[i])))) << "coordinate " << i;
  }
}

// Rows that pack several examples: with segment starts, each example's output and gradients are
// those of the example run alone.
TEST(AutogradOps, SegmentedAttentionKeepsPackedExamplesApart) {
  Rng rng(10);
  const int64_t t = 70, ld = 16, ctx_w = 8;
  ag::AttentionShape packed{1, t, 2, 1, 4, ld};
  std::vector<int32_t> starts(t);
  for (int64_t i = 0; i < t; ++i) starts[i] = i < 30 ? 0 : (i < 66 ? 30 : 66);  // examples [0,30) [30,66) [66,70)
  packed.segment_start = starts.data();
  auto qkv = random_vector(rng, t * ld), r = random_vector(rng, t * ctx_w);
  std::vector<float> ctx(t * ctx_w), dqkv(t * ld, 0.0f);
  ag::attention_forward(packed, qkv.data(), qkv.data() + 8, qkv.data() + 12, ctx.data());
  ag::attention_backward(packed, qkv.data(), qkv.data() + 8, qkv.data() + 12, r.data(), dqkv.data(), dqkv.data() + 8,
                         dqkv.data() + 12);
  for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, 30}, {30, 66}, {66, 70}}) {
    const int64_t n = end - begin;
    const ag::AttentionShape alone{1, n, 2, 1, 4, ld};
    std::vector<float> c(n * ctx_w), d(n * ld, 0.0f);
    const float* base = qkv.data() + begin * ld;
    ag::attention_forward(alone, base, base + 8, base + 12, c.data());
    ag::attention_backward(alone, base, base + 8, base + 12, r.data() + begin * ctx_w, d.data(), d.data() + 8,
                           d.data() + 12);
    for (int64_t i = 0; i < n * ctx_w; ++i) ASSERT_NEAR(ctx[begin * ctx_w + i], c[i], 1e-6) << "example at " << begin;
    for (int64_t i = 0; i < n * ld; ++i) ASSERT_NEAR(dqkv[begin * ld + i], d[i], 1e-5) << "example at " << begin;
  }
}

TEST(AutogradOps, AttentionIsCausal) {
  Rng rng(5);
  const ag::AttentionShape s{1, 6, 2, 1, 4, 16};
  auto qkv = random_vector(rng, s.t * s.ld);
  std::vector<float> a(s.t * 8), b(s.t * 8);
  ag::attention_forward(s, qkv.data(), qkv.data() + 8, qkv.data() + 12, a.data());
  for (int64_t col = 0; col < s.ld; ++col) qkv[(s.t - 1) * s.ld + col] += 1.0f;  // change only the last token
  ag::attention_forward(s, qkv.data(), qkv.data() + 8, qkv.data() + 12, b.data());
  for (int64_t i = 0; i < (s.t - 1) * 8; ++i) EXPECT_EQ(a[i], b[i]) << "earlier positions saw a later token";
  EXPECT_NE(a[(s.t - 1) * 8], b[(s.t - 1) * 8]);
}

TEST(AutogradOps, SwigluSoftmaxClampEmbeddingMatchFiniteDifferences) {
  Rng rng(6);
  const int64_t n = 12;
  auto gate = random_vector(rng, n, 2.0f), up = random_vector(rng, n), r = random_vector(rng, n);
  std::vector<float> out(n), dgate(n, 0.0f), dup(n, 0.0f);
  auto swiglu = [&] {
    ag::swiglu_forward(gate.data(), up.data(), n, out.data());
    return weighted_sum(out, r);
  };
  ag::swiglu_backward(r.data(), gate.data(), up.data(), n, dgate.data(), dup.data());
  check_gradient("swiglu dgate", gate, dgate, swiglu);
  check_gradient("swiglu dup", up, dup, swiglu);

  const int64_t rows = 3, cols = 5;
  auto x = random_vector(rng, rows * cols, 2.0f), rs = random_vector(rng, rows * cols);
  std::vector<float> y(rows * cols), dx(rows * cols, 0.0f);
  auto softmax = [&] {
    ag::softmax_forward(x.data(), rows, cols, y.data());
    return weighted_sum(y, rs);
  };
  softmax();
  ag::softmax_backward(rs.data(), y.data(), rows, cols, dx.data());
  check_gradient("softmax dx", x, dx, softmax);

  std::vector<float> cx = {-2.0f, -0.5f, 0.1f, 0.7f, 1.5f}, cy(5), cdx(5, 0.0f), cr = {1, 2, 3, 4, 5};
  ag::clamp_backward(cr.data(), cx.data(), 5, 1.0f, cdx.data());
  EXPECT_EQ(cdx, (std::vector<float>{0, 2, 3, 4, 0}));
  ag::clamp_forward(cx.data(), 5, 1.0f, cy.data());
  EXPECT_EQ(cy, (std::vector<float>{-1.0f, -0.5f, 0.1f, 0.7f, 1.0f}));

  const std::vector<int32_t> ids = {2, 0, 2};
  std::vector<float> dtable(3 * 2, 0.0f);
  const std::vector<float> dy = {1, 2, 3, 4, 5, 6};
  ag::embedding_backward(ids.data(), 3, dy.data(), 2, dtable.data());
  EXPECT_EQ(dtable, (std::vector<float>{3, 4, 0, 0, 6, 8}));  // row 2 collects both of its uses
}

TEST(AutogradOps, TopKRoutingWeightsMatchFiniteDifferences) {
  Rng rng(7);
  const int64_t experts = 6, k = 3;
  for (std::optional<double> p : {std::optional<double>(), std::optional<double>(1.0), std::optional<double>(2.0)}) {
    std::vector<float> probs = {0.05f, 0.30f, 0.12f, 0.25f, 0.08f, 0.20f};
    auto r = random_vector(rng, k);
    std::vector<int32_t> index(k);
    std::vector<float> weight(k), dprobs(experts, 0.0f);
    ag::top_k_route(probs.data(), experts, k, p, index.data(), weight.data());
    EXPECT_EQ(index, (std::vector<int32_t>{1, 3, 5}));
    auto objective = [&] {
      std::vector<int32_t> idx(k);
      ag::top_k_route(probs.data(), experts, k, p, idx.data(), weight.data());
      return weighted_sum(weight, r);
    };
    ag::top_k_route_backward(r.data(), probs.data(), index.data(), k, p, dprobs.data());
    for (int64_t e : {0, 2, 4}) EXPECT_EQ(dprobs[e], 0.0f) << "an expert that was not chosen got a gradient";
    check_gradient("top-k weights, p=" + (p ? std::to_string(*p) : std::string("none")), probs, dprobs, objective,
                   2e-3, 1e-3f);
  }
}

TEST(AutogradOps, CrossEntropyIgnoresNegativeTargets) {
  Rng rng(8);
  const int64_t rows = 4, vocab = 7;
  auto logits = random_vector(rng, rows * vocab, 2.0f);
  const std::vector<int32_t> targets = {3, -100, 0, 6};
  std::vector<float> dlogits(rows * vocab);
  const double loss = ag::cross_entropy(logits.data(), targets.data(), rows, vocab, 1.0f, dlogits.data());
  double expected = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] < 0) continue;
    double sum = 0;
    for (int64_t i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[r * vocab + i]));
    expected += std::log(sum) - logits[r * vocab + targets[r]];
  }
  EXPECT_NEAR(loss, expected, 1e-5);
  for (int64_t i = 0; i < vocab; ++i) EXPECT_EQ(dlogits[vocab + i], 0.0f);
  auto objective = [&] { return ag::cross_entropy(logits.data(), targets.data(), rows, vocab, 1.0f, nullptr); };
  check_gradient("cross-entropy dlogits", logits, dlogits, objective);
}

// ---- whole model against transformers ----

struct GradCase {
  fs::path dir;
  nlohmann::json golden;
  std::vector<int32_t> inputs, targets;
  int64_t rows = 0, seq = 0;
};

GradCase load_case(const std::string& name) {
  GradCase c;
  c.dir = testing::fixtures() / "dbrx_grad" / name;
  std::ifstream in(c.dir / "golden.json");
  c.golden = nlohmann::json::parse(in);
  for (const auto& row : c.golden["inputs"])
    for (int v : row) c.inputs.push_back(v);
  for (const auto& row : c.golden["targets"])
    for (int v : row) c.targets.push_back(v);
  c.rows = static_cast<int64_t>(c.golden["inputs"].size());
  c.seq = static_cast<int64_t>(c.golden["inputs"][0].size());
  return c;
}

class DbrxGradGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(DbrxGradGolden, LossAndEveryGradientMatchTransformers) {
  const GradCase c = load_case(GetParam());
  auto model = training::DbrxTrainingModel::load(c.dir);
  int64_t counted = 0;
  for (int32_t t : c.targets) counted += t >= 0;
  model.zero_grad();
  const training::StepLoss loss = model.forward_backward({c.inputs.data(), c.targets.data(), c.rows, c.seq},
                                                         1.0f / static_cast<float>(counted), 1.0f, nullptr);
  EXPECT_EQ(loss.counted, counted);
  EXPECT_NEAR(loss.ce_mean(), c.golden["ce_loss"].get<double>(), 1e-5 * c.golden["ce_loss"].get<double>());
  EXPECT_NEAR(loss.aux_loss, c.golden["aux_loss"].get<double>(), 1e-5 * c.golden["aux_loss"].get<double>());
  const double total = loss.ce_mean() + model.config().moe_loss_weight * loss.aux_loss;
  EXPECT_NEAR(total, c.golden["loss"].get<double>(), 1e-5 * c.golden["loss"].get<double>());

  SafetensorsFile grads(c.dir / "grads.safetensors");
  ASSERT_EQ(grads.names().size(), model.parameters().size());
  for (const auto& p : model.parameters()) {
    ASSERT_TRUE(grads.contains(p.name)) << p.name;
    const Tensor ref = grads.get(p.name);
    ASSERT_EQ(ref.shape(), p.shape) << p.name;
    const float* want = ref.data<float>();
    const float* got = model.grads().data() + p.offset;
    double max_ref = 0, max_err = 0;
    for (size_t i = 0; i < p.size; ++i) {
      max_ref = std::max(max_ref, std::fabs(static_cast<double>(want[i])));
      max_err = std::max(max_err, std::fabs(static_cast<double>(got[i]) - want[i]));
    }
    EXPECT_LE(max_err, 1e-4 * max_ref) << p.name << ": largest gradient " << max_ref;
  }
}

TEST_P(DbrxGradGolden, GradientsAccumulateAndEvaluateAgrees) {
  const GradCase c = load_case(GetParam());
  auto model = training::DbrxTrainingModel::load(c.dir);
  const training::TokenBatch batch{c.inputs.data(), c.targets.data(), c.rows, c.seq};
  model.zero_grad();
  const auto once = model.forward_backward(batch, 0.5f, 0.5f, nullptr);
  const std::vector<float> half(model.grads().begin(), model.grads().end());
  model.forward_backward(batch, 0.5f, 0.5f, nullptr);
  for (size_t i = 0; i < half.size(); i += 7) ASSERT_NEAR(model.grads()[i], 2.0f * half[i], 1e-6f + 1e-5f * std::fabs(half[i]));
  const auto eval = model.evaluate(batch);
  EXPECT_NEAR(eval.ce_sum, once.ce_sum, 1e-6 * once.ce_sum);
  EXPECT_EQ(eval.counted, once.counted);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DbrxGradGolden,
                         ::testing::Values("e4_top2_gqa_clip", "e8_top3_mqa_p2", "e4_top1_mha_raw"));

TEST(DbrxTrainingModel, PackedExamplesLossEqualsSeparateExamples) {
  // RoPE depends on relative positions only, so an example packed at offset 9 of a row, cut off
  // from what precedes it, scores as if it ran alone.
  const GradCase c = load_case("e4_top2_gqa_clip");
  auto model = training::DbrxTrainingModel::load(c.dir);
  const std::vector<int32_t> a = {5, 17, 3, 44, 9, 2, 71, 30, 12}, b = {8, 8, 61, 4, 33, 90, 1};
  std::vector<int32_t> inputs = a, targets, starts;
  inputs.insert(inputs.end(), b.begin(), b.end());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const bool last_of_a = i == a.size() - 1, last = i + 1 == inputs.size();
    targets.push_back(last_of_a || last ? -100 : inputs[i + 1]);
    starts.push_back(i < a.size() ? 0 : static_cast<int32_t>(a.size()));
  }
  const int64_t n = static_cast<int64_t>(inputs.size());
  const auto packed = model.evaluate({inputs.data(), targets.data(), 1, n, starts.data()});
  double separate = 0;
  for (const auto* ex : {&a, &b}) {
    std::vector<int32_t> tg(ex->begin() + 1, ex->end());
    tg.push_back(-100);
    separate += model.evaluate({ex->data(), tg.data(), 1, static_cast<int64_t>(ex->size())}).ce_sum;
  }
  EXPECT_NEAR(packed.ce_sum, separate, 1e-4);
  // Without the starts, b would see a and score differently.
  const auto mixed = model.evaluate({inputs.data(), targets.data(), 1, n});
  EXPECT_GT(std::fabs(mixed.ce_sum - separate), 1e-3);
}

TEST(DbrxTrainingModel, SaveLoadRoundTripsAndServesTheSameLogits) {
  testing::TempDir tmp;
  DbrxConfig cfg = DbrxConfig::load(testing::fixtures() / "dbrx_grad" / "e4_top2_gqa_clip" / "config.json");
  training::DbrxTrainingModel model(cfg, 42, 0.1f);
  model.save(tmp.path() / "m");
  auto back = training::DbrxTrainingModel::load(tmp.path() / "m");
  ASSERT_EQ(back.values().size(), model.values().size());
  for (size_t i = 0; i < model.values().size(); ++i) ASSERT_EQ(back.values()[i], model.values()[i]);
}

}  // namespace
}  // namespace tessera
