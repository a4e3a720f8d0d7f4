// The JSON constraint accepts exactly the documents that parse and satisfy the schema: valid
// documents pass byte by byte, invalid ones stop at the first wrong byte, and random walks over
// the allowed bytes only ever finish with documents a separate validator accepts.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "serving/json_constraint.h"

using namespace tessera;
using nlohmann::json;

namespace {

// The index of the first byte the constraint rejects, fed one byte at a time; -1 if none is.
long rejected_at(JsonConstraint c, std::string_view doc) {
  for (size_t i = 0; i < doc.size(); ++i)
    if (!c.accept(doc.substr(i, 1))) return static_cast<long>(i);
  return -1;
}

// Feeds a valid document byte by byte and checks every prefix along the way.
void expect_valid(const JsonConstraint& start, const std::string& doc, bool complete_early_ok = false) {
  SCOPED_TRACE(doc);
  JsonConstraint c = start;
  ASSERT_TRUE(c.can_accept(doc));
  for (size_t i = 0; i < doc.size(); ++i) {
    if (!complete_early_ok) {
      EXPECT_FALSE(c.complete()) << "complete after " << i << " bytes";
    }
    ASSERT_TRUE(c.can_accept(doc.substr(i))) << "rest from byte " << i;
    ASSERT_TRUE(c.accept(doc.substr(i, 1))) << "byte " << i << " '" << doc[i] << "'";
  }
  EXPECT_TRUE(c.complete());
  JsonConstraint whole = start;
  ASSERT_TRUE(whole.accept(doc));
  EXPECT_TRUE(whole.complete());
}

std::string error_of(const json& schema) {
  try {
    JsonConstraint::from_schema(schema);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// A validator for the supported subset, written from the schema text (not the compiled form),
// with the same stricter choices: no extra keys when `properties` is given, oneOf as a union.
class Validator {
 public:
  explicit Validator(const json& root) : root_(root) {}

  bool valid(const json& v) const { return valid(root_, v); }

 private:
  static size_t code_points(const std::string& s) {
    size_t n = 0;
    for (unsigned char c : s) n += (c & 0xC0) != 0x80;
    return n;
  }

  bool type_ok(const std::string& t, const json& v) const {
    if (t == "object") return v.is_object();
    if (t == "array") return v.is_array();
    if (t == "string") return v.is_string();
    if (t == "number") return v.is_number();
    if (t == "integer") return v.is_number_integer();
    if (t == "boolean") return v.is_boolean();
    if (t == "null") return v.is_null();
    return false;
  }

  bool valid(const json& s, const json& v) const {
    if (s.is_boolean()) return s.get<bool>();
    if (s.contains("$ref")) {
      const std::string ref = s["$ref"];
      return valid(root_.at(json::json_pointer(ref.substr(1))), v);
    }
    for (const char* key : {"anyOf", "oneOf"})
      if (s.contains(key)) {
        for (const auto& alt : s[key])
          if (valid(alt, v)) return true;
        return false;
      }
    if (s.contains("enum") && std::find(s["enum"].begin(), s["enum"].end(), v) == s["enum"].end()) return false;
    if (s.contains("const") && s["const"] != v) return false;
    if (s.contains("type")) {
      std::vector<std::string> types;
      if (s["type"].is_array()) types = s["type"].get<std::vector<std::string>>();
      else types.push_back(s["type"]);
      if (s.value("nullable", false)) types.push_back("null");
      if (std::none_of(types.begin(), types.end(), [&](const std::string& t) { return type_ok(t, v); })) return false;
    }
    if (v.is_string()) {
      const size_t n = code_points(v);
      if (n < s.value("minLength", 0u) || n > s.value("maxLength", ~0u)) return false;
    }
    if (v.is_array()) {
      if (v.size() < s.value("minItems", 0u) || v.size() > s.value("maxItems", ~0u)) return false;
      if (s.contains("items"))
        for (const auto& e : v)
          if (!valid(s["items"], e)) return false;
    }
    if (v.is_object()) {
      const json props = s.value("properties", json::object());
      const json extra = s.contains("additionalProperties") ? s["additionalProperties"] : json(!s.contains("properties"));
      for (const auto& [k, e] : v.items()) {
        if (props.contains(k) ? !valid(props[k], e) : !valid(extra, e)) return false;
      }
      for (const auto& r : s.value("required", json::array()))
        if (!v.contains(r.get<std::string>())) return false;
    }
    return true;
  }

  const json& root_;
};

// Bytes a model is likely to write; the walk prefers them so that documents finish.
const std::string kJsonish = "{}[]\",:-+.0123456789eEtrufalsn \\/bu\nAcdF";

// A random walk over the allowed bytes: every step picks one of the bytes can_accept allows.
// Returns the document once complete(), or "" when it ran out of steps.
std::string random_walk(const JsonConstraint& start, std::mt19937& rng, int max_steps) {
  JsonConstraint c = start;
  std::string doc;
  for (int step = 0; step < max_steps; ++step) {
    if (c.complete() && rng() % 2 == 0) return doc;
    std::vector<char> allowed, preferred, closing;
    for (int b = 0; b < 256; ++b) {
      const char ch = static_cast<char>(b);
      if (!c.can_accept(std::string_view(&ch, 1))) continue;
      allowed.push_back(ch);
      if (kJsonish.find(ch) != std::string::npos) preferred.push_back(ch);
      if (ch == '"' || ch == '}' || ch == ']') closing.push_back(ch);
    }
    if (allowed.empty()) {
      EXPECT_TRUE(c.complete()) << "dead end after: " << doc;
      return c.complete() ? doc : "";
    }
    const std::vector<char>* pool = &allowed;
    const unsigned r = rng() % 8;
    if (!closing.empty() && step > max_steps / 3 && r < 4) pool = &closing;
    else if (!preferred.empty() && r < 6) pool = &preferred;
    const char ch = (*pool)[rng() % pool->size()];
    EXPECT_TRUE(c.accept(std::string_view(&ch, 1)));
    doc += ch;
  }
  return c.complete() ? doc : "";
}

const json kPersonSchema = json::parse(R"({
  "type": "object",
  "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 6},
    "age": {"type": "integer"},
    "height": {"type": "number"},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 1, "maxItems": 3},
    "color": {"enum": ["red", "green", 1, 12, null, {"a": [1, 2]}]},
    "pet": {"anyOf": [
      {"type": "object", "properties": {"kind": {"const": "dog"}, "barks": {"type": "boolean"}}, "required": ["kind", "barks"]},
      {"type": "object", "properties": {"kind": {"const": "cat"}, "lives": {"type": "integer"}}, "required": ["kind"]},
      {"type": "null"}
    ]},
    "nick": {"type": ["string", "null"], "maxLength": 2},
    "extra": {"type": "object", "additionalProperties": {"type": "boolean"}}
  },
  "required": ["name", "age"],
  "additionalProperties": false
})");

const json kTreeSchema = json::parse(R"({
  "$ref": "#/$defs/node",
  "$defs": {
    "node": {
      "type": "object",
      "properties": {
        "value": {"type": "integer"},
        "children": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}
      },
      "required": ["value"]
    }
  }
})");

}  // namespace

TEST(JsonConstraint, AcceptsValidObjectsAtEveryPrefix) {
  const auto any = JsonConstraint::any_object();
  for (const std::string doc : {
           R"({})",
           R"({"a":1})",
           R"( {"a": 1, "b": [true, false, null], "c": {"d": "e"}})",
           "{\n  \"a\": [1, -0, 0.5, -12.25e+10, 3E-2, 7e5],\n  \"b\": {}\n}",
           R"({"s":"esc \" \\ \/ \b \f \n \r \t \u00e9 \uD83D\uDE00 é 😀 中"})",
           R"({"":"", "nested":[[[]],[{}],{"x":[1,{"y":null}]}]})",
           R"({"a\u0062":1,"ab2":2})",
       }) {
    expect_valid(any, doc);
    EXPECT_TRUE(json::accept(doc)) << doc;
  }
}

TEST(JsonConstraint, RejectsInvalidJsonAtTheFirstWrongByte) {
  const auto any = JsonConstraint::any_object();
  const std::vector<std::pair<std::string, long>> cases = {
      {R"({"a":1,})", 7},               // trailing comma
      {R"([1])", 0},                    // top level must be an object
      {R"({a:1})", 1},                  // unquoted key
      {R"({"a":01})", 6},               // leading zero
      {R"({"a":1.})", 7},               // fraction without digits
      {R"({"a":-})", 6},                // lone minus
      {R"({"a":1e})", 7},               // exponent without digits
      {R"({"a":"\x"})", 7},             // bad escape
      {"{\"a\":\"x\ny\"}", 7},          // raw newline in a string
      {R"({"a":"\u12G4"})", 10},        // bad hex digit
      {R"({"a":"\uDC00"})", 9},         // lone low surrogate
      {R"({"a":"\uD800x"})", 12},       // high surrogate not followed by a low one
      {R"({"a":"\uD800\u0041"})", 14},  // ... nor by another escape
      {"{\"a\":\"\xC3\x28\"}", 7},      // bad continuation byte
      {"{\"a\":\"\xC0\x80\"}", 6},      // overlong lead
      {"{\"a\":\"\xED\xA0\x80\"}", 7},  // UTF-8 encoded surrogate
      {"{\"a\":\"\xF5\"}", 6},          // above U+10FFFF
      {"{\"a\":\"\x80\"}", 6},          // stray continuation byte
      {R"({"a":1,"a")", 9},             // duplicate key, at its closing quote
      {R"({"a":1,"\u0061")", 14},       // the same key spelled with an escape
      {R"({"a":tru})", 8},              // broken literal
      {R"({"a":1 2})", 7},              // two values
      {R"({"a" 1})", 5},                // missing colon
      {R"({"a":1}})", 7},               // bytes after the document
      {R"({} )", 2},                    // even whitespace
      {R"({"a":[1,]})", 8},             // trailing comma in an array
      {R"({"a":[,1]})", 6},
      {R"({"a":"x)", -1},               // an unfinished prefix is fine
  };
  for (const auto& [doc, at] : cases) EXPECT_EQ(rejected_at(any, doc), at) << doc;
}

TEST(JsonConstraint, BoundsInsignificantWhitespace) {
  const auto any = JsonConstraint::any_object();
  expect_valid(any, "{\n" + std::string(16, ' ') + "\"a\":\r\n\t1}");
  expect_valid(any, std::string(20, ' ') + "{}");
  EXPECT_EQ(rejected_at(any, std::string(21, ' ') + "{}"), 20);
  EXPECT_EQ(rejected_at(any, "{\n\n\"a\":1}"), 2);
  EXPECT_EQ(rejected_at(any, "{\"a\":1," + std::string(30, ' ') + "\"b\":2}"), 27);
  EXPECT_EQ(rejected_at(any, "{\"a\": \n \r \r}"), 10);
  // A run of whitespace ends at any other byte, so every gap gets the full allowance.
  expect_valid(any, "{" + std::string(20, ' ') + "\"a\"" + std::string(20, ' ') + ":" + std::string(20, ' ') + "1" +
                        std::string(20, '\t') + "}");
  // Whitespace inside strings is content, not bounded.
  expect_valid(any, "{\"a\":\"" + std::string(100, ' ') + "\"}");
}

TEST(JsonConstraint, SchemaPropertiesRequiredAndAdditional) {
  const auto c = JsonConstraint::from_schema(kPersonSchema);
  expect_valid(c, R"({"name":"Ann","age":3})");
  expect_valid(c, R"({"age":-3,"name":"Bob","height":1.5e3,"tags":["a","é中x"],"color":12,"pet":null,"nick":null})");
  expect_valid(c, R"({ "name" : "é" , "age" : 0 , "color" : {"a":[1,2]}, "pet": {"barks": true, "kind": "dog"} })");
  expect_valid(c, R"({"name":"x","age":1,"pet":{"kind":"cat"},"extra":{"anything":true,"else":false},"nick":"ab"})");
  expect_valid(c, R"({"name":"x","age":1,"color":1,"pet":{"kind":"cat","lives":9}})");

  const std::vector<std::pair<std::string, long>> cases = {
      {R"({"name":"Ann"})", 13},                 // '}' before the required age
      {R"({"name":"Ann","nam)", 16},             // name is used: only nick starts with "n"
      {R"({"zzz")", 2},                          // unknown key, additionalProperties false
      {R"({"age":"3")", 7},                      // wrong type
      {R"({"age":1.5)", 8},                      // integer with a fraction
      {R"({"age":1e3)", 8},                      // or an exponent
      {R"({"name":"")", 9},                      // minLength 1
      {R"({"name":"abcdefg")", 15},              // maxLength 6
      {R"({"color":"blue")", 10},                // enum mismatch
      {R"({"color":2)", 9},
      {R"({"color":123)", 11},
      {R"({"color":{"a":[1, 2]})", 17},          // enum values are compact
      {R"({"tags":[])", 9},                      // minItems 1
      {R"({"tags":["a","b","c","d"])", 20},      // maxItems 3
      {R"({"pet":{"kind":"dog"})", 20},          // the dog branch requires barks
      {R"({"pet":{"kind":"cat","barks")", 22},   // no branch has both
      {R"({"pet":"cat")", 7},
      {R"({"nick":"abc")", 11},                  // maxLength applies to the string branch
      {R"({"extra":{"k":1)", 14},                // additionalProperties is a schema
      {R"({"name":"a","age":1,"extra":{"k":true,"k")", 40},
  };
  for (const auto& [doc, at] : cases) EXPECT_EQ(rejected_at(c, doc), at) << doc;
}

TEST(JsonConstraint, UndeclaredKeysFollowAdditionalProperties) {
  const auto c = JsonConstraint::from_schema(json::parse(R"({
    "type": "object",
    "properties": {"a": {"type": "number"}, "b": {"type": "string"}},
    "additionalProperties": {"type": ["integer", "null"]},
    "required": ["b", "z"]
  })"));
  expect_valid(c, R"({"zz":1,"b":"x","z":null,"\u0061":2.5})");
  expect_valid(c, R"({"z":-4,"b":""})");
  const std::vector<std::pair<std::string, long>> cases = {
      {R"({"zz":1,"b":"x"})", 15},  // z is required (an undeclared name, so it takes additionalProperties)
      {R"({"a":"s")", 5},           // a declared name takes its own schema
      {R"({"\u0061":"s")", 10},     // however it is spelled
      {R"({"b":"x","b")", 11},      // duplicates, declared ...
      {R"({"q":1,"q")", 9},         // ... or not
      {R"({"zz":1.5)", 7},          // undeclared values are integers or null
  };
  for (const auto& [doc, at] : cases) EXPECT_EQ(rejected_at(c, doc), at) << doc;
}

TEST(JsonConstraint, KeysArePrefixMatchedAcrossTheRemainingNames) {
  const auto c = JsonConstraint::from_schema(json::parse(R"({
    "type": "object",
    "properties": {"ab": {"type": "null"}, "abc": {"type": "null"}, "b\"q": {"type": "null"}, "é": {"type": "null"}},
    "required": ["abc"]
  })"));
  expect_valid(c, R"({"ab":null,"abc":null,"b\"q":null,"é":null})");
  expect_valid(c, R"({"abc":null})");
  EXPECT_EQ(rejected_at(c, R"({"ab":null})"), 10);           // abc is still required
  EXPECT_EQ(rejected_at(c, R"({"abc":null,"abc")"), 15);      // used names are gone
  EXPECT_EQ(rejected_at(c, R"({"abc":null,"ab":null,"a)"), 23);
  EXPECT_EQ(rejected_at(c, R"({"abd)"), 4);
  EXPECT_EQ(rejected_at(c, R"({"\u00e9":null)"), 2);           // declared names are written as a serialiser does
  JsonConstraint all = c;
  ASSERT_TRUE(all.accept(R"({"ab":null,"abc":null,"b\"q":null,"é":null)"));
  EXPECT_FALSE(all.can_accept(","));  // no name is left, so no comma
  EXPECT_TRUE(all.can_accept("}"));
}

TEST(JsonConstraint, TopLevelScalarsAndEnums) {
  auto number = JsonConstraint::from_schema({{"type", "number"}});
  EXPECT_FALSE(number.complete());
  ASSERT_TRUE(number.accept("-"));
  EXPECT_FALSE(number.complete());
  ASSERT_TRUE(number.accept("12"));
  EXPECT_TRUE(number.complete());
  EXPECT_TRUE(number.can_accept("3.5e-7"));
  ASSERT_TRUE(number.accept("."));
  EXPECT_FALSE(number.complete());
  ASSERT_TRUE(number.accept("5"));
  EXPECT_TRUE(number.complete());
  EXPECT_FALSE(number.can_accept(" "));
  EXPECT_FALSE(number.can_accept(","));

  // Digits are bounded so that a model cannot loop on them, and integers fit int64.
  auto integer = JsonConstraint::from_schema({{"type", "integer"}});
  EXPECT_TRUE(integer.can_accept("-123456789012345678"));
  EXPECT_FALSE(integer.can_accept("1234567890123456789"));
  EXPECT_FALSE(integer.can_accept("1."));

  auto e = JsonConstraint::from_schema({{"enum", {1, 12, "x", true}}});
  ASSERT_TRUE(e.accept("1"));
  EXPECT_TRUE(e.complete());
  EXPECT_TRUE(e.can_accept("2"));
  EXPECT_FALSE(e.can_accept("3"));
  EXPECT_FALSE(JsonConstraint::from_schema({{"enum", {1, 12, "x", true}}}).can_accept("false"));
  expect_valid(JsonConstraint::from_schema({{"enum", {1, 12, "x", true}}}), "true");
  expect_valid(JsonConstraint::from_schema({{"const", "x"}}), R"("x")");
  expect_valid(JsonConstraint::from_schema({{"type", "string"}, {"nullable", true}}), "null");
  expect_valid(JsonConstraint::from_schema({{"type", {"boolean", "null"}}}), "false");
  EXPECT_EQ(rejected_at(JsonConstraint::from_schema({{"type", "boolean"}}), "null"), 0);
  // enum values that the other keywords rule out are never offered.
  auto filtered = JsonConstraint::from_schema({{"type", "string"}, {"maxLength", 2}, {"enum", {"ab", "abc", 5}}});
  EXPECT_TRUE(filtered.can_accept(R"("ab")"));
  EXPECT_FALSE(filtered.can_accept(R"("abc)"));
  EXPECT_FALSE(filtered.can_accept("5"));
}

TEST(JsonConstraint, StringLengthsCountCodePoints) {
  const auto c = JsonConstraint::from_schema({{"type", "string"}, {"minLength", 2}, {"maxLength", 3}});
  expect_valid(c, R"("é中")");
  expect_valid(c, R"("\uD83D\uDE00\n😀")");
  EXPECT_EQ(rejected_at(c, R"("😀")"), 5);
  EXPECT_EQ(rejected_at(c, R"("ab\"c")"), 5);
}

TEST(JsonConstraint, RecursiveReferences) {
  const auto c = JsonConstraint::from_schema(kTreeSchema);
  expect_valid(c, R"({"value":1,"children":[{"value":2},{"value":3,"children":[{"value":4,"children":[]}]}]})");
  EXPECT_EQ(rejected_at(c, R"({"value":1,"children":[{}]})"), 24);
  // Nesting stops at the depth limit instead of running into it: at some depth '[' is refused.
  JsonConstraint deep = JsonConstraint::any_object();
  ASSERT_TRUE(deep.accept(R"({"a":)"));
  int opened = 0;
  while (deep.accept("[")) ++opened;
  EXPECT_GT(opened, 30);
  EXPECT_LT(opened, 64);
  EXPECT_TRUE(deep.accept("1"));
  for (int i = 0; i < opened; ++i) ASSERT_TRUE(deep.accept("]"));
  EXPECT_TRUE(deep.accept("}"));
  EXPECT_TRUE(deep.complete());
}

TEST(JsonConstraint, UnsatisfiableBranchesAreNeverOffered) {
  // "b" needs itself forever, so no finite value has it: the key must not be offered at all.
  const auto c = JsonConstraint::from_schema(json::parse(R"({
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"$ref": "#/$defs/loop"}, "c": {"enum": []}},
    "$defs": {"loop": {"type": "object", "properties": {"x": {"$ref": "#/$defs/loop"}}, "required": ["x"]}}
  })"));
  EXPECT_FALSE(c.can_accept(R"({"b)"));
  EXPECT_FALSE(c.can_accept(R"({"c)"));
  expect_valid(c, R"({"a":1})");
  EXPECT_NE(error_of(json::parse(R"({"$ref": "#/$defs/loop", "$defs": {"loop": {"type": "object",
            "properties": {"x": {"$ref": "#/$defs/loop"}}, "required": ["x"]}}})"))
                .find("no JSON value"),
            std::string::npos);
}

TEST(JsonConstraint, SchemaErrorsNameTheKeyword) {
  const std::vector<std::pair<json, std::string>> cases = {
      {json::parse(R"({"type": "string", "pattern": "^a"})"), "'pattern'"},
      {json::parse(R"({"type": "number", "minimum": 0})"), "'minimum'"},
      {json::parse(R"({"properties": {"a": {"type": "string", "maxProperties": 1}}})"), "/properties/a: unsupported keyword 'maxProperties'"},
      {json::parse(R"({"allOf": [{}]})"), "'allOf'"},
      {json::parse(R"({"not": {}})"), "'not'"},
      {json::parse(R"({"prefixItems": []})"), "'prefixItems'"},
      {json::parse(R"({"type": "thing"})"), "unknown type 'thing'"},
      {json::parse(R"({"type": []})"), "type"},
      {json::parse(R"({"minLength": -1})"), "minLength"},
      {json::parse(R"({"minItems": 2, "maxItems": 1})"), "minItems"},
      {json::parse(R"({"items": [{}]})"), "items"},
      {json::parse(R"({"$ref": "#/$defs/missing"})"), "points to nothing"},
      {json::parse(R"({"$ref": "http://example.com/s.json"})"), "local references"},
      {json::parse(R"({"$ref": "#/$defs/a", "type": "string", "$defs": {"a": {}}})"), "'$ref' together with 'type'"},
      {json::parse(R"({"anyOf": []})"), "anyOf"},
      {json::parse(R"({"anyOf": [{"$ref": "#"}]})"), "refers to itself"},
      {json::parse(R"({"properties": {"a": 5}})"), "/properties/a"},
      {json::parse(R"({"required": ["a"], "properties": {}})"), "required 'a'"},
      {json::parse(R"({"enum": 3})"), "enum"},
      {json::parse(R"({"type": "string", "enum": [1, 2]})"), "no JSON value"},
      {json::parse(R"(5)"), "schema must be an object"},
      {json::parse(R"(false)"), "false"},
  };
  for (const auto& [schema, expected] : cases) {
    const std::string e = error_of(schema);
    EXPECT_NE(e.find(expected), std::string::npos) << schema.dump() << " -> " << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  }
  // Annotations are not constraints.
  EXPECT_EQ(error_of(json::parse(R"({"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "x",
      "title": "t", "description": "d", "examples": [1], "default": 1, "format": "email", "type": "string"})")),
            "");
}

TEST(JsonConstraint, RandomWalksOnlyFinishValidDocuments) {
  const std::vector<json> schemas = {
      json{{"type", "object"}},
      kPersonSchema,
      kTreeSchema,
      json::parse(R"({"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 2},
                      {"enum": [1.5, "zz", [1]]}]}, "maxItems": 4})"),
      json::parse(R"({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "string"}},
                      "additionalProperties": {"type": ["integer", "null"]}})"),
  };
  std::mt19937 rng(1234);
  for (size_t si = 0; si < schemas.size(); ++si) {
    SCOPED_TRACE(schemas[si].dump());
    const auto start = si == 0 ? JsonConstraint::any_object() : JsonConstraint::from_schema(schemas[si]);
    const Validator validator(schemas[si]);
    int finished = 0;
    const int walks = 40;
    for (int w = 0; w < walks; ++w) {
      const std::string doc = random_walk(start, rng, 200);
      if (doc.empty()) continue;
      ++finished;
      json parsed;
      try {
        parsed = json::parse(doc);
      } catch (const json::exception& e) {
        ADD_FAILURE() << "does not parse: " << doc << " (" << e.what() << ")";
        continue;
      }
      EXPECT_TRUE(validator.valid(parsed)) << doc;
      if (si == 0) {
        EXPECT_TRUE(parsed.is_object()) << doc;
      }
    }
    EXPECT_GT(finished, walks / 2) << "too few walks finished to mean anything";
  }
}

TEST(JsonConstraint, AmbiguousUnionsKeepEveryBranch) {
  const auto c = JsonConstraint::from_schema(json::parse(R"({"anyOf": [
    {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "string"}}, "required": ["y"]},
    {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}
  ]})"));
  expect_valid(c, R"({"x":1,"y":"a"})");
  expect_valid(c, R"({"x":"s"})");
  expect_valid(c, R"({"y":"a","x":2})");
  EXPECT_EQ(rejected_at(c, R"({"x":1})"), 6);
  EXPECT_EQ(rejected_at(c, R"({"x":"s","y")"), 8);  // only the second branch is left, and it has no y
}

TEST(JsonConstraint, BestAllowedTokenWalksLogitsInOrder) {
  std::vector<std::string> vocab = {"{", "}", "\"a\"", ":", "1", "x", "", "<eos>"};
  for (int i = 0; i < 100; ++i) vocab.push_back("junk" + std::to_string(i));
  vocab.push_back("{\"");  // id 108, ranked below all the junk
  const int32_t eos = 7;
  const std::vector<int32_t> ends = {eos};
  const auto bytes = [&](int32_t id) -> const std::string& { return vocab[static_cast<size_t>(id)]; };
  std::vector<float> logits(vocab.size(), 0.0f);
  for (size_t i = 8; i < 108; ++i) logits[i] = 5.0f;  // junk is the most likely
  logits[6] = 9.0f;                                  // an empty token is never picked
  logits[eos] = 8.0f;                                // nor eos before the end
  logits[108] = 1.0f;
  logits[0] = 0.5f;
  JsonConstraint c = JsonConstraint::any_object();
  EXPECT_EQ(best_allowed_token(c, logits, bytes, ends), 108);
  logits[108] = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(best_allowed_token(c, logits, bytes, ends), 0);
  ASSERT_TRUE(c.accept("{\"a\":1"));
  EXPECT_EQ(best_allowed_token(c, logits, bytes, ends), 1);  // "}" is the only token that fits
  ASSERT_TRUE(c.accept("}"));
  EXPECT_EQ(best_allowed_token(c, logits, bytes, ends), eos);
  std::vector<float> no_eos = logits;
  no_eos[eos] = std::nanf("");
  EXPECT_EQ(best_allowed_token(c, no_eos, bytes, ends), -1);
}
