// The UNet training ops (autograd/unet_ops.h): every op's output and the gradient of each of its
// inputs and parameters against torch and diffusers in float64 (tests/fixtures/unet_ops_grad,
// made by tools/golden/make_unet_ops_grad_golden.py), that a backward adds into the gradients
// it is given, one ResnetBlock2D and one BasicTransformerBlock composed from the ops against
// the diffusers modules, and that the forwards agree with the inference kernels a trained model
// will run on.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "autograd/unet_ops.h"
#include "core/rng.h"
#include "formats/safetensors.h"
#include "kernels/cpu/nn.h"
#include "test_util.h"

namespace tessera {
namespace {

namespace ag = autograd;
using Buffer = std::vector<float>;

struct Fixture {
  std::unique_ptr<SafetensorsFile> tensors;
  nlohmann::json index;
};

const Fixture& fixture() {
  static const Fixture f = [] {
    const auto dir = testing::fixtures() / "unet_ops_grad";
    Fixture out;
    out.tensors = std::make_unique<SafetensorsFile>(dir / "cases.safetensors");
    std::ifstream in(dir / "cases.json");
    out.index = nlohmann::json::parse(in);
    return out;
  }();
  return f;
}

// One run of an op over a fixture case. Gradient buffers are handed out by grad(): zeros, or
// (with prefill) random values that the backward must add to, kept so they can be subtracted.
class Run {
 public:
  Run(const nlohmann::json& info, bool prefill) : info_(info), prefill_(prefill) {}

  const nlohmann::json& params() const { return info_["params"]; }
  std::string name() const { return info_["name"].get<std::string>(); }
  int64_t p(const char* key) const { return params()[key].get<int64_t>(); }

  Tensor ref(const std::string& tensor) const { return fixture().tensors->get(name() + "." + tensor); }
  // A copy of an input (the ops take non-const outputs, and a copy keeps the fixture read-only).
  Buffer in(const std::string& tensor) const {
    const Tensor t = ref(tensor);
    return Buffer(t.data<float>(), t.data<float>() + t.numel());
  }
  Buffer& y() {
    if (y_.empty()) y_.assign(static_cast<size_t>(ref("y").numel()), 0.0f);
    return y_;
  }
  // The gradient buffer "d<input>", sized as the reference gradient.
  float* grad(const std::string& input) {
    const std::string key = "d" + input;
    auto [it, fresh] = grads_.try_emplace(key);
    if (fresh) {
      it->second.assign(static_cast<size_t>(ref(key).numel()), 0.0f);
      if (prefill_)
        for (auto& v : it->second) v = static_cast<float>(rng_.normal());
      initial_[key] = it->second;
    }
    return it->second.data();
  }

  // Compares the output and every gradient the case lists against the reference, each within
  // tolerance * its largest reference value; returns the largest relative error seen.
  double check(double tolerance = 1e-4) const {
    double worst = compare("y", y_, 0, tolerance);
    for (const auto& g : info_["grads"]) {
      const std::string key = g.get<std::string>();
      const auto it = grads_.find(key);
      if (it == grads_.end()) {
        ADD_FAILURE() << name() << ": no gradient computed for " << key;
        continue;
      }
      worst = std::max(worst, compare(key, it->second, &initial_.at(key), tolerance));
    }
    return worst;
  }

 private:
  double compare(const std::string& key, const Buffer& got, const Buffer* initial, double tolerance) const {
    const Tensor want = ref(key);
    EXPECT_EQ(static_cast<int64_t>(got.size()), want.numel()) << name() << " " << key;
    if (static_cast<int64_t>(got.size()) != want.numel()) return INFINITY;
    double max_ref = 0, max_err = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double w = want.data<float>()[i];
      const double g = initial ? static_cast<double>(got[i]) - (*initial)[i] : got[i];
      max_ref = std::max(max_ref, std::fabs(w));
      max_err = std::max(max_err, std::fabs(g - w));
    }
    EXPECT_GT(max_ref, 0.0) << name() << " " << key;
    EXPECT_LE(max_err, tolerance * max_ref) << name() << " " << key << ": largest reference value " << max_ref;
    return max_ref > 0 ? max_err / max_ref : max_err;
  }

  const nlohmann::json& info_;
  bool prefill_;
  Rng rng_{1234};
  Buffer y_;
  std::map<std::string, Buffer> grads_, initial_;
};

void run_conv2d(Run& r) {
  ag::Conv2dShape s;
  s.batch = r.p("batch");
  s.in_channels = r.p("in_channels");
  s.height = r.p("height");
  s.width = r.p("width");
  s.out_channels = r.p("out_channels");
  s.kernel = r.p("kernel");
  s.stride = r.p("stride");
  s.padding = r.p("padding");
  const Buffer x = r.in("x"), w = r.in("weight"), b = r.in("bias"), dy = r.in("dy");
  ASSERT_EQ(static_cast<int64_t>(r.y().size()), s.batch * s.out_channels * s.out_height() * s.out_width());
  ag::conv2d_forward(s, x.data(), w.data(), b.data(), r.y().data());
  ag::conv2d_backward(s, dy.data(), x.data(), w.data(), r.grad("x"), r.grad("weight"), r.grad("bias"));
}

void run_group_norm(Run& r) {
  const int64_t batch = r.p("batch"), channels = r.p("channels"), hw = r.p("hw"), groups = r.p("groups");
  const float eps = r.params()["eps"].get<float>();
  const Buffer x = r.in("x"), w = r.in("weight"), b = r.in("bias"), dy = r.in("dy");
  Buffer mean(batch * groups), rstd(batch * groups);
  ag::group_norm_forward(x.data(), batch, channels, hw, groups, w.data(), b.data(), eps, r.y().data(), mean.data(),
                         rstd.data());
  ag::group_norm_backward(dy.data(), x.data(), batch, channels, hw, groups, w.data(), mean.data(), rstd.data(),
                          r.grad("x"), r.grad("weight"), r.grad("bias"));
}

void run_layer_norm(Run& r) {
  const int64_t rows = r.p("rows"), d = r.p("d");
  const float eps = r.params()["eps"].get<float>();
  const Buffer x = r.in("x"), w = r.in("weight"), b = r.in("bias"), dy = r.in("dy");
  Buffer mean(rows), rstd(rows);
  ag::layer_norm_affine_forward(x.data(), rows, d, w.data(), b.data(), eps, r.y().data(), mean.data(), rstd.data());
  ag::layer_norm_affine_backward(dy.data(), x.data(), rows, d, w.data(), mean.data(), rstd.data(), r.grad("x"),
                                 r.grad("weight"), r.grad("bias"));
}

void run_silu(Run& r) {
  const Buffer x = r.in("x"), dy = r.in("dy");
  ag::silu_forward(x.data(), r.p("n"), r.y().data());
  ag::silu_backward(dy.data(), x.data(), r.p("n"), r.grad("x"));
}

void run_upsample(Run& r) {
  const int64_t planes = r.p("planes"), h = r.p("h"), w = r.p("w"), oh = r.p("oh"), ow = r.p("ow");
  const Buffer x = r.in("x"), dy = r.in("dy");
  ag::upsample_nearest_forward(x.data(), planes, h, w, oh, ow, r.y().data());
  ag::upsample_nearest_backward(dy.data(), planes, h, w, oh, ow, r.grad("x"));
}

void run_linear(Run& r) {
  const int64_t n = r.p("n"), k = r.p("k"), m = r.p("m");
  const Buffer x = r.in("x"), w = r.in("weight"), b = r.in("bias"), dy = r.in("dy");
  ag::linear_bias_forward(x.data(), n, k, w.data(), b.data(), m, r.y().data());
  ag::linear_bias_backward(dy.data(), x.data(), n, k, w.data(), m, r.grad("x"), r.grad("weight"), r.grad("bias"));
}

void run_geglu(Run& r) {
  // diffusers' GEGLU module: its projection (to 2 * out), then the gated half-split.
  const int64_t rows = r.p("rows"), din = r.p("in"), dout = r.p("out");
  const Buffer x = r.in("x"), w = r.in("proj.weight"), b = r.in("proj.bias"), dy = r.in("dy");
  Buffer proj(rows * 2 * dout), dproj(proj.size(), 0.0f);
  ag::linear_bias_forward(x.data(), rows, din, w.data(), b.data(), 2 * dout, proj.data());
  ag::geglu_forward(proj.data(), rows, dout, r.y().data());
  ag::geglu_backward(dy.data(), proj.data(), rows, dout, dproj.data());
  ag::linear_bias_backward(dproj.data(), x.data(), rows, din, w.data(), 2 * dout, r.grad("x"), r.grad("proj.weight"),
                           r.grad("proj.bias"));
}

void run_attention(Run& r) {
  const int64_t heads = r.p("heads"), hd = r.p("head_dim");
  const ag::FullAttentionShape s{r.p("batch"), r.p("q_len"), r.p("kv_len"), heads, hd, heads * hd, heads * hd};
  const Buffer q = r.in("q"), k = r.in("k"), v = r.in("v"), dy = r.in("dy");
  ag::full_attention_forward(s, q.data(), k.data(), v.data(), r.y().data());
  ag::full_attention_backward(s, q.data(), k.data(), v.data(), dy.data(), r.grad("q"), r.grad("k"), r.grad("v"));
}

void run_timestep(Run& r) {
  const Buffer t = r.in("t");
  ag::timestep_embedding(t.data(), r.p("batch"), r.p("dim"), r.params()["flip_sin_to_cos"].get<bool>(),
                         r.params()["freq_shift"].get<float>(), r.y().data());
}

void run_mse(Run& r) {
  const Buffer pred = r.in("pred"), target = r.in("target");
  r.y()[0] = static_cast<float>(ag::mse_loss(pred.data(), target.data(), r.p("n"), 1.0f, r.grad("pred")));
}

// ResnetBlock2D: norm1, SiLU, conv1, + time_emb_proj(SiLU(temb)) per channel, norm2, SiLU, conv2,
// plus the 1x1 shortcut of the input; then its backward, step by step in reverse.
void run_resnet_block(Run& r) {
  const int64_t batch = r.p("batch"), cin = r.p("in_channels"), cout = r.p("out_channels"), h = r.p("height"),
                w = r.p("width"), tdim = r.p("temb"), groups = r.p("groups"), hw = h * w;
  const float eps = r.params()["eps"].get<float>();
  const Buffer x = r.in("x"), temb = r.in("temb"), dy = r.in("dy");
  const Buffer n1w = r.in("norm1.weight"), n1b = r.in("norm1.bias"), c1w = r.in("conv1.weight"),
               c1b = r.in("conv1.bias"), tw = r.in("time_emb_proj.weight"), tb = r.in("time_emb_proj.bias"),
               n2w = r.in("norm2.weight"), n2b = r.in("norm2.bias"), c2w = r.in("conv2.weight"),
               c2b = r.in("conv2.bias"), sw = r.in("conv_shortcut.weight"), sb = r.in("conv_shortcut.bias");
  ag::Conv2dShape conv1{batch, cin, h, w, cout, 3, 1, 1}, conv2{batch, cout, h, w, cout, 3, 1, 1},
      shortcut{batch, cin, h, w, cout, 1, 1, 0};
  const int64_t nin = batch * cin * hw, nout = batch * cout * hw;
  Buffer h0(nin), a0(nin), h1(nout), st(batch * tdim), tp(batch * cout), h2(nout), a2(nout);
  Buffer mean1(batch * groups), rstd1(mean1.size()), mean2(mean1.size()), rstd2(mean1.size());
  ag::group_norm_forward(x.data(), batch, cin, hw, groups, n1w.data(), n1b.data(), eps, h0.data(), mean1.data(),
                         rstd1.data());
  ag::silu_forward(h0.data(), nin, a0.data());
  ag::conv2d_forward(conv1, a0.data(), c1w.data(), c1b.data(), h1.data());
  ag::silu_forward(temb.data(), batch * tdim, st.data());
  ag::linear_bias_forward(st.data(), batch, tdim, tw.data(), tb.data(), cout, tp.data());
  ag::add_channel_bias_forward(h1.data(), batch, cout, hw, tp.data());
  ag::group_norm_forward(h1.data(), batch, cout, hw, groups, n2w.data(), n2b.data(), eps, h2.data(), mean2.data(),
                         rstd2.data());
  ag::silu_forward(h2.data(), nout, a2.data());
  Buffer& y = r.y();
  ag::conv2d_forward(conv2, a2.data(), c2w.data(), c2b.data(), y.data());
  Buffer skip(nout);
  ag::conv2d_forward(shortcut, x.data(), sw.data(), sb.data(), skip.data());
  for (int64_t i = 0; i < nout; ++i) y[i] += skip[i];

  Buffer da2(nout, 0.0f), dh2(nout, 0.0f), dh1(nout, 0.0f), dtp(tp.size(), 0.0f), dst(st.size(), 0.0f),
      da0(nin, 0.0f), dh0(nin, 0.0f);
  float* dx = r.grad("x");
  ag::conv2d_backward(shortcut, dy.data(), x.data(), sw.data(), dx, r.grad("conv_shortcut.weight"),
                      r.grad("conv_shortcut.bias"));
  ag::conv2d_backward(conv2, dy.data(), a2.data(), c2w.data(), da2.data(), r.grad("conv2.weight"),
                      r.grad("conv2.bias"));
  ag::silu_backward(da2.data(), h2.data(), nout, dh2.data());
  ag::group_norm_backward(dh2.data(), h1.data(), batch, cout, hw, groups, n2w.data(), mean2.data(), rstd2.data(),
                          dh1.data(), r.grad("norm2.weight"), r.grad("norm2.bias"));
  ag::add_channel_bias_backward(dh1.data(), batch, cout, hw, dtp.data());
  ag::linear_bias_backward(dtp.data(), st.data(), batch, tdim, tw.data(), cout, dst.data(),
                           r.grad("time_emb_proj.weight"), r.grad("time_emb_proj.bias"));
  ag::silu_backward(dst.data(), temb.data(), batch * tdim, r.grad("temb"));
  ag::conv2d_backward(conv1, dh1.data(), a0.data(), c1w.data(), da0.data(), r.grad("conv1.weight"),
                      r.grad("conv1.bias"));
  ag::silu_backward(da0.data(), h0.data(), nin, dh0.data());
  ag::group_norm_backward(dh0.data(), x.data(), batch, cin, hw, groups, n1w.data(), mean1.data(), rstd1.data(), dx,
                          r.grad("norm1.weight"), r.grad("norm1.bias"));
}

// One attention sub-layer of the transformer block: bias-free q/k/v projections, non-causal
// multi-head attention, output projection with bias.
struct AttentionLayer {
  Buffer wq, wk, wv, wo, bo;
  std::string prefix;
  int64_t dim = 0, ctx_dim = 0, heads = 0, head_dim = 0;

  AttentionLayer(Run& r, const std::string& p, int64_t d, int64_t cd, int64_t h, int64_t hd)
      : wq(r.in(p + ".to_q.weight")), wk(r.in(p + ".to_k.weight")), wv(r.in(p + ".to_v.weight")),
        wo(r.in(p + ".to_out.0.weight")), bo(r.in(p + ".to_out.0.bias")), prefix(p), dim(d), ctx_dim(cd), heads(h),
        head_dim(hd) {}

  // Saved activations of one forward.
  Buffer q, k, v, ctx;

  void forward(const float* x, const float* context, int64_t batch, int64_t n, int64_t m, float* out) {
    const int64_t inner = heads * head_dim;
    q.assign(batch * n * inner, 0.0f);
    k.assign(batch * m * inner, 0.0f);
    v.assign(k.size(), 0.0f);
    ctx.assign(q.size(), 0.0f);
    ag::linear_forward(x, batch * n, dim, wq.data(), inner, q.data());
    ag::linear_forward(context, batch * m, ctx_dim, wk.data(), inner, k.data());
    ag::linear_forward(context, batch * m, ctx_dim, wv.data(), inner, v.data());
    ag::full_attention_forward({batch, n, m, heads, head_dim, inner, inner}, q.data(), k.data(), v.data(), ctx.data());
    ag::linear_bias_forward(ctx.data(), batch * n, inner, wo.data(), bo.data(), dim, out);
  }

  // dx and dcontext are added into (the same buffer for self-attention).
  void backward(Run& r, const float* dout, const float* x, const float* context, int64_t batch, int64_t n, int64_t m,
                float* dx, float* dcontext) {
    const int64_t inner = heads * head_dim;
    Buffer dctx(ctx.size(), 0.0f), dq(q.size(), 0.0f), dk(k.size(), 0.0f), dv(v.size(), 0.0f);
    ag::linear_bias_backward(dout, ctx.data(), batch * n, inner, wo.data(), dim, dctx.data(),
                             r.grad(prefix + ".to_out.0.weight"), r.grad(prefix + ".to_out.0.bias"));
    ag::full_attention_backward({batch, n, m, heads, head_dim, inner, inner}, q.data(), k.data(), v.data(),
                                dctx.data(), dq.data(), dk.data(), dv.data());
    ag::linear_backward(dq.data(), x, batch * n, dim, wq.data(), inner, dx, r.grad(prefix + ".to_q.weight"));
    ag::linear_backward(dk.data(), context, batch * m, ctx_dim, wk.data(), inner, dcontext,
                        r.grad(prefix + ".to_k.weight"));
    ag::linear_backward(dv.data(), context, batch * m, ctx_dim, wv.data(), inner, dcontext,
                        r.grad(prefix + ".to_v.weight"));
  }
};

// A LayerNorm with its saved statistics.
struct Norm {
  Buffer w, b, mean, rstd, x, y;
  std::string prefix;
  float eps;
  Norm(Run& r, const std::string& p, float e) : w(r.in(p + ".weight")), b(r.in(p + ".bias")), prefix(p), eps(e) {}
  void forward(const Buffer& in, int64_t rows) {
    const int64_t d = static_cast<int64_t>(w.size());
    x = in;
    y.assign(in.size(), 0.0f);
    mean.assign(rows, 0.0f);
    rstd.assign(rows, 0.0f);
    ag::layer_norm_affine_forward(x.data(), rows, d, w.data(), b.data(), eps, y.data(), mean.data(), rstd.data());
  }
  void backward(Run& r, const Buffer& dy, int64_t rows, float* dx) {
    ag::layer_norm_affine_backward(dy.data(), x.data(), rows, static_cast<int64_t>(w.size()), w.data(), mean.data(),
                                   rstd.data(), dx, r.grad(prefix + ".weight"), r.grad(prefix + ".bias"));
  }
};

// BasicTransformerBlock: x += attn1(norm1(x)); x += attn2(norm2(x), context); x += ff(norm3(x)),
// ff = net.2(GEGLU(net.0.proj(.))).
void run_transformer_block(Run& r) {
  const int64_t batch = r.p("batch"), n = r.p("tokens"), dim = r.p("dim"), heads = r.p("heads"),
                hd = r.p("head_dim"), m = r.p("context_len"), cdim = r.p("context_dim"), rows = batch * n;
  const float eps = r.params()["eps"].get<float>();
  const Buffer x = r.in("x"), context = r.in("context"), dy = r.in("dy");
  Norm norm1(r, "norm1", eps), norm2(r, "norm2", eps), norm3(r, "norm3", eps);
  AttentionLayer attn1(r, "attn1", dim, dim, heads, hd), attn2(r, "attn2", dim, cdim, heads, hd);
  const Buffer w0 = r.in("ff.net.0.proj.weight"), b0 = r.in("ff.net.0.proj.bias"), w2 = r.in("ff.net.2.weight"),
               b2 = r.in("ff.net.2.bias");
  const int64_t ff = 4 * dim;

  Buffer x1 = x, o(rows * dim);
  norm1.forward(x1, rows);
  attn1.forward(norm1.y.data(), norm1.y.data(), batch, n, n, o.data());
  for (int64_t i = 0; i < rows * dim; ++i) x1[i] += o[i];
  Buffer x2 = x1;
  norm2.forward(x2, rows);
  attn2.forward(norm2.y.data(), context.data(), batch, n, m, o.data());
  for (int64_t i = 0; i < rows * dim; ++i) x2[i] += o[i];
  norm3.forward(x2, rows);
  Buffer proj(rows * 2 * ff), gated(rows * ff);
  ag::linear_bias_forward(norm3.y.data(), rows, dim, w0.data(), b0.data(), 2 * ff, proj.data());
  ag::geglu_forward(proj.data(), rows, ff, gated.data());
  ag::linear_bias_forward(gated.data(), rows, ff, w2.data(), b2.data(), dim, o.data());
  Buffer& y = r.y();
  for (int64_t i = 0; i < rows * dim; ++i) y[i] = x2[i] + o[i];

  // Backward: the residual stream's gradient passes every sub-layer and collects its input
  // gradient on the way back.
  Buffer dres = dy, dgated(gated.size(), 0.0f), dproj(proj.size(), 0.0f), dn(rows * dim, 0.0f);
  ag::linear_bias_backward(dy.data(), gated.data(), rows, ff, w2.data(), dim, dgated.data(), r.grad("ff.net.2.weight"),
                           r.grad("ff.net.2.bias"));
  ag::geglu_backward(dgated.data(), proj.data(), rows, ff, dproj.data());
  ag::linear_bias_backward(dproj.data(), norm3.y.data(), rows, dim, w0.data(), 2 * ff, dn.data(),
                           r.grad("ff.net.0.proj.weight"), r.grad("ff.net.0.proj.bias"));
  norm3.backward(r, dn, rows, dres.data());

  const Buffer dout2 = dres;
  std::fill(dn.begin(), dn.end(), 0.0f);
  attn2.backward(r, dout2.data(), norm2.y.data(), context.data(), batch, n, m, dn.data(), r.grad("context"));
  norm2.backward(r, dn, rows, dres.data());

  const Buffer dout1 = dres;
  std::fill(dn.begin(), dn.end(), 0.0f);
  attn1.backward(r, dout1.data(), norm1.y.data(), norm1.y.data(), batch, n, n, dn.data(), dn.data());
  norm1.backward(r, dn, rows, dres.data());
  float* dx = r.grad("x");
  for (int64_t i = 0; i < rows * dim; ++i) dx[i] += dres[i];
}

const std::map<std::string, std::function<void(Run&)>>& runners() {
  static const std::map<std::string, std::function<void(Run&)>> table = {
      {"conv2d", run_conv2d},
      {"group_norm", run_group_norm},
      {"layer_norm", run_layer_norm},
      {"silu", run_silu},
      {"upsample", run_upsample},
      {"linear", run_linear},
      {"geglu", run_geglu},
      {"attention", run_attention},
      {"timestep", run_timestep},
      {"mse", run_mse},
      {"resnet_block", run_resnet_block},
      {"transformer_block", run_transformer_block},
  };
  return table;
}

// Runs every case of `op` and checks it; returns how many there were.
int check_op(const std::string& op, bool prefill = false) {
  int count = 0;
  for (const auto& info : fixture().index["cases"]) {
    if (info["op"] != op) continue;
    ++count;
    Run r(info, prefill);
    runners().at(op)(r);
    const double worst = r.check();
    std::printf("  %-28s largest relative error %.2e%s\n", r.name().c_str(), worst,
                prefill ? " (into prefilled gradients)" : "");
  }
  return count;
}

TEST(UnetOpsGrad, EveryFixtureCaseHasARunner) {
  ASSERT_GE(fixture().index["cases"].size(), 20u);
  for (const auto& info : fixture().index["cases"])
    EXPECT_TRUE(runners().count(info["op"].get<std::string>())) << info["name"];
}

TEST(UnetOpsGrad, Conv2dMatchesTorch) { EXPECT_EQ(check_op("conv2d"), 5); }
TEST(UnetOpsGrad, GroupNormMatchesTorch) { EXPECT_EQ(check_op("group_norm"), 3); }
TEST(UnetOpsGrad, LayerNormWithBiasMatchesTorch) { EXPECT_EQ(check_op("layer_norm"), 2); }
TEST(UnetOpsGrad, SiluMatchesTorch) { EXPECT_EQ(check_op("silu"), 1); }
TEST(UnetOpsGrad, NearestUpsampleMatchesTorch) { EXPECT_EQ(check_op("upsample"), 2); }
TEST(UnetOpsGrad, LinearWithBiasMatchesTorch) { EXPECT_EQ(check_op("linear"), 1); }
TEST(UnetOpsGrad, GegluMatchesDiffusers) { EXPECT_EQ(check_op("geglu"), 2); }
TEST(UnetOpsGrad, SelfAndCrossAttentionMatchTorch) { EXPECT_EQ(check_op("attention"), 4); }
TEST(UnetOpsGrad, TimestepEmbeddingMatchesDiffusers) { EXPECT_EQ(check_op("timestep"), 2); }
TEST(UnetOpsGrad, MseLossMatchesTorch) { EXPECT_EQ(check_op("mse"), 1); }

TEST(UnetOpsGrad, BackwardAddsIntoExistingGradients) {
  // Every gradient buffer starts with random values; what the op adds must still be exactly
  // the reference gradient.
  for (const char* op : {"conv2d", "group_norm", "layer_norm", "silu", "upsample", "linear", "geglu", "attention",
                         "mse", "resnet_block", "transformer_block"})
    EXPECT_GE(check_op(op, /*prefill=*/true), 1) << op;
}

// A model trained with these ops is served by src/models/diffusion, which runs its own kernels:
// the two must compute the same function, at sizes past the kernels' blocking.
TEST(UnetOpsGrad, ForwardsAgreeWithTheInferenceKernels) {
  Rng rng(5);
  auto random = [&](int64_t n, float scale = 1.0f) {
    Buffer v(static_cast<size_t>(n));
    for (auto& x : v) x = static_cast<float>(rng.normal()) * scale;
    return v;
  };
  auto expect_close = [](const std::string& what, const Buffer& got, const Buffer& want, double tolerance) {
    ASSERT_EQ(got.size(), want.size()) << what;
    double max_ref = 0, max_err = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      max_ref = std::max(max_ref, std::fabs(static_cast<double>(want[i])));
      max_err = std::max(max_err, std::fabs(static_cast<double>(got[i]) - want[i]));
    }
    EXPECT_LE(max_err, tolerance * max_ref) << what;
  };

  // Convolutions: the 3x3 same-size one and the stride-2 downsampler, two images.
  for (const int64_t stride : {1, 2}) {
    const ag::Conv2dShape s{2, 24, 19, 13, 40, 3, stride, 1};
    kernels::Conv2dShape ks;
    ks.in_channels = s.in_channels;
    ks.out_channels = s.out_channels;
    ks.stride = stride;
    const Buffer x = random(s.batch * s.in_channels * s.height * s.width), w = random(40 * 24 * 9, 0.1f),
                 b = random(40);
    const int64_t out = s.out_channels * s.out_height() * s.out_width();
    Buffer got(s.batch * out), want(got.size());
    ag::conv2d_forward(s, x.data(), w.data(), b.data(), got.data());
    for (int64_t i = 0; i < s.batch; ++i)
      kernels::conv2d(x.data() + i * 24 * 19 * 13, s.height, s.width, ks, w.data(), b.data(), want.data() + i * out);
    expect_close("conv2d stride " + std::to_string(stride), got, want, 1e-5);
  }

  {
    const int64_t c = 64, hw = 300, groups = 32;
    const Buffer x = random(c * hw, 2.0f), w = random(c), b = random(c);
    Buffer got(x.size()), want = x, mean(groups), rstd(groups);
    ag::group_norm_forward(x.data(), 1, c, hw, groups, w.data(), b.data(), 1e-5f, got.data(), mean.data(),
                           rstd.data());
    kernels::group_norm(want.data(), c, hw, groups, w.data(), b.data(), 1e-5f, /*silu=*/false);
    expect_close("group_norm", got, want, 1e-5);
    ag::silu_forward(got.data(), c * hw, got.data());
    want = x;
    kernels::group_norm(want.data(), c, hw, groups, w.data(), b.data(), 1e-5f, /*silu=*/true);
    expect_close("group_norm + silu", got, want, 1e-5);
  }

  {
    const int64_t rows = 37, d = 96;
    const Buffer x = random(rows * d), w = random(d), b = random(d);
    Buffer got(x.size()), want(x.size()), mean(rows), rstd(rows);
    ag::layer_norm_affine_forward(x.data(), rows, d, w.data(), b.data(), 1e-5f, got.data(), mean.data(), rstd.data());
    kernels::layer_norm_affine(x.data(), rows, d, w.data(), b.data(), 1e-5f, want.data());
    expect_close("layer_norm", got, want, 1e-5);
  }

  {
    const int64_t rows = 21, n = 77;  // n not a multiple of the kernel's vector width
    const Buffer x = random(rows * 2 * n, 2.0f);
    Buffer got(rows * n), want(rows * n);
    ag::geglu_forward(x.data(), rows, n, got.data());
    kernels::geglu(x.data(), rows, n, want.data());
    expect_close("geglu", got, want, 1e-5);
  }

  // Self-attention over more queries than one block, and cross-attention to 77 text states.
  for (const int64_t kv_len : {int64_t{150}, int64_t{77}}) {
    const int64_t q_len = 150, heads = 4, hd = 16, inner = heads * hd;
    const Buffer q = random(q_len * inner), k = random(kv_len * inner), v = random(kv_len * inner);
    Buffer got(q_len * inner), want(q_len * inner);
    ag::full_attention_forward({1, q_len, kv_len, heads, hd, inner, inner}, q.data(), k.data(), v.data(), got.data());
    kernels::attention(q.data(), inner, k.data(), inner, v.data(), inner, q_len, kv_len, heads, hd,
                       1.0f / std::sqrt(static_cast<float>(hd)), /*causal=*/false, want.data(), inner);
    expect_close("attention over " + std::to_string(kv_len) + " keys", got, want, 1e-5);
  }
}

TEST(UnetOpsGrad, ResnetBlockComposedFromTheOpsMatchesDiffusers) { EXPECT_EQ(check_op("resnet_block"), 1); }
TEST(UnetOpsGrad, TransformerBlockComposedFromTheOpsMatchesDiffusers) { EXPECT_EQ(check_op("transformer_block"), 1); }

}  // namespace
}  // namespace tessera
