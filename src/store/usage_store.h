#pragma once
// Usage metering: one row per API request (who, which endpoint, how many tokens or images, what
// it cost), summed on demand by `tessera usage`. The server records from many request threads;
// rows are buffered and written in batches, one transaction each, so metering costs a request a
// lock and a push_back rather than a disk sync.
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "store/database.h"

namespace tessera {

struct UsageRecord {
  int64_t timestamp_ms = 0;  // unix milliseconds
  std::optional<int64_t> token_id;  // none when the server runs without tokens
  std::string endpoint;  // "/v1/chat/completions"
  std::string kind;  // chat, completion, image
  int64_t prompt_tokens = 0, completion_tokens = 0, images = 0;
  double latency_ms = 0;
  double cost_usd = 0;
  int status = 200;
  std::string request_id;
};

struct UsageSummary {
  std::optional<int64_t> token_id;
  std::string token_name;  // "" for requests without a token or a token this file does not hold
  std::string endpoint;
  int64_t requests = 0, prompt_tokens = 0, completion_tokens = 0, images = 0;
  double cost_usd = 0;
};

class UsageStore {
 public:
  static constexpr size_t kBatchSize = 256;
  static constexpr int kFlushIntervalMs = 100;

  explicit UsageStore(std::shared_ptr<Database> db);
  // Flushes what is buffered; a failure then is printed on stderr, since a destructor cannot throw.
  ~UsageStore();
  UsageStore(const UsageStore&) = delete;
  UsageStore& operator=(const UsageStore&) = delete;

  // Buffers the record; a background thread writes every kFlushIntervalMs or kBatchSize records.
  // Never touches the disk itself and never throws for a database problem: a failed batch stays
  // buffered and is retried.
  void record(const UsageRecord& r);

  // Writes everything recorded before the call; throws tessera::Error if the database refuses.
  void flush();

  // Sums grouped by token and endpoint over [start_ms, end_ms) (either bound optional), filtered
  // by token id and endpoint when given. Pending records of this store are flushed first.
  // Rows are ordered by token id (no token last), then endpoint.
  std::vector<UsageSummary> summarize(std::optional<int64_t> start_ms, std::optional<int64_t> end_ms,
                                      std::optional<int64_t> token_id = {},
                                      std::optional<std::string> endpoint = {}) const;

 private:
  void flush_loop();
  void write_pending() const;

  std::shared_ptr<Database> db_;
  mutable std::mutex buffer_mutex_;  // guards pending_ and stopping_
  mutable std::condition_variable wake_;
  mutable std::vector<UsageRecord> pending_;
  bool stopping_ = false;
  // Held for the whole of taking and writing a batch, so that flush() returns only after any
  // batch the background thread had already taken is committed too.
  mutable std::mutex write_mutex_;
  std::thread flusher_;
};

// Price of a request: per-million token prices and a per-image price. The defaults are the
// product's list prices; image endpoints only use per_image.
struct Prices {
  double input_per_million = 0.75;
  double output_per_million = 2.25;
  double per_image = 0.06;
};

double request_cost(const Prices& p, int64_t prompt_tokens, int64_t completion_tokens, int64_t images);

}  // namespace tessera
