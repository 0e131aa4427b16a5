// Placement of weight buffers (engine/huge_pages.h): alignment, slab sharing and
// release, and that contents survive neighbours being freed.
#include "engine/huge_pages.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <random>
#include <thread>
#include <vector>

namespace eora {
namespace {

uintptr_t Addr(const void* p) { return reinterpret_cast<uintptr_t>(p); }

TEST(HugePages, LargeBuffersStartOnA2MiBBoundary) {
  WeightVector<uint8_t> big(5 * kHugePageBytes + 12345, 7);
  EXPECT_EQ(Addr(big.data()) % kHugePageBytes, 0u);
  EXPECT_EQ(big.front(), 7);
  EXPECT_EQ(big.back(), 7);
}

TEST(HugePages, MidSizeBuffersShareSlabsPageAligned) {
  const size_t before = HugePageSlabBytesMapped();
  std::vector<std::unique_ptr<WeightVector<uint32_t>>> bufs;
  for (int i = 0; i < 40; ++i) {
    // 64 KiB .. ~1.3 MiB, not multiples of the page size
    const size_t n = (kSlabMinBytes + static_cast<size_t>(i) * 33000 + 4) / sizeof(uint32_t);
    bufs.push_back(std::make_unique<WeightVector<uint32_t>>(n, static_cast<uint32_t>(i * 2654435761u)));
    EXPECT_EQ(Addr(bufs.back()->data()) % 4096, 0u);
  }
  // 40 buffers of ~0.7 MiB on average fit in two 32 MiB slabs.
  EXPECT_LE(HugePageSlabBytesMapped(), before + (size_t{64} << 20) + (size_t{32} << 20));
  // Free every other one (their pages go back to the kernel), then allocate more.
  for (size_t i = 0; i < bufs.size(); i += 2) bufs[i].reset();
  for (int i = 0; i < 10; ++i)
    bufs.push_back(std::make_unique<WeightVector<uint32_t>>(100000, 0xABCDEF01u + i));
  for (size_t i = 0; i < bufs.size(); ++i) {
    if (!bufs[i]) continue;
    const uint32_t want = i < 40 ? static_cast<uint32_t>(i * 2654435761u) : 0xABCDEF01u + static_cast<uint32_t>(i - 40);
    for (uint32_t v : *bufs[i]) ASSERT_EQ(v, want) << "buffer " << i;
  }
  bufs.clear();
  // Emptied slabs are unmapped; at most the current (empty) one stays.
  EXPECT_LE(HugePageSlabBytesMapped(), std::max(before, size_t{32} << 20));
}

TEST(HugePages, SmallBuffersUseTheHeapAndAreAligned) {
  const size_t before = HugePageSlabBytesMapped();
  WeightVector<float> small(100, 1.5f);
  EXPECT_EQ(Addr(small.data()) % 64, 0u);
  EXPECT_EQ(HugePageSlabBytesMapped(), before);
  EXPECT_EQ(small[99], 1.5f);
}

TEST(HugePages, VectorGrowthMovesBetweenTiers) {
  WeightVector<uint8_t> v;
  for (size_t i = 0; i < 3 * kHugePageBytes; ++i) v.push_back(static_cast<uint8_t>(i * 31));
  for (size_t i = 0; i < v.size(); i += 4097) ASSERT_EQ(v[i], static_cast<uint8_t>(i * 31));
}

// Adapters load and unload on other threads than the serving loop: slab
// bookkeeping under concurrent allocation and release keeps every live buffer
// intact and unmaps the slabs at the end.
TEST(HugePages, ConcurrentAllocateAndFreeKeepContents) {
  const size_t before = HugePageSlabBytesMapped();
  std::vector<std::thread> threads;
  std::vector<int> failures(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t, &failures] {
      std::mt19937 rng(1234 + t);
      std::vector<std::pair<uint32_t, std::unique_ptr<WeightVector<uint32_t>>>> live;
      for (int step = 0; step < 300; ++step) {
        if (!live.empty() && rng() % 3 == 0) {
          const size_t k = rng() % live.size();
          for (uint32_t v : *live[k].second)
            if (v != live[k].first) ++failures[t];
          live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
        } else {
          const size_t n = (kSlabMinBytes + rng() % (kHugePageBytes + kHugePageBytes / 2)) / sizeof(uint32_t);
          const uint32_t tag = static_cast<uint32_t>(rng());
          live.emplace_back(tag, std::make_unique<WeightVector<uint32_t>>(n, tag));
        }
      }
      for (auto& [tag, buf] : live)
        for (uint32_t v : *buf)
          if (v != tag) ++failures[t];
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(failures[t], 0) << "thread " << t;
  EXPECT_LE(HugePageSlabBytesMapped(), std::max(before, size_t{32} << 20));
}

}  // namespace
}  // namespace eora
