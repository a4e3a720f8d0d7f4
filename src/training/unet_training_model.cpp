#include "training/unet_training_model.h"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <unordered_map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "autograd/ops.h"
#include "autograd/tape.h"
#include "autograd/unet_ops.h"
#include "core/error.h"
#include "core/rng.h"
#include "formats/safetensors.h"
#include "models/diffusion/component_weights.h"
#include "models/diffusion/model_config.h"

namespace tessera::training {

namespace ag = tessera::autograd;
using diffusion::UNetConfig;

// ---- Configuration -----------------------------------------------------------------------

UnetTrainingConfig UnetTrainingConfig::load(const std::filesystem::path& path) {
  UnetTrainingConfig c;
  c.unet = UNetConfig::load(path);
  const diffusion::JsonConfig j(path);
  const std::string& o = j.origin();
  c.linear_projection = j.boolean("use_linear_projection", false);
  // Options UNetConfig::load accepts or ignores because inference never meets them in the models
  // it serves, but that change what a training step computes.
  for (const char* key : {"num_class_embeds", "time_embedding_dim", "cross_attention_norm", "encoder_hid_dim"})
    if (j.has(key)) fail("{}: \"{}\" is not supported by the UNet training model", o, key);
  if (j.integer("downsample_padding", 1) != 1) fail("{}: \"downsample_padding\" must be 1 for training", o);
  if (j.number("mid_block_scale_factor", 1.0) != 1.0) fail("{}: \"mid_block_scale_factor\" must be 1 for training", o);
  if (j.number("resnet_out_scale_factor", 1.0) != 1.0)
    fail("{}: \"resnet_out_scale_factor\" must be 1 for training", o);
  if (j.number("dropout", 0.0) != 0.0) fail("{}: \"dropout\" is not supported by the UNet training model", o);
  for (const char* key : {"resnet_skip_time_act", "mid_block_only_cross_attention", "class_embeddings_concat"})
    if (j.boolean(key, false)) fail("{}: \"{}\" is not supported by the UNet training model", o, key);
  c.validate(o);
  return c;
}

void UnetTrainingConfig::validate(const std::string& o) const {
  const auto& u = unet;
  const size_t blocks = u.block_out_channels.size();
  if (blocks == 0) fail("{}: \"block_out_channels\" is empty", o);
  if (u.text_time_embedding) fail("{}: \"addition_embed_type\" is not supported by the UNet training model", o);
  if (u.mid_block_type != "UNetMidBlock2DCrossAttn")
    fail("{}: \"mid_block_type\" '{}' is not supported (UNetMidBlock2DCrossAttn)", o, u.mid_block_type);
  if (u.down_block_types.size() != blocks || u.up_block_types.size() != blocks || u.layers_per_block.size() != blocks ||
      u.attention_heads.size() != blocks || u.transformer_layers_per_block.size() != blocks)
    fail("{}: \"down_block_types\", \"up_block_types\", \"layers_per_block\", \"attention_head_dim\" and "
         "\"transformer_layers_per_block\" need one entry per block of \"block_out_channels\"",
         o);
  for (const auto& t : u.down_block_types)
    if (t != "CrossAttnDownBlock2D" && t != "DownBlock2D")
      fail("{}: \"down_block_types\" entry '{}' is not supported (CrossAttnDownBlock2D, DownBlock2D)", o, t);
  for (const auto& t : u.up_block_types)
    if (t != "CrossAttnUpBlock2D" && t != "UpBlock2D")
      fail("{}: \"up_block_types\" entry '{}' is not supported (CrossAttnUpBlock2D, UpBlock2D)", o, t);
  for (size_t i = 0; i < blocks; ++i) {
    const int64_t ch = u.block_out_channels[i];
    if (ch <= 0 || ch % u.norm_num_groups != 0)
      fail("{}: \"block_out_channels\" {} is not a positive multiple of \"norm_num_groups\" {}", o, ch,
           u.norm_num_groups);
    if (u.layers_per_block[i] < 1) fail("{}: \"layers_per_block\" must be at least 1", o);
    if (u.transformer_layers_per_block[i] < 1) fail("{}: \"transformer_layers_per_block\" must be at least 1", o);
    if (u.attention_heads[i] < 1 || ch % u.attention_heads[i] != 0)
      fail("{}: \"attention_head_dim\" {} (the number of heads) does not divide {} channels", o, u.attention_heads[i],
           ch);
  }
  if (u.in_channels < 1 || u.out_channels < 1 || u.cross_attention_dim < 1)
    fail("{}: \"in_channels\", \"out_channels\" and \"cross_attention_dim\" must be positive", o);
}

namespace {

nlohmann::json config_json(const UnetTrainingConfig& tc) {
  const auto& c = tc.unet;
  nlohmann::json j;
  j["_class_name"] = "UNet2DConditionModel";
  j["in_channels"] = c.in_channels;
  j["out_channels"] = c.out_channels;
  j["block_out_channels"] = c.block_out_channels;
  j["down_block_types"] = c.down_block_types;
  j["up_block_types"] = c.up_block_types;
  j["mid_block_type"] = c.mid_block_type;
  j["layers_per_block"] = c.layers_per_block;
  j["transformer_layers_per_block"] = c.transformer_layers_per_block;
  // diffusers' historical name for the number of heads (num_attention_heads is refused by its
  // UNet2DConditionModel).
  j["attention_head_dim"] = c.attention_heads;
  j["cross_attention_dim"] = c.cross_attention_dim;
  j["norm_num_groups"] = c.norm_num_groups;
  j["norm_eps"] = c.norm_eps;
  j["flip_sin_to_cos"] = c.flip_sin_to_cos;
  j["freq_shift"] = c.freq_shift;
  j["sample_size"] = c.sample_size;
  j["use_linear_projection"] = tc.linear_projection;
  j["act_fn"] = "silu";
  return j;
}

bool is_norm_weight(const std::string& name) {
  const auto dot = name.rfind('.');
  return name.ends_with(".weight") && name.substr(0, dot).find("norm") != std::string::npos;
}

// Every parameter of the model under its diffusers name and shape.
std::vector<std::pair<std::string, Shape>> weight_shapes(const UnetTrainingConfig& tc) {
  const auto& c = tc.unet;
  std::vector<std::pair<std::string, Shape>> out;
  auto add = [&](const std::string& name, Shape shape) { out.emplace_back(name, std::move(shape)); };
  auto linear = [&](const std::string& p, int64_t in, int64_t o, bool bias) {
    add(p + ".weight", {o, in});
    if (bias) add(p + ".bias", {o});
  };
  auto conv = [&](const std::string& p, int64_t in, int64_t o, int64_t k) {
    add(p + ".weight", {o, in, k, k});
    add(p + ".bias", {o});
  };
  auto norm = [&](const std::string& p, int64_t ch) {
    add(p + ".weight", {ch});
    add(p + ".bias", {ch});
  };
  const int64_t temb = c.time_embed_dim();
  auto resnet = [&](const std::string& p, int64_t in, int64_t o) {
    norm(p + ".norm1", in);
    conv(p + ".conv1", in, o, 3);
    linear(p + ".time_emb_proj", temb, o, true);
    norm(p + ".norm2", o);
    conv(p + ".conv2", o, o, 3);
    if (in != o) conv(p + ".conv_shortcut", in, o, 1);
  };
  auto transformer = [&](const std::string& p, int64_t ch, int64_t layers) {
    const int64_t cd = c.cross_attention_dim;
    norm(p + ".norm", ch);
    auto proj = [&](const std::string& name) {
      if (tc.linear_projection)
        linear(p + name, ch, ch, true);
      else
        conv(p + name, ch, ch, 1);
    };
    proj(".proj_in");
    for (int64_t l = 0; l < layers; ++l) {
      const std::string b = fmt::format("{}.transformer_blocks.{}", p, l);
      norm(b + ".norm1", ch);
      linear(b + ".attn1.to_q", ch, ch, false);
      linear(b + ".attn1.to_k", ch, ch, false);
      linear(b + ".attn1.to_v", ch, ch, false);
      linear(b + ".attn1.to_out.0", ch, ch, true);
      norm(b + ".norm2", ch);
      linear(b + ".attn2.to_q", ch, ch, false);
      linear(b + ".attn2.to_k", cd, ch, false);
      linear(b + ".attn2.to_v", cd, ch, false);
      linear(b + ".attn2.to_out.0", ch, ch, true);
      norm(b + ".norm3", ch);
      linear(b + ".ff.net.0.proj", ch, 8 * ch, true);
      linear(b + ".ff.net.2", 4 * ch, ch, true);
    }
    proj(".proj_out");
  };

  const int64_t blocks = static_cast<int64_t>(c.block_out_channels.size());
  conv("conv_in", c.in_channels, c.block_out_channels[0], 3);
  linear("time_embedding.linear_1", c.block_out_channels[0], temb, true);
  linear("time_embedding.linear_2", temb, temb, true);
  int64_t out_ch = c.block_out_channels[0];
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t in_ch = out_ch;
    out_ch = c.block_out_channels[i];
    const std::string p = fmt::format("down_blocks.{}", i);
    if (c.down_block_types[i] == "CrossAttnDownBlock2D")
      for (int64_t j = 0; j < c.layers_per_block[i]; ++j)
        transformer(fmt::format("{}.attentions.{}", p, j), out_ch, c.transformer_layers_per_block[i]);
    for (int64_t j = 0; j < c.layers_per_block[i]; ++j)
      resnet(fmt::format("{}.resnets.{}", p, j), j == 0 ? in_ch : out_ch, out_ch);
    if (i + 1 < blocks) conv(p + ".downsamplers.0.conv", out_ch, out_ch, 3);
  }
  std::vector<int64_t> rev(c.block_out_channels.rbegin(), c.block_out_channels.rend());
  out_ch = rev[0];
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t prev_out = out_ch;
    out_ch = rev[i];
    const int64_t in_ch = rev[std::min(i + 1, blocks - 1)];
    const int64_t down_index = blocks - 1 - i;
    const int64_t layers = c.layers_per_block[down_index] + 1;
    const std::string p = fmt::format("up_blocks.{}", i);
    if (c.up_block_types[i] == "CrossAttnUpBlock2D")
      for (int64_t j = 0; j < layers; ++j)
        transformer(fmt::format("{}.attentions.{}", p, j), out_ch, c.transformer_layers_per_block[down_index]);
    for (int64_t j = 0; j < layers; ++j) {
      const int64_t skip = j == layers - 1 ? in_ch : out_ch;
      resnet(fmt::format("{}.resnets.{}", p, j), (j == 0 ? prev_out : out_ch) + skip, out_ch);
    }
    if (i + 1 < blocks) conv(p + ".upsamplers.0.conv", out_ch, out_ch, 3);
  }
  const int64_t mid = c.block_out_channels.back();
  transformer("mid_block.attentions.0", mid, c.transformer_layers_per_block.back());
  resnet("mid_block.resnets.0", mid, mid);
  resnet("mid_block.resnets.1", mid, mid);
  norm("conv_norm_out", c.block_out_channels[0]);
  conv("conv_out", c.block_out_channels[0], c.out_channels, 3);
  return out;
}

// ---- The graph of one forward pass -------------------------------------------------------

// An activation and, once something downstream has sent one back, its gradient.
struct Node {
  std::vector<float> v, g;
  float* grad() {
    if (g.empty()) g.assign(v.size(), 0.0f);
    return g.data();
  }
};

// A feature map in flight: [batch, c, h * w].
struct Map {
  Node* node = nullptr;
  int64_t c = 0, h = 0, w = 0;
  int64_t hw() const { return h * w; }
};

// Builds the forward of one batch op by op; each op records its backward on the tape when
// training. Nodes live until the pass ends (the backward reads them), at stable addresses.
class Graph {
 public:
  Graph(int64_t batch, bool backward, const std::unordered_map<std::string, size_t>& index,
        const std::vector<Parameter>& params, float* values, float* grads)
      : batch_(batch), backward_(backward), index_(index), params_(params), values_(values), grads_(grads) {}

  int64_t batch() const { return batch_; }

  Node* node(int64_t n) {
    nodes_.push_back(std::make_unique<Node>());
    nodes_.back()->v.assign(static_cast<size_t>(n), 0.0f);
    return nodes_.back().get();
  }
  Node* input(const float* data, int64_t n) {
    Node* x = node(n);
    std::copy_n(data, n, x->v.data());
    return x;
  }
  void backward() { tape_.backward(); }

  const float* w(const std::string& name) const { return values_ + param(name).offset; }
  float* g(const std::string& name) const { return backward_ ? grads_ + param(name).offset : nullptr; }

  // nn.Conv2d, weight [out, in, k, k] and bias.
  Map conv(const Map& x, int64_t out, int64_t kernel, int64_t stride, const std::string& p) {
    const ag::Conv2dShape s{batch_, x.c, x.h, x.w, out, kernel, stride, kernel / 2};
    Map y{node(batch_ * out * s.out_height() * s.out_width()), out, s.out_height(), s.out_width()};
    const float *wt = w(p + ".weight"), *b = w(p + ".bias");
    ag::conv2d_forward(s, x.node->v.data(), wt, b, y.node->v.data());
    record([=, this, xn = x.node, yn = y.node] {
      ag::conv2d_backward(s, yn->grad(), xn->v.data(), wt, xn->grad(), g(p + ".weight"), g(p + ".bias"));
    });
    return y;
  }

  Map group_norm(const Map& x, int64_t groups, float eps, const std::string& p) {
    Map y = x;
    y.node = node(batch_ * x.c * x.hw());
    auto stats = std::make_shared<std::vector<float>>(static_cast<size_t>(2 * batch_ * groups));
    const float* wt = w(p + ".weight");
    ag::group_norm_forward(x.node->v.data(), batch_, x.c, x.hw(), groups, wt, w(p + ".bias"), eps, y.node->v.data(),
                           stats->data(), stats->data() + batch_ * groups);
    record([=, this, xn = x.node, yn = y.node] {
      ag::group_norm_backward(yn->grad(), xn->v.data(), batch_, x.c, x.hw(), groups, wt, stats->data(),
                              stats->data() + batch_ * groups, xn->grad(), g(p + ".weight"), g(p + ".bias"));
    });
    return y;
  }

  Node* silu(Node* x) {
    const int64_t n = static_cast<int64_t>(x->v.size());
    Node* y = node(n);
    ag::silu_forward(x->v.data(), n, y->v.data());
    record([=] { ag::silu_backward(y->grad(), x->v.data(), n, x->grad()); });
    return y;
  }
  Map silu(const Map& x) { return {silu(x.node), x.c, x.h, x.w}; }

  // nn.Linear over `rows` rows of x; a 1x1 convolution's [out, in, 1, 1] weight is the same
  // matrix in memory.
  Node* linear(Node* x, int64_t rows, int64_t in, int64_t out, bool bias, const std::string& p) {
    Node* y = node(rows * out);
    const float* wt = w(p + ".weight");
    ag::linear_bias_forward(x->v.data(), rows, in, wt, bias ? w(p + ".bias") : nullptr, out, y->v.data());
    record([=, this] {
      ag::linear_bias_backward(y->grad(), x->v.data(), rows, in, wt, out, x->grad(), g(p + ".weight"),
                               bias ? g(p + ".bias") : nullptr);
    });
    return y;
  }

  Node* add(Node* a, Node* b) {
    const int64_t n = static_cast<int64_t>(a->v.size());
    Node* y = node(n);
    for (int64_t i = 0; i < n; ++i) y->v[i] = a->v[i] + b->v[i];
    record([=] {
      const float* dy = y->grad();
      float *da = a->grad(), *db = b->grad();
      for (int64_t i = 0; i < n; ++i) da[i] += dy[i];
      for (int64_t i = 0; i < n; ++i) db[i] += dy[i];
    });
    return y;
  }
  Map add(const Map& a, const Map& b) { return {add(a.node, b.node), a.c, a.h, a.w}; }

  // x plus v[batch, c] on every pixel of its channel.
  Map add_channel_bias(const Map& x, Node* v) {
    Map y = x;
    y.node = node(static_cast<int64_t>(x.node->v.size()));
    y.node->v = x.node->v;
    ag::add_channel_bias_forward(y.node->v.data(), batch_, x.c, x.hw(), v->v.data());
    record([=, this, xn = x.node, yn = y.node] {
      const float* dy = yn->grad();
      float* dx = xn->grad();
      for (size_t i = 0; i < yn->v.size(); ++i) dx[i] += dy[i];
      ag::add_channel_bias_backward(dy, batch_, x.c, x.hw(), v->grad());
    });
    return y;
  }

  // [batch, rows, cols] -> [batch, cols, rows] (images to token rows and back).
  Node* transpose(Node* x, int64_t rows, int64_t cols) {
    Node* y = node(batch_ * rows * cols);
    transpose_into(x->v.data(), rows, cols, y->v.data());
    record([=, this] {
      std::vector<float> dx(x->v.size());
      transpose_into(y->grad(), cols, rows, dx.data());
      float* d = x->grad();
      for (size_t i = 0; i < dx.size(); ++i) d[i] += dx[i];
    });
    return y;
  }

  Node* layer_norm(Node* x, int64_t rows, int64_t d, const std::string& p) {
    Node* y = node(rows * d);
    auto stats = std::make_shared<std::vector<float>>(static_cast<size_t>(2 * rows));
    const float* wt = w(p + ".weight");
    // BasicTransformerBlock's LayerNorms use torch's default eps.
    ag::layer_norm_affine_forward(x->v.data(), rows, d, wt, w(p + ".bias"), 1e-5f, y->v.data(), stats->data(),
                                  stats->data() + rows);
    record([=, this] {
      ag::layer_norm_affine_backward(y->grad(), x->v.data(), rows, d, wt, stats->data(), stats->data() + rows,
                                     x->grad(), g(p + ".weight"), g(p + ".bias"));
    });
    return y;
  }

  // diffusers' Attention with bias-free q/k/v projections: x[batch * n, dim] attends to
  // context[batch * m, context_dim].
  Node* attention(Node* x, int64_t n, int64_t dim, Node* context, int64_t m, int64_t context_dim, int64_t heads,
                  const std::string& p) {
    Node* q = linear(x, batch_ * n, dim, dim, false, p + ".to_q");
    Node* k = linear(context, batch_ * m, context_dim, dim, false, p + ".to_k");
    Node* v = linear(context, batch_ * m, context_dim, dim, false, p + ".to_v");
    const ag::FullAttentionShape s{batch_, n, m, heads, dim / heads, dim, dim};
    Node* ctx = node(batch_ * n * dim);
    ag::full_attention_forward(s, q->v.data(), k->v.data(), v->v.data(), ctx->v.data());
    record([=] {
      ag::full_attention_backward(s, q->v.data(), k->v.data(), v->v.data(), ctx->grad(), q->grad(), k->grad(),
                                  v->grad());
    });
    return linear(ctx, batch_ * n, dim, dim, true, p + ".to_out.0");
  }

  Node* geglu(Node* x, int64_t rows, int64_t n) {
    Node* y = node(rows * n);
    ag::geglu_forward(x->v.data(), rows, n, y->v.data());
    record([=] { ag::geglu_backward(y->grad(), x->v.data(), rows, n, x->grad()); });
    return y;
  }

  Map upsample(const Map& x, int64_t oh, int64_t ow) {
    Map y{node(batch_ * x.c * oh * ow), x.c, oh, ow};
    ag::upsample_nearest_forward(x.node->v.data(), batch_ * x.c, x.h, x.w, oh, ow, y.node->v.data());
    record([=, this, xn = x.node, yn = y.node] {
      ag::upsample_nearest_backward(yn->grad(), batch_ * x.c, x.h, x.w, oh, ow, xn->grad());
    });
    return y;
  }

  // Channel concatenation [a; b] of every image.
  Map concat(const Map& a, const Map& b) {
    if (a.h != b.h || a.w != b.w) fail("skip connection of {}x{} does not match {}x{}", b.h, b.w, a.h, a.w);
    Map y{node(batch_ * (a.c + b.c) * a.hw()), a.c + b.c, a.h, a.w};
    const int64_t na = a.c * a.hw(), nb = b.c * b.hw();
    for (int64_t i = 0; i < batch_; ++i) {
      std::copy_n(a.node->v.data() + i * na, na, y.node->v.data() + i * (na + nb));
      std::copy_n(b.node->v.data() + i * nb, nb, y.node->v.data() + i * (na + nb) + na);
    }
    record([=, this, an = a.node, bn = b.node, yn = y.node] {
      const float* dy = yn->grad();
      float *da = an->grad(), *db = bn->grad();
      for (int64_t i = 0; i < batch_; ++i) {
        for (int64_t j = 0; j < na; ++j) da[i * na + j] += dy[i * (na + nb) + j];
        for (int64_t j = 0; j < nb; ++j) db[i * nb + j] += dy[i * (na + nb) + na + j];
      }
    });
    return y;
  }

 private:
  const Parameter& param(const std::string& name) const {
    const auto it = index_.find(name);
    if (it == index_.end()) fail("UNet training model: no parameter named '{}'", name);
    return params_[it->second];
  }
  void record(std::function<void()> step) {
    if (backward_) tape_.push(std::move(step));
  }
  void transpose_into(const float* x, int64_t rows, int64_t cols, float* y) const {
    for (int64_t b = 0; b < batch_; ++b) {
      const float* xb = x + b * rows * cols;
      float* yb = y + b * rows * cols;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) yb[c * rows + r] = xb[r * cols + c];
    }
  }

  int64_t batch_;
  bool backward_;
  const std::unordered_map<std::string, size_t>& index_;
  const std::vector<Parameter>& params_;
  float* values_;
  float* grads_;
  std::vector<std::unique_ptr<Node>> nodes_;
  ag::Tape tape_;
};

// ResnetBlock2D: norm1, SiLU, conv1, + time_emb_proj(SiLU(temb)) per channel, norm2, SiLU,
// conv2, plus the input (through a 1x1 conv_shortcut when the channel count changes).
Map resnet(Graph& gr, const Map& x, int64_t out, Node* silu_temb, int64_t temb_dim, const UNetConfig& c,
           const std::string& p) {
  Map h = gr.silu(gr.group_norm(x, c.norm_num_groups, c.norm_eps, p + ".norm1"));
  h = gr.conv(h, out, 3, 1, p + ".conv1");
  h = gr.add_channel_bias(h, gr.linear(silu_temb, gr.batch(), temb_dim, out, true, p + ".time_emb_proj"));
  h = gr.silu(gr.group_norm(h, c.norm_num_groups, c.norm_eps, p + ".norm2"));
  h = gr.conv(h, out, 3, 1, p + ".conv2");
  return gr.add(h, x.c != out ? gr.conv(x, out, 1, 1, p + ".conv_shortcut") : x);
}

// Transformer2DModel: GroupNorm (eps 1e-6), proj_in, BasicTransformerBlocks over the pixels as
// tokens, proj_out, plus the input.
Map transformer(Graph& gr, const Map& x, Node* context, int64_t m, int64_t heads, int64_t layers, const UNetConfig& c,
                const std::string& p) {
  const int64_t ch = x.c, n = x.hw(), rows = gr.batch() * n;
  const Map h = gr.group_norm(x, c.norm_num_groups, 1e-6f, p + ".norm");
  // proj_in as a 1x1 convolution before the transpose or as a linear layer after it computes
  // the same thing; both run as the linear layer on token rows.
  Node* t = gr.linear(gr.transpose(h.node, ch, n), rows, ch, ch, true, p + ".proj_in");
  for (int64_t l = 0; l < layers; ++l) {
    const std::string b = fmt::format("{}.transformer_blocks.{}", p, l);
    Node* a = gr.layer_norm(t, rows, ch, b + ".norm1");
    t = gr.add(t, gr.attention(a, n, ch, a, n, ch, heads, b + ".attn1"));
    a = gr.layer_norm(t, rows, ch, b + ".norm2");
    t = gr.add(t, gr.attention(a, n, ch, context, m, c.cross_attention_dim, heads, b + ".attn2"));
    a = gr.layer_norm(t, rows, ch, b + ".norm3");
    Node* ff = gr.geglu(gr.linear(a, rows, ch, 8 * ch, true, b + ".ff.net.0.proj"), rows, 4 * ch);
    t = gr.add(t, gr.linear(ff, rows, 4 * ch, ch, true, b + ".ff.net.2"));
  }
  Node* o = gr.linear(t, rows, ch, ch, true, p + ".proj_out");
  return gr.add(Map{gr.transpose(o, n, ch), ch, x.h, x.w}, x);
}

}  // namespace

// ---- The model ---------------------------------------------------------------------------

UnetTrainingModel::UnetTrainingModel(UnetTrainingConfig config, Unset) : config_(std::move(config)) {
  config_.validate("UNet training config");
  layout();
}

UnetTrainingModel::UnetTrainingModel(UnetTrainingConfig config, uint64_t seed, float init_std)
    : UnetTrainingModel(std::move(config), Unset{}) {
  Rng rng(seed);
  for (const auto& p : params_) {
    float* v = values_.data() + p.offset;
    if (is_norm_weight(p.name))
      std::fill(v, v + p.size, 1.0f);
    else if (p.name.ends_with(".bias"))
      std::fill(v, v + p.size, 0.0f);
    else
      for (size_t i = 0; i < p.size; ++i) v[i] = static_cast<float>(rng.normal()) * init_std;
  }
}

void UnetTrainingModel::layout() {
  size_t offset = 0;
  for (auto& [name, shape] : weight_shapes(config_)) {
    Parameter p;
    p.name = name;
    p.shape = shape;
    p.offset = offset;
    p.size = static_cast<size_t>(shape_numel(shape));
    // Weight decay on the convolution and projection matrices only, not norms and biases.
    p.decay = shape.size() >= 2;
    offset += p.size;
    params_.push_back(std::move(p));
  }
  values_.assign(offset, 0.0f);
  grads_.assign(offset, 0.0f);
}

const Parameter& UnetTrainingModel::parameter(const std::string& name) const {
  for (const auto& p : params_)
    if (p.name == name) return p;
  fail("no parameter named '{}'", name);
}

void UnetTrainingModel::zero_grad() { std::fill(grads_.begin(), grads_.end(), 0.0f); }

UnetTrainingModel UnetTrainingModel::load(const std::filesystem::path& dir) {
  UnetTrainingModel model(UnetTrainingConfig::load(dir / "config.json"), Unset{});
  const auto weights = diffusion::ComponentWeights::from_folder(dir);
  for (const auto& p : model.params_) {
    const Tensor t = weights.get(p.name, p.shape);
    std::copy_n(t.data<float>(), p.size, model.values_.data() + p.offset);
  }
  return model;
}

void UnetTrainingModel::save(const std::filesystem::path& dir) const {
  save_model_folder(dir, "diffusion_pytorch_model.safetensors", params_, values_, config_json(config_));
}

double UnetTrainingModel::loss(const UnetBatch& batch, bool backward, float loss_scale, float* dcontext,
                               float* pred) {
  if (!batch.target) fail("UNet training batch has no target");
  return run(batch, backward, loss_scale, dcontext, pred);
}

std::vector<float> UnetTrainingModel::predict(const UnetBatch& batch) {
  const auto& c = config_.unet;
  std::vector<float> out(static_cast<size_t>(batch.batch * c.out_channels * batch.height * batch.width));
  run(batch, false, 0.0f, nullptr, out.data());
  return out;
}

double UnetTrainingModel::run(const UnetBatch& batch, bool backward, float loss_scale, float* dcontext, float* pred) {
  const auto& c = config_.unet;
  const int64_t bs = batch.batch, blocks = static_cast<int64_t>(c.block_out_channels.size());
  if (bs <= 0 || batch.height <= 0 || batch.width <= 0 || batch.context_len <= 0)
    fail("UNet training batch is empty ({} images of {}x{}, {} context tokens)", bs, batch.height, batch.width,
         batch.context_len);
  if (!batch.sample || !batch.timesteps || !batch.context)
    fail("UNet training batch lacks sample, timesteps or context");

  std::unordered_map<std::string, size_t> index;
  for (size_t i = 0; i < params_.size(); ++i) index.emplace(params_[i].name, i);
  Graph gr(bs, backward, index, params_, values_.data(), grads_.data());

  // Time embedding: sinusoidal features (no gradient), linear, SiLU, linear; every ResNet
  // projects the SiLU of it, so that one node collects all their gradients.
  const int64_t temb = c.time_embed_dim(), c0 = c.block_out_channels[0];
  Node* tfeat = gr.node(bs * c0);
  ag::timestep_embedding(batch.timesteps, bs, c0, c.flip_sin_to_cos, c.freq_shift, tfeat->v.data());
  Node* t = gr.linear(tfeat, bs, c0, temb, true, "time_embedding.linear_1");
  t = gr.linear(gr.silu(t), bs, temb, temb, true, "time_embedding.linear_2");
  Node* st = gr.silu(t);

  const int64_t m = batch.context_len;
  Node* context = gr.input(batch.context, bs * m * c.cross_attention_dim);
  Map h{gr.input(batch.sample, bs * c.in_channels * batch.height * batch.width), c.in_channels, batch.height,
        batch.width};
  h = gr.conv(h, c0, 3, 1, "conv_in");
  std::vector<Map> skips{h};
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t out = c.block_out_channels[i];
    const bool attn = c.down_block_types[i] == "CrossAttnDownBlock2D";
    for (int64_t j = 0; j < c.layers_per_block[i]; ++j) {
      h = resnet(gr, h, out, st, temb, c, fmt::format("down_blocks.{}.resnets.{}", i, j));
      if (attn)
        h = transformer(gr, h, context, m, c.attention_heads[i], c.transformer_layers_per_block[i], c,
                        fmt::format("down_blocks.{}.attentions.{}", i, j));
      skips.push_back(h);
    }
    if (i + 1 < blocks) {
      h = gr.conv(h, out, 3, 2, fmt::format("down_blocks.{}.downsamplers.0.conv", i));
      skips.push_back(h);
    }
  }
  const int64_t mid = c.block_out_channels.back();
  h = resnet(gr, h, mid, st, temb, c, "mid_block.resnets.0");
  h = transformer(gr, h, context, m, c.attention_heads.back(), c.transformer_layers_per_block.back(), c,
                  "mid_block.attentions.0");
  h = resnet(gr, h, mid, st, temb, c, "mid_block.resnets.1");
  for (int64_t i = 0; i < blocks; ++i) {
    const int64_t down_index = blocks - 1 - i;
    const int64_t out = c.block_out_channels[down_index];
    const bool attn = c.up_block_types[i] == "CrossAttnUpBlock2D";
    for (int64_t j = 0; j <= c.layers_per_block[down_index]; ++j) {
      h = resnet(gr, gr.concat(h, skips.back()), out, st, temb, c, fmt::format("up_blocks.{}.resnets.{}", i, j));
      skips.pop_back();
      if (attn)
        h = transformer(gr, h, context, m, c.attention_heads[down_index], c.transformer_layers_per_block[down_index],
                        c, fmt::format("up_blocks.{}.attentions.{}", i, j));
    }
    // To the size of the skip the next level consumes: twice this one, unless the sample was
    // not divisible by the total downsampling (diffusers passes that size to Upsample2D).
    if (i + 1 < blocks)
      h = gr.conv(gr.upsample(h, skips.back().h, skips.back().w), out, 3, 1,
                  fmt::format("up_blocks.{}.upsamplers.0.conv", i));
  }
  h = gr.silu(gr.group_norm(h, c.norm_num_groups, c.norm_eps, "conv_norm_out"));
  h = gr.conv(h, c.out_channels, 3, 1, "conv_out");

  const int64_t n = static_cast<int64_t>(h.node->v.size());
  if (pred) std::copy_n(h.node->v.data(), n, pred);
  if (!batch.target) return 0.0;
  const double loss = ag::mse_loss(h.node->v.data(), batch.target, n, loss_scale, backward ? h.node->grad() : nullptr);
  if (backward) {
    gr.backward();
    if (dcontext) {
      const float* g = context->grad();
      for (size_t i = 0; i < context->v.size(); ++i) dcontext[i] += g[i];
    }
  }
  return loss;
}

}  // namespace tessera::training
