// The model registry's own storage (files copied or linked in, training state left out, a
// version appears whole or not at all, deleting removes the files), lineage, the data hash, the
// `tessera models show/delete/register` commands, and how a server config names a registered
// model.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <set>
#include <thread>

#include <nlohmann/json.hpp>
#include <sqlite3.h>

#include "server/server_config.h"
#include "store/data_hash.h"
#include "store/database.h"
#include "store/model_registry.h"
#include "test_util.h"

using namespace tessera;
using namespace tessera::testing;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// A model folder as a training checkpoint leaves it: the model, its tokenizer, and training
// state that the registry must not take.
fs::path make_checkpoint(const fs::path& dir, const std::string& weights = std::string(64, '\1')) {
  fs::create_directories(dir);
  write_file(dir / "config.json", R"({"model_type": "dbrx"})");
  write_file(dir / "model.safetensors", weights);
  write_file(dir / "tokenizer_config.json", "{}");
  write_file(dir / "generation_config.json", R"({"max_new_tokens": 8})");
  write_file(dir / "optimizer.safetensors", std::string(128, '\2'));
  write_file(dir / "trainer_state.json", R"({"step": 300})");
  write_file(dir / ".lock", "");
  write_file(dir / "model.safetensors.tmp", "half written");
  return dir;
}

std::set<std::string> names_in(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

void exec_sql(const fs::path& file, const std::string& sql) {
  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open(file.c_str(), &raw), SQLITE_OK);
  char* message = nullptr;
  const int rc = sqlite3_exec(raw, sql.c_str(), nullptr, nullptr, &message);
  EXPECT_EQ(rc, SQLITE_OK) << (message ? message : "");
  sqlite3_free(message);
  sqlite3_close(raw);
}

const std::set<std::string> kModelFiles = {"config.json", "generation_config.json", "model.safetensors",
                                           "tokenizer_config.json"};

}  // namespace

TEST(ModelRegistryStorage, CopiesTheModelFilesAndLeavesTrainingStateOut) {
  TempDir tmp;
  ModelRegistry registry(std::make_shared<Database>(tmp / "tessera.db"));
  EXPECT_EQ(registry.storage_root(), tmp / "registry");
  const auto ckpt = make_checkpoint(tmp / "ckpt" / "step-000300");
  const auto m = registry.register_model("main.demo.tiny", ckpt, "pretrain-dbrx-tiny-abcdef");
  EXPECT_EQ(m.path, (tmp / "registry" / "main" / "demo" / "tiny" / "1").string());
  EXPECT_EQ(names_in(m.path), kModelFiles);
  EXPECT_EQ(read_file(fs::path(m.path) / "model.safetensors"), std::string(64, '\1'));
  ASSERT_EQ(m.files.size(), 4u);
  EXPECT_EQ(m.files[0].name, "config.json");
  EXPECT_EQ(m.files[2].name, "model.safetensors");
  EXPECT_EQ(m.files[2].bytes, 64);
  EXPECT_EQ(m.total_bytes(), static_cast<int64_t>(fs::file_size(fs::path(m.path) / "config.json") + 64 +
                                                   fs::file_size(fs::path(m.path) / "tokenizer_config.json") +
                                                   fs::file_size(fs::path(m.path) / "generation_config.json")));
  // Same filesystem: hard links, no second copy of the weights.
  struct stat st {};
  ASSERT_EQ(stat((ckpt / "model.safetensors").c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, 2u);

  // The stored version no longer depends on the training folder.
  fs::remove_all(tmp / "ckpt");
  const auto again = registry.get("main.demo.tiny");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->path, m.path);
  EXPECT_EQ(again->files.size(), 4u);
  EXPECT_EQ(read_file(fs::path(m.path) / "model.safetensors"), std::string(64, '\1'));

  // Each version has its own folder and its own files.
  const auto v2 = registry.register_model("main.demo.tiny", make_checkpoint(tmp / "two", std::string(32, '\3')));
  EXPECT_EQ(v2.version, 2);
  EXPECT_EQ(v2.path, (tmp / "registry" / "main" / "demo" / "tiny" / "2").string());
  EXPECT_EQ(read_file(fs::path(v2.path) / "model.safetensors"), std::string(32, '\3'));
  EXPECT_EQ(read_file(fs::path(m.path) / "model.safetensors"), std::string(64, '\1'));
  // Nothing but the version folders is left in the model's folder.
  EXPECT_EQ(names_in(tmp / "registry" / "main" / "demo" / "tiny"), (std::set<std::string>{"1", "2"}));

  // A LoRA adapter kept apart from its base model registers too.
  fs::create_directories(tmp / "adapter");
  write_file(tmp / "adapter" / "adapter_config.json", R"({"r": 8})");
  write_file(tmp / "adapter" / "adapter_model.safetensors", std::string(16, '\4'));
  write_file(tmp / "adapter" / "optimizer.safetensors", std::string(16, '\5'));
  const auto adapter = registry.register_model("main.demo.tiny_lora", tmp / "adapter");
  EXPECT_EQ(names_in(adapter.path), (std::set<std::string>{"adapter_config.json", "adapter_model.safetensors"}));
}

TEST(ModelRegistryStorage, CopiesWhenTheRegistryIsOnAnotherFilesystem) {
  TempDir tmp;
  const fs::path shm = "/dev/shm";
  struct stat a {}, b {};
  if (stat(shm.c_str(), &b) != 0 || stat(tmp.path().c_str(), &a) != 0 || a.st_dev == b.st_dev)
    GTEST_SKIP() << "needs /dev/shm on another filesystem than " << tmp.path();
  const fs::path root = shm / ("tessera-registry-test-" + std::to_string(getpid()));
  ModelRegistry registry(std::make_shared<Database>(tmp / "tessera.db"), {}, root);
  const auto ckpt = make_checkpoint(tmp / "ckpt");
  const auto m = registry.register_model("main.demo.tiny", ckpt);
  EXPECT_EQ(m.path, (root / "main" / "demo" / "tiny" / "1").string());
  EXPECT_EQ(names_in(m.path), kModelFiles);
  EXPECT_EQ(read_file(fs::path(m.path) / "model.safetensors"), std::string(64, '\1'));
  struct stat st {};
  ASSERT_EQ(stat((ckpt / "model.safetensors").c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, 1u) << "copied, not linked";
  registry.delete_model("main.demo.tiny");
  EXPECT_FALSE(fs::exists(root / "main"));
  fs::remove_all(root);
}

TEST(ModelRegistryStorage, AFailedRegistrationLeavesNoFilesAndNoRow) {
  TempDir tmp;
  const auto db_file = tmp / "tessera.db";
  auto db = std::make_shared<Database>(db_file);
  ModelRegistry registry(db);
  const auto ckpt = make_checkpoint(tmp / "ckpt");
  registry.register_model("main.demo.tiny", ckpt);
  // The row cannot be written (as when the disk is full): the files must go too.
  exec_sql(db_file,
           "CREATE TRIGGER refuse BEFORE INSERT ON registered_models BEGIN SELECT RAISE(ABORT, 'disk is full'); END;");
  const std::string message = error_of([&] { registry.register_model("main.demo.tiny", ckpt); });
  EXPECT_NE(message.find("disk is full"), std::string::npos) << message;
  const auto model_dir = tmp / "registry" / "main" / "demo" / "tiny";
  EXPECT_EQ(names_in(model_dir), std::set<std::string>{"1"}) << "no version 2 folder and no staging folder";
  EXPECT_EQ(registry.versions("main.demo.tiny").size(), 1u);
  EXPECT_EQ(registry.get("main.demo.tiny")->version, 1);
  exec_sql(db_file, "DROP TRIGGER refuse;");

  // A crash between moving the files in and the commit leaves a version folder without a row,
  // and a dead process's staging folder: the next registration replaces and removes them.
  fs::create_directories(model_dir / "2");
  write_file(model_dir / "2" / "stray.bin", "from a crashed registration");
  fs::create_directories(model_dir / ".staging-999999999-deadbeef");
  const auto v2 = registry.register_model("main.demo.tiny", ckpt);
  EXPECT_EQ(v2.version, 2);
  EXPECT_EQ(names_in(v2.path), kModelFiles);
  EXPECT_EQ(names_in(model_dir), (std::set<std::string>{"1", "2"}));

  // Bad folders fail before anything is written.
  fs::create_directories(tmp / "empty");
  EXPECT_NE(error_of([&] { registry.register_model("main.demo.other", tmp / "empty"); }).find("no config.json"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(tmp / "registry" / "main" / "demo" / "other" / "1"));
}

TEST(ModelRegistryStorage, DeleteRemovesTheVersionsAndTheirFiles) {
  TempDir tmp;
  const auto db_file = tmp / "tessera.db";
  ModelRegistry registry(std::make_shared<Database>(db_file));
  const auto ckpt = make_checkpoint(tmp / "ckpt");
  const auto v1 = registry.register_model("main.demo.tiny", ckpt);
  const auto v2 = registry.register_model("main.demo.tiny", ckpt);
  const auto v3 = registry.register_model("main.demo.tiny", ckpt);
  const auto other = registry.register_model("main.demo.other", ckpt);

  const auto gone = registry.delete_model("main.demo.tiny", 2);
  ASSERT_EQ(gone.size(), 1u);
  EXPECT_EQ(gone[0].version, 2);
  EXPECT_FALSE(fs::exists(v2.path));
  EXPECT_TRUE(fs::exists(fs::path(v1.path) / "model.safetensors"));
  EXPECT_TRUE(fs::exists(fs::path(v3.path) / "model.safetensors"));
  EXPECT_EQ(registry.versions("main.demo.tiny").size(), 2u);
  EXPECT_FALSE(registry.get("main.demo.tiny", 2));
  EXPECT_NE(error_of([&] { registry.delete_model("main.demo.tiny", 2); }).find("has no version 2"), std::string::npos);
  // The next version follows the highest one left.
  EXPECT_EQ(registry.register_model("main.demo.tiny", ckpt).version, 4);

  const auto all = registry.delete_model("main.demo.tiny");
  EXPECT_EQ(all.size(), 3u);
  EXPECT_FALSE(fs::exists(tmp / "registry" / "main" / "demo" / "tiny")) << "the empty model folder goes too";
  EXPECT_TRUE(fs::exists(other.path));
  EXPECT_FALSE(registry.get("main.demo.tiny"));
  EXPECT_NE(error_of([&] { registry.delete_model("main.demo.tiny"); }).find("no registered model"), std::string::npos);
  EXPECT_EQ(read_file(ckpt / "model.safetensors"), std::string(64, '\1')) << "the source folder is untouched";

  // A row from before the registry stored files points at a folder of the user's: deleting
  // the row leaves that folder alone.
  exec_sql(db_file,
           "INSERT INTO registered_models (name, version, path, created_ms) VALUES ('main.demo.old', 1, '" +
               ckpt.string() + "', 1);");
  ASSERT_TRUE(registry.get("main.demo.old"));
  EXPECT_TRUE(registry.get("main.demo.old")->lineage.empty());
  registry.delete_model("main.demo.old");
  EXPECT_TRUE(fs::exists(ckpt / "model.safetensors"));
}

TEST(ModelRegistryStorage, RegistrationsAtOnceGetTheirOwnVersionsAndFolders) {
  TempDir tmp;
  const auto ckpt = make_checkpoint(tmp / "ckpt");
  // Separate connections, as separate processes would have.
  std::vector<std::thread> threads;
  std::vector<int64_t> versions(6, 0);
  for (size_t i = 0; i < versions.size(); ++i)
    threads.emplace_back([&, i] {
      ModelRegistry registry(std::make_shared<Database>(tmp / "tessera.db"));
      versions[i] = registry.register_model("main.demo.tiny", ckpt).version;
    });
  for (auto& t : threads) t.join();
  std::sort(versions.begin(), versions.end());
  EXPECT_EQ(versions, (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
  const auto model_dir = tmp / "registry" / "main" / "demo" / "tiny";
  EXPECT_EQ(names_in(model_dir), (std::set<std::string>{"1", "2", "3", "4", "5", "6"}));
  for (int v = 1; v <= 6; ++v) EXPECT_EQ(names_in(model_dir / std::to_string(v)), kModelFiles) << v;
}

TEST(ModelRegistryStorage, RowsFromSchemaTwoGetAnEmptyLineage) {
  TempDir tmp;
  const auto file = tmp / "tessera.db";
  exec_sql(file,
           "CREATE TABLE registered_models (name TEXT NOT NULL, version INTEGER NOT NULL, path TEXT NOT NULL,"
           " source_run_id TEXT NOT NULL DEFAULT '', description TEXT NOT NULL DEFAULT '',"
           " created_ms INTEGER NOT NULL, PRIMARY KEY (name, version));"
           "INSERT INTO registered_models (name, version, path, created_ms) VALUES ('a.b.c', 1, '/somewhere', 7);"
           // Stand-ins for the other tables of version 2, which later migrations alter.
           "CREATE TABLE api_tokens (id INTEGER PRIMARY KEY); CREATE TABLE runs (id TEXT PRIMARY KEY);"
           "PRAGMA user_version = 2;");
  auto db = std::make_shared<Database>(file);
  EXPECT_EQ(db->schema_version(), Database::latest_schema_version());
  const auto m = ModelRegistry(db).get("a.b.c");
  ASSERT_TRUE(m);
  EXPECT_EQ(m->path, "/somewhere");
  EXPECT_TRUE(m->lineage.empty());
  EXPECT_TRUE(m->files.empty());
}

TEST(ModelLineage, RoundTripsThroughTheRegistry) {
  TempDir tmp;
  ModelRegistry registry(std::make_shared<Database>(tmp / "tessera.db"));
  ModelLineage l;
  l.base_model = "random init of dbrx-tiny";
  l.task = "pretrain";
  l.data_paths = {"/data/train", "/data/eval.txt"};
  l.data_sha256 = std::string(64, 'a');
  l.hyperparameters = {{"lr", 0.0006}, {"global_batch_size", 8}, {"schedule", "cosine"}};
  l.metrics = {{"train_loss", 2.5}, {"eval_loss", 2.75}};
  const auto m = registry.register_model("main.demo.tiny", make_checkpoint(tmp / "ckpt"), "pretrain-x-abcdef", "", l);
  EXPECT_EQ(m.lineage.run_id, "pretrain-x-abcdef") << "the run id comes from the source run";
  const auto back = registry.get("main.demo.tiny")->lineage;
  EXPECT_EQ(back.base_model, l.base_model);
  EXPECT_EQ(back.task, "pretrain");
  EXPECT_EQ(back.data_paths, l.data_paths);
  EXPECT_EQ(back.data_sha256, l.data_sha256);
  EXPECT_EQ(back.hyperparameters, l.hyperparameters);
  EXPECT_EQ(back.metrics, l.metrics);
  EXPECT_EQ(back.run_id, "pretrain-x-abcdef");
  EXPECT_EQ(back.to_json(), ModelLineage::from_json(back.to_json()).to_json());

  // The other way round: a lineage with a run id fills in the source run.
  ModelLineage only_run;
  only_run.run_id = "ft-tiny-123456";
  EXPECT_EQ(registry.register_model("main.demo.tiny", tmp / "ckpt", "", "", only_run).source_run_id, "ft-tiny-123456");

  // Empty fields are left out; wrong types are errors naming the key.
  EXPECT_EQ(ModelLineage{}.to_json(), json::object());
  EXPECT_TRUE(ModelLineage{}.empty());
  EXPECT_NE(error_of([] { ModelLineage::from_json(json{{"task", 3}}); }).find("'task' must be a string"), std::string::npos);
  EXPECT_NE(error_of([] { ModelLineage::from_json(json{{"data_paths", "x"}}); }).find("'data_paths'"), std::string::npos);
  EXPECT_NE(error_of([] { ModelLineage::from_json(json{{"metrics", json::array()}}); }).find("'metrics' must be a JSON object"),
            std::string::npos);
  EXPECT_NE(error_of([] { ModelLineage::from_json(json::array()); }).find("expected a JSON object"), std::string::npos);
}

TEST(DataHash, IsStableAndFollowsNamesAndBytes) {
  TempDir tmp;
  fs::create_directories(tmp / "one" / "sub");
  write_file(tmp / "one" / "a.txt", "hello\n");
  write_file(tmp / "one" / "sub" / "b.txt", "world");
  write_file(tmp / "one" / ".cache", "ignored");
  // Pinned: SHA-256 over, for each file by name, name NUL size(le64) bytes.
  const std::string expected = "f99d9cca413a8d29c335184fb43bc9ee87d593ce3f59ea800f4a1cd12871a790";
  EXPECT_EQ(hash_data_files({tmp / "one"}), expected);
  EXPECT_EQ(hash_data_files({tmp / "one"}), expected) << "the same files, the same hash";

  // A copy elsewhere hashes the same; the order of the paths does not matter.
  fs::copy(tmp / "one", tmp / "two", fs::copy_options::recursive);
  fs::remove(tmp / "two" / ".cache");
  EXPECT_EQ(hash_data_files({tmp / "two"}), expected);
  write_file(tmp / "x.txt", "x");
  EXPECT_EQ(hash_data_files({tmp / "one", tmp / "x.txt"}), hash_data_files({tmp / "x.txt", tmp / "one"}));
  EXPECT_NE(hash_data_files({tmp / "one", tmp / "x.txt"}), expected);

  // One byte, a rename, or moving bytes between files changes it.
  write_file(tmp / "two" / "a.txt", "hellO\n");
  EXPECT_NE(hash_data_files({tmp / "two"}), expected);
  write_file(tmp / "two" / "a.txt", "hello\n");
  EXPECT_EQ(hash_data_files({tmp / "two"}), expected);
  fs::rename(tmp / "two" / "a.txt", tmp / "two" / "c.txt");
  EXPECT_NE(hash_data_files({tmp / "two"}), expected);
  fs::rename(tmp / "two" / "c.txt", tmp / "two" / "a.txt");
  write_file(tmp / "two" / "a.txt", "hello\nw");
  write_file(tmp / "two" / "sub" / "b.txt", "orld");
  EXPECT_NE(hash_data_files({tmp / "two"}), expected);

  const std::string missing = error_of([&] { hash_data_files({tmp / "nope"}); });
  EXPECT_NE(missing.find((tmp / "nope").string() + ": no such file or folder"), std::string::npos) << missing;
}

// ---- the commands ----------------------------------------------------------------------------

namespace {
struct RegistryHome {
  TempDir home;
  ScopedEnv env{"TESSERA_HOME", home.path().string()};
};
}  // namespace

TEST(ModelsCli, RegisterShowAndDelete) {
  RegistryHome h;
  const auto ckpt = make_checkpoint(h.home / "ckpt");
  fs::create_directories(h.home / "data");
  write_file(h.home / "data" / "a.txt", "hello\n");
  auto reg = run_tessera("models register main.demo.tiny --path '" + ckpt.string() +
                         "' --description 'made by hand' --task chat-completion --base-model main.demo.base/1 --data '" +
                         (h.home / "data").string() + "'");
  ASSERT_EQ(reg.exit_code, 0) << reg.err;
  const auto stored = h.home / "registry" / "main" / "demo" / "tiny" / "1";
  EXPECT_NE(reg.out.find("registered main.demo.tiny version 1 (4 files"), std::string::npos) << reg.out;
  EXPECT_NE(reg.out.find(stored.string()), std::string::npos) << reg.out;
  ASSERT_EQ(run_tessera("models register main.demo.tiny --path '" + ckpt.string() + "'").exit_code, 0);

  auto show = run_tessera("models show main.demo.tiny/1");
  ASSERT_EQ(show.exit_code, 0) << show.err;
  for (const std::string& want : std::vector<std::string>{"Model main.demo.tiny version 1 (of 2)", "made by hand", "registered by hand", "task:         chat-completion",
        "base model:   main.demo.base/1", (h.home / "data").string(), "data sha256:  " + hash_data_files({h.home / "data"}),
        "Files (4,", "model.safetensors", "64 B", "Versions:"})
    EXPECT_NE(show.out.find(want), std::string::npos) << want << "\n" << show.out;
  EXPECT_EQ(show.out.find("optimizer"), std::string::npos) << show.out;

  const auto j = json::parse(run_tessera("models show --json main.demo.tiny").out);
  EXPECT_EQ(j["version"], 2) << "no version: the latest";
  EXPECT_EQ(j["all_versions"], json::array({2, 1}));
  EXPECT_EQ(j["files"].size(), 4u);
  EXPECT_EQ(j["lineage"], json::object());
  const auto j1 = json::parse(run_tessera("models show --json main.demo.tiny/1").out);
  EXPECT_EQ(j1["lineage"]["task"], "chat-completion");
  EXPECT_EQ(j1["path"], stored.string());

  for (const auto& [cmd, want] : std::vector<std::pair<std::string, std::string>>{
           {"models show main.demo.tiny/9", "error: model 'main.demo.tiny' has no version 9"},
           {"models show main.demo.none", "error: no registered model 'main.demo.none'"},
           {"models show tiny", "expected three parts"},
           {"models delete main.demo.tiny/x --yes", "positive number"},
           {"models register main.demo.tiny --path '" + (h.home / "nope").string() + "'", "not a folder"},
           {"models register main.demo.tiny --path '" + ckpt.string() + "' --data /no/such/data",
            "/no/such/data: no such file or folder"}}) {
    auto r = run_tessera(cmd);
    EXPECT_EQ(r.exit_code, 2) << cmd;
    EXPECT_NE(r.err.find(want), std::string::npos) << cmd << ": " << r.err;
  }

  // Not on a terminal, delete refuses without --yes and keeps everything.
  auto refused = run_tessera("models delete main.demo.tiny/1");
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_NE(refused.err.find("refusing without --yes"), std::string::npos) << refused.err;
  EXPECT_TRUE(fs::exists(stored / "model.safetensors"));

  auto one = run_tessera("models delete --yes main.demo.tiny/1");
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_EQ(one.out, "deleted main.demo.tiny/1\n");
  EXPECT_FALSE(fs::exists(stored));
  EXPECT_EQ(json::parse(run_tessera("models list --all --json").out).size(), 1u);
  auto all = run_tessera("models delete main.demo.tiny -y");
  ASSERT_EQ(all.exit_code, 0) << all.err;
  EXPECT_EQ(all.out, "deleted main.demo.tiny/2\n");
  EXPECT_NE(run_tessera("models list").out.find("no registered models"), std::string::npos);
  EXPECT_TRUE(fs::exists(ckpt / "model.safetensors"));
}

// ---- serving a registered model ---------------------------------------------------------------

TEST(ServerConfigRegistry, NamesARegisteredModel) {
  TempDir tmp;
  using server::registry_reference;
  EXPECT_EQ(registry_reference("registry:main.demo.tiny"), "main.demo.tiny");
  EXPECT_EQ(registry_reference("registry:main.demo.tiny/3"), "main.demo.tiny/3");
  EXPECT_EQ(registry_reference("main.demo.tiny"), "main.demo.tiny") << "a bare name that is not a path";
  EXPECT_EQ(registry_reference("main.demo.tiny/2"), "main.demo.tiny/2");
  EXPECT_EQ(registry_reference("smollm2-135m-instruct"), std::nullopt);
  EXPECT_EQ(registry_reference("/models/x.gguf"), std::nullopt);
  // A folder with a three-part name is the folder.
  const auto dotted = tmp / "a.b.c";
  fs::create_directories(dotted);
  EXPECT_EQ(registry_reference(dotted.string()), std::nullopt);

  write_file(tmp / "serve.yaml", R"(endpoints:
  - name: follows
    kind: chat
    model: registry:main.demo.tiny
    reload_interval_s: 0.5
    wait_for_registration: true
  - name: pinned
    kind: completion
    model: registry:main.demo.tiny/2
)");
  const auto c = server::ServerConfig::load(tmp / "serve.yaml");
  EXPECT_EQ(c.endpoints[0].model, "registry:main.demo.tiny");
  EXPECT_DOUBLE_EQ(c.endpoints[0].reload_interval_s, 0.5);
  EXPECT_DOUBLE_EQ(c.endpoints[1].reload_interval_s, 10.0);
  EXPECT_TRUE(c.endpoints[0].wait_for_registration);
  EXPECT_FALSE(c.endpoints[1].wait_for_registration);

  for (const auto& [model, want] : std::vector<std::pair<std::string, std::string>>{
           {"registry:tiny", "endpoint 'x': model: model name 'tiny': expected three parts"},
           {"registry:main.demo.tiny/0", "the version after '/' must be a positive number"}}) {
    write_file(tmp / "bad.yaml", "endpoints:\n  - {name: x, kind: chat, model: '" + model + "'}\n");
    const std::string message = error_of([&] { server::ServerConfig::load(tmp / "bad.yaml"); });
    EXPECT_NE(message.find(want), std::string::npos) << message;
    EXPECT_NE(message.find((tmp / "bad.yaml").string()), std::string::npos) << message;
  }
  write_file(tmp / "bad.yaml", "endpoints:\n  - {name: x, kind: image, model: 'registry:a.b.c'}\n");
  EXPECT_NE(error_of([&] { server::ServerConfig::load(tmp / "bad.yaml"); }).find("not image pipelines"), std::string::npos);
  write_file(tmp / "bad.yaml", "endpoints:\n  - {name: x, kind: chat, model: a.b.c, reload_interval_s: -1}\n");
  EXPECT_NE(error_of([&] { server::ServerConfig::load(tmp / "bad.yaml"); }).find("endpoints.x.reload_interval_s: must be between 0"),
            std::string::npos);
  for (const auto& [line, want] : std::vector<std::pair<std::string, std::string>>{
           {"model: a.b.c, wait_for_registration: true", "only for a model named registry:"},
           {"model: 'registry:a.b.c', wait_for_registration: maybe", "expected true or false"}}) {
    write_file(tmp / "bad.yaml", "endpoints:\n  - {name: x, kind: chat, " + line + "}\n");
    const std::string message = error_of([&] { server::ServerConfig::load(tmp / "bad.yaml"); });
    EXPECT_NE(message.find("endpoints.x.wait_for_registration: " + want), std::string::npos) << message;
  }
}
