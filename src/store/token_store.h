#pragma once
// API tokens: bearer secrets that the server checks on every request. Only a secret's SHA-256
// is stored, so a copy of the database file does not give access; a short prefix of the secret
// is kept in the clear so that people can tell their tokens apart in lists and revoke one.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "store/database.h"

namespace tessera {

struct ApiToken {
  int64_t id = 0;
  std::string name;
  std::string prefix;  // the first characters of the secret, shown in lists: "tsr-3f9a01bc"
  int64_t created_at = 0;  // unix seconds
  std::optional<int64_t> revoked_at;
  std::optional<int64_t> last_used_at;
  std::string comment;
  // An admin token also sees and manages what other tokens created (fine-tuning runs).
  bool admin = false;

  bool active() const { return !revoked_at.has_value(); }
};

class TokenStore {
 public:
  static constexpr std::string_view kSecretPrefix = "tsr-";
  static constexpr size_t kMaxNameLength = 100;
  static constexpr size_t kMaxCommentLength = 1000;

  // now_s returns the current unix time in seconds; tests pass a fake clock.
  explicit TokenStore(std::shared_ptr<Database> db, std::function<int64_t()> now_s = {});

  // A new token and its secret ("tsr-" + 40 hex digits from RAND_bytes). The secret is returned
  // here once and never stored. Names are unique among active tokens.
  std::pair<ApiToken, std::string> create(const std::string& name, const std::string& comment = "", bool admin = false);

  // Oldest first.
  std::vector<ApiToken> list(bool include_revoked = false) const;

  // Every token, active or revoked, whose id, name or prefix is `key` (a prefix matches when the
  // key starts with "tsr-" and is the start of the token's prefix).
  std::vector<ApiToken> find(std::string_view key) const;

  // Revokes the one active token that `key` names (id, name or prefix). Errors when none, several,
  // or only revoked tokens match.
  ApiToken revoke(const std::string& key);

  // The active token that `secret` belongs to, or nullopt. Hashes are compared in constant time;
  // last_used_at is written at most once a minute per token, so checking is a read on most calls.
  std::optional<ApiToken> verify(std::string_view secret);

 private:
  int64_t now() const;
  std::shared_ptr<Database> db_;
  std::function<int64_t()> now_s_;
};

}  // namespace tessera
