#include "training/finetune_data.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <sstream>

#include <fmt/format.h>

#include "core/error.h"
#include "core/rng.h"
#include "core/thread_pool.h"
#include "tokenizers/utf8.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace tessera::training {

namespace {

constexpr int kStateVersion = 1;
constexpr const char* kStateKind = "finetune-rows";

// Independent random streams (core/rng.h) for the held-out examples and each epoch's order.
constexpr uint64_t kRowShuffleStream = 0x46545f524f5753ull;  // "FT_ROWS"
constexpr uint64_t kExampleSplitStream = 0x46545f53504c4954ull;  // "FT_SPLIT"

std::string hex64(uint64_t v) { return fmt::format("{:016x}", v); }

uint64_t fnv1a(uint64_t h, int32_t value) {
  h ^= static_cast<uint32_t>(value);
  return h * 0x100000001b3ull;
}

std::string lower_extension(const fs::path& p) {
  std::string ext = p.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext;
}

bool blank(std::string_view s) { return s.find_first_not_of(" \t\r\n\f\v") == std::string_view::npos; }

// nlohmann's messages start with "[json.exception.parse_error.101] parse error at line 1, ...";
// one JSONL line is always line 1, so keep only what went wrong.
std::string json_reason(const json::exception& e) {
  std::string what = e.what();
  if (const auto bracket = what.find("] "); what.rfind("[json.exception", 0) == 0 && bracket != std::string::npos)
    what = what.substr(bracket + 2);
  if (const auto colon = what.find(": "); what.rfind("parse error at line", 0) == 0 && colon != std::string::npos)
    what = what.substr(colon + 2);
  return what;
}

std::string plural(int64_t n, std::string_view word) { return fmt::format("{} {}{}", n, word, n == 1 ? "" : "s"); }

// Problems of one dataset, each kept with the position of its file so that they can be sorted
// into file and line order at the end (length problems are found after tokenizing).
class Problems {
 public:
  explicit Problems(std::vector<DataProblem>& out) : out_(out) {}

  void add(const std::string& file, int64_t line, std::string message, Severity severity) {
    order_.push_back(file.empty() ? std::numeric_limits<int64_t>::max() : file_index(file));
    out_.push_back({file, line, std::move(message), severity});
  }
  void error(const std::string& file, int64_t line, std::string message) {
    add(file, line, std::move(message), Severity::Error);
  }
  void warning(const std::string& file, int64_t line, std::string message) {
    add(file, line, std::move(message), Severity::Warning);
  }
  bool has_errors() const {
    return std::any_of(out_.begin(), out_.end(), [](const DataProblem& p) { return p.severity == Severity::Error; });
  }
  void sort() {
    std::vector<size_t> idx(out_.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
      if (order_[a] != order_[b]) return order_[a] < order_[b];
      return out_[a].line < out_[b].line;
    });
    std::vector<DataProblem> sorted;
    sorted.reserve(out_.size());
    for (size_t i : idx) sorted.push_back(std::move(out_[i]));
    out_ = std::move(sorted);
    order_.clear();
  }

 private:
  int64_t file_index(const std::string& file) {
    const auto [it, inserted] = files_.emplace(file, static_cast<int64_t>(files_.size()));
    return it->second;
  }
  std::vector<DataProblem>& out_;
  std::vector<int64_t> order_;
  std::map<std::string, int64_t> files_;
};

std::optional<std::string> read_whole(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream out;
  out << in.rdbuf();
  if (in.bad()) return std::nullopt;
  return out.str();
}

// Calls fn(line, number) for every non-blank line (a leading byte-order mark dropped).
template <typename Fn>
int64_t for_each_line(std::string_view text, Fn&& fn) {
  size_t start = text.rfind("\xEF\xBB\xBF", 0) == 0 ? 3 : 0;
  int64_t number = 0, used = 0;
  while (start < text.size()) {
    ++number;
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(start, end - start);
    start = end + 1;
    if (blank(line)) continue;
    ++used;
    fn(line, number);
  }
  return used;
}

// "not valid UTF-8 (byte 0xff at column 13)", or nothing.
std::optional<std::string> utf8_problem(std::string_view line) {
  const size_t valid = utf8::valid_prefix_length(line);
  if (valid == line.size()) return std::nullopt;
  return fmt::format("not valid UTF-8 (byte 0x{:02x} at column {})", static_cast<unsigned char>(line[valid]), valid + 1);
}

// One JSONL line as a JSON object, or a problem reported.
std::optional<json> parse_object_line(std::string_view line, const std::string& file, int64_t number,
                                      std::string_view expected, Problems& problems) {
  if (auto bad = utf8_problem(line)) {
    problems.error(file, number, *bad);
    return std::nullopt;
  }
  json doc;
  try {
    doc = json::parse(line);
  } catch (const json::exception& e) {
    problems.error(file, number, fmt::format("not valid JSON: {}", json_reason(e)));
    return std::nullopt;
  }
  if (!doc.is_object()) {
    problems.error(file, number, fmt::format("expected a JSON object {}, got {}", expected, doc.type_name()));
    return std::nullopt;
  }
  return doc;
}

// A non-empty string field; reports and returns nothing otherwise. `name` is how the field is
// named in messages ("prompt", "messages[2].content").
std::optional<std::string> string_field(const json& object, const char* key, const std::string& name,
                                        const std::string& file, int64_t number, Problems& problems) {
  const auto it = object.find(key);
  if (it == object.end()) {
    problems.error(file, number, fmt::format("{}: missing", name));
    return std::nullopt;
  }
  if (!it->is_string()) {
    problems.error(file, number, fmt::format("{}: expected a string, got {}", name, it->type_name()));
    return std::nullopt;
  }
  std::string value = it->get<std::string>();
  if (value.empty()) {
    problems.error(file, number, fmt::format("{}: empty", name));
    return std::nullopt;
  }
  if (blank(value)) {
    problems.error(file, number, fmt::format("{}: only whitespace", name));
    return std::nullopt;
  }
  return value;
}

// A line that passed the checks, waiting to be tokenized.
struct PendingExample {
  std::string file;
  int64_t line = 0;
  std::string prompt, response;       // instruction
  std::vector<ChatMessage> messages;  // chat
};

void read_instruction_line(std::string_view line, const std::string& file, int64_t number, Problems& problems,
                           std::vector<PendingExample>& out) {
  const auto doc = parse_object_line(line, file, number, R"({"prompt": "...", "response": "..."})", problems);
  if (!doc) return;
  auto prompt = string_field(*doc, "prompt", "prompt", file, number, problems);
  auto response = string_field(*doc, "response", "response", file, number, problems);
  if (!prompt || !response) return;
  PendingExample e;
  e.file = file;
  e.line = number;
  e.prompt = std::move(*prompt);
  e.response = std::move(*response);
  out.push_back(std::move(e));
}

// The first special token written out as text in `content` ("<|im_end|>"), if any: tokenized
// with the rest of the rendered conversation it would become that token and change the
// conversation's structure.
std::optional<std::string> special_token_text(const std::string& content, const Tokenizer& tokenizer) {
  for (size_t open = content.find("<|"); open != std::string::npos; open = content.find("<|", open + 1)) {
    const size_t close = content.find("|>", open + 2);
    if (close == std::string::npos) break;
    const std::string candidate = content.substr(open, close + 2 - open);
    if (const auto id = tokenizer.token_id(candidate); id && tokenizer.is_special(*id)) return candidate;
  }
  return std::nullopt;
}

void read_chat_line(std::string_view line, const std::string& file, int64_t number, const Tokenizer& tokenizer,
                    Problems& problems, std::vector<PendingExample>& out) {
  const auto doc = parse_object_line(line, file, number, R"({"messages": [...]})", problems);
  if (!doc) return;
  const auto it = doc->find("messages");
  if (it == doc->end()) {
    problems.error(file, number, R"(messages: missing (each line needs {"messages": [{"role": ..., "content": ...}, ...]}))");
    return;
  }
  if (!it->is_array()) {
    problems.error(file, number, fmt::format("messages: expected an array, got {}", it->type_name()));
    return;
  }
  if (it->empty()) {
    problems.error(file, number, "messages: empty");
    return;
  }
  bool good = true;
  std::vector<ChatMessage> messages;
  std::optional<std::string> previous;  // role of the message before, when it was readable
  size_t last_role_problem = SIZE_MAX;
  const size_t n = it->size();
  for (size_t i = 0; i < n; ++i) {
    const json& m = (*it)[i];
    const std::string name = fmt::format("messages[{}]", i);
    if (!m.is_object()) {
      problems.error(file, number, fmt::format(R"({}: expected an object {{"role": ..., "content": ...}}, got {})", name,
                                               m.type_name()));
      good = false;
      previous.reset();
      continue;
    }
    auto role = string_field(m, "role", name + ".role", file, number, problems);
    auto content = string_field(m, "content", name + ".content", file, number, problems);
    if (!content) good = false;
    if (content) {
      if (const auto special = special_token_text(*content, tokenizer)) {
        problems.error(file, number, fmt::format("{}.content: contains '{}', a special token of the tokenizer", name, *special));
        good = false;
      }
    }
    if (!role) {
      good = false;
      previous.reset();
      last_role_problem = i;
      continue;
    }
    if (*role != "system" && *role != "user" && *role != "assistant") {
      problems.error(file, number,
                     fmt::format("{}.role: unknown role '{}' (expected 'system', 'user' or 'assistant')", name, *role));
      good = false;
      previous.reset();
      last_role_problem = i;
      continue;
    }
    if (*role == "system") {
      if (i != 0) {
        // Reported, and the order of the turns around it is checked as if it were not there.
        problems.error(file, number, fmt::format("{}.role: 'system' is only allowed as the first message", name));
        good = false;
        last_role_problem = i;
        continue;
      }
    } else if (i == 0 || (previous && *previous == "system")) {
      if (*role != "user") {
        problems.error(file, number,
                       fmt::format("{}.role: the conversation must start with 'user' (after an optional 'system' "
                                   "message), got '{}'",
                                   name, *role));
        good = false;
        last_role_problem = i;
      }
    } else if (!previous) {
      // After an unreadable message (already reported) the order is picked up again from here.
    } else {
      const std::string expected = *previous == "user" ? "assistant" : "user";
      if (*role != expected) {
        problems.error(file, number,
                       fmt::format("{}.role: expected '{}' after '{}', got '{}'", name, expected, *previous, *role));
        good = false;
        last_role_problem = i;
      }
    }
    previous = *role;
    if (content) messages.push_back({*role, *content});
  }
  const json& last = it->back();
  if (last_role_problem != n - 1 && last.is_object()) {
    const auto role = last.find("role");
    if (role != last.end() && role->is_string() && role->get<std::string>() != "assistant") {
      problems.error(file, number,
                     fmt::format("messages[{}].role: the last message must be from the assistant, got '{}'", n - 1,
                                 role->get<std::string>()));
      good = false;
    }
  }
  if (!good) return;
  PendingExample e;
  e.file = file;
  e.line = number;
  e.messages = std::move(messages);
  out.push_back(std::move(e));
}

void append(FinetuneExample& e, const std::vector<int32_t>& ids, bool counted) {
  e.tokens.insert(e.tokens.end(), ids.begin(), ids.end());
  e.loss.insert(e.loss.end(), ids.size(), counted ? 1 : 0);
}

FinetuneExample tokenize_instruction(const PendingExample& p, const Tokenizer& tokenizer, int32_t eos) {
  FinetuneExample e;
  append(e, tokenizer.encode(p.prompt, /*allow_special=*/false), false);
  append(e, tokenizer.encode(p.response, /*allow_special=*/false), true);
  append(e, {eos}, true);
  return e;
}

// The conversation rendered as the server renders it, cut at each assistant turn: the text
// before a turn is exactly the prompt the server would give the model for it (the prefix
// conversation with the generation prompt), and the turn is its content and <|im_end|>. The
// pieces are tokenized one by one. Every cut but the one before an assistant's content falls
// right after a special token, where tokenizing the whole text would cut anyway; the cut before
// the content is where the server's prompt ends, so the model learns each turn from the tokens
// it will see at inference time.
FinetuneExample tokenize_chat(const PendingExample& p, const Tokenizer& tokenizer, const ChatFormat& format,
                              int32_t im_end) {
  FinetuneExample e;
  std::string done;  // the text tokenized so far
  std::vector<ChatMessage> prefix;
  for (const auto& message : p.messages) {
    if (message.role == "assistant") {
      const std::string prompt = format.render(prefix, /*add_generation_prompt=*/true);
      prefix.push_back(message);
      const std::string full = format.render(prefix, /*add_generation_prompt=*/false);
      if (prompt.compare(0, done.size(), done) != 0 || full.size() < prompt.size() ||
          full.compare(0, prompt.size(), prompt) != 0 || full.substr(prompt.size()) != message.content + "<|im_end|>")
        fail("{}:{}: the chat format does not render this conversation turn by turn (not ChatML?)", p.file, p.line);
      append(e, tokenizer.encode(std::string_view(prompt).substr(done.size()), /*allow_special=*/true), false);
      append(e, tokenizer.encode(message.content, /*allow_special=*/false), true);
      append(e, {im_end}, true);
      done = full;
    } else {
      prefix.push_back(message);
    }
  }
  return e;
}

int64_t count_loss(const std::vector<uint8_t>& loss, size_t begin, size_t end) {
  return std::count(loss.begin() + static_cast<std::ptrdiff_t>(begin), loss.begin() + static_cast<std::ptrdiff_t>(end),
                    uint8_t{1});
}

LengthSummary summarize(const std::vector<int64_t>& lengths) {
  LengthSummary s;
  if (lengths.empty()) return s;
  s.min = *std::min_element(lengths.begin(), lengths.end());
  s.max = *std::max_element(lengths.begin(), lengths.end());
  double sum = 0;
  for (int64_t n : lengths) sum += static_cast<double>(n);
  s.mean = sum / static_cast<double>(lengths.size());
  return s;
}

// The files of the dataset, or nothing with the problem reported.
std::optional<std::vector<fs::path>> dataset_files(const FinetuneDataOptions& options, Problems& problems) {
  try {
    return list_data_files(options.train_data, options.what);
  } catch (const Error& e) {
    problems.error("", 0, e.what());
    return std::nullopt;
  }
}

// Instruction and chat: check every line, tokenize the good ones, check lengths, split, pack.
void load_examples(const FinetuneDataOptions& options, const Tokenizer& tokenizer, FinetuneData& data,
                   Problems& problems) {
  const bool chat = options.task == FinetuneTask::ChatCompletion;
  std::optional<int32_t> im_end;
  if (chat) {
    im_end = tokenizer.token_id("<|im_end|>");
    if (!im_end || !tokenizer.is_special(*im_end))
      fail("{}: the tokenizer ({}) has no <|im_end|> token: chat-completion needs a model with the ChatML format",
           options.what, tokenizer.source());
  }

  const auto files = dataset_files(options, problems);
  if (!files) return;
  data.report.files = static_cast<int64_t>(files->size());
  std::vector<PendingExample> pending;
  for (const auto& path : *files) {
    const std::string file = path.string();
    if (lower_extension(path) != ".jsonl") {
      problems.error(file, 0,
                     fmt::format("not a .jsonl file ({} reads JSON lines {})", finetune_task_name(options.task),
                                 chat ? R"({"messages": [...]})" : R"({"prompt": "...", "response": "..."})"));
      continue;
    }
    const auto text = read_whole(path);
    if (!text) {
      problems.error(file, 0, "cannot read the file");
      continue;
    }
    const int64_t lines = for_each_line(*text, [&](std::string_view line, int64_t number) {
      if (chat) read_chat_line(line, file, number, tokenizer, problems, pending);
      else read_instruction_line(line, file, number, problems, pending);
    });
    if (lines == 0) problems.error(file, 0, "no examples (the file is empty or every line is blank)");
  }

  std::vector<FinetuneExample> examples(pending.size());
  parallel_for(pending.size(), 1, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i)
      examples[i] = chat ? tokenize_chat(pending[i], tokenizer, options.chat_format, *im_end)
                         : tokenize_instruction(pending[i], tokenizer, data.pad_id);
  });

  // Lengths: an example longer than a row keeps its start; one that would keep no loss token
  // cannot teach anything and is an error.
  const auto L = static_cast<size_t>(options.context_length);
  const char* counted_name = chat ? "assistant" : "response";
  std::vector<FinetuneExample> usable;
  std::vector<int64_t> lengths;
  for (size_t i = 0; i < examples.size(); ++i) {
    FinetuneExample& e = examples[i];
    const PendingExample& p = pending[i];
    if (options.vocab_size > 0) {
      for (int32_t id : e.tokens) {
        if (id < 0 || id >= options.vocab_size)
          fail("{}:{}: the tokenizer gave token id {}, outside the model's vocab_size {} (tokenizer and model do not match)",
               p.file, p.line, id, options.vocab_size);
      }
    }
    const size_t n = e.tokens.size();
    if (n > L) {
      const int64_t total_loss = count_loss(e.loss, 0, n), kept_loss = count_loss(e.loss, 0, L);
      if (kept_loss == 0) {
        const auto first = static_cast<int64_t>(std::find(e.loss.begin(), e.loss.end(), uint8_t{1}) - e.loss.begin());
        problems.error(p.file, p.line,
                       fmt::format("example has {} tokens, more than context_length {}, and its first {} token is "
                                   "token {}: cut to {} tokens it would have nothing to train on (shorten the "
                                   "{} or raise context_length)",
                                   n, L, counted_name, first + 1, L, chat ? "conversation" : "prompt"));
        continue;
      }
      problems.warning(p.file, p.line,
                       fmt::format("example has {} tokens, more than context_length {}: it will be cut to its first "
                                   "{} tokens, losing {} of its {} {} tokens",
                                   n, L, L, total_loss - kept_loss, total_loss, counted_name));
      e.tokens.resize(L);
      e.loss.resize(L);
      ++data.report.truncated;
    }
    lengths.push_back(static_cast<int64_t>(e.tokens.size()));
    data.report.total_tokens += static_cast<int64_t>(e.tokens.size());
    data.report.loss_tokens += count_loss(e.loss, 0, e.tokens.size());
    usable.push_back(std::move(e));
  }
  data.report.examples = static_cast<int64_t>(usable.size());
  data.report.lengths = summarize(lengths);
  if (usable.empty() && !problems.has_errors()) problems.error("", 0, fmt::format("{}: no examples", options.what));
  if (problems.has_errors()) return;

  // The held-out examples: round(fraction * n) of them (at least one when the fraction is above
  // zero and there are two or more; never all), chosen with the seed, both parts in file order.
  const auto count = static_cast<int64_t>(usable.size());
  int64_t held = 0;
  if (options.eval_fraction > 0 && count >= 2)
    held = std::clamp<int64_t>(std::llround(options.eval_fraction * static_cast<double>(count)), 1, count - 1);
  std::vector<char> is_eval(usable.size(), 0);
  if (held > 0) {
    std::vector<int64_t> order(usable.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
    Rng rng(stream_seed(options.seed, kExampleSplitStream, 0));
    shuffle_in_place(order, rng);
    for (int64_t i = 0; i < held; ++i) is_eval[static_cast<size_t>(order[static_cast<size_t>(i)])] = 1;
  }
  for (size_t i = 0; i < usable.size(); ++i)
    (is_eval[i] ? data.eval_examples : data.train_examples).push_back(std::move(usable[i]));
  data.train_rows = std::make_shared<const PackedExamples>(data.train_examples, options.context_length, data.pad_id);
  data.eval_rows = std::make_shared<const PackedExamples>(data.eval_examples, options.context_length, data.pad_id);
}

// Continued pre-training: the checks read_corpus makes, but every problem collected; then, when
// there are none, exactly what load_training_data does (read_corpus, split_corpus, windows).
void load_pretrain(const FinetuneDataOptions& options, const Tokenizer& tokenizer, FinetuneData& data,
                   Problems& problems) {
  const auto files = dataset_files(options, problems);
  if (!files) return;
  data.report.files = static_cast<int64_t>(files->size());
  for (const auto& path : *files) {
    const std::string file = path.string();
    const auto text = read_whole(path);
    if (!text) {
      problems.error(file, 0, "cannot read the file");
      continue;
    }
    if (lower_extension(path) == ".jsonl") {
      const int64_t lines = for_each_line(*text, [&](std::string_view line, int64_t number) {
        const auto doc = parse_object_line(line, file, number, R"({"text": "..."})", problems);
        if (!doc) return;
        const auto it = doc->find("text");
        if (it == doc->end()) problems.error(file, number, "text: missing");
        else if (!it->is_string()) problems.error(file, number, fmt::format("text: expected a string, got {}", it->type_name()));
        else if (it->get_ref<const std::string&>().empty()) problems.warning(file, number, "text: empty, skipped");
      });
      if (lines == 0) problems.warning(file, 0, "no text (the file is empty or every line is blank), skipped");
    } else {
      // A .txt file is one document: report every line with bytes that are not UTF-8.
      int64_t number = 0;
      size_t start = text->rfind("\xEF\xBB\xBF", 0) == 0 ? 3 : 0;
      const bool empty = start >= text->size();
      while (start < text->size()) {
        ++number;
        size_t end = text->find('\n', start);
        if (end == std::string::npos) end = text->size();
        if (auto bad = utf8_problem(std::string_view(*text).substr(start, end - start))) problems.error(file, number, *bad);
        start = end + 1;
      }
      if (empty) problems.warning(file, 0, "no text (the file is empty), skipped");
    }
  }
  if (problems.has_errors()) return;

  CorpusOptions co;
  co.what = options.what;
  co.vocab_size = options.vocab_size;
  Corpus corpus;
  try {
    corpus = read_corpus(options.train_data, tokenizer, co);
  } catch (const Error& e) {
    problems.error("", 0, e.what());
    return;
  }
  std::vector<int64_t> lengths;
  int64_t begin = 0;
  for (int64_t end : corpus.document_ends) {
    lengths.push_back(end - begin);
    begin = end;
  }
  data.report.examples = corpus.documents();
  data.report.lengths = summarize(lengths);
  data.report.total_tokens = static_cast<int64_t>(corpus.tokens.size());

  Split split = split_corpus(corpus, options.eval_fraction, options.seed);
  const auto n = static_cast<int64_t>(split.train.size());
  if (n < options.context_length + 1) {
    problems.error("", 0,
                   fmt::format("{}: the train split has {} token{}, but context_length {} needs at least {} (add text "
                               "or lower context_length)",
                               options.what, n, n == 1 ? "" : "s", options.context_length, options.context_length + 1));
    return;
  }
  TrainingData& t = data.pretrain;
  t.seed = options.seed;
  DataStats& s = t.stats;
  s.files = static_cast<int64_t>(corpus.files.size());
  s.documents = corpus.documents();
  s.eval_held_out = true;
  s.train_documents = split.train_documents;
  s.eval_documents = split.eval_documents;
  s.train_tokens = n;
  s.eval_tokens = static_cast<int64_t>(split.eval.size());
  t.train = std::make_shared<const PackedTokens>(std::move(split.train), options.context_length);
  t.eval = EvalWindows(std::move(split.eval), options.context_length);
  s.seq_len = options.context_length;
  s.windows_per_epoch = t.train->windows();
  s.eval_seq_len = t.eval.seq_len();
  s.eval_windows = t.eval.windows();
  // Every target of every window is counted.
  data.report.loss_tokens = t.train->windows() * options.context_length;
}

// ---------------------------------------------------------------------------------------------

class ExampleBatchSource final : public BatchSource {
 public:
  ExampleBatchSource(std::shared_ptr<const PackedExamples> train, std::shared_ptr<const PackedExamples> eval,
                     uint64_t seed)
      : loader_(std::move(train), seed), eval_(std::move(eval)) {}

  int64_t seq_len() const override { return loader_.seq_len(); }
  void next_train(int64_t rows, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) override {
    loader_.next(rows, inputs, targets, &starts_);
  }
  void segment_starts(std::vector<int32_t>& starts) const override { starts = starts_; }
  json state() const override { return loader_.state(); }
  void restore(const json& state) override { loader_.restore(state); }
  int64_t eval_seq_len() const override { return eval_ && eval_->rows() > 0 ? eval_->seq_len() : 0; }
  int64_t eval_batches(int64_t rows) const override {
    if (rows < 1) fail("eval data: a batch needs at least one row, got {}", rows);
    return eval_ ? (eval_->rows() + rows - 1) / rows : 0;
  }
  void eval_batch(int64_t index, int64_t rows, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) const override {
    const int64_t batches = eval_batches(rows);
    if (index < 0 || index >= batches) fail("eval data: batch {} is out of range ({} batches)", index, batches);
    const int64_t first = index * rows, filled = std::min(rows, eval_->rows() - first), L = eval_->seq_len();
    inputs.resize(static_cast<size_t>(filled * L));
    targets.resize(static_cast<size_t>(filled * L));
    starts_.resize(static_cast<size_t>(filled * L));
    for (int64_t r = 0; r < filled; ++r)
      eval_->copy_row(first + r, inputs.data() + r * L, targets.data() + r * L, starts_.data() + r * L);
  }

 private:
  ExampleLoader loader_;
  std::shared_ptr<const PackedExamples> eval_;
  mutable std::vector<int32_t> starts_;  // of the batch returned last
};

class PretrainBatchSource final : public BatchSource {
 public:
  explicit PretrainBatchSource(const TrainingData& data) : eval_(data.eval), loader_(data.loader()) {}

  int64_t seq_len() const override { return loader_.seq_len(); }
  void next_train(int64_t rows, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) override {
    loader_.next(rows, inputs, targets);
  }
  json state() const override { return loader_.state(); }
  void restore(const json& state) override { loader_.restore(state); }
  int64_t eval_seq_len() const override { return eval_.seq_len(); }
  int64_t eval_batches(int64_t rows) const override { return eval_.batches(rows); }
  void eval_batch(int64_t index, int64_t rows, std::vector<int32_t>& inputs, std::vector<int32_t>& targets) const override {
    eval_.batch(index, rows, inputs, targets);
  }

 private:
  EvalWindows eval_;
  TrainLoader loader_;
};

}  // namespace

// ---------------------------------------------------------------------------------------------

FinetuneTask parse_finetune_task(std::string_view name) {
  if (name == "instruction-finetune") return FinetuneTask::InstructionFinetune;
  if (name == "chat-completion") return FinetuneTask::ChatCompletion;
  if (name == "continued-pretrain") return FinetuneTask::ContinuedPretrain;
  fail("task: unknown task '{}' (expected instruction-finetune, chat-completion or continued-pretrain)", name);
}

std::string_view finetune_task_name(FinetuneTask task) {
  switch (task) {
    case FinetuneTask::InstructionFinetune: return "instruction-finetune";
    case FinetuneTask::ChatCompletion: return "chat-completion";
    case FinetuneTask::ContinuedPretrain: return "continued-pretrain";
  }
  return "unknown";
}

std::string DataProblem::format() const {
  const std::string where = file.empty() ? "" : line > 0 ? fmt::format("{}:{}: ", file, line) : file + ": ";
  return fmt::format("{}{}{}", where, severity == Severity::Warning ? "warning: " : "", message);
}

int64_t DatasetReport::errors() const {
  return std::count_if(problems.begin(), problems.end(), [](const DataProblem& p) { return p.severity == Severity::Error; });
}

int64_t DatasetReport::warnings() const { return static_cast<int64_t>(problems.size()) - errors(); }

std::string DatasetReport::summary() const {
  const bool pretrain = task == FinetuneTask::ContinuedPretrain;
  const char* unit = pretrain ? "document" : "example";
  std::string out = fmt::format("{}: {}, {}", finetune_task_name(task), plural(files, "file"), plural(examples, unit));
  if (truncated > 0) out += fmt::format(" ({} cut to context_length {})", truncated, context_length);
  out += fmt::format(", {}, {}", plural(errors(), "error"), plural(warnings(), "warning"));
  if (examples > 0) {
    out += fmt::format("; {} tokens, {} counted by the loss{}; tokens per {}: min {}, mean {:.1f}, max {}", total_tokens,
                       loss_tokens, pretrain ? " per epoch" : "", unit, lengths.min, lengths.mean, lengths.max);
  }
  return out;
}

std::string DatasetReport::format(size_t max_problems) const {
  std::string out;
  const size_t shown = max_problems == 0 ? problems.size() : std::min(max_problems, problems.size());
  for (size_t i = 0; i < shown; ++i) out += problems[i].format() + "\n";
  if (shown < problems.size()) out += fmt::format("... and {} more\n", problems.size() - shown);
  out += summary() + "\n";
  return out;
}

// ---------------------------------------------------------------------------------------------

PackedExamples::PackedExamples(const std::vector<FinetuneExample>& examples, int64_t seq_len, int32_t pad_id)
    : seq_len_(seq_len) {
  if (seq_len_ < 1) fail("context_length must be at least 1, got {}", seq_len_);
  const auto L = static_cast<size_t>(seq_len_);
  size_t used = L;  // of the current row; L: no row open
  for (size_t i = 0; i < examples.size(); ++i) {
    const FinetuneExample& e = examples[i];
    const size_t n = std::min(e.tokens.size(), L);
    if (n == 0) continue;
    if (used + n > L) {
      inputs_.resize(inputs_.size() + L, pad_id);
      targets_.resize(targets_.size() + L, kIgnoreTarget);
      for (size_t k = 0; k < L; ++k) starts_.push_back(static_cast<int32_t>(k));  // padding: alone
      row_examples_.emplace_back();
      used = 0;
    }
    // Within the example each token's target is the next token when the loss counts it; the
    // last token predicts nothing (what follows belongs to another example or is padding).
    int32_t* in = inputs_.data() + inputs_.size() - L + used;
    int32_t* tg = targets_.data() + targets_.size() - L + used;
    int32_t* st = starts_.data() + starts_.size() - L + used;
    for (size_t k = 0; k < n; ++k) {
      st[k] = static_cast<int32_t>(used);
      in[k] = e.tokens[k];
      tg[k] = k + 1 < n && e.loss[k + 1] ? e.tokens[k + 1] : kIgnoreTarget;
    }
    row_examples_.back().push_back(static_cast<int64_t>(i));
    used += n;
  }
  rows_ = static_cast<int64_t>(row_examples_.size());
  uint64_t h = 0xcbf29ce484222325ull;
  for (int32_t t : inputs_) h = fnv1a(h, t);
  for (int32_t t : targets_) h = fnv1a(h, t);
  fingerprint_ = h;
}

void PackedExamples::copy_row(int64_t row, int32_t* inputs, int32_t* targets, int32_t* starts) const {
  if (row < 0 || row >= rows_) fail("row {} is out of range (0 to {})", row, rows_ - 1);
  const size_t at = static_cast<size_t>(row * seq_len_);
  std::copy(inputs_.begin() + static_cast<std::ptrdiff_t>(at), inputs_.begin() + static_cast<std::ptrdiff_t>(at + seq_len_),
            inputs);
  std::copy(targets_.begin() + static_cast<std::ptrdiff_t>(at),
            targets_.begin() + static_cast<std::ptrdiff_t>(at + seq_len_), targets);
  if (starts)
    std::copy(starts_.begin() + static_cast<std::ptrdiff_t>(at), starts_.begin() + static_cast<std::ptrdiff_t>(at + seq_len_),
              starts);
}

ExampleLoader::ExampleLoader(std::shared_ptr<const PackedExamples> data, uint64_t seed)
    : data_(std::move(data)), seed_(seed) {
  if (!data_ || data_->rows() == 0) fail("train data: no examples to train on");
  shuffle();
}

void ExampleLoader::shuffle() {
  order_.resize(static_cast<size_t>(data_->rows()));
  for (size_t i = 0; i < order_.size(); ++i) order_[i] = static_cast<int64_t>(i);
  Rng rng(stream_seed(seed_, kRowShuffleStream, static_cast<uint64_t>(epoch_)));
  shuffle_in_place(order_, rng);
}

void ExampleLoader::next(int64_t rows, std::vector<int32_t>& inputs, std::vector<int32_t>& targets,
                         std::vector<int32_t>* starts) {
  if (rows < 1) fail("train data: a batch needs at least one row, got {}", rows);
  const int64_t L = data_->seq_len();
  inputs.resize(static_cast<size_t>(rows * L));
  targets.resize(static_cast<size_t>(rows * L));
  if (starts) starts->resize(static_cast<size_t>(rows * L));
  for (int64_t r = 0; r < rows; ++r) {
    data_->copy_row(order_[static_cast<size_t>(position_)], inputs.data() + r * L, targets.data() + r * L,
                    starts ? starts->data() + r * L : nullptr);
    if (++position_ == data_->rows()) {
      ++epoch_;
      position_ = 0;
      shuffle();
    }
  }
}

json ExampleLoader::state() const {
  return {{"version", kStateVersion}, {"kind", kStateKind},   {"epoch", epoch_},
          {"position", position_},    {"rows", data_->rows()}, {"seq_len", data_->seq_len()},
          {"fingerprint", hex64(data_->fingerprint())},        {"seed", std::to_string(seed_)}};
}

void ExampleLoader::restore(const json& s) {
  constexpr const char* where = LoaderStateReader::kWhere;
  const LoaderStateReader reader(s);
  auto integer = [&](const char* key) { return reader.integer(key); };
  auto text = [&](const char* key) { return reader.text(key); };
  if (const int64_t v = integer("version"); v != kStateVersion)
    fail("{}: version {} is not supported (expected {})", where, v, kStateVersion);
  if (const std::string kind = text("kind"); kind != kStateKind)
    fail("{}: it is a '{}' position, not one of fine-tuning examples", where, kind);
  const int64_t epoch = integer("epoch"), position = integer("position"), rows = integer("rows");
  const int64_t seq_len = integer("seq_len");
  const std::string fingerprint = text("fingerprint"), seed = text("seed");
  if (seq_len != data_->seq_len())
    fail("{}: it was made with context_length {}, but the run now uses {}", where, seq_len, data_->seq_len());
  if (rows != data_->rows() || fingerprint != hex64(data_->fingerprint()))
    fail("{}: the training data changed since the checkpoint ({} rows, fingerprint {}; now {} rows, fingerprint {})", where,
         rows, fingerprint, data_->rows(), hex64(data_->fingerprint()));
  if (seed != std::to_string(seed_)) fail("{}: it was made with seed {}, but the run now uses {}", where, seed, seed_);
  if (epoch < 0 || position < 0 || position >= rows)
    fail("{}: position {} of epoch {} is out of range ({} rows per epoch)", where, position, epoch, rows);
  epoch_ = epoch;
  position_ = position;
  shuffle();
}

// ---------------------------------------------------------------------------------------------

int64_t FinetuneData::train_rows_per_epoch() const {
  if (task() == FinetuneTask::ContinuedPretrain) return pretrain.train ? pretrain.train->windows() : 0;
  return train_rows ? train_rows->rows() : 0;
}

int64_t FinetuneData::train_loss_tokens() const {
  if (task() == FinetuneTask::ContinuedPretrain) return train_rows_per_epoch() * report.context_length;
  int64_t n = 0;
  for (const auto& e : train_examples) n += count_loss(e.loss, 0, e.loss.size());
  return n;
}

int64_t FinetuneData::train_tokens() const {
  if (task() == FinetuneTask::ContinuedPretrain) return train_rows_per_epoch() * report.context_length;
  int64_t n = 0;
  for (const auto& e : train_examples) n += static_cast<int64_t>(e.tokens.size());
  return n;
}

FinetuneData load_finetune_data(const FinetuneDataOptions& options, const Tokenizer& tokenizer) {
  if (options.context_length < 1) fail("context_length must be at least 1, got {}", options.context_length);
  if (!(options.eval_fraction >= 0 && options.eval_fraction < 1))
    fail("eval_fraction must be in [0, 1), got {}", options.eval_fraction);
  const auto eos = tokenizer.eos_id();
  if (!eos) fail("{}: the tokenizer ({}) has no end-of-text token", options.what, tokenizer.source());
  FinetuneData data;
  data.pad_id = *eos;
  data.seed = options.seed;
  data.report.task = options.task;
  data.report.context_length = options.context_length;
  Problems problems(data.report.problems);
  if (options.task == FinetuneTask::ContinuedPretrain) load_pretrain(options, tokenizer, data, problems);
  else load_examples(options, tokenizer, data, problems);
  problems.sort();
  if (!data.report.ok()) {
    data.train_examples.clear();
    data.eval_examples.clear();
    data.train_rows.reset();
    data.eval_rows.reset();
    data.pretrain = TrainingData{};
  }
  return data;
}

std::unique_ptr<BatchSource> make_batch_source(const FinetuneData& data) {
  if (!data.report.ok())
    fail("train data: {} (see the report)", plural(data.report.errors(), "error"));
  if (data.task() == FinetuneTask::ContinuedPretrain) {
    if (!data.pretrain.train) fail("train data: nothing to train on");
    return std::make_unique<PretrainBatchSource>(data.pretrain);
  }
  if (!data.train_rows || data.train_rows->rows() == 0) fail("train data: no examples to train on");
  return std::make_unique<ExampleBatchSource>(data.train_rows, data.eval_rows, data.seed);
}

// ---------------------------------------------------------------------------------------------

std::string TokenEstimate::summary() const {
  return fmt::format("{} tokens per epoch ({} counted by the loss); {}: {} tokens ({} counted by the loss)",
                     tokens_per_epoch, loss_tokens_per_epoch, plural(epochs, "epoch"), total_tokens, total_loss_tokens);
}

TokenEstimate estimate_tokens(const FinetuneData& data, int64_t epochs) {
  if (epochs < 1) fail("epochs must be at least 1, got {}", epochs);
  TokenEstimate t;
  t.epochs = epochs;
  t.tokens_per_epoch = data.train_tokens();
  t.loss_tokens_per_epoch = data.train_loss_tokens();
  t.total_tokens = t.tokens_per_epoch * epochs;
  t.total_loss_tokens = t.loss_tokens_per_epoch * epochs;
  return t;
}

double estimate_cost(int64_t tokens, double price_per_million) {
  if (tokens < 0) fail("cost estimate: the token count must not be negative, got {}", tokens);
  if (!std::isfinite(price_per_million) || price_per_million < 0)
    fail("cost estimate: the price per million tokens must be a number >= 0, got {}", price_per_million);
  return static_cast<double>(tokens) / 1e6 * price_per_million;
}

}  // namespace tessera::training
