#include "training/data.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include <fmt/format.h>

#include "core/error.h"
#include "core/progress.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "tokenizers/utf8.h"
#include "training/train_config.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace tessera::training {

namespace {

constexpr int kStateVersion = 1;
// Documents are tokenized in groups of about this many bytes, in parallel within a group, so
// memory stays bounded however large the corpus is.
constexpr size_t kGroupBytes = size_t{32} << 20;

constexpr uint64_t kShuffleStream = 0x53485546464c45ull;  // "SHUFFLE"
constexpr uint64_t kSplitStream = 0x53504c4954ull;         // "SPLIT"

bool is_data_file(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext == ".txt" || ext == ".jsonl";
}
bool is_jsonl(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext == ".jsonl";
}
bool hidden(const fs::path& p) {
  const std::string name = p.filename().string();
  return !name.empty() && name[0] == '.';
}

std::string read_whole(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot read the file", path.string());
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) fail("{}: cannot read the file", path.string());
  return out.str();
}

int64_t line_at(std::string_view text, size_t offset) {
  return 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(offset), '\n');
}

// "file:line: not valid UTF-8 (byte 0xff at offset 1234)" when `text` (which starts at
// `base_offset` in the file, on line `first_line`) is not valid UTF-8.
void check_utf8(const fs::path& file, std::string_view text, size_t base_offset, int64_t first_line) {
  const size_t valid = utf8::valid_prefix_length(text);
  if (valid == text.size()) return;
  fail("{}:{}: not valid UTF-8 (byte 0x{:02x} at offset {})", file.string(), first_line - 1 + line_at(text, valid),
       static_cast<unsigned char>(text[valid]), base_offset + valid);
}

// nlohmann's messages start with "[json.exception.parse_error.101] parse error at line 1, ...";
// the line is always 1 for one JSONL line, so keep only what went wrong.
std::string json_reason(const json::exception& e) {
  std::string what = e.what();
  if (const auto bracket = what.find("] "); what.rfind("[json.exception", 0) == 0 && bracket != std::string::npos)
    what = what.substr(bracket + 2);
  if (const auto colon = what.find(": "); what.rfind("parse error at line", 0) == 0 && colon != std::string::npos)
    what = what.substr(colon + 2);
  return what;
}

// Collects documents and tokenizes them a group at a time, appending to the corpus in order.
class Tokenizing {
 public:
  Tokenizing(Corpus& corpus, const Tokenizer& tokenizer, int32_t eos, const CorpusOptions& options, ProgressBar* bar)
      : corpus_(corpus), tokenizer_(tokenizer), eos_(eos), options_(options), bar_(bar) {}

  void add(std::string text, std::string place) {
    if (text.empty()) return;
    pending_bytes_ += text.size();
    pending_.push_back({std::move(text), std::move(place)});
    if (pending_bytes_ >= kGroupBytes) flush();
  }

  void flush() {
    if (pending_.empty()) return;
    std::vector<std::vector<int32_t>> ids(pending_.size());
    ThreadPool::global().parallel_for(pending_.size(), 1, [&](size_t begin, size_t end) {
      for (size_t i = begin; i < end; ++i) ids[i] = tokenizer_.encode(pending_[i].text, /*allow_special=*/false);
    });
    for (size_t i = 0; i < ids.size(); ++i) {
      if (options_.vocab_size > 0) {
        for (int32_t id : ids[i]) {
          if (id < 0 || id >= options_.vocab_size)
            fail("{}: the tokenizer gave token id {}, outside the model's vocab_size {} (tokenizer and model do not match)",
                 pending_[i].place, id, options_.vocab_size);
        }
      }
      corpus_.tokens.insert(corpus_.tokens.end(), ids[i].begin(), ids[i].end());
      corpus_.tokens.push_back(eos_);
      corpus_.document_ends.push_back(static_cast<int64_t>(corpus_.tokens.size()));
    }
    if (bar_) bar_->add(static_cast<int64_t>(pending_bytes_));
    pending_.clear();
    pending_bytes_ = 0;
  }

 private:
  struct Pending {
    std::string text, place;
  };
  Corpus& corpus_;
  const Tokenizer& tokenizer_;
  int32_t eos_;
  const CorpusOptions& options_;
  ProgressBar* bar_;
  std::vector<Pending> pending_;
  size_t pending_bytes_ = 0;
};

void read_txt(const fs::path& file, Tokenizing& out, Corpus& corpus) {
  std::string text = read_whole(file);
  corpus.bytes += static_cast<int64_t>(text.size());
  size_t skip = 0;
  if (text.rfind("\xEF\xBB\xBF", 0) == 0) skip = 3;  // byte-order mark
  check_utf8(file, std::string_view(text).substr(skip), skip, 1);
  if (skip) text.erase(0, skip);
  out.add(std::move(text), file.string());
}

void read_jsonl(const fs::path& file, Tokenizing& out, Corpus& corpus) {
  const std::string text = read_whole(file);
  corpus.bytes += static_cast<int64_t>(text.size());
  size_t start = text.rfind("\xEF\xBB\xBF", 0) == 0 ? 3 : 0;
  int64_t line_number = 0;
  while (start < text.size()) {
    ++line_number;
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + start, end - start);
    const size_t line_offset = start;
    start = end + 1;
    if (line.find_first_not_of(" \t\r\f\v") == std::string_view::npos) continue;
    const std::string place = fmt::format("{}:{}", file.string(), line_number);
    check_utf8(file, line, line_offset, line_number);
    json doc;
    try {
      doc = json::parse(line);
    } catch (const json::exception& e) {
      fail("{}: not valid JSON: {}", place, json_reason(e));
    }
    if (!doc.is_object()) fail("{}: expected a JSON object with a string field \"text\", got {}", place, doc.type_name());
    const auto it = doc.find("text");
    if (it == doc.end()) fail("{}: the object has no \"text\" field (each line needs {{\"text\": \"...\"}})", place);
    if (!it->is_string()) fail("{}: \"text\" must be a string, got {}", place, it->type_name());
    out.add(it->get<std::string>(), place);
  }
}

std::string hex64(uint64_t v) { return fmt::format("{:016x}", v); }

}  // namespace

// ---------------------------------------------------------------------------------------------

std::vector<fs::path> list_data_files(const std::vector<fs::path>& inputs, const std::string& what) {
  if (inputs.empty()) fail("{}: no files or folders given", what);
  std::vector<fs::path> files;
  std::set<fs::path> seen;
  auto take = [&](const fs::path& p) {
    std::error_code ec;
    fs::path key = fs::weakly_canonical(p, ec);
    if (ec) key = p;
    if (seen.insert(key).second) files.push_back(p);
  };
  for (const auto& input : inputs) {
    std::error_code ec;
    const auto status = fs::status(input, ec);
    if (!fs::exists(status)) fail("{}: {}: no such file or folder", what, input.string());
    if (fs::is_regular_file(status)) {
      if (!is_data_file(input)) fail("{}: {}: not a .txt or .jsonl file", what, input.string());
      take(input);
    } else if (fs::is_directory(status)) {
      std::vector<fs::path> found;
      fs::recursive_directory_iterator it(input, fs::directory_options::follow_directory_symlink, ec);
      if (ec) fail("{}: {}: cannot list the folder ({})", what, input.string(), ec.message());
      for (const fs::recursive_directory_iterator end; it != end; it.increment(ec)) {
        if (ec) fail("{}: {}: cannot list the folder ({})", what, input.string(), ec.message());
        if (hidden(it->path())) {
          if (it->is_directory(ec)) it.disable_recursion_pending();
          continue;
        }
        if (it->is_regular_file(ec) && is_data_file(it->path())) found.push_back(it->path());
      }
      std::sort(found.begin(), found.end());
      for (const auto& f : found) take(f);
    } else {
      fail("{}: {}: not a file or folder", what, input.string());
    }
  }
  if (files.empty()) {
    std::string names;
    for (const auto& input : inputs) names += (names.empty() ? "" : ", ") + input.string();
    fail("{}: no .txt or .jsonl files in {}", what, names);
  }
  return files;
}

Corpus read_corpus(const std::vector<fs::path>& inputs, const Tokenizer& tokenizer, const CorpusOptions& options) {
  const auto eos = tokenizer.eos_id();
  if (!eos) fail("{}: the tokenizer ({}) has no end-of-text token to put between documents", options.what, tokenizer.source());
  Corpus corpus;
  corpus.files = list_data_files(inputs, options.what);

  std::unique_ptr<ProgressBar> bar;
  if (options.progress) {
    int64_t total = 0;
    for (const auto& f : corpus.files) {
      std::error_code ec;
      const auto size = fs::file_size(f, ec);
      if (!ec) total += static_cast<int64_t>(size);
    }
    bar = std::make_unique<ProgressBar>(fmt::format("tokenizing {}", options.what), total, "B");
  }
  Tokenizing out(corpus, tokenizer, *eos, options, bar.get());
  for (const auto& file : corpus.files) {
    if (is_jsonl(file)) read_jsonl(file, out, corpus);
    else read_txt(file, out, corpus);
  }
  out.flush();
  if (bar) bar->finish();

  if (corpus.tokens.empty()) {
    std::string names;
    for (size_t i = 0; i < corpus.files.size() && i < 3; ++i) names += (i ? ", " : "") + corpus.files[i].string();
    if (corpus.files.size() > 3) names += fmt::format(" and {} more", corpus.files.size() - 3);
    fail("{}: empty corpus: no text in {} ({} file{})", options.what, names, corpus.files.size(),
         corpus.files.size() == 1 ? "" : "s");
  }
  return corpus;
}

Split split_corpus(const Corpus& corpus, double eval_fraction, uint64_t seed) {
  if (!(eval_fraction >= 0 && eval_fraction < 1)) fail("eval_fraction must be in [0, 1), got {}", eval_fraction);
  Split split;
  const int64_t docs = corpus.documents();
  if (eval_fraction == 0 || docs == 0) {
    split.train = corpus.tokens;
    split.train_documents = docs;
    return split;
  }
  if (docs == 1) {
    // One document: its tail is the eval part.
    const auto n = static_cast<int64_t>(corpus.tokens.size());
    const int64_t held = n < 2 ? 0 : std::clamp<int64_t>(std::llround(eval_fraction * static_cast<double>(n)), 1, n - 1);
    split.train.assign(corpus.tokens.begin(), corpus.tokens.end() - held);
    split.eval.assign(corpus.tokens.end() - held, corpus.tokens.end());
    split.train_documents = 1;
    split.eval_documents = held > 0 ? 1 : 0;  // a piece of the same document
    return split;
  }
  const int64_t held = std::clamp<int64_t>(std::llround(eval_fraction * static_cast<double>(docs)), 1, docs - 1);
  std::vector<int64_t> order(static_cast<size_t>(docs));
  for (int64_t i = 0; i < docs; ++i) order[static_cast<size_t>(i)] = i;
  Rng rng(stream_seed(seed, kSplitStream, 0));
  shuffle_in_place(order, rng);
  std::vector<char> is_eval(static_cast<size_t>(docs), 0);
  for (int64_t i = 0; i < held; ++i) is_eval[static_cast<size_t>(order[static_cast<size_t>(i)])] = 1;
  int64_t begin = 0;
  for (int64_t d = 0; d < docs; ++d) {
    const int64_t end = corpus.document_ends[static_cast<size_t>(d)];
    auto& dest = is_eval[static_cast<size_t>(d)] ? split.eval : split.train;
    dest.insert(dest.end(), corpus.tokens.begin() + begin, corpus.tokens.begin() + end);
    begin = end;
  }
  split.eval_documents = held;
  split.train_documents = docs - held;
  return split;
}

// ---------------------------------------------------------------------------------------------

PackedTokens::PackedTokens(std::vector<int32_t> tokens, int64_t seq_len) : tokens_(std::move(tokens)), seq_len_(seq_len) {
  if (seq_len_ < 1) fail("seq_len must be at least 1, got {}", seq_len_);
  const auto n = static_cast<int64_t>(tokens_.size());
  windows_ = n >= seq_len_ + 1 ? (n - 1) / seq_len_ : 0;
  uint64_t h = 0xcbf29ce484222325ull;
  for (int32_t t : tokens_) {
    h ^= static_cast<uint32_t>(t);
    h *= 0x100000001b3ull;
  }
  fingerprint_ = h;
}

void PackedTokens::copy_window(int64_t window, int32_t* inputs, int32_t* targets) const {
  if (window < 0 || window >= windows_) fail("window {} is out of range (0 to {})", window, windows_ - 1);
  const int32_t* start = tokens_.data() + window * seq_len_;
  std::copy(start, start + seq_len_, inputs);
  std::copy(start + 1, start + 1 + seq_len_, targets);
}

TrainLoader::TrainLoader(std::shared_ptr<const PackedTokens> data, uint64_t seed) : data_(std::move(data)), seed_(seed) {
  if (!data_ || data_->windows() == 0) fail("train data: no windows to train on");
  shuffle();
}

void TrainLoader::shuffle() {
  order_.resize(static_cast<size_t>(data_->windows()));
  for (size_t i = 0; i < order_.size(); ++i) order_[i] = static_cast<int64_t>(i);
  Rng rng(stream_seed(seed_, kShuffleStream, static_cast<uint64_t>(epoch_)));
  shuffle_in_place(order_, rng);
}

void TrainLoader::next(int64_t rows, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) {
  if (rows < 1) fail("train data: a batch needs at least one row, got {}", rows);
  const int64_t L = data_->seq_len();
  inputs.resize(static_cast<size_t>(rows * L));
  targets.resize(static_cast<size_t>(rows * L));
  for (int64_t r = 0; r < rows; ++r) {
    data_->copy_window(order_[static_cast<size_t>(position_)], inputs.data() + r * L, targets.data() + r * L);
    if (++position_ == data_->windows()) {
      ++epoch_;
      position_ = 0;
      shuffle();
    }
  }
}

json TrainLoader::state() const {
  return {{"version", kStateVersion},
          {"epoch", epoch_},
          {"position", position_},
          {"windows", data_->windows()},
          {"seq_len", data_->seq_len()},
          {"tokens", data_->token_count()},
          {"fingerprint", hex64(data_->fingerprint())},
          {"seed", std::to_string(seed_)}};
}

LoaderStateReader::LoaderStateReader(const json& state) : state_(state) {
  if (!state.is_object()) fail("{}: expected a JSON object, got {}", kWhere, state.type_name());
}

int64_t LoaderStateReader::integer(const char* key) const {
  const auto it = state_.find(key);
  if (it == state_.end() || !it->is_number_integer()) fail("{}: \"{}\" is missing or not an integer", kWhere, key);
  return it->get<int64_t>();
}

std::string LoaderStateReader::text(const char* key) const {
  const auto it = state_.find(key);
  if (it == state_.end() || !it->is_string()) fail("{}: \"{}\" is missing or not a string", kWhere, key);
  return it->get<std::string>();
}

void TrainLoader::restore(const json& s) {
  constexpr const char* where = LoaderStateReader::kWhere;
  const LoaderStateReader reader(s);
  auto integer = [&](const char* key) { return reader.integer(key); };
  auto text = [&](const char* key) { return reader.text(key); };
  if (const int64_t v = integer("version"); v != kStateVersion)
    fail("{}: version {} is not supported (expected {})", where, v, kStateVersion);
  const int64_t epoch = integer("epoch"), position = integer("position"), windows = integer("windows");
  const int64_t seq_len = integer("seq_len"), tokens = integer("tokens");
  const std::string fingerprint = text("fingerprint"), seed = text("seed");
  if (seq_len != data_->seq_len())
    fail("{}: it was made with seq_len {}, but the run now uses {}", where, seq_len, data_->seq_len());
  if (tokens != data_->token_count() || windows != data_->windows() || fingerprint != hex64(data_->fingerprint()))
    fail("{}: the training data changed since the checkpoint ({} tokens, fingerprint {}; now {} tokens, fingerprint {})",
         where, tokens, fingerprint, data_->token_count(), hex64(data_->fingerprint()));
  if (seed != std::to_string(seed_)) fail("{}: it was made with seed {}, but the run now uses {}", where, seed, seed_);
  if (epoch < 0 || position < 0 || position >= windows)
    fail("{}: position {} of epoch {} is out of range ({} windows per epoch)", where, position, epoch, windows);
  epoch_ = epoch;
  position_ = position;
  shuffle();
}

// ---------------------------------------------------------------------------------------------

EvalWindows::EvalWindows(std::vector<int32_t> tokens, int64_t seq_len) {
  const auto n = static_cast<int64_t>(tokens.size());
  if (n < 2) return;  // not even one (input, target) pair
  data_ = std::make_shared<const PackedTokens>(std::move(tokens), std::min(seq_len, n - 1));
}

int64_t EvalWindows::batches(int64_t rows) const {
  if (rows < 1) fail("eval data: a batch needs at least one row, got {}", rows);
  return (windows() + rows - 1) / rows;
}

int64_t EvalWindows::batch(int64_t index, int64_t rows, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) const {
  if (index < 0 || index >= batches(rows)) fail("eval data: batch {} is out of range ({} batches)", index, batches(rows));
  const int64_t first = index * rows;
  const int64_t filled = std::min(rows, windows() - first);
  const int64_t L = seq_len();
  inputs.resize(static_cast<size_t>(filled * L));
  targets.resize(static_cast<size_t>(filled * L));
  for (int64_t r = 0; r < filled; ++r) data_->copy_window(first + r, inputs.data() + r * L, targets.data() + r * L);
  return filled;
}

// ---------------------------------------------------------------------------------------------

DataOptions data_options(const TrainConfig& config, int64_t vocab_size) {
  DataOptions o;
  o.train_data = config.train_data;
  o.eval_data = config.eval_data;
  o.seq_len = config.training.seq_len;
  o.eval_fraction = config.training.eval_fraction;
  o.seed = config.training.seed;
  o.vocab_size = vocab_size;
  return o;
}

std::string DataStats::summary() const {
  const auto count = [](int64_t n, const char* word) { return fmt::format("{} {}{}", n, word, n == 1 ? "" : "s"); };
  std::string docs;
  if (!eval_held_out) {
    docs = fmt::format("{}; eval_data: {}, {}", count(documents, "document"), count(eval_files, "file"),
                       count(eval_documents, "document"));
  } else if (documents == 1 && eval_tokens > 0) {
    docs = fmt::format("1 document, its last {} held out for eval", count(eval_tokens, "token"));
  } else {
    docs = fmt::format("{} ({} train, {} held out for eval)", count(documents, "document"), train_documents, eval_documents);
  }
  const std::string eval = eval_windows == 0 ? std::string("no eval windows (evaluation skipped)")
                                             : fmt::format("{} of {} tokens", count(eval_windows, "eval window"), eval_seq_len);
  return fmt::format("data: {}, {}; {} train and {} eval tokens; {} of {} tokens per epoch, {}", count(files, "file"), docs,
                     train_tokens, eval_tokens, count(windows_per_epoch, "window"), seq_len, eval);
}

TrainingData load_training_data(const DataOptions& options, const Tokenizer& tokenizer) {
  if (options.seq_len < 1) fail("training.seq_len must be at least 1, got {}", options.seq_len);
  CorpusOptions co;
  co.vocab_size = options.vocab_size;
  co.progress = options.progress;
  co.what = "train_data";
  Corpus corpus = read_corpus(options.train_data, tokenizer, co);

  DataStats stats;
  stats.files = static_cast<int64_t>(corpus.files.size());
  stats.documents = corpus.documents();
  std::vector<int32_t> train_tokens, eval_tokens;
  if (!options.eval_data.empty()) {
    co.what = "eval_data";
    Corpus eval = read_corpus(options.eval_data, tokenizer, co);
    stats.eval_files = static_cast<int64_t>(eval.files.size());
    stats.eval_documents = eval.documents();
    stats.train_documents = corpus.documents();
    train_tokens = std::move(corpus.tokens);
    eval_tokens = std::move(eval.tokens);
  } else {
    Split split = split_corpus(corpus, options.eval_fraction, options.seed);
    stats.eval_held_out = true;
    stats.train_documents = split.train_documents;
    stats.eval_documents = split.eval_documents;
    train_tokens = std::move(split.train);
    eval_tokens = std::move(split.eval);
  }
  if (train_tokens.empty()) fail("train_data: nothing is left to train on after holding out the eval split");
  const auto n = static_cast<int64_t>(train_tokens.size());
  if (n < options.seq_len + 1) {
    const auto held = static_cast<int64_t>(eval_tokens.size());
    const std::string held_note =
        options.eval_data.empty() && held > 0 ? fmt::format(" ({} more are held out for eval)", held) : "";
    fail("train_data: the train split has {} token{}{}, but seq_len {} needs at least {} (add text or lower "
         "training.seq_len)",
         n, n == 1 ? "" : "s", held_note, options.seq_len, options.seq_len + 1);
  }

  TrainingData data;
  data.seed = options.seed;
  stats.train_tokens = n;
  stats.eval_tokens = static_cast<int64_t>(eval_tokens.size());
  data.train = std::make_shared<const PackedTokens>(std::move(train_tokens), options.seq_len);
  data.eval = EvalWindows(std::move(eval_tokens), options.seq_len);
  stats.seq_len = options.seq_len;
  stats.windows_per_epoch = data.train->windows();
  stats.eval_seq_len = data.eval.seq_len();
  stats.eval_windows = data.eval.windows();
  data.stats = stats;
  return data;
}

}  // namespace tessera::training
