// Weights are mapped, not copied: the peak resident memory of a generation stays within the
// weights plus the KV cache plus 15%.
#include <gtest/gtest.h>

#include <cstdio>

#include <nlohmann/json.hpp>

#include "models/llm/dbrx_config.h"
#include "test_util.h"

using namespace tessera;
using namespace tessera::testing;

TEST(Memory, PeakRssIsWeightsPlusKvCachePlus15Percent) {
  TempDir tmp;
  DbrxConfig c;
  c.d_model = 256;
  c.n_heads = 4;
  c.kv_n_heads = 2;
  c.n_layers = 4;
  c.max_seq_len = 512;
  c.vocab_size = 100352;
  c.moe_num_experts = 16;
  c.moe_top_k = 4;
  c.ffn_hidden_size = 1024;
  c.clip_qkv = 8.0f;
  write_file(tmp / "config.json", c.to_json().dump());
  const auto dir = tmp / "model";
  auto init = run_tessera("init --config '" + (tmp / "config.json").string() + "' -o '" + dir.string() +
                          "' --dtype bf16 --seed 3");
  ASSERT_EQ(init.exit_code, 0) << init.err;

  const int prompt_tokens_max = 64, new_tokens = 64;
  auto r = run_tessera("generate --model '" + dir.string() +
                       "' --prompt 'Mixture of experts models route each token to a few experts.' --max-tokens " +
                       std::to_string(new_tokens) + " --temperature 0 --ignore-eos --threads 2");
  ASSERT_EQ(r.exit_code, 0) << r.err;

  const double weights = static_cast<double>(std::filesystem::file_size(dir / "model.safetensors"));
  const double kv = 2.0 * c.n_layers * (prompt_tokens_max + new_tokens) * c.kv_n_heads * c.head_dim() * sizeof(float);
  const double peak = r.peak_rss_kb * 1024.0;
  const double limit = (weights + kv) * 1.15;
  std::printf("weights %.1f MB, KV cache %.2f MB, peak RSS %.1f MB, limit %.1f MB (%.0f%% of weights + KV)\n",
              weights / 1e6, kv / 1e6, peak / 1e6, limit / 1e6, 100.0 * peak / (weights + kv));
  RecordProperty("peak_rss_mb", std::to_string(peak / 1e6));
  EXPECT_LE(peak, limit);
}
