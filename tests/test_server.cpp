// The server's pieces that need no HTTP: serve.yaml, OpenAI request parsing with its errors,
// and the Prometheus text format.
#include <gtest/gtest.h>

#include "server/metrics.h"
#include "server/openai_api.h"
#include "server/server_config.h"
#include "test_util.h"

using namespace tessera;
using namespace tessera::server;
using nlohmann::json;

namespace {

const Tokenizer& tokenizer() {
  static Tokenizer t = Tokenizer::load_for_model(tessera::testing::fixtures() / "dbrx" / "e4_top2_d64_clip_f32");
  return t;
}

std::string config_error(const std::string& yaml) {
  tessera::testing::TempDir dir;
  tessera::testing::write_file(dir / "serve.yaml", yaml);
  return tessera::testing::error_of([&] { ServerConfig::load(dir / "serve.yaml"); });
}

// The param an ApiError names, or "" if fn throws none.
std::string bad_param_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 400);
    return e.param.value_or("(none)");
  }
  return "";
}

json chat_body(json extra) {
  json body = {{"model", "m"}, {"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}};
  for (auto& [k, v] : extra.items()) body[k] = v;
  return body;
}

}  // namespace

TEST(ServerConfig, ReadsEndpointsWithDefaults) {
  tessera::testing::TempDir dir;
  tessera::testing::write_file(dir / "serve.yaml", R"(
port: 9000
endpoints:
  - name: chat-a
    kind: chat
    model: some-model
    provisioned_tokens_per_second: 50
    prices: {input_per_million: 1.5}
  - name: pics
    kind: image
    model: /x/sd
    sizes: [512x512, 1024x768]
)");
  const auto c = ServerConfig::load(dir / "serve.yaml");
  EXPECT_EQ(c.port, 9000);
  ASSERT_EQ(c.endpoints.size(), 2u);
  EXPECT_EQ(c.endpoints[0].kind, EndpointKind::Chat);
  EXPECT_DOUBLE_EQ(c.endpoints[0].prices.input_per_million, 1.5);
  EXPECT_DOUBLE_EQ(c.endpoints[0].prices.output_per_million, 2.25);
  EXPECT_DOUBLE_EQ(*c.endpoints[0].provisioned_tokens_per_second, 50);
  EXPECT_EQ(c.endpoints[1].sizes.size(), 2u);
  EXPECT_EQ(c.endpoints[1].sizes[1].str(), "1024x768");
  EXPECT_DOUBLE_EQ(c.endpoints[1].prices.per_image, 0.06);
  EXPECT_EQ(ServerConfig().endpoints.size(), 0u);
  const auto d = ServerConfig::defaults();
  EXPECT_EQ(d.endpoints.at(0).name, "databricks-dbrx-instruct");
  EXPECT_EQ(d.endpoints.at(0).sizes.size(), 3u);  // the three product sizes by default
}

TEST(ServerConfig, MistakesNameTheKey) {
  EXPECT_NE(config_error("endpoints:\n  - {name: a, kind: chat, model: m, colour: red}\n").find("endpoints.a.colour: unknown key"),
            std::string::npos);
  EXPECT_NE(config_error("endpoints:\n  - {name: a, kind: video, model: m}\n").find("unknown kind 'video'"), std::string::npos);
  EXPECT_NE(config_error("endpoints:\n  - {name: a, kind: chat}\n").find("model is missing"), std::string::npos);
  EXPECT_NE(config_error("endpoints:\n  - {name: a, kind: chat, model: m}\n  - {name: a, kind: chat, model: m}\n")
                .find("listed twice"),
            std::string::npos);
  EXPECT_NE(config_error("endpoints:\n  - {name: a, kind: image, model: m, sizes: [big]}\n").find("sizes[0]"), std::string::npos);
  EXPECT_NE(config_error("port: 70000\nendpoints:\n  - {name: a, kind: chat, model: m}\n").find("port"), std::string::npos);
  EXPECT_NE(config_error("endpoints: [").find("not valid YAML"), std::string::npos);
  EXPECT_NE(config_error("endpoints: []\n").find("non-empty"), std::string::npos);
  EXPECT_NE(config_error("port: [1]\nendpoints:\n  - {name: a, kind: chat, model: m}\n").find("port: expected an integer"),
            std::string::npos);
}

TEST(OpenAiRequests, ChatFieldsAndTheirErrors) {
  const ChatFormat format;
  auto parse = [&](json extra) { return parse_chat(chat_body(extra), tokenizer(), format, 100); };
  const LlmCall call = parse({{"temperature", 0.5}, {"max_completion_tokens", 7}, {"n", 2}, {"stop", "END"}, {"seed", 9},
                              {"stream", true}, {"stream_options", {{"include_usage", true}}}, {"logprobs", true}, {"top_logprobs", 3}});
  EXPECT_FLOAT_EQ(call.request.sampling.temperature, 0.5f);
  EXPECT_EQ(call.request.sampling.max_tokens, 7);
  EXPECT_EQ(call.request.n, 2);
  EXPECT_EQ(call.request.sampling.stop, std::vector<std::string>{"END"});
  EXPECT_EQ(*call.request.sampling.seed, 9u);
  EXPECT_TRUE(call.stream && call.include_usage && call.logprobs);
  EXPECT_EQ(call.request.top_logprobs, 3);
  EXPECT_EQ(tokenizer().decode(call.prompts.at(0)), "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(parse({}).request.sampling.max_tokens, 100);  // the endpoint's default

  EXPECT_EQ(bad_param_of([&] { parse({{"temperature", "hot"}}); }), "temperature");
  EXPECT_EQ(bad_param_of([&] { parse({{"temperature", 3}}); }), "temperature");
  EXPECT_EQ(bad_param_of([&] { parse({{"max_tokens", 1.5}}); }), "max_tokens");
  EXPECT_EQ(bad_param_of([&] { parse({{"n", 0}}); }), "n");
  EXPECT_EQ(bad_param_of([&] { parse({{"stop", json::array({"a", "b", "c", "d", "e"})}}); }), "stop");
  EXPECT_EQ(bad_param_of([&] { parse({{"stop", 3}}); }), "stop");
  EXPECT_EQ(bad_param_of([&] { parse({{"top_logprobs", 2}}); }), "top_logprobs");  // needs logprobs
  EXPECT_EQ(bad_param_of([&] { parse({{"response_format", {{"type", "yaml"}}}}); }), "response_format.type");
  EXPECT_EQ(bad_param_of([&] { parse({{"tools", json::array({{{"type", "function"}}})}}); }), "tools");
  EXPECT_EQ(bad_param_of([&] { parse({{"messages", "hi"}}); }), "messages");
  EXPECT_EQ(bad_param_of([&] { parse({{"messages", json::array({{{"role", "robot"}, {"content", "x"}}})}}); }), "messages[0].role");
  EXPECT_EQ(bad_param_of([&] { parse({{"messages", json::array({{{"role", "user"}, {"content", 4}}})}}); }),
            "messages[0].content");
  EXPECT_EQ(bad_param_of([&] { parse({{"stream_options", {{"include_usage", "yes"}}}}); }), "stream_options.include_usage");
  // Content parts are joined; json_object turns the constraint on.
  const auto parts = parse({{"messages", json::array({{{"role", "user"}, {"content", json::array({{{"type", "text"}, {"text", "a"}},
                                                                                                  {{"type", "text"}, {"text", "b"}}})}}})},
                            {"response_format", {{"type", "json_object"}}}});
  EXPECT_NE(tokenizer().decode(parts.prompts.at(0)).find("user\nab<|im_end|>"), std::string::npos);
  EXPECT_TRUE(parts.request.json.has_value());
}

TEST(OpenAiRequests, CompletionPrompts) {
  auto parse = [&](json prompt) { return parse_completion({{"model", "m"}, {"prompt", prompt}}, tokenizer(), 100); };
  EXPECT_EQ(parse("hello").prompts.size(), 1u);
  EXPECT_EQ(parse(json::array({"a", "b"})).prompts.size(), 2u);
  EXPECT_EQ(parse(json::array({1, 2, 3})).prompts.at(0), (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(parse(json::array({json::array({5}), json::array({6, 7})})).prompts.at(1), (std::vector<int32_t>{6, 7}));
  EXPECT_EQ(parse("x").request.sampling.max_tokens, 16);  // OpenAI's default for completions
  EXPECT_EQ(bad_param_of([&] { parse(json::array({1, -4})); }), "prompt");
  EXPECT_EQ(bad_param_of([&] { parse(json::array()); }), "prompt");
  EXPECT_EQ(bad_param_of([&] { parse(5); }), "prompt");
  EXPECT_EQ(bad_param_of([&] { parse_completion({{"model", "m"}}, tokenizer(), 1); }), "prompt");
}

TEST(OpenAiRequests, ImageFields) {
  EndpointConfig ep;
  ep.kind = EndpointKind::Image;
  ep.max_steps = 20;
  const auto call = parse_image({{"prompt", "a cat"}, {"size", "768x1280"}, {"n", 2}, {"response_format", "b64_json"},
                                 {"seed", 57}, {"negative_prompt", "dog"}, {"steps", 4}, {"guidance_scale", 5}},
                                ep);
  EXPECT_EQ(call.size.width, 768);
  EXPECT_EQ(call.size.height, 1280);
  EXPECT_TRUE(call.b64);
  EXPECT_EQ(*call.seed, 57u);
  EXPECT_EQ(*call.negative_prompt, "dog");
  EXPECT_EQ(parse_image({{"prompt", "a cat"}}, ep).size.str(), "1024x1024");  // the first allowed size
  EXPECT_EQ(bad_param_of([&] { parse_image({{"prompt", "a"}, {"size", "512x512"}}, ep); }), "size");
  EXPECT_EQ(bad_param_of([&] { parse_image({{"prompt", "a"}, {"steps", 21}}, ep); }), "steps");
  EXPECT_EQ(bad_param_of([&] { parse_image({{"prompt", "a"}, {"n", 5}}, ep); }), "n");
  EXPECT_EQ(bad_param_of([&] { parse_image({{"prompt", "a"}, {"response_format", "jpeg"}}, ep); }), "response_format");
  EXPECT_EQ(bad_param_of([&] { parse_image({{"prompt", ""}}, ep); }), "prompt");
  EXPECT_EQ(bad_param_of([&] { parse_image({{"prompt", 3}}, ep); }), "prompt");
  // "stream" asks for progress events; off unless given, and it must be a boolean.
  EXPECT_FALSE(call.stream);
  EXPECT_TRUE(parse_image({{"prompt", "a"}, {"stream", true}}, ep).stream);
  EXPECT_EQ(bad_param_of([&] { parse_image({{"prompt", "a"}, {"stream", "yes"}}, ep); }), "stream");
}

TEST(Metrics, PrometheusText) {
  Metrics m;
  m.describe("reqs_total", "counter", "Requests");
  m.add("reqs_total", {{"route", "chat"}, {"status", "200"}});
  m.add("reqs_total", {{"route", "chat"}, {"status", "200"}}, 2);
  m.observe("latency_seconds", {{"endpoint", "e"}}, 0.02);
  m.observe("latency_seconds", {{"endpoint", "e"}}, 3);
  m.gauge("blocks", [] { return std::vector<std::pair<Labels, double>>{{{{"model", "a\"b"}}, 5}}; });
  const std::string text = m.render();
  EXPECT_NE(text.find("# HELP reqs_total Requests\n# TYPE reqs_total counter\n"), std::string::npos);
  EXPECT_NE(text.find("reqs_total{route=\"chat\",status=\"200\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("latency_seconds_bucket{endpoint=\"e\",le=\"0.025\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("latency_seconds_bucket{endpoint=\"e\",le=\"5\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("latency_seconds_bucket{endpoint=\"e\",le=\"+Inf\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("latency_seconds_count{endpoint=\"e\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("blocks{model=\"a\\\"b\"} 5\n"), std::string::npos);
}
