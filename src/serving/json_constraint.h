#pragma once
// Constrained decoding for JSON output: a byte-level recognizer that says, before a token is
// sampled, whether its bytes can still lead to a valid document (OpenAI response_format
// json_object and json_schema).
//
// Every prefix it accepts can be completed: schemas are checked for satisfiability when they are
// compiled, and unsatisfiable branches are pruned, so generation never runs into a dead end.
//
// Choices the schema subset makes (stricter than JSON Schema, never looser):
// - additionalProperties absent: no extra keys when `properties` is given, any keys otherwise.
// - anyOf and oneOf are both a union (a document matching two oneOf branches is accepted).
// - integer forbids a fraction and an exponent (1.0 is not written for an integer).
// - Numbers have at most 18 integer digits, 18 fraction digits and 2 exponent digits, so a model
//   cannot loop on digits and every integer fits int64.
// - Object keys are accepted in their decoded form (escapes allowed) when extra keys are allowed;
//   when only declared names are, each name must be written the way a compact serialiser writes it
//   (raw UTF-8, only `"`, `\` and control characters escaped). Duplicate keys are rejected at the
//   closing quote; an object holds at most 64 declared properties, and at most 128 undeclared keys
//   may be open at once across nested objects (after that only declared names remain).
// - enum/const values are accepted in their compact serialisation (no whitespace, sorted keys).
// - Insignificant whitespace: at most 20 bytes in a row, at most one '\n' and one '\r' among them.
//   Nothing but that before the top-level value and nothing at all after a complete document.
// - Nesting is at most 64 frames deep; a container is not opened where its content would not fit.
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace tessera {

namespace json_constraint_detail {
struct Schema;
struct Stack;
}  // namespace json_constraint_detail

class JsonConstraint {
 public:
  // response_format {"type": "json_object"}: any JSON object (the top level must be an object).
  static JsonConstraint any_object();
  // response_format {"type": "json_schema", ...}: the schema object S. Supported: type (a name or a
  // list), properties, required, additionalProperties (bool or schema), items (schema or bool),
  // enum, const, anyOf, oneOf, $ref (local: "#", "#/$defs/...", "#/definitions/..."), minItems,
  // maxItems, minLength, maxLength, nullable. Annotations are ignored (title, description,
  // examples, default, $schema, $id, $comment, format, deprecated, readOnly, writeOnly). Any other
  // keyword throws a one-line tessera::Error naming it and where it is.
  static JsonConstraint from_schema(const nlohmann::json& schema);

  JsonConstraint(const JsonConstraint& other);
  JsonConstraint& operator=(const JsonConstraint& other);
  JsonConstraint(JsonConstraint&&) noexcept;
  JsonConstraint& operator=(JsonConstraint&&) noexcept;
  ~JsonConstraint();

  // Feeds bytes; false (and the state unchanged) if they cannot continue a valid document.
  bool accept(std::string_view bytes);
  // Whether accept(bytes) would succeed, without changing the state.
  bool can_accept(std::string_view bytes) const;
  // A complete valid document has been read. A top-level number (or numeric enum value) counts as
  // complete as soon as it is valid, although more digits would still be accepted.
  bool complete() const;

 private:
  explicit JsonConstraint(std::shared_ptr<const json_constraint_detail::Schema> schema);

  std::shared_ptr<const json_constraint_detail::Schema> schema_;
  // Alternative parses, more than one only while a union (anyOf) is still ambiguous.
  std::vector<json_constraint_detail::Stack> threads_;
};

// Picks the best allowed token: walks candidate ids in descending logit order and returns the first
// whose bytes the constraint accepts (token_bytes(id) gives the bytes; end tokens are allowed only
// when complete()). Tokens with empty bytes, NaN or -inf logits are never picked. Returns -1 if
// no token is allowed.
int32_t best_allowed_token(const JsonConstraint& c, std::span<const float> logits,
                           const std::function<const std::string&(int32_t)>& token_bytes,
                           std::span<const int32_t> end_tokens);

}  // namespace tessera
