#include <algorithm>
#include <chrono>
#include <charconv>
#include <memory>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "store/database.h"
#include "store/time_spec.h"
#include "store/token_store.h"
#include "store/usage_store.h"

namespace tessera::cli {

namespace {

std::optional<int64_t> as_id(const std::string& key) {
  int64_t id = 0;
  const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
  if (ec != std::errc() || end != key.data() + key.size() || id <= 0) return std::nullopt;
  return id;
}

// The token id that --token means. Usage of a revoked token still counts, so revoked tokens
// match too; when a name was reused, the active token of that name is the one meant.
int64_t resolve_token(const TokenStore& tokens, const std::string& key) {
  const auto matches = tokens.find(key);
  if (matches.empty()) {
    // Usage rows may name a token that this file does not hold (no foreign key): an id is taken as is.
    if (auto id = as_id(key)) return *id;
    fail("--token: no token matches '{}'", key);
  }
  if (matches.size() == 1) return matches.front().id;
  std::vector<const ApiToken*> active;
  for (const auto& t : matches)
    if (t.active()) active.push_back(&t);
  if (active.size() == 1) return active.front()->id;
  std::vector<std::string> ids;
  for (const auto& t : matches) ids.push_back(std::to_string(t.id));
  fail("--token: '{}' matches tokens {}; give the id", key, fmt::join(ids, ", "));
}

nlohmann::json summary_json(const UsageSummary& u) {
  return {{"token_id", u.token_id ? nlohmann::json(*u.token_id) : nlohmann::json(nullptr)},
          {"token_name", u.token_name},
          {"endpoint", u.endpoint},
          {"requests", u.requests},
          {"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"images", u.images},
          {"cost_usd", u.cost_usd}};
}

std::string token_label(const UsageSummary& u) {
  if (!u.token_id) return "-";
  return u.token_name.empty() ? fmt::format("#{}", *u.token_id) : fmt::format("{} (#{})", u.token_name, *u.token_id);
}

}  // namespace

void register_usage(CLI::App& app) {
  struct Options {
    std::string db, since, until, token, endpoint;
    bool json = false;
  };
  auto opts = std::make_shared<Options>();
  auto* usage = app.add_subcommand("usage", "Requests, tokens, images and cost per API token and endpoint");
  usage->add_option("--since", opts->since, "Start (inclusive): 2026-11-26, 2026-11-26T10:00:00Z, or back from now: 30m, 1h, 7d");
  usage->add_option("--until", opts->until, "End (exclusive), same forms as --since");
  usage->add_option("--token", opts->token, "Only this token (id, name or prefix)");
  usage->add_option("--endpoint", opts->endpoint, "Only this endpoint, e.g. /v1/chat/completions");
  usage->add_flag("--json", opts->json, "Print JSON");
  usage->add_option("--db", opts->db, "Database file (default: $TESSERA_DATA/tessera.db or ~/.local/share/tessera/tessera.db)");
  usage->callback([opts] {
    const int64_t now_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    std::optional<int64_t> since, until, token_id;
    std::optional<std::string> endpoint;
    if (!opts->since.empty()) since = parse_time_spec(opts->since, now_ms, "--since");
    if (!opts->until.empty()) until = parse_time_spec(opts->until, now_ms, "--until");
    if (since && until && *since > *until) fail("--since is after --until");
    if (!opts->endpoint.empty()) endpoint = opts->endpoint;

    auto db = std::make_shared<Database>(opts->db.empty() ? default_database_file() : std::filesystem::path(opts->db));
    if (!opts->token.empty()) token_id = resolve_token(TokenStore(db), opts->token);
    const auto rows = UsageStore(db).summarize(since, until, token_id, endpoint);

    UsageSummary total;
    for (const auto& u : rows) {
      total.requests += u.requests;
      total.prompt_tokens += u.prompt_tokens;
      total.completion_tokens += u.completion_tokens;
      total.images += u.images;
      total.cost_usd += u.cost_usd;
    }
    if (opts->json) {
      nlohmann::json out = {{"since_ms", since ? nlohmann::json(*since) : nlohmann::json(nullptr)},
                            {"until_ms", until ? nlohmann::json(*until) : nlohmann::json(nullptr)},
                            {"rows", nlohmann::json::array()}};
      for (const auto& u : rows) out["rows"].push_back(summary_json(u));
      nlohmann::json t = summary_json(total);
      t.erase("token_id");
      t.erase("token_name");
      t.erase("endpoint");
      out["total"] = t;
      fmt::print("{}\n", out.dump(2));
      return;
    }
    size_t token_width = 5, endpoint_width = 8;
    for (const auto& u : rows) {
      token_width = std::max(token_width, token_label(u).size());
      endpoint_width = std::max(endpoint_width, u.endpoint.size());
    }
    const auto row = [&](const std::string& token, const std::string& ep, const std::string& requests,
                         const std::string& prompt, const std::string& completion, const std::string& images,
                         const std::string& cost) {
      fmt::print("{:<{}}  {:<{}}  {:>9}  {:>12}  {:>12}  {:>7}  {:>12}\n", token, token_width, ep, endpoint_width,
                 requests, prompt, completion, images, cost);
    };
    row("TOKEN", "ENDPOINT", "REQUESTS", "PROMPT", "COMPLETION", "IMAGES", "COST USD");
    const auto line = [&](const std::string& token, const UsageSummary& u) {
      row(token, u.endpoint, std::to_string(u.requests), std::to_string(u.prompt_tokens),
          std::to_string(u.completion_tokens), std::to_string(u.images), fmt::format("{:.4f}", u.cost_usd));
    };
    for (const auto& u : rows) line(token_label(u), u);
    line("TOTAL", total);
  });
}

}  // namespace tessera::cli
