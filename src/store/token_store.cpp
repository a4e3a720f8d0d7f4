#include "store/token_store.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <algorithm>
#include <charconv>
#include <chrono>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "core/error.h"

namespace tessera {

namespace {

constexpr size_t kSecretBytes = 20;  // 160 bits: far beyond guessing
constexpr size_t kPrefixHexDigits = 8;
const size_t kSecretLength = TokenStore::kSecretPrefix.size() + 2 * kSecretBytes;
const size_t kPrefixLength = TokenStore::kSecretPrefix.size() + kPrefixHexDigits;

// Reads the columns "id, name, prefix, created_at, revoked_at, last_used_at, comment", in that order.
ApiToken read_token(const Statement& s) {
  ApiToken t;
  t.id = s.column_int(0);
  t.name = s.column_text(1);
  t.prefix = s.column_text(2);
  t.created_at = s.column_int(3);
  t.revoked_at = s.column_opt_int(4);
  t.last_used_at = s.column_opt_int(5);
  t.comment = s.column_text(6);
  t.admin = s.column_int(7) != 0;
  return t;
}

std::string to_hex(const unsigned char* data, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kDigits[data[i] >> 4];
    out[2 * i + 1] = kDigits[data[i] & 15];
  }
  return out;
}

std::string sha256(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (EVP_Digest(data.data(), data.size(), digest, &size, EVP_sha256(), nullptr) != 1 || size != 32)
    fail("tokens: SHA-256 failed in OpenSSL");
  return std::string(reinterpret_cast<const char*>(digest), size);
}

std::optional<int64_t> parse_id(std::string_view key) {
  int64_t id = 0;
  const auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
  if (ec != std::errc() || end != key.data() + key.size() || id <= 0) return std::nullopt;
  return id;
}

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

void check_name(const std::string& name) {
  if (name.empty()) fail("token name: must not be empty");
  if (name.size() > TokenStore::kMaxNameLength)
    fail("token name: {} characters is too long (at most {})", name.size(), TokenStore::kMaxNameLength);
  for (unsigned char c : name)
    if (c < 0x20 || c == 0x7f) fail("token name: control characters are not allowed");
  if (name.starts_with(TokenStore::kSecretPrefix))
    fail("token name '{}': must not start with '{}' (secrets and prefixes do)", name, TokenStore::kSecretPrefix);
  if (all_digits(name)) fail("token name '{}': must not be only digits (ids are)", name);
}

std::string describe(const ApiToken& t) { return fmt::format("{} '{}' ({})", t.id, t.name, t.prefix); }

// A prefix key matches tokens whose prefix starts with it: "tsr-3f9a" finds "tsr-3f9a01bc". A key
// longer than a prefix (a whole secret pasted by mistake) is cut to the prefix length.
std::vector<ApiToken> find_in(Database::Session& session, std::string_view key) {
  std::optional<std::string> prefix;
  if (key.starts_with(TokenStore::kSecretPrefix) && key.size() > TokenStore::kSecretPrefix.size())
    prefix = std::string(key.substr(0, std::min(key.size(), kPrefixLength)));
  auto& s = session.prepare("SELECT id, name, prefix, created_at, revoked_at, last_used_at, comment, admin"
                            " FROM api_tokens WHERE id = ?1 OR name = ?2"
                            " OR (?3 IS NOT NULL AND substr(prefix, 1, length(?3)) = ?3) ORDER BY id");
  s.bind_int(1, parse_id(key)).bind_text(2, key).bind_opt_text(3, prefix);
  std::vector<ApiToken> out;
  while (s.step()) out.push_back(read_token(s));
  s.reset();
  return out;
}

}  // namespace

TokenStore::TokenStore(std::shared_ptr<Database> db, std::function<int64_t()> now_s)
    : db_(std::move(db)), now_s_(std::move(now_s)) {
  if (!db_) fail("tokens: no database");
}

int64_t TokenStore::now() const {
  if (now_s_) return now_s_();
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::pair<ApiToken, std::string> TokenStore::create(const std::string& name, const std::string& comment, bool admin) {
  check_name(name);
  if (comment.size() > kMaxCommentLength)
    fail("token comment: {} characters is too long (at most {})", comment.size(), kMaxCommentLength);
  unsigned char random[kSecretBytes];
  if (RAND_bytes(random, sizeof random) != 1) fail("tokens: the system random generator failed (RAND_bytes)");
  const std::string secret = std::string(kSecretPrefix) + to_hex(random, sizeof random);
  OPENSSL_cleanse(random, sizeof random);

  ApiToken token;
  token.name = name;
  token.prefix = secret.substr(0, kPrefixLength);
  token.created_at = now();
  token.comment = comment;
  token.admin = admin;
  db_->write([&](Database::Session& session) {
    auto& taken = session.prepare("SELECT id FROM api_tokens WHERE name = ?1 AND revoked_at IS NULL");
    taken.bind_text(1, name);
    if (taken.step())
      fail("token name '{}' is already used by active token {}; revoke it or choose another name", name,
           taken.column_int(0));
    session.prepare("INSERT INTO api_tokens (name, prefix, secret_sha256, created_at, comment, admin)"
                      " VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
        .bind_text(1, name)
        .bind_text(2, token.prefix)
        .bind_blob(3, sha256(secret))
        .bind_int(4, token.created_at)
        .bind_text(5, comment)
        .bind_int(6, admin ? 1 : 0)
        .run();
    token.id = session.last_insert_id();
  });
  return {token, secret};
}

std::vector<ApiToken> TokenStore::list(bool include_revoked) const {
  return db_->read([&](Database::Session& session) {
    auto& s = session.prepare("SELECT id, name, prefix, created_at, revoked_at, last_used_at, comment, admin"
                              " FROM api_tokens WHERE ?1 OR revoked_at IS NULL ORDER BY id");
    s.bind_int(1, include_revoked ? 1 : 0);
    std::vector<ApiToken> out;
    while (s.step()) out.push_back(read_token(s));
    return out;
  });
}

std::vector<ApiToken> TokenStore::find(std::string_view key) const {
  return db_->read([&](Database::Session& session) { return find_in(session, key); });
}

ApiToken TokenStore::revoke(const std::string& key) {
  if (key.empty()) fail("tokens revoke: give a token id, name or prefix");
  // Resolving and revoking happen in one write transaction, so two people revoking at once
  // cannot both succeed and the match cannot change in between.
  return db_->write([&](Database::Session& session) {
    std::vector<ApiToken> active, revoked;
    for (ApiToken& t : find_in(session, key)) (t.active() ? active : revoked).push_back(std::move(t));
    if (active.size() > 1) {
      std::vector<std::string> names;
      for (const auto& t : active) names.push_back(describe(t));
      fail("token '{}' is ambiguous: it matches {}; use the id", key, fmt::join(names, ", "));
    }
    if (active.empty()) {
      if (!revoked.empty()) fail("token {} is already revoked", describe(revoked.back()));
      fail("no token matches '{}' (give an id, a name or a prefix like tsr-3f9a)", key);
    }
    ApiToken token = active.front();
    token.revoked_at = now();
    auto& update = session.prepare("UPDATE api_tokens SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL");
    update.bind_int(1, *token.revoked_at).bind_int(2, token.id).run();
    if (session.changes() != 1) fail("token {} is already revoked", describe(token));
    return token;
  });
}

std::optional<ApiToken> TokenStore::verify(std::string_view secret) {
  if (secret.size() != kSecretLength || !secret.starts_with(kSecretPrefix)) return std::nullopt;
  const std::string hash = sha256(secret);
  const std::string prefix(secret.substr(0, kPrefixLength));
  std::optional<ApiToken> match;
  std::optional<int64_t> touch_at;
  db_->read([&](Database::Session& session) {
    // The prefix index narrows the search; the hash decides, compared without early exit so the
    // time taken says nothing about how much of it matched.
    auto& s = session.prepare("SELECT id, name, prefix, created_at, revoked_at, last_used_at, comment, admin, secret_sha256"
                              " FROM api_tokens WHERE prefix = ?1");
    s.bind_text(1, prefix);
    while (s.step()) {
      const std::string stored = s.column_blob(8);
      if (stored.size() == hash.size() && CRYPTO_memcmp(stored.data(), hash.data(), hash.size()) == 0)
        match = read_token(s);
    }
    s.reset();
    if (!match || !match->active()) return;
    const int64_t t = now();
    if (match->last_used_at && t - *match->last_used_at < 60) return;
    // Best effort: a busy database must not turn a valid token into a failed request.
    try {
      auto& touch = session.prepare("UPDATE api_tokens SET last_used_at = ?1 WHERE id = ?2");
      touch.bind_int(1, t).bind_int(2, match->id).run();
      touch_at = t;
    } catch (const Error&) {
    }
  });
  if (!match || !match->active()) return std::nullopt;
  if (touch_at) match->last_used_at = touch_at;
  return match;
}

}  // namespace tessera
