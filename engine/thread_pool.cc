#include "engine/thread_pool.h"

#include <algorithm>
#include <chrono>
#include <string>

#include <pthread.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define EORA_PAUSE() _mm_pause()
#else
#define EORA_PAUSE() \
  do {               \
  } while (0)
#endif

namespace eora {
namespace {

// How long an idle worker spins (pause) and then yields before it sleeps. Short:
// a yielding worker still burns its core when nothing else wants it (a single
// stream on a small model kept the second core 40% busy with a 2 ms window),
// and a sleeping worker costs a step nothing but its share (the caller claims
// the chunks it does not take).
constexpr auto kSpinTime = std::chrono::microseconds(200);
constexpr auto kYieldTime = std::chrono::microseconds(300);
// How long the caller of ParallelFor spins for chunks still running on workers
// before it blocks until they are done. As long as a worker's spin: on a VM a
// blocked thread's vCPU halts, and waking it took 50-200 us here, so with a 20 us
// spin a sharded decode step whose shards differed by more than that paid the
// wake-up, and its worker, idle meanwhile, sometimes fell asleep and missed the
// next step (the caller then ran both shards: 8-14% of stories260K batch-16
// steps). A 200 us spin cut the parallel region of those steps from 188-217 us
// to 169-184 us on average, for shards of 160-170 us.
constexpr auto kJoinSpinTime = kSpinTime;

using Clock = std::chrono::steady_clock;

}  // namespace

ThreadPool::ThreadPool(int num_threads) : num_threads_(std::max(1, num_threads)) {
  for (int i = 1; i < num_threads_; ++i)
    workers_.emplace_back([this, i] {
      // Named for top -H, perf and gdb ("eora-pool-1", ...).
      const std::string name = "eora-pool-" + std::to_string(i);
      pthread_setname_np(pthread_self(), name.c_str());
      WorkerLoop(i);
    });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_.store(true);
    // A new generation with no chunks wakes everyone.
    ++generation_;
    chunks_.store(0);
    claim_.store(static_cast<uint64_t>(generation_) << 32);
  }
  cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::Work(uint32_t gen, int index) {
  for (;;) {
    uint64_t s = claim_.load(std::memory_order_acquire);
    if (static_cast<uint32_t>(s >> 32) != gen) return;
    const uint32_t k = static_cast<uint32_t>(s);
    if (k >= chunks_.load(std::memory_order_acquire)) return;
    if (!claim_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel,
                                      std::memory_order_relaxed))
      continue;
    // Chunk k of generation `gen` is ours. Its job's fields are read only now:
    // the caller keeps them until every claimed chunk is done, and it closes a
    // finished job to claims before rewriting them (see ParallelFor), so a claim
    // can never pair an old generation with a new job's fields.
    const uint32_t chunks = chunks_.load(std::memory_order_acquire);
    if (k >= chunks) continue;  // unreachable (see above); claims no work
    const RangeFn* fn = fn_.load(std::memory_order_acquire);
    const int64_t n = n_.load(std::memory_order_acquire);
    const int64_t align = align_.load(std::memory_order_acquire);
    const int64_t units = units_.load(std::memory_order_acquire);
    const int64_t b = units * k / chunks * align;
    const int64_t e = std::min(n, units * (k + 1) / chunks * align);
    if (b < e) (*fn)(index, b, e);
    done_.fetch_add(1, std::memory_order_seq_cst);
    if (joiner_waiting_.load(std::memory_order_seq_cst)) {
      std::lock_guard<std::mutex> lock(join_mu_);
      join_cv_.notify_all();
    }
  }
}

void ThreadPool::WorkerLoop(int index) {
  uint32_t seen = 0;
  for (;;) {
    auto current = [&] { return static_cast<uint32_t>(claim_.load(std::memory_order_acquire) >> 32); };
    if (current() == seen) {
      const Clock::time_point start = Clock::now();
      for (int i = 0; current() == seen; ++i) {
        if ((i & 63) != 63) {
          EORA_PAUSE();
          continue;
        }
        const auto waited = Clock::now() - start;
        if (waited < kSpinTime) continue;
        if (waited < kYieldTime) {
          std::this_thread::yield();
          continue;
        }
        std::unique_lock<std::mutex> lock(mu_);
        sleepers_.fetch_add(1);
        cv_.wait(lock, [&] { return current() != seen; });
        sleepers_.fetch_sub(1);
        break;
      }
    }
    seen = current();
    if (stop_.load()) return;
    Work(seen, index);
  }
}

void ThreadPool::ParallelFor(int64_t n, int64_t align, const RangeFn& fn, int chunks_per_thread) {
  if (n <= 0) return;
  align = std::max<int64_t>(1, align);
  const int64_t units = (n + align - 1) / align;
  const int64_t chunks = std::min<int64_t>(units, num_threads_ * std::max(1, chunks_per_thread));
  if (num_threads_ == 1 || chunks <= 1) {
    fn(0, 0, n);
    return;
  }
  // Publish the job. First close the previous one to late claims: a worker that
  // read its claim word just before it ended would otherwise succeed in claiming
  // "chunk k" of the old generation after the fields below had been rewritten,
  // and run a chunk of the new job twice (once more under the caller's own
  // claim), or after the join (the run-twice and deadlock bugs of 2026-12-02).
  const uint32_t prev = generation_;
  const uint32_t gen = ++generation_;
  claim_.store((static_cast<uint64_t>(prev) << 32) | 0xFFFFFFFFu, std::memory_order_seq_cst);
  fn_.store(&fn, std::memory_order_release);
  n_.store(n, std::memory_order_release);
  align_.store(align, std::memory_order_release);
  units_.store(units, std::memory_order_release);
  chunks_.store(static_cast<uint32_t>(chunks), std::memory_order_release);
  done_.store(0, std::memory_order_relaxed);
  claim_.store(static_cast<uint64_t>(gen) << 32, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) {
    std::lock_guard<std::mutex> lock(mu_);
    cv_.notify_all();
  }
  Work(gen, 0);
  // Wait for chunks that workers claimed and are still running: spin briefly (a
  // worker normally finishes within microseconds of the caller), then block. A
  // worker that was preempted mid-chunk may wait a whole time slice for its core;
  // blocking frees this core, so the kernel can move it (or whatever preempted
  // it) here, where spinning would keep the core busy doing nothing.
  const uint32_t want = static_cast<uint32_t>(chunks);
  if (done_.load(std::memory_order_acquire) == want) return;
  const Clock::time_point start = Clock::now();
  for (int i = 0; done_.load(std::memory_order_acquire) != want; ++i) {
    if ((i & 15) != 15) {
      EORA_PAUSE();
      continue;
    }
    if (Clock::now() - start < kJoinSpinTime) continue;
    // Block. A worker that finishes a chunk after seeing joiner_waiting_ takes
    // join_mu_ to notify, so the wake-up cannot fall between the check of done_
    // and the wait (std::atomic::wait is not used: libstdc++ 12's waiter pool
    // lost a wake-up here and deadlocked the server).
    std::unique_lock<std::mutex> lock(join_mu_);
    joiner_waiting_.store(true, std::memory_order_seq_cst);
    join_cv_.wait(lock, [&] { return done_.load(std::memory_order_seq_cst) == want; });
    joiner_waiting_.store(false, std::memory_order_relaxed);
    break;
  }
}

}  // namespace eora
