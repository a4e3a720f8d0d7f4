#include <algorithm>
#include <cstdio>
#include <memory>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "store/database.h"
#include "store/time_spec.h"
#include "store/token_store.h"

namespace tessera::cli {

namespace {

nlohmann::json token_json(const ApiToken& t) {
  nlohmann::json j = {{"id", t.id},
                      {"name", t.name},
                      {"prefix", t.prefix},
                      {"created_at", t.created_at},
                      {"revoked_at", nullptr},
                      {"last_used_at", nullptr},
                      {"comment", t.comment},
                      {"admin", t.admin}};
  if (t.revoked_at) j["revoked_at"] = *t.revoked_at;
  if (t.last_used_at) j["last_used_at"] = *t.last_used_at;
  return j;
}

std::string time_or_dash(const std::optional<int64_t>& t) { return t ? format_utc(*t) : "-"; }

void print_table(const std::vector<ApiToken>& tokens) {
  size_t name_width = 4;
  for (const auto& t : tokens) name_width = std::max(name_width, t.name.size());
  const auto row = [&](const std::string& id, const std::string& name, const std::string& prefix,
                       const std::string& created, const std::string& used, const std::string& revoked,
                       const std::string& role, const std::string& comment) {
    std::string line = fmt::format("{:>4}  {:<{}}  {:<12}  {:<20}  {:<20}  {:<20}  {:<5}  {}", id, name, name_width,
                                   prefix, created, used, revoked, role, comment);
    line.erase(line.find_last_not_of(' ') + 1);
    fmt::print("{}\n", line);
  };
  row("ID", "NAME", "PREFIX", "CREATED", "LAST USED", "REVOKED", "ROLE", "COMMENT");
  for (const auto& t : tokens)
    row(std::to_string(t.id), t.name, t.prefix, format_utc(t.created_at), time_or_dash(t.last_used_at),
        time_or_dash(t.revoked_at), t.admin ? "admin" : "user", t.comment);
}

TokenStore open_tokens(const std::string& db) {
  return TokenStore(std::make_shared<Database>(db.empty() ? default_database_file() : std::filesystem::path(db)));
}

}  // namespace

void register_tokens(CLI::App& app) {
  struct Options {
    std::string db, name, comment, key;
    bool json = false, all = false, admin = false;
  };
  auto opts = std::make_shared<Options>();
  auto* tokens = app.add_subcommand("tokens", "Create, list and revoke API tokens for `tessera serve`");
  tokens->require_subcommand(1);
  const auto add_db = [&](CLI::App* cmd) {
    cmd->add_option("--db", opts->db, "Database file (default: $TESSERA_DATA/tessera.db or ~/.local/share/tessera/tessera.db)");
  };

  auto* create = tokens->add_subcommand("create", "Create a token and print its secret (shown only this once)");
  create->add_option("name", opts->name, "A name unique among active tokens, e.g. who or what uses it")->required();
  create->add_option("--comment", opts->comment, "A free-form note kept with the token");
  create->add_flag("--admin", opts->admin, "An admin token: it also sees and cancels other tokens' fine-tuning runs");
  create->add_flag("--json", opts->json, "Print the token and its secret as JSON");
  add_db(create);
  create->callback([opts] {
    auto store = open_tokens(opts->db);
    const auto [token, secret] = store.create(opts->name, opts->comment, opts->admin);
    if (opts->json) {
      nlohmann::json j = token_json(token);
      j["secret"] = secret;
      fmt::print("{}\n", j.dump(2));
    } else {
      fmt::print("created {}token {} '{}' ({})\n{}\n", token.admin ? "admin " : "", token.id, token.name, token.prefix,
                 secret);
    }
    std::fflush(stdout);
    fmt::print(stderr, "note: this secret cannot be shown again (only its hash is stored); keep it now\n");
  });

  auto* list = tokens->add_subcommand("list", "List active tokens (all with --all)");
  list->add_flag("--all", opts->all, "Include revoked tokens");
  list->add_flag("--json", opts->json, "Print JSON");
  add_db(list);
  list->callback([opts] {
    const auto all = open_tokens(opts->db).list(opts->all);
    if (opts->json) {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& t : all) out.push_back(token_json(t));
      fmt::print("{}\n", out.dump(2));
    } else {
      print_table(all);
    }
  });

  auto* revoke = tokens->add_subcommand("revoke", "Revoke a token: requests with it are refused from then on");
  revoke->add_option("token", opts->key, "The token's id, name or prefix (tsr-...)")->required();
  revoke->add_flag("--json", opts->json, "Print the revoked token as JSON");
  add_db(revoke);
  revoke->callback([opts] {
    const ApiToken t = open_tokens(opts->db).revoke(opts->key);
    if (opts->json)
      fmt::print("{}\n", token_json(t).dump(2));
    else
      fmt::print("revoked token {} '{}' ({})\n", t.id, t.name, t.prefix);
  });
}

}  // namespace tessera::cli
