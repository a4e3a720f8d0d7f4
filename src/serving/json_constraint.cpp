#include "serving/json_constraint.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <numeric>

#include "core/error.h"
#include "tokenizers/utf8.h"

namespace tessera {

namespace json_constraint_detail {

namespace {

constexpr uint32_t kNone = UINT32_MAX;
constexpr uint32_t kAnyNode = 0;
constexpr int kMaxDepth = 64;
constexpr int kMaxKeyHashes = 128;
constexpr int kMaxWhitespace = 20;
constexpr int kMaxIntegerDigits = 18;
constexpr int kMaxFractionDigits = 18;
constexpr int kMaxExponentDigits = 2;
constexpr int kMaxProperties = 64;
constexpr size_t kMaxThreads = 16;
constexpr int kMaxSchemaDepth = 128;

enum TypeBit : uint8_t {
  kObject = 1,
  kArray = 2,
  kString = 4,
  kNumber = 8,
  kInteger = 16,
  kBoolean = 32,
  kNull = 64,
  kAllTypes = 127,
};

uint64_t hash_init() { return 0xcbf29ce484222325ull; }
uint64_t hash_byte(uint64_t h, uint8_t b) { return (h ^ b) * 0x100000001b3ull; }
uint64_t hash_bytes(std::string_view s) {
  uint64_t h = hash_init();
  for (unsigned char c : s) h = hash_byte(h, c);
  return h;
}

}  // namespace

struct Node {
  uint8_t types = kAllTypes;
  std::vector<uint32_t> alternatives;  // non-empty: a union of these nodes, nothing else applies
  bool is_enum = false;
  // Enum nodes: the compact serialisations of the allowed values. Others: those of true, false,
  // null that `types` allows. Sorted, so that values sharing a prefix form a range.
  std::vector<std::string> literals;
  // Objects: declared properties sorted by their key as written ("name" with quotes), so that a
  // prefix of keys is a range, and bit i of a mask is property i.
  std::vector<std::string> key_literals;
  std::vector<uint64_t> key_hashes;  // hash of each decoded name
  std::vector<uint32_t> property_nodes;
  uint64_t required = 0;
  uint64_t unavailable = 0;  // properties whose schema no value satisfies: never offered
  uint32_t additional = kAnyNode;
  uint32_t items = kAnyNode;
  uint32_t min_items = 0, max_items = UINT32_MAX;
  uint32_t min_length = 0, max_length = UINT32_MAX;  // in code points

  uint64_t all_properties() const {
    return key_literals.size() == 64 ? ~0ull : ((1ull << key_literals.size()) - 1);
  }
};

struct Schema {
  std::vector<Node> nodes;
  uint32_t root = kAnyNode;
};

enum class Kind : uint8_t { Value, Object, Array, String, Key, Number, Literal };

enum Phase : uint8_t {
  kObjectFirst,       // after '{'
  kObjectKeyStart,    // after ','
  kObjectColon,       // after a key
  kObjectAfterValue,  // after a member's value
  kArrayFirst,        // after '['
  kArrayAfterValue,   // after an element
};

enum StringState : uint8_t {
  kPlain,
  kEscape,             // after '\'
  kHex,                // 0..3 hex digits of \uXXXX read (count in `digits`)
  kUtf8,               // continuation bytes pending
  kLowBackslash,       // a high surrogate was read: '\' must follow
  kLowU,               // then 'u'
  kLowHex,             // then the low surrogate's hex digits
};

enum NumberState : uint8_t { kStart, kMinus, kZero, kInt, kFracStart, kFrac, kExpStart, kExpSign, kExp };

bool number_can_end(uint8_t s) { return s == kZero || s == kInt || s == kFrac || s == kExp; }

struct Frame {
  Kind kind;
  uint8_t phase;   // Phase, StringState or NumberState
  uint8_t digits;  // string: hex digits read, or utf8 continuation bytes pending
  bool key_list;   // Literal: matching declared keys rather than values
  bool fractions;  // Number: a fraction and an exponent are allowed (`number`, not `integer`)
  uint32_t node;
  uint32_t count;   // array elements, string code points, literal bytes matched, digits in a number part
  uint32_t lo, hi;  // literal range; utf8: allowed range of the next byte
  uint32_t target;  // object: node of the current member's value; string: \u code units
  uint32_t pool_begin;  // object: its first undeclared key hash in the pool
  uint64_t bits;    // object: used properties; key: hash of the decoded name

  bool operator==(const Frame& o) const {
    return kind == o.kind && phase == o.phase && digits == o.digits && key_list == o.key_list && node == o.node &&
           fractions == o.fractions && count == o.count && lo == o.lo && hi == o.hi && target == o.target && pool_begin == o.pool_begin &&
           bits == o.bits;
  }
};

// One parse: the open values, innermost last. Fixed capacity so that copying touches only the
// used part and never allocates.
struct Stack {
  uint16_t depth = 0;
  uint16_t pool_size = 0;
  uint8_t ws_run = 0;
  uint8_t ws_breaks = 0;  // bit 0: '\n' seen in this run, bit 1: '\r'
  Frame frames[kMaxDepth];
  uint64_t pool[kMaxKeyHashes];  // hashes of undeclared keys of the open objects

  Stack() = default;
  Stack(const Stack& o) { *this = o; }
  Stack& operator=(const Stack& o) {
    depth = o.depth;
    pool_size = o.pool_size;
    ws_run = o.ws_run;
    ws_breaks = o.ws_breaks;
    std::memcpy(frames, o.frames, sizeof(Frame) * depth);
    std::memcpy(pool, o.pool, sizeof(uint64_t) * pool_size);
    return *this;
  }
  bool operator==(const Stack& o) const {
    if (depth != o.depth || pool_size != o.pool_size || ws_run != o.ws_run || ws_breaks != o.ws_breaks) return false;
    for (int i = 0; i < depth; ++i)
      if (!(frames[i] == o.frames[i])) return false;
    return std::equal(pool, pool + pool_size, o.pool);
  }

  Frame& top() { return frames[depth - 1]; }
  const Frame& top() const { return frames[depth - 1]; }
  bool push(const Frame& f) {
    if (depth >= kMaxDepth) return false;
    frames[depth++] = f;
    return true;
  }
};

namespace {

Frame value_frame(uint32_t node) {
  Frame f{};
  f.kind = Kind::Value;
  f.node = node;
  return f;
}

bool is_ws(uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

int hex_value(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

uint64_t hash_code_point(uint64_t h, uint32_t cp) {
  char buf[4];
  int n;
  if (cp < 0x80) {
    buf[0] = static_cast<char>(cp);
    n = 1;
  } else if (cp < 0x800) {
    buf[0] = static_cast<char>(0xC0 | (cp >> 6));
    buf[1] = static_cast<char>(0x80 | (cp & 0x3F));
    n = 2;
  } else if (cp < 0x10000) {
    buf[0] = static_cast<char>(0xE0 | (cp >> 12));
    buf[1] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    buf[2] = static_cast<char>(0x80 | (cp & 0x3F));
    n = 3;
  } else {
    buf[0] = static_cast<char>(0xF0 | (cp >> 18));
    buf[1] = static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    buf[2] = static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    buf[3] = static_cast<char>(0x80 | (cp & 0x3F));
    n = 4;
  }
  for (int i = 0; i < n; ++i) h = hash_byte(h, static_cast<uint8_t>(buf[i]));
  return h;
}

// Ended is internal: the frame on top is done (a number before this byte) or was just replaced,
// and the byte goes to whatever is on top now.
enum class Step { Rejected, Accepted, Fork, Ended };

// The byte-level transition function over a compiled schema.
class Machine {
 public:
  explicit Machine(const Schema& schema) : nodes_(schema.nodes) {}

  // Feeds one byte to one parse. Fork: the top is a union value and the byte is still unread;
  // the caller continues with one copy per alternative.
  Step step(Stack& s, uint8_t c) const {
    if (!is_ws(c)) s.ws_run = s.ws_breaks = 0;
    for (;;) {
      if (s.depth == 0) return Step::Rejected;  // the document is complete
      Frame& f = s.top();
      const Node& n = nodes_[f.node];
      switch (f.kind) {
        case Kind::Value: {
          if (is_ws(c)) return whitespace(s, c);
          if (!n.alternatives.empty()) return Step::Fork;
          if (n.is_enum) {
            f = literal_frame(f.node, n.literals.size(), false);
            continue;
          }
          const Step r = start_value(s, f, n, c);
          if (r != Step::Ended) return r;
          continue;
        }
        case Kind::Object: {
          if (is_ws(c)) return whitespace(s, c);
          switch (f.phase) {
            case kObjectFirst:
            case kObjectAfterValue:
              if (c == '}') {
                if ((f.bits & n.required) != n.required) return Step::Rejected;
                s.pool_size = static_cast<uint16_t>(f.pool_begin);
                --s.depth;
                return Step::Accepted;
              }
              if (f.phase == kObjectFirst && c == '"') return begin_key(s, f, n);
              if (f.phase == kObjectAfterValue && c == ',') {
                if (!key_possible(s, f, n)) return Step::Rejected;
                f.phase = kObjectKeyStart;
                return Step::Accepted;
              }
              return Step::Rejected;
            case kObjectKeyStart:
              return c == '"' ? begin_key(s, f, n) : Step::Rejected;
            case kObjectColon:
              if (c != ':') return Step::Rejected;
              f.phase = kObjectAfterValue;
              return s.push(value_frame(f.target)) ? Step::Accepted : Step::Rejected;
          }
          return Step::Rejected;
        }
        case Kind::Array: {
          if (is_ws(c)) return whitespace(s, c);
          if (c == ']') {
            if (f.count < n.min_items) return Step::Rejected;
            --s.depth;
            return Step::Accepted;
          }
          if (f.phase == kArrayFirst) {
            if (n.max_items == 0) return Step::Rejected;
            f.phase = kArrayAfterValue;
            f.count = 1;
            if (!s.push(value_frame(n.items))) return Step::Rejected;
            continue;  // the byte starts the first element
          }
          if (c != ',' || f.count >= n.max_items) return Step::Rejected;
          ++f.count;
          return s.push(value_frame(n.items)) ? Step::Accepted : Step::Rejected;
        }
        case Kind::String:
        case Kind::Key:
          return string_byte(s, f, n, c);
        case Kind::Number: {
          const Step r = number_byte(f, c);
          if (r != Step::Ended) return r;
          --s.depth;  // the number ended before this byte
          continue;
        }
        case Kind::Literal: {
          const auto& strs = f.key_list ? n.key_literals : n.literals;
          const uint32_t off = f.count;
          auto begin = strs.begin() + f.lo, end = strs.begin() + f.hi;
          auto first = std::lower_bound(begin, end, c, [off](const std::string& str, uint8_t ch) {
            return str.size() <= off || static_cast<uint8_t>(str[off]) < ch;
          });
          auto last = std::upper_bound(first, end, c, [off](uint8_t ch, const std::string& str) {
            return ch < static_cast<uint8_t>(str[off]);
          });
          if (first != last) {
            const uint32_t lo = static_cast<uint32_t>(first - strs.begin());
            const uint32_t hi = static_cast<uint32_t>(last - strs.begin());
            if (f.key_list) {
              const uint64_t used = s.frames[s.depth - 2].bits;
              bool open = false;
              for (uint32_t i = lo; i < hi && !open; ++i) open = !(used >> i & 1);
              if (!open) return Step::Rejected;
            }
            f.lo = lo;
            f.hi = hi;
            ++f.count;
            if (f.key_list && strs[lo].size() == f.count) {
              Frame& object = s.frames[s.depth - 2];
              object.bits |= 1ull << lo;
              object.target = n.property_nodes[lo];
              object.phase = kObjectColon;
              --s.depth;
            }
            return Step::Accepted;
          }
          if (f.key_list || strs[f.lo].size() != off) return Step::Rejected;
          --s.depth;  // the value ended before this byte
          continue;
        }
      }
      return Step::Rejected;
    }
  }

  // A parse whose document is complete, or whose top-level number could end here.
  bool complete(const Stack& s) const {
    if (s.depth == 0) return true;
    if (s.depth != 1) return false;
    const Frame& f = s.top();
    if (f.kind == Kind::Number) return number_can_end(f.phase);
    if (f.kind == Kind::Literal) return !f.key_list && nodes_[f.node].literals[f.lo].size() == f.count;
    return false;
  }

  const std::vector<uint32_t>& alternatives(uint32_t node) const { return nodes_[node].alternatives; }

 private:
  static Frame literal_frame(uint32_t node, size_t size, bool key_list) {
    Frame f{};
    f.kind = Kind::Literal;
    f.node = node;
    f.key_list = key_list;
    f.hi = static_cast<uint32_t>(size);
    return f;
  }

  static Step whitespace(Stack& s, uint8_t c) {
    if (s.ws_run >= kMaxWhitespace) return Step::Rejected;
    const uint8_t bit = c == '\n' ? 1 : c == '\r' ? 2 : 0;
    if (s.ws_breaks & bit) return Step::Rejected;
    s.ws_breaks |= bit;
    ++s.ws_run;
    return Step::Accepted;
  }

  // A container opens only where its first member still fits under the depth limit.
  static bool room_for_container(const Stack& s) { return s.depth + 2 <= kMaxDepth; }

  // Turns a Value frame into the frame its first byte starts. Accepted: the byte is read;
  // Ended: the new frame must read it.
  static Step start_value(const Stack& s, Frame& f, const Node& n, uint8_t c) {
    const uint32_t node = f.node;
    f = Frame{};
    f.node = node;
    switch (c) {
      case '{':
        if (!(n.types & kObject) || !room_for_container(s)) return Step::Rejected;
        f.kind = Kind::Object;
        f.phase = kObjectFirst;
        f.bits = n.unavailable;
        f.pool_begin = s.pool_size;
        return Step::Accepted;
      case '[':
        if (!(n.types & kArray) || !room_for_container(s)) return Step::Rejected;
        f.kind = Kind::Array;
        f.phase = kArrayFirst;
        return Step::Accepted;
      case '"':
        if (!(n.types & kString)) return Step::Rejected;
        f.kind = Kind::String;
        f.phase = kPlain;
        return Step::Accepted;
      case 't':
      case 'f':
      case 'n':
        if (n.literals.empty()) return Step::Rejected;
        f = literal_frame(node, n.literals.size(), false);
        return Step::Ended;
      default:
        if ((c == '-' || (c >= '0' && c <= '9')) && (n.types & (kNumber | kInteger))) {
          f.kind = Kind::Number;
          f.phase = kStart;
          f.fractions = (n.types & kNumber) != 0;
          return Step::Ended;
        }
        return Step::Rejected;
    }
  }

  bool key_possible(const Stack& s, const Frame& f, const Node& n) const {
    if (n.additional != kNone && s.pool_size < kMaxKeyHashes) return true;
    return (f.bits & n.all_properties()) != n.all_properties();
  }

  // The opening quote of a key: any key when undeclared ones are allowed, else a declared one.
  Step begin_key(Stack& s, const Frame& object, const Node& n) const {
    if (!key_possible(s, object, n)) return Step::Rejected;
    Frame k{};
    k.node = object.node;
    if (n.additional != kNone && s.pool_size < kMaxKeyHashes) {
      k.kind = Kind::Key;
      k.phase = kPlain;
      k.bits = hash_init();
    } else {
      k = literal_frame(object.node, n.key_literals.size(), true);
      k.count = 1;  // every key literal starts with the quote just read
    }
    return s.push(k) ? Step::Accepted : Step::Rejected;
  }

  // The closing quote of a key read as a free string: find what it names.
  Step end_key(Stack& s, const Frame& key) const {
    Frame& object = s.frames[s.depth - 2];
    const Node& n = nodes_[object.node];
    uint32_t target = kNone;
    for (size_t i = 0; i < n.key_hashes.size(); ++i) {
      if (n.key_hashes[i] != key.bits) continue;
      if (object.bits >> i & 1) return Step::Rejected;  // used, or no value can satisfy it
      object.bits |= 1ull << i;
      target = n.property_nodes[i];
      break;
    }
    if (target == kNone) {
      for (uint32_t i = object.pool_begin; i < s.pool_size; ++i)
        if (s.pool[i] == key.bits) return Step::Rejected;
      if (s.pool_size >= kMaxKeyHashes) return Step::Rejected;
      s.pool[s.pool_size++] = key.bits;
      target = n.additional;
    }
    object.target = target;
    object.phase = kObjectColon;
    --s.depth;
    return Step::Accepted;
  }

  Step string_byte(Stack& s, Frame& f, const Node& n, uint8_t c) const {
    const bool key = f.kind == Kind::Key;
    switch (f.phase) {
      case kPlain:
        if (c == '"') {
          if (key) return end_key(s, f);
          if (f.count < n.min_length) return Step::Rejected;
          --s.depth;
          return Step::Accepted;
        }
        if (c < 0x20) return Step::Rejected;
        if (!key && f.count >= n.max_length) return Step::Rejected;
        if (c == '\\') {
          ++f.count;
          f.phase = kEscape;
          return Step::Accepted;
        }
        if (c < 0x80) {
          ++f.count;
          if (key) f.bits = hash_byte(f.bits, c);
          return Step::Accepted;
        }
        {
          const int len = utf8::sequence_length(c);
          if (len < 2) return Step::Rejected;
          ++f.count;
          if (key) f.bits = hash_byte(f.bits, c);
          f.phase = kUtf8;
          f.digits = static_cast<uint8_t>(len - 1);
          f.lo = c;  // the lead byte decides the range of the next one
        }
        return Step::Accepted;
      case kUtf8: {
        const bool first = f.lo != 0;
        if (first ? !utf8::valid_second_byte(static_cast<uint8_t>(f.lo), c) : (c < 0x80 || c > 0xBF))
          return Step::Rejected;
        f.lo = 0;
        if (key) f.bits = hash_byte(f.bits, c);
        if (--f.digits == 0) f.phase = kPlain;
        return Step::Accepted;
      }
      case kEscape: {
        char decoded;
        switch (c) {
          case '"': decoded = '"'; break;
          case '\\': decoded = '\\'; break;
          case '/': decoded = '/'; break;
          case 'b': decoded = '\b'; break;
          case 'f': decoded = '\f'; break;
          case 'n': decoded = '\n'; break;
          case 'r': decoded = '\r'; break;
          case 't': decoded = '\t'; break;
          case 'u':
            f.phase = kHex;
            f.digits = 0;
            f.target = 0;
            return Step::Accepted;
          default: return Step::Rejected;
        }
        if (key) f.bits = hash_byte(f.bits, static_cast<uint8_t>(decoded));
        f.phase = kPlain;
        return Step::Accepted;
      }
      case kHex:
      case kLowHex: {
        const int d = hex_value(c);
        if (d < 0) return Step::Rejected;
        const bool low = f.phase == kLowHex;
        // Surrogates must pair up: D800-DBFF then DC00-DFFF, nothing else in D800-DFFF.
        if (low && f.digits == 0 && d != 0xD) return Step::Rejected;
        if (low && f.digits == 1 && d < 0xC) return Step::Rejected;
        if (!low && f.digits == 1 && (f.target & 0xF) == 0xD && d >= 0xC) return Step::Rejected;
        f.target = (f.target << 4) | static_cast<uint32_t>(d);
        if (++f.digits < 4) return Step::Accepted;
        if (!low && f.target >= 0xD800 && f.target <= 0xDBFF) {
          f.phase = kLowBackslash;
          return Step::Accepted;
        }
        uint32_t cp = f.target;
        if (low) cp = 0x10000 + (((f.target >> 16) - 0xD800) << 10) + ((f.target & 0xFFFF) - 0xDC00);
        if (key) f.bits = hash_code_point(f.bits, cp);
        f.phase = kPlain;
        return Step::Accepted;
      }
      case kLowBackslash:
        if (c != '\\') return Step::Rejected;
        f.phase = kLowU;
        return Step::Accepted;
      case kLowU:
        if (c != 'u') return Step::Rejected;
        f.phase = kLowHex;
        f.digits = 0;
        return Step::Accepted;
    }
    return Step::Rejected;
  }

  static Step number_byte(Frame& f, uint8_t c) {
    const bool digit = c >= '0' && c <= '9';
    const auto grow = [&](int limit) {
      if (f.count >= static_cast<uint32_t>(limit)) return Step::Rejected;
      ++f.count;
      return Step::Accepted;
    };
    const auto enter = [&](uint8_t state) {
      f.phase = state;
      f.count = 0;
      return Step::Accepted;
    };
    const bool fractions = f.fractions;
    switch (f.phase) {
      case kStart:
        if (c == '-') return enter(kMinus);
        [[fallthrough]];
      case kMinus:
        if (c == '0') return enter(kZero);
        if (digit) {
          enter(kInt);
          return grow(kMaxIntegerDigits);
        }
        return Step::Rejected;
      case kInt:
        if (digit) return grow(kMaxIntegerDigits);
        [[fallthrough]];
      case kZero:
        if (digit) return Step::Rejected;  // no leading zeros
        if (fractions && c == '.') return enter(kFracStart);
        if (fractions && (c == 'e' || c == 'E')) return enter(kExpStart);
        return Step::Ended;
      case kFracStart:
        if (!digit) return Step::Rejected;
        enter(kFrac);
        return grow(kMaxFractionDigits);
      case kFrac:
        if (digit) return grow(kMaxFractionDigits);
        if (c == 'e' || c == 'E') return enter(kExpStart);
        return Step::Ended;
      case kExpStart:
        if (c == '+' || c == '-') return enter(kExpSign);
        [[fallthrough]];
      case kExpSign:
        if (!digit) return Step::Rejected;
        enter(kExp);
        return grow(kMaxExponentDigits);
      case kExp:
        if (digit) return grow(kMaxExponentDigits);
        return Step::Ended;
    }
    return Step::Rejected;
  }

  const std::vector<Node>& nodes_;
};


using nlohmann::json;

std::string where(const std::string& pointer) { return pointer.empty() ? "at the root" : "at " + pointer; }

// The serialisation a model is held to for enum values and declared keys.
std::string compact(const nlohmann::json& value, const std::string& pointer) {
  try {
    return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::strict);
  } catch (const nlohmann::json::exception&) {
    fail("json schema {}: a name or value is not valid UTF-8", where(pointer));
  }
}

std::string escape_pointer_token(const std::string& key) {
  std::string out;
  for (char ch : key) {
    if (ch == '~') out += "~0";
    else if (ch == '/') out += "~1";
    else out += ch;
  }
  return out;
}

bool is_annotation(const std::string& key) {
  static const char* const kAnnotations[] = {"title",   "description", "examples",   "default",   "$schema", "$id",
                                             "$comment", "format",      "deprecated", "readOnly", "writeOnly"};
  for (const char* a : kAnnotations)
    if (key == a) return true;
  return false;
}

size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// Builds the node graph from a schema; every subschema is compiled once (keyed by its JSON
// pointer), so $ref cycles become cycles in the graph.
class Compiler {
 public:
  explicit Compiler(const json& root) : root_(root) {
    Node any;
    any.literals = {"false", "null", "true"};
    schema_.nodes.push_back(any);
  }

  Schema run() {
    schema_.root = compile(root_, "", 0);
    check_union_cycles();
    filter_enums();
    prune_unsatisfiable();
    return std::move(schema_);
  }

 private:
  uint32_t compile(const json& s, const std::string& pointer, int depth) {
    if (depth > kMaxSchemaDepth) fail("json schema {}: nested deeper than {} levels", where(pointer), kMaxSchemaDepth);
    if (s.is_boolean()) {
      if (s.get<bool>()) return kAnyNode;
      fail("json schema {}: the schema false is only supported as additionalProperties or items", where(pointer));
    }
    if (!s.is_object()) fail("json schema {}: a schema must be an object or a boolean", where(pointer));
    if (auto it = by_pointer_.find(pointer); it != by_pointer_.end()) return it->second;
    const uint32_t id = static_cast<uint32_t>(schema_.nodes.size());
    schema_.nodes.emplace_back();
    by_pointer_[pointer] = id;
    Node n = build(s, pointer, depth);
    if (n.is_enum) enum_values_[id] = s.contains("enum") ? s["enum"].get<std::vector<json>>() : std::vector<json>{s["const"]};
    schema_.nodes[id] = std::move(n);
    return id;
  }

  uint32_t child(const json& s, const std::string& pointer, const std::string& key, int depth) {
    return compile(s, pointer + "/" + escape_pointer_token(key), depth + 1);
  }

  static uint32_t size_keyword(const json& s, const char* key, const std::string& pointer) {
    const json& v = s.at(key);
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > UINT32_MAX - 1)
      fail("json schema {}: {} must be a non-negative integer", where(pointer), key);
    return static_cast<uint32_t>(v.get<int64_t>());
  }

  Node build(const json& s, const std::string& pointer, int depth) {
    static const char* const kKeywords[] = {"type",     "properties", "required", "additionalProperties",
                                            "items",    "enum",       "const",    "anyOf",
                                            "oneOf",    "$ref",       "$defs",    "definitions",
                                            "minItems", "maxItems",   "minLength", "maxLength",
                                            "nullable"};
    std::vector<std::string> constraints;
    for (const auto& [key, value] : s.items()) {
      if (is_annotation(key)) continue;
      if (std::find(std::begin(kKeywords), std::end(kKeywords), key) == std::end(kKeywords))
        fail("json schema {}: unsupported keyword '{}'", where(pointer), key);
      if (key != "$defs" && key != "definitions") constraints.push_back(key);
    }
    for (const char* container : {"$defs", "definitions"})
      if (s.contains(container) && !s[container].is_object())
        fail("json schema {}: {} must be an object", where(pointer), container);

    Node n;
    // A reference or a union stands alone: combining it with other constraints would need an
    // intersection of automata.
    for (const char* alone : {"$ref", "anyOf", "oneOf"}) {
      if (!s.contains(alone)) continue;
      for (const auto& other : constraints)
        if (other != alone)
          fail("json schema {}: '{}' together with '{}' is not supported", where(pointer), alone, other);
    }
    if (s.contains("$ref")) {
      n.alternatives.push_back(resolve(s["$ref"], pointer, depth));
      return n;
    }
    for (const char* key : {"anyOf", "oneOf"}) {
      if (!s.contains(key)) continue;
      const json& list = s[key];
      if (!list.is_array() || list.empty()) fail("json schema {}: {} must be a non-empty list", where(pointer), key);
      for (size_t i = 0; i < list.size(); ++i)
        n.alternatives.push_back(compile(list[i], pointer + "/" + key + "/" + std::to_string(i), depth + 1));
      return n;
    }

    if (s.contains("type")) {
      const json& t = s["type"];
      std::vector<json> names = t.is_array() ? t.get<std::vector<json>>() : std::vector<json>{t};
      if (names.empty()) fail("json schema {}: type must not be an empty list", where(pointer));
      n.types = 0;
      for (const json& name : names) {
        if (!name.is_string()) fail("json schema {}: type must be a name or a list of names", where(pointer));
        static const std::pair<const char*, uint8_t> kTypes[] = {
            {"object", kObject}, {"array", kArray},     {"string", kString}, {"number", kNumber},
            {"integer", kInteger}, {"boolean", kBoolean}, {"null", kNull}};
        const auto* it = std::find_if(std::begin(kTypes), std::end(kTypes),
                                      [&](const auto& p) { return name.get<std::string>() == p.first; });
        if (it == std::end(kTypes))
          fail("json schema {}: unknown type '{}'", where(pointer), name.get<std::string>());
        n.types |= it->second;
      }
    }
    if (s.contains("nullable")) {
      if (!s["nullable"].is_boolean()) fail("json schema {}: nullable must be true or false", where(pointer));
      if (s["nullable"].get<bool>()) n.types |= kNull;
    }

    if (s.contains("minLength")) n.min_length = size_keyword(s, "minLength", pointer);
    if (s.contains("maxLength")) n.max_length = size_keyword(s, "maxLength", pointer);
    if (n.min_length > n.max_length) fail("json schema {}: minLength is above maxLength", where(pointer));
    if (s.contains("minItems")) n.min_items = size_keyword(s, "minItems", pointer);
    if (s.contains("maxItems")) n.max_items = size_keyword(s, "maxItems", pointer);
    if (n.min_items > n.max_items) fail("json schema {}: minItems is above maxItems", where(pointer));
    if (s.contains("items")) {
      const json& items = s["items"];
      if (items.is_array()) fail("json schema {}: items as a list of schemas is not supported", where(pointer));
      if (items.is_boolean() && !items.get<bool>()) n.max_items = 0;
      else n.items = child(items, pointer, "items", depth);
    }
    if (n.min_items > n.max_items) n.types &= ~kArray;

    build_object(n, s, pointer, depth);

    if (s.contains("enum") && s.contains("const"))
      fail("json schema {}: enum together with const is not supported", where(pointer));
    if (s.contains("enum") && !s["enum"].is_array()) fail("json schema {}: enum must be a list", where(pointer));
    n.is_enum = s.contains("enum") || s.contains("const");
    return n;
  }

  void build_object(Node& n, const json& s, const std::string& pointer, int depth) {
    if (s.contains("additionalProperties")) {
      const json& a = s["additionalProperties"];
      if (a.is_boolean()) n.additional = a.get<bool>() ? kAnyNode : kNone;
      else n.additional = child(a, pointer, "additionalProperties", depth);
    } else if (s.contains("properties")) {
      n.additional = kNone;
    }
    std::vector<std::pair<std::string, uint32_t>> props;  // decoded name, node
    if (s.contains("properties")) {
      const json& p = s["properties"];
      if (!p.is_object()) fail("json schema {}: properties must be an object", where(pointer));
      for (const auto& [name, sub] : p.items())
        props.emplace_back(name, compile(sub, pointer + "/properties/" + escape_pointer_token(name), depth + 1));
    }
    std::vector<std::string> required;
    if (s.contains("required")) {
      const json& r = s["required"];
      if (!r.is_array()) fail("json schema {}: required must be a list of names", where(pointer));
      for (const json& name : r) {
        if (!name.is_string()) fail("json schema {}: required must be a list of names", where(pointer));
        const std::string key = name.get<std::string>();
        if (std::find(required.begin(), required.end(), key) != required.end()) continue;
        required.push_back(key);
        const bool declared =
            std::any_of(props.begin(), props.end(), [&](const auto& prop) { return prop.first == key; });
        if (declared) continue;
        if (n.additional == kNone)
          fail("json schema {}: required '{}' is not in properties and additionalProperties is false", where(pointer),
               key);
        props.emplace_back(key, n.additional);
      }
    }
    if (props.size() > static_cast<size_t>(kMaxProperties))
      fail("json schema {}: more than {} properties are not supported", where(pointer), kMaxProperties);
    for (auto& [name, node] : props) n.key_literals.push_back(compact(json(name), pointer));
    std::vector<size_t> order(props.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return n.key_literals[a] < n.key_literals[b]; });
    std::vector<std::string> keys;
    for (size_t i : order) {
      keys.push_back(n.key_literals[i]);
      n.key_hashes.push_back(hash_bytes(props[i].first));
      n.property_nodes.push_back(props[i].second);
      if (std::find(required.begin(), required.end(), props[i].first) != required.end())
        n.required |= 1ull << (keys.size() - 1);
    }
    n.key_literals = std::move(keys);
  }

  uint32_t resolve(const json& ref, const std::string& pointer, int depth) {
    if (!ref.is_string()) fail("json schema {}: $ref must be a string", where(pointer));
    const std::string r = ref.get<std::string>();
    if (r.empty() || r[0] != '#')
      fail("json schema {}: only local references (#/...) are supported, got '{}'", where(pointer), r);
    const std::string target = r.substr(1);
    json::json_pointer ptr;
    try {
      ptr = json::json_pointer(target);
    } catch (const json::exception&) {
      fail("json schema {}: $ref '{}' is not a JSON pointer", where(pointer), r);
    }
    if (!root_.contains(ptr)) fail("json schema {}: $ref '{}' points to nothing", where(pointer), r);
    return compile(root_.at(ptr), target, depth + 1);
  }

  // A union that reaches itself through unions and references alone would never read a byte.
  void check_union_cycles() {
    const auto& nodes = schema_.nodes;
    std::vector<uint8_t> state(nodes.size(), 0);  // 0 new, 1 on the path, 2 done
    std::function<void(uint32_t)> visit = [&](uint32_t id) {
      if (state[id] == 2) return;
      if (state[id] == 1) fail("json schema: a $ref or anyOf refers to itself without reading a value");
      state[id] = 1;
      for (uint32_t alt : nodes[id].alternatives) visit(alt);
      state[id] = 2;
    };
    for (uint32_t id = 0; id < nodes.size(); ++id) visit(id);
  }

  // Whether a value satisfies a node (its own enum aside when check_enum is false).
  bool matches(uint32_t id, const json& v, bool check_enum = true) const {
    const Node& n = schema_.nodes[id];
    if (!n.alternatives.empty())
      return std::any_of(n.alternatives.begin(), n.alternatives.end(), [&](uint32_t a) { return matches(a, v); });
    if (check_enum && n.is_enum) {
      const auto& values = enum_values_.at(id);
      if (std::find(values.begin(), values.end(), v) == values.end()) return false;
    }
    switch (v.type()) {
      case json::value_t::object: {
        if (!(n.types & kObject)) return false;
        uint64_t seen = 0;
        for (const auto& [key, value] : v.items()) {
          const uint64_t h = hash_bytes(key);
          const auto it = std::find(n.key_hashes.begin(), n.key_hashes.end(), h);
          if (it != n.key_hashes.end()) {
            const size_t i = static_cast<size_t>(it - n.key_hashes.begin());
            seen |= 1ull << i;
            if (!matches(n.property_nodes[i], value)) return false;
          } else if (n.additional == kNone || !matches(n.additional, value)) {
            return false;
          }
        }
        return (seen & n.required) == n.required;
      }
      case json::value_t::array:
        if (!(n.types & kArray) || v.size() < n.min_items || v.size() > n.max_items) return false;
        return std::all_of(v.begin(), v.end(), [&](const json& e) { return matches(n.items, e); });
      case json::value_t::string: {
        const size_t len = code_points(v.get_ref<const std::string&>());
        return (n.types & kString) && len >= n.min_length && len <= n.max_length;
      }
      case json::value_t::number_integer:
      case json::value_t::number_unsigned: return (n.types & (kNumber | kInteger)) != 0;
      case json::value_t::number_float: return (n.types & kNumber) && std::isfinite(v.get<double>());
      case json::value_t::boolean: return (n.types & kBoolean) != 0;
      case json::value_t::null: return (n.types & kNull) != 0;
      default: return false;
    }
  }

  // enum and const keep the values that also satisfy the other keywords beside them.
  void filter_enums() {
    for (const auto& [id, values] : enum_values_) {
      std::vector<std::string> literals;
      for (const json& v : values)
        if (matches(id, v, false)) literals.push_back(compact(v, "enum"));
      std::sort(literals.begin(), literals.end());
      literals.erase(std::unique(literals.begin(), literals.end()), literals.end());
      schema_.nodes[id].literals = std::move(literals);
    }
  }

  // Removes every branch no finite value satisfies, so that the automaton never offers a byte
  // it cannot finish.
  void prune_unsatisfiable() {
    auto& nodes = schema_.nodes;
    std::vector<char> sat(nodes.size(), 0);
    const auto object_ok = [&](const Node& n) {
      for (size_t i = 0; i < n.property_nodes.size(); ++i)
        if ((n.required >> i & 1) && !sat[n.property_nodes[i]]) return false;
      return true;
    };
    const auto array_ok = [&](const Node& n) {
      return n.min_items <= n.max_items && (n.min_items == 0 || sat[n.items]);
    };
    for (bool changed = true; changed;) {
      changed = false;
      for (uint32_t id = 0; id < nodes.size(); ++id) {
        if (sat[id]) continue;
        const Node& n = nodes[id];
        bool ok;
        if (!n.alternatives.empty())
          ok = std::any_of(n.alternatives.begin(), n.alternatives.end(), [&](uint32_t a) { return sat[a] != 0; });
        else if (n.is_enum)
          ok = !n.literals.empty();
        else
          ok = (n.types & (kString | kNumber | kInteger | kBoolean | kNull)) || ((n.types & kObject) && object_ok(n)) ||
               ((n.types & kArray) && array_ok(n));
        if (ok) sat[id] = changed = true;
      }
    }
    if (!sat[schema_.root]) fail("json schema: no JSON value satisfies it (check enum, const, required and minItems)");
    for (Node& n : nodes) {
      std::erase_if(n.alternatives, [&](uint32_t a) { return !sat[a]; });
      if (n.is_enum) continue;
      if ((n.types & kObject) && !object_ok(n)) n.types &= ~kObject;
      if ((n.types & kArray) && !array_ok(n)) n.types &= ~kArray;
      if (!sat[n.items]) n.max_items = 0;
      for (size_t i = 0; i < n.property_nodes.size(); ++i)
        if (!sat[n.property_nodes[i]]) n.unavailable |= 1ull << i;
      if (n.additional != kNone && !sat[n.additional]) n.additional = kNone;
      n.literals.clear();
      if (n.types & kBoolean) n.literals.push_back("false");
      if (n.types & kNull) n.literals.push_back("null");
      if (n.types & kBoolean) n.literals.push_back("true");
    }
  }

  const json& root_;
  Schema schema_;
  std::map<std::string, uint32_t> by_pointer_;
  std::map<uint32_t, std::vector<json>> enum_values_;
};

}  // namespace
}  // namespace json_constraint_detail

using json_constraint_detail::Compiler;
using json_constraint_detail::Machine;
using json_constraint_detail::Schema;
using json_constraint_detail::Stack;
using json_constraint_detail::Step;
using json_constraint_detail::value_frame;

namespace {

// Feeds one byte to every parse, in place: parses that reject it are dropped, a union forks one
// parse per alternative. False when none survives.
bool advance(const Machine& m, std::vector<Stack>& threads, uint8_t c) {
  size_t i = 0;
  while (i < threads.size()) {
    const Step r = m.step(threads[i], c);
    if (r == Step::Accepted) {
      ++i;
      continue;
    }
    if (r == Step::Fork) {
      const uint32_t node = threads[i].top().node;
      for (uint32_t alt : m.alternatives(node)) {
        threads.push_back(threads[i]);
        threads.back().top().node = alt;
      }
    }
    // Everything past i is still to read this byte; move the last one here and read it next.
    if (i + 1 != threads.size()) threads[i] = threads.back();
    threads.pop_back();
  }
  if (threads.size() > 1) {
    for (size_t a = 0; a < threads.size(); ++a)
      for (size_t b = threads.size(); b-- > a + 1;)
        if (threads[a] == threads[b]) {
          threads[b] = threads.back();
          threads.pop_back();
        }
    // Every parse on its own can finish a document, so dropping some keeps the output valid.
    if (threads.size() > json_constraint_detail::kMaxThreads) threads.resize(json_constraint_detail::kMaxThreads);
  }
  return !threads.empty();
}

std::vector<Stack>& scratch() {
  thread_local std::vector<Stack> threads;
  return threads;
}

}  // namespace

JsonConstraint::JsonConstraint(std::shared_ptr<const Schema> schema) : schema_(std::move(schema)) {
  threads_.emplace_back();
  threads_.back().push(value_frame(schema_->root));
}

JsonConstraint JsonConstraint::any_object() {
  static const auto schema = [] {
    const nlohmann::json object = {{"type", "object"}};
    Compiler compiler(object);
    return std::make_shared<const Schema>(compiler.run());
  }();
  return JsonConstraint(schema);
}

JsonConstraint JsonConstraint::from_schema(const nlohmann::json& schema) {
  Compiler compiler(schema);
  return JsonConstraint(std::make_shared<const Schema>(compiler.run()));
}

JsonConstraint::JsonConstraint(const JsonConstraint& other) = default;
JsonConstraint& JsonConstraint::operator=(const JsonConstraint& other) = default;
JsonConstraint::JsonConstraint(JsonConstraint&&) noexcept = default;
JsonConstraint& JsonConstraint::operator=(JsonConstraint&&) noexcept = default;
JsonConstraint::~JsonConstraint() = default;

bool JsonConstraint::can_accept(std::string_view bytes) const {
  if (bytes.empty()) return true;
  const Machine m(*schema_);
  std::vector<Stack>& threads = scratch();
  threads = threads_;
  for (char c : bytes)
    if (!advance(m, threads, static_cast<uint8_t>(c))) return false;
  return true;
}

bool JsonConstraint::accept(std::string_view bytes) {
  if (!can_accept(bytes)) return false;
  if (!bytes.empty()) std::swap(threads_, scratch());
  return true;
}

bool JsonConstraint::complete() const {
  const Machine m(*schema_);
  return std::any_of(threads_.begin(), threads_.end(), [&](const Stack& s) { return m.complete(s); });
}

int32_t best_allowed_token(const JsonConstraint& c, std::span<const float> logits,
                           const std::function<const std::string&(int32_t)>& token_bytes,
                           std::span<const int32_t> end_tokens) {
  const bool done = c.complete();
  const auto allowed = [&](int32_t id) {
    const float l = logits[static_cast<size_t>(id)];
    if (std::isnan(l) || l == -std::numeric_limits<float>::infinity()) return false;
    if (std::find(end_tokens.begin(), end_tokens.end(), id) != end_tokens.end()) return done;
    const std::string& bytes = token_bytes(id);
    return !bytes.empty() && c.can_accept(bytes);
  };
  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  const auto key = [&](int32_t id) {
    const float l = logits[static_cast<size_t>(id)];
    return std::isnan(l) ? -std::numeric_limits<float>::infinity() : l;
  };
  const auto by_logit = [&](int32_t a, int32_t b) {
    const float la = key(a), lb = key(b);
    return la > lb || (la == lb && a < b);
  };
  // Most steps are settled by one of the few most likely tokens; sort the rest only if not.
  const size_t head = std::min<size_t>(64, order.size());
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(head), order.end(), by_logit);
  for (size_t i = 0; i < head; ++i)
    if (allowed(order[i])) return order[i];
  std::sort(order.begin() + static_cast<std::ptrdiff_t>(head), order.end(), by_logit);
  for (size_t i = head; i < order.size(); ++i)
    if (allowed(order[i])) return order[i];
  return -1;
}

}  // namespace tessera
