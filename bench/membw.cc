// Measures this machine's memory read bandwidth: N threads sum disjoint slices of
// a buffer much larger than the caches (AVX2 loads when available), once relying
// on the hardware prefetchers alone and once with software prefetches (into L2)
// running --prefetch bytes ahead, as the decode kernels do. Prints GB/s of each
// and the better of the two as read_gb_s. The buffer is placed as model weights
// are (engine/huge_pages.h: 2 MiB pages unless EORA_HUGE_PAGES=off).
//   eora-membw [--threads N] [--mib M] [--reps R] [--prefetch BYTES]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "engine/huge_pages.h"

namespace {

__attribute__((target_clones("arch=x86-64-v3", "default"))) double SumSlice(const float* p,
                                                                            size_t n) {
  float acc[16] = {};
  size_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) acc[j] += p[i + j];
  double s = 0;
  for (int j = 0; j < 16; ++j) s += acc[j];
  for (; i < n; ++i) s += p[i];
  return s;
}

// The same sum with a software prefetch `ahead` bytes in front of the loads.
__attribute__((target_clones("arch=x86-64-v3", "default"))) double SumSlicePrefetch(const float* p,
                                                                                    size_t n,
                                                                                    size_t ahead) {
  float acc[16] = {};
  const size_t step = ahead / sizeof(float);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    if (i + step < n) __builtin_prefetch(p + i + step, 0, 2);
    for (int j = 0; j < 16; ++j) acc[j] += p[i + j];
  }
  double s = 0;
  for (int j = 0; j < 16; ++j) s += acc[j];
  for (; i < n; ++i) s += p[i];
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, reps = 5;
  size_t mib = 1024, prefetch = 16384;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("usage: eora-membw [--threads N] [--mib M] [--reps R] [--prefetch BYTES]\n"
                  "Read bandwidth of an M MiB buffer (default 1024) summed by N threads (default 2),\n"
                  "best of R runs (default 5): plain loads (read_gb_s_plain), and loads with a\n"
                  "software prefetch BYTES ahead (default 16384; read_gb_s_prefetch); read_gb_s\n"
                  "is the better of the two.\n");
      return 0;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "eora-membw: %s needs a value\n", a.c_str());
      return 2;
    }
    const long v = std::strtol(argv[++i], nullptr, 10);
    if (v <= 0) {
      std::fprintf(stderr, "eora-membw: %s must be a positive integer\n", a.c_str());
      return 2;
    }
    if (a == "--threads") threads = static_cast<int>(v);
    else if (a == "--mib") mib = static_cast<size_t>(v);
    else if (a == "--reps") reps = static_cast<int>(v);
    else if (a == "--prefetch") prefetch = static_cast<size_t>(v);
    else {
      std::fprintf(stderr, "eora-membw: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  const size_t n = mib * (1u << 20) / sizeof(float);
  eora::WeightVector<float> buf(n);  // placed like model weights (huge pages unless EORA_HUGE_PAGES=off)
  for (size_t i = 0; i < n; ++i) buf[i] = static_cast<float>(i & 1023);
  double best[2] = {0, 0}, sink = 0;
  for (int mode = 0; mode < 2; ++mode) {
    for (int r = 0; r < reps; ++r) {
      std::vector<double> part(threads);
      const auto t0 = std::chrono::steady_clock::now();
      std::vector<std::thread> ts;
      for (int t = 0; t < threads; ++t)
        ts.emplace_back([&, t] {
          const size_t b = n * t / threads, e = n * (t + 1) / threads;
          part[t] = mode == 0 ? SumSlice(buf.data() + b, e - b) : SumSlicePrefetch(buf.data() + b, e - b, prefetch);
        });
      for (auto& t : ts) t.join();
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      for (double p : part) sink += p;
      best[mode] = std::max(best[mode], static_cast<double>(n * sizeof(float)) / s / 1e9);
    }
  }
  std::printf(
      "{\"threads\": %d, \"mib\": %zu, \"read_gb_s\": %.2f, \"read_gb_s_plain\": %.2f, "
      "\"read_gb_s_prefetch\": %.2f, \"prefetch_bytes\": %zu, \"huge_pages\": %s, \"checksum\": %.0f}\n",
      threads, mib, std::max(best[0], best[1]), best[0], best[1], prefetch,
      eora::HugePagesEnabled() ? "true" : "false", sink);
  return 0;
}
