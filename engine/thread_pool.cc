#include "engine/thread_pool.h"

#include <algorithm>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define EORA_PAUSE() _mm_pause()
#else
#define EORA_PAUSE() \
  do {               \
  } while (0)
#endif

namespace eora {

ThreadPool::ThreadPool(int num_threads) : num_threads_(std::max(1, num_threads)) {
  for (int i = 1; i < num_threads_; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::WorkerLoop(int index) {
  uint64_t seen = 0;
  for (;;) {
    // Spin for a short while (decode issues parallel regions every few
    // microseconds), then yield, then sleep: never burn a core for long, since
    // the machine may be shared or oversubscribed.
    for (int spins = 0; generation_.load(std::memory_order_acquire) == seen && spins < 4000;
         ++spins) {
      if (spins < 2000) {
        EORA_PAUSE();
      } else {
        std::this_thread::yield();
      }
    }
    if (generation_.load(std::memory_order_acquire) == seen) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return generation_.load() != seen; });
    }
    seen = generation_.load(std::memory_order_acquire);
    if (stop_.load()) return;
    (*job_)(index);
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

void ThreadPool::RunOnAll(const std::function<void(int)>& fn) {
  if (num_threads_ == 1) {
    fn(0);
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    job_ = &fn;
    pending_.store(num_threads_ - 1, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_acq_rel);
  }
  cv_.notify_all();
  fn(0);
  for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
    if (spins < 2000) {
      EORA_PAUSE();
    } else {
      std::this_thread::yield();  // a worker may be descheduled: give it the core
    }
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t align,
                             const std::function<void(int, int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  align = std::max<int64_t>(1, align);
  const int64_t units = (n + align - 1) / align;
  const int64_t threads = std::min<int64_t>(num_threads_, units);
  if (threads <= 1) {
    fn(0, 0, n);
    return;
  }
  RunOnAll([&](int t) {
    if (t >= threads) return;
    const int64_t u0 = units * t / threads;
    const int64_t u1 = units * (t + 1) / threads;
    const int64_t b = u0 * align;
    const int64_t e = std::min(n, u1 * align);
    if (b < e) fn(t, b, e);
  });
}

}  // namespace eora
