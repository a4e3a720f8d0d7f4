// The training loop: the loss falls on learnable data, a run stopped and resumed from its
// checkpoint continues with exactly the losses of an uninterrupted run, and the schedule,
// optimizer and checkpoints behave as documented.
#include <gtest/gtest.h>

#include <cmath>

#include "test_util.h"
#include "training/checkpoint.h"
#include "training/dbrx_training_model.h"
#include "training/optimizer.h"
#include "training/trainer.h"

namespace tessera {
namespace {

namespace fs = std::filesystem;
using namespace training;

// A tiny model and a repeating token pattern it can learn: every sequence is a window of the
// cycle 0..period-1, so each next token is determined by the current one.
DbrxConfig tiny_config() {
  DbrxConfig c;
  c.d_model = 32;
  c.n_heads = 4;
  c.kv_n_heads = 2;
  c.n_layers = 2;
  c.max_seq_len = 64;
  c.vocab_size = 40;
  c.ffn_hidden_size = 32;
  c.moe_num_experts = 4;
  c.moe_top_k = 2;
  c.clip_qkv = 4.0f;
  c.moe_jitter_eps = 0.01;  // exercised: resumption must redraw the same jitter
  return c;
}

class CycleData final : public BatchSource {
 public:
  CycleData(int64_t seq, int64_t period) : seq_(seq), period_(period) {}
  int64_t seq_len() const override { return seq_; }
  void next_train(int64_t rows, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) override {
    fill(rows, position_, inputs, targets);
    position_ += rows;
  }
  nlohmann::json state() const override { return {{"position", position_}}; }
  void restore(const nlohmann::json& state) override { position_ = state.at("position").get<int64_t>(); }
  int64_t eval_seq_len() const override { return seq_; }
  int64_t eval_batches(int64_t rows) const override { return 2; }
  void eval_batch(int64_t index, int64_t rows, std::vector<int32_t>& inputs,
                  std::vector<int32_t>& targets) const override {
    fill(rows, 1000 + index * rows, inputs, targets);
  }

 private:
  void fill(int64_t rows, int64_t first, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) const {
    inputs.resize(static_cast<size_t>(rows * seq_));
    targets.resize(inputs.size());
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t t = 0; t < seq_; ++t) {
        const int64_t start = (first + r) * 7;
        inputs[r * seq_ + t] = static_cast<int32_t>((start + t) % period_);
        targets[r * seq_ + t] = static_cast<int32_t>((start + t + 1) % period_);
      }
  }
  int64_t seq_, period_, position_ = 0;
};

struct Recorder final : TrainingObserver {
  std::vector<double> losses;
  std::vector<EvalReport> evals;
  std::vector<int64_t> checkpoints;
  bool stopped = false;
  std::atomic<bool>* stop = nullptr;
  int64_t stop_after = -1;
  void on_step(const StepReport& r) override {
    losses.push_back(r.loss);
    if (stop && r.step == stop_after) stop->store(true);
  }
  void on_eval(const EvalReport& e) override { evals.push_back(e); }
  void on_checkpoint(int64_t step, const fs::path&) override { checkpoints.push_back(step); }
  void on_finish(int64_t, const fs::path&, bool s) override { stopped = s; }
};

TrainerSettings settings(const fs::path& folder, int64_t steps) {
  TrainerSettings s;
  s.run_id = "test-run";
  s.model = tiny_config();
  s.save_folder = folder;
  s.total_steps = steps;
  s.global_batch = 4;
  s.micro_batch = 2;  // two micro-batches per step: accumulation is part of what must resume
  s.lr = 3e-3;
  s.warmup_steps = 5;
  s.eval_interval = 10;
  s.save_interval = 7;
  s.keep_last = 2;
  s.seed = 5;
  return s;
}

TEST(Trainer, LossFallsOnLearnableData) {
  testing::TempDir tmp;
  CycleData data(16, 37);
  Recorder rec;
  Trainer trainer(settings(tmp.path() / "ckpt", 60), data);
  trainer.run(false, {&rec});
  ASSERT_EQ(rec.losses.size(), 60u);
  ASSERT_GE(rec.evals.size(), 2u);
  EXPECT_EQ(rec.evals.front().step, 0);
  EXPECT_NEAR(rec.evals.front().loss, std::log(40.0), 0.5) << "an untrained model should be near uniform";
  EXPECT_LT(rec.evals.back().loss, 0.5 * rec.evals.front().loss)
      << "eval loss went from " << rec.evals.front().loss << " to " << rec.evals.back().loss;
  // Checkpoints at 7, 14, ... and the end; only the last two are kept.
  EXPECT_EQ(rec.checkpoints.back(), 60);
  auto latest = latest_checkpoint(tmp.path() / "ckpt");
  ASSERT_TRUE(latest);
  EXPECT_EQ(latest->filename(), "step-000060");
  int kept = 0;
  for (const auto& e : fs::directory_iterator(tmp.path() / "ckpt")) kept += e.is_directory() ? 1 : 0;
  EXPECT_EQ(kept, 2);
  // The checkpoint is a model folder that loads on its own.
  auto model = DbrxTrainingModel::load(*latest);
  EXPECT_EQ(model.config().d_model, 32);
}

TEST(Trainer, CheckpointsCarryTheRunsOwnTokenizer) {
  testing::TempDir tmp;
  const fs::path tok = tmp.path() / "tok";
  fs::create_directories(tok);
  testing::write_file(tok / "tokenizer.json", "{\"model\": \"own\"}");
  testing::write_file(tok / "tokenizer_config.json", "{\"eos_token\": \"<|endoftext|>\"}");
  testing::write_file(tok / "notes.txt", "not a tokenizer file");
  DbrxTrainingModel model(tiny_config(), 1, 0.02f);
  model.set_tokenizer_source(tok);
  model.save(tmp.path() / "own");
  EXPECT_EQ(testing::read_file(tmp.path() / "own" / "tokenizer.json"), "{\"model\": \"own\"}");
  EXPECT_TRUE(fs::exists(tmp.path() / "own" / "tokenizer_config.json"));
  EXPECT_FALSE(fs::exists(tmp.path() / "own" / "notes.txt"));
  EXPECT_FALSE(fs::exists(tmp.path() / "own" / "cl100k_base.tiktoken"));
  // Without a source (or one without tokenizer files) the folder gets DBRX's cl100k files.
  model.set_tokenizer_source(tmp.path() / "own" / "missing");
  model.save(tmp.path() / "dbrx");
  EXPECT_FALSE(fs::exists(tmp.path() / "dbrx" / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(tmp.path() / "dbrx" / "tokenizer_config.json"));
}

TEST(Trainer, StoppedAndResumedRunRepeatsTheUninterruptedLosses) {
  testing::TempDir tmp;
  const int64_t steps = 25;
  CycleData straight_data(16, 37);
  Recorder straight;
  Trainer(settings(tmp.path() / "a", steps), straight_data).run(false, {&straight});

  // Second run: stopped after step 10 (the trainer checkpoints step 10 on its way out) ...
  std::atomic<bool> stop{false};
  CycleData first_data(16, 37);
  Recorder first;
  first.stop = &stop;
  first.stop_after = 10;
  Trainer(settings(tmp.path() / "b", steps), first_data).run(false, {&first}, &stop);
  EXPECT_TRUE(first.stopped);
  ASSERT_EQ(first.losses.size(), 10u);

  // ... and resumed by a new trainer with fresh data objects, as a new process would.
  CycleData second_data(16, 37);
  Recorder second;
  Trainer(settings(tmp.path() / "b", steps), second_data).run(true, {&second});
  ASSERT_EQ(second.losses.size(), static_cast<size_t>(steps - 10));
  for (size_t i = 0; i < first.losses.size(); ++i) EXPECT_EQ(first.losses[i], straight.losses[i]) << "step " << i + 1;
  for (size_t i = 0; i < second.losses.size(); ++i)
    EXPECT_EQ(second.losses[i], straight.losses[10 + i]) << "step " << 11 + i;

  // A run resumed from an older checkpoint (as after a kill between two saves) also continues
  // exactly: without the final one, the newest left is step 21.
  fs::remove_all(tmp.path() / "b" / "step-000025");
  ASSERT_EQ(latest_checkpoint(tmp.path() / "b")->filename(), "step-000021");
  CycleData third_data(16, 37);
  Recorder third;
  Trainer(settings(tmp.path() / "b", steps), third_data).run(true, {&third});
  ASSERT_EQ(third.losses.size(), static_cast<size_t>(steps - 21));
  for (size_t i = 0; i < third.losses.size(); ++i)
    EXPECT_EQ(third.losses[i], straight.losses[21 + i]) << "step " << 22 + i;
}

TEST(Trainer, CheckpointOfAnotherRunIsRefused) {
  testing::TempDir tmp;
  CycleData data(16, 37);
  Trainer(settings(tmp.path() / "c", 7), data).run(false, {});
  auto other = settings(tmp.path() / "c", 14);
  other.run_id = "another-run";
  CycleData data2(16, 37);
  try {
    Trainer(other, data2).run(true, {});
    FAIL() << "resumed from another run's checkpoint";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("belongs to run 'test-run'"), std::string::npos) << e.what();
  }
}

TEST(Optimizer, LearningRateScheduleWarmsUpThenDecays) {
  EXPECT_DOUBLE_EQ(learning_rate(1, 100, 10, 1.0, 0.1, LrSchedule::Cosine), 0.1);
  EXPECT_DOUBLE_EQ(learning_rate(10, 100, 10, 1.0, 0.1, LrSchedule::Cosine), 1.0);
  EXPECT_NEAR(learning_rate(55, 100, 10, 1.0, 0.1, LrSchedule::Cosine), 0.55, 1e-12);
  EXPECT_NEAR(learning_rate(100, 100, 10, 1.0, 0.1, LrSchedule::Cosine), 0.1, 1e-12);
  EXPECT_NEAR(learning_rate(55, 100, 10, 1.0, 0.0, LrSchedule::Linear), 0.5, 1e-12);
  EXPECT_DOUBLE_EQ(learning_rate(90, 100, 10, 2.0, 0.1, LrSchedule::Constant), 2.0);
}

TEST(Optimizer, AdamWMatchesTheTorchUpdateAndClips) {
  // One parameter of 2 values, decay on; torch.optim.AdamW(lr=0.1, betas=(0.9, 0.95),
  // eps=1e-8, weight_decay=0.1) after two steps with gradients (0.5, -2) then (0.25, 1):
  // values computed by hand from the update rule.
  std::vector<Parameter> params = {{"w", {2}, 0, 2, true}};
  std::vector<float> w = {1.0f, -1.0f}, g1 = {0.5f, -2.0f}, g2 = {0.25f, 1.0f};
  AdamW opt(2, {0.9, 0.95, 1e-8, 0.1});
  opt.step(w, g1, params, 0.1);
  // step 1: m = 0.1 g, v = 0.05 g^2, mhat = g, vhat = g^2 -> x = x (1 - 0.01) - 0.1 sign(g)
  EXPECT_NEAR(w[0], 0.99 - 0.1, 1e-6);
  EXPECT_NEAR(w[1], -0.99 + 0.1, 1e-6);
  opt.step(w, g2, params, 0.1);
  auto expect = [](double x, double ga, double gb) {
    const double m = 0.9 * 0.1 * ga + 0.1 * gb, v = 0.95 * 0.05 * ga * ga + 0.05 * gb * gb;
    const double mhat = m / (1 - 0.81), vhat = v / (1 - 0.9025);
    return x * (1 - 0.01) - 0.1 * mhat / (std::sqrt(vhat) + 1e-8);
  };
  EXPECT_NEAR(w[0], expect(0.89, 0.5, 0.25), 1e-6);
  EXPECT_NEAR(w[1], expect(-0.89, -2.0, 1.0), 1e-6);

  std::vector<float> grads = {3.0f, 4.0f};
  EXPECT_NEAR(clip_grad_norm(grads, 1.0), 5.0, 1e-9);
  EXPECT_NEAR(grads[0], 0.6f, 1e-6);
  EXPECT_NEAR(grads[1], 0.8f, 1e-6);
  std::vector<float> small = {0.3f, 0.4f};
  clip_grad_norm(small, 1.0);
  EXPECT_EQ(small[0], 0.3f);
}

}  // namespace
}  // namespace tessera
