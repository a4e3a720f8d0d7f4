// The SQLite store: API tokens, usage metering, the shared database file, and the `tessera
// tokens` / `tessera usage` commands over it.
#include <gtest/gtest.h>

#include <openssl/evp.h>
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/paths.h"
#include "store/database.h"
#include "store/time_spec.h"
#include "store/token_store.h"
#include "store/usage_store.h"
#include "test_util.h"

using namespace tessera;
using namespace tessera::testing;

namespace {

std::shared_ptr<Database> open_db(const std::filesystem::path& file) { return std::make_shared<Database>(file); }

std::string sha256_bytes(const std::string& data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  EVP_Digest(data.data(), data.size(), digest, &size, EVP_sha256(), nullptr);
  return std::string(reinterpret_cast<const char*>(digest), size);
}

// Everything SQLite may have written for a database: the main file and its write-ahead log.
std::string all_bytes(const std::filesystem::path& file) {
  return read_file(file) + read_file(file.string() + "-wal");
}

UsageRecord usage(int64_t ts, std::optional<int64_t> token, const std::string& endpoint, int64_t prompt,
                  int64_t completion, int64_t images = 0, double cost = 0) {
  UsageRecord r;
  r.timestamp_ms = ts;
  r.token_id = token;
  r.endpoint = endpoint;
  r.kind = images ? "image" : "chat";
  r.prompt_tokens = prompt;
  r.completion_tokens = completion;
  r.images = images;
  r.cost_usd = cost;
  r.request_id = "req-" + std::to_string(ts);
  return r;
}

void set_user_version(const std::filesystem::path& file, int version) {
  sqlite3* raw = nullptr;
  ASSERT_EQ(sqlite3_open(file.c_str(), &raw), SQLITE_OK);
  const std::string sql = "PRAGMA user_version = " + std::to_string(version);
  EXPECT_EQ(sqlite3_exec(raw, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(raw);
}

}  // namespace

// ---- Database -----------------------------------------------------------------------------

TEST(Store, OpenCreatesTheFolderAndMigratesToTheLatestSchema) {
  TempDir tmp;
  const auto file = tmp / "a/b/tessera.db";
  {
    Database db(file);
    EXPECT_EQ(db.schema_version(), Database::latest_schema_version());
    EXPECT_GE(Database::latest_schema_version(), 1);
  }
  EXPECT_TRUE(std::filesystem::exists(file));
  // Reopening applies nothing twice and keeps the data.
  {
    TokenStore(open_db(file)).create("kept");
  }
  Database again(file);
  EXPECT_EQ(again.schema_version(), Database::latest_schema_version());
  EXPECT_EQ(TokenStore(open_db(file)).list().size(), 1u);
  // WAL is the journal mode the file keeps.
  const std::string header = read_file(file).substr(0, 20);
  ASSERT_EQ(header.size(), 20u);
  EXPECT_EQ(header[18], 2) << "file format write version 2 means WAL";
}

TEST(Store, AFileThatIsNotADatabaseIsAnErrorAndStaysUntouched) {
  TempDir tmp;
  const auto file = tmp / "notes.db";
  std::string garbage;
  for (int i = 0; i < 200; ++i) garbage += "this is not a database, just notes. ";
  write_file(file, garbage);
  const std::string message = error_of([&] { Database db(file); });
  EXPECT_NE(message.find(file.string()), std::string::npos) << message;
  EXPECT_NE(message.find("not a SQLite database"), std::string::npos) << message;
  EXPECT_EQ(message.find('\n'), std::string::npos);
  EXPECT_EQ(read_file(file), garbage);
}

TEST(Store, ANewerSchemaVersionIsRefused) {
  TempDir tmp;
  const auto file = tmp / "tessera.db";
  { Database db(file); }
  set_user_version(file, Database::latest_schema_version() + 1);
  const std::string message = error_of([&] { Database db(file); });
  EXPECT_NE(message.find(file.string()), std::string::npos) << message;
  EXPECT_NE(message.find("newer"), std::string::npos) << message;
}

TEST(Store, DataDirFollowsTheEnvironment) {
  ScopedEnv data("TESSERA_DATA", "/srv/tessera-data");
  EXPECT_EQ(data_dir(), std::filesystem::path("/srv/tessera-data"));
  {
    ScopedEnv no_data("TESSERA_DATA", nullptr);
    ScopedEnv xdg("XDG_DATA_HOME", "/xdg");
    EXPECT_EQ(data_dir(), std::filesystem::path("/xdg/tessera"));
    ScopedEnv no_xdg("XDG_DATA_HOME", nullptr);
    ScopedEnv home("HOME", "/home/someone");
    EXPECT_EQ(data_dir(), std::filesystem::path("/home/someone/.local/share/tessera"));
    EXPECT_EQ(default_database_file(), std::filesystem::path("/home/someone/.local/share/tessera/tessera.db"));
  }
}

// ---- Tokens -------------------------------------------------------------------------------

TEST(Store, TokenLifecycleAndTheSecretIsNeverStored) {
  TempDir tmp;
  const auto file = tmp / "tessera.db";
  TokenStore tokens(open_db(file));
  const auto [token, secret] = tokens.create("ci", "nightly jobs");
  EXPECT_EQ(secret.size(), 44u);
  EXPECT_TRUE(secret.starts_with("tsr-")) << secret;
  EXPECT_TRUE(secret.starts_with(token.prefix));
  EXPECT_LT(token.prefix.size(), 16u);
  EXPECT_EQ(token.name, "ci");
  EXPECT_EQ(token.comment, "nightly jobs");
  EXPECT_TRUE(token.active());

  const auto ok = tokens.verify(secret);
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->id, token.id);
  EXPECT_EQ(ok->name, "ci");
  ASSERT_TRUE(ok->last_used_at);

  std::string wrong = secret;
  wrong.back() = wrong.back() == '0' ? '1' : '0';
  EXPECT_FALSE(tokens.verify(wrong));
  EXPECT_FALSE(tokens.verify(""));
  EXPECT_FALSE(tokens.verify("Bearer " + secret));
  EXPECT_FALSE(tokens.verify(token.prefix));

  // The hash is there (so the scan does read the data) and the secret is not.
  const std::string bytes = all_bytes(file);
  EXPECT_NE(bytes.find(sha256_bytes(secret)), std::string::npos);
  EXPECT_EQ(bytes.find(secret), std::string::npos);
  EXPECT_EQ(bytes.find(secret.substr(4)), std::string::npos);

  const ApiToken revoked = tokens.revoke("ci");
  EXPECT_EQ(revoked.id, token.id);
  EXPECT_TRUE(revoked.revoked_at);
  EXPECT_FALSE(tokens.verify(secret));
  EXPECT_TRUE(tokens.list().empty());
  ASSERT_EQ(tokens.list(true).size(), 1u);
  EXPECT_FALSE(tokens.list(true)[0].active());

  const std::string twice = error_of([&] { tokens.revoke("ci"); });
  EXPECT_NE(twice.find("already revoked"), std::string::npos) << twice;
}

TEST(Store, AdminTokensAreMarkedAndOnlyWhenAsked) {
  TempDir tmp;
  TokenStore tokens(open_db(tmp / "tessera.db"));
  const auto [user, user_secret] = tokens.create("user");
  const auto [admin, admin_secret] = tokens.create("ops", "", /*admin=*/true);
  EXPECT_FALSE(user.admin);
  EXPECT_TRUE(admin.admin);
  ASSERT_TRUE(tokens.verify(admin_secret));
  EXPECT_TRUE(tokens.verify(admin_secret)->admin);
  EXPECT_FALSE(tokens.verify(user_secret)->admin);
  const auto all = tokens.list();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_FALSE(all[0].admin);
  EXPECT_TRUE(all[1].admin);
  EXPECT_TRUE(tokens.find("ops").at(0).admin);
}

TEST(Store, SecretsAreRandom) {
  TempDir tmp;
  TokenStore tokens(open_db(tmp / "tessera.db"));
  std::set<std::string> secrets;
  for (int i = 0; i < 20; ++i) secrets.insert(tokens.create("t" + std::to_string(i)).second);
  EXPECT_EQ(secrets.size(), 20u);
}

TEST(Store, NamesAreUniqueAmongActiveTokensAndChecked) {
  TempDir tmp;
  TokenStore tokens(open_db(tmp / "tessera.db"));
  const auto first = tokens.create("alice").first;
  const std::string dup = error_of([&] { tokens.create("alice"); });
  EXPECT_NE(dup.find("'alice' is already used"), std::string::npos) << dup;
  EXPECT_EQ(tokens.list().size(), 1u);
  // Once revoked, the name is free again; the old token stays listed with --all.
  tokens.revoke(std::to_string(first.id));
  const auto second = tokens.create("alice").first;
  EXPECT_NE(second.id, first.id);
  EXPECT_EQ(tokens.list().size(), 1u);
  EXPECT_EQ(tokens.list(true).size(), 2u);
  // Revoking by the reused name means the active one.
  EXPECT_EQ(tokens.revoke("alice").id, second.id);

  EXPECT_NE(error_of([&] { tokens.create(""); }).find("empty"), std::string::npos);
  EXPECT_NE(error_of([&] { tokens.create(std::string(101, 'x')); }).find("too long"), std::string::npos);
  EXPECT_EQ(error_of([&] { tokens.create(std::string(100, 'x')); }), "");
  EXPECT_NE(error_of([&] { tokens.create("a\nb"); }).find("control"), std::string::npos);
  EXPECT_NE(error_of([&] { tokens.create("42"); }).find("digits"), std::string::npos);
  EXPECT_NE(error_of([&] { tokens.create("tsr-abc"); }).find("tsr-"), std::string::npos);
}

TEST(Store, RevokeByIdNameOrPrefixAndRefusesAmbiguity) {
  TempDir tmp;
  TokenStore tokens(open_db(tmp / "tessera.db"));
  // 17 tokens and 16 hex digits: two of them share the first digit after "tsr-".
  std::map<char, std::vector<ApiToken>> by_digit;
  for (int i = 0; i < 17; ++i) {
    auto t = tokens.create("t" + std::to_string(i)).first;
    by_digit[t.prefix[4]].push_back(t);
  }
  auto shared = std::find_if(by_digit.begin(), by_digit.end(), [](const auto& kv) { return kv.second.size() > 1; });
  ASSERT_NE(shared, by_digit.end());
  const std::string key = std::string("tsr-") + shared->first;
  const std::string ambiguous = error_of([&] { tokens.revoke(key); });
  EXPECT_NE(ambiguous.find("ambiguous"), std::string::npos) << ambiguous;
  EXPECT_EQ(tokens.list().size(), 17u) << "nothing revoked";

  // Full prefixes are unique; once only one token of the group is active, the short key names it.
  const auto& group = shared->second;
  for (size_t i = 0; i + 1 < group.size(); ++i) EXPECT_EQ(tokens.revoke(group[i].prefix).id, group[i].id);
  EXPECT_EQ(tokens.revoke(key).id, group.back().id);
  // By name and by id, among tokens outside that group.
  std::vector<ApiToken> others;
  for (const auto& t : tokens.list())
    if (t.prefix[4] != shared->first) others.push_back(t);
  ASSERT_GE(others.size(), 2u);
  EXPECT_EQ(tokens.revoke(others[0].name).id, others[0].id);
  const auto found = tokens.find(others[1].name);
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(tokens.revoke(std::to_string(found[0].id)).name, others[1].name);
  EXPECT_EQ(tokens.list().size(), 17u - group.size() - 2);

  const std::string none = error_of([&] { tokens.revoke("nobody"); });
  EXPECT_NE(none.find("no token matches 'nobody'"), std::string::npos) << none;
  EXPECT_NE(error_of([&] { tokens.revoke("999"); }).find("no token matches"), std::string::npos);
  EXPECT_NE(error_of([&] { tokens.revoke(""); }), "");
}

TEST(Store, VerifyWritesLastUsedAtMostOnceAMinute) {
  TempDir tmp;
  int64_t now = 1'700'000'000;
  TokenStore tokens(open_db(tmp / "tessera.db"), [&] { return now; });
  const auto [token, secret] = tokens.create("svc");
  EXPECT_FALSE(tokens.list()[0].last_used_at);
  EXPECT_EQ(tokens.verify(secret)->last_used_at, now);
  const int64_t first = now;
  now += 30;
  EXPECT_EQ(tokens.verify(secret)->last_used_at, first);
  EXPECT_EQ(tokens.list()[0].last_used_at, first);
  now += 31;
  EXPECT_EQ(tokens.verify(secret)->last_used_at, now);
  EXPECT_EQ(tokens.list()[0].last_used_at, now);
}

// ---- Usage --------------------------------------------------------------------------------

TEST(Store, RequestCost) {
  const Prices p;
  EXPECT_DOUBLE_EQ(request_cost(p, 1'000'000, 0, 0), 0.75);
  EXPECT_DOUBLE_EQ(request_cost(p, 0, 1'000'000, 0), 2.25);
  EXPECT_DOUBLE_EQ(request_cost(p, 1000, 500, 0), (1000 * 0.75 + 500 * 2.25) / 1e6);
  EXPECT_DOUBLE_EQ(request_cost(p, 0, 0, 3), 0.18);
  EXPECT_DOUBLE_EQ(request_cost(Prices{2, 4, 0.5}, 500'000, 250'000, 2), 1.0 + 1.0 + 1.0);
  EXPECT_DOUBLE_EQ(request_cost(p, 0, 0, 0), 0.0);
}

TEST(Store, UsageSumsByTokenAndEndpointOverTimeRanges) {
  TempDir tmp;
  auto db = open_db(tmp / "tessera.db");
  TokenStore tokens(db);
  const int64_t alice = tokens.create("alice").first.id, bob = tokens.create("bob").first.id;
  UsageStore store(db);
  const std::string chat = "/v1/chat/completions", images = "/v1/images/generations";
  store.record(usage(1000, alice, chat, 10, 5, 0, 0.01));
  store.record(usage(2000, alice, chat, 20, 7, 0, 0.02));
  store.record(usage(3000, alice, images, 0, 0, 2, 0.12));
  store.record(usage(4000, bob, chat, 100, 50, 0, 0.5));
  store.record(usage(5000, std::nullopt, chat, 1, 1));
  store.flush();

  auto all = store.summarize(std::nullopt, std::nullopt);
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all[0].token_id, alice);
  EXPECT_EQ(all[0].token_name, "alice");
  EXPECT_EQ(all[0].endpoint, chat);
  EXPECT_EQ(all[0].requests, 2);
  EXPECT_EQ(all[0].prompt_tokens, 30);
  EXPECT_EQ(all[0].completion_tokens, 12);
  EXPECT_NEAR(all[0].cost_usd, 0.03, 1e-12);
  EXPECT_EQ(all[1].endpoint, images);
  EXPECT_EQ(all[1].images, 2);
  EXPECT_EQ(all[2].token_name, "bob");
  EXPECT_EQ(all[2].prompt_tokens, 100);
  EXPECT_FALSE(all[3].token_id) << "requests without a token come last";
  EXPECT_EQ(all[3].token_name, "");

  // [start, end): 2000 is in, 4000 is out.
  auto mid = store.summarize(2000, 4000);
  ASSERT_EQ(mid.size(), 2u);
  EXPECT_EQ(mid[0].requests, 1);
  EXPECT_EQ(mid[0].prompt_tokens, 20);
  EXPECT_EQ(mid[1].images, 2);
  EXPECT_EQ(store.summarize(4000, std::nullopt).size(), 2u);
  EXPECT_EQ(store.summarize(std::nullopt, 1000).size(), 0u);
  EXPECT_EQ(store.summarize(std::nullopt, 1001).size(), 1u);

  auto only_bob = store.summarize(std::nullopt, std::nullopt, bob);
  ASSERT_EQ(only_bob.size(), 1u);
  EXPECT_EQ(only_bob[0].completion_tokens, 50);
  auto only_images = store.summarize(std::nullopt, std::nullopt, std::nullopt, images);
  ASSERT_EQ(only_images.size(), 1u);
  EXPECT_EQ(only_images[0].token_id, alice);
  EXPECT_TRUE(store.summarize(std::nullopt, std::nullopt, bob, images).empty());
}

TEST(Store, ConcurrentRecordsAreAllCounted) {
  TempDir tmp;
  auto db = open_db(tmp / "tessera.db");
  UsageStore store(db);
  constexpr int kThreads = 8, kEach = 1000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) store.record(usage(i, t, "/v1/completions", 3, 1 + t));
    });
  for (auto& th : threads) th.join();
  store.flush();
  const auto rows = store.summarize(std::nullopt, std::nullopt);
  ASSERT_EQ(rows.size(), static_cast<size_t>(kThreads));
  int64_t requests = 0, prompt = 0;
  for (const auto& r : rows) {
    EXPECT_EQ(r.requests, kEach);
    EXPECT_EQ(r.completion_tokens, kEach * (1 + *r.token_id));
    requests += r.requests;
    prompt += r.prompt_tokens;
  }
  EXPECT_EQ(requests, kThreads * kEach);
  EXPECT_EQ(prompt, 3 * kThreads * kEach);
}

TEST(Store, TheBackgroundFlusherAndTheDestructorWriteWithoutFlush) {
  TempDir tmp;
  const auto file = tmp / "tessera.db";
  auto reader = open_db(file);
  auto writer = open_db(file);
  {
    UsageStore store(writer);
    store.record(usage(1, std::nullopt, "/v1/completions", 7, 0));
    // Another connection sees it once the flusher has run, with no flush() call.
    UsageStore other(reader);
    int64_t seen = 0;
    for (int i = 0; i < 200 && seen == 0; ++i) {
      const auto rows = other.summarize(std::nullopt, std::nullopt);
      seen = rows.empty() ? 0 : rows[0].requests;
      if (!seen) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(seen, 1);
    for (int i = 0; i < 50; ++i) store.record(usage(2, std::nullopt, "/v1/completions", 1, 0));
  }
  // The destructor wrote the rest.
  const auto rows = UsageStore(reader).summarize(std::nullopt, std::nullopt);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].requests, 51);
  EXPECT_EQ(rows[0].prompt_tokens, 57);
}

TEST(Store, TwoConnectionsSeeEachOthersWrites) {
  TempDir tmp;
  const auto file = tmp / "tessera.db";
  auto server_db = open_db(file);
  auto cli_db = open_db(file);
  TokenStore server(server_db), cli(cli_db);
  // The CLI creates a token; the already-running server accepts it.
  const auto [token, secret] = cli.create("late");
  ASSERT_TRUE(server.verify(secret));
  // The server meters; the CLI reads the usage.
  UsageStore metering(server_db);
  metering.record(usage(10, token.id, "/v1/chat/completions", 4, 2));
  metering.flush();
  const auto rows = UsageStore(cli_db).summarize(std::nullopt, std::nullopt);
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].token_name, "late");
  // The CLI revokes; the server refuses from the next request on.
  cli.revoke("late");
  EXPECT_FALSE(server.verify(secret));
  // The server's last_used_at write is visible to the CLI.
  EXPECT_TRUE(cli.list(true)[0].last_used_at);
}

// ---- Time specs ---------------------------------------------------------------------------

TEST(Store, TimeSpecs) {
  const int64_t now = 1'800'000'000'000;
  EXPECT_EQ(parse_time_spec("2026-11-26", now, "--since"), 1'795'651'200'000);
  EXPECT_EQ(parse_time_spec("2026-11-26T10:00:00Z", now, "--since"), 1'795'651'200'000 + 36'000'000);
  EXPECT_EQ(parse_time_spec("2026-11-26 10:00", now, "--since"), 1'795'651'200'000 + 36'000'000);
  EXPECT_EQ(parse_time_spec("2026-11-26T12:00:00+02:00", now, "--since"), 1'795'651'200'000 + 36'000'000);
  EXPECT_EQ(parse_time_spec("2026-11-26T10:00:00.250Z", now, "--since"), 1'795'651'200'000 + 36'000'250);
  EXPECT_EQ(parse_time_spec("1970-01-01", now, "--since"), 0);
  EXPECT_EQ(parse_time_spec("2024-02-29", now, "--since"), 1'709'164'800'000);
  EXPECT_EQ(parse_time_spec("30m", now, "--since"), now - 30 * 60'000);
  EXPECT_EQ(parse_time_spec("1h", now, "--since"), now - 3'600'000);
  EXPECT_EQ(parse_time_spec("7d", now, "--since"), now - 7 * 86'400'000LL);
  EXPECT_EQ(parse_time_spec("now", now, "--until"), now);
  for (const char* bad : {"", "yesterday", "1x", "-1h", "h", "2026-13-01", "2023-02-29", "2026-11-26T24:00", "2026-11-26T10",
                          "2026-11-26Z", "26-11-2026", "2026-11-26T10:00:00+2"}) {
    const std::string message = error_of([&] { parse_time_spec(bad, now, "--since"); });
    EXPECT_NE(message.find("--since"), std::string::npos) << bad << ": " << message;
  }
  EXPECT_EQ(format_utc(1'795'651'200 + 36'000 + 62), "2026-11-26 10:01:02Z");
  EXPECT_EQ(format_utc(0), "1970-01-01 00:00:00Z");
}

// ---- The commands -------------------------------------------------------------------------

TEST(Store, TokensAndUsageCommandsRoundTrip) {
  TempDir tmp;
  const auto file = tmp / "data" / "tessera.db";
  const std::string db = " --db '" + file.string() + "'";

  auto created = run_tessera("tokens create ci --comment 'build bots'" + db);
  ASSERT_EQ(created.exit_code, 0) << created.err;
  std::string secret = created.out.substr(0, created.out.size() - 1);
  secret = secret.substr(secret.rfind('\n') + 1);
  EXPECT_EQ(secret.size(), 44u) << created.out;
  EXPECT_NE(created.err.find("cannot be shown again"), std::string::npos) << created.err;
  EXPECT_EQ(created.out.find("cannot be shown"), std::string::npos);

  auto json_created = run_tessera("tokens create web --json" + db);
  ASSERT_EQ(json_created.exit_code, 0) << json_created.err;
  const auto web = nlohmann::json::parse(json_created.out);
  EXPECT_EQ(web["name"], "web");
  EXPECT_TRUE(web["secret"].get<std::string>().starts_with(web["prefix"].get<std::string>()));

  // The library, as the server uses it, accepts the secret the command printed.
  int64_t ci_id = 0;
  {
    auto database = open_db(file);
    TokenStore tokens(database);
    const auto ok = tokens.verify(secret);
    ASSERT_TRUE(ok);
    EXPECT_EQ(ok->name, "ci");
    ci_id = ok->id;
    UsageStore metering(database);
    const int64_t now_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    metering.record(usage(now_ms - 1000, ci_id, "/v1/chat/completions", 100, 20, 0, request_cost({}, 100, 20, 0)));
    metering.record(usage(now_ms - 2000, ci_id, "/v1/chat/completions", 50, 10, 0, request_cost({}, 50, 10, 0)));
    metering.record(usage(now_ms - 3000, web["id"].get<int64_t>(), "/v1/images/generations", 0, 0, 1, 0.06));
    // Two days old: outside --since 1d.
    metering.record(usage(now_ms - 2 * 86'400'000LL, ci_id, "/v1/chat/completions", 1000, 0, 0, 1));
  }

  auto list = run_tessera("tokens list --json" + db);
  ASSERT_EQ(list.exit_code, 0) << list.err;
  const auto listed = nlohmann::json::parse(list.out);
  ASSERT_EQ(listed.size(), 2u);
  EXPECT_EQ(listed[0]["name"], "ci");
  EXPECT_EQ(listed[0]["comment"], "build bots");
  EXPECT_FALSE(listed[0]["last_used_at"].is_null());
  EXPECT_EQ(list.out.find(secret), std::string::npos);
  auto table = run_tessera("tokens list" + db);
  EXPECT_NE(table.out.find("PREFIX"), std::string::npos) << table.out;
  EXPECT_NE(table.out.find(secret.substr(0, 12)), std::string::npos) << table.out;

  auto recent = run_tessera("usage --since 1d --json" + db);
  ASSERT_EQ(recent.exit_code, 0) << recent.err;
  const auto u = nlohmann::json::parse(recent.out);
  ASSERT_EQ(u["rows"].size(), 2u) << recent.out;
  EXPECT_EQ(u["rows"][0]["token_name"], "ci");
  EXPECT_EQ(u["rows"][0]["requests"], 2);
  EXPECT_EQ(u["rows"][0]["prompt_tokens"], 150);
  EXPECT_EQ(u["rows"][1]["images"], 1);
  EXPECT_EQ(u["total"]["requests"], 3);
  EXPECT_NEAR(u["total"]["cost_usd"].get<double>(), request_cost({}, 150, 30, 0) + 0.06, 1e-12);
  auto everything = nlohmann::json::parse(run_tessera("usage --json" + db).out);
  EXPECT_EQ(everything["total"]["requests"], 4);
  auto by_token = nlohmann::json::parse(run_tessera("usage --token ci --endpoint /v1/chat/completions --json" + db).out);
  ASSERT_EQ(by_token["rows"].size(), 1u);
  EXPECT_EQ(by_token["rows"][0]["requests"], 3);
  EXPECT_EQ(by_token["rows"][0]["token_id"], ci_id);
  auto usage_table = run_tessera("usage --since 2020-01-01 --until 2100-01-01T00:00:00Z" + db);
  ASSERT_EQ(usage_table.exit_code, 0) << usage_table.err;
  EXPECT_NE(usage_table.out.find("TOTAL"), std::string::npos) << usage_table.out;
  EXPECT_NE(usage_table.out.find("ci (#"), std::string::npos) << usage_table.out;

  auto revoked = run_tessera("tokens revoke ci" + db);
  ASSERT_EQ(revoked.exit_code, 0) << revoked.err;
  EXPECT_NE(revoked.out.find("revoked token"), std::string::npos);
  EXPECT_FALSE(TokenStore(open_db(file)).verify(secret));
  EXPECT_EQ(nlohmann::json::parse(run_tessera("tokens list --json" + db).out).size(), 1u);
  EXPECT_EQ(nlohmann::json::parse(run_tessera("tokens list --all --json" + db).out).size(), 2u);
  // Usage of a revoked token is still reported under its name.
  EXPECT_EQ(nlohmann::json::parse(run_tessera("usage --token ci --json" + db).out)["total"]["requests"], 3);

  // Errors: one line, exit code 2.
  for (const std::string& bad : {"tokens revoke ci" + db, "tokens create web" + db, "usage --since yesterday" + db,
                                 "usage --token nobody" + db, "tokens create ''" + db}) {
    auto r = run_tessera(bad);
    EXPECT_EQ(r.exit_code, 2) << bad << "\n" << r.out << r.err;
    EXPECT_TRUE(r.err.starts_with("error: ")) << bad << ": " << r.err;
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << bad << ": " << r.err;
  }
  write_file(tmp / "junk.db", std::string(4096, 'x'));
  auto junk = run_tessera("tokens list --db '" + (tmp / "junk.db").string() + "'");
  EXPECT_EQ(junk.exit_code, 2);
  EXPECT_NE(junk.err.find("not a SQLite database"), std::string::npos) << junk.err;
}

TEST(Store, CommandsUseTheDataDirByDefault) {
  TempDir tmp;
  ScopedEnv data("TESSERA_DATA", (tmp / "state").c_str());
  auto r = run_tessera("tokens create x");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_TRUE(std::filesystem::exists(tmp / "state" / "tessera.db"));
  EXPECT_EQ(TokenStore(open_db(tmp / "state" / "tessera.db")).list().size(), 1u);
}
