// A fixed pool of worker threads for data-parallel loops in the forward pass.
//
// Threading contract: ParallelFor may be called from one thread at a time (the
// engine's step thread); it blocks until every chunk has run. Workers spin briefly
// between jobs (decode steps issue many short parallel regions) and then sleep.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace eora {

class ThreadPool {
 public:
  // `num_threads` counts the calling thread: 1 means run everything inline.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return num_threads_; }

  // Calls fn(thread_index, begin, end) over [0, n) split into num_threads()
  // contiguous ranges whose bounds are multiples of `align` (except the end).
  // Returns when all ranges are done.
  void ParallelFor(int64_t n, int64_t align,
                   const std::function<void(int, int64_t, int64_t)>& fn);

  // As above, but runs inline on the caller when `work` (an estimate in
  // multiply-adds) is too small to repay waking the workers.
  static constexpr int64_t kMinParallelWork = 1 << 15;
  void ParallelFor(int64_t n, int64_t align, int64_t work,
                   const std::function<void(int, int64_t, int64_t)>& fn) {
    if (work < kMinParallelWork) {
      if (n > 0) fn(0, 0, n);
      return;
    }
    ParallelFor(n, align, fn);
  }

  // Calls fn(thread_index) once on every thread (including the caller, index 0).
  void RunOnAll(const std::function<void(int)>& fn);

 private:
  void WorkerLoop(int index);

  const int num_threads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_;
  const std::function<void(int)>* job_ = nullptr;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace eora
