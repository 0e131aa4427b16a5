// A fixed pool of worker threads for data-parallel loops in the forward pass.
//
// Threading contract: ParallelFor may be called from one thread at a time (the
// engine's step thread); it blocks until every chunk has run.
//
// Work is split into a few chunks per thread that threads claim dynamically (an
// atomic counter), and the calling thread claims chunks too. The caller never waits
// for a worker that has not started: on a shared, oversubscribed machine a worker
// may be descheduled for milliseconds, and the caller then simply runs the
// remaining chunks itself. Workers spin briefly between jobs (decode issues many
// short parallel regions), then yield, then sleep.
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

  using RangeFn = std::function<void(int, int64_t, int64_t)>;

  // Calls fn(thread_index, begin, end) over disjoint contiguous ranges covering
  // [0, n), whose bounds are multiples of `align` (except the end). A thread may
  // get several ranges (one call each); thread_index identifies the thread
  // (0 = caller). Returns when all ranges are done.
  //
  // The range is cut into at most chunks_per_thread * num_threads() chunks. The
  // default (kChunksPerThread) is enough that a thread which arrives late (or is
  // slow) leaves little for the others to wait on, and few enough that claiming
  // stays cheap. Jobs whose chunks each pay a fixed cost take 1: one chunk per
  // thread, still claimed dynamically, so a late thread's chunk runs on the
  // caller. Those are the low-rank regions of decode (a B product per term and
  // chunk, and a wait for u) and decode-size products (a weight stream restarts
  // at every chunk boundary); see MatMulSharedImpl in matrix.cc.
  static constexpr int kChunksPerThread = 4;
  void ParallelFor(int64_t n, int64_t align, const RangeFn& fn, int chunks_per_thread = kChunksPerThread);

  // As above, but runs inline on the caller when `work` (an estimate in
  // multiply-adds) is too small to repay waking the workers.
  static constexpr int64_t kMinParallelWork = 1 << 16;
  void ParallelFor(int64_t n, int64_t align, int64_t work, const RangeFn& fn,
                   int chunks_per_thread = kChunksPerThread) {
    if (work < kMinParallelWork) {
      if (n > 0) fn(0, 0, n);
      return;
    }
    ParallelFor(n, align, fn, chunks_per_thread);
  }

 private:
  void WorkerLoop(int index);
  // Claims and runs chunks of job generation `gen` until none is left.
  void Work(uint32_t gen, int index);

  const int num_threads_;
  std::vector<std::thread> workers_;

  // The current job. claim_ = (generation << 32) | next unclaimed chunk. The job
  // fields are atomics because a late worker may read them while the caller
  // publishes the next job; it only uses them after a successful claim.
  std::atomic<uint64_t> claim_{0};
  std::atomic<const RangeFn*> fn_{nullptr};
  std::atomic<int64_t> n_{0};
  std::atomic<int64_t> align_{1};
  std::atomic<int64_t> units_{0};
  std::atomic<uint32_t> chunks_{0};
  std::atomic<uint32_t> done_{0};
  std::atomic<bool> joiner_waiting_{false};  // the caller blocks on join_cv_
  std::mutex join_mu_;
  std::condition_variable join_cv_;
  uint32_t generation_ = 0;  // caller only

  std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
};

}  // namespace eora
