// Backend parity: every CUDA op against the CPU op on the same inputs, with a
// normalised error bound (as llama.cpp's test-backend-ops). Odd shapes (cols 172,
// 64, 8; rows 1, 3, 172), every bit width and group size, 2:4 sparse, dense via
// cuBLAS, the fused EoRA epilogue (batch 1..8 GEMV and GEMM), and multi-adapter
// batches with mixed ranks against per-sequence CPU ApplyLowRankFactors.
//
// Quantized products: the CPU kernels quantize activations to int8, the CUDA
// kernels keep F32, so each is compared twice: against the exact product of the
// dequantized weights (tight bound) and against the CPU op (int8-level bound).
//
// main() exits 77 (ctest: Skipped) when no CUDA device is usable.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cuda_ops.h"
#include "engine/backend/cuda/device.h"
#include "engine/lowrank.h"
#include "engine/matrix.h"
#include "engine/thread_pool.h"

namespace eora::cuda {
namespace {

constexpr double kExactTol = 1e-5;  // F32 rounding only (relative to sum |w x|)
constexpr double kCpuTol = 2e-2;    // CPU int8 activations vs F32

// ||a - b|| / max(||b||, tiny), over all elements.
double NormErr(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

std::vector<float> Random(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// Keeps 2 of every aligned 4 columns (random positions).
std::vector<float> Random24(int rows, int cols, uint32_t seed) {
  std::vector<float> w = Random(static_cast<size_t>(rows) * cols, seed);
  std::mt19937 rng(seed + 1);
  for (int r = 0; r < rows; ++r)
    for (int g = 0; g < cols; g += 4) {
      int keep[2] = {static_cast<int>(rng() % 4), static_cast<int>(rng() % 4)};
      for (int k = 0; k < 4 && g + k < cols; ++k)
        if (k != keep[0] && k != keep[1]) w[static_cast<size_t>(r) * cols + g + k] = 0.f;
    }
  return w;
}

// Exact product with the dequantized weights, in double. With `abs`, also
// sum_k |W[r][k] x[t][k]| (the scale of the rounding error of any summation order).
std::vector<float> ExactProduct(const Matrix& m, const std::vector<float>& x, int n,
                                std::vector<float>* abs = nullptr) {
  const std::vector<float> w = m.Dequantize();
  std::vector<float> y(static_cast<size_t>(n) * m.rows());
  if (abs) abs->assign(y.size(), 0.f);
  for (int t = 0; t < n; ++t)
    for (int r = 0; r < m.rows(); ++r) {
      double s = 0, sa = 0;
      for (int k = 0; k < m.cols(); ++k) {
        const double p = static_cast<double>(w[static_cast<size_t>(r) * m.cols() + k]) *
                         x[static_cast<size_t>(t) * m.cols() + k];
        s += p;
        sa += std::fabs(p);
      }
      y[static_cast<size_t>(t) * m.rows() + r] = static_cast<float>(s);
      if (abs) (*abs)[static_cast<size_t>(t) * m.rows() + r] = static_cast<float>(sa);
    }
  return y;
}

// ||a - b|| / ||scale||: error relative to the magnitude of the summed terms, so a
// result that cancels to near zero does not inflate it.
double ScaledErr(const std::vector<float>& a, const std::vector<float>& b,
                 const std::vector<float>& scale) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(scale[i]) * scale[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

std::vector<float> CpuProduct(const Matrix& m, const std::vector<float>& x, int n) {
  std::vector<float> y(static_cast<size_t>(n) * m.rows());
  MatMulScratch scratch;
  MatMul(m, x.data(), n, m.cols(), y.data(), m.rows(), nullptr, &scratch);
  return y;
}

class CudaParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ctx = CudaContext::Create(0);
    ASSERT_TRUE(ctx.ok()) << ctx.status();
    ctx_ = std::move(*ctx);
  }
  std::vector<float> Gpu(const Matrix& m, const std::vector<float>& x, int n) {
    auto d = ctx_->Upload(m);
    EXPECT_TRUE(d.ok()) << d.status();
    std::vector<float> y(static_cast<size_t>(n) * m.rows(), NAN);
    if (d.ok()) {
      absl::Status s = ctx_->MatMul(**d, x.data(), n, y.data());
      EXPECT_TRUE(s.ok()) << s;
    }
    return y;
  }
  std::unique_ptr<CudaContext> ctx_;
  ThreadPool pool_{2};
};

const int kCols[] = {172, 64, 8};
const int kRows[] = {1, 3, 172};
const int kBatches[] = {1, 2, 3, 5, 8, 9, 33, 70};  // <= 8: GEMV; > 8: GEMM

TEST_F(CudaParityTest, QuantAllBitsGroupsShapes) {
  uint32_t seed = 1;
  for (int bits : {2, 3, 4})
    for (int group : {0, 32, 64, 128})
      for (int cols : kCols)
        for (int rows : kRows) {
          const std::vector<float> w = Random(static_cast<size_t>(rows) * cols, seed++);
          auto m = MakeQuantizedMatrix(QuantizeRtn(w.data(), rows, cols, {bits, group}));
          ASSERT_TRUE(m.ok()) << m.status();
          for (int n : kBatches) {
            const std::vector<float> x = Random(static_cast<size_t>(n) * cols, seed++);
            const std::vector<float> y = Gpu(**m, x, n);
            const std::string where = absl::StrCat((*m)->Describe(), " ", rows, "x", cols, " n=", n);
            std::vector<float> abs;
            const std::vector<float> exact = ExactProduct(**m, x, n, &abs);
            EXPECT_LT(ScaledErr(y, exact, abs), kExactTol) << where;
            EXPECT_LT(ScaledErr(y, CpuProduct(**m, x, n), abs), kCpuTol) << where;
          }
        }
}

TEST_F(CudaParityTest, Sparse24F16AndQuant) {
  uint32_t seed = 1000;
  for (int cols : kCols)
    for (int rows : kRows) {
      const std::vector<float> w = Random24(rows, cols, seed++);
      std::vector<std::unique_ptr<Matrix>> ms;
      auto f16 = MakeSparse24Matrix(rows, cols, w.data());
      ASSERT_TRUE(f16.ok()) << f16.status();
      ms.push_back(std::move(*f16));
      for (int bits : {2, 3, 4})
        for (int group : {0, 32, 64}) {
          auto q = MakeSparse24QuantMatrix(rows, cols, w.data(), {bits, group});
          ASSERT_TRUE(q.ok()) << q.status();
          ms.push_back(std::move(*q));
        }
      for (const auto& m : ms)
        for (int n : {1, 4, 8, 11}) {
          const std::vector<float> x = Random(static_cast<size_t>(n) * cols, seed++);
          const std::vector<float> y = Gpu(*m, x, n);
          const std::string where = absl::StrCat(m->Describe(), " ", rows, "x", cols, " n=", n);
          std::vector<float> abs;
          const std::vector<float> exact = ExactProduct(*m, x, n, &abs);
          EXPECT_LT(ScaledErr(y, exact, abs), kExactTol) << where;
          EXPECT_LT(ScaledErr(y, CpuProduct(*m, x, n), abs), kCpuTol) << where;
        }
    }
}

TEST_F(CudaParityTest, DenseCublas) {
  uint32_t seed = 2000;
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16})
    for (int cols : kCols)
      for (int rows : kRows)
        for (int n : {1, 3, 17}) {
          const std::vector<float> w = Random(static_cast<size_t>(rows) * cols, seed++);
          auto m = MakeDenseMatrixFromF32(dt, rows, cols, w.data());
          const std::vector<float> x = Random(static_cast<size_t>(n) * cols, seed++);
          const std::vector<float> y = Gpu(*m, x, n);
          // F16/BF16 products round the activations to the weight type.
          const double tol = dt == DType::kF32 ? 1e-5 : dt == DType::kF16 ? 2e-3 : 1e-2;
          const std::string where = absl::StrCat(m->Describe(), " ", rows, "x", cols, " n=", n);
          std::vector<float> abs;
          ExactProduct(*m, x, n, &abs);
          EXPECT_LT(ScaledErr(y, CpuProduct(*m, x, n), abs), tol) << where;
        }
}

// ---- Low-rank ---------------------------------------------------------------------

LowRankFactors MakeFactors(int rank, int in, int out, int factor_bits, uint32_t seed) {
  const std::vector<float> a = Random(static_cast<size_t>(rank) * in, seed, 0.1f);
  const std::vector<float> bt = Random(static_cast<size_t>(rank) * out, seed + 1, 0.1f);
  LowRankFactors f;
  if (factor_bits == 16) {
    f.a = MakeDenseMatrixFromF32(DType::kF16, rank, in, a.data());
    f.bt = MakeDenseMatrixFromF32(DType::kF16, rank, out, bt.data());
  } else {
    f.a = std::shared_ptr<const Matrix>(
        *MakeQuantizedMatrix(QuantizeRtn(a.data(), rank, in, {factor_bits, 0})));
    f.bt = std::shared_ptr<const Matrix>(
        *MakeQuantizedMatrix(QuantizeRtn(bt.data(), rank, out, {factor_bits, 0})));
  }
  return f;
}

struct Seg {
  int begin, end, adapter, rank;
};

// A batch of sequences with different adapters (F16 and 4-bit) and ranks, some
// sequences without adapter.
struct MultiAdapterCase {
  std::vector<LowRankFactors> cpu;
  std::vector<std::unique_ptr<DeviceLowRank>> gpu;
  std::vector<Seg> segs;
  int n = 0;
};

MultiAdapterCase MakeCase(CudaContext* ctx, int in, int out, const std::vector<int>& lens,
                          uint32_t seed) {
  MultiAdapterCase c;
  const int ranks[] = {16, 4, 40, 1, 64};
  const int bits[] = {16, 4, 16, 4, 4};
  for (int i = 0; i < 5; ++i) {
    c.cpu.push_back(MakeFactors(ranks[i], in, out, bits[i], seed + 10 * i));
    auto d = ctx->Upload(c.cpu.back());
    EXPECT_TRUE(d.ok()) << d.status();
    c.gpu.push_back(std::move(*d));
  }
  int t = 0;
  for (size_t s = 0; s < lens.size(); ++s) {
    const int a = static_cast<int>(s % 6);  // 5: no adapter
    if (a < 5) {
      const int rank = std::max(1, ranks[a] - static_cast<int>(s % 3));  // truncated prefixes
      c.segs.push_back({t, t + lens[s], a, rank});
    }
    t += lens[s];
  }
  c.n = t;
  return c;
}

std::vector<DeviceLowRankSegment> DeviceSegs(const MultiAdapterCase& c) {
  std::vector<DeviceLowRankSegment> out;
  for (const Seg& s : c.segs) out.push_back({s.begin, s.end, c.gpu[s.adapter].get(), s.rank});
  return out;
}

void CpuLowRank(const MultiAdapterCase& c, const std::vector<float>& x, int in, int out,
                std::vector<float>* y, ThreadPool* pool) {
  LowRankScratch scratch;
  for (const Seg& s : c.segs)
    ApplyLowRankFactors(c.cpu[s.adapter], s.rank, s.end - s.begin,
                        x.data() + static_cast<size_t>(s.begin) * in, in,
                        y->data() + static_cast<size_t>(s.begin) * out, out, pool, &scratch);
}

// The same low-rank terms with the dequantized factors, in double (exact).
void ExactLowRank(const MultiAdapterCase& c, const std::vector<float>& x, int in, int out,
                  std::vector<float>* y) {
  for (const Seg& s : c.segs) {
    const std::vector<float> a = c.cpu[s.adapter].a->Dequantize();
    const std::vector<float> bt = c.cpu[s.adapter].bt->Dequantize();
    for (int t = s.begin; t < s.end; ++t) {
      std::vector<double> u(s.rank);
      for (int j = 0; j < s.rank; ++j)
        for (int k = 0; k < in; ++k)
          u[j] += static_cast<double>(a[static_cast<size_t>(j) * in + k]) *
                  x[static_cast<size_t>(t) * in + k];
      for (int o = 0; o < out; ++o) {
        double acc = 0;
        for (int j = 0; j < s.rank; ++j) acc += u[j] * bt[static_cast<size_t>(j) * out + o];
        (*y)[static_cast<size_t>(t) * out + o] += static_cast<float>(acc);
      }
    }
  }
}

TEST_F(CudaParityTest, MultiAdapterMixedRanks) {
  for (int in : kCols)
    for (int out : {1, 3, 172}) {
      const std::vector<std::vector<int>> batches = {{1}, {1, 1, 1, 1, 1, 1, 1, 1}, {5, 1, 9, 2, 1, 3, 7}};
      for (const auto& lens : batches) {
        MultiAdapterCase c = MakeCase(ctx_.get(), in, out, lens, 77 + in + out);
        const std::vector<float> x = Random(static_cast<size_t>(c.n) * in, 5);
        std::vector<float> y0 = Random(static_cast<size_t>(c.n) * out, 6);
        std::vector<float> cpu = y0, exact = y0, gpu = y0;
        CpuLowRank(c, x, in, out, &cpu, &pool_);
        ExactLowRank(c, x, in, out, &exact);
        const auto segs = DeviceSegs(c);
        ASSERT_TRUE(ctx_->LowRank(segs, x.data(), c.n, in, out, gpu.data()).ok());
        // Compare the low-rank terms themselves (y0 subtracted).
        for (size_t i = 0; i < y0.size(); ++i) {
          cpu[i] -= y0[i];
          exact[i] -= y0[i];
          gpu[i] -= y0[i];
        }
        EXPECT_LT(NormErr(gpu, exact), 1e-4) << in << "->" << out << " n=" << c.n;
        EXPECT_LT(NormErr(gpu, cpu), kCpuTol) << in << "->" << out << " n=" << c.n;
      }
    }
}

TEST_F(CudaParityTest, FusedEpilogueMatchesUnfusedAndCpu) {
  uint32_t seed = 3000;
  for (int in : {172, 64})
    for (int out : {3, 172})
      for (int kind = 0; kind < 3; ++kind) {  // q3 g64, q4 per-row, 2:4 q4
        const std::vector<float> w = kind == 2 ? Random24(out, in, seed) :
                                                 Random(static_cast<size_t>(out) * in, seed);
        ++seed;
        std::unique_ptr<Matrix> m;
        if (kind == 0) m = std::move(*MakeQuantizedMatrix(QuantizeRtn(w.data(), out, in, {3, 64})));
        if (kind == 1) m = std::move(*MakeQuantizedMatrix(QuantizeRtn(w.data(), out, in, {4, 0})));
        if (kind == 2) m = std::move(*MakeSparse24QuantMatrix(out, in, w.data(), {4, 32}));
        auto dm = ctx_->Upload(*m);
        ASSERT_TRUE(dm.ok()) << dm.status();
        // Batch 1 and 8 (GEMV) and 20 tokens over 6 sequences (GEMM / chunked sparse).
        for (const std::vector<int>& lens :
             std::vector<std::vector<int>>{{1}, {1, 1, 1, 1, 1, 1, 1, 1}, {4, 1, 7, 2, 1, 5}}) {
          MultiAdapterCase c = MakeCase(ctx_.get(), in, out, lens, seed++);
          const std::vector<float> x = Random(static_cast<size_t>(c.n) * in, seed++);
          const auto segs = DeviceSegs(c);
          std::vector<float> fused(static_cast<size_t>(c.n) * out), unfused(fused.size());
          ASSERT_TRUE(ctx_->MatMulLowRank(**dm, segs, x.data(), c.n, fused.data(), true).ok());
          ASSERT_TRUE(ctx_->MatMulLowRank(**dm, segs, x.data(), c.n, unfused.data(), false).ok());
          std::vector<float> exact = ExactProduct(*m, x, c.n);
          ExactLowRank(c, x, in, out, &exact);
          std::vector<float> cpu = CpuProduct(*m, x, c.n);
          CpuLowRank(c, x, in, out, &cpu, &pool_);
          const std::string where = absl::StrCat(m->Describe(), " ", out, "x", in, " n=", c.n);
          EXPECT_LT(NormErr(fused, unfused), 1e-5) << where;
          EXPECT_LT(NormErr(fused, exact), 2e-4) << where;
          EXPECT_LT(NormErr(fused, cpu), kCpuTol) << where;
        }
      }
}

// ---- Element-wise and attention ---------------------------------------------------

TEST_F(CudaParityTest, RmsNorm) {
  for (int dim : {8, 64, 172, 4096}) {
    const int rows = 5;
    const std::vector<float> x = Random(static_cast<size_t>(rows) * dim, dim);
    const std::vector<float> w = Random(dim, dim + 1);
    std::vector<float> ref(x.size()), got(x.size());
    for (int t = 0; t < rows; ++t) {  // engine/model.cc RmsNorm
      double ss = 0;
      for (int i = 0; i < dim; ++i) ss += static_cast<double>(x[t * dim + i]) * x[t * dim + i];
      const float inv = 1.0f / std::sqrt(static_cast<float>(ss / dim) + 1e-5f);
      for (int i = 0; i < dim; ++i) ref[t * dim + i] = x[t * dim + i] * inv * w[i];
    }
    ASSERT_TRUE(ctx_->RmsNorm(x.data(), w.data(), rows, dim, 1e-5f, got.data()).ok());
    EXPECT_LT(NormErr(got, ref), 1e-6) << dim;
  }
}

TEST_F(CudaParityTest, RopeBothStyles) {
  for (RopeStyle style : {RopeStyle::kInterleaved, RopeStyle::kHalf})
    for (int hd : {8, 64, 128}) {
      const int rows = 4, heads = 3, half = hd / 2;
      const std::vector<int> pos = {0, 1, 17, 2047};
      std::vector<float> v = Random(static_cast<size_t>(rows) * heads * hd, hd);
      std::vector<float> ref = v;
      for (int t = 0; t < rows; ++t)
        for (int h = 0; h < heads; ++h) {  // engine/model.cc Prepare + Rope
          float* p = ref.data() + (t * heads + h) * hd;
          for (int i = 0; i < half; ++i) {
            const double ang = pos[t] * std::pow(10000.0, -2.0 * i / hd);
            const float cs = static_cast<float>(std::cos(ang)), sn = static_cast<float>(std::sin(ang));
            const int i0 = style == RopeStyle::kInterleaved ? 2 * i : i;
            const int i1 = style == RopeStyle::kInterleaved ? 2 * i + 1 : i + half;
            const float a = p[i0], b = p[i1];
            p[i0] = a * cs - b * sn;
            p[i1] = a * sn + b * cs;
          }
        }
      ASSERT_TRUE(ctx_->Rope(v.data(), rows, heads, hd, pos.data(), 10000.f, style).ok());
      EXPECT_LT(NormErr(v, ref), 1e-6) << hd;
    }
}

TEST_F(CudaParityTest, SwiGlu) {
  const std::vector<float> g = Random(1000, 1, 3.f), u = Random(1000, 2);
  std::vector<float> ref(1000), got(1000);
  for (int i = 0; i < 1000; ++i) ref[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  ASSERT_TRUE(ctx_->SwiGlu(g.data(), u.data(), 1000, got.data()).ok());
  EXPECT_LT(NormErr(got, ref), 1e-6);
}

TEST_F(CudaParityTest, ArgmaxTiesToLowestId) {
  const int rows = 4;
  for (int vocab : {1, 7, 512, 32000}) {
    std::vector<float> l = Random(static_cast<size_t>(rows) * vocab, vocab);
    if (vocab > 5) {  // ties in row 1 at ids 3 and 5
      l[vocab + 3] = 100.f;
      l[vocab + 5] = 100.f;
    }
    std::vector<int> got(rows, -1);
    ASSERT_TRUE(ctx_->Argmax(l.data(), rows, vocab, got.data()).ok());
    for (int t = 0; t < rows; ++t) {
      const float* r = l.data() + static_cast<size_t>(t) * vocab;
      EXPECT_EQ(got[t], std::max_element(r, r + vocab) - r) << vocab << " row " << t;
    }
  }
}

// CPU reference of one query head (engine/model.cc AttendHead), in double.
void RefAttend(const PagedAttentionInput& in, int t, int h, float* out) {
  const int hd = in.head_dim, kvd = in.n_kv_heads * hd;
  const int kvh = h / (in.n_heads / in.n_kv_heads);
  const float* q = in.q + (static_cast<size_t>(t) * in.n_heads + h) * hd;
  const auto& table = in.block_tables[in.seq_of_token[t]];
  const int n = in.pos[t] + 1;
  auto at = [&](int p, int kind) {
    const size_t blk = table[p / 16];
    return in.pool + ((((blk * in.n_layers + in.layer) * 2 + kind) * 16 + p % 16) * kvd) + kvh * hd;
  };
  std::vector<double> s(n);
  double mx = -INFINITY;
  for (int p = 0; p < n; ++p) {
    double d = 0;
    for (int i = 0; i < hd; ++i) d += static_cast<double>(q[i]) * at(p, 0)[i];
    s[p] = d * in.scale;
    mx = std::max(mx, s[p]);
  }
  double sum = 0;
  for (double& v : s) sum += (v = std::exp(v - mx));
  for (int i = 0; i < hd; ++i) {
    double o = 0;
    for (int p = 0; p < n; ++p) o += s[p] * at(p, 1)[i];
    out[i] = static_cast<float>(o / sum);
  }
}

TEST_F(CudaParityTest, PagedAttentionGqaPrefillAndDecode) {
  for (int hd : {8, 64, 128})
    for (auto [heads, kv_heads] : std::vector<std::pair<int, int>>{{4, 4}, {8, 2}, {6, 1}}) {
      const int n_layers = 2, layer = 1, kvd = kv_heads * hd, num_blocks = 40;
      PagedAttentionInput in;
      in.n_layers = n_layers;
      in.layer = layer;
      in.n_heads = heads;
      in.n_kv_heads = kv_heads;
      in.head_dim = hd;
      in.scale = 1.0f / std::sqrt(static_cast<float>(hd));
      const std::vector<float> pool =
          Random(static_cast<size_t>(num_blocks) * n_layers * 2 * 16 * kvd, hd + heads);
      in.pool = pool.data();
      in.pool_floats = pool.size();
      // Three sequences with scattered blocks: lengths 1, 37, 300.
      std::vector<int> ids(num_blocks);
      for (int i = 0; i < num_blocks; ++i) ids[i] = (i * 17) % num_blocks;
      in.block_tables = {{ids[0]}, {ids[1], ids[2], ids[3]},
                         std::vector<int>(ids.begin() + 4, ids.begin() + 4 + 19)};
      // Decode tokens of sequences 0 and 2, and a 6-token prefill chunk of sequence 1.
      std::vector<int> pos = {0, 299, 31, 32, 33, 34, 35, 36};
      std::vector<int> seq = {0, 2, 1, 1, 1, 1, 1, 1};
      in.tokens = static_cast<int>(pos.size());
      in.pos = pos.data();
      in.seq_of_token = seq.data();
      const std::vector<float> q = Random(static_cast<size_t>(in.tokens) * heads * hd, 9);
      in.q = q.data();
      std::vector<float> ref(q.size()), got(q.size());
      for (int t = 0; t < in.tokens; ++t)
        for (int h = 0; h < heads; ++h) RefAttend(in, t, h, ref.data() + (t * heads + h) * hd);
      ASSERT_TRUE(ctx_->PagedAttention(in, got.data()).ok());
      EXPECT_LT(NormErr(got, ref), 1e-5) << "hd " << hd << " heads " << heads << "/" << kv_heads;

      // KV store: the device writes exactly the slots of (seq, pos).
      const std::vector<float> k = Random(static_cast<size_t>(in.tokens) * kvd, 11);
      const std::vector<float> v = Random(static_cast<size_t>(in.tokens) * kvd, 12);
      std::vector<float> expect = pool, dev = pool;
      for (int t = 0; t < in.tokens; ++t) {
        const size_t blk = in.block_tables[seq[t]][pos[t] / 16];
        for (int kind = 0; kind < 2; ++kind)
          std::copy_n((kind ? v : k).data() + static_cast<size_t>(t) * kvd, kvd,
                      expect.data() + (((blk * n_layers + layer) * 2 + kind) * 16 + pos[t] % 16) * kvd);
      }
      ASSERT_TRUE(ctx_->KvStore(in, k.data(), v.data(), dev.data()).ok());
      EXPECT_EQ(dev, expect);
    }
}

}  // namespace
}  // namespace eora::cuda

int main(int argc, char** argv) {
  auto devices = eora::cuda::ListDevices();
  if (!devices.ok() || devices->empty()) {
    std::printf("SKIP: %s\n", devices.ok() ? "no CUDA device"
                                           : std::string(devices.status().message()).c_str());
    return 77;
  }
  for (const auto& d : *devices)
    std::printf("CUDA device %d: %s (sm_%d%d, %zu MiB)\n", d.index, d.name.c_str(),
                d.compute_major, d.compute_minor, d.total_memory >> 20);
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
