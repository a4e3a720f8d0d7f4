#include "training/trainer.h"

#include <chrono>
#include <cmath>

#include "core/error.h"
#include "core/rng.h"
#include "training/checkpoint.h"
#include "training/dbrx_training_model.h"

namespace tessera::training {

namespace {

using Clock = std::chrono::steady_clock;

// Router jitter of micro-batch `micro` in optimizer step `step`: a function of (seed, step,
// micro) only, so a resumed run draws exactly what an uninterrupted one would.
Rng jitter_rng(uint64_t seed, int64_t step, int64_t micro) {
  return Rng(seed * 0x9e3779b97f4a7c15ull ^ static_cast<uint64_t>(step) * 0xbf58476d1ce4e5b9ull ^
             static_cast<uint64_t>(micro) * 0x94d049bb133111ebull ^ 0x6a177e7ull);
}

// Full training: the model's own weights and gradients.
class AllWeights final : public TrainableWeights {
 public:
  void attach(DbrxTrainingModel& model) override { model_ = &model; }
  std::span<float> values() override { return model_->values(); }
  std::span<float> grads() override { return model_->grads(); }
  const std::vector<Parameter>& parameters() const override { return model_->parameters(); }
  void before_step(DbrxTrainingModel&) override {}
  void after_backward(DbrxTrainingModel&) override {}
  void save(const std::filesystem::path&) const override {}
  void load(const std::filesystem::path&) override {}
  bool resumes_from_base() const override { return false; }

 private:
  DbrxTrainingModel* model_ = nullptr;
};

}  // namespace

Trainer::Trainer(TrainerSettings settings, BatchSource& data) : s_(std::move(settings)), data_(data) {
  if (s_.total_steps <= 0) fail("training: nothing to do (max_duration gives {} steps)", s_.total_steps);
  if (s_.micro_batch <= 0 || s_.global_batch <= 0 || s_.global_batch % s_.micro_batch != 0)
    fail("training: global_batch_size {} is not a multiple of micro_batch_size {}", s_.global_batch, s_.micro_batch);
}

EvalReport Trainer::evaluate(DbrxTrainingModel& model, int64_t step) {
  EvalReport report;
  report.step = step;
  const int64_t available = data_.eval_batches(s_.micro_batch);
  const int64_t count = s_.eval_batches > 0 ? std::min(s_.eval_batches, available) : available;
  double ce_sum = 0;
  int64_t counted = 0;
  std::vector<int32_t> inputs, targets, starts;
  for (int64_t i = 0; i < count; ++i) {
    data_.eval_batch(i, s_.micro_batch, inputs, targets);
    data_.segment_starts(starts);
    const int64_t seq = data_.eval_seq_len();
    const int64_t rows = static_cast<int64_t>(inputs.size()) / seq;
    const StepLoss loss =
        model.evaluate({inputs.data(), targets.data(), rows, seq, starts.empty() ? nullptr : starts.data()});
    ce_sum += loss.ce_sum;
    counted += loss.counted;
  }
  report.tokens = counted;
  report.loss = counted ? ce_sum / static_cast<double>(counted) : std::nan("");
  report.perplexity = std::exp(report.loss);
  return report;
}

std::filesystem::path Trainer::run(bool resume, const std::vector<TrainingObserver*>& observers,
                                   const std::atomic<bool>* stop, TrainableWeights* trainable) {
  const int64_t seq = data_.seq_len();
  const int64_t micro_steps = s_.global_batch / s_.micro_batch;
  const int64_t tokens_per_step = s_.global_batch * seq;

  std::optional<std::filesystem::path> from = resume ? latest_checkpoint(s_.save_folder) : std::nullopt;
  AllWeights all_weights;
  TrainableWeights& trained = trainable ? *trainable : all_weights;
  int64_t step = 0, tokens = 0;
  std::unique_ptr<DbrxTrainingModel> model;
  StartReport start;
  nlohmann::json state;
  if (from) {
    state = read_trainer_state(*from);
    if (state.value("run_id", s_.run_id) != s_.run_id)
      fail("{}: this checkpoint belongs to run '{}', not '{}'", from->string(), state.value("run_id", ""), s_.run_id);
  }
  if (from && !trained.resumes_from_base())
    model = std::make_unique<DbrxTrainingModel>(DbrxTrainingModel::load(*from));
  else if (!s_.init_from.empty())
    model = std::make_unique<DbrxTrainingModel>(DbrxTrainingModel::load(s_.init_from));
  else
    model = std::make_unique<DbrxTrainingModel>(s_.model, s_.seed, s_.init_std);
  model->set_tokenizer_source(s_.tokenizer_from);
  trained.attach(*model);
  AdamW optimizer(trained.values().size(), s_.adam);
  if (from) {
    trained.load(*from);
    optimizer.load(*from / "optimizer.safetensors");
    step = state.at("step").get<int64_t>();
    tokens = state.at("tokens").get<int64_t>();
    data_.restore(state.at("data"));
    start.resumed_from = *from;
  }

  start.parameters = model->config().parameter_count();
  start.active_parameters = model->config().active_parameter_count();
  start.start_step = step;
  start.total_steps = s_.total_steps;
  start.tokens_per_step = tokens_per_step;
  for (auto* o : observers) o->on_start(start);
  // Where the loss starts, for curves and comparisons (a fresh run only).
  trained.before_step(*model);
  if (step == 0 && data_.eval_batches(s_.micro_batch) > 0) {
    const EvalReport eval = evaluate(*model, 0);
    for (auto* o : observers) o->on_eval(eval);
  }

  auto save = [&](int64_t at) {
    const nlohmann::json state = {{"run_id", s_.run_id}, {"step", at}, {"tokens", tokens}, {"data", data_.state()},
                                  {"seed", s_.seed}, {"total_steps", s_.total_steps}};
    trained.before_step(*model);  // the model holds the weights as trained so far
    auto dir = save_checkpoint(s_.save_folder, at, *model, optimizer, state, s_.keep_last,
                               [&](const std::filesystem::path& tmp) { trained.save(tmp); });
    for (auto* o : observers) o->on_checkpoint(at, dir);
    return dir;
  };

  std::filesystem::path last = from.value_or(std::filesystem::path());
  std::vector<std::vector<int32_t>> inputs(static_cast<size_t>(micro_steps)), targets(inputs.size()),
      starts(inputs.size());
  while (step < s_.total_steps) {
    if (stop && stop->load()) {
      last = save(step);
      for (auto* o : observers) o->on_finish(step, last, true);
      return last;
    }
    const auto t0 = Clock::now();
    ++step;
    // All micro-batches first, so the loss is the mean over every counted target of the step.
    int64_t counted = 0;
    for (int64_t m = 0; m < micro_steps; ++m) {
      data_.next_train(s_.micro_batch, inputs[m], targets[m]);
      data_.segment_starts(starts[m]);
      for (int32_t t : targets[m]) counted += t >= 0;
    }
    trained.before_step(*model);
    model->zero_grad();
    StepReport report;
    const float ce_scale = counted ? 1.0f / static_cast<float>(counted) : 0.0f;
    double aux = 0, ce_sum = 0;
    for (int64_t m = 0; m < micro_steps; ++m) {
      Rng jitter = jitter_rng(s_.seed, step, m);
      const TokenBatch batch{inputs[m].data(), targets[m].data(), s_.micro_batch, seq,
                             starts[m].empty() ? nullptr : starts[m].data()};
      const StepLoss loss = model->forward_backward(batch, ce_scale, 1.0f / static_cast<float>(micro_steps), &jitter);
      ce_sum += loss.ce_sum;
      aux += loss.aux_loss / static_cast<double>(micro_steps);
    }
    trained.after_backward(*model);
    report.grad_norm = grad_norm(trained.grads());
    report.lr = learning_rate(step, s_.total_steps, s_.warmup_steps, s_.lr, s_.min_lr_ratio, s_.schedule);
    optimizer.step(trained.values(), trained.grads(), trained.parameters(), report.lr,
                   clip_factor(report.grad_norm, s_.grad_clip));
    tokens += tokens_per_step;

    report.step = step;
    report.total_steps = s_.total_steps;
    report.tokens = tokens;
    report.ce_loss = counted ? ce_sum / static_cast<double>(counted) : 0.0;
    report.aux_loss = aux;
    report.loss = report.ce_loss + model->config().moe_loss_weight * aux;
    report.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    report.tokens_per_second = static_cast<double>(tokens_per_step) / std::max(report.seconds, 1e-9);
    if (!std::isfinite(report.loss)) fail("training diverged at step {}: the loss is {}", step, report.loss);
    for (auto* o : observers) o->on_step(report);

    const bool at_end = step == s_.total_steps;
    if (at_end || (s_.eval_interval > 0 && step % s_.eval_interval == 0)) {
      if (data_.eval_batches(s_.micro_batch) > 0) {
        const EvalReport eval = evaluate(*model, step);
        for (auto* o : observers) o->on_eval(eval);
      }
    }
    if (at_end || (s_.save_interval > 0 && step % s_.save_interval == 0)) last = save(step);
  }
  for (auto* o : observers) o->on_finish(step, last, false);
  return last;
}

}  // namespace tessera::training
