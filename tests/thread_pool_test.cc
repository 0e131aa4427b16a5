// ThreadPool: every range is run exactly once, and the caller's join (spin, then
// block until the workers' chunks are done) never loses a wake-up.
#include "engine/thread_pool.h"

#include <atomic>
#include <chrono>
#include <random>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace eora {
namespace {

// Runs `rounds` jobs whose chunks take 0-80 us each, so that the caller often
// finishes its own chunks first and has to wait (past the 20 us spin, blocking)
// for a worker's. Each index must be visited exactly once per job.
void RunJobs(ThreadPool* pool, int rounds, uint32_t seed) {
  std::mt19937 rng(seed);
  for (int round = 0; round < rounds; ++round) {
    const int64_t n = 1 + static_cast<int64_t>(rng() % 64);
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    for (auto& h : hits) h.store(0);
    const int delay_us = static_cast<int>(rng() % 80);
    pool->ParallelFor(n, 1, [&](int thread, int64_t b, int64_t e) {
      // Workers are slower than the caller: the caller reaches the join early.
      if (thread != 0 && delay_us > 0) std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
      for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "round " << round << " index " << i;
  }
}

TEST(ThreadPool, EveryIndexOnceAndJoinsNeverHang) {
  for (int threads : {1, 2, 3, 4}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    ThreadPool pool(threads);
    RunJobs(&pool, 1500, 7 + threads);
  }
}

TEST(ThreadPool, BackToBackTinyJobs) {
  // Jobs of a few microseconds one after the other: a worker still looking at
  // the previous job's claim word while the caller publishes the next one must
  // not claim a chunk of the new job under the old generation (that ran a chunk
  // twice, or after the join, and deadlocked the server).
  for (int threads : {2, 4}) {
    ThreadPool pool(threads);
    std::vector<std::atomic<int>> hits(64);
    for (int round = 0; round < 60000; ++round) {
      const int64_t n = 2 + round % 31;
      for (int64_t i = 0; i < n; ++i) hits[static_cast<size_t>(i)].store(0, std::memory_order_relaxed);
      pool.ParallelFor(n, 1, [&](int, int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1, std::memory_order_relaxed);
      });
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << "threads " << threads << " round " << round << " index " << i;
    }
  }
}

TEST(ThreadPool, JoinsAfterWorkersWentToSleep) {
  // Gaps longer than the workers' spin and yield phases (they sleep on a condition
  // variable) between jobs: the next job must wake them, and the join still ends.
  ThreadPool pool(2);
  for (int i = 0; i < 20; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(i % 4 == 0 ? 3 : 0));
    RunJobs(&pool, 10, 100 + i);
  }
}

TEST(ThreadPool, SmallWorkRunsInlineOnTheCaller) {
  ThreadPool pool(2);
  std::atomic<int> calls{0}, off_caller{0};
  pool.ParallelFor(100, 1, ThreadPool::kMinParallelWork - 1, [&](int thread, int64_t b, int64_t e) {
    ++calls;
    if (thread != 0) ++off_caller;
    EXPECT_EQ(b, 0);
    EXPECT_EQ(e, 100);
  });
  EXPECT_EQ(calls.load(), 1);
  EXPECT_EQ(off_caller.load(), 0);
}

TEST(ThreadPool, ChunksPerThreadBoundsTheRanges) {
  // chunks_per_thread = 1 (decode-size products, low-rank regions): at most one
  // range per thread, aligned, covering every index once; a worker that is slow to
  // start leaves its range to the caller rather than holding up the join.
  for (int threads : {2, 3}) {
    ThreadPool pool(threads);
    for (int cpt : {1, 2, ThreadPool::kChunksPerThread}) {
      for (int64_t n : {1, 15, 16, 17, 100, 2304}) {
        std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
        for (auto& h : hits) h.store(0);
        std::atomic<int> ranges{0};
        pool.ParallelFor(n, 16, [&](int, int64_t b, int64_t e) {
          ++ranges;
          EXPECT_EQ(b % 16, 0);
          EXPECT_TRUE(e == n || e % 16 == 0) << e;
          for (int64_t i = b; i < e; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
        }, cpt);
        EXPECT_LE(ranges.load(), threads * cpt) << "n " << n << " cpt " << cpt;
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 1) << i;
      }
    }
    // A slow worker: the caller's own range and, unless the worker claimed it
    // first, the worker's run on the caller; the job ends either way.
    std::atomic<int> on_caller{0};
    pool.ParallelFor(1024, 16, [&](int thread, int64_t, int64_t) {
      if (thread != 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
      else ++on_caller;
    }, 1);
    EXPECT_GE(on_caller.load(), 1);
  }
}

}  // namespace
}  // namespace eora
