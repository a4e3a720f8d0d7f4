// The training YAML: defaults, every key, durations, relative paths and the one-line errors
// that name the file, the line and the key.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "core/error.h"
#include "test_util.h"
#include "training/train_config.h"

namespace fs = std::filesystem;
using namespace tessera;
using namespace tessera::training;
using tessera::testing::error_of;
using tessera::testing::TempDir;
using tessera::testing::write_file;

namespace {

// A folder with config.yaml's neighbours: data/corpus.txt and data/more/b.jsonl.
struct Workspace {
  TempDir dir;
  Workspace() {
    fs::create_directories(dir / "data" / "more");
    write_file(dir / "data" / "corpus.txt", "hello world\n");
    write_file(dir / "data" / "more" / "b.jsonl", "{\"text\": \"hi\"}\n");
  }
  fs::path config() const { return dir / "config.yaml"; }
  TrainConfig parse(const std::string& yaml) const { return parse_train_config(yaml, config()); }
  std::string error(const std::string& yaml) const {
    return error_of([&] { parse(yaml); });
  }
};

const std::string kMinimal =
    "model: dbrx-tiny\n"
    "train_data: ./data\n"
    "save_folder: ./runs/ckpt\n";

// The message must start with "<path>/config.yaml<rest>" (rest begins with ":line: ...").
void expect_error(const Workspace& w, const std::string& yaml, const std::string& rest) {
  const std::string message = w.error(yaml);
  const std::string expected = w.config().string() + rest;
  EXPECT_EQ(message.substr(0, expected.size()), expected) << "full message: " << message;
}

}  // namespace

TEST(TrainConfig, MinimalFileGetsTheDocumentedDefaults) {
  Workspace w;
  const TrainConfig c = w.parse(kMinimal);
  EXPECT_EQ(c.model, "dbrx-tiny");
  EXPECT_FALSE(c.model_config_path.has_value());
  ASSERT_EQ(c.train_data.size(), 1u);
  EXPECT_EQ(c.train_data[0], (w.dir.path() / "data").lexically_normal());
  EXPECT_TRUE(c.train_data[0].is_absolute());
  EXPECT_TRUE(c.eval_data.empty());
  EXPECT_EQ(c.save_folder, (w.dir.path() / "runs" / "ckpt").lexically_normal());
  EXPECT_FALSE(c.run_name || c.model_registry_path || c.mlflow);
  EXPECT_EQ(c.compute.gpus, 0);
  EXPECT_EQ(c.compute.threads, 0);
  EXPECT_EQ(c.yaml_text, kMinimal);
  EXPECT_EQ(c.origin, w.config());

  const TrainingOptions& t = c.training;
  EXPECT_EQ(t.max_duration, (Duration{1, Duration::Unit::Epochs}));
  EXPECT_EQ(t.global_batch_size, 8);
  EXPECT_EQ(t.micro_batch_size, 8);
  EXPECT_EQ(t.accumulation_steps(), 1);
  EXPECT_EQ(t.seq_len, 512);  // min(dbrx-tiny's 2048, 512)
  EXPECT_DOUBLE_EQ(t.lr, 6e-4);
  EXPECT_EQ(t.schedule, LrSchedule::Cosine);
  EXPECT_FALSE(t.warmup.duration.has_value());
  EXPECT_DOUBLE_EQ(t.warmup.fraction, 0.05);
  EXPECT_DOUBLE_EQ(t.min_lr_ratio, 0.1);
  EXPECT_DOUBLE_EQ(t.weight_decay, 0.1);
  EXPECT_DOUBLE_EQ(t.beta1, 0.9);
  EXPECT_DOUBLE_EQ(t.beta2, 0.95);
  EXPECT_DOUBLE_EQ(t.eps, 1e-8);
  EXPECT_DOUBLE_EQ(t.grad_clip, 1.0);
  EXPECT_EQ(t.seed, 17u);
  EXPECT_EQ(t.eval_interval.str(), "100ba");
  EXPECT_EQ(t.eval_batches, 8);
  EXPECT_DOUBLE_EQ(t.eval_fraction, 0.05);
  EXPECT_EQ(t.save_interval.str(), "100ba");
  EXPECT_EQ(t.keep_last, 2);
  EXPECT_EQ(t.log_interval, 1);
  EXPECT_FALSE(t.moe_loss_weight || t.moe_jitter_eps);
  EXPECT_EQ(model_short_name(c), "dbrx-tiny");

  const DbrxConfig preset = resolve_model_config(c);
  EXPECT_EQ(preset.d_model, 32);
  EXPECT_EQ(preset.max_seq_len, 2048);
}

TEST(TrainConfig, EveryKeyIsRead) {
  Workspace w;
  fs::create_directories(w.dir / "eval");
  write_file(w.dir / "eval" / "e.txt", "held out\n");
  const TrainConfig c = w.parse(R"(model: dbrx-tiny
train_data: [./data/corpus.txt, data/more]
eval_data: ./eval
save_folder: ./runs/ckpt
run_name: my-run
model_registry_path: main.default.tiny
experiment_tracker:
  mlflow:
    experiment_path: /Users/me/my_experiment
    model_registry_path: catalog.schema.model_name
    tracking_uri: http://127.0.0.1:5000
compute:
  gpus: 0
  threads: 3
training:
  max_duration: 2000ba
  global_batch_size: 8
  micro_batch_size: 4
  seq_len: 128
  lr: 3.0e-4
  schedule: linear
  warmup: 100ba
  min_lr_ratio: 0.2
  weight_decay: 0.05
  betas: [0.8, 0.99]
  eps: 1.0e-6
  grad_clip: 0
  seed: 42
  eval_interval: 50ba
  eval_batches: 0
  eval_fraction: 0.1
  save_interval: 1000tok
  keep_last: 0
  log_interval: 10
  moe_loss_weight: 0.02
  moe_jitter_eps: 0.01
)");
  ASSERT_EQ(c.train_data.size(), 2u);
  EXPECT_EQ(c.train_data[0], (w.dir.path() / "data" / "corpus.txt").lexically_normal());
  EXPECT_EQ(c.train_data[1], (w.dir.path() / "data" / "more").lexically_normal());
  ASSERT_EQ(c.eval_data.size(), 1u);
  EXPECT_EQ(c.eval_data[0], (w.dir.path() / "eval").lexically_normal());
  EXPECT_EQ(c.run_name, "my-run");
  EXPECT_EQ(c.model_registry_path, "main.default.tiny");
  ASSERT_TRUE(c.mlflow);
  EXPECT_EQ(c.mlflow->experiment_path, "/Users/me/my_experiment");
  EXPECT_EQ(c.mlflow->model_registry_path, "catalog.schema.model_name");
  EXPECT_EQ(c.mlflow->tracking_uri, "http://127.0.0.1:5000");
  EXPECT_EQ(c.compute.threads, 3);
  const TrainingOptions& t = c.training;
  EXPECT_EQ(t.max_duration, (Duration{2000, Duration::Unit::Batches}));
  EXPECT_EQ(t.micro_batch_size, 4);
  EXPECT_EQ(t.accumulation_steps(), 2);
  EXPECT_EQ(t.seq_len, 128);
  EXPECT_EQ(t.tokens_per_step(), 8 * 128);
  EXPECT_DOUBLE_EQ(t.lr, 3e-4);
  EXPECT_EQ(t.schedule, LrSchedule::Linear);
  ASSERT_TRUE(t.warmup.duration);
  EXPECT_EQ(*t.warmup.duration, (Duration{100, Duration::Unit::Batches}));
  EXPECT_DOUBLE_EQ(t.min_lr_ratio, 0.2);
  EXPECT_DOUBLE_EQ(t.weight_decay, 0.05);
  EXPECT_DOUBLE_EQ(t.beta1, 0.8);
  EXPECT_DOUBLE_EQ(t.beta2, 0.99);
  EXPECT_DOUBLE_EQ(t.eps, 1e-6);
  EXPECT_DOUBLE_EQ(t.grad_clip, 0);
  EXPECT_EQ(t.seed, 42u);
  EXPECT_EQ(t.eval_interval, (Duration{50, Duration::Unit::Batches}));
  EXPECT_EQ(t.eval_batches, 0);
  EXPECT_DOUBLE_EQ(t.eval_fraction, 0.1);
  EXPECT_EQ(t.save_interval, (Duration{1000, Duration::Unit::Tokens}));
  EXPECT_EQ(t.keep_last, 0);
  EXPECT_EQ(t.log_interval, 10);

  const DbrxConfig model = resolve_model_config(c);
  EXPECT_DOUBLE_EQ(model.moe_loss_weight, 0.02);
  ASSERT_TRUE(model.moe_jitter_eps);
  EXPECT_DOUBLE_EQ(*model.moe_jitter_eps, 0.01);
}

TEST(TrainConfig, NullOptionalKeysCountAsAbsent) {
  Workspace w;
  const TrainConfig c = w.parse(kMinimal + "eval_data:\nrun_name: ~\ntraining:\n");
  EXPECT_TRUE(c.eval_data.empty());
  EXPECT_FALSE(c.run_name);
  EXPECT_EQ(c.training.seq_len, 512);
}

TEST(TrainConfig, DurationsParseAndConvertToSteps) {
  EXPECT_EQ(Duration::parse("2000ba"), (Duration{2000, Duration::Unit::Batches}));
  EXPECT_EQ(Duration::parse("2000"), (Duration{2000, Duration::Unit::Batches}));
  EXPECT_EQ(Duration::parse("1_000_000tok"), (Duration{1000000, Duration::Unit::Tokens}));
  EXPECT_EQ(Duration::parse("3ep"), (Duration{3, Duration::Unit::Epochs}));
  for (const char* bad : {"", "ba", "-5ba", "5 ba", "5steps", "1.5ep", "_5ba", "99999999999999999999ba"})
    EXPECT_NE(error_of([&] { Duration::parse(bad); }), "") << bad;
  EXPECT_NE(error_of([&] { Duration::parse("5steps"); }).find("'5steps'"), std::string::npos);

  EXPECT_EQ((Duration{7, Duration::Unit::Batches}).to_steps(1024, 10), 7);
  EXPECT_EQ((Duration{1024, Duration::Unit::Tokens}).to_steps(1024, 10), 1);
  EXPECT_EQ((Duration{1025, Duration::Unit::Tokens}).to_steps(1024, 10), 2);  // rounds up
  EXPECT_EQ((Duration{3, Duration::Unit::Epochs}).to_steps(1024, 10), 30);
  EXPECT_EQ((Duration{3, Duration::Unit::Epochs}).str(), "3ep");

  TrainingOptions t;
  t.global_batch_size = 4;
  t.seq_len = 16;  // 64 tokens a step
  t.max_duration = {2, Duration::Unit::Epochs};
  t.warmup.fraction = 0.1;
  t.eval_interval = {640, Duration::Unit::Tokens};
  t.save_interval = {0, Duration::Unit::Batches};
  const StepPlan plan = plan_steps(t, 103);  // 103 windows: 25 steps an epoch
  EXPECT_EQ(plan.steps_per_epoch, 25);
  EXPECT_EQ(plan.total_steps, 50);
  EXPECT_EQ(plan.warmup_steps, 5);
  EXPECT_EQ(plan.eval_interval, 10);
  EXPECT_EQ(plan.save_interval, 0);
  t.warmup.duration = Duration{1000, Duration::Unit::Batches};
  EXPECT_EQ(plan_steps(t, 103).warmup_steps, 50);  // never longer than the run
  EXPECT_EQ(plan_steps(t, 2).steps_per_epoch, 1);  // fewer windows than a batch: still one step
}

TEST(TrainConfig, WarmupTakesStepsTokensOrAFraction) {
  Workspace w;
  auto warmup = [&](const std::string& value) { return w.parse(kMinimal + "training:\n  warmup: " + value + "\n").training.warmup; };
  EXPECT_EQ(warmup("100ba").duration, (Duration{100, Duration::Unit::Batches}));
  EXPECT_EQ(warmup("100").duration, (Duration{100, Duration::Unit::Batches}));
  EXPECT_EQ(warmup("5000tok").duration, (Duration{5000, Duration::Unit::Tokens}));
  const Warmup fraction = warmup("0.25");
  EXPECT_FALSE(fraction.duration);
  EXPECT_DOUBLE_EQ(fraction.fraction, 0.25);
  EXPECT_EQ(fraction.to_steps(200, 64, 10), 50);
  EXPECT_EQ(warmup("100tok").to_steps(200, 64, 10), 2);
}

TEST(TrainConfig, RelativePathsResolveAgainstTheConfigFolderNotTheWorkingDirectory) {
  Workspace w;
  write_file(w.config(), kMinimal);
  const fs::path old = fs::current_path();
  fs::current_path(fs::temp_directory_path());
  TrainConfig c;
  const std::string message = error_of([&] { c = load_train_config(w.config()); });
  fs::current_path(old);
  ASSERT_EQ(message, "");
  EXPECT_EQ(c.train_data.at(0), (w.dir.path() / "data").lexically_normal());
  EXPECT_EQ(c.yaml_text, kMinimal);
}

TEST(TrainConfig, HomeIsExpanded) {
  Workspace w;
  const char* old = std::getenv("HOME");
  const std::string saved = old ? old : "";
  setenv("HOME", w.dir.path().c_str(), 1);
  const TrainConfig c = w.parse("model: dbrx-tiny\ntrain_data: ~/data/corpus.txt\nsave_folder: ~/out\n");
  if (old) setenv("HOME", saved.c_str(), 1);
  else unsetenv("HOME");
  EXPECT_EQ(c.train_data.at(0), (w.dir.path() / "data" / "corpus.txt").lexically_normal());
  EXPECT_EQ(c.save_folder, (w.dir.path() / "out").lexically_normal());
}

TEST(TrainConfig, ModelFromAConfigJsonPathWithOverrides) {
  Workspace w;
  const fs::path fixture = tessera::testing::fixtures() / "dbrx" / "e4_top2_d64_clip_f32" / "config.json";
  fs::create_directories(w.dir / "My_Model v2");
  fs::copy_file(fixture, w.dir / "My_Model v2" / "config.json");
  fs::copy_file(fixture, w.dir / "small.json");

  const std::string rest = "train_data: data\nsave_folder: out\ntraining:\n  moe_loss_weight: 0.05\n  moe_jitter_eps: 0.02\n";
  const TrainConfig folder = w.parse("model: ./My_Model v2\n" + rest);
  ASSERT_TRUE(folder.model_config_path);
  EXPECT_EQ(*folder.model_config_path, (w.dir.path() / "My_Model v2" / "config.json").lexically_normal());
  EXPECT_EQ(model_short_name(folder), "my-model-v2");
  EXPECT_EQ(folder.training.seq_len, 128);  // the fixture's max_seq_len is below 512
  const DbrxConfig model = resolve_model_config(folder);
  EXPECT_EQ(model.d_model, 64);
  EXPECT_EQ(model.moe_num_experts, 4);
  EXPECT_DOUBLE_EQ(model.moe_loss_weight, 0.05);
  ASSERT_TRUE(model.moe_jitter_eps);
  EXPECT_DOUBLE_EQ(*model.moe_jitter_eps, 0.02);

  const TrainConfig file = w.parse("model: My_Model v2/config.json\n" + rest);
  EXPECT_EQ(model_short_name(file), "my-model-v2");
  EXPECT_EQ(model_short_name(w.parse("model: small.json\n" + rest)), "small");

  // moe_jitter_eps 0 turns jitter off.
  const TrainConfig off = w.parse("model: small.json\ntrain_data: data\nsave_folder: out\ntraining:\n  moe_jitter_eps: 0\n");
  EXPECT_FALSE(resolve_model_config(off).moe_jitter_eps);

  // seq_len above the model's max_seq_len, named with its line.
  expect_error(w, "model: small.json\ntrain_data: data\nsave_folder: out\ntraining:\n  seq_len: 256\n",
               ":5: training.seq_len: 256 is more than the model's max_seq_len 128");
}

TEST(TrainConfig, TrackingUriFallsBackToTheEnvironment) {
  MlflowOptions m;
  m.experiment_path = "/x";
  const char* old = std::getenv("MLFLOW_TRACKING_URI");
  const std::string saved = old ? old : "";
  setenv("MLFLOW_TRACKING_URI", "http://10.0.0.1:5000", 1);
  EXPECT_EQ(m.effective_tracking_uri(), "http://10.0.0.1:5000");
  m.tracking_uri = "http://127.0.0.1:1234";
  EXPECT_EQ(m.effective_tracking_uri(), "http://127.0.0.1:1234");
  m.tracking_uri.reset();
  unsetenv("MLFLOW_TRACKING_URI");
  EXPECT_FALSE(m.effective_tracking_uri());
  if (old) setenv("MLFLOW_TRACKING_URI", saved.c_str(), 1);
}

TEST(TrainConfig, ErrorsNameTheFileLineAndKey) {
  Workspace w;
  // The examples of the documentation, word for word.
  expect_error(w, kMinimal + "training:\n  global_batch_size: 8\n  lr: fast\n",
               ":6: training.lr: expected a number, got 'fast'");
  expect_error(w, "model: dbrx-tiny\nsave_folder: out\ntrian_data: ./data\n",
               ":3: unknown key 'trian_data' (did you mean 'train_data'?)");
  expect_error(w, "model: dbrx-tiny\nsave_folder: out\n", ": missing required key 'train_data'");
  expect_error(w, "model: dbrx-tiny\ntrain_data: ./data/x\nsave_folder: out\n",
               ":2: train_data: ./data/x: no such file or folder");
  expect_error(w, kMinimal + "compute:\n  threads: 2\n  gpus: 2\n",
               ":6: compute.gpus: 2 GPUs requested but this build has no GPU support");

  // Nested unknown keys, with and without a close match.
  expect_error(w, kMinimal + "training:\n  lrr: 0.1\n", ":5: unknown key 'training.lrr' (did you mean 'lr'?)");
  expect_error(w, kMinimal + "training:\n  colour: blue\n", ":5: unknown key 'training.colour' (known here:");
  expect_error(w, kMinimal + "experiment_tracker:\n  wandb: {}\n", ":5: unknown key 'experiment_tracker.wandb'");
  // A list item that does not exist is named by its own line.
  expect_error(w, "model: dbrx-tiny\ntrain_data:\n  - data/corpus.txt\n  - data/nope.txt\nsave_folder: out\n",
               ":4: train_data: data/nope.txt: no such file or folder");
  write_file(w.dir / "data.csv", "a,b\n");
  expect_error(w, "model: dbrx-tiny\ntrain_data: data.csv\nsave_folder: out\n",
               ":2: train_data: data.csv: not a .txt or .jsonl file");
  expect_error(w, "model: dbrx-tiny\ntrain_data: data\neval_data: [nothing]\nsave_folder: out\n",
               ":3: eval_data: nothing: no such file or folder");
  expect_error(w, "model: dbrx-tiny\ntrain_data: []\nsave_folder: out\n", ":2: train_data: expected a file or folder");
  expect_error(w, "model: dbrx-tiny\ntrain_data: {a: 1}\nsave_folder: out\n",
               ":2: train_data: expected a file or folder, got a mapping");
  expect_error(w, "model: dbrx-tiny\ntrain_data: data\nsave_folder: data/corpus.txt\n",
               ":3: save_folder: data/corpus.txt exists and is not a folder");
  expect_error(w, "model: dbrx-tiny\ntrain_data:\nsave_folder: out\n", ":2: train_data: no value given");
  expect_error(w, "model: dbrx-tinyy\ntrain_data: data\nsave_folder: out\n",
               ":1: model: 'dbrx-tinyy' is not a preset (did you mean 'dbrx-tiny'?)");
  expect_error(w, "model: gpt-5\ntrain_data: data\nsave_folder: out\n", ":1: model: 'gpt-5' is neither a preset (dbrx-132b");
  write_file(w.dir / "broken.json", "{not json");
  expect_error(w, "model: broken.json\ntrain_data: data\nsave_folder: out\n", ":1: model: ");
  EXPECT_NE(w.error("model: broken.json\ntrain_data: data\nsave_folder: out\n").find("not valid JSON"), std::string::npos);
  expect_error(w, kMinimal + "model: dbrx-mini\n", ":4: model: given twice (also on line 1)");

  // Numbers: wrong types, out of range, negative.
  expect_error(w, kMinimal + "training:\n  lr: 0\n", ":5: training.lr: must be greater than 0, got 0");
  expect_error(w, kMinimal + "training:\n  lr: -1e-3\n", ":5: training.lr: must be greater than 0");
  expect_error(w, kMinimal + "training:\n  lr: [1]\n", ":5: training.lr: expected a number, got a list");
  expect_error(w, kMinimal + "training:\n  global_batch_size: -8\n", ":5: training.global_batch_size: must be between 1 and");
  expect_error(w, kMinimal + "training:\n  global_batch_size: 8.5\n",
               ":5: training.global_batch_size: expected a whole number, got '8.5'");
  expect_error(w, kMinimal + "training:\n  global_batch_size: 8\n  micro_batch_size: 3\n",
               ":6: training.micro_batch_size: 3 does not divide global_batch_size 8");
  expect_error(w, kMinimal + "training:\n  seq_len: 4096\n",
               ":5: training.seq_len: 4096 is more than the model's max_seq_len 2048");
  expect_error(w, kMinimal + "training:\n  seq_len: 0\n", ":5: training.seq_len: must be at least 1, got 0");
  expect_error(w, kMinimal + "training:\n  weight_decay: -0.1\n", ":5: training.weight_decay: must be at least 0");
  expect_error(w, kMinimal + "training:\n  eps: 0\n", ":5: training.eps: must be greater than 0");
  expect_error(w, kMinimal + "training:\n  grad_clip: -1\n", ":5: training.grad_clip: must be at least 0");
  expect_error(w, kMinimal + "training:\n  min_lr_ratio: 1.5\n", ":5: training.min_lr_ratio: must be in [0, 1], got 1.5");
  expect_error(w, kMinimal + "training:\n  betas: [0.9]\n", ":5: training.betas: expected a list of two numbers");
  expect_error(w, kMinimal + "training:\n  betas: [0.9, 1.0]\n", ":5: training.betas[1]: must be in [0, 1), got 1");
  expect_error(w, kMinimal + "training:\n  seed: -1\n", ":5: training.seed: must be at least 0, got -1");
  expect_error(w, kMinimal + "training:\n  eval_fraction: 1\n", ":5: training.eval_fraction: must be in [0, 1), got 1");
  expect_error(w, kMinimal + "training:\n  keep_last: -2\n", ":5: training.keep_last: must be between 0 and");
  expect_error(w, kMinimal + "training:\n  log_interval: 0\n", ":5: training.log_interval: must be at least 1, got 0");
  expect_error(w, kMinimal + "training:\n  eval_batches: -1\n", ":5: training.eval_batches: must be at least 0");
  expect_error(w, kMinimal + "training:\n  moe_jitter_eps: 2\n", ":5: training.moe_jitter_eps: must be in [0, 1]");
  expect_error(w, kMinimal + "training:\n  moe_loss_weight: -0.01\n", ":5: training.moe_loss_weight: must be at least 0");
  expect_error(w, kMinimal + "compute:\n  threads: -1\n", ":5: compute.threads: must be between 0 and 4096, got -1");
  expect_error(w, kMinimal + "compute:\n  gpus: lots\n", ":5: compute.gpus: expected a whole number, got 'lots'");

  // Durations and the schedule.
  expect_error(w, kMinimal + "training:\n  max_duration: 2000 steps\n",
               ":5: training.max_duration: expected a duration such as 2000ba, 1000000tok, 2ep or a number of steps, got "
               "'2000 steps'");
  expect_error(w, kMinimal + "training:\n  max_duration: 0ba\n", ":5: training.max_duration: must be positive, got 0ba");
  expect_error(w, kMinimal + "training:\n  max_duration: 100ba\n  warmup: 200ba\n",
               ":6: training.warmup: 200ba is longer than max_duration 100ba");
  expect_error(w, kMinimal + "training:\n  warmup: 1.5\n", ":5: training.warmup: must be in [0, 1], got 1.5");
  expect_error(w, kMinimal + "training:\n  warmup: 1ep\n", ":5: training.warmup: expected <n>ba, <n>tok or a fraction");
  expect_error(w, kMinimal + "training:\n  eval_interval: often\n", ":5: training.eval_interval: expected a duration");
  expect_error(w, kMinimal + "training:\n  schedule: exponential\n",
               ":5: training.schedule: expected cosine, linear or constant, got 'exponential'");

  // Trackers and registry names.
  expect_error(w, kMinimal + "experiment_tracker:\n  mlflow:\n    tracking_uri: http://x\n",
               ":5: experiment_tracker.mlflow: missing required key 'experiment_path'");
  expect_error(w, kMinimal + "compute: [1, 2]\n", ":4: compute: expected a mapping with keys such as gpus, threads, got a list");
  expect_error(w, kMinimal + "experiment_tracker:\n  mlflow:\n    experiment_path: /e\n    tracking_uri: localhost:5000\n",
               ":7: experiment_tracker.mlflow.tracking_uri: expected an http:// or https:// URL, got 'localhost:5000'");
  expect_error(w, kMinimal + "model_registry_path: just_a_name\n",
               ":4: model_registry_path: expected a three-part name like catalog.schema.model_name, got 'just_a_name'");
  expect_error(w, kMinimal + "experiment_tracker:\n  mlflow:\n    experiment_path: /e\n    model_registry_path: a..b\n",
               ":7: experiment_tracker.mlflow.model_registry_path: expected a three-part name");
  expect_error(w, kMinimal + "training: fast\n", ":4: training: expected a mapping with keys such as max_duration");
}

TEST(TrainConfig, FilesThatAreNotAConfigAtAll) {
  Workspace w;
  expect_error(w, "model: [unclosed\ntrain_data: x\n", ":2: not valid YAML: end of sequence flow not found");
  expect_error(w, "a: b\n  c: d\n", ":2: not valid YAML: ");
  expect_error(w, "- model\n- train_data\n", ":1: expected a mapping with model, train_data and save_folder, got a list");
  expect_error(w, "just words\n", ":1: expected a mapping with model, train_data and save_folder, got 'just words'");
  expect_error(w, "", ": the file is empty");
  expect_error(w, "# only a comment\n", ": the file is empty");

  const std::string missing = error_of([&] { load_train_config(w.dir / "nope.yaml"); });
  EXPECT_EQ(missing, (w.dir / "nope.yaml").string() + ": cannot read the file (does it exist?)");
  const std::string folder = error_of([&] { load_train_config(w.dir.path()); });
  EXPECT_EQ(folder, w.dir.path().string() + ": is a folder, not a config file");

  // Every error above is a single line.
  for (const std::string& yaml : {std::string("model: [unclosed\n"), std::string("a: b\n  c: d\n")}) {
    const std::string message = w.error(yaml);
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
  }
}

TEST(TrainConfig, ShortNamesAreSafeForRunIds) {
  Workspace w;
  for (const auto& [folder, expected] : std::vector<std::pair<std::string, std::string>>{
           {"Llama_3 Tiny", "llama-3-tiny"}, {"--x--", "x"}, {"___", "model"}, {"DBRX.9B", "dbrx-9b"}}) {
    fs::create_directories(w.dir / folder);
    fs::copy_file(tessera::testing::fixtures() / "dbrx" / "e4_top2_d64_clip_f32" / "config.json", w.dir / folder / "config.json",
                  fs::copy_options::overwrite_existing);
    const TrainConfig c = w.parse("model: \"" + folder + "\"\ntrain_data: data\nsave_folder: out\n");
    EXPECT_EQ(model_short_name(c), expected) << folder;
  }
}
