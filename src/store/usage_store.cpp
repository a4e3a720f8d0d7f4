#include "store/usage_store.h"

#include <chrono>
#include <cstdio>
#include <iterator>

#include <fmt/format.h>

#include "core/error.h"

namespace tessera {

UsageStore::UsageStore(std::shared_ptr<Database> db) : db_(std::move(db)) {
  if (!db_) fail("usage: no database");
  flusher_ = std::thread([this] { flush_loop(); });
}

UsageStore::~UsageStore() {
  {
    std::lock_guard lock(buffer_mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  flusher_.join();
  try {
    flush();
  } catch (const std::exception& e) {
    std::lock_guard lock(buffer_mutex_);
    fmt::print(stderr, "error: {} usage records could not be written: {}\n", pending_.size(), e.what());
  }
}

void UsageStore::record(const UsageRecord& r) {
  bool full = false;
  {
    std::lock_guard lock(buffer_mutex_);
    pending_.push_back(r);
    full = pending_.size() >= kBatchSize;
  }
  if (full) wake_.notify_one();
}

void UsageStore::flush() { write_pending(); }

void UsageStore::write_pending() const {
  std::lock_guard write_lock(write_mutex_);
  std::vector<UsageRecord> batch;
  {
    std::lock_guard lock(buffer_mutex_);
    batch.swap(pending_);
  }
  if (batch.empty()) return;
  try {
    db_->write([&](Database::Session& session) {
      for (const UsageRecord& r : batch) {
        auto& s = session.prepare(
            "INSERT INTO usage (timestamp_ms, token_id, endpoint, kind, prompt_tokens, completion_tokens, images,"
            " latency_ms, cost_usd, status, request_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)");
        s.bind_int(1, r.timestamp_ms)
            .bind_int(2, r.token_id)
            .bind_text(3, r.endpoint)
            .bind_text(4, r.kind)
            .bind_int(5, r.prompt_tokens)
            .bind_int(6, r.completion_tokens)
            .bind_int(7, r.images)
            .bind_real(8, r.latency_ms)
            .bind_real(9, r.cost_usd)
            .bind_int(10, static_cast<int64_t>(r.status))
            .bind_text(11, r.request_id)
            .run();
      }
    });
  } catch (...) {
    // The batch goes back in front of anything recorded meanwhile, to be retried.
    std::lock_guard lock(buffer_mutex_);
    batch.insert(batch.end(), std::make_move_iterator(pending_.begin()), std::make_move_iterator(pending_.end()));
    pending_.swap(batch);
    throw;
  }
}

void UsageStore::flush_loop() {
  bool failing = false;
  for (;;) {
    {
      std::unique_lock lock(buffer_mutex_);
      wake_.wait_for(lock, std::chrono::milliseconds(kFlushIntervalMs),
                     [&] { return stopping_ || (!failing && pending_.size() >= kBatchSize); });
      // The destructor writes the rest on its own thread, where a failure can be reported.
      if (stopping_) return;
      if (pending_.empty()) continue;
    }
    try {
      write_pending();
      if (failing) fmt::print(stderr, "usage: writing to {} works again\n", db_->file().string());
      failing = false;
    } catch (const std::exception& e) {
      // Said once per outage rather than ten times a second; the records stay buffered.
      if (!failing) fmt::print(stderr, "warning: usage records kept in memory, not written yet: {}\n", e.what());
      failing = true;
    }
  }
}

std::vector<UsageSummary> UsageStore::summarize(std::optional<int64_t> start_ms, std::optional<int64_t> end_ms,
                                                std::optional<int64_t> token_id,
                                                std::optional<std::string> endpoint) const {
  write_pending();
  return db_->read([&](Database::Session& session) {
    auto& s = session.prepare(
        "SELECT u.token_id, COALESCE(t.name, ''), u.endpoint, COUNT(*), SUM(u.prompt_tokens),"
        " SUM(u.completion_tokens), SUM(u.images), SUM(u.cost_usd)"
        " FROM usage u LEFT JOIN api_tokens t ON t.id = u.token_id"
        " WHERE (?1 IS NULL OR u.timestamp_ms >= ?1) AND (?2 IS NULL OR u.timestamp_ms < ?2)"
        " AND (?3 IS NULL OR u.token_id = ?3) AND (?4 IS NULL OR u.endpoint = ?4)"
        " GROUP BY u.token_id, u.endpoint ORDER BY u.token_id IS NULL, u.token_id, u.endpoint");
    s.bind_int(1, start_ms).bind_int(2, end_ms).bind_int(3, token_id).bind_opt_text(4, endpoint);
    std::vector<UsageSummary> out;
    while (s.step()) {
      UsageSummary u;
      u.token_id = s.column_opt_int(0);
      u.token_name = s.column_text(1);
      u.endpoint = s.column_text(2);
      u.requests = s.column_int(3);
      u.prompt_tokens = s.column_int(4);
      u.completion_tokens = s.column_int(5);
      u.images = s.column_int(6);
      u.cost_usd = s.column_real(7);
      out.push_back(std::move(u));
    }
    return out;
  });
}

double request_cost(const Prices& p, int64_t prompt_tokens, int64_t completion_tokens, int64_t images) {
  return (static_cast<double>(prompt_tokens) * p.input_per_million +
          static_cast<double>(completion_tokens) * p.output_per_million) /
             1e6 +
         static_cast<double>(images) * p.per_image;
}

}  // namespace tessera
