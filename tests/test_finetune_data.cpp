// Fine-tuning data: the task formats and their loss masks, the per-line validation report,
// truncation, packing into rows, the shuffled loader and its saved position, the held-out
// split, continued pre-training against the pre-training pipeline, and the token estimate.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/paths.h"
#include "core/rng.h"
#include "models/llm/dbrx_init.h"
#include "test_util.h"
#include "tokenizers/bpe_tokenizer.h"
#include "training/data.h"
#include "training/finetune_data.h"

namespace fs = std::filesystem;
using namespace tessera;
using namespace tessera::training;
using nlohmann::json;
using tessera::testing::error_of;
using tessera::testing::TempDir;
using tessera::testing::write_file;

namespace {

// The tokenizer a fine-tuning run gets for a DBRX checkpoint: the files `tessera init` writes
// (cl100k_base with DBRX's special tokens: <|endoftext|> 100257, <|im_start|> 100278,
// <|im_end|> 100279), read back. Loaded once.
const Tokenizer* dbrx_tokenizer() {
  static const std::optional<Tokenizer> tokenizer = []() -> std::optional<Tokenizer> {
    if (!fs::exists(models_dir() / "tokenizers" / "cl100k_base.tiktoken")) return std::nullopt;
    TempDir dir;
    write_dbrx_tokenizer_files(dir.path());
    return Tokenizer::load_for_model(dir.path());
  }();
  return tokenizer ? &*tokenizer : nullptr;
}

#define REQUIRE_TOKENIZER()                                                                       \
  const Tokenizer* tok = dbrx_tokenizer();                                                       \
  if (!tok) GTEST_SKIP() << "cl100k_base.tiktoken is not installed (scripts/setup installs it)"; \
  [[maybe_unused]] const int32_t eos = *tok->eos_id()

std::string jsonl(const std::vector<json>& lines) {
  std::string out;
  for (const auto& l : lines) out += l.dump() + "\n";
  return out;
}

json chat_line(const std::vector<std::pair<std::string, std::string>>& messages) {
  json m = json::array();
  for (const auto& [role, content] : messages) m.push_back({{"role", role}, {"content", content}});
  return {{"messages", m}};
}

FinetuneDataOptions options_for(FinetuneTask task, const fs::path& file, int64_t context_length) {
  FinetuneDataOptions o;
  o.task = task;
  o.train_data = {file};
  o.context_length = context_length;
  return o;
}

// The runs of consecutive counted tokens of an example, decoded.
std::vector<std::string> counted_spans(const FinetuneExample& e, const Tokenizer& tok) {
  std::vector<std::string> spans;
  std::vector<int32_t> run;
  for (size_t i = 0; i <= e.tokens.size(); ++i) {
    if (i < e.tokens.size() && e.loss[i]) {
      run.push_back(e.tokens[i]);
    } else if (!run.empty()) {
      spans.push_back(tok.decode(run));
      run.clear();
    }
  }
  return spans;
}

// The counted targets of packed rows, decoded in order (what the loss actually sees).
std::string decoded_targets(const PackedExamples& rows, const Tokenizer& tok) {
  std::vector<int32_t> in(static_cast<size_t>(rows.seq_len())), tg(in.size()), counted;
  for (int64_t r = 0; r < rows.rows(); ++r) {
    rows.copy_row(r, in.data(), tg.data());
    for (int32_t t : tg)
      if (t != kIgnoreTarget) counted.push_back(t);
  }
  return tok.decode(counted);
}

bool has_line(const std::string& text, const std::string& line) {
  return text.find(line + "\n") != std::string::npos;
}

FinetuneExample synthetic_example(int32_t first_id, size_t length) {
  FinetuneExample e;
  for (size_t i = 0; i < length; ++i) {
    e.tokens.push_back(first_id + static_cast<int32_t>(i));
    e.loss.push_back(i % 2 == 1 ? 1 : 0);  // every other token counted, the first never
  }
  return e;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

TEST(FinetuneDataTask, NamesRoundTripAndUnknownNamesAreRefused) {
  for (auto task : {FinetuneTask::InstructionFinetune, FinetuneTask::ChatCompletion, FinetuneTask::ContinuedPretrain})
    EXPECT_EQ(parse_finetune_task(finetune_task_name(task)), task);
  EXPECT_EQ(finetune_task_name(FinetuneTask::ChatCompletion), "chat-completion");
  EXPECT_EQ(error_of([] { parse_finetune_task("chat"); }),
            "task: unknown task 'chat' (expected instruction-finetune, chat-completion or continued-pretrain)");
}

TEST(FinetuneDataInstruction, TheLossCountsTheResponseAndEosOnly) {
  REQUIRE_TOKENIZER();
  TempDir dir;
  write_file(dir / "train.jsonl", jsonl({{{"prompt", "What is the capital of France?"}, {"response", " Paris."}},
                                         {{"prompt", "Add 2 and 3.\n"}, {"response", "The sum is 5."}, {"id", 7}}}));
  const FinetuneData data = load_finetune_data(options_for(FinetuneTask::InstructionFinetune, dir / "train.jsonl", 64), *tok);
  ASSERT_TRUE(data.report.ok()) << data.report.format();
  ASSERT_EQ(data.train_examples.size(), 2u);
  EXPECT_TRUE(data.eval_examples.empty());

  const FinetuneExample& e = data.train_examples[0];
  std::vector<int32_t> expected = tok->encode("What is the capital of France?", false);
  const size_t prompt_tokens = expected.size();
  for (int32_t id : tok->encode(" Paris.", false)) expected.push_back(id);
  expected.push_back(eos);
  EXPECT_EQ(e.tokens, expected);
  for (size_t i = 0; i < e.loss.size(); ++i) EXPECT_EQ(e.loss[i], i >= prompt_tokens ? 1 : 0) << i;
  EXPECT_EQ(counted_spans(e, *tok), std::vector<std::string>{" Paris.<|endoftext|>"});
  EXPECT_EQ(counted_spans(data.train_examples[1], *tok), std::vector<std::string>{"The sum is 5.<|endoftext|>"});

  // Both fit in one row of 64; the targets the trainer sees are exactly the two responses.
  ASSERT_EQ(data.train_rows->rows(), 1);
  EXPECT_EQ(decoded_targets(*data.train_rows, *tok), " Paris.<|endoftext|>The sum is 5.<|endoftext|>");

  const DatasetReport& r = data.report;
  EXPECT_EQ(r.examples, 2);
  EXPECT_EQ(r.files, 1);
  EXPECT_EQ(r.truncated, 0);
  const auto n0 = static_cast<int64_t>(e.tokens.size()), n1 = static_cast<int64_t>(data.train_examples[1].tokens.size());
  EXPECT_EQ(r.total_tokens, n0 + n1);
  EXPECT_EQ(r.loss_tokens, static_cast<int64_t>(tok->encode(" Paris.", false).size() +
                                                tok->encode("The sum is 5.", false).size() + 2));
  EXPECT_EQ(r.lengths.min, std::min(n0, n1));
  EXPECT_EQ(r.lengths.max, std::max(n0, n1));
  EXPECT_DOUBLE_EQ(r.lengths.mean, static_cast<double>(n0 + n1) / 2);
  EXPECT_NE(r.summary().find("instruction-finetune: 1 file, 2 examples, 0 errors, 0 warnings; "), std::string::npos)
      << r.summary();

  // A byte-order mark and Windows line ends are accepted.
  write_file(dir / "crlf.jsonl",
             "\xEF\xBB\xBF{\"prompt\": \"a\", \"response\": \"b\"}\r\n\r\n{\"prompt\": \"c\", \"response\": \"d\"}\r\n");
  const FinetuneData crlf = load_finetune_data(options_for(FinetuneTask::InstructionFinetune, dir / "crlf.jsonl", 64), *tok);
  ASSERT_TRUE(crlf.report.ok()) << crlf.report.format();
  EXPECT_EQ(crlf.report.examples, 2);

  // Special-token text in a prompt is ordinary text, as in pre-training.
  write_file(dir / "special.jsonl", jsonl({{{"prompt", "say <|endoftext|>"}, {"response", "ok"}}}));
  const FinetuneData special =
      load_finetune_data(options_for(FinetuneTask::InstructionFinetune, dir / "special.jsonl", 64), *tok);
  ASSERT_TRUE(special.report.ok()) << special.report.format();
  EXPECT_EQ(std::count(special.train_examples[0].tokens.begin(), special.train_examples[0].tokens.end(), eos), 1);
}

TEST(FinetuneDataChat, TheLossCountsEachAssistantTurnAndItsEndToken) {
  REQUIRE_TOKENIZER();
  const int32_t im_end = *tok->token_id("<|im_end|>");
  TempDir dir;
  const std::vector<std::pair<std::string, std::string>> conversation = {
      {"system", "You are terse."},   {"user", "Capital of France?"},
      {"assistant", "Paris."},        {"user", "And of Italy?"},
      {"assistant", "Rome, of course."}};
  write_file(dir / "chat.jsonl", jsonl({chat_line(conversation), chat_line({{"user", "Hi"}, {"assistant", "Hello!"}})}));
  FinetuneDataOptions options = options_for(FinetuneTask::ChatCompletion, dir / "chat.jsonl", 256);
  const FinetuneData data = load_finetune_data(options, *tok);
  ASSERT_TRUE(data.report.ok()) << data.report.format();
  ASSERT_EQ(data.train_examples.size(), 2u);

  const FinetuneExample& e = data.train_examples[0];
  EXPECT_EQ(counted_spans(e, *tok), (std::vector<std::string>{"Paris.<|im_end|>", "Rome, of course.<|im_end|>"}));
  EXPECT_EQ(counted_spans(data.train_examples[1], *tok), std::vector<std::string>{"Hello!<|im_end|>"});

  // The tokens are the server's rendering of the whole conversation, and each assistant turn
  // starts exactly where the server's prompt for that turn (the prefix with the generation
  // prompt) ends.
  std::vector<ChatMessage> messages;
  for (const auto& [role, content] : conversation) messages.push_back({role, content});
  const ChatFormat format;
  EXPECT_EQ(e.tokens, tok->encode(format.render(messages, false)));
  for (size_t turn : {size_t{2}, size_t{4}}) {
    const std::vector<ChatMessage> prefix(messages.begin(), messages.begin() + static_cast<std::ptrdiff_t>(turn));
    const std::vector<int32_t> prompt = tok->encode(format.render(prefix, true));
    ASSERT_LT(prompt.size(), e.tokens.size());
    EXPECT_TRUE(std::equal(prompt.begin(), prompt.end(), e.tokens.begin())) << turn;
    EXPECT_EQ(e.loss[prompt.size() - 1], 0) << turn;
    EXPECT_EQ(e.loss[prompt.size()], 1) << turn;
  }
  EXPECT_EQ(e.tokens.back(), im_end);
  EXPECT_EQ(e.loss.back(), 1);
  EXPECT_EQ(decoded_targets(*data.train_rows, *tok), "Paris.<|im_end|>Rome, of course.<|im_end|>Hello!<|im_end|>");

  // An assistant answer that starts with a newline still starts right after the prompt the
  // server gives the model, and a model's default system prompt is rendered in.
  write_file(dir / "newline.jsonl", jsonl({chat_line({{"user", "List two."}, {"assistant", "\n\n- a\n- b"}})}));
  options = options_for(FinetuneTask::ChatCompletion, dir / "newline.jsonl", 256);
  options.chat_format.default_system = "Be brief.";
  const FinetuneData nl = load_finetune_data(options, *tok);
  ASSERT_TRUE(nl.report.ok()) << nl.report.format();
  const FinetuneExample& n = nl.train_examples[0];
  EXPECT_EQ(counted_spans(n, *tok), std::vector<std::string>{"\n\n- a\n- b<|im_end|>"});
  const std::vector<int32_t> prompt = tok->encode(options.chat_format.render({{"user", "List two."}}, true));
  EXPECT_TRUE(std::equal(prompt.begin(), prompt.end(), n.tokens.begin()));
  EXPECT_EQ(tok->decode(prompt), "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nList two.<|im_end|>\n"
                                 "<|im_start|>assistant\n");
  EXPECT_EQ(std::count(n.loss.begin(), n.loss.end(), uint8_t{1}),
            static_cast<int64_t>(n.tokens.size() - prompt.size()));
}

TEST(FinetuneDataValidation, EveryBadInstructionLineIsReportedWithItsNumber) {
  REQUIRE_TOKENIZER();
  TempDir dir;
  const std::string good = R"({"prompt": "p", "response": "r"})";
  write_file(dir / "train.jsonl",
             good + "\n" +                                   // 1
                 "not json\n" +                              // 2
                 "[1, 2]\n" +                                // 3
                 "\n   \n" +                                 // 4, 5: blank, skipped
                 R"({"response": "r"})" + "\n" +             // 6
                 R"({"prompt": 5, "response": "r"})" + "\n" +  // 7
                 R"({"prompt": "p", "response": ""})" + "\n" +  // 8
                 R"({"prompt": "  \n", "response": "r"})" + "\n" +  // 9
                 "{\"prompt\": \"caf\xe9\", \"response\": \"r\"}\n" +  // 10: Latin-1, not UTF-8
                 R"({"prompt": "p"})" + "\n" +               // 11
                 good + "\n");                               // 12
  write_file(dir / "empty.jsonl", "\n\n");
  write_file(dir / "notes.txt", "text");
  FinetuneDataOptions options = options_for(FinetuneTask::InstructionFinetune, dir / "train.jsonl", 64);
  options.train_data = {dir / "train.jsonl", dir / "empty.jsonl", dir / "notes.txt"};
  const FinetuneData data = load_finetune_data(options, *tok);
  const DatasetReport& r = data.report;
  EXPECT_FALSE(r.ok());
  const std::string text = r.format();
  const std::string f = (dir / "train.jsonl").string();
  EXPECT_TRUE(has_line(text, f + ":2: not valid JSON: syntax error while parsing value - invalid literal; last read: 'no'"))
      << text;
  EXPECT_TRUE(has_line(text, f + R"(:3: expected a JSON object {"prompt": "...", "response": "..."}, got array)")) << text;
  EXPECT_TRUE(has_line(text, f + ":6: prompt: missing")) << text;
  EXPECT_TRUE(has_line(text, f + ":7: prompt: expected a string, got number")) << text;
  EXPECT_TRUE(has_line(text, f + ":8: response: empty")) << text;
  EXPECT_TRUE(has_line(text, f + ":9: prompt: only whitespace")) << text;
  EXPECT_TRUE(has_line(text, f + ":10: not valid UTF-8 (byte 0xe9 at column 16)")) << text;
  EXPECT_TRUE(has_line(text, f + ":11: response: missing")) << text;
  EXPECT_TRUE(has_line(text, (dir / "empty.jsonl").string() + ": no examples (the file is empty or every line is blank)"))
      << text;
  EXPECT_TRUE(has_line(text, (dir / "notes.txt").string() +
                                 R"(: not a .jsonl file (instruction-finetune reads JSON lines {"prompt": "...", "response": "..."}))"))
      << text;
  EXPECT_EQ(r.errors(), 10);
  EXPECT_EQ(r.warnings(), 0);
  ASSERT_EQ(r.problems.size(), 10u);
  // In file and line order; the good lines are still counted.
  for (size_t i = 1; i < 8; ++i) EXPECT_LT(r.problems[i - 1].line, r.problems[i].line);
  EXPECT_EQ(r.examples, 2);
  EXPECT_NE(r.summary().find("2 examples, 10 errors, 0 warnings"), std::string::npos) << r.summary();
  // Bad data gives no batches.
  EXPECT_FALSE(data.train_rows);
  EXPECT_EQ(error_of([&] { make_batch_source(data); }), "train data: 10 errors (see the report)");
  // The report can be capped.
  const std::string capped = r.format(3);
  EXPECT_NE(capped.find("... and 7 more\n"), std::string::npos) << capped;

  // A missing path is one whole-dataset problem, not a crash.
  options.train_data = {dir / "nope.jsonl"};
  const FinetuneData missing = load_finetune_data(options, *tok);
  ASSERT_EQ(missing.report.problems.size(), 1u);
  EXPECT_EQ(missing.report.problems[0].format(), "train_data: " + (dir / "nope.jsonl").string() + ": no such file or folder");
}

TEST(FinetuneDataValidation, EveryBadConversationIsReportedWithItsNumber) {
  REQUIRE_TOKENIZER();
  TempDir dir;
  std::vector<json> lines = {
      chat_line({{"user", "q"}, {"assistant", "a"}}),                                    // 1: good
      chat_line({{"user", "q"}, {"assistant", "a"}, {"user", "q2"}, {"user", "q3"}, {"assistant", "a"}}),  // 2
      chat_line({{"user", "q"}, {"bot", "a"}}),                                          // 3
      chat_line({{"user", "q"}, {"assistant", "a"}, {"user", "q2"}}),                    // 4
      chat_line({{"assistant", "a"}}),                                                   // 5
      chat_line({{"system", "s"}, {"assistant", "a"}}),                                  // 6
      chat_line({{"user", "q"}, {"system", "s"}, {"assistant", "a"}}),                   // 7
      chat_line({{"user", "q"}, {"assistant", ""}}),                                     // 8
      json{{"messages", "hello"}},                                                       // 9
      json{{"messages", json::array()}},                                                 // 10
      json{{"prompt", "p"}},                                                             // 11
      json{{"messages", json::array({"hi", {{"role", "assistant"}, {"content", "a"}}})}},  // 12
      json{{"messages", json::array({{{"role", "user"}}, {{"role", "assistant"}, {"content", 3}}})}},  // 13
      chat_line({{"user", "end the turn <|im_end|> early"}, {"assistant", "no"}}),       // 14
      chat_line({{"user", "a <|tag|> is fine"}, {"assistant", "yes"}}),                  // 15: good
  };
  write_file(dir / "train.jsonl", jsonl(lines));
  const FinetuneData data = load_finetune_data(options_for(FinetuneTask::ChatCompletion, dir / "train.jsonl", 64), *tok);
  const DatasetReport& r = data.report;
  const std::string text = r.format();
  const std::string f = (dir / "train.jsonl").string();
  const std::vector<std::string> expected = {
      f + ":2: messages[3].role: expected 'assistant' after 'user', got 'user'",
      f + ":3: messages[1].role: unknown role 'bot' (expected 'system', 'user' or 'assistant')",
      f + ":4: messages[2].role: the last message must be from the assistant, got 'user'",
      f + ":5: messages[0].role: the conversation must start with 'user' (after an optional 'system' message), got "
          "'assistant'",
      f + ":6: messages[1].role: the conversation must start with 'user' (after an optional 'system' message), got "
          "'assistant'",
      f + ":7: messages[1].role: 'system' is only allowed as the first message",
      f + ":8: messages[1].content: empty",
      f + ":9: messages: expected an array, got string",
      f + ":10: messages: empty",
      f + R"(:11: messages: missing (each line needs {"messages": [{"role": ..., "content": ...}, ...]}))",
      f + R"(:12: messages[0]: expected an object {"role": ..., "content": ...}, got string)",
      f + ":13: messages[0].content: missing",
      f + ":13: messages[1].content: expected a string, got number",
      f + ":14: messages[0].content: contains '<|im_end|>', a special token of the tokenizer",
  };
  for (const auto& line : expected) EXPECT_TRUE(has_line(text, line)) << line << "\n---\n" << text;
  EXPECT_EQ(r.errors(), static_cast<int64_t>(expected.size())) << text;
  EXPECT_EQ(r.examples, 2);
  EXPECT_FALSE(r.ok());
  // The line of the message in the brief: an out-of-order turn names both roles.
  EXPECT_EQ(r.problems[0].format(), expected[0]);
  EXPECT_EQ(r.problems[0].severity, Severity::Error);
}

TEST(FinetuneDataLength, ALongExampleIsCutWithAWarningButOneWithNothingLeftToLearnIsAnError) {
  REQUIRE_TOKENIZER();
  TempDir dir;
  const std::string short_prompt = "Count:";
  std::string long_response, long_prompt;
  for (int i = 0; i < 40; ++i) long_response += fmt::format(" {}", i);
  for (int i = 0; i < 40; ++i) long_prompt += fmt::format(" word{}", i);
  const int64_t L = 24;
  const auto prompt_tokens = static_cast<int64_t>(tok->encode(short_prompt, false).size());
  const auto response_tokens = static_cast<int64_t>(tok->encode(long_response, false).size()) + 1;  // + EOS
  const auto long_prompt_tokens = static_cast<int64_t>(tok->encode(long_prompt, false).size());
  ASSERT_GT(prompt_tokens + response_tokens, L);
  ASSERT_GT(long_prompt_tokens, L);

  write_file(dir / "train.jsonl", jsonl({{{"prompt", "Hi"}, {"response", "Hello"}},
                                         {{"prompt", short_prompt}, {"response", long_response}},
                                         {{"prompt", long_prompt}, {"response", "ok"}}}));
  FinetuneData data = load_finetune_data(options_for(FinetuneTask::InstructionFinetune, dir / "train.jsonl", L), *tok);
  const std::string f = (dir / "train.jsonl").string();
  const int64_t n = prompt_tokens + response_tokens;
  const int64_t lost = n - L;  // all of the cut tokens are response tokens
  ASSERT_EQ(data.report.problems.size(), 2u) << data.report.format();
  EXPECT_EQ(data.report.problems[0].format(),
            fmt::format("{}:2: warning: example has {} tokens, more than context_length {}: it will be cut to its first "
                        "{} tokens, losing {} of its {} response tokens",
                        f, n, L, L, lost, response_tokens));
  EXPECT_EQ(data.report.problems[0].severity, Severity::Warning);
  EXPECT_EQ(data.report.problems[1].format(),
            fmt::format("{}:3: example has {} tokens, more than context_length {}, and its first response token is "
                        "token {}: cut to {} tokens it would have nothing to train on (shorten the prompt or raise "
                        "context_length)",
                        f, long_prompt_tokens + tok->encode("ok", false).size() + 1, L, long_prompt_tokens + 1, L));
  EXPECT_FALSE(data.report.ok());
  EXPECT_EQ(data.report.truncated, 1);
  EXPECT_EQ(data.report.examples, 2);

  // Without the hopeless line the warning alone does not stop the run; the cut example keeps
  // its start and fills a row of its own.
  write_file(dir / "ok.jsonl", jsonl({{{"prompt", "Hi"}, {"response", "Hello"}},
                                      {{"prompt", short_prompt}, {"response", long_response}}}));
  data = load_finetune_data(options_for(FinetuneTask::InstructionFinetune, dir / "ok.jsonl", L), *tok);
  ASSERT_TRUE(data.report.ok()) << data.report.format();
  EXPECT_EQ(data.report.warnings(), 1);
  ASSERT_EQ(data.train_examples.size(), 2u);
  const FinetuneExample& cut = data.train_examples[1];
  ASSERT_EQ(static_cast<int64_t>(cut.tokens.size()), L);
  std::vector<int32_t> full = tok->encode(short_prompt, false);
  for (int32_t id : tok->encode(long_response, false)) full.push_back(id);
  EXPECT_TRUE(std::equal(cut.tokens.begin(), cut.tokens.end(), full.begin()));
  EXPECT_EQ(data.report.lengths.max, L);
  EXPECT_EQ(data.train_rows->rows(), 2);
  EXPECT_EQ(data.train_rows->row_examples()[1], std::vector<int64_t>{1});

  // A chat whose assistant turn starts past the cut is an error too, named for the conversation.
  write_file(dir / "chat.jsonl", jsonl({chat_line({{"user", long_prompt}, {"assistant", "ok"}})}));
  data = load_finetune_data(options_for(FinetuneTask::ChatCompletion, dir / "chat.jsonl", L), *tok);
  ASSERT_EQ(data.report.errors(), 1);
  EXPECT_NE(data.report.problems[0].message.find("its first assistant token is token"), std::string::npos);
  EXPECT_NE(data.report.problems[0].message.find("(shorten the conversation or raise context_length)"), std::string::npos);
}

TEST(FinetuneDataPacking, GreedyInOrderAndNoExampleIsSplit) {
  // Lengths 5, 3, 8, 2, 7, 10 in rows of 10: [5 3] [8 2] [7] [10].
  std::vector<FinetuneExample> examples;
  const std::vector<size_t> lengths = {5, 3, 8, 2, 7, 10};
  for (size_t i = 0; i < lengths.size(); ++i)
    examples.push_back(synthetic_example(static_cast<int32_t>(100 * (i + 1)), lengths[i]));
  const int32_t pad = 9;
  const PackedExamples rows(examples, 10, pad);
  ASSERT_EQ(rows.rows(), 4);
  EXPECT_EQ(rows.row_examples(), (std::vector<std::vector<int64_t>>{{0, 1}, {2, 3}, {4}, {5}}));

  std::vector<int32_t> in(10), tg(10);
  rows.copy_row(0, in.data(), tg.data());
  EXPECT_EQ(in, (std::vector<int32_t>{100, 101, 102, 103, 104, 200, 201, 202, pad, pad}));
  // Counted: odd positions within each example; an example's last token predicts nothing.
  EXPECT_EQ(tg, (std::vector<int32_t>{101, -100, 103, -100, -100, 201, -100, -100, -100, -100}));
  rows.copy_row(2, in.data(), tg.data());
  EXPECT_EQ(in, (std::vector<int32_t>{500, 501, 502, 503, 504, 505, 506, pad, pad, pad}));
  EXPECT_EQ(tg, (std::vector<int32_t>{501, -100, 503, -100, 505, -100, -100, -100, -100, -100}));

  // Random lengths: every example lands once, in order, whole and contiguous.
  Rng rng(5);
  std::vector<FinetuneExample> many;
  for (int i = 0; i < 300; ++i) many.push_back(synthetic_example(1000 * (i + 1), 1 + rng.below(16)));
  const PackedExamples packed(many, 16, pad);
  int64_t next = 0;
  for (int64_t r = 0; r < packed.rows(); ++r) {
    in.resize(16);
    tg.resize(16);
    packed.copy_row(r, in.data(), tg.data());
    size_t at = 0;
    for (int64_t idx : packed.row_examples()[static_cast<size_t>(r)]) {
      ASSERT_EQ(idx, next++);
      const auto& e = many[static_cast<size_t>(idx)];
      ASSERT_LE(at + e.tokens.size(), 16u);
      for (size_t k = 0; k < e.tokens.size(); ++k) ASSERT_EQ(in[at + k], e.tokens[k]);
      at += e.tokens.size();
    }
    // Greedy: the next example would not have fitted in what is left.
    if (r + 1 < packed.rows()) {
      ASSERT_GT(at + many[static_cast<size_t>(next)].tokens.size(), 16u);
    }
    for (size_t k = at; k < 16; ++k) {
      ASSERT_EQ(in[k], pad);
      ASSERT_EQ(tg[k], kIgnoreTarget);
    }
  }
  EXPECT_EQ(next, 300);
}

TEST(FinetuneDataLoader, EveryRowOncePerEpochTheSameForTheSameSeed) {
  std::vector<FinetuneExample> examples;
  for (int i = 0; i < 12; ++i) examples.push_back(synthetic_example(100 * (i + 1), 8));
  auto rows = std::make_shared<const PackedExamples>(examples, 8, 0);  // one example per row
  ASSERT_EQ(rows->rows(), 12);
  auto draw = [](ExampleLoader& loader, int count) {
    std::vector<int32_t> in, tg;
    std::vector<int64_t> order;
    for (int i = 0; i < count; ++i) {
      loader.next(1, in, tg);
      order.push_back(in[0] / 100 - 1);
    }
    return order;
  };
  ExampleLoader a(rows, 3), b(rows, 3), c(rows, 4);
  const auto first = draw(a, 12), second = draw(a, 12);
  EXPECT_EQ(std::set<int64_t>(first.begin(), first.end()).size(), 12u);
  EXPECT_EQ(std::set<int64_t>(second.begin(), second.end()).size(), 12u);
  EXPECT_NE(first, second);
  EXPECT_EQ(a.epoch(), 2);
  EXPECT_EQ(draw(b, 24), [&] {
    auto both = first;
    both.insert(both.end(), second.begin(), second.end());
    return both;
  }());
  EXPECT_NE(draw(c, 12), first);
  // Pinned: the order depends only on xoshiro256** and the Fisher-Yates in finetune_data.cpp.
  ExampleLoader pinned(rows, 17);
  EXPECT_EQ(draw(pinned, 12), (std::vector<int64_t>{7, 4, 0, 6, 9, 1, 2, 10, 5, 8, 3, 11}));
}

TEST(FinetuneDataLoader, RestoredLoaderContinuesExactlyAndRefusesOtherData) {
  Rng rng(11);
  std::vector<FinetuneExample> examples;
  for (int i = 0; i < 40; ++i) examples.push_back(synthetic_example(100 * (i + 1), 1 + rng.below(12)));
  auto rows = std::make_shared<const PackedExamples>(examples, 12, 0);
  ExampleLoader uninterrupted(rows, 5), first(rows, 5);
  std::vector<int32_t> in_a, tg_a, in_b, tg_b;
  for (int i = 0; i < 5; ++i) {
    uninterrupted.next(3, in_a, tg_a);
    first.next(3, in_b, tg_b);
  }
  const std::string saved = first.state().dump();
  ExampleLoader resumed(rows, 5);
  resumed.restore(json::parse(saved));
  EXPECT_EQ(resumed.position(), 15 % rows->rows());
  for (int i = 0; i < 50; ++i) {  // across several epochs
    uninterrupted.next(3, in_a, tg_a);
    resumed.next(3, in_b, tg_b);
    ASSERT_EQ(in_a, in_b) << i;
    ASSERT_EQ(tg_a, tg_b) << i;
  }
  EXPECT_EQ(resumed.state(), uninterrupted.state());

  const json state = first.state();
  EXPECT_EQ(state["kind"], "finetune-rows");
  EXPECT_EQ(state["rows"], rows->rows());
  auto changed = examples;
  const auto longer = std::find_if(changed.begin(), changed.end(), [](const FinetuneExample& e) { return e.tokens.size() >= 2; });
  ASSERT_NE(longer, changed.end());
  ASSERT_EQ(longer->loss[1], 1);
  longer->loss[1] = 0;  // the same tokens, another mask
  ExampleLoader other_mask(std::make_shared<const PackedExamples>(changed, 12, 0), 5);
  EXPECT_NE(error_of([&] { other_mask.restore(state); }).find("the training data changed since the checkpoint"),
            std::string::npos);
  ExampleLoader other_len(std::make_shared<const PackedExamples>(examples, 16, 0), 5);
  EXPECT_NE(error_of([&] { other_len.restore(state); }).find("made with context_length 12, but the run now uses 16"),
            std::string::npos);
  ExampleLoader other_seed(rows, 6);
  EXPECT_NE(error_of([&] { other_seed.restore(state); }).find("made with seed 5, but the run now uses 6"), std::string::npos);
  ExampleLoader fresh(rows, 5);
  auto broken = state;
  broken["kind"] = "windows";
  EXPECT_NE(error_of([&] { fresh.restore(broken); }).find("not one of fine-tuning examples"), std::string::npos);
  broken = state;
  broken["position"] = rows->rows();
  EXPECT_NE(error_of([&] { fresh.restore(broken); }).find("out of range"), std::string::npos);
  broken = state;
  broken.erase("seed");
  EXPECT_NE(error_of([&] { fresh.restore(broken); }).find("\"seed\" is missing or not a string"), std::string::npos);
  EXPECT_EQ(fresh.position(), 0);
  // A pre-training loader's state is refused with a clear message.
  auto tokens = std::vector<int32_t>(100, 1);
  TrainLoader windows(std::make_shared<const PackedTokens>(tokens, 12), 5);
  EXPECT_NE(error_of([&] { fresh.restore(windows.state()); }).find("\"kind\" is missing"), std::string::npos);
  EXPECT_NE(error_of([&] { ExampleLoader(std::make_shared<const PackedExamples>(), 1); }).find("no examples"),
            std::string::npos);
}

TEST(FinetuneDataEval, HeldOutExamplesAreChosenBySeedAndServedInOrder) {
  REQUIRE_TOKENIZER();
  TempDir dir;
  std::vector<json> lines;
  for (int i = 0; i < 20; ++i)
    lines.push_back({{"prompt", "Question " + std::to_string(i) + "?"}, {"response", "Answer " + std::to_string(i) + "."}});
  write_file(dir / "train.jsonl", jsonl(lines));
  FinetuneDataOptions options = options_for(FinetuneTask::InstructionFinetune, dir / "train.jsonl", 32);
  options.eval_fraction = 0.25;
  options.seed = 7;
  const FinetuneData a = load_finetune_data(options, *tok), b = load_finetune_data(options, *tok);
  ASSERT_TRUE(a.report.ok()) << a.report.format();
  EXPECT_EQ(a.train_examples.size(), 15u);
  EXPECT_EQ(a.eval_examples.size(), 5u);
  auto responses = [&](const std::vector<FinetuneExample>& examples) {
    std::vector<std::string> out;
    for (const auto& e : examples) out.push_back(counted_spans(e, *tok).at(0));
    return out;
  };
  EXPECT_EQ(responses(a.eval_examples), responses(b.eval_examples));
  options.seed = 8;
  const FinetuneData c = load_finetune_data(options, *tok);
  EXPECT_NE(responses(a.eval_examples), responses(c.eval_examples));
  // Every example is in exactly one part.
  std::set<std::string> all;
  for (const auto& s : responses(a.train_examples)) all.insert(s);
  for (const auto& s : responses(a.eval_examples)) all.insert(s);
  EXPECT_EQ(all.size(), 20u);

  const auto source = make_batch_source(a);
  EXPECT_EQ(source->seq_len(), 32);
  EXPECT_EQ(source->eval_seq_len(), 32);
  const int64_t eval_rows = a.eval_rows->rows();
  ASSERT_GT(eval_rows, 0);
  EXPECT_EQ(source->eval_batches(1), eval_rows);
  std::vector<int32_t> in, tg;
  source->eval_batch(0, eval_rows + 3, in, tg);
  EXPECT_EQ(static_cast<int64_t>(in.size()), eval_rows * 32);
  std::vector<int32_t> counted;
  for (int32_t t : tg)
    if (t != kIgnoreTarget) counted.push_back(t);
  std::string joined;
  for (const auto& s : responses(a.eval_examples)) joined += s;
  EXPECT_EQ(tok->decode(counted), joined);
  EXPECT_NE(error_of([&] { source->eval_batch(1, eval_rows + 3, in, tg); }).find("out of range"), std::string::npos);

  // No held-out fraction: no eval batches, and the trainer skips evaluation.
  options.eval_fraction = 0;
  const auto none = make_batch_source(load_finetune_data(options, *tok));
  EXPECT_EQ(none->eval_batches(4), 0);
}

TEST(FinetuneDataPretrain, ContinuedPretrainingIsThePretrainingPipeline) {
  REQUIRE_TOKENIZER();
  TempDir dir;
  fs::create_directories(dir / "docs");
  for (int i = 0; i < 12; ++i)
    write_file(dir / "docs" / (std::to_string(100 + i) + ".txt"),
               "Document " + std::to_string(i) + " is about the number " + std::to_string(i * 13) + ", at some length.");
  write_file(dir / "docs" / "more.jsonl", "{\"text\": \"A line of JSON text.\"}\n\n{\"text\": \"Another one.\"}\n");
  DataOptions pre;
  pre.train_data = {dir / "docs"};
  pre.seq_len = 16;
  pre.eval_fraction = 0.2;
  pre.seed = 4;
  const TrainingData expected = load_training_data(pre, *tok);

  FinetuneDataOptions options = options_for(FinetuneTask::ContinuedPretrain, dir / "docs", 16);
  options.eval_fraction = 0.2;
  options.seed = 4;
  const FinetuneData data = load_finetune_data(options, *tok);
  ASSERT_TRUE(data.report.ok()) << data.report.format();
  ASSERT_TRUE(data.pretrain.train);
  EXPECT_EQ(data.pretrain.train->tokens(), expected.train->tokens());
  EXPECT_EQ(data.pretrain.train->fingerprint(), expected.train->fingerprint());
  EXPECT_EQ(data.pretrain.eval.windows(), expected.eval.windows());
  EXPECT_EQ(data.pretrain.stats.summary(), expected.stats.summary());
  EXPECT_EQ(data.report.examples, 14);
  const Corpus corpus = read_corpus({dir / "docs"}, *tok);
  EXPECT_EQ(data.report.total_tokens, static_cast<int64_t>(corpus.tokens.size()));
  EXPECT_EQ(data.report.loss_tokens, expected.train->windows() * 16);

  // The same batches, positions and eval batches as the pre-training loader.
  const auto source = make_batch_source(data);
  TrainLoader loader = expected.loader();
  std::vector<int32_t> in_a, tg_a, in_b, tg_b;
  for (int i = 0; i < 10; ++i) {
    source->next_train(2, in_a, tg_a);
    loader.next(2, in_b, tg_b);
    ASSERT_EQ(in_a, in_b) << i;
    ASSERT_EQ(tg_a, tg_b) << i;
  }
  EXPECT_EQ(source->state(), loader.state());
  EXPECT_EQ(source->eval_seq_len(), expected.eval.seq_len());
  ASSERT_EQ(source->eval_batches(2), expected.eval.batches(2));
  for (int64_t i = 0; i < source->eval_batches(2); ++i) {
    source->eval_batch(i, 2, in_a, tg_a);
    expected.eval.batch(i, 2, in_b, tg_b);
    ASSERT_EQ(in_a, in_b);
    ASSERT_EQ(tg_a, tg_b);
  }
  EXPECT_EQ(estimate_tokens(data, 3).total_tokens, expected.train->windows() * 16 * 3);

  // Every problem at once, where pre-training stops at the first.
  write_file(dir / "bad.jsonl", "{\"text\": 3}\nnope\n{\"body\": \"x\"}\n{\"text\": \"\"}\n");
  write_file(dir / "bad.txt", "fine line\nbad \xff byte\nfine\nand \xc3 again\n");
  options.train_data = {dir / "bad.jsonl", dir / "bad.txt"};
  const FinetuneData bad = load_finetune_data(options, *tok);
  const std::string text = bad.report.format();
  const std::string j = (dir / "bad.jsonl").string(), t = (dir / "bad.txt").string();
  for (const auto& line : {j + ":1: text: expected a string, got number",
                           j + ":2: not valid JSON: syntax error while parsing value - invalid literal; last read: 'no'",
                           j + ":3: text: missing", j + ":4: warning: text: empty, skipped",
                           t + ":2: not valid UTF-8 (byte 0xff at column 5)",
                           t + ":4: not valid UTF-8 (byte 0xc3 at column 5)"})
    EXPECT_TRUE(has_line(text, line)) << line << "\n---\n" << text;
  EXPECT_EQ(bad.report.errors(), 5);
  EXPECT_FALSE(bad.pretrain.train);

  // Too little text for one window is reported, not thrown.
  write_file(dir / "tiny.txt", "short");
  options.train_data = {dir / "tiny.txt"};
  options.eval_fraction = 0;
  const FinetuneData tiny = load_finetune_data(options, *tok);
  ASSERT_EQ(tiny.report.errors(), 1);
  EXPECT_NE(tiny.report.problems[0].message.find("but context_length 16 needs at least 17"), std::string::npos);
}

TEST(FinetuneDataEstimate, TokensForEpochsAndCost) {
  REQUIRE_TOKENIZER();
  TempDir dir;
  write_file(dir / "train.jsonl", jsonl({{{"prompt", "a b c"}, {"response", "d e"}}, {{"prompt", "f"}, {"response", "g h i"}}}));
  const FinetuneData data = load_finetune_data(options_for(FinetuneTask::InstructionFinetune, dir / "train.jsonl", 64), *tok);
  ASSERT_TRUE(data.report.ok());
  const TokenEstimate e = estimate_tokens(data, 4);
  EXPECT_EQ(e.tokens_per_epoch, data.report.total_tokens);
  EXPECT_EQ(e.loss_tokens_per_epoch, data.report.loss_tokens);
  EXPECT_EQ(e.total_tokens, 4 * data.report.total_tokens);
  EXPECT_EQ(e.total_loss_tokens, 4 * data.report.loss_tokens);
  EXPECT_EQ(e.summary(), fmt::format("{} tokens per epoch ({} counted by the loss); 4 epochs: {} tokens ({} counted by the loss)",
                                     e.tokens_per_epoch, e.loss_tokens_per_epoch, e.total_tokens, e.total_loss_tokens));
  EXPECT_DOUBLE_EQ(estimate_cost(2'500'000, 0.4), 1.0);
  EXPECT_DOUBLE_EQ(estimate_cost(0, 3.0), 0.0);
  EXPECT_NE(error_of([] { estimate_cost(10, -1); }).find("price per million tokens"), std::string::npos);
  EXPECT_NE(error_of([&] { estimate_tokens(data, 0); }).find("epochs must be at least 1"), std::string::npos);
}
