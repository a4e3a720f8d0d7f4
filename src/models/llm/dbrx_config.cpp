#include "models/llm/dbrx_config.h"

#include <fstream>

#include "core/error.h"

namespace tessera {

using nlohmann::json;

namespace {

int64_t get_int(const json& obj, const char* key, int64_t fallback, const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return fallback;
  if (!it->is_number_integer()) fail("{}: {} must be an integer, got {}", where, key, it->dump());
  return it->get<int64_t>();
}

std::optional<double> get_optional_number(const json& obj, const char* key, std::optional<double> fallback,
                                          const std::string& where) {
  auto it = obj.find(key);
  if (it == obj.end()) return fallback;
  if (it->is_null()) return std::nullopt;
  if (!it->is_number()) fail("{}: {} must be a number or null, got {}", where, key, it->dump());
  return it->get<double>();
}

}  // namespace

DbrxConfig DbrxConfig::from_json(const json& j, const std::string& origin) {
  if (!j.is_object()) fail("{}: not a JSON object", origin);
  auto type = j.find("model_type");
  if (type == j.end() || !type->is_string()) fail("{}: model_type is missing", origin);
  if (*type != "dbrx") fail("{}: unknown model_type '{}' (expected 'dbrx')", origin, type->get<std::string>());

  DbrxConfig c;
  c.d_model = get_int(j, "d_model", c.d_model, origin);
  c.n_heads = get_int(j, "n_heads", c.n_heads, origin);
  c.n_layers = get_int(j, "n_layers", c.n_layers, origin);
  c.max_seq_len = get_int(j, "max_seq_len", c.max_seq_len, origin);
  c.vocab_size = get_int(j, "vocab_size", c.vocab_size, origin);
  if (auto it = j.find("tie_word_embeddings"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) fail("{}: tie_word_embeddings must be true or false", origin);
    c.tie_word_embeddings = it->get<bool>();
  }

  const json empty = json::object();
  const json& attn = j.contains("attn_config") && !j["attn_config"].is_null() ? j["attn_config"] : empty;
  if (!attn.is_object()) fail("{}: attn_config must be an object", origin);
  const std::string attn_where = origin + ": attn_config";
  c.kv_n_heads = get_int(attn, "kv_n_heads", c.kv_n_heads, attn_where);
  if (auto clip = get_optional_number(attn, "clip_qkv", std::nullopt, attn_where)) c.clip_qkv = static_cast<float>(*clip);
  // Checkpoints keep theta in attn_config; newer transformers also write rope_parameters.
  if (auto rope = j.find("rope_parameters"); rope != j.end() && rope->is_object())
    c.rope_theta = get_optional_number(*rope, "rope_theta", c.rope_theta, origin + ": rope_parameters").value_or(c.rope_theta);
  c.rope_theta = get_optional_number(attn, "rope_theta", c.rope_theta, attn_where).value_or(c.rope_theta);

  const json& ffn = j.contains("ffn_config") && !j["ffn_config"].is_null() ? j["ffn_config"] : empty;
  if (!ffn.is_object()) fail("{}: ffn_config must be an object", origin);
  const std::string ffn_where = origin + ": ffn_config";
  c.moe_num_experts = get_int(ffn, "moe_num_experts", c.moe_num_experts, ffn_where);
  c.moe_top_k = get_int(ffn, "moe_top_k", c.moe_top_k, ffn_where);
  c.ffn_hidden_size = get_int(ffn, "ffn_hidden_size", c.ffn_hidden_size, ffn_where);
  c.moe_normalize_expert_weights =
      get_optional_number(ffn, "moe_normalize_expert_weights", c.moe_normalize_expert_weights, ffn_where);
  c.moe_jitter_eps = get_optional_number(ffn, "moe_jitter_eps", std::nullopt, ffn_where);
  c.moe_loss_weight = get_optional_number(ffn, "moe_loss_weight", c.moe_loss_weight, ffn_where).value_or(0.0);
  if (auto act = ffn.find("ffn_act_fn"); act != ffn.end() && !act->is_null()) {
    std::string name = act->is_object() && act->contains("name") && (*act)["name"].is_string()
                           ? (*act)["name"].get<std::string>()
                           : "";
    if (name != "silu") fail("{}: ffn_act_fn {} is not supported (only silu)", ffn_where, act->dump());
  }
  c.validate(origin);
  return c;
}

void DbrxConfig::validate(const std::string& origin) const {
  auto positive = [&](int64_t v, const char* name) {
    if (v <= 0) fail("{}: {} must be positive, got {}", origin, name, v);
  };
  positive(d_model, "d_model");
  positive(n_heads, "n_heads");
  positive(n_layers, "n_layers");
  positive(max_seq_len, "max_seq_len");
  positive(vocab_size, "vocab_size");
  positive(kv_n_heads, "attn_config.kv_n_heads");
  positive(moe_num_experts, "ffn_config.moe_num_experts");
  positive(moe_top_k, "ffn_config.moe_top_k");
  positive(ffn_hidden_size, "ffn_config.ffn_hidden_size");
  if (d_model % n_heads != 0) fail("{}: d_model {} is not divisible by n_heads {}", origin, d_model, n_heads);
  if (head_dim() % 2 != 0) fail("{}: head dimension {} must be even for rotary embeddings", origin, head_dim());
  if (n_heads % kv_n_heads != 0)
    fail("{}: n_heads {} is not a multiple of attn_config.kv_n_heads {}", origin, n_heads, kv_n_heads);
  if (moe_top_k > moe_num_experts)
    fail("{}: ffn_config.moe_top_k {} exceeds moe_num_experts {}", origin, moe_top_k, moe_num_experts);
  if (clip_qkv && *clip_qkv <= 0) fail("{}: attn_config.clip_qkv must be positive", origin);
  if (rope_theta <= 0) fail("{}: attn_config.rope_theta must be positive", origin);
}

DbrxConfig DbrxConfig::load(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) fail("{}: cannot open (is this a model folder?)", path.string());
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON ({})", path.string(), e.what());
  }
  return from_json(j, path.string());
}

json DbrxConfig::to_json() const {
  json attn = {{"kv_n_heads", kv_n_heads}, {"rope_theta", rope_theta}, {"attn_pdrop", 0.0}};
  attn["clip_qkv"] = clip_qkv ? json(*clip_qkv) : json(nullptr);
  json ffn = {{"ffn_act_fn", {{"name", "silu"}}},
              {"ffn_hidden_size", ffn_hidden_size},
              {"moe_num_experts", moe_num_experts},
              {"moe_top_k", moe_top_k},
              {"moe_loss_weight", moe_loss_weight}};
  ffn["moe_normalize_expert_weights"] =
      moe_normalize_expert_weights ? json(*moe_normalize_expert_weights) : json(nullptr);
  ffn["moe_jitter_eps"] = moe_jitter_eps ? json(*moe_jitter_eps) : json(nullptr);
  return json{{"architectures", {"DbrxForCausalLM"}},
              {"model_type", "dbrx"},
              {"d_model", d_model},
              {"n_heads", n_heads},
              {"n_layers", n_layers},
              {"max_seq_len", max_seq_len},
              {"vocab_size", vocab_size},
              {"attn_config", attn},
              {"ffn_config", ffn},
              // transformers 5 takes theta from here and ignores attn_config's; both are written.
              {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", rope_theta}}},
              {"tie_word_embeddings", tie_word_embeddings},
              {"torch_dtype", "float32"}};
}

int64_t DbrxConfig::parameter_count() const {
  const int64_t embed = vocab_size * d_model;
  const int64_t attn = qkv_dim() * d_model + d_model * d_model + 2 * d_model;
  const int64_t ffn = moe_num_experts * d_model + 3 * moe_num_experts * ffn_hidden_size * d_model;
  return embed + n_layers * (attn + ffn) + d_model + (tie_word_embeddings ? 0 : embed);
}

int64_t DbrxConfig::active_parameter_count() const {
  const int64_t idle_experts = moe_num_experts - moe_top_k;
  return parameter_count() - n_layers * 3 * idle_experts * ffn_hidden_size * d_model;
}

}  // namespace tessera
