#include "training/lora.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include <fmt/format.h>

#include "core/error.h"
#include "core/files.h"
#include "core/rng.h"
#include "formats/safetensors.h"
#include "kernels/cpu/gemm.h"
#include "models/llm/dbrx_model.h"
#include "models/llm/decoder.h"

namespace tessera::training {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

bool is_expert_module(const std::string& module) { return module == "w1" || module == "v1" || module == "w2"; }

std::string joined(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

}  // namespace

const std::vector<std::string>& lora_target_modules() {
  static const std::vector<std::string> modules = {"Wqkv", "out_proj", "w1", "v1", "w2"};
  return modules;
}

// ---- config ----

bool LoraConfig::targets_module(const std::string& module) const {
  return std::find(targets.begin(), targets.end(), module) != targets.end();
}

void LoraConfig::validate(const std::string& origin) const {
  if (rank < 1) fail("{}: LoRA rank must be at least 1, got {}", origin, rank);
  if (!(alpha > 0) || !std::isfinite(alpha)) fail("{}: LoRA alpha must be a positive number, got {}", origin, alpha);
  if (targets.empty()) fail("{}: LoRA targets are empty (choose from {})", origin, joined(lora_target_modules()));
  std::set<std::string> seen;
  for (const auto& t : targets) {
    if (!std::count(lora_target_modules().begin(), lora_target_modules().end(), t))
      fail("{}: unknown LoRA target '{}' (choose from {})", origin, t, joined(lora_target_modules()));
    if (!seen.insert(t).second) fail("{}: LoRA target '{}' is listed twice", origin, t);
  }
}

LoraConfig LoraConfig::from_json(const json& j, const std::string& origin) {
  if (!j.is_object()) fail("{}: not a JSON object", origin);
  LoraConfig c;
  if (auto it = j.find("peft_type"); it != j.end() && !it->is_null() && *it != "LORA")
    fail("{}: peft_type is {}, expected \"LORA\"", origin, it->dump());
  auto r = j.find("r");
  if (r == j.end()) fail("{}: r (the LoRA rank) is missing", origin);
  if (!r->is_number_integer()) fail("{}: r must be an integer, got {}", origin, r->dump());
  c.rank = r->get<int64_t>();
  auto alpha = j.find("lora_alpha");
  if (alpha == j.end()) fail("{}: lora_alpha is missing", origin);
  if (!alpha->is_number()) fail("{}: lora_alpha must be a number, got {}", origin, alpha->dump());
  c.alpha = alpha->get<double>();
  auto targets = j.find("target_modules");
  if (targets == j.end()) fail("{}: target_modules is missing", origin);
  if (!targets->is_array()) fail("{}: target_modules must be a list of names, got {}", origin, targets->dump());
  c.targets.clear();
  for (const auto& t : *targets) {
    if (!t.is_string()) fail("{}: target_modules holds {}, expected names", origin, t.dump());
    c.targets.push_back(t.get<std::string>());
  }
  if (auto it = j.find("init_lora_weights"); it != j.end() && !it->is_null()) {
    if (*it == true || *it == "kaiming")
      c.init = LoraInit::Kaiming;
    else if (*it == "gaussian")
      c.init = LoraInit::Gaussian;
    else
      fail("{}: init_lora_weights {} is not supported (true, \"kaiming\" or \"gaussian\")", origin, it->dump());
  }
  // Expert tensors are stored stacked; another layout would be misread, so it is refused.
  if (auto it = j.find("expert_layout"); it != j.end() && !it->is_null() && *it != "stacked")
    fail("{}: expert_layout {} is not supported (only \"stacked\")", origin, it->dump());
  // Our own key, or peft's, so that an adapter_config.json written by peft still says its base.
  for (const char* key : {"base_model", "base_model_name_or_path"})
    if (auto it = j.find(key); it != j.end() && it->is_string() && c.base_model.empty())
      c.base_model = it->get<std::string>();
  c.validate(origin);
  return c;
}

json LoraConfig::to_json() const {
  return json{{"peft_type", "LORA"},
              {"r", rank},
              {"lora_alpha", alpha},
              {"target_modules", targets},
              {"init_lora_weights", init == LoraInit::Gaussian ? json("gaussian") : json(true)},
              {"base_model", base_model},
              {"expert_layout", "stacked"}};
}

// ---- layout ----

LoraAdapter::LoraAdapter(const DbrxConfig& model_config, LoraConfig config, bool)
    : model_config_(model_config), config_(std::move(config)) {
  model_config_.validate("model config");
  config_.validate("LoRA config");
  layout();
}

LoraAdapter::LoraAdapter(const DbrxConfig& model_config, LoraConfig config)
    : LoraAdapter(model_config, std::move(config), true) {
  Rng rng(config_.seed);
  for (const auto& t : targets_) {
    const Parameter& a = params_[t.a];
    float* v = values_.data() + a.offset;
    if (config_.init == LoraInit::Kaiming) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(t.in));
      for (size_t i = 0; i < a.size; ++i) v[i] = static_cast<float>((2.0 * rng.uniform() - 1.0) * bound);
    } else {
      const double stddev = 1.0 / static_cast<double>(config_.rank);
      for (size_t i = 0; i < a.size; ++i) v[i] = static_cast<float>(rng.normal() * stddev);
    }
    // B stays zero: W_eff = W until training moves it.
  }
}

void LoraAdapter::layout() {
  const auto& c = model_config_;
  const int64_t r = config_.rank;
  size_t offset = 0, base_offset = 0;
  auto add = [&](const std::string& name, Shape shape) {
    Parameter p;
    p.name = name;
    p.shape = std::move(shape);
    p.offset = offset;
    p.size = static_cast<size_t>(shape_numel(p.shape));
    offset += p.size;
    params_.push_back(std::move(p));
    return params_.size() - 1;
  };
  for (int64_t l = 0; l < c.n_layers; ++l) {
    for (const auto& module : lora_target_modules()) {
      if (!config_.targets_module(module)) continue;
      Target t;
      t.module = module;
      std::string prefix;
      if (module == "Wqkv" || module == "out_proj") {
        prefix = fmt::format("transformer.blocks.{}.norm_attn_norm.attn.{}", l, module);
        t.weight = prefix + ".weight";
        t.out = module == "Wqkv" ? c.qkv_dim() : c.d_model;
        t.in = c.d_model;
      } else {
        prefix = fmt::format("transformer.blocks.{}.ffn.experts.mlp.{}", l, module);
        t.weight = prefix;
        t.matrices = c.moe_num_experts;
        t.out = c.ffn_hidden_size;
        t.in = c.d_model;
      }
      // A rank past the smaller side of a matrix adds nothing but memory.
      if (r > std::min(t.out, t.in))
        fail("LoRA rank {} is larger than the {} matrices allow ({} x {}); use at most {}", r, module, t.out, t.in,
             std::min(t.out, t.in));
      const bool stacked = is_expert_module(module);
      t.a = add(prefix + ".lora_A.weight", stacked ? Shape{t.matrices, r, t.in} : Shape{r, t.in});
      t.b = add(prefix + ".lora_B.weight", stacked ? Shape{t.matrices, t.out, r} : Shape{t.out, r});
      t.base_offset = base_offset;
      base_offset += static_cast<size_t>(t.matrices * t.out * t.in);
      targets_.push_back(std::move(t));
    }
  }
  values_.assign(offset, 0.0f);
  grads_.assign(offset, 0.0f);
}

const Parameter& LoraAdapter::parameter(const std::string& name) const {
  for (const auto& p : params_)
    if (p.name == name) return p;
  fail("no LoRA tensor named '{}'", name);
}

void LoraAdapter::zero_grad() { std::fill(grads_.begin(), grads_.end(), 0.0f); }

// ---- the model side ----

void LoraAdapter::check_model(const DbrxTrainingModel& model, const char* what) const {
  for (const auto& t : targets_) {
    const Parameter& p = model.parameter(t.weight);
    const Shape want{t.matrices * t.out, t.in};
    if (p.shape != want)
      fail("LoRA {}: the model's '{}' has shape {}, the adapter was made for {}", what, t.weight, shape_str(p.shape),
           shape_str(want));
  }
}

void LoraAdapter::attach(const DbrxTrainingModel& model) {
  check_model(model, "attach");
  size_t total = 0;
  for (const auto& t : targets_) total += static_cast<size_t>(t.matrices * t.out * t.in);
  base_.resize(total);
  for (const auto& t : targets_) {
    const Parameter& p = model.parameter(t.weight);
    std::copy_n(model.values().data() + p.offset, p.size, base_.data() + t.base_offset);
  }
}

std::span<const float> LoraAdapter::base(const std::string& weight_name) const {
  if (!attached()) fail("LoRA adapter is not attached to a model");
  for (const auto& t : targets_)
    if (t.weight == weight_name)
      return {base_.data() + t.base_offset, static_cast<size_t>(t.matrices * t.out * t.in)};
  fail("'{}' is not a LoRA target", weight_name);
}

void LoraAdapter::write_effective(const Target& t, const float* base, float* out) const {
  const int64_t r = config_.rank;
  const float s = static_cast<float>(config_.scale());
  const float* a = values_.data() + params_[t.a].offset;
  const float* b = values_.data() + params_[t.b].offset;
  const size_t matrix = static_cast<size_t>(t.out * t.in);
  std::copy_n(base, matrix * static_cast<size_t>(t.matrices), out);
  for (int64_t e = 0; e < t.matrices; ++e)
    kernels::sgemm(false, false, t.out, t.in, r, s, b + e * t.out * r, r, a + e * r * t.in, t.in, 1.0f,
                   out + e * matrix, t.in);
}

void LoraAdapter::apply(DbrxTrainingModel& model) const {
  if (!attached()) fail("LoRA adapter is not attached to a model (attach before apply)");
  check_model(model, "apply");
  for (const auto& t : targets_)
    write_effective(t, base_.data() + t.base_offset, model.values().data() + model.parameter(t.weight).offset);
}

void LoraAdapter::gather_grads(const DbrxTrainingModel& model) {
  check_model(model, "gather_grads");
  const int64_t r = config_.rank;
  const float s = static_cast<float>(config_.scale());
  for (const auto& t : targets_) {
    const float* dw = model.grads().data() + model.parameter(t.weight).offset;
    const float* a = values_.data() + params_[t.a].offset;
    const float* b = values_.data() + params_[t.b].offset;
    float* da = grads_.data() + params_[t.a].offset;
    float* db = grads_.data() + params_[t.b].offset;
    for (int64_t e = 0; e < t.matrices; ++e) {
      const float* dw_e = dw + e * t.out * t.in;
      // dA = s * B^T . dW   [r, in]
      kernels::sgemm(true, false, r, t.in, t.out, s, b + e * t.out * r, r, dw_e, t.in, 0.0f, da + e * r * t.in, t.in);
      // dB = s * dW . A^T   [out, r]
      kernels::sgemm(false, true, t.out, r, t.in, s, dw_e, t.in, a + e * r * t.in, t.in, 0.0f, db + e * t.out * r, r);
    }
  }
}

void LoraAdapter::restore(DbrxTrainingModel& model) const {
  if (!attached()) fail("LoRA adapter is not attached to a model (nothing to restore)");
  check_model(model, "restore");
  for (const auto& t : targets_) {
    const Parameter& p = model.parameter(t.weight);
    std::copy_n(base_.data() + t.base_offset, p.size, model.values().data() + p.offset);
  }
}

void LoraAdapter::merge(DbrxTrainingModel& model) {
  apply(model);
  base_.clear();
  base_.shrink_to_fit();
}

// ---- files ----

void LoraAdapter::save_adapter(const fs::path& dir) const {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail("{}: cannot create folder: {}", dir.string(), ec.message());
  std::vector<std::pair<std::string, Tensor>> tensors;
  tensors.reserve(params_.size());
  for (const auto& p : params_) {
    Tensor t = Tensor::empty(p.shape);
    std::copy_n(values_.data() + p.offset, p.size, t.data<float>());
    tensors.emplace_back(p.name, std::move(t));
  }
  write_safetensors(dir / "adapter_model.safetensors", tensors, {{"format", "pt"}});
  write_file_atomically(dir / "adapter_config.json", config_.to_json().dump(2) + "\n");
}

LoraAdapter LoraAdapter::load_adapter(const fs::path& dir, const DbrxConfig& model_config) {
  const fs::path config_path = dir / "adapter_config.json";
  std::ifstream in(config_path);
  if (!in) fail("{}: cannot read (is {} a LoRA adapter folder?)", config_path.string(), dir.string());
  json j;
  try {
    j = json::parse(in);
  } catch (const json::parse_error& e) {
    fail("{}: not valid JSON: {}", config_path.string(), e.what());
  }
  LoraConfig config = LoraConfig::from_json(j, config_path.string());
  // The rank is checked against this model's matrices only here; name the file that set it.
  std::optional<LoraAdapter> made;
  try {
    made.emplace(LoraAdapter(model_config, std::move(config), true));
  } catch (const Error& e) {
    fail("{}: {}", config_path.string(), e.what());
  }
  LoraAdapter& adapter = *made;

  const fs::path weights_path = dir / "adapter_model.safetensors";
  if (!fs::exists(weights_path)) fail("{}: missing (the adapter's weights)", weights_path.string());
  SafetensorsFile file(weights_path);
  std::set<std::string> expected;
  for (const auto& p : adapter.params_) expected.insert(p.name);
  for (const auto& name : file.names())
    if (!expected.count(name))
      fail("{}: unexpected tensor '{}' (not a LoRA tensor of the targets {} for this model)", weights_path.string(),
           name, joined(adapter.config_.targets));
  for (const auto& p : adapter.params_) {
    if (!file.contains(p.name))
      fail("{}: tensor '{}' is missing (adapter_config.json targets {})", weights_path.string(), p.name,
           joined(adapter.config_.targets));
    const Tensor t = file.get(p.name);
    if (t.shape() != p.shape)
      fail("{}: tensor '{}' has shape {}, expected {} for r={} and this model", weights_path.string(), p.name,
           shape_str(t.shape()), shape_str(p.shape), adapter.config_.rank);
    if (t.dtype() != DType::F32 && t.dtype() != DType::BF16 && t.dtype() != DType::F16)
      fail("{}: tensor '{}' has dtype {}; expected f32, bf16 or f16", weights_path.string(), p.name,
           dtype_name(t.dtype()));
    float* dst = adapter.values_.data() + p.offset;
    convert_to_f32(t.dtype(), t.raw(), dst, p.size);
    for (size_t i = 0; i < p.size; ++i)
      if (!std::isfinite(dst[i])) fail("{}: tensor '{}' holds a non-finite value", weights_path.string(), p.name);
  }
  return std::move(adapter);
}

// ---- base + adapter ----

DbrxTrainingModel load_merged_training_model(const fs::path& base_dir, const fs::path& adapter_dir) {
  DbrxTrainingModel model = DbrxTrainingModel::load(base_dir);
  LoraAdapter adapter = LoraAdapter::load_adapter(adapter_dir, model.config());
  adapter.attach(model);
  adapter.merge(model);
  return model;
}

std::unique_ptr<DecoderModel> load_dbrx_with_adapter(const fs::path& base_dir, const fs::path& adapter_dir) {
  const DbrxTrainingModel model = load_merged_training_model(base_dir, adapter_dir);
  const DbrxConfig& c = model.config();
  // One heap block holds every merged weight; the tensors are views into it.
  auto storage = Storage::allocate(model.values().size() * sizeof(float));
  std::copy(model.values().begin(), model.values().end(), reinterpret_cast<float*>(storage->data()));
  std::map<std::string, Tensor> by_name;
  for (const auto& p : model.parameters())
    by_name.emplace(p.name, Tensor(storage, p.offset * sizeof(float), DType::F32, p.shape));
  auto take = [&](const std::string& name) { return by_name.at(name); };
  auto blk = [](int64_t l, const char* rest) { return fmt::format("transformer.blocks.{}.{}", l, rest); };

  DecoderWeights w;
  w.embedding = take("transformer.wte.weight");
  for (int64_t l = 0; l < c.n_layers; ++l) {
    DecoderLayer layer;
    layer.attn_norm = take(blk(l, "norm_attn_norm.norm_1.weight"));
    layer.wqkv = take(blk(l, "norm_attn_norm.attn.Wqkv.weight"));
    layer.wo = take(blk(l, "norm_attn_norm.attn.out_proj.weight"));
    layer.ffn_norm = take(blk(l, "norm_attn_norm.norm_2.weight"));
    layer.router = take(blk(l, "ffn.router.layer.weight"));
    layer.gate = take(blk(l, "ffn.experts.mlp.w1"));
    layer.up = take(blk(l, "ffn.experts.mlp.v1"));
    layer.down = take(blk(l, "ffn.experts.mlp.w2"));
    layer.down_is_nn = true;
    w.layers.push_back(std::move(layer));
  }
  w.final_norm = take("transformer.norm_f.weight");
  w.lm_head = c.tie_word_embeddings ? w.embedding : take("lm_head.weight");
  std::string name = fs::absolute(base_dir).lexically_normal().filename().string();
  if (name.empty()) name = fs::absolute(base_dir).lexically_normal().parent_path().filename().string();
  return std::make_unique<DecoderModel>(DbrxModel::decoder_config(c), std::move(w), name, storage);
}

}  // namespace tessera::training
