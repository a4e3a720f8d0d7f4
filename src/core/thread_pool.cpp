#include "core/thread_pool.h"

#include <algorithm>
#include <memory>

namespace tessera {

namespace {
thread_local bool t_inside_task = false;
size_t g_requested_threads = 0;
}  // namespace

ThreadPool::ThreadPool(size_t threads) {
  if (threads == 0) threads = 1;
  for (size_t i = 0; i + 1 < threads; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
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
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
    }
    run_chunks();
    {
      std::lock_guard lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
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
  // A few chunks per thread balances uneven work without much scheduling overhead.
  size_t chunk = std::max(grain, (n + threads * 4 - 1) / (threads * 4));
  {
    std::lock_guard lock(mutex_);
    task_ = &fn;
    task_n_ = n;
    chunk_ = chunk;
    next_.store(0);
    pending_ = workers_.size();
    ++generation_;
  }
  wake_.notify_all();
  run_chunks();
  std::unique_lock lock(mutex_);
  done_.wait(lock, [&] { return pending_ == 0; });
  task_ = nullptr;
}

ThreadPool& ThreadPool::global() {
  static ThreadPool pool(g_requested_threads ? g_requested_threads
                                             : std::max(1u, std::thread::hardware_concurrency()));
  return pool;
}

void ThreadPool::set_global_threads(size_t threads) { g_requested_threads = threads; }

}  // namespace tessera
