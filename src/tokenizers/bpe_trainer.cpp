// Byte-level BPE training (see bpe_trainer.h for the rules and why they are what they are).
#include "tokenizers/bpe_trainer.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cctype>
#include <fstream>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/files.h"
#include "core/progress.h"
#include "tokenizers/bpe_tokenizer.h"
#include "tokenizers/bpe_tokenizer_impl.h"
#include "tokenizers/pcre2_regex.h"
#include "tokenizers/utf8.h"

namespace tessera {
namespace fs = std::filesystem;

std::vector<std::string> default_special_tokens() {
  return {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"};
}

namespace {

// Token ids are table indices in the loaders (tokenizer_files.cpp caps them the same way).
constexpr int64_t kMaxVocabSize = int64_t{1} << 24;
// Plain text is pre-tokenized in blocks of about this size (see bpe_trainer.h).
constexpr size_t kBlockBytes = size_t{4} << 20;
constexpr size_t kMaxBlockBytes = size_t{64} << 20;

// Distinct words of two bytes or more with their counts. The bytes live in one arena, so
// millions of short words cost little more than their text.
class WordTable {
 public:
  // Counts one occurrence; true when the word is new.
  bool add(std::string_view word) {
    if ((entries_.size() + 1) * 2 > slots_.size()) grow();
    const uint64_t h = hash_bytes(word);
    const auto tag = static_cast<uint32_t>(h >> 32);
    for (size_t i = h & mask_;; i = (i + 1) & mask_) {
      Slot& slot = slots_[i];
      if (slot.entry == kEmpty) {
        slot = Slot{tag, static_cast<uint32_t>(entries_.size())};
        entries_.push_back(Entry{arena_.size(), static_cast<uint32_t>(word.size()), 1});
        arena_.append(word);
        return true;
      }
      if (slot.tag == tag && this->word(slot.entry) == word) {
        ++entries_[slot.entry].count;
        return false;
      }
    }
  }

  size_t size() const { return entries_.size(); }
  std::string_view word(size_t i) const {
    return std::string_view(arena_).substr(entries_[i].offset, entries_[i].length);
  }
  int64_t count(size_t i) const { return entries_[i].count; }
  size_t total_bytes() const { return arena_.size(); }

 private:
  static constexpr uint32_t kEmpty = 0xFFFFFFFFu;
  struct Slot {
    uint32_t tag = 0;
    uint32_t entry = kEmpty;
  };
  struct Entry {
    size_t offset;
    uint32_t length;
    int64_t count;
  };

  void grow() {
    if (entries_.size() >= kEmpty - 1) fail("more than 4 billion distinct words in the corpus");
    const size_t capacity = std::max<size_t>(1024, slots_.size() * 2);
    slots_.assign(capacity, Slot{});
    mask_ = capacity - 1;
    for (size_t e = 0; e < entries_.size(); ++e) {
      const uint64_t h = hash_bytes(word(e));
      size_t i = h & mask_;
      while (slots_[i].entry != kEmpty) i = (i + 1) & mask_;
      slots_[i] = Slot{static_cast<uint32_t>(h >> 32), static_cast<uint32_t>(e)};
    }
  }

  std::string arena_;
  std::vector<Entry> entries_;
  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

// Pair (left << 32 | right) -> count, open addressing. Pairs that drop to zero stay; the
// merge loop only ever asks for a pair's current count.
class PairCounts {
 public:
  static constexpr uint64_t kEmpty = ~0ull;
  struct Slot {
    uint64_t key = kEmpty;
    int64_t count = 0;
    uint32_t aux = 0;  // free for the caller (the first pass numbers the pairs with it)
  };

  explicit PairCounts(size_t expected = 0) { rehash(std::bit_ceil(std::max<size_t>(1024, expected * 2))); }

  // The slot of `key`, inserted with count 0 when new; valid until the next insert.
  Slot& slot(uint64_t key) {
    size_t i = slot_of(key);
    for (;; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return slots_[i];
      if (slots_[i].key == kEmpty) break;
    }
    if ((size_ + 1) * 2 > slots_.size()) {
      rehash(slots_.size() * 2);
      i = slot_of(key);
      while (slots_[i].key != kEmpty) i = (i + 1) & mask_;
    }
    slots_[i].key = key;
    ++size_;
    return slots_[i];
  }
  int64_t get(uint64_t key) const {
    for (size_t i = slot_of(key);; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return slots_[i].count;
      if (slots_[i].key == kEmpty) return 0;
    }
  }

 private:
  size_t slot_of(uint64_t key) const { return static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> shift_); }
  void rehash(size_t capacity) {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(capacity, Slot{});
    mask_ = capacity - 1;
    shift_ = 64 - std::countr_zero(capacity);
    for (const Slot& s : old) {
      if (s.key == kEmpty) continue;
      size_t i = slot_of(s.key);
      while (slots_[i].key != kEmpty) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  int shift_ = 64;
  size_t size_ = 0;
};

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}
int32_t pair_left(uint64_t key) { return static_cast<int32_t>(key >> 32); }
int32_t pair_right(uint64_t key) { return static_cast<int32_t>(key & 0xFFFFFFFFu); }

// A pair that may be the next merge, and the words where it was seen when the entry was made.
struct QueueEntry {
  int64_t count;
  uint64_t pair;
  uint64_t order;  // push order: equal (count, pair) entries come out oldest first
  std::vector<uint32_t> words;
};

// std heaps put the "largest" on top: highest count, then smallest pair, then oldest.
struct ComesLater {
  bool operator()(const QueueEntry& x, const QueueEntry& y) const {
    if (x.count != y.count) return x.count < y.count;
    if (x.pair != y.pair) return x.pair > y.pair;
    return x.order > y.order;
  }
};

struct PairChange {
  uint64_t pair;
  int32_t delta;
  uint32_t word;
};

// Merges every non-overlapping (left, right) in one word, left to right, in place, and records
// how the pairs around each merge change. The merged pair's own count is left alone, as the
// reference does: its queue entry is gone and only comes back if a later merge re-creates it.
void merge_word(int32_t* s, uint32_t& length, uint32_t word, int32_t left, int32_t right, int32_t merged,
                std::vector<PairChange>& changes) {
  const size_t n = length;
  size_t out = 0;
  for (size_t i = 0; i < n;) {
    if (i + 1 < n && s[i] == left && s[i + 1] == right) {
      if (out > 0) {
        changes.push_back({pair_key(s[out - 1], left), -1, word});
        changes.push_back({pair_key(s[out - 1], merged), 1, word});
      }
      if (i + 2 < n) {
        changes.push_back({pair_key(right, s[i + 2]), -1, word});
        changes.push_back({pair_key(merged, s[i + 2]), 1, word});
      }
      s[out++] = merged;
      i += 2;
    } else {
      s[out++] = s[i++];
    }
  }
  length = static_cast<uint32_t>(out);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Reading

struct BpeTrainer::State {
  BpeTrainerOptions options;
  std::unique_ptr<Pcre2Regex> regex;
  WordTable words;
  std::array<int64_t, 256> single_bytes{};  // one-byte pieces: valid ASCII ones and invalid bytes
  BpeCorpusStats stats;

  void add_word(std::string_view word) {
    ++stats.words;
    const bool is_new = word.size() == 1 ? single_bytes[static_cast<unsigned char>(word[0])]++ == 0 : words.add(word);
    if (is_new) ++stats.distinct_words;
  }

  void add_document(std::string_view text) {
    if (text.empty()) return;
    ++stats.documents;
    add_block(text);
  }

  // Pre-tokenizes one block of a document (see bpe_trainer.h for where blocks are cut).
  void add_block(std::string_view text) {
    stats.text_bytes += static_cast<int64_t>(text.size());
    size_t i = 0;
    while (i < text.size()) {
      const size_t valid = utf8::valid_prefix_length(text.substr(i));
      if (valid > 0) {
        const std::string_view run = text.substr(i, valid);
        size_t previous = 0;
        regex->for_each_match(run, [&](size_t start, size_t end) {
          if (start > previous) add_word(run.substr(previous, start - previous));
          add_word(run.substr(start, end - start));
          previous = end;
        });
        if (previous < run.size()) add_word(run.substr(previous));
      }
      i += valid;
      if (i < text.size()) {
        ++stats.invalid_bytes;
        add_word(text.substr(i++, 1));
      }
    }
  }

  void add_plain_file(const fs::path& file, ProgressBar* bar) {
    std::ifstream in(file, std::ios::binary);
    if (!in) fail("{}: cannot read the file", file.string());
    const int64_t text_before = stats.text_bytes;
    std::string buffer;
    bool first = true;
    std::vector<char> chunk(kBlockBytes);
    while (true) {
      in.read(chunk.data(), static_cast<std::streamsize>(chunk.size()));
      const auto got = static_cast<size_t>(in.gcount());
      if (in.bad()) fail("{}: cannot read the file", file.string());
      stats.bytes_read += static_cast<int64_t>(got);
      if (bar) bar->add(static_cast<int64_t>(got));
      buffer.append(chunk.data(), got);
      if (first && buffer.size() >= 3) {
        if (buffer.compare(0, 3, "\xEF\xBB\xBF") == 0) buffer.erase(0, 3);
        first = false;
      }
      const bool end = got < chunk.size();
      if (end) break;
      if (buffer.size() < kBlockBytes) continue;
      size_t cut = safe_cut(buffer);
      if (cut == 0) {
        if (buffer.size() < kMaxBlockBytes) continue;
        cut = buffer.size() - utf8::incomplete_tail_length(buffer);
      }
      add_block(std::string_view(buffer).substr(0, cut));
      buffer.erase(0, cut);
    }
    if (first && buffer.compare(0, 3, "\xEF\xBB\xBF") == 0) buffer.erase(0, 3);
    add_block(buffer);
    if (stats.text_bytes > text_before) ++stats.documents;
  }

  // The last position that follows a '\n' and holds a printable ASCII character (0: none).
  static size_t safe_cut(std::string_view s) {
    for (size_t i = s.size() - 1; i > 0; --i) {
      const auto c = static_cast<unsigned char>(s[i]);
      if (s[i - 1] == '\n' && c >= 0x21 && c <= 0x7E) return i;
    }
    return 0;
  }

  void add_jsonl_file(const fs::path& file, ProgressBar* bar) {
    std::ifstream in(file, std::ios::binary);
    if (!in) fail("{}: cannot read the file", file.string());
    std::string line;
    int64_t line_number = 0;
    while (std::getline(in, line)) {
      ++line_number;
      stats.bytes_read += static_cast<int64_t>(line.size()) + (in.eof() ? 0 : 1);
      if (bar) bar->add(static_cast<int64_t>(line.size()) + 1);
      std::string_view view(line);
      if (line_number == 1 && view.substr(0, 3) == "\xEF\xBB\xBF") view.remove_prefix(3);
      if (view.find_first_not_of(" \t\r\f\v") == std::string_view::npos) continue;
      const std::string place = fmt::format("{}:{}", file.string(), line_number);
      nlohmann::json doc;
      try {
        doc = nlohmann::json::parse(view);
      } catch (const nlohmann::json::exception& e) {
        // "[json.exception.parse_error.101] parse error at line 1, column 9: what went wrong"
        std::string what = e.what();
        if (const auto bracket = what.find("] "); bracket != std::string::npos) what = what.substr(bracket + 2);
        if (const auto colon = what.find(": "); what.rfind("parse error at line", 0) == 0 && colon != std::string::npos)
          what = what.substr(colon + 2);
        fail("{}: not valid JSON: {}", place, what);
      }
      if (!doc.is_object()) fail("{}: expected a JSON object with a string field \"text\", got {}", place, doc.type_name());
      const auto it = doc.find("text");
      if (it == doc.end()) fail("{}: the object has no \"text\" field (each line needs {{\"text\": \"...\"}})", place);
      if (!it->is_string()) fail("{}: \"text\" must be a string, got {}", place, it->type_name());
      add_document(it->get_ref<const std::string&>());
    }
    if (in.bad()) fail("{}: cannot read the file", file.string());
  }
};

BpeTrainer::BpeTrainer(BpeTrainerOptions options) : state_(std::make_unique<State>()) {
  if (options.pattern.empty()) options.pattern = std::string(kCl100kPattern);
  const auto specials = static_cast<int64_t>(options.special_tokens.size());
  for (size_t i = 0; i < options.special_tokens.size(); ++i) {
    const std::string& token = options.special_tokens[i];
    if (token.empty()) fail("special token {} is empty", i + 1);
    if (!utf8::is_valid(token)) fail("special token \"{}\" is not valid UTF-8", excerpt(token));
    // The reference keys tokens by their byte-level spelling, so such a special token would
    // take the place of a byte token.
    if (const auto bytes = byte_level_decode(token); bytes && bytes->size() == 1) {
      fail("special token \"{}\" is the byte-level spelling of byte 0x{:02X}; it would replace that byte's token",
           excerpt(token), static_cast<unsigned char>((*bytes)[0]));
    }
    for (size_t j = 0; j < i; ++j) {
      if (options.special_tokens[j] == token) fail("special token \"{}\" is given twice", excerpt(token));
    }
  }
  const int64_t smallest = 256 + specials;
  if (options.vocab_size < smallest) {
    fail("vocab size {} is too small: the 256 byte tokens and {} special tokens need at least {}", options.vocab_size,
         specials, smallest);
  }
  if (options.vocab_size > kMaxVocabSize) fail("vocab size {} is too large (at most {})", options.vocab_size, kMaxVocabSize);
  if (options.min_frequency < 0) fail("min frequency {} is negative", options.min_frequency);
  state_->regex = std::make_unique<Pcre2Regex>(options.pattern, "the pre-tokenizer pattern");
  state_->options = std::move(options);
}

BpeTrainer::~BpeTrainer() = default;
BpeTrainer::BpeTrainer(BpeTrainer&&) noexcept = default;
BpeTrainer& BpeTrainer::operator=(BpeTrainer&&) noexcept = default;

const BpeCorpusStats& BpeTrainer::stats() const { return state_->stats; }
const BpeTrainerOptions& BpeTrainer::options() const { return state_->options; }

void BpeTrainer::add_text(std::string_view document) { state_->add_document(document); }

void BpeTrainer::add_file(const fs::path& file) { add_files({file}); }

void BpeTrainer::add_files(const std::vector<fs::path>& files) {
  std::unique_ptr<ProgressBar> bar;
  if (state_->options.progress) {
    int64_t total = 0;
    for (const auto& file : files) {
      std::error_code ec;
      const auto size = fs::file_size(file, ec);
      if (!ec) total += static_cast<int64_t>(size);
    }
    bar = std::make_unique<ProgressBar>("reading the corpus", total, "B");
  }
  for (const auto& file : files) {
    std::error_code ec;
    const auto status = fs::status(file, ec);
    if (!fs::exists(status)) fail("{}: no such file", file.string());
    if (!fs::is_regular_file(status)) fail("{}: not a file", file.string());
    std::string ext = file.extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (ext == ".jsonl") {
      state_->add_jsonl_file(file, bar.get());
    } else {
      state_->add_plain_file(file, bar.get());
    }
    ++state_->stats.files;
  }
}

// ---------------------------------------------------------------------------------------
// Training

TrainedBpe BpeTrainer::train() const {
  const State& st = *state_;
  const BpeTrainerOptions& options = st.options;
  if (st.stats.text_bytes == 0) fail("the corpus is empty: no text in the input");

  TrainedBpe result;
  result.pattern = options.pattern;
  result.special_count = static_cast<int32_t>(options.special_tokens.size());
  std::vector<std::string>& tokens = result.tokens;
  // Byte-level spelling -> id: the reference finds an existing token by its spelling.
  std::unordered_map<std::string, int32_t> ids_by_spelling;
  std::vector<std::string> spellings;
  const auto add_token = [&](std::string bytes, std::string spelling) {
    const auto id = static_cast<int32_t>(tokens.size());
    tokens.push_back(std::move(bytes));
    ids_by_spelling.emplace(spelling, id);
    spellings.push_back(std::move(spelling));
    return id;
  };
  for (const std::string& special : options.special_tokens) add_token(special, special);
  std::array<int32_t, 256> byte_id{};
  {
    std::array<int, 256> order{};
    for (int b = 0; b < 256; ++b) order[static_cast<size_t>(b)] = b;
    std::sort(order.begin(), order.end(), [](int x, int y) {
      return byte_level_char(static_cast<unsigned char>(x)) < byte_level_char(static_cast<unsigned char>(y));
    });
    for (int b : order) {
      const std::string bytes(1, static_cast<char>(b));
      byte_id[static_cast<size_t>(b)] = add_token(bytes, byte_level_encode(bytes));
    }
  }

  // Words as runs of token ids in one array; a merge shortens a word in place.
  const WordTable& table = st.words;
  const size_t word_count = table.size();
  std::vector<int32_t> symbols(table.total_bytes());
  std::vector<size_t> begin(word_count);
  std::vector<uint32_t> length(word_count);
  std::vector<int64_t> counts(word_count);
  {
    size_t at = 0;
    for (size_t w = 0; w < word_count; ++w) {
      const std::string_view word = table.word(w);
      begin[w] = at;
      length[w] = static_cast<uint32_t>(word.size());
      counts[w] = table.count(w);
      for (char c : word) symbols[at++] = byte_id[static_cast<unsigned char>(c)];
    }
  }

  // Initial pair counts and, per pair, the words it occurs in (each word once, in order).
  PairCounts pair_counts(std::min<size_t>(symbols.size() / 4, size_t{1} << 20));
  std::vector<uint64_t> pair_of;       // dense index -> pair
  std::vector<uint32_t> words_with;    // dense index -> number of words
  std::vector<uint32_t> last_word;     // dense index -> last word counted, + 1
  for (uint32_t w = 0; w < word_count; ++w) {
    const int32_t* s = &symbols[begin[w]];
    for (uint32_t j = 0; j + 1 < length[w]; ++j) {
      const uint64_t key = pair_key(s[j], s[j + 1]);
      PairCounts::Slot& slot = pair_counts.slot(key);
      if (slot.aux == 0) {
        pair_of.push_back(key);
        words_with.push_back(0);
        last_word.push_back(0);
        slot.aux = static_cast<uint32_t>(pair_of.size());
      }
      slot.count += counts[w];
      const uint32_t index = slot.aux - 1;
      if (last_word[index] != w + 1) {
        last_word[index] = w + 1;
        ++words_with[index];
      }
    }
  }
  std::vector<QueueEntry> queue(pair_of.size());
  uint64_t order = 0;
  for (size_t i = 0; i < pair_of.size(); ++i) {
    queue[i].pair = pair_of[i];
    queue[i].count = pair_counts.get(pair_of[i]);
    queue[i].order = order++;
    queue[i].words.reserve(words_with[i]);
  }
  for (uint32_t w = 0; w < word_count; ++w) {
    const int32_t* s = &symbols[begin[w]];
    for (uint32_t j = 0; j + 1 < length[w]; ++j) {
      std::vector<uint32_t>& list = queue[pair_counts.slot(pair_key(s[j], s[j + 1])).aux - 1].words;
      if (list.empty() || list.back() != w) list.push_back(w);
    }
  }
  std::vector<uint64_t>().swap(pair_of);
  std::vector<uint32_t>().swap(words_with);
  std::vector<uint32_t>().swap(last_word);
  std::erase_if(queue, [](const QueueEntry& e) { return e.count <= 0; });
  std::make_heap(queue.begin(), queue.end(), ComesLater{});

  const auto target = static_cast<size_t>(options.vocab_size);
  std::unique_ptr<ProgressBar> bar;
  if (options.progress) {
    bar = std::make_unique<ProgressBar>("learning merges", static_cast<int64_t>(target - tokens.size()), "tokens");
  }
  const size_t initial = tokens.size();
  std::vector<TrainedBpe::Merge> steps;
  std::vector<PairChange> changes;
  std::vector<std::pair<uint64_t, uint32_t>> created;
  result.stop_reason = "the vocabulary is full";
  while (tokens.size() < target) {
    if (queue.empty()) {
      result.stop_reason = "no pair of tokens is left to merge";
      break;
    }
    std::pop_heap(queue.begin(), queue.end(), ComesLater{});
    QueueEntry top = std::move(queue.back());
    queue.pop_back();
    const int64_t current = pair_counts.get(top.pair);
    if (top.count != current) {
      top.count = current;
      queue.push_back(std::move(top));
      std::push_heap(queue.begin(), queue.end(), ComesLater{});
      continue;
    }
    if (top.count < 1) {
      result.stop_reason = "no pair of tokens is left to merge";
      break;
    }
    if (top.count < options.min_frequency) {
      result.stop_reason = fmt::format("no pair occurs {} times or more (--min-frequency)", options.min_frequency);
      break;
    }

    const int32_t left = pair_left(top.pair), right = pair_right(top.pair);
    std::string spelling = spellings[static_cast<size_t>(left)] + spellings[static_cast<size_t>(right)];
    int32_t merged;
    if (const auto it = ids_by_spelling.find(spelling); it != ids_by_spelling.end()) {
      merged = it->second;
    } else {
      merged = add_token(tokens[static_cast<size_t>(left)] + tokens[static_cast<size_t>(right)], std::move(spelling));
    }
    steps.push_back({left, right, merged});

    changes.clear();
    for (const uint32_t w : top.words) merge_word(&symbols[begin[w]], length[w], w, left, right, merged, changes);
    created.clear();
    for (const PairChange& c : changes) {
      pair_counts.slot(c.pair).count += c.delta * counts[c.word];
      if (c.delta > 0) created.emplace_back(c.pair, c.word);
    }
    std::sort(created.begin(), created.end());
    created.erase(std::unique(created.begin(), created.end()), created.end());
    for (size_t i = 0; i < created.size();) {
      size_t j = i;
      while (j < created.size() && created[j].first == created[i].first) ++j;
      const int64_t count = pair_counts.get(created[i].first);
      if (count > 0) {
        QueueEntry entry{count, created[i].first, order++, {}};
        entry.words.reserve(j - i);
        for (size_t k = i; k < j; ++k) entry.words.push_back(created[k].second);
        queue.push_back(std::move(entry));
        std::push_heap(queue.begin(), queue.end(), ComesLater{});
      }
      i = j;
    }
    if (bar) bar->update(static_cast<int64_t>(tokens.size() - initial));
  }
  if (bar) bar->finish();

  // A pair merged twice keeps the rank of its last merge (the reference's merge map).
  result.merge_steps = static_cast<int64_t>(steps.size());
  PairCounts last_step(steps.size());
  for (size_t i = 0; i < steps.size(); ++i) last_step.slot(pair_key(steps[i].left, steps[i].right)).count = static_cast<int64_t>(i);
  for (size_t i = 0; i < steps.size(); ++i) {
    if (last_step.get(pair_key(steps[i].left, steps[i].right)) == static_cast<int64_t>(i)) result.merges.push_back(steps[i]);
  }
  return result;
}

int64_t BpeTrainer::count_tokens(const Tokenizer& tokenizer) const {
  const State& st = *state_;
  int64_t total = 0;
  for (int b = 0; b < 256; ++b) {
    const int64_t n = st.single_bytes[static_cast<size_t>(b)];
    if (n == 0) continue;
    const char c = static_cast<char>(b);
    total += n * static_cast<int64_t>(tokenizer.encode(std::string_view(&c, 1), /*allow_special=*/false).size());
  }
  for (size_t w = 0; w < st.words.size(); ++w) {
    total += st.words.count(w) * static_cast<int64_t>(tokenizer.encode(st.words.word(w), /*allow_special=*/false).size());
  }
  return total;
}

// ---------------------------------------------------------------------------------------
// Files

namespace {

using ordered_json = nlohmann::ordered_json;

constexpr std::string_view kChatTemplate =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

std::string spelling_of(const TrainedBpe& trained, int32_t id) {
  const std::string& bytes = trained.tokens[static_cast<size_t>(id)];
  return id < trained.special_count ? bytes : byte_level_encode(bytes);
}

ordered_json added_token(const std::string& content, int32_t id, bool with_id) {
  ordered_json token;
  if (with_id) token["id"] = id;
  token["content"] = content;
  token["single_word"] = false;
  token["lstrip"] = false;
  token["rstrip"] = false;
  token["normalized"] = false;
  token["special"] = true;
  return token;
}

bool has_special(const TrainedBpe& trained, std::string_view text) {
  for (int32_t id = 0; id < trained.special_count; ++id) {
    if (trained.tokens[static_cast<size_t>(id)] == text) return true;
  }
  return false;
}

}  // namespace

std::string trained_tokenizer_json(const TrainedBpe& trained) {
  ordered_json root;
  root["version"] = "1.0";
  root["truncation"] = nullptr;
  root["padding"] = nullptr;
  root["added_tokens"] = ordered_json::array();
  for (int32_t id = 0; id < trained.special_count; ++id) {
    root["added_tokens"].push_back(added_token(trained.tokens[static_cast<size_t>(id)], id, true));
  }
  root["normalizer"] = nullptr;
  root["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       ordered_json::array({
           ordered_json{{"type", "Split"},
                        {"pattern", {{"Regex", trained.pattern}}},
                        {"behavior", "Isolated"},
                        {"invert", false}},
           ordered_json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}},
       })}};
  root["post_processor"] = nullptr;
  root["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}};
  ordered_json model;
  model["type"] = "BPE";
  model["dropout"] = nullptr;
  model["unk_token"] = nullptr;
  model["continuing_subword_prefix"] = nullptr;
  model["end_of_word_suffix"] = nullptr;
  model["fuse_unk"] = false;
  model["byte_fallback"] = false;
  model["ignore_merges"] = false;
  // Spellings are distinct by construction; appending skips ordered_json's linear key search,
  // which would make a large vocabulary quadratic.
  ordered_json vocab = ordered_json::object();
  auto& entries = vocab.get_ref<ordered_json::object_t&>();
  entries.reserve(trained.tokens.size());
  for (size_t id = 0; id < trained.tokens.size(); ++id) entries.emplace_back(spelling_of(trained, static_cast<int32_t>(id)), id);
  model["vocab"] = std::move(vocab);
  ordered_json merges = ordered_json::array();
  for (const TrainedBpe::Merge& m : trained.merges) {
    merges.push_back(ordered_json::array({spelling_of(trained, m.left), spelling_of(trained, m.right)}));
  }
  model["merges"] = std::move(merges);
  root["model"] = std::move(model);
  return root.dump(2) + "\n";
}

std::string trained_tokenizer_config_json(const TrainedBpe& trained) {
  ordered_json config;
  ordered_json decoder = ordered_json::object();
  for (int32_t id = 0; id < trained.special_count; ++id) {
    decoder[std::to_string(id)] = added_token(trained.tokens[static_cast<size_t>(id)], id, false);
  }
  config["added_tokens_decoder"] = std::move(decoder);
  if (trained.special_count > 0) {
    const std::string eos = has_special(trained, "<|endoftext|>") ? "<|endoftext|>" : trained.tokens[0];
    config["bos_token"] = eos;
    config["eos_token"] = eos;
  }
  if (has_special(trained, "<|pad|>")) config["pad_token"] = "<|pad|>";
  if (has_special(trained, "<|im_start|>") && has_special(trained, "<|im_end|>")) config["chat_template"] = kChatTemplate;
  // transformers would otherwise rewrite " ." as "." when decoding.
  config["clean_up_tokenization_spaces"] = false;
  config["tokenizer_class"] = "PreTrainedTokenizerFast";
  return config.dump(2) + "\n";
}

void write_trained_tokenizer(const TrainedBpe& trained, const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) fail("{}: cannot create the folder: {}", dir.string(), ec.message());
  write_file_atomically(dir / "tokenizer.json", trained_tokenizer_json(trained));
  write_file_atomically(dir / "tokenizer_config.json", trained_tokenizer_config_json(trained));
}

}  // namespace tessera
