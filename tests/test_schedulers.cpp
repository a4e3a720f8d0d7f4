// The schedulers against diffusers: tests/fixtures/schedulers holds the configs and what
// diffusers' schedulers did with them (tools/golden/make_scheduler_golden.py), run as a pipeline
// with a fake model. The fake model is evaluated here with the same float32 operations.
#pragma GCC optimize("fp-contract=off")  // the fake model must round like numpy's, unfused

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <memory>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "formats/safetensors.h"
#include "models/diffusion/scheduler.h"
#include "test_util.h"

using namespace tessera;
using namespace tessera::diffusion;
using nlohmann::json;
using tessera::testing::error_of;
using tessera::testing::fixtures;
using tessera::testing::TempDir;
using tessera::testing::write_file;

namespace {

std::filesystem::path golden_dir() { return fixtures() / "schedulers"; }

struct Golden {
  json doc;
  std::unique_ptr<SafetensorsFile> tensors;
};

const Golden& golden() {
  static const Golden g = [] {
    Golden out;
    out.doc = json::parse(tessera::testing::read_file(golden_dir() / "golden.json"));
    out.tensors = std::make_unique<SafetensorsFile>(golden_dir() / "golden.safetensors");
    return out;
  }();
  return g;
}

std::vector<float> golden_tensor(const std::string& name) { return golden().tensors->get(name).to_vector(); }

// model(x, t)[i] = float32(sin(float64(x[i] * 0.7f + float32(0.004 * t) + 0.3f * (i % 7)))), as the
// golden script computes it.
void fake_model(const std::vector<float>& x, double t, std::vector<float>& out) {
  const float tc = static_cast<float>(0.004 * t);
  out.resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const float phase = 0.3f * static_cast<float>(i % 7);
    const float arg = x[i] * 0.7f + tc;
    out[i] = static_cast<float>(std::sin(static_cast<double>(arg + phase)));
  }
}

constexpr double kTolerance = 1e-5;

// Checks got against want to kTolerance relative to the scale of want (at least 1), or to
// `floor` when that is larger.
void expect_close(const std::vector<float>& got, const std::vector<float>& want, double floor, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 1.0, err = 0.0;
  size_t worst = 0;
  for (float w : want) scale = std::max(scale, static_cast<double>(std::fabs(w)));
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::fabs(static_cast<double>(got[i]) - want[i]);
    if (!(e <= err)) {
      err = std::isnan(e) ? std::numeric_limits<double>::infinity() : e;
      worst = i;
    }
  }
  EXPECT_LE(err, std::max(kTolerance * scale, floor))
      << what << ": element " << worst << " is " << got[worst] << ", diffusers " << want[worst] << " (relative "
      << err / scale << ")";
}

void run_golden_case(const json& c) {
  const std::string name = c["name"];
  SCOPED_TRACE(name);
  SchedulerConfig config = SchedulerConfig::load(golden_dir() / "configs" / (c["config"].get<std::string>() + ".json"));
  config.eta = c.value("eta", 0.0);
  auto scheduler = make_scheduler(parse_sampler(c["sampler"]), config);
  scheduler->set_timesteps(c["steps"].get<int64_t>());

  const auto want_t = c["timesteps"].get<std::vector<double>>();
  const auto& got_t = scheduler->timesteps();
  ASSERT_EQ(got_t.size(), want_t.size());
  for (size_t i = 0; i < want_t.size(); ++i)
    EXPECT_NEAR(got_t[i], want_t[i], 1e-6 * std::max(1.0, std::fabs(want_t[i]))) << "timestep " << i;
  const double want_sigma = c["init_noise_sigma"];
  EXPECT_NEAR(scheduler->init_noise_sigma(), want_sigma, 1e-6 * want_sigma);

  std::vector<float> sample = golden_tensor("latents");
  const auto n = static_cast<int64_t>(sample.size());
  const float init_sigma = scheduler->init_noise_sigma();
  float largest = 0;
  for (float& v : sample) {
    v = v * init_sigma;
    largest = std::max(largest, std::fabs(v));
  }
  // No result can be closer than float32 resolves the initial latents. That only bites for
  // zero-SNR schedules, whose sigma_max is 4096: torch's sqrt(16777215.0f) is 4096 where the
  // correctly rounded value is 4095.99976, and the first step cancels values near 4096 * 3.
  const double floor = std::nextafter(largest, std::numeric_limits<float>::infinity()) - largest;

  std::vector<float> noise;
  if (c["has_noise"].get<bool>()) noise = golden_tensor(name + "/noise");
  size_t noise_used = 0;
  NoiseFn noise_fn = [&](float* out, int64_t count) {
    ASSERT_LE(noise_used + count, noise.size()) << "more noise drawn than diffusers drew";
    std::copy(noise.begin() + noise_used, noise.begin() + noise_used + count, out);
    noise_used += count;
  };

  std::vector<float> model_input, model_output;
  for (size_t i = 0; i < got_t.size(); ++i) {
    model_input = sample;
    scheduler->scale_model_input(model_input.data(), n, i);
    if (i == 0) expect_close(model_input, golden_tensor(name + "/scaled0"), 0.0, "scaled model input at step 0");
    fake_model(model_input, got_t[i], model_output);
    scheduler->step(model_output.data(), sample.data(), n, i, noise_fn);
    if (i == 0) expect_close(sample, golden_tensor(name + "/first"), floor, "sample after step 0");
  }
  EXPECT_EQ(noise_used, noise.size()) << "diffusers drew noise that the scheduler did not use";
  expect_close(sample, golden_tensor(name + "/final"), floor, "final sample");
}

int run_golden_cases(const std::string& sampler) {
  int count = 0;
  for (const auto& c : golden().doc["cases"]) {
    if (c["sampler"] != sampler || c.value("timesteps_only", false)) continue;
    run_golden_case(c);
    ++count;
  }
  return count;
}

SchedulerConfig config_from(const std::string& text, const std::string& origin = "test.json") {
  return SchedulerConfig::from_json(json::parse(text), origin);
}

// The error that loading `text` as a scheduler_config.json gives.
std::string config_error(const std::string& text) {
  TempDir dir;
  write_file(dir / "scheduler_config.json", text);
  return error_of([&] { SchedulerConfig::load(dir / "scheduler_config.json"); });
}

}  // namespace

TEST(SchedulerGolden, Ddim) { EXPECT_GE(run_golden_cases("ddim"), 40); }
TEST(SchedulerGolden, Euler) { EXPECT_GE(run_golden_cases("euler"), 40); }
TEST(SchedulerGolden, EulerAncestral) { EXPECT_GE(run_golden_cases("euler_a"), 40); }
TEST(SchedulerGolden, DpmppTwoM) { EXPECT_GE(run_golden_cases("dpmpp_2m"), 40); }

// numpy's arange gives diffusers 62 "trailing" timesteps for 61 steps, the last -1; the engine
// keeps the first 61.
TEST(SchedulerGolden, TrailingSpacingDropsTheNegativeTimestep) {
  int count = 0;
  for (const auto& c : golden().doc["cases"]) {
    if (!c.value("timesteps_only", false)) continue;
    SCOPED_TRACE(c["name"].get<std::string>());
    auto scheduler = make_scheduler(parse_sampler(c["sampler"]),
                                    SchedulerConfig::load(golden_dir() / "configs" / (c["config"].get<std::string>() + ".json")));
    scheduler->set_timesteps(c["steps"].get<int64_t>());
    auto want = c["diffusers_timesteps"].get<std::vector<double>>();
    ASSERT_EQ(want.back(), -1.0);
    want.pop_back();
    EXPECT_EQ(scheduler->timesteps(), want);
    ++count;
  }
  EXPECT_EQ(count, 3);
}

TEST(Schedulers, ParseSampler) {
  EXPECT_EQ(parse_sampler("ddim"), SamplerKind::Ddim);
  EXPECT_EQ(parse_sampler("euler"), SamplerKind::Euler);
  EXPECT_EQ(parse_sampler("euler_a"), SamplerKind::EulerAncestral);
  EXPECT_EQ(parse_sampler("dpmpp_2m"), SamplerKind::DpmppTwoM);
  for (auto kind : {SamplerKind::Ddim, SamplerKind::Euler, SamplerKind::EulerAncestral, SamplerKind::DpmppTwoM})
    EXPECT_EQ(parse_sampler(sampler_name(kind)), kind);
  EXPECT_EQ(error_of([] { parse_sampler("plms"); }),
            "unknown sampler 'plms' (expected ddim, euler, euler_a or dpmpp_2m)");
  EXPECT_NE(error_of([] { parse_sampler("DDIM"); }), "");
}

TEST(Schedulers, LoadsStableDiffusionConfigIgnoringUnknownKeys) {
  const SchedulerConfig c = SchedulerConfig::load(golden_dir() / "configs" / "sd15.json");
  EXPECT_EQ(c.num_train_timesteps, 1000);
  EXPECT_DOUBLE_EQ(c.beta_start, 0.00085);
  EXPECT_DOUBLE_EQ(c.beta_end, 0.012);
  EXPECT_EQ(c.beta_schedule, BetaSchedule::ScaledLinear);
  EXPECT_EQ(c.steps_offset, 1);
  EXPECT_FALSE(c.set_alpha_to_one);
  EXPECT_FALSE(c.clip_sample);
  EXPECT_TRUE(c.trained_betas.empty());
  EXPECT_FALSE(c.timestep_spacing.has_value());
  // Each class's own default when the file does not say.
  EXPECT_EQ(c.spacing_for(SamplerKind::Ddim), TimestepSpacing::Leading);
  EXPECT_EQ(c.spacing_for(SamplerKind::Euler), TimestepSpacing::Linspace);
  EXPECT_EQ(c.spacing_for(SamplerKind::EulerAncestral), TimestepSpacing::Linspace);
  EXPECT_EQ(c.spacing_for(SamplerKind::DpmppTwoM), TimestepSpacing::Linspace);
  EXPECT_NE(c.origin.find("sd15.json"), std::string::npos);

  const SchedulerConfig d = config_from(R"({"_class_name": "X", "skip_prk_steps": true, "whatever": [1, {"a": 2}]})");
  EXPECT_EQ(d.num_train_timesteps, 1000);
  EXPECT_EQ(d.beta_schedule, BetaSchedule::Linear);
  EXPECT_TRUE(d.clip_sample);
  EXPECT_TRUE(d.set_alpha_to_one);
  EXPECT_TRUE(d.lower_order_final);
}

TEST(Schedulers, ReadsPythonInfinityAsDiffusersWritesIt) {
  const SchedulerConfig c = SchedulerConfig::load(golden_dir() / "configs" / "dpm_saved.json");
  EXPECT_TRUE(std::isinf(c.lambda_min_clipped) && c.lambda_min_clipped < 0);
  EXPECT_EQ(c.solver_type, DpmSolverType::Heun);
  EXPECT_TRUE(c.euler_at_final);
  EXPECT_FALSE(c.lower_order_final);
  EXPECT_EQ(c.final_sigmas_type, FinalSigmasType::SigmaMin);
  EXPECT_EQ(c.timestep_spacing, TimestepSpacing::Leading);
  // Inside a string the word stays a string.
  TempDir dir;
  write_file(dir / "c.json", R"({"note": "NaN and -Infinity", "lambda_min_clipped": -Infinity})");
  EXPECT_TRUE(std::isinf(SchedulerConfig::load(dir / "c.json").lambda_min_clipped));
}

TEST(Schedulers, BadConfigsNameTheFileAndField) {
  struct Case {
    const char* text;
    const char* field;
    const char* detail;
  };
  const Case cases[] = {
      {R"({"beta_schedule": "cosine"})", "'beta_schedule'", "unknown value 'cosine'"},
      {R"({"beta_schedule": 3})", "'beta_schedule'", "expected a string"},
      {R"({"num_train_timesteps": "1000"})", "'num_train_timesteps'", "expected an integer"},
      {R"({"num_train_timesteps": 0})", "'num_train_timesteps'", "out of range"},
      {R"({"num_train_timesteps": 10.5})", "'num_train_timesteps'", "expected an integer"},
      {R"({"beta_start": "small"})", "'beta_start'", "expected a number"},
      {R"({"beta_end": NaN})", "'beta_end'", "finite"},
      {R"({"beta_start": 0.5, "beta_end": 1.5})", "'beta_start'/'beta_end'", "outside [0, 1)"},
      {R"({"prediction_type": "sample"})", "'prediction_type'", "not supported"},
      {R"({"prediction_type": "eps"})", "'prediction_type'", "unknown value 'eps'"},
      {R"({"timestep_spacing": "uniform"})", "'timestep_spacing'", "unknown value 'uniform'"},
      {R"({"steps_offset": -1})", "'steps_offset'", "out of range"},
      {R"({"clip_sample": "yes"})", "'clip_sample'", "expected true or false"},
      {R"({"final_sigmas_type": "one"})", "'final_sigmas_type'", "unknown value 'one'"},
      {R"({"solver_type": "rk4"})", "'solver_type'", "unknown value 'rk4'"},
      {R"({"interpolation_type": "log_linear"})", "'interpolation_type'", "not supported"},
      {R"({"timestep_type": "continuous"})", "'timestep_type'", "not supported"},
      {R"({"thresholding": true})", "'thresholding'", "not supported"},
      {R"({"use_exponential_sigmas": true})", "'use_exponential_sigmas'", "not supported"},
      {R"({"variance_type": "learned_range"})", "'variance_type'", "not supported"},
      {R"({"sigma_min": -1})", "'sigma_min'", "positive"},
      {R"({"num_train_timesteps": 3, "trained_betas": [0.1, 0.2]})", "'trained_betas'", "has 2 values"},
      {R"({"trained_betas": "x"})", "'trained_betas'", "expected a list"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.text);
    const std::string err = config_error(c.text);
    EXPECT_NE(err.find("scheduler_config.json"), std::string::npos) << err;
    EXPECT_NE(err.find(c.field), std::string::npos) << err;
    EXPECT_NE(err.find(c.detail), std::string::npos) << err;
    EXPECT_EQ(err.find('\n'), std::string::npos) << err;
  }
  const std::string invalid = config_error("{\"beta_start\": ");
  EXPECT_NE(invalid.find("scheduler_config.json: not valid JSON"), std::string::npos) << invalid;
  EXPECT_EQ(invalid.find('\n'), std::string::npos) << invalid;
  EXPECT_NE(config_error("[1, 2]").find("must be a JSON object"), std::string::npos);
  const std::string missing = error_of([] { SchedulerConfig::load("/nonexistent/scheduler_config.json"); });
  EXPECT_NE(missing.find("/nonexistent/scheduler_config.json: cannot open"), std::string::npos) << missing;
  // A null where diffusers would pass None: booleans read as false, optional numbers as unset.
  const SchedulerConfig nulls = config_from(R"({"clip_sample": null, "sigma_min": null, "timestep_spacing": null})");
  EXPECT_FALSE(nulls.clip_sample);
  EXPECT_FALSE(nulls.sigma_min.has_value());
  EXPECT_FALSE(nulls.timestep_spacing.has_value());
}

TEST(Schedulers, BadStepCountsAndStepIndices) {
  const SchedulerConfig config = SchedulerConfig::load(golden_dir() / "configs" / "sd15.json");
  for (auto kind : {SamplerKind::Ddim, SamplerKind::Euler, SamplerKind::EulerAncestral, SamplerKind::DpmppTwoM}) {
    SCOPED_TRACE(sampler_name(kind));
    auto s = make_scheduler(kind, config);
    std::vector<float> x(8, 0.5f), m(8, 0.1f);
    NoiseFn zeros = [](float* out, int64_t n) { std::fill(out, out + n, 0.0f); };
    EXPECT_NE(error_of([&] { s->step(m.data(), x.data(), 8, 0, zeros); }).find("set_timesteps was not called"),
              std::string::npos);
    EXPECT_NE(error_of([&] { s->set_timesteps(0); }).find("at least 1, got 0"), std::string::npos);
    EXPECT_NE(error_of([&] { s->set_timesteps(-3); }).find("at least 1, got -3"), std::string::npos);
    const std::string too_many = error_of([&] { s->set_timesteps(1001); });
    EXPECT_NE(too_many.find("1001 denoising steps is more than the 1000 training timesteps"), std::string::npos)
        << too_many;
    EXPECT_NE(too_many.find("sd15.json"), std::string::npos) << too_many;
    s->set_timesteps(5);
    EXPECT_EQ(s->timesteps().size(), 5u);
    EXPECT_NE(error_of([&] { s->step(m.data(), x.data(), 8, 5, zeros); }).find("past the last of 5 steps"),
              std::string::npos);
    EXPECT_NE(error_of([&] { s->scale_model_input(x.data(), 8, 7); }).find("past the last"), std::string::npos)
        << sampler_name(kind);
  }
  // Every step count up to num_train_timesteps works for every sampler and spacing.
  for (const char* spacing : {"leading", "trailing", "linspace"}) {
    SchedulerConfig c = config;
    c.timestep_spacing = spacing == std::string("leading")    ? TimestepSpacing::Leading
                         : spacing == std::string("trailing") ? TimestepSpacing::Trailing
                                                              : TimestepSpacing::Linspace;
    c.steps_offset = 0;
    for (auto kind : {SamplerKind::Ddim, SamplerKind::Euler, SamplerKind::DpmppTwoM}) {
      auto s = make_scheduler(kind, c);
      for (int64_t steps : {1, 2, 3, 7, 61, 333, 999, 1000}) {
        s->set_timesteps(steps);
        EXPECT_EQ(s->timesteps().size(), static_cast<size_t>(steps)) << spacing << " " << steps;
        for (double t : s->timesteps()) EXPECT_TRUE(t >= 0 && t <= 999) << spacing << " " << steps << " " << t;
      }
    }
  }
  // A steps_offset that pushes a DDIM timestep past the table is an error, not a bad index.
  auto ddim = make_scheduler(SamplerKind::Ddim, config);
  EXPECT_NE(error_of([&] { ddim->set_timesteps(1000); }).find("gives timestep 1000"), std::string::npos);
}

TEST(Schedulers, InitNoiseSigmaBeforeSetTimesteps) {
  // diffusers answers from the training sigmas (values from diffusers 0.42.1).
  const SchedulerConfig sd15 = SchedulerConfig::load(golden_dir() / "configs" / "sd15.json");
  const SchedulerConfig sdxl = SchedulerConfig::load(golden_dir() / "configs" / "sdxl.json");
  for (auto kind : {SamplerKind::Euler, SamplerKind::EulerAncestral}) {
    EXPECT_FLOAT_EQ(make_scheduler(kind, sd15)->init_noise_sigma(), 14.614646911621094f);  // linspace
    EXPECT_FLOAT_EQ(make_scheduler(kind, sdxl)->init_noise_sigma(), 14.648818969726562f);  // leading
  }
  EXPECT_EQ(make_scheduler(SamplerKind::Ddim, sd15)->init_noise_sigma(), 1.0f);
  EXPECT_EQ(make_scheduler(SamplerKind::DpmppTwoM, sd15)->init_noise_sigma(), 1.0f);
}

TEST(Schedulers, AncestralStepsNeedNoise) {
  const SchedulerConfig config = SchedulerConfig::load(golden_dir() / "configs" / "sd15.json");
  auto s = make_scheduler(SamplerKind::EulerAncestral, config);
  s->set_timesteps(4);
  std::vector<float> x(4, 1.0f), m(4, 0.0f);
  EXPECT_NE(error_of([&] { s->step(m.data(), x.data(), 4, 0, NoiseFn{}); }).find("needs a noise source"),
            std::string::npos);
  // Deterministic samplers never ask for noise.
  for (auto kind : {SamplerKind::Ddim, SamplerKind::Euler, SamplerKind::DpmppTwoM}) {
    auto d = make_scheduler(kind, config);
    d->set_timesteps(4);
    int calls = 0;
    NoiseFn counting = [&](float*, int64_t) { ++calls; };
    for (size_t i = 0; i < 4; ++i) d->step(m.data(), x.data(), 4, i, counting);
    EXPECT_EQ(calls, 0);
  }
}

// DPM++ 2M remembers the previous step; a new image must not inherit it.
TEST(Schedulers, DpmppHistoryIsPerImage) {
  const SchedulerConfig config = SchedulerConfig::load(golden_dir() / "configs" / "karras.json");
  auto s = make_scheduler(SamplerKind::DpmppTwoM, config);
  s->set_timesteps(6);
  auto run = [&](bool explicit_reset) {
    if (explicit_reset) s->reset();
    std::vector<float> x = {1.0f, -2.0f, 0.5f, 3.0f}, out;
    for (size_t i = 0; i < 6; ++i) {
      fake_model(x, s->timesteps()[i], out);
      s->step(out.data(), x.data(), 4, i, {});
    }
    return x;
  };
  const auto first = run(false);
  EXPECT_EQ(run(true), first);
  EXPECT_EQ(run(false), first);  // step 0 starts afresh by itself

  std::vector<float> x(4, 1.0f), m(4, 0.5f);
  s->step(m.data(), x.data(), 4, 0, {});
  s->step(m.data(), x.data(), 4, 1, {});
  EXPECT_NE(error_of([&] { s->step(m.data(), x.data(), 4, 3, {}); }).find("step 3 follows step 1"), std::string::npos);
  EXPECT_NE(error_of([&] { s->step(m.data(), x.data(), 2, 2, {}); }).find("has 2 values"), std::string::npos);
  // After a reset, any step may come first (img2img starts part-way).
  s->reset();
  EXPECT_EQ(error_of([&] { s->step(m.data(), x.data(), 4, 3, {}); }), "");
}

TEST(Schedulers, BatchIsElementwise) {
  // The same element gives the same result whatever batch it sits in.
  const SchedulerConfig config = SchedulerConfig::load(golden_dir() / "configs" / "sdxl.json");
  for (auto kind : {SamplerKind::Ddim, SamplerKind::Euler, SamplerKind::DpmppTwoM}) {
    auto a = make_scheduler(kind, config), b = make_scheduler(kind, config);
    a->set_timesteps(10);
    b->set_timesteps(10);
    std::vector<float> one = {0.7f}, many = {0.7f, -1.0f, 2.5f, 0.7f};
    for (size_t i = 0; i < 10; ++i) {
      std::vector<float> in1 = one, in4 = many;
      a->scale_model_input(in1.data(), 1, i);
      b->scale_model_input(in4.data(), 4, i);
      std::vector<float> out1 = {std::cos(in1[0])}, out4(4);
      for (size_t k = 0; k < 4; ++k) out4[k] = std::cos(in4[k]);
      a->step(out1.data(), one.data(), 1, i, {});
      b->step(out4.data(), many.data(), 4, i, {});
    }
    EXPECT_EQ(one[0], many[0]) << sampler_name(kind);
    EXPECT_EQ(one[0], many[3]) << sampler_name(kind);
  }
}
