#pragma once
// A fixed pool of worker threads for data-parallel loops. The calling thread takes part, so a
// pool of N threads uses N-1 workers. Loops are split into contiguous chunks.
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tessera {

class ThreadPool {
 public:
  explicit ThreadPool(size_t threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  size_t size() const { return workers_.size() + 1; }

  // Calls fn(begin, end) over contiguous chunks of [0, n). Blocks until done. Loops of at most
  // `grain` items run serially on the calling thread; longer ones are split into chunks of
  // about n / (threads * 4) items but no fewer than `grain`, except that every thread gets at
  // least one chunk. Nested calls from inside a task run serially on the calling thread.
  void parallel_for(size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn);

  // The process-wide pool (hardware threads unless set_global_threads was called first).
  static ThreadPool& global();
  static void set_global_threads(size_t threads);

 private:
  void worker_loop(size_t index);
  void run_chunks();

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(size_t, size_t)>* task_ = nullptr;
  size_t task_n_ = 0;
  size_t chunk_ = 0;
  std::atomic<size_t> next_{0};
  std::atomic<size_t> pending_{0};
  std::atomic<uint64_t> generation_atomic_{0};
  size_t sleepers_ = 0;  // guarded by mutex_
  std::atomic<bool> stop_{false};
  std::mutex call_mutex_;
};

// Shorthand for ThreadPool::global().parallel_for.
inline void parallel_for(size_t n, size_t grain, const std::function<void(size_t, size_t)>& fn) {
  ThreadPool::global().parallel_for(n, grain, fn);
}

}  // namespace tessera
