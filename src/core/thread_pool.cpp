#include "core/thread_pool.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>

namespace tessera {

namespace {
thread_local bool t_inside_task = false;
size_t g_requested_threads = 0;

// How long an idle worker polls for the next task before it sleeps. Decoding issues hundreds
// of small loops per token; a worker that has to be woken by the kernel costs more than the
// loop itself, so workers stay awake briefly between loops.
constexpr auto kSpin = std::chrono::microseconds(200);
}  // namespace

ThreadPool::ThreadPool(size_t threads) {
  if (threads == 0) threads = 1;
  for (size_t i = 0; i + 1 < threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
    generation_atomic_.fetch_add(1);
  }
  wake_.notify_all();
  for (auto& worker : workers_) worker.join();
}

void ThreadPool::run_chunks() {
  t_inside_task = true;
  for (;;) {
    size_t begin = next_.fetch_add(chunk_);
    if (begin >= task_n_) break;
    (*task_)(begin, std::min(task_n_, begin + chunk_));
  }
  t_inside_task = false;
}

void ThreadPool::worker_loop(size_t) {
  uint64_t seen = 0;
  for (;;) {
    // Poll, then sleep.
    const auto until = std::chrono::steady_clock::now() + kSpin;
    int polls = 0;
    while (generation_atomic_.load(std::memory_order_acquire) == seen) {
      _mm_pause();
      if (++polls % 64 == 0 && std::chrono::steady_clock::now() > until) {
        std::unique_lock lock(mutex_);
        ++sleepers_;
        wake_.wait(lock, [&] { return generation_atomic_.load(std::memory_order_acquire) != seen; });
        --sleepers_;
        break;
      }
    }
    seen = generation_atomic_.load(std::memory_order_acquire);
    if (stop_) return;
    run_chunks();
    if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard lock(mutex_);
      done_.notify_one();
    }
  }
}

void ThreadPool::parallel_for(size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn) {
  if (n == 0) return;
  grain = std::max<size_t>(grain, 1);
  if (workers_.empty() || n <= grain || t_inside_task) {
    fn(0, n);
    return;
  }
  std::lock_guard call_lock(call_mutex_);
  const size_t threads = size();
  // Up to four chunks per thread balance uneven work without much scheduling overhead. The
  // count is a multiple of the thread count, so equal items give every thread an equal share:
  // 36 items of grain 29 run as two chunks of 18, not as 29 on one thread and 7 on the other.
  size_t chunks = std::min(threads * 4, n / grain);
  chunks = chunks < threads ? threads : chunks - chunks % threads;
  const size_t chunk = (n + chunks - 1) / chunks;
  task_ = &fn;
  task_n_ = n;
  chunk_ = chunk;
  next_.store(0, std::memory_order_relaxed);
  pending_.store(workers_.size(), std::memory_order_relaxed);
  bool wake = false;
  {
    std::lock_guard lock(mutex_);
    generation_atomic_.fetch_add(1, std::memory_order_release);
    wake = sleepers_ > 0;
  }
  if (wake) wake_.notify_all();
  run_chunks();
  // Workers finish their last chunk; spin briefly, then wait.
  int polls = 0;
  while (pending_.load(std::memory_order_acquire) != 0) {
    _mm_pause();
    if (++polls > 20000) {
      std::unique_lock lock(mutex_);
      done_.wait_for(lock, std::chrono::microseconds(100), [&] { return pending_.load() == 0; });
    }
  }
  task_ = nullptr;
}

ThreadPool& ThreadPool::global() {
  static ThreadPool pool(g_requested_threads ? g_requested_threads
                                             : std::max(1u, std::thread::hardware_concurrency()));
  return pool;
}

void ThreadPool::set_global_threads(size_t threads) { g_requested_threads = threads; }

}  // namespace tessera
