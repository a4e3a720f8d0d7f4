#pragma once
// Diffusion noise schedulers: DDIM, Euler, Euler ancestral and DPM++ 2M, each reproducing the
// numbers of the diffusers 0.42.1 class of the same name (DDIMScheduler,
// EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, DPMSolverMultistepScheduler with
// algorithm_type dpmsolver++ and solver_order 2). "Same numbers" includes diffusers' choices of
// precision: the training tables (betas, alphas_cumprod, sigmas) are float32 as torch makes
// them, timestep spacing and Karras sigmas are float64 as numpy makes them, and every step runs
// in float32 with the operations in diffusers' order, so outputs agree to float32 rounding.
//
// A scheduler is configured from a diffusers scheduler_config.json. The file may have been
// written for any scheduler class (Stable Diffusion 1.5 ships a PNDMScheduler config); as in
// diffusers' `from_config`, the keys a class does not know are ignored, and an absent key takes
// that class's default (timestep_spacing is "leading" for DDIM and "linspace" for the others).
// Known keys whose values would change the numbers in a way not implemented here (thresholding,
// exponential/beta/flow sigmas, log_linear interpolation, continuous timesteps, learned variance,
// "sample" prediction) are rejected with a one-line error naming the file and the field.
//
// One deliberate difference: for "trailing" spacing numpy's arange sometimes yields one value
// too many (e.g. 61 steps give 62 timesteps, the last being -1, which diffusers then runs);
// here negative timesteps are dropped, so `steps` steps give `steps` timesteps.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace tessera::diffusion {

enum class SamplerKind { Ddim, Euler, EulerAncestral, DpmppTwoM };

// "ddim", "euler", "euler_a", "dpmpp_2m"; anything else fails naming the accepted names.
SamplerKind parse_sampler(const std::string& name);
const char* sampler_name(SamplerKind kind);

enum class BetaSchedule { Linear, ScaledLinear, SquaredCosCapV2 };
enum class PredictionType { Epsilon, VPrediction };
enum class TimestepSpacing { Leading, Trailing, Linspace };
enum class FinalSigmasType { Zero, SigmaMin };
enum class DpmSolverType { Midpoint, Heun };

struct SchedulerConfig {
  int64_t num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  BetaSchedule beta_schedule = BetaSchedule::Linear;
  std::vector<double> trained_betas;  // when not empty, replaces beta_start/beta_end/beta_schedule
  PredictionType prediction_type = PredictionType::Epsilon;
  std::optional<TimestepSpacing> timestep_spacing;  // unset: the sampler's diffusers default
  int64_t steps_offset = 0;
  bool rescale_betas_zero_snr = false;

  // DDIM
  bool set_alpha_to_one = true;
  bool clip_sample = true;
  double clip_sample_range = 1.0;
  double eta = 0.0;  // a call argument in diffusers, never read from the file

  // Euler and DPM++ 2M
  bool use_karras_sigmas = false;
  FinalSigmasType final_sigmas_type = FinalSigmasType::Zero;
  std::optional<double> sigma_min, sigma_max;  // Euler only: bounds of the Karras ramp

  // DPM++ 2M (the sampler fixes algorithm_type dpmsolver++ and solver_order 2)
  bool lower_order_final = true;
  bool euler_at_final = false;
  DpmSolverType solver_type = DpmSolverType::Midpoint;
  double lambda_min_clipped = -std::numeric_limits<double>::infinity();

  std::string origin = "scheduler config";  // names the file in errors

  TimestepSpacing spacing_for(SamplerKind kind) const;

  static SchedulerConfig load(const std::filesystem::path& scheduler_config_json);
  static SchedulerConfig from_json(const nlohmann::json& json, const std::string& origin);
};

// Noise for ancestral steps: fills `out` with n standard normal values.
using NoiseFn = std::function<void(float* out, int64_t n)>;

class Scheduler {
 public:
  virtual ~Scheduler() = default;
  // Chooses the timesteps for a run of `steps` denoising steps (1 .. num_train_timesteps) and
  // forgets any history.
  virtual void set_timesteps(int64_t steps) = 0;
  // The model's timestep input for each step, in order (diffusers' scheduler.timesteps).
  const std::vector<double>& timesteps() const { return timesteps_; }
  // Initial latents are multiplied by this.
  virtual float init_noise_sigma() const = 0;
  // In place. Euler-type samplers divide by sqrt(sigma^2 + 1); identity for DDIM and DPM++.
  virtual void scale_model_input(float* sample, int64_t n, size_t step) const = 0;
  // One denoising step: model_output (eps or v) at step index `step`; updates sample in place.
  // `noise` is called only by samplers that add noise (Euler ancestral; DDIM with eta > 0),
  // once per step, for n values.
  virtual void step(const float* model_output, float* sample, int64_t n, size_t step, const NoiseFn& noise) = 0;
  // Forgets multistep history before a new image (step 0 also does this implicitly).
  virtual void reset() = 0;

 protected:
  std::vector<double> timesteps_;
};

std::unique_ptr<Scheduler> make_scheduler(SamplerKind kind, const SchedulerConfig& config);

}  // namespace tessera::diffusion
