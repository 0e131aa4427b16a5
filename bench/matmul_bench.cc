// Google Benchmark micro-benchmarks of the CPU matrix kernels: GEMV (decode) and
// 64-row GEMM (prefill) for every weight format at the shapes of a 110M Llama
// (dim 768, FFN 2048, vocab 32000), on 1 and 2 threads; and F32 decode batches
// of 1, 4, 8 and 16 rows at the shapes of the bundled stories260K (dim 64, FFN
// 172, vocab 512), where per-call overheads and register tiles dominate; and a
// 3-bit output with and without a rank-64 low-rank term (LowRank/...).
//
// Counters: bytes_per_second = StorageBytes() per product (weights streamed),
// "GMAC/s" = multiply-accumulates per second.
//
// Register (bench/CMakeLists.txt):
//   find_package(benchmark CONFIG REQUIRED)
//   add_executable(eora-matmul-bench matmul_bench.cc)
//   target_link_libraries(eora-matmul-bench PRIVATE eora_engine benchmark::benchmark)
// Run: eora-matmul-bench --benchmark_filter='q4g128' (EORA_ISA=generic|avx2 to compare).
#include <benchmark/benchmark.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "engine/lowrank.h"
#include "engine/matrix.h"
#include "engine/thread_pool.h"

namespace eora {
namespace {

struct Format {
  const char* name;
  int kind;  // 0 f32, 1 f16, 2 bf16, 3 quant, 4 2:4 f16, 5 2:4 quant
  int bits;
  int group;
};

const Format kFormats[] = {
    {"f32", 0, 0, 0},        {"f16", 1, 0, 0},          {"bf16", 2, 0, 0},
    {"q4g32", 3, 4, 32},     {"q4g64", 3, 4, 64},       {"q4g128", 3, 4, 128},
    {"q3g64", 3, 3, 64},     {"q3g128", 3, 3, 128},     {"q2g64", 3, 2, 64},
    {"sp24_f16", 4, 0, 0},   {"sp24_q4g64", 5, 4, 64},  {"sp24_q3g128", 5, 3, 128},
};

std::unique_ptr<Matrix> Make(const Format& f, int rows, int cols) {
  std::mt19937 rng(rows * 31 + cols);
  std::normal_distribution<float> dist(0.f, 0.02f);
  std::vector<float> w(static_cast<size_t>(rows) * cols);
  for (auto& v : w) v = dist(rng);
  if (f.kind >= 4) {
    for (size_t i = 0; i + 3 < w.size(); i += 4) w[i + 1] = w[i + 3] = 0.f;
  }
  switch (f.kind) {
    case 0: return MakeDenseMatrixFromF32(DType::kF32, rows, cols, w.data());
    case 1: return MakeDenseMatrixFromF32(DType::kF16, rows, cols, w.data());
    case 2: return MakeDenseMatrixFromF32(DType::kBF16, rows, cols, w.data());
    case 3: return std::move(MakeQuantizedMatrix(QuantizeRtn(w.data(), rows, cols, {f.bits, f.group})).value());
    case 4: return std::move(MakeSparse24Matrix(rows, cols, w.data()).value());
    default: return std::move(MakeSparse24QuantMatrix(rows, cols, w.data(), {f.bits, f.group}).value());
  }
}

void BM_MatMul(benchmark::State& state, Format f, int rows, int cols, int n, int threads) {
  auto m = Make(f, rows, cols);
  std::vector<float> x(static_cast<size_t>(n) * cols, 0.5f), y(static_cast<size_t>(n) * rows);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 7919) % 113) / 113.f - 0.5f;
  ThreadPool pool(threads);
  MatMulScratch scratch;
  for (auto _ : state) {
    MatMul(*m, x.data(), n, cols, y.data(), rows, &pool, &scratch);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * static_cast<int64_t>(m->StorageBytes()));
  state.counters["GMAC/s"] = benchmark::Counter(static_cast<double>(rows) * cols * n * state.iterations() / 1e9,
                                                benchmark::Counter::kIsRate);
  state.SetLabel(std::string(KernelIsaName()) + " " + m->Describe());
}

// One output of a 3-bit base with and without a low-rank term of rank `rank`
// (factors quantized to `lora_bits` in groups of `lora_group` columns, 0 = one per
// row, as eora bench's random adapters), run
// like the decode's module products (MatMulSharedLowRank): the in-cache cost of
// the adapter against its base. rank 0: the base alone.
void BM_LowRank(benchmark::State& state, Format f, int lora_bits, int lora_group, int rank, int rows, int cols, int n,
                int threads) {
  auto m = Make(f, rows, cols);
  std::unique_ptr<Matrix> a, bt;
  if (rank > 0) {
    std::mt19937 rng(rank * 7 + rows);
    std::normal_distribution<float> dist(0.f, 0.02f);
    std::vector<float> wa(static_cast<size_t>(rank) * cols), wb(static_cast<size_t>(rank) * rows);
    for (auto& v : wa) v = dist(rng);
    for (auto& v : wb) v = dist(rng);
    a = std::move(MakeQuantizedMatrix(QuantizeRtn(wa.data(), rank, cols, {lora_bits, lora_group})).value());
    bt = std::move(MakeQuantizedMatrix(QuantizeRtn(wb.data(), rank, rows, {lora_bits, lora_group})).value());
    bt->PrepareAccumulateTransposed();
  }
  std::vector<float> x(static_cast<size_t>(n) * cols), y(static_cast<size_t>(n) * rows);
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>((i * 7919) % 113) / 113.f - 0.5f;
  ThreadPool pool(threads);
  MatMulScratch scratch;
  const std::vector<MatMulOutput> outs = {{m.get(), y.data(), rows}};
  const std::vector<LowRankTerm> lr = {{a.get(), bt.get(), rank}};
  for (auto _ : state) {
    if (rank > 0) MatMulSharedLowRank(outs, lr, x.data(), n, cols, &pool, &scratch);
    else MatMulShared(outs, x.data(), n, cols, &pool, &scratch);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GMAC/s"] = benchmark::Counter(
      static_cast<double>(rows + rank) * cols * n * state.iterations() / 1e9 +
          static_cast<double>(rank) * rows * n * state.iterations() / 1e9,
      benchmark::Counter::kIsRate);
  state.SetLabel(std::string(KernelIsaName()) + " " + m->Describe());
}

int Register() {
  struct Shape {
    int rows, cols;
  };
  const Shape shapes[] = {{768, 768}, {2048, 768}, {768, 2048}, {32000, 768}, {256, 768}};
  for (const Format& f : kFormats) {
    for (const Shape& s : shapes) {
      for (int n : {1, 64}) {
        if (n == 64 && s.rows == 32000) continue;
        for (int threads : {1, 2}) {
          const std::string name = std::string("MatMul/") + f.name + "/" + std::to_string(s.rows) + "x" +
                                   std::to_string(s.cols) + "/n" + std::to_string(n) + "/t" + std::to_string(threads);
          benchmark::RegisterBenchmark(name.c_str(), BM_MatMul, f, s.rows, s.cols, n, threads)
              ->Unit(benchmark::kMicrosecond)
              ->UseRealTime();
        }
      }
    }
  }
  // Small batches of the quantized formats, dense and 2:4 (2:4 switches from per-row
  // tiles to weight panels at kSparsePanelMinRows in kernels_avx512.cc; dense
  // matrices in panels of 16 rows run one kernel for every batch, and
  // EORA_QUANT_LAYOUT=rows shows the row layout's switch at kPanelMinRows).
  for (const Format& f : kFormats) {
    if (f.kind != 3 && f.kind != 5) continue;
    for (int n : {4, 6, 8, 12, 16}) {
      const std::string name = std::string("MatMul/") + f.name + "/2048x768/n" + std::to_string(n) + "/t1";
      benchmark::RegisterBenchmark(name.c_str(), BM_MatMul, f, 2048, 768, n, 1)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
    }
  }
  // Low-rank terms on a 3-bit base (the rank-64 overhead of docs/performance.md).
  // Batch 1 (decode) and 16 (batched decode; the B side's row blocking).
  for (int n : {1, 16}) {
    for (const Shape& s : {Shape{768, 768}, Shape{2048, 768}, Shape{768, 2048}}) {
      struct Term {
        int rank, bits, group;
      };
      for (const Term& t : {Term{0, 3, 0}, Term{64, 3, kFactorGroupSize}, Term{64, 3, 0}, Term{64, 4, kFactorGroupSize}}) {
        const std::string term = "r" + std::to_string(t.rank) + "q" + std::to_string(t.bits) +
                                 (t.group ? "g" + std::to_string(t.group) : "row");
        const std::string name = std::string("LowRank/q3g64+") + (t.rank == 0 ? "none" : term) + "/" +
                                 std::to_string(s.rows) + "x" + std::to_string(s.cols) + "/n" + std::to_string(n) +
                                 "/t1";
        benchmark::RegisterBenchmark(name.c_str(), BM_LowRank, kFormats[6], t.bits, t.group, t.rank, s.rows, s.cols,
                                     n, 1)
            ->Unit(benchmark::kMicrosecond)
            ->UseRealTime();
      }
    }
  }
  const Shape small[] = {{64, 64}, {172, 64}, {64, 172}, {512, 64}};
  for (const Shape& s : small) {
    for (int n : {1, 4, 8, 16}) {
      const std::string name = "MatMul/f32/" + std::to_string(s.rows) + "x" + std::to_string(s.cols) +
                               "/n" + std::to_string(n) + "/t1";
      benchmark::RegisterBenchmark(name.c_str(), BM_MatMul, kFormats[0], s.rows, s.cols, n, 1)
          ->Unit(benchmark::kMicrosecond)
          ->UseRealTime();
    }
  }
  return 0;
}

const int kRegistered = Register();

}  // namespace
}  // namespace eora

BENCHMARK_MAIN();
