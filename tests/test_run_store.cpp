// Training runs in the store, the model registry, loss plots, and the `tessera runs` / `tessera
// models list` commands over them.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <regex>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>
#include <sqlite3.h>

#include "formats/png.h"
#include "store/database.h"
#include "store/model_registry.h"
#include "store/run_store.h"
#include "store/token_store.h"
#include "test_util.h"
#include "training/bitmap_font.h"
#include "training/loss_plot.h"

using namespace tessera;
using namespace tessera::testing;
using tessera::training::PlotOptions;
using tessera::training::PlotPoint;
using tessera::training::PlotSeries;

namespace {

std::shared_ptr<Database> open_db(const std::filesystem::path& file) { return std::make_shared<Database>(file); }

RunRecord new_run(const std::string& model = "dbrx-tiny") {
  RunRecord r;
  r.kind = "pretrain";
  r.model = model;
  r.config_file = "config.yaml";
  r.config_text = "model: dbrx-tiny\ntrain_data: ./data\n";
  r.save_folder = "/tmp/ckpt";
  r.log_file = "/tmp/run.log";
  return r;
}


// A child process that waits for a signal (or writes `lines` to `log` first and exits after
// `exit_after_ms`, when given). Only async-signal-safe calls after fork.
pid_t spawn_child(int exit_after_ms = -1, const std::string& log = "", const std::vector<std::string>& lines = {}) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (!log.empty()) {
      const int fd = open(log.c_str(), O_WRONLY | O_APPEND | O_CREAT, 0644);
      for (const auto& line : lines) {
        if (write(fd, line.data(), line.size()) < 0) _exit(3);
        usleep(300'000);
      }
      close(fd);
    }
    if (exit_after_ms >= 0) {
      usleep(static_cast<useconds_t>(exit_after_ms) * 1000);
      _exit(0);
    }
    for (;;) pause();
  }
  return pid;
}

void reap(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
}

size_t count_color(const PngImage& img, int r, int g, int b, int tolerance = 40) {
  size_t n = 0;
  for (size_t i = 0; i + 2 < img.pixels.size(); i += static_cast<size_t>(img.channels))
    if (std::abs(img.pixels[i] - r) <= tolerance && std::abs(img.pixels[i + 1] - g) <= tolerance &&
        std::abs(img.pixels[i + 2] - b) <= tolerance)
      ++n;
  return n;
}

size_t count_not_white(const PngImage& img) {
  size_t n = 0;
  for (size_t i = 0; i + 2 < img.pixels.size(); i += static_cast<size_t>(img.channels))
    if (img.pixels[i] != 255 || img.pixels[i + 1] != 255 || img.pixels[i + 2] != 255) ++n;
  return n;
}

std::vector<PlotPoint> curve(int n, double start = 5.0) {
  std::vector<PlotPoint> pts;
  for (int i = 0; i < n; ++i) pts.push_back({static_cast<double>(i), start * std::exp(-i / (n / 3.0 + 1)) + 1.0});
  return pts;
}

int count_of(const std::string& haystack, const std::string& needle) {
  int n = 0;
  for (size_t pos = haystack.find(needle); pos != std::string::npos; pos = haystack.find(needle, pos + 1)) ++n;
  return n;
}

}  // namespace

// ---- runs ------------------------------------------------------------------------------------

TEST(RunStore, RunIdsHaveTheDocumentedFormatAndAreUniqueAndRandom) {
  TempDir tmp;
  RunStore runs(open_db(tmp / "tessera.db"));
  const std::regex format("pretrain-dbrx-tiny-[a-z0-9]{6}");
  std::set<std::string> ids;
  std::set<char> seen;
  for (int i = 0; i < 3000; ++i) {
    const std::string id = runs.new_run_id("pretrain", "dbrx-tiny");
    ASSERT_TRUE(std::regex_match(id, format)) << id;
    ids.insert(id);
    for (char c : id.substr(id.size() - 6)) seen.insert(c);
  }
  EXPECT_EQ(ids.size(), 3000u);
  EXPECT_EQ(seen.size(), 36u) << "every letter and digit turns up in 18000 draws";
  // Odd characters in a model name do not leak into ids.
  EXPECT_TRUE(std::regex_match(runs.new_run_id("Pretrain", "My Model/v2"), std::regex("pretrain-my-model-v2-[a-z0-9]{6}")));
  EXPECT_NE(error_of([&] { runs.new_run_id("pretrain", ""); }).find("model"), std::string::npos);

  // create() gives a run without an id a fresh one, and refuses a taken id.
  const RunRecord a = runs.create(new_run());
  EXPECT_TRUE(std::regex_match(a.id, format)) << a.id;
  RunRecord dup = new_run();
  dup.id = a.id;
  EXPECT_NE(error_of([&] { runs.create(dup); }).find("already exists"), std::string::npos);
  EXPECT_NE(runs.create(new_run()).id, a.id);
}

TEST(RunStore, ARunRoundTripsThroughItsLifecycle) {
  TempDir tmp;
  int64_t clock = 1'700'000'000'000;
  RunStore runs(open_db(tmp / "tessera.db"), [&] { return clock; });
  RunRecord created = runs.create(new_run());
  EXPECT_EQ(created.status, RunStatus::queued);
  EXPECT_EQ(created.created_ms, clock);

  auto got = runs.get(created.id);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->kind, "pretrain");
  EXPECT_EQ(got->model, "dbrx-tiny");
  EXPECT_EQ(got->config_text, "model: dbrx-tiny\ntrain_data: ./data\n");
  EXPECT_EQ(got->save_folder, "/tmp/ckpt");
  EXPECT_FALSE(got->pid);
  EXPECT_FALSE(got->loss);
  EXPECT_EQ(got->details, "{}");
  EXPECT_FALSE(got->owner_token_id);
  RunRecord owned = new_run();
  owned.owner_token_id = 7;
  EXPECT_EQ(runs.get(runs.create(owned).id)->owner_token_id, 7);

  clock += 1000;
  runs.mark_running(created.id, getpid());
  runs.set_totals(created.id, 1000, 2'048'000);
  clock += 1000;
  runs.update_progress(created.id, 120, 245'760, 3.25, 4100.5);
  runs.set_eval(created.id, 100, 3.5);
  runs.set_eval(created.id, 120, 3.75);  // worse: the best stays
  runs.set_eval(created.id, 140, std::nan(""));  // NaN never becomes the best
  runs.set_mlflow(created.id, "http://127.0.0.1:5000", "7", "abc123");
  runs.set_registered(created.id, "main.default.tiny", 2);
  runs.set_details(created.id, R"({"lr": 0.001})");
  got = runs.get(created.id);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->status, RunStatus::running);
  EXPECT_EQ(got->pid, getpid());
  EXPECT_TRUE(got->pid_start);
  EXPECT_EQ(got->host, this_host());
  EXPECT_EQ(got->started_ms, 1'700'000'001'000);
  EXPECT_EQ(got->step, 120);
  EXPECT_EQ(got->total_steps, 1000);
  EXPECT_EQ(got->tokens, 245'760);
  EXPECT_EQ(got->total_tokens, 2'048'000);
  EXPECT_EQ(got->loss, 3.25);
  EXPECT_EQ(got->tokens_per_second, 4100.5);
  EXPECT_EQ(got->eval_step, 140);
  ASSERT_TRUE(got->eval_loss);
  EXPECT_TRUE(std::isnan(*got->eval_loss)) << "a NaN loss is kept as NaN, not lost";
  EXPECT_EQ(got->best_eval_loss, 3.5);
  EXPECT_EQ(got->tracking_uri, "http://127.0.0.1:5000");
  EXPECT_EQ(got->mlflow_experiment_id, "7");
  EXPECT_EQ(got->mlflow_run_id, "abc123");
  EXPECT_EQ(got->registered_model, "main.default.tiny");
  EXPECT_EQ(got->registered_version, 2);
  EXPECT_EQ(got->details, R"({"lr": 0.001})");
  EXPECT_NE(error_of([&] { runs.set_details(created.id, "[1, 2]"); }).find("JSON object"), std::string::npos);
  EXPECT_NE(error_of([&] { runs.set_details(created.id, "{oops"); }).find("not valid JSON"), std::string::npos);

  // The first verdict stays: a run that completed is not turned into failed afterwards.
  clock += 5000;
  EXPECT_TRUE(runs.finish(created.id, RunStatus::completed));
  EXPECT_FALSE(runs.finish(created.id, RunStatus::failed, "late"));
  got = runs.get(created.id);
  EXPECT_EQ(got->status, RunStatus::completed);
  EXPECT_EQ(got->finished_ms, clock);
  EXPECT_EQ(got->error, "");
  EXPECT_NE(error_of([&] { runs.finish(created.id, RunStatus::running); }).find("cannot finish"), std::string::npos);

  // A resume runs it again: running, no finish time, the first start time kept.
  clock += 1000;
  runs.mark_running(created.id, getpid());
  got = runs.get(created.id);
  EXPECT_EQ(got->status, RunStatus::running);
  EXPECT_FALSE(got->finished_ms);
  EXPECT_EQ(got->started_ms, 1'700'000'001'000);
  EXPECT_TRUE(runs.finish(created.id, RunStatus::failed, "out of memory\nat step 9"));
  EXPECT_EQ(runs.get(created.id)->error, "out of memory at step 9");

  // Everything about an unknown run names it.
  for (const auto& message : {error_of([&] { runs.mark_running("nope", 1); }),
                              error_of([&] { runs.update_progress("nope", 1, 1, 1, 1); }),
                              error_of([&] { runs.finish("nope", RunStatus::failed); }),
                              error_of([&] { runs.add_metrics("nope", 1, {{"loss", 1}}); })})
    EXPECT_NE(message.find("no run 'nope'"), std::string::npos) << message;
  EXPECT_FALSE(runs.get("nope"));
}

TEST(RunStore, ListIsNewestFirstAndResolveTakesAUniquePrefix) {
  TempDir tmp;
  int64_t clock = 1000;
  RunStore runs(open_db(tmp / "tessera.db"), [&] { return clock; });
  std::vector<std::string> ids;
  for (int i = 0; i < 4; ++i) {
    RunRecord r = new_run();
    r.id = "pretrain-dbrx-tiny-00000" + std::to_string(i);
    ids.push_back(runs.create(r).id);
    clock += 10;
  }
  RunRecord other = new_run("dbrx-9b");
  other.id = "pretrain-dbrx-9b-abcdef";
  runs.create(other);
  const auto all = runs.list();
  ASSERT_EQ(all.size(), 5u);
  EXPECT_EQ(all[0].id, "pretrain-dbrx-9b-abcdef");
  EXPECT_EQ(all[1].id, ids[3]);
  EXPECT_EQ(all[4].id, ids[0]);
  EXPECT_EQ(runs.list(2).size(), 2u);

  EXPECT_EQ(runs.resolve(ids[2]).id, ids[2]);
  EXPECT_EQ(runs.resolve("pretrain-dbrx-9").id, "pretrain-dbrx-9b-abcdef");
  const std::string ambiguous = error_of([&] { runs.resolve("pretrain-dbrx-tiny"); });
  EXPECT_NE(ambiguous.find("ambiguous"), std::string::npos) << ambiguous;
  EXPECT_NE(ambiguous.find(ids[1]), std::string::npos) << ambiguous;
  EXPECT_EQ(error_of([&] { runs.resolve("xyz"); }), "no run 'xyz' (see `tessera runs list`)");
  // '_' and '%' are not wildcards.
  EXPECT_EQ(error_of([&] { runs.resolve("pretrain_"); }), "no run 'pretrain_' (see `tessera runs list`)");
  EXPECT_EQ(error_of([&] { runs.resolve("%"); }), "no run '%' (see `tessera runs list`)");
}

TEST(RunStore, ARunWhoseProcessVanishedIsMarkedFailedAndItSticks) {
  TempDir tmp;
  const auto file = tmp / "tessera.db";
  RunStore runs(open_db(file));
  const std::string id = runs.create(new_run()).id;
  const pid_t child = spawn_child();
  ASSERT_GT(child, 0);
  runs.mark_running(id, child);
  EXPECT_EQ(runs.get(id)->status, RunStatus::running);
  EXPECT_TRUE(process_alive(child, process_start_time(child)));

  // Killed and not yet waited for: a zombie is not a live trainer.
  kill(child, SIGKILL);
  for (int i = 0; i < 100 && process_alive(child); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(process_alive(child));
  const auto failed = runs.get(id);
  EXPECT_EQ(failed->status, RunStatus::failed);
  EXPECT_EQ(failed->error, kRunVanishedError);
  EXPECT_TRUE(failed->finished_ms);
  reap(child);

  // Persisted: another process reading the file (here, a store that thinks everything is alive)
  // sees failed too.
  RunStore other(open_db(file));
  other.set_process_probe([](const RunRecord&) { return true; });
  EXPECT_EQ(other.get(id)->status, RunStatus::failed);
  EXPECT_EQ(other.list().front().status, RunStatus::failed);
}

TEST(RunStore, LivenessKnowsStopsPidReuseAndOtherHosts) {
  TempDir tmp;
  RunStore runs(open_db(tmp / "tessera.db"));

  // A stop was asked for, then the process went: stopped, not failed.
  const std::string stopping = runs.create(new_run()).id;
  const pid_t child = spawn_child(0);
  runs.mark_running(stopping, child);
  runs.request_stop(stopping);
  reap(child);
  const auto stopped = runs.get(stopping);
  EXPECT_EQ(stopped->status, RunStatus::stopped);
  EXPECT_EQ(stopped->error, "");

  // Our own pid, but recorded with another start time: some other process that got the pid.
  const auto own_start = process_start_time(getpid());
  ASSERT_TRUE(own_start);
  RunRecord reused = new_run();
  reused.status = RunStatus::running;
  reused.pid = getpid();
  reused.pid_start = *own_start + 12345;
  reused.host = this_host();
  const std::string reused_id = runs.create(reused).id;
  EXPECT_EQ(runs.get(reused_id)->status, RunStatus::failed);
  reused.id.clear();
  reused.pid_start = own_start;
  const std::string alive_id = runs.create(reused).id;
  EXPECT_EQ(runs.get(alive_id)->status, RunStatus::running);

  // A process on another machine cannot be judged from here.
  RunRecord remote = new_run();
  remote.status = RunStatus::running;
  remote.pid = 999'999'999;
  remote.host = "some-other-host.invalid";
  const std::string remote_id = runs.create(remote).id;
  EXPECT_EQ(runs.get(remote_id)->status, RunStatus::running);
  EXPECT_FALSE(process_alive(999'999'999));
  EXPECT_FALSE(process_alive(-1));
}

TEST(RunStore, MetricsAreBatchedOrderedAndReplacedOnRepeat) {
  TempDir tmp;
  RunStore runs(open_db(tmp / "tessera.db"));
  const std::string id = runs.create(new_run()).id;
  const auto start = std::chrono::steady_clock::now();
  for (int step = 1; step <= 500; ++step)
    runs.add_metrics(id, step, {{"loss", 10.0 / step}, {"lr", 1e-3}, {"tokens_per_second", 1000.0 + step}},
                     1'000'000 + step);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_LT(seconds, 10.0) << "one transaction per step, not per value";

  EXPECT_EQ(runs.metric_names(id), (std::vector<std::string>{"loss", "lr", "tokens_per_second"}));
  auto loss = runs.metrics(id, "loss");
  ASSERT_EQ(loss.size(), 500u);
  EXPECT_EQ(loss[0].step, 1);
  EXPECT_DOUBLE_EQ(loss[0].value, 10.0);
  EXPECT_EQ(loss[0].time_ms, 1'000'001);
  EXPECT_DOUBLE_EQ(loss[499].value, 10.0 / 500);

  // A resumed run repeats steps 401..500: the new values replace the old ones.
  for (int step = 401; step <= 500; ++step) runs.add_metrics(id, step, {{"loss", 0.5}});
  loss = runs.metrics(id, "loss");
  ASSERT_EQ(loss.size(), 500u);
  EXPECT_DOUBLE_EQ(loss[450].value, 0.5);
  EXPECT_DOUBLE_EQ(loss[399].value, 10.0 / 400);

  // Non-finite values survive.
  runs.add_metrics(id, 501, {{"loss", std::nan("")}, {"grad_norm", INFINITY}});
  EXPECT_TRUE(std::isnan(runs.metrics(id, "loss").back().value));
  EXPECT_TRUE(std::isinf(runs.metrics(id, "grad_norm").back().value));
  EXPECT_TRUE(runs.metrics(id, "no-such-metric").empty());
  EXPECT_NE(error_of([&] { runs.add_metrics(id, 1, {{"", 1.0}}); }).find("empty name"), std::string::npos);
}

TEST(RunStore, TheSchemaMigratesAnOlderFileAndKeepsItsData) {
  TempDir tmp;
  const auto file = tmp / "tessera.db";
  EXPECT_GE(Database::latest_schema_version(), 2);
  {
    auto db = open_db(file);
    TokenStore(db).create("kept");
  }
  // Back to a file from before runs existed: version 1, without the new tables and columns.
  {
    sqlite3* raw = nullptr;
    ASSERT_EQ(sqlite3_open(file.c_str(), &raw), SQLITE_OK);
    EXPECT_EQ(sqlite3_exec(raw,
                           "DROP TABLE run_metrics; DROP TABLE runs; DROP TABLE registered_models;"
                           " ALTER TABLE api_tokens DROP COLUMN admin; PRAGMA user_version = 1;",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(raw);
  }
  auto db = open_db(file);
  EXPECT_EQ(db->schema_version(), Database::latest_schema_version());
  RunStore runs(db);
  const std::string id = runs.create(new_run()).id;
  EXPECT_EQ(runs.list().front().id, id);
  EXPECT_TRUE(ModelRegistry(db).list().empty());
  ASSERT_EQ(TokenStore(db).list().size(), 1u);
  EXPECT_EQ(TokenStore(db).list().front().name, "kept");
  EXPECT_FALSE(TokenStore(db).list().front().admin);  // tokens from before admin tokens are not
  EXPECT_FALSE(runs.get(id)->owner_token_id);
}

// ---- the registry ----------------------------------------------------------------------------

namespace {
std::filesystem::path make_model_folder(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  write_file(dir / "config.json", R"({"model_type": "dbrx"})");
  write_file(dir / "model.safetensors", std::string(64, '\0'));
  return dir;
}
}  // namespace

TEST(ModelRegistry, NamesHaveThreeCheckedParts) {
  for (const char* ok : {"main.default.tiny", "Cat_1.sch-2.model_3", "a.b.c"}) EXPECT_EQ(error_of([&] { check_model_name(ok); }), "") << ok;
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"", "empty"},           {"a.b", "three parts"}, {"a.b.c.d", "three parts"},
      {"a..c", "non-empty"},   {".b.c", "non-empty"},  {"a.b.", "non-empty"},
      {"a.b c.d", "' ' is not allowed"}, {"a.b/c.d", "'/' is not allowed"}, {std::string(300, 'a'), "too long"}};
  for (const auto& [name, why] : bad) {
    const std::string message = error_of([&] { check_model_name(name); });
    EXPECT_NE(message.find(why), std::string::npos) << name << ": " << message;
  }
}

TEST(ModelRegistry, VersionsCountUpPerNameAndResolve) {
  TempDir tmp;
  int64_t clock = 5000;
  ModelRegistry registry(open_db(tmp / "tessera.db"), [&] { return clock; });
  const auto one = make_model_folder(tmp / "ckpt1");
  const auto two = make_model_folder(tmp / "ckpt2");

  const auto v1 = registry.register_model("main.default.tiny", one, "pretrain-dbrx-tiny-aaaaaa", "first");
  clock += 10;
  const auto v2 = registry.register_model("main.default.tiny", two, "pretrain-dbrx-tiny-bbbbbb");
  const auto other = registry.register_model("main.default.other", one);
  EXPECT_EQ(v1.version, 1);
  EXPECT_EQ(v2.version, 2);
  EXPECT_EQ(other.version, 1);
  // The registry keeps its own copy of each version.
  const auto stored = tmp / "registry" / "main" / "default" / "tiny";
  EXPECT_EQ(v1.path, (stored / "1").string());
  EXPECT_EQ(v2.path, (stored / "2").string());
  EXPECT_EQ(v2.reference(), "main.default.tiny/2");

  const auto latest = registry.list();
  ASSERT_EQ(latest.size(), 2u);
  EXPECT_EQ(latest[0].name, "main.default.other");
  EXPECT_EQ(latest[1].name, "main.default.tiny");
  EXPECT_EQ(latest[1].version, 2);
  EXPECT_EQ(latest[1].versions, 2);
  EXPECT_EQ(latest[1].source_run_id, "pretrain-dbrx-tiny-bbbbbb");
  EXPECT_EQ(latest[1].created_ms, 5010);
  EXPECT_EQ(registry.list(true).size(), 3u);

  EXPECT_EQ(registry.get("main.default.tiny")->version, 2);
  EXPECT_EQ(registry.get("main.default.tiny", 1)->description, "first");
  EXPECT_FALSE(registry.get("main.default.tiny", 3));
  EXPECT_FALSE(registry.get("main.default.none"));
  EXPECT_EQ(registry.resolve("main.default.tiny").path, v2.path);
  EXPECT_EQ(registry.resolve("main.default.tiny/1").path, v1.path);
  EXPECT_NE(error_of([&] { registry.resolve("main.default.tiny/3"); }).find("has no version 3"), std::string::npos);
  EXPECT_NE(error_of([&] { registry.resolve("main.default.tiny/x"); }).find("positive number"), std::string::npos);
  EXPECT_NE(error_of([&] { registry.resolve("main.default.none"); }).find("no registered model"), std::string::npos);
  EXPECT_NE(error_of([&] { registry.resolve("tiny"); }).find("three parts"), std::string::npos);

  // The folder must be a model: config.json and weights.
  std::filesystem::create_directories(tmp / "empty");
  EXPECT_NE(error_of([&] { registry.register_model("a.b.c", tmp / "empty"); }).find("no config.json"), std::string::npos);
  write_file(tmp / "empty" / "config.json", "{}");
  EXPECT_NE(error_of([&] { registry.register_model("a.b.c", tmp / "empty"); }).find("no weights"), std::string::npos);
  EXPECT_NE(error_of([&] { registry.register_model("a.b.c", tmp / "missing"); }).find("not a folder"), std::string::npos);
  EXPECT_FALSE(registry.get("a.b.c"));

  // A relative path is read from the working folder.
  const auto cwd = std::filesystem::current_path();
  std::filesystem::current_path(tmp.path());
  const auto rel = registry.register_model("main.default.rel", "ckpt1");
  std::filesystem::current_path(cwd);
  EXPECT_EQ(rel.path, (tmp / "registry" / "main" / "default" / "rel" / "1").string());
  EXPECT_EQ(read_file(std::filesystem::path(rel.path) / "config.json"), read_file(one / "config.json"));
}

// ---- plots -----------------------------------------------------------------------------------

TEST(LossPlot, TheFontCoversPrintableAscii) {
  std::set<std::array<uint8_t, 7>> distinct;
  for (char c = ' '; c <= '~'; ++c) distinct.insert(training::glyph(c));
  EXPECT_EQ(distinct.size(), 95u) << "every printable character has its own glyph";
  EXPECT_EQ(training::glyph('\x01'), training::glyph('?'));
  EXPECT_EQ(training::text_cells("loss"), 4);
  EXPECT_EQ(training::text_cells("\xc3\xa9t\xc3\xa9"), 3);
}

TEST(LossPlot, PngHasTheSizeAxesAndBothCurves) {
  TempDir tmp;
  std::vector<PlotSeries> series = {{"loss", curve(300), false}, {"eval_loss", {}, false}};
  for (int s = 0; s < 300; s += 50) series[1].points.push_back({static_cast<double>(s), 4.0 - s / 100.0});
  PlotOptions options;
  options.title = "pretrain-dbrx-tiny-abc123 (dbrx-tiny)";
  options.width = 800;
  options.height = 450;
  const auto path = tmp / "loss.png";
  training::write_plot(path, series, options);
  const PngImage img = read_png(path);
  EXPECT_EQ(img.width, 800);
  EXPECT_EQ(img.height, 450);
  // The first series is blue, the second orange; the text and axes are dark grey.
  EXPECT_GT(count_color(img, 31, 119, 180), 400u);
  EXPECT_GT(count_color(img, 255, 127, 14), 150u);
  EXPECT_GT(count_color(img, 34, 34, 34, 10), 300u) << "labels and title";
  EXPECT_LT(count_not_white(img), img.width * img.height / 3) << "mostly background";
  // The same plot twice is the same file.
  EXPECT_EQ(encode_png(training::render_plot_png(series, options)), encode_png(training::render_plot_png(series, options)));
}

TEST(LossPlot, OnePointNonFiniteValuesAndNoDataStaySane) {
  PlotOptions options;
  options.width = 400;
  options.height = 300;
  const auto one = training::render_plot_png({{"loss", {{7, 2.5}}, false}}, options);
  EXPECT_GT(count_color(one, 31, 119, 180), 10u) << "a single point is drawn as a marker";

  std::vector<PlotPoint> odd = {{0, 3}, {1, std::nan("")}, {2, INFINITY}, {3, 2}, {std::nan(""), 1}, {4, -INFINITY}, {5, 1.5}};
  EXPECT_EQ(training::prepare_points(odd).size(), 3u);
  const auto img = training::render_plot_png({{"loss", odd, false}}, options);
  EXPECT_GT(count_color(img, 31, 119, 180), 50u);

  const auto empty = training::render_plot_png({{"loss", {{1, std::nan("")}}, false}}, options);
  EXPECT_EQ(empty.width, 400);
  EXPECT_LT(count_color(empty, 31, 119, 180, 5), 60u) << "only the legend's swatch";
  const std::string svg = training::render_plot_svg({}, options);
  EXPECT_NE(svg.find("no data"), std::string::npos);

  // Values at the ends of the double range, and a flat line.
  const auto huge = training::render_plot_png({{"a", {{0, -1e308}, {1, 1e308}}, false}, {"b", {{0, 3}, {1e9, 3}}, true}}, options);
  EXPECT_GT(count_color(huge, 255, 127, 14), 50u) << "the flat line on the second axis";

  options.width = 10;
  EXPECT_NE(error_of([&] { training::render_plot_png({}, options); }).find("out of range"), std::string::npos);
}

TEST(LossPlot, HugeStepCountsAreThinnedKeepingSpikes) {
  std::vector<PlotPoint> many;
  for (int i = 0; i < 2'000'000; ++i) many.push_back({static_cast<double>(i) * 50, 3.0 + 0.001 * (i % 7)});
  many[1'234'567].y = 40.0;  // one spike
  const auto thin = training::prepare_points(many);
  EXPECT_LE(thin.size(), training::kMaxPlotPoints);
  EXPECT_GE(thin.size(), training::kMaxPlotPoints / 2);
  bool spike = false;
  for (size_t i = 0; i < thin.size(); ++i) {
    spike = spike || thin[i].y == 40.0;
    if (i > 0) {
      EXPECT_LE(thin[i - 1].x, thin[i].x);
    }
  }
  EXPECT_TRUE(spike) << "the maximum of each stretch is kept";
  const auto start = std::chrono::steady_clock::now();
  PlotOptions options;
  const std::string svg = training::render_plot_svg({{"loss", many, false}}, options);
  const auto img = training::render_plot_png({{"loss", many, false}}, options);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 10.0);
  EXPECT_NE(svg.find(">80M<"), std::string::npos) << "step ticks in millions";
  EXPECT_GT(count_color(img, 31, 119, 180), 500u);
}

TEST(LossPlot, SvgAndHtmlHoldThePolylinesAndTheFormatFollowsTheExtension) {
  TempDir tmp;
  std::vector<PlotSeries> series = {{"loss", curve(100), false},
                                    {"eval_loss", {{0, 5}, {50, 3}, {99, 2.5}}, false},
                                    {"lr", {{0, 0}, {10, 1e-3}, {99, 1e-4}}, true}};
  PlotOptions options;
  options.title = "a <run> & more";
  options.right_label = "lr";
  training::write_plot(tmp / "plot.svg", series, options);
  training::write_plot(tmp / "plot.HTML", series, options);
  const std::string svg = read_file(tmp / "plot.svg");
  EXPECT_TRUE(svg.starts_with("<?xml")) << svg.substr(0, 40);
  EXPECT_EQ(count_of(svg, "<polyline"), 3);
  EXPECT_NE(svg.find("data-series=\"eval_loss\""), std::string::npos);
  EXPECT_NE(svg.find("a &lt;run&gt; &amp; more"), std::string::npos);
  EXPECT_EQ(svg.find("<run>"), std::string::npos);
  EXPECT_EQ(count_of(svg, "<circle"), 6) << "markers on the sparse series only";
  const std::string html = read_file(tmp / "plot.HTML");
  EXPECT_TRUE(html.starts_with("<!DOCTYPE html>"));
  EXPECT_EQ(count_of(html, "<polyline"), 3);
  EXPECT_NE(html.find("</span> eval_loss</td>"), std::string::npos) << "the summary table";
  // The polylines' points are plain numbers.
  for (size_t at = svg.find("points=\""); at != std::string::npos; at = svg.find("points=\"", at + 1)) {
    const size_t begin = at + 8, end = svg.find('"', begin);
    const std::string points = svg.substr(begin, end - begin);
    EXPECT_EQ(points.find_first_not_of("0123456789., -"), std::string::npos) << points;
  }

  for (const char* name : {"plot.jpg", "plot"}) {
    const std::string message = error_of([&] { training::write_plot(tmp / name, series, options); });
    EXPECT_NE(message.find(".png, .svg or .html"), std::string::npos) << message;
    EXPECT_FALSE(std::filesystem::exists(tmp / name));
  }
}

// ---- the commands ----------------------------------------------------------------------------

namespace {
struct CliStore {
  TempDir home;
  ScopedEnv env{"TESSERA_HOME", home.path().string()};
  std::shared_ptr<Database> db = open_db(default_database_file());
  RunStore runs{db};
};
}  // namespace

TEST(RunsCli, ListDescribeLogsAndPlot) {
  CliStore s;
  EXPECT_EQ(default_database_file(), s.home / "tessera.db");
  auto empty = run_tessera("runs list");
  ASSERT_EQ(empty.exit_code, 0) << empty.err;
  EXPECT_NE(empty.out.find("no runs yet"), std::string::npos);

  RunRecord r = new_run();
  r.log_file = (s.home / "train.log").string();
  write_file(r.log_file, "step 1 loss 5.0\nstep 2 loss 4.5\n");
  const std::string id = s.runs.create(r).id;
  s.runs.mark_running(id, getpid());
  s.runs.set_totals(id, 200, 0);
  s.runs.update_progress(id, 50, 102'400, 3.2, 2048);
  s.runs.set_eval(id, 50, 3.4);
  for (int step = 1; step <= 50; ++step)
    s.runs.add_metrics(id, step, {{"loss", 6.0 - step * 0.05}, {"lr", step * 1e-5}});
  s.runs.add_metrics(id, 25, {{"eval_loss", 4.0}});
  s.runs.add_metrics(id, 50, {{"eval_loss", 3.4}});

  auto list = run_tessera("runs list");
  ASSERT_EQ(list.exit_code, 0) << list.err;
  EXPECT_NE(list.out.find(id), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("running"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("50/200 25%"), std::string::npos) << list.out;
  const auto j = nlohmann::json::parse(run_tessera("runs list --json").out);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["id"], id);
  EXPECT_EQ(j[0]["step"], 50);
  EXPECT_DOUBLE_EQ(j[0]["progress"].get<double>(), 0.25);

  auto describe = run_tessera("runs describe " + id.substr(0, id.size() - 3));
  ASSERT_EQ(describe.exit_code, 0) << describe.err;
  for (const std::string& want : std::vector<std::string>{"Run " + id, "status:", "running (pid", "50 / 200 (25.0%)", "102,400", "3.2000",
                                 "perplexity 29.96", "2,048 tok/s", "ETA:", r.log_file})
    EXPECT_NE(describe.out.find(want), std::string::npos) << want << "\n" << describe.out;
  const auto dj = nlohmann::json::parse(run_tessera("runs describe --json " + id).out);
  EXPECT_EQ(dj["config_text"], r.config_text);
  EXPECT_NEAR(dj["eval_perplexity"].get<double>(), std::exp(3.4), 1e-9);
  // 150 steps of 2048 tokens at 2048 tok/s.
  EXPECT_NEAR(dj["eta_seconds"].get<double>(), 150.0, 1e-6);

  auto logs = run_tessera("runs logs " + id);
  ASSERT_EQ(logs.exit_code, 0) << logs.err;
  EXPECT_EQ(logs.out, "step 1 loss 5.0\nstep 2 loss 4.5\n");

  const auto png = s.home / "curves.png";
  auto plot = run_tessera("runs plot " + id + " -o '" + png.string() + "'");
  ASSERT_EQ(plot.exit_code, 0) << plot.err;
  const PngImage img = read_png(png);
  EXPECT_EQ(img.width, 960);
  EXPECT_EQ(img.height, 540);
  EXPECT_GT(count_color(img, 31, 119, 180), 300u);
  const auto svg_path = s.home / "curves.svg";
  ASSERT_EQ(run_tessera("runs plot " + id + " -o '" + svg_path.string() + "'").exit_code, 0);
  const std::string svg = read_file(svg_path);
  EXPECT_EQ(count_of(svg, "<polyline"), 3) << "loss, eval_loss and lr";
  EXPECT_NE(svg.find("data-series=\"lr\""), std::string::npos);
  auto one = run_tessera("runs plot " + id + " --metric eval_loss -o '" + svg_path.string() + "'");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_EQ(count_of(read_file(svg_path), "<polyline"), 1);

  auto bad_ext = run_tessera("runs plot " + id + " -o '" + (s.home / "x.gif").string() + "'");
  EXPECT_EQ(bad_ext.exit_code, 2);
  EXPECT_NE(bad_ext.err.find(".png, .svg or .html"), std::string::npos) << bad_ext.err;
  auto bad_metric = run_tessera("runs plot " + id + " --metric nope -o '" + svg_path.string() + "'");
  EXPECT_EQ(bad_metric.exit_code, 2);
  EXPECT_NE(bad_metric.err.find("no metric 'nope'"), std::string::npos) << bad_metric.err;

  for (const char* cmd : {"runs describe xyz", "runs logs xyz", "runs stop xyz", "runs plot xyz -o /tmp/x.png"}) {
    auto unknown = run_tessera(cmd);
    EXPECT_EQ(unknown.exit_code, 2) << cmd;
    EXPECT_EQ(unknown.err, "error: no run 'xyz' (see `tessera runs list`)\n") << cmd;
  }
}

TEST(RunsCli, LogsFollowEndsWhenTheRunEnds) {
  CliStore s;
  RunRecord r = new_run();
  r.log_file = (s.home / "train.log").string();
  write_file(r.log_file, "starting\n");
  const std::string id = s.runs.create(r).id;
  // The "trainer" writes two lines a moment apart and exits without finishing the run.
  const pid_t child = spawn_child(300, r.log_file, {"step 1\n", "step 2\n"});
  s.runs.mark_running(id, child);
  const auto start = std::chrono::steady_clock::now();
  auto follow = run_tessera("runs logs --follow " + id);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  reap(child);
  ASSERT_EQ(follow.exit_code, 0) << follow.err;
  EXPECT_EQ(follow.out, "starting\nstep 1\nstep 2\n");
  EXPECT_LT(seconds, 15.0);
  EXPECT_EQ(s.runs.get(id)->status, RunStatus::failed);
}

TEST(RunsCli, StopSignalsTheTrainerAndMarksTheRunStopped) {
  CliStore s;
  const std::string id = s.runs.create(new_run()).id;
  const pid_t child = spawn_child();
  s.runs.mark_running(id, child);
  auto stop = run_tessera("runs stop " + id);
  ASSERT_EQ(stop.exit_code, 0) << stop.err;
  EXPECT_NE(stop.out.find("Run " + id + " stopped."), std::string::npos) << stop.out;
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
  const auto run = s.runs.get(id);
  EXPECT_EQ(run->status, RunStatus::stopped);
  EXPECT_TRUE(run->stop_requested_ms);

  auto again = run_tessera("runs stop " + id);
  EXPECT_EQ(again.exit_code, 2);
  EXPECT_NE(again.err.find("is not running (it is stopped)"), std::string::npos) << again.err;

  // A trainer that ignores SIGTERM is killed once the wait is over.
  const std::string stubborn = s.runs.create(new_run()).id;
  const pid_t deaf = fork();
  if (deaf == 0) {
    signal(SIGTERM, SIG_IGN);
    for (;;) pause();
  }
  s.runs.mark_running(stubborn, deaf);
  // Give the child time to ignore SIGTERM before it is sent.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  auto kill9 = run_tessera("runs stop --timeout 1 " + stubborn);
  ASSERT_EQ(kill9.exit_code, 0) << kill9.err;
  EXPECT_NE(kill9.out.find("sending SIGKILL"), std::string::npos) << kill9.out;
  EXPECT_NE(kill9.out.find("stopped (killed)"), std::string::npos) << kill9.out;
  ASSERT_EQ(waitpid(deaf, &status, 0), deaf);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  EXPECT_EQ(s.runs.get(stubborn)->status, RunStatus::stopped);

  // A queued run that never started is stopped on the spot.
  const std::string queued = s.runs.create(new_run()).id;
  auto q = run_tessera("runs stop " + queued);
  ASSERT_EQ(q.exit_code, 0) << q.err;
  EXPECT_EQ(s.runs.get(queued)->status, RunStatus::stopped);
}

TEST(RunsCli, ModelsListShowsTheRegistry) {
  CliStore s;
  auto empty = run_tessera("models list");
  ASSERT_EQ(empty.exit_code, 0) << empty.err;
  EXPECT_NE(empty.out.find("no registered models"), std::string::npos);
  ModelRegistry registry(s.db);
  const auto folder = make_model_folder(s.home / "ckpt");
  registry.register_model("main.default.tiny", folder, "pretrain-dbrx-tiny-abcdef");
  const auto latest = registry.register_model("main.default.tiny", folder, "pretrain-dbrx-tiny-ghijkl");
  auto list = run_tessera("models list");
  ASSERT_EQ(list.exit_code, 0) << list.err;
  EXPECT_NE(list.out.find("main.default.tiny"), std::string::npos) << list.out;
  EXPECT_NE(list.out.find("pretrain-dbrx-tiny-ghijkl"), std::string::npos) << list.out;
  EXPECT_EQ(list.out.find("pretrain-dbrx-tiny-abcdef"), std::string::npos) << "only the latest version";
  EXPECT_NE(list.out.find(latest.path), std::string::npos) << list.out;
  const auto j = nlohmann::json::parse(run_tessera("models list --json").out);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["version"], 2);
  EXPECT_EQ(j[0]["versions"], 2);
  EXPECT_EQ(nlohmann::json::parse(run_tessera("models list --all --json").out).size(), 2u);
}
