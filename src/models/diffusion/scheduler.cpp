// The reference computes every step as separate float32 tensor operations (a multiply, then an
// add, each rounded), and numpy never fuses either; contracting a*b+c into one FMA here would
// round differently, so contraction is off for this file. The one place torch itself fuses
// (torch.linspace, built with -mfma) uses std::fma explicitly.
#pragma GCC optimize("fp-contract=off")

#include "models/diffusion/scheduler.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace tessera::diffusion {

using nlohmann::json;

SamplerKind parse_sampler(const std::string& name) {
  if (name == "ddim") return SamplerKind::Ddim;
  if (name == "euler") return SamplerKind::Euler;
  if (name == "euler_a") return SamplerKind::EulerAncestral;
  if (name == "dpmpp_2m") return SamplerKind::DpmppTwoM;
  fail("unknown sampler '{}' (expected ddim, euler, euler_a or dpmpp_2m)", name);
}

const char* sampler_name(SamplerKind kind) {
  switch (kind) {
    case SamplerKind::Ddim: return "ddim";
    case SamplerKind::Euler: return "euler";
    case SamplerKind::EulerAncestral: return "euler_a";
    case SamplerKind::DpmppTwoM: return "dpmpp_2m";
  }
  return "?";
}

TimestepSpacing SchedulerConfig::spacing_for(SamplerKind kind) const {
  if (timestep_spacing) return *timestep_spacing;
  return kind == SamplerKind::Ddim ? TimestepSpacing::Leading : TimestepSpacing::Linspace;
}

// ---------------------------------------------------------------------------------------------
// Reading scheduler_config.json

namespace {

std::vector<float> make_betas(const SchedulerConfig& c);

// Python's json module writes infinities and NaN as bare words (DPMSolverMultistepScheduler
// saves "lambda_min_clipped": -Infinity), which strict JSON parsers reject. They are turned into
// strings that the number reader below understands.
std::string quote_python_constants(const std::string& text) {
  std::string out;
  out.reserve(text.size() + 16);
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) {
        out += text[++i];
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
      out += c;
      continue;
    }
    bool matched = false;
    for (const char* word : {"-Infinity", "Infinity", "NaN"}) {
      if (text.compare(i, std::strlen(word), word) == 0) {
        out += '"';
        out += word;
        out += '"';
        i += std::strlen(word) - 1;
        matched = true;
        break;
      }
    }
    if (!matched) out += c;
  }
  return out;
}

class ConfigReader {
 public:
  ConfigReader(const json& j, const std::string& origin) : j_(j), origin_(origin) {
    if (!j.is_object()) fail("{}: a scheduler config must be a JSON object", origin);
  }

  const json* find(const char* key) const {
    auto it = j_.find(key);
    return it == j_.end() ? nullptr : &*it;
  }

  [[noreturn]] void bad(const char* key, const std::string& why) const {
    fail("{}: field '{}': {}", origin_, key, why);
  }

  static std::optional<double> as_number(const json& v) {
    if (v.is_number()) return v.get<double>();
    if (v.is_string()) {
      const auto& s = v.get_ref<const std::string&>();
      if (s == "Infinity") return std::numeric_limits<double>::infinity();
      if (s == "-Infinity") return -std::numeric_limits<double>::infinity();
      if (s == "NaN") return std::numeric_limits<double>::quiet_NaN();
    }
    return std::nullopt;
  }

  void number(const char* key, double& out, bool allow_infinite = false) const {
    const json* v = find(key);
    if (!v) return;
    auto x = as_number(*v);
    if (!x) bad(key, fmt::format("expected a number, got {}", v->dump()));
    if (std::isnan(*x) || (!allow_infinite && std::isinf(*x))) bad(key, fmt::format("expected a finite number, got {}", v->dump()));
    out = *x;
  }

  void optional_number(const char* key, std::optional<double>& out) const {
    const json* v = find(key);
    if (!v || v->is_null()) return;
    double x = 0;
    number(key, x);
    out = x;
  }

  void integer(const char* key, int64_t& out, int64_t lo, int64_t hi) const {
    const json* v = find(key);
    if (!v) return;
    if (v->is_number_integer()) {
      if (v->is_number_unsigned() && v->get<uint64_t>() > static_cast<uint64_t>(hi))
        bad(key, fmt::format("{} is out of range [{}, {}]", v->dump(), lo, hi));
      out = v->get<int64_t>();
    } else {
      // Python writes 1000.0 as readily as 1000.
      const double x = v->is_number_float() ? v->get<double>() : 0.5;
      if (!(x == std::floor(x) && std::fabs(x) < 9e15)) bad(key, fmt::format("expected an integer, got {}", v->dump()));
      out = static_cast<int64_t>(x);
    }
    if (out < lo || out > hi) bad(key, fmt::format("{} is out of range [{}, {}]", out, lo, hi));
  }

  // diffusers passes a JSON null straight to the constructor, where it reads as false.
  void boolean(const char* key, bool& out) const {
    const json* v = find(key);
    if (!v) return;
    if (v->is_null()) {
      out = false;
    } else if (v->is_boolean()) {
      out = v->get<bool>();
    } else {
      bad(key, fmt::format("expected true or false, got {}", v->dump()));
    }
  }

  // The value of a string field, or nullopt when absent or null.
  std::optional<std::string> string(const char* key) const {
    const json* v = find(key);
    if (!v || v->is_null()) return std::nullopt;
    if (!v->is_string()) bad(key, fmt::format("expected a string, got {}", v->dump()));
    return v->get<std::string>();
  }

  template <typename Enum>
  void choice(const char* key, Enum& out, std::initializer_list<std::pair<const char*, Enum>> options,
              const char* expected) const {
    auto s = string(key);
    if (!s) return;
    for (const auto& [name, value] : options) {
      if (*s == name) {
        out = value;
        return;
      }
    }
    bad(key, fmt::format("unknown value '{}' (expected {})", *s, expected));
  }

  // A feature of diffusers that is not implemented: only its neutral value is accepted.
  void must_be_false(const char* key) const {
    const json* v = find(key);
    if (!v || v->is_null() || (v->is_boolean() && !v->get<bool>())) return;
    bad(key, fmt::format("{} is not supported (only false)", v->dump()));
  }

  void must_be_string(const char* key, const char* only) const {
    auto s = string(key);
    if (s && *s != only) bad(key, fmt::format("'{}' is not supported (only '{}')", *s, only));
  }

 private:
  const json& j_;
  std::string origin_;
};

}  // namespace

SchedulerConfig SchedulerConfig::from_json(const json& j, const std::string& origin) {
  ConfigReader r(j, origin);
  SchedulerConfig c;
  c.origin = origin;

  r.integer("num_train_timesteps", c.num_train_timesteps, 1, 1'000'000);
  r.number("beta_start", c.beta_start);
  r.number("beta_end", c.beta_end);
  r.choice("beta_schedule", c.beta_schedule,
           {{"linear", BetaSchedule::Linear},
            {"scaled_linear", BetaSchedule::ScaledLinear},
            {"squaredcos_cap_v2", BetaSchedule::SquaredCosCapV2}},
           "linear, scaled_linear or squaredcos_cap_v2");
  if (const json* v = r.find("trained_betas"); v && !v->is_null()) {
    if (!v->is_array()) r.bad("trained_betas", "expected a list of numbers or null");
    for (const auto& item : *v) {
      auto x = ConfigReader::as_number(item);
      if (!x || !(*x >= 0.0 && *x < 1.0)) r.bad("trained_betas", fmt::format("{} is not a beta in [0, 1)", item.dump()));
      c.trained_betas.push_back(*x);
    }
    if (static_cast<int64_t>(c.trained_betas.size()) != c.num_train_timesteps)
      r.bad("trained_betas", fmt::format("has {} values but num_train_timesteps is {}", c.trained_betas.size(),
                                         c.num_train_timesteps));
  }
  if (auto s = r.string("prediction_type")) {
    if (*s == "epsilon") {
      c.prediction_type = PredictionType::Epsilon;
    } else if (*s == "v_prediction") {
      c.prediction_type = PredictionType::VPrediction;
    } else if (*s == "sample" || *s == "original_sample" || *s == "flow_prediction") {
      r.bad("prediction_type", fmt::format("'{}' is not supported (expected epsilon or v_prediction)", *s));
    } else {
      r.bad("prediction_type", fmt::format("unknown value '{}' (expected epsilon or v_prediction)", *s));
    }
  }
  if (r.string("timestep_spacing")) {
    TimestepSpacing spacing = TimestepSpacing::Leading;
    r.choice("timestep_spacing", spacing,
             {{"leading", TimestepSpacing::Leading},
              {"trailing", TimestepSpacing::Trailing},
              {"linspace", TimestepSpacing::Linspace}},
             "leading, trailing or linspace");
    c.timestep_spacing = spacing;
  }
  r.integer("steps_offset", c.steps_offset, 0, 1'000'000);
  r.boolean("rescale_betas_zero_snr", c.rescale_betas_zero_snr);

  r.boolean("set_alpha_to_one", c.set_alpha_to_one);
  r.boolean("clip_sample", c.clip_sample);
  r.number("clip_sample_range", c.clip_sample_range);
  if (!(c.clip_sample_range > 0)) r.bad("clip_sample_range", "must be positive");

  r.boolean("use_karras_sigmas", c.use_karras_sigmas);
  r.choice("final_sigmas_type", c.final_sigmas_type,
           {{"zero", FinalSigmasType::Zero}, {"sigma_min", FinalSigmasType::SigmaMin}}, "zero or sigma_min");
  r.optional_number("sigma_min", c.sigma_min);
  r.optional_number("sigma_max", c.sigma_max);
  if (c.sigma_min && !(*c.sigma_min > 0)) r.bad("sigma_min", "must be positive");
  if (c.sigma_max && !(*c.sigma_max > 0)) r.bad("sigma_max", "must be positive");

  r.boolean("lower_order_final", c.lower_order_final);
  r.boolean("euler_at_final", c.euler_at_final);
  // diffusers maps the UniPC/DEIS solver names onto midpoint.
  r.choice("solver_type", c.solver_type,
           {{"midpoint", DpmSolverType::Midpoint},
            {"heun", DpmSolverType::Heun},
            {"logrho", DpmSolverType::Midpoint},
            {"bh1", DpmSolverType::Midpoint},
            {"bh2", DpmSolverType::Midpoint}},
           "midpoint or heun");
  r.number("lambda_min_clipped", c.lambda_min_clipped, /*allow_infinite=*/true);

  for (const char* key : {"thresholding", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas",
                          "use_flow_sigmas", "use_dynamic_shifting"})
    r.must_be_false(key);
  r.must_be_string("interpolation_type", "linear");
  r.must_be_string("timestep_type", "discrete");
  if (auto s = r.string("variance_type"); s && (*s == "learned" || *s == "learned_range"))
    r.bad("variance_type", fmt::format("'{}' is not supported", *s));
  make_betas(c);  // betas outside [0, 1) are the file's fault: say so now, not at the first image
  return c;
}

SchedulerConfig SchedulerConfig::load(const std::filesystem::path& scheduler_config_json) {
  const std::string origin = scheduler_config_json.string();
  std::ifstream in(scheduler_config_json, std::ios::binary);
  if (!in) fail("{}: cannot open the scheduler config", origin);
  std::stringstream buffer;
  buffer << in.rdbuf();
  json j;
  try {
    j = json::parse(quote_python_constants(buffer.str()));
  } catch (const json::exception& e) {
    fail("{}: not valid JSON ({})", origin, e.what());
  }
  return from_json(j, origin);
}

// ---------------------------------------------------------------------------------------------
// numpy and torch, reproduced where their exact arithmetic shows in the results

namespace {

// torch.linspace(start, end, n, dtype=float32) on the CPU: start and end rounded to float, the
// step in float, and each value one fused multiply-add from the nearer end.
std::vector<float> torch_linspace_f32(double start, double end, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n));
  const float s = static_cast<float>(start), e = static_cast<float>(end);
  if (n == 1) {
    out[0] = s;
    return out;
  }
  const float step = (e - s) / static_cast<float>(n - 1);
  const int64_t halfway = n / 2;
  for (int64_t i = 0; i < n; ++i)
    out[i] = i < halfway ? std::fma(step, static_cast<float>(i), s) : std::fma(-step, static_cast<float>(n - i - 1), e);
  return out;
}

// np.linspace(start, stop, num) in float64.
std::vector<double> np_linspace(double start, double stop, int64_t num) {
  std::vector<double> y(static_cast<size_t>(num));
  if (num == 1) {
    y[0] = start;  // numpy: step is NaN, the value is 0 * delta + start
    return y;
  }
  const double delta = stop - start;
  const double step = delta / static_cast<double>(num - 1);
  for (int64_t i = 0; i < num; ++i)
    y[i] = (step == 0 ? static_cast<double>(i) / static_cast<double>(num - 1) * delta : static_cast<double>(i) * step) + start;
  y[num - 1] = stop;
  return y;
}

// np.arange(start, stop, step) for a negative float step: numpy sizes it with ceil and fills
// value i as start + i * (second - first), which is not always start + i * step.
std::vector<double> np_arange_down(double start, double stop, double step) {
  const double length = std::ceil((stop - start) / step);
  std::vector<double> out;
  if (!(length > 0)) return out;
  const auto n = static_cast<int64_t>(length);
  out.resize(static_cast<size_t>(n));
  out[0] = start;
  if (n > 1) out[1] = start + step;
  const double delta = out.size() > 1 ? out[1] - out[0] : step;
  for (int64_t i = 2; i < n; ++i) out[i] = start + static_cast<double>(i) * delta;
  return out;
}

// np.round: half to even.
double np_round(double x) { return std::nearbyint(x); }

// np.interp(x, arange(len(fp)), fp).
double np_interp(double x, const std::vector<double>& fp) {
  const auto n = static_cast<int64_t>(fp.size());
  if (std::isnan(x)) return x;
  if (x <= 0) return fp[0];
  if (x >= static_cast<double>(n - 1)) return fp[n - 1];
  const auto j = static_cast<int64_t>(std::floor(x));
  if (x == static_cast<double>(j)) return fp[j];
  const double slope = (fp[j + 1] - fp[j]) / 1.0;
  double r = slope * (x - static_cast<double>(j)) + fp[j];
  if (std::isnan(r)) {
    r = slope * (x - static_cast<double>(j + 1)) + fp[j + 1];
    if (std::isnan(r) && fp[j] == fp[j + 1]) r = fp[j];
  }
  return r;
}

// diffusers' _convert_to_karras: rho = 7 between sigma_max and sigma_min, float64.
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int64_t steps) {
  const double rho = 7.0;
  const auto ramp = np_linspace(0.0, 1.0, steps);
  const double min_inv_rho = std::pow(sigma_min, 1.0 / rho);
  const double max_inv_rho = std::pow(sigma_max, 1.0 / rho);
  std::vector<double> out(ramp.size());
  for (size_t i = 0; i < ramp.size(); ++i) out[i] = std::pow(max_inv_rho + ramp[i] * (min_inv_rho - max_inv_rho), rho);
  return out;
}

// diffusers' _sigma_to_t: the fractional training timestep whose log-sigma is log(sigma),
// interpolating linearly in log-sigma. `log_sigmas` ascends with t.
double sigma_to_t(double sigma, const std::vector<double>& log_sigmas) {
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  const auto n = static_cast<int64_t>(log_sigmas.size());
  int64_t low = 0;
  for (int64_t i = 0; i < n; ++i)
    if (log_sigma - log_sigmas[i] >= 0) low = i;
  low = std::min(low, n - 2);
  const int64_t high = low + 1;
  const double lo = log_sigmas[low], hi = log_sigmas[high];
  // numpy subtracts the two float32 table entries in float32.
  const double gap = static_cast<float>(static_cast<float>(lo) - static_cast<float>(hi));
  double w = (lo - log_sigma) / gap;
  w = std::clamp(w, 0.0, 1.0);
  return (1 - w) * static_cast<double>(low) + w * static_cast<double>(high);
}

// ---------------------------------------------------------------------------------------------
// Training-time tables, float32 as diffusers builds them with torch

std::vector<float> make_betas(const SchedulerConfig& c) {
  const int64_t n = c.num_train_timesteps;
  std::vector<float> betas;
  if (!c.trained_betas.empty()) {
    for (double b : c.trained_betas) betas.push_back(static_cast<float>(b));
  } else if (c.beta_schedule == BetaSchedule::Linear) {
    betas = torch_linspace_f32(c.beta_start, c.beta_end, n);
  } else if (c.beta_schedule == BetaSchedule::ScaledLinear) {
    if (!(c.beta_start >= 0 && c.beta_end >= 0))
      fail("{}: field 'beta_start'/'beta_end': scaled_linear needs non-negative betas, got {} and {}", c.origin,
           c.beta_start, c.beta_end);
    betas = torch_linspace_f32(std::pow(c.beta_start, 0.5), std::pow(c.beta_end, 0.5), n);
    for (float& b : betas) b = b * b;
  } else {
    auto alpha_bar = [](double t) {
      const double x = std::cos((t + 0.008) / 1.008 * M_PI / 2);
      return x * x;
    };
    for (int64_t i = 0; i < n; ++i) {
      const double t1 = static_cast<double>(i) / static_cast<double>(n);
      const double t2 = static_cast<double>(i + 1) / static_cast<double>(n);
      betas.push_back(static_cast<float>(std::min(1 - alpha_bar(t2) / alpha_bar(t1), 0.999)));
    }
  }
  for (float b : betas)
    if (!(b >= 0.0f && b < 1.0f))
      fail("{}: field 'beta_start'/'beta_end': the {} schedule from {} to {} gives beta {} outside [0, 1)", c.origin,
           c.beta_schedule == BetaSchedule::Linear ? "linear" : "scaled_linear", c.beta_start, c.beta_end, b);
  return betas;
}

// torch.cumprod of float32 accumulates in double on the CPU.
std::vector<float> cumprod(const std::vector<float>& alphas) {
  std::vector<float> out(alphas.size());
  double acc = 1.0;
  for (size_t i = 0; i < alphas.size(); ++i) {
    acc *= static_cast<double>(alphas[i]);
    out[i] = static_cast<float>(acc);
  }
  return out;
}

// Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed", algorithm 1.
std::vector<float> rescale_zero_terminal_snr(const std::vector<float>& betas) {
  const size_t n = betas.size();
  std::vector<float> alphas(n);
  for (size_t i = 0; i < n; ++i) alphas[i] = 1.0f - betas[i];
  std::vector<float> root = cumprod(alphas);
  for (float& v : root) v = std::sqrt(v);
  const float first = root[0], last = root[n - 1];
  const float scale = first / (first - last);
  for (float& v : root) v -= last;
  for (float& v : root) v *= scale;
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) {
    const float bar = root[i] * root[i];
    const float prev_bar = i == 0 ? 1.0f : root[i - 1] * root[i - 1];
    const float alpha = i == 0 ? bar : bar / prev_bar;
    out[i] = 1.0f - alpha;
  }
  return out;
}

// alphas_cumprod; `tiny_terminal`: the Euler/DPM classes replace a zero terminal value by 2^-24
// so that sigma stays finite.
std::vector<float> make_alphas_cumprod(const SchedulerConfig& c, bool tiny_terminal) {
  std::vector<float> betas = make_betas(c);
  if (c.rescale_betas_zero_snr) {
    if (betas.size() < 2) fail("{}: field 'rescale_betas_zero_snr' needs num_train_timesteps >= 2", c.origin);
    betas = rescale_zero_terminal_snr(betas);
  }
  std::vector<float> alphas(betas.size());
  for (size_t i = 0; i < betas.size(); ++i) alphas[i] = 1.0f - betas[i];
  std::vector<float> out = cumprod(alphas);
  if (c.rescale_betas_zero_snr && tiny_terminal) out.back() = std::ldexp(1.0f, -24);
  return out;
}

// ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5, in float32.
std::vector<float> train_sigmas(const std::vector<float>& alphas_cumprod) {
  std::vector<float> out(alphas_cumprod.size());
  for (size_t i = 0; i < out.size(); ++i) out[i] = std::sqrt((1.0f - alphas_cumprod[i]) / alphas_cumprod[i]);
  return out;
}

void check_steps(const SchedulerConfig& c, int64_t steps) {
  if (steps < 1) fail("the number of denoising steps must be at least 1, got {}", steps);
  if (steps > c.num_train_timesteps)
    fail("{} denoising steps is more than the {} training timesteps of {}", steps, c.num_train_timesteps, c.origin);
}

// "leading" and "linspace" timesteps as DDIM and the Euler samplers space them (before the
// cast each applies), highest first.
std::vector<double> spaced_timesteps(const SchedulerConfig& c, TimestepSpacing spacing, int64_t steps) {
  const int64_t n = c.num_train_timesteps;
  std::vector<double> t;
  switch (spacing) {
    case TimestepSpacing::Linspace:
      t = np_linspace(0.0, static_cast<double>(n - 1), steps);
      std::reverse(t.begin(), t.end());
      break;
    case TimestepSpacing::Leading: {
      const int64_t ratio = n / steps;
      for (int64_t i = steps - 1; i >= 0; --i) t.push_back(static_cast<double>(i * ratio));
      break;
    }
    case TimestepSpacing::Trailing:
      for (double v : np_arange_down(static_cast<double>(n), 0.0, -(static_cast<double>(n) / static_cast<double>(steps)))) {
        const double r = np_round(v) - 1;
        if (r >= 0) t.push_back(r);
      }
      break;
  }
  return t;
}

void check_size(const std::vector<double>& timesteps, size_t step, const char* who) {
  if (timesteps.empty()) fail("{}: set_timesteps was not called", who);
  if (step >= timesteps.size()) fail("{}: step {} is past the last of {} steps", who, step, timesteps.size());
}

// ---------------------------------------------------------------------------------------------

class DdimScheduler : public Scheduler {
 public:
  explicit DdimScheduler(const SchedulerConfig& c) : c_(c), alphas_cumprod_(make_alphas_cumprod(c, false)) {
    final_alpha_cumprod_ = c.set_alpha_to_one ? 1.0f : alphas_cumprod_[0];
  }

  void set_timesteps(int64_t steps) override {
    check_steps(c_, steps);
    const TimestepSpacing spacing = c_.spacing_for(SamplerKind::Ddim);
    std::vector<double> t = spaced_timesteps(c_, spacing, steps);
    for (double& v : t) {
      if (spacing == TimestepSpacing::Linspace) v = np_round(v);
      if (spacing == TimestepSpacing::Leading) v += static_cast<double>(c_.steps_offset);
      if (v >= static_cast<double>(c_.num_train_timesteps))
        fail("{}: steps_offset {} with {} steps gives timestep {}, past the {} training timesteps", c_.origin,
             c_.steps_offset, steps, v, c_.num_train_timesteps);
    }
    timesteps_ = std::move(t);
    steps_ = steps;
  }

  float init_noise_sigma() const override { return 1.0f; }
  void scale_model_input(float*, int64_t, size_t step) const override { check_size(timesteps_, step, "ddim"); }
  void reset() override {}

  void step(const float* model_output, float* sample, int64_t n, size_t step, const NoiseFn& noise) override {
    check_size(timesteps_, step, "ddim");
    const auto t = static_cast<int64_t>(timesteps_[step]);
    // diffusers steps back by num_train_timesteps // steps whatever the spacing, so with
    // "linspace" or "trailing" the previous alpha is not always that of the next timestep.
    const int64_t prev_t = t - c_.num_train_timesteps / steps_;
    const float alpha_t = alphas_cumprod_[t];
    const float alpha_prev = prev_t >= 0 ? alphas_cumprod_[prev_t] : final_alpha_cumprod_;
    const float beta_t = 1.0f - alpha_t;
    const float sqrt_alpha = std::sqrt(alpha_t), sqrt_beta = std::sqrt(beta_t);
    const float variance = ((1.0f - alpha_prev) / beta_t) * (1.0f - alpha_t / alpha_prev);
    const float std_dev = static_cast<float>(c_.eta) * std::sqrt(variance);
    const float direction = std::sqrt(1.0f - alpha_prev - std_dev * std_dev);
    const float sqrt_alpha_prev = std::sqrt(alpha_prev);
    const float range = static_cast<float>(c_.clip_sample_range);
    const bool v_pred = c_.prediction_type == PredictionType::VPrediction;

    for (int64_t i = 0; i < n; ++i) {
      const float x = sample[i], m = model_output[i];
      float x0, eps;
      if (v_pred) {
        x0 = sqrt_alpha * x - sqrt_beta * m;
        eps = sqrt_alpha * m + sqrt_beta * x;
      } else {
        x0 = (x - sqrt_beta * m) / sqrt_alpha;
        eps = m;
      }
      if (c_.clip_sample) x0 = std::clamp(x0, -range, range);
      sample[i] = sqrt_alpha_prev * x0 + direction * eps;
    }
    if (c_.eta > 0) {
      if (!noise) fail("ddim with eta > 0 needs a noise source");
      z_.resize(static_cast<size_t>(n));
      noise(z_.data(), n);
      for (int64_t i = 0; i < n; ++i) sample[i] = sample[i] + std_dev * z_[i];
    }
  }

 private:
  SchedulerConfig c_;
  std::vector<float> alphas_cumprod_;
  float final_alpha_cumprod_ = 1.0f;
  int64_t steps_ = 0;
  std::vector<float> z_;
};

// Shared by Euler and Euler ancestral: sigma-parameterised, model input scaled by
// 1 / sqrt(sigma^2 + 1), float32 timesteps.
class SigmaScheduler : public Scheduler {
 public:
  SigmaScheduler(const SchedulerConfig& c, SamplerKind kind)
      : c_(c), kind_(kind), train_sigmas_(train_sigmas(make_alphas_cumprod(c, true))) {
    // Before set_timesteps diffusers answers from the training sigmas.
    set_init_noise_sigma(*std::max_element(train_sigmas_.begin(), train_sigmas_.end()));
  }

  void set_timesteps(int64_t steps) override {
    check_steps(c_, steps);
    const TimestepSpacing spacing = c_.spacing_for(kind_);
    std::vector<double> t = spaced_timesteps(c_, spacing, steps);
    // Euler rounds "leading" values before its float32 cast, and adds the offset after it.
    for (double& v : t) {
      float f = static_cast<float>(v);
      if (spacing == TimestepSpacing::Leading) f += static_cast<float>(c_.steps_offset);
      v = f;
    }
    std::vector<double> table(train_sigmas_.begin(), train_sigmas_.end());
    std::vector<double> sigmas(t.size());
    for (size_t i = 0; i < t.size(); ++i) sigmas[i] = np_interp(t[i], table);

    if (kind_ == SamplerKind::Euler && c_.use_karras_sigmas) {
      // The ramp runs between the ends of the spaced schedule (unless the config pins them),
      // so its range depends on timestep_spacing and steps_offset.
      const double lo = c_.sigma_min.value_or(sigmas.back());
      const double hi = c_.sigma_max.value_or(sigmas.front());
      sigmas = karras_sigmas(lo, hi, static_cast<int64_t>(t.size()));
      std::vector<double> log_sigmas(train_sigmas_.size());
      for (size_t i = 0; i < log_sigmas.size(); ++i) log_sigmas[i] = std::log(train_sigmas_[i]);
      for (size_t i = 0; i < t.size(); ++i) t[i] = static_cast<float>(sigma_to_t(sigmas[i], log_sigmas));
    }
    sigmas_.assign(sigmas.begin(), sigmas.end());
    const bool sigma_min_last = kind_ == SamplerKind::Euler && c_.final_sigmas_type == FinalSigmasType::SigmaMin;
    sigmas_.push_back(sigma_min_last ? train_sigmas_[0] : 0.0f);
    timesteps_ = std::move(t);

    set_init_noise_sigma(*std::max_element(sigmas_.begin(), sigmas_.end()));
  }

  float init_noise_sigma() const override { return init_noise_sigma_; }

  void scale_model_input(float* sample, int64_t n, size_t step) const override {
    check_size(timesteps_, step, sampler_name(kind_));
    const float sigma = sigmas_[step];
    const float divisor = std::sqrt(sigma * sigma + 1.0f);
    for (int64_t i = 0; i < n; ++i) sample[i] = sample[i] / divisor;
  }

  void reset() override {}

 protected:
  // diffusers' pred_original_sample, element by element.
  struct Denoised {
    float model_scale, sample_scale;  // v-prediction coefficients
    float sigma;
    bool v_pred;
    float operator()(float x, float m) const {
      if (v_pred) return m * model_scale + x / sample_scale;
      return x - sigma * m;
    }
  };
  Denoised denoiser(float sigma) const {
    const float s2 = sigma * sigma + 1.0f;
    return {-sigma / std::sqrt(s2), s2, sigma, c_.prediction_type == PredictionType::VPrediction};
  }

  // Latents start at the largest sigma; "leading" schedules do not reach it, so diffusers
  // starts them at sqrt(sigma_max^2 + 1) instead.
  void set_init_noise_sigma(float max_sigma) {
    init_noise_sigma_ = c_.spacing_for(kind_) == TimestepSpacing::Leading ? std::sqrt(max_sigma * max_sigma + 1.0f)
                                                                          : max_sigma;
  }

  SchedulerConfig c_;
  SamplerKind kind_;
  std::vector<float> train_sigmas_;
  std::vector<float> sigmas_;  // one per timestep, then the final sigma
  float init_noise_sigma_ = 1.0f;
};

class EulerScheduler : public SigmaScheduler {
 public:
  explicit EulerScheduler(const SchedulerConfig& c) : SigmaScheduler(c, SamplerKind::Euler) {}

  void step(const float* model_output, float* sample, int64_t n, size_t step, const NoiseFn&) override {
    check_size(timesteps_, step, "euler");
    const float sigma = sigmas_[step];
    const float sigma_hat = sigma * 1.0f;  // no churn: gamma = 0
    const Denoised denoised = denoiser(sigma);
    const float dt = sigmas_[step + 1] - sigma_hat;
    for (int64_t i = 0; i < n; ++i) {
      const float x = sample[i];
      const float x0 = denoised(x, model_output[i]);
      const float derivative = (x - x0) / sigma_hat;
      sample[i] = x + derivative * dt;
    }
  }
};

class EulerAncestralScheduler : public SigmaScheduler {
 public:
  explicit EulerAncestralScheduler(const SchedulerConfig& c) : SigmaScheduler(c, SamplerKind::EulerAncestral) {}

  void step(const float* model_output, float* sample, int64_t n, size_t step, const NoiseFn& noise) override {
    check_size(timesteps_, step, "euler_a");
    if (!noise) fail("euler_a needs a noise source");
    const float sigma = sigmas_[step], sigma_to = sigmas_[step + 1];
    const float sigma_up = std::sqrt(sigma_to * sigma_to * (sigma * sigma - sigma_to * sigma_to) / (sigma * sigma));
    const float sigma_down = std::sqrt(sigma_to * sigma_to - sigma_up * sigma_up);
    const float dt = sigma_down - sigma;
    const Denoised denoised = denoiser(sigma);
    // diffusers draws the noise every step, the last (where sigma_up is 0) included, so the
    // random stream stays aligned with theirs.
    z_.resize(static_cast<size_t>(n));
    noise(z_.data(), n);
    for (int64_t i = 0; i < n; ++i) {
      const float x = sample[i];
      const float derivative = (x - denoised(x, model_output[i])) / sigma;
      const float moved = x + derivative * dt;
      sample[i] = moved + z_[i] * sigma_up;
    }
  }

 private:
  std::vector<float> z_;
};

// DPM-Solver++(2M): multistep, data prediction, in log-SNR time lambda = log(alpha / sigma).
class DpmppTwoMScheduler : public Scheduler {
 public:
  explicit DpmppTwoMScheduler(const SchedulerConfig& c) : c_(c) {
    const std::vector<float> alphas_cumprod = make_alphas_cumprod(c, true);
    train_sigmas_ = train_sigmas(alphas_cumprod);
    // lambda_t as torch computes it: log(sqrt(a)) - log(sqrt(1 - a)), float32.
    lambdas_.resize(alphas_cumprod.size());
    for (size_t i = 0; i < lambdas_.size(); ++i)
      lambdas_[i] = std::log(std::sqrt(alphas_cumprod[i])) - std::log(std::sqrt(1.0f - alphas_cumprod[i]));
  }

  void set_timesteps(int64_t steps) override {
    check_steps(c_, steps);
    const int64_t n = c_.num_train_timesteps;
    // Timesteps whose lambda is below lambda_min_clipped are cut from the top of the range.
    int64_t clipped = 0;
    for (auto it = lambdas_.rbegin(); it != lambdas_.rend(); ++it)
      if (static_cast<double>(*it) < c_.lambda_min_clipped) ++clipped;
    const int64_t last = n - clipped;
    if (last < 1) fail("{}: field 'lambda_min_clipped': {} clips every timestep", c_.origin, c_.lambda_min_clipped);

    std::vector<double> t;
    switch (c_.spacing_for(SamplerKind::DpmppTwoM)) {
      case TimestepSpacing::Linspace: {
        std::vector<double> v = np_linspace(0.0, static_cast<double>(last - 1), steps + 1);
        for (int64_t i = steps; i >= 1; --i) t.push_back(np_round(v[i]));
        break;
      }
      case TimestepSpacing::Leading: {
        const int64_t ratio = last / (steps + 1);
        for (int64_t i = steps; i >= 1; --i) t.push_back(static_cast<double>(i * ratio + c_.steps_offset));
        break;
      }
      case TimestepSpacing::Trailing:
        for (double v : np_arange_down(static_cast<double>(last), 0.0, -(static_cast<double>(n) / static_cast<double>(steps)))) {
          const double r = np_round(v) - 1;
          if (r >= 0) t.push_back(r);
        }
        break;
    }
    if (t.empty()) fail("{}: no timesteps left for {} steps", c_.origin, steps);

    std::vector<double> table(train_sigmas_.begin(), train_sigmas_.end());
    std::vector<double> sigmas(t.size());
    if (c_.use_karras_sigmas) {
      // Unlike Euler, DPM++ ramps over the whole training range, then rounds the timesteps
      // (truncates, for squaredcos_cap_v2), so sigma and timestep no longer agree exactly.
      sigmas = karras_sigmas(table.front(), table.back(), steps);
      std::vector<double> log_sigmas(train_sigmas_.size());
      for (size_t i = 0; i < log_sigmas.size(); ++i) log_sigmas[i] = std::log(train_sigmas_[i]);
      t.resize(sigmas.size());
      for (size_t i = 0; i < sigmas.size(); ++i) {
        const double ti = sigma_to_t(sigmas[i], log_sigmas);
        t[i] = c_.beta_schedule != BetaSchedule::SquaredCosCapV2 ? np_round(ti) : std::trunc(ti);
      }
    } else {
      for (size_t i = 0; i < t.size(); ++i) sigmas[i] = np_interp(t[i], table);
    }
    sigmas_.assign(sigmas.begin(), sigmas.end());
    sigmas_.push_back(c_.final_sigmas_type == FinalSigmasType::SigmaMin ? train_sigmas_[0] : 0.0f);
    for (double v : t)
      if (v < 0 || v >= static_cast<double>(n))
        fail("{}: steps_offset {} with {} steps gives timestep {}, outside the {} training timesteps", c_.origin,
             c_.steps_offset, steps, v, n);
    timesteps_ = std::move(t);
    reset();
  }

  float init_noise_sigma() const override { return 1.0f; }
  void scale_model_input(float*, int64_t, size_t step) const override { check_size(timesteps_, step, "dpmpp_2m"); }

  void reset() override {
    lower_order_nums_ = 0;
    last_step_ = -1;
    previous_.clear();
  }

  void step(const float* model_output, float* sample, int64_t n, size_t step, const NoiseFn&) override {
    check_size(timesteps_, step, "dpmpp_2m");
    if (step == 0) reset();
    if (lower_order_nums_ > 0 && static_cast<int64_t>(step) != last_step_ + 1)
      fail("dpmpp_2m: step {} follows step {}; call reset() before starting over", step, last_step_);
    if (lower_order_nums_ > 0 && previous_.size() != static_cast<size_t>(n))
      fail("dpmpp_2m: step {} has {} values but the previous step had {}", step, n, previous_.size());

    const size_t count = timesteps_.size();
    const bool lower_order_final =
        step == count - 1 &&
        (c_.euler_at_final || (c_.lower_order_final && count < 15) || c_.final_sigmas_type == FinalSigmasType::Zero);
    const bool first_order = lower_order_nums_ < 1 || lower_order_final;

    const Point s0 = point(sigmas_[step]);
    const Point t = point(sigmas_[step + 1]);
    const float h = t.lambda - s0.lambda;
    const float sample_scale = t.sigma / s0.sigma;
    const float phi = t.alpha * (std::exp(-h) - 1.0f);

    current_.resize(static_cast<size_t>(n));
    const bool v_pred = c_.prediction_type == PredictionType::VPrediction;
    for (int64_t i = 0; i < n; ++i)
      current_[i] = v_pred ? s0.alpha * sample[i] - s0.sigma * model_output[i]
                           : (sample[i] - s0.sigma * model_output[i]) / s0.alpha;

    if (first_order) {
      for (int64_t i = 0; i < n; ++i) sample[i] = sample_scale * sample[i] - phi * current_[i];
    } else {
      const Point s1 = point(sigmas_[step - 1]);
      const float h0 = s0.lambda - s1.lambda;
      const float r0 = h0 / h;
      const float inv_r0 = 1.0f / r0;
      if (c_.solver_type == DpmSolverType::Midpoint) {
        const float half_phi = 0.5f * phi;
        for (int64_t i = 0; i < n; ++i) {
          const float d1 = inv_r0 * (current_[i] - previous_[i]);
          sample[i] = sample_scale * sample[i] - phi * current_[i] - half_phi * d1;
        }
      } else {
        const float heun = t.alpha * ((std::exp(-h) - 1.0f) / h + 1.0f);
        for (int64_t i = 0; i < n; ++i) {
          const float d1 = inv_r0 * (current_[i] - previous_[i]);
          sample[i] = sample_scale * sample[i] - phi * current_[i] + heun * d1;
        }
      }
    }
    previous_.swap(current_);
    if (lower_order_nums_ < 2) ++lower_order_nums_;
    last_step_ = static_cast<int64_t>(step);
  }

 private:
  struct Point {
    float alpha, sigma, lambda;
  };
  // diffusers' _sigma_to_alpha_sigma_t and the log-SNR, float32.
  static Point point(float sigma) {
    const float alpha = 1.0f / std::sqrt(sigma * sigma + 1.0f);
    const float s = sigma * alpha;
    return {alpha, s, std::log(alpha) - std::log(s)};
  }

  SchedulerConfig c_;
  std::vector<float> train_sigmas_, lambdas_, sigmas_;
  std::vector<float> previous_, current_;  // data predictions of the previous and current step
  int lower_order_nums_ = 0;
  int64_t last_step_ = -1;
};

}  // namespace

std::unique_ptr<Scheduler> make_scheduler(SamplerKind kind, const SchedulerConfig& config) {
  switch (kind) {
    case SamplerKind::Ddim: return std::make_unique<DdimScheduler>(config);
    case SamplerKind::Euler: return std::make_unique<EulerScheduler>(config);
    case SamplerKind::EulerAncestral: return std::make_unique<EulerAncestralScheduler>(config);
    case SamplerKind::DpmppTwoM: return std::make_unique<DpmppTwoMScheduler>(config);
  }
  fail("unknown sampler kind");
}

}  // namespace tessera::diffusion
