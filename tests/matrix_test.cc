// Weight formats and CPU kernels: every format x bits x group size x available
// ISA x odd shapes against double-precision references.
//
// Tolerances:
//  * Dense and float-input paths (F32/F16/BF16, 2:4 F16, AccumulateTransposed):
//      |y - y_ref| <= 1e-5 * sum_k |W[r][k] x[k]| + 1e-30
//    (float accumulation error, relative to the absolute-value product).
//  * Int8-activation paths (kQuant, kSparse24Quant): x is quantized to d*q, one d per
//    aligned run of kQSpan 32-blocks, d = amax(run) / 127, |x - d*q| <= d / 2, so
//      |y - y_ref| <= sum_k |W[r][k]| * d_{b(k)} / 2  (* 1.001)  + 1e-5 * sum_k |W[r][k] x[k]|
//    where y_ref uses the float x and the exactly dequantized W (Dequantize()).
//    (The activation error dominates: e.g. ~1e-2 relative for Gaussian data.)
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/backend/cpu/kernels.h"
#include "engine/dtype.h"
#include "engine/matrix.h"
#include "engine/quant_matrix.h"
#include "engine/sparse_matrix.h"
#include "engine/thread_pool.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace eora {
namespace {

struct Shape {
  int rows, cols;
};
const Shape kShapes[] = {{1, 1}, {3, 8}, {8, 64}, {13, 172}, {172, 64}, {5, 300}, {9, 33}, {4, 129}, {6, 2270}};
const int kBatch[] = {1, 2, 3, 4, 5, 8, 9, 10, 12, 13, 16, 17, 33};

std::vector<std::string> Isas() {
  std::vector<std::string> out;
  for (const char* isa : {"generic", "avx2", "avx512", "amx"}) {
    if (cpu::KernelsFor(isa) != nullptr) out.push_back(isa);
  }
  return out;
}

// The ISAs with the AVX-512 VNNI quantized kernels that this CPU runs.
std::vector<std::string> VnniIsas() {
  std::vector<std::string> out;
  for (const std::string& isa : Isas())
    if (isa == "avx512" || isa == "amx") out.push_back(isa);
  return out;
}

// Restores the default ISA at the end of a test.
class IsaGuard {
 public:
  IsaGuard() : saved_(cpu::ActiveIsaName()) {}
  ~IsaGuard() { cpu::SetActiveIsa(saved_); }

 private:
  std::string saved_;
};

// Calls body(isa, bits) for bits 2, 3 and 4 under every ISA whose kernel table has
// the int8 B side (quant_acc_t_i8), then restores the active ISA; stops at a fatal
// failure. False when no ISA has it (the caller skips).
bool ForEachInt8BSide(const std::function<void(const std::string&, int)>& body) {
  IsaGuard guard;
  bool any = false;
  for (const std::string& isa : Isas()) {
    if (!cpu::SetActiveIsa(isa) || cpu::Kernels().quant_acc_t_i8 == nullptr) continue;
    any = true;
    for (int bits : {2, 3, 4}) {
      body(isa, bits);
      if (::testing::Test::HasFatalFailure()) return any;
    }
  }
  return any;
}

std::vector<float> RandomVec(size_t n, std::mt19937* rng, float scale = 1.f) {
  std::normal_distribution<float> dist(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(*rng);
  return v;
}

// 2:4-sparse random matrix: in each group of 4, zero 2 (or more) entries.
std::vector<float> RandomSparse24(int rows, int cols, std::mt19937* rng) {
  std::vector<float> w = RandomVec(static_cast<size_t>(rows) * cols, rng);
  std::uniform_int_distribution<int> pick(0, 5);
  const int pairs[6][2] = {{0, 1}, {0, 2}, {0, 3}, {1, 2}, {1, 3}, {2, 3}};
  for (int r = 0; r < rows; ++r) {
    for (int g = 0; g * 4 < cols; ++g) {
      const int* keep = pairs[pick(*rng)];
      const bool drop_one = pick(*rng) == 0;  // sometimes only 1 non-zero
      for (int p = 0; p < 4; ++p) {
        const int c = 4 * g + p;
        if (c >= cols) continue;
        const bool kept = (p == keep[0] && !drop_one) || p == keep[1];
        if (!kept) w[static_cast<size_t>(r) * cols + c] = 0.f;
      }
    }
  }
  return w;
}

enum class Kind { kF32, kF16, kBF16, kQuant, kSparse, kSparseQuant, kQuantPanels };

struct Case {
  Kind kind;
  int bits = 4;
  int group = 64;
  std::string Name() const {
    const char* names[] = {"f32", "f16", "bf16", "quant", "sparse24", "sparse24quant", "quant-panels"};
    return std::string(names[static_cast<int>(kind)]) + " b" + std::to_string(bits) + " g" +
           std::to_string(group);
  }
  bool IntInput() const { return kind == Kind::kQuant || kind == Kind::kSparseQuant || kind == Kind::kQuantPanels; }
};

std::vector<Case> AllCases() {
  std::vector<Case> cases = {{Kind::kF32}, {Kind::kF16}, {Kind::kBF16}, {Kind::kSparse}};
  for (int bits : {2, 3, 4}) {
    // 32/64/128/0 are the common ones; 96 and 256 exercise other blocks-per-group.
    for (int group : {32, 64, 128, 0, 96, 256}) {
      cases.push_back({Kind::kQuant, bits, group});
      cases.push_back({Kind::kSparseQuant, bits, group});
      // Panels of 16 rows whatever the ISA and shape (kQuant takes them only where
      // the ISA prefers them and the padding is small); odd blocks per group stay
      // in rows.
      if (group != 32 && group != 96) cases.push_back({Kind::kQuantPanels, bits, group});
    }
  }
  return cases;
}

std::unique_ptr<Matrix> Build(const Case& c, int rows, int cols, std::mt19937* rng) {
  switch (c.kind) {
    case Kind::kF32:
    case Kind::kF16:
    case Kind::kBF16: {
      const DType dt = c.kind == Kind::kF32 ? DType::kF32 : c.kind == Kind::kF16 ? DType::kF16 : DType::kBF16;
      const auto w = RandomVec(static_cast<size_t>(rows) * cols, rng);
      return MakeDenseMatrixFromF32(dt, rows, cols, w.data());
    }
    case Kind::kQuant: {
      const auto w = RandomVec(static_cast<size_t>(rows) * cols, rng);
      auto m = MakeQuantizedMatrix(QuantizeRtn(w.data(), rows, cols, {c.bits, c.group}));
      EXPECT_TRUE(m.ok()) << m.status();
      return std::move(*m);
    }
    case Kind::kQuantPanels: {
      const auto w = RandomVec(static_cast<size_t>(rows) * cols, rng);
      auto m = QuantMatrix::Create(QuantizeRtn(w.data(), rows, cols, {c.bits, c.group}), QuantLayout::kPanels);
      EXPECT_TRUE(m.ok()) << m.status();
      EXPECT_TRUE((*m)->panels());
      return std::move(*m);
    }
    case Kind::kSparse: {
      const auto w = RandomSparse24(rows, cols, rng);
      auto m = MakeSparse24Matrix(rows, cols, w.data());
      EXPECT_TRUE(m.ok()) << m.status();
      return std::move(*m);
    }
    case Kind::kSparseQuant: {
      const auto w = RandomSparse24(rows, cols, rng);
      auto m = MakeSparse24QuantMatrix(rows, cols, w.data(), {c.bits, c.group});
      EXPECT_TRUE(m.ok()) << m.status();
      return std::move(*m);
    }
  }
  return nullptr;
}

// Checks y[t][r] for r in [r0, r1) against the double reference on Dequantize().
void CheckProduct(const Matrix& m, const std::vector<float>& wd, const float* x, int n, int ldx,
                  const float* y, int ldy, int r0, int r1, bool int_input) {
  const int cols = m.cols();
  const int span = kQSpan * 32;
  for (int t = 0; t < n; ++t) {
    const float* xt = x + static_cast<size_t>(t) * ldx;
    for (int r = r0; r < r1; ++r) {
      const float* wr = wd.data() + static_cast<size_t>(r) * cols;
      double ref = 0, absprod = 0, qerr = 0;
      for (int b = 0; b * 32 < cols; ++b) {
        double amax = 0;
        const int s0 = b * 32 / span * span;
        for (int k = s0; k < std::min(cols, s0 + span); ++k) amax = std::max(amax, std::fabs(double(xt[k])));
        const double half_step = amax / 127.0 / 2.0;
        for (int k = b * 32; k < std::min(cols, b * 32 + 32); ++k) {
          ref += double(wr[k]) * xt[k];
          absprod += std::fabs(double(wr[k]) * xt[k]);
          qerr += std::fabs(double(wr[k])) * half_step;
        }
      }
      const double tol = 1e-5 * absprod + (int_input ? 1.001 * qerr : 0.0) + 1e-30;
      const double got = y[static_cast<size_t>(t) * ldy + r];
      ASSERT_LE(std::fabs(got - ref), tol) << "t=" << t << " r=" << r << " ref=" << ref << " got=" << got;
    }
  }
}

TEST(MatrixTest, MatMulRowsAllFormatsIsasShapes) {
  IsaGuard guard;
  for (const std::string& isa : Isas()) {
    ASSERT_TRUE(cpu::SetActiveIsa(isa));
    ASSERT_STREQ(KernelIsaName(), isa.c_str());
    for (const Case& c : AllCases()) {
      for (const Shape& s : kShapes) {
        SCOPED_TRACE(isa + " " + c.Name() + " " + std::to_string(s.rows) + "x" + std::to_string(s.cols));
        std::mt19937 rng(s.rows * 1000 + s.cols);
        auto m = Build(c, s.rows, s.cols, &rng);
        ASSERT_NE(m, nullptr);
        ASSERT_EQ(m->rows(), s.rows);
        ASSERT_EQ(m->cols(), s.cols);
        const std::vector<float> wd = m->Dequantize();
        for (int n : kBatch) {
          SCOPED_TRACE("n=" + std::to_string(n));
          const int ldx = s.cols + 3, ldy = s.rows + 5;
          const auto x = RandomVec(static_cast<size_t>(n) * ldx, &rng);
          MatMulScratch scratch;
          std::vector<float> y(static_cast<size_t>(n) * ldy, -7.f);
          MatMul(*m, x.data(), n, ldx, y.data(), ldy, nullptr, &scratch);
          CheckProduct(*m, wd, x.data(), n, ldx, y.data(), ldy, 0, s.rows, c.IntInput());
          for (int t = 0; t < n; ++t)
            for (int r = s.rows; r < ldy; ++r) ASSERT_EQ(y[static_cast<size_t>(t) * ldy + r], -7.f);

          // Arbitrary sub-range through MatMulRows directly; other rows untouched.
          if (s.rows >= 3) {
            const int r0 = 1, r1 = s.rows - 1;
            std::vector<float> y2(static_cast<size_t>(n) * ldy, -7.f);
            QuantizedActivations qa;
            MatMulInput in;
            in.x = x.data();
            in.n = n;
            in.ldx = ldx;
            if (m->WantsQuantizedInput()) {
              qa.Quantize(x.data(), n, s.cols, ldx);
              in.qx = &qa;
            }
            m->MatMulRows(in, y2.data(), ldy, r0, r1);
            CheckProduct(*m, wd, x.data(), n, ldx, y2.data(), ldy, r0, r1, c.IntInput());
            for (int t = 0; t < n; ++t) {
              ASSERT_EQ(y2[static_cast<size_t>(t) * ldy + 0], -7.f);
              ASSERT_EQ(y2[static_cast<size_t>(t) * ldy + s.rows - 1], -7.f);
              // Row results do not depend on the range they were computed in.
              for (int r = r0; r < r1; ++r)
                ASSERT_EQ(y2[static_cast<size_t>(t) * ldy + r], y[static_cast<size_t>(t) * ldy + r]) << r;
            }
          }
        }
      }
    }
  }
}

// On the AVX-512 and AMX kernels, a quantized product of 8 or more activation rows
// gives each row bits that do not depend on the other rows of the batch (the
// weight-panel and tile kernels keep one accumulator per activation row and sum in
// the same order), and the two ISAs give the same bits (on CPUs with AMX).
TEST(MatrixTest, QuantRowsOfLargeBatchesIndependentOfTheBatch) {
  IsaGuard guard;
  const std::vector<std::string> isas = VnniIsas();
  if (isas.empty()) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  for (int bits : {2, 3, 4}) {
    for (int group : {64, 0, 128}) {
      for (const Shape& s : {Shape{40, 300}, Shape{17, 2270}, Shape{33, 129}}) {
        SCOPED_TRACE(::testing::Message() << "b" << bits << " g" << group << " " << s.rows << "x" << s.cols);
        std::mt19937 rng(bits * 100 + group + s.cols);
        auto m = Build({Kind::kQuant, bits, group}, s.rows, s.cols, &rng);
        const int n = 27, ldx = s.cols, ldy = s.rows;
        const auto x = RandomVec(static_cast<size_t>(n) * ldx, &rng);
        std::vector<float> first;
        for (const std::string& isa : isas) {
          ASSERT_TRUE(cpu::SetActiveIsa(isa));
          MatMulScratch scratch;
          std::vector<float> y(static_cast<size_t>(n) * ldy);
          MatMul(*m, x.data(), n, ldx, y.data(), ldy, nullptr, &scratch);
          // Sub-batches of 8, 9 and 10 rows at different offsets.
          for (const auto& [t0, count] : {std::pair{0, 8}, std::pair{3, 9}, std::pair{17, 10}}) {
            std::vector<float> ys(static_cast<size_t>(count) * ldy);
            MatMul(*m, x.data() + static_cast<size_t>(t0) * ldx, count, ldx, ys.data(), ldy, nullptr, &scratch);
            for (int t = 0; t < count; ++t)
              for (int r = 0; r < s.rows; ++r)
                ASSERT_EQ(ys[static_cast<size_t>(t) * ldy + r], y[static_cast<size_t>(t0 + t) * ldy + r])
                    << isa << " t0=" << t0 << " count=" << count << " t=" << t << " r=" << r;
          }
          if (first.empty()) {
            first = y;
          } else {
            ASSERT_EQ(y, first) << isa << " differs from " << isas[0];
          }
        }
      }
    }
  }
}

// In panels of 16 rows (AVX-512 and AMX tables), every batch size runs the panel
// arithmetic: a row's bits depend neither on the batch nor on the row range, and
// equal those of the file layout's weight-panel kernel (8 or more rows).
TEST(MatrixTest, PanelRowsIndependentOfTheBatchAndEqualToRowPanels) {
  IsaGuard guard;
  const std::vector<std::string> isas = VnniIsas();
  if (isas.empty()) GTEST_SKIP() << "no AVX-512 VNNI on this CPU";
  for (int bits : {2, 3, 4}) {
    for (int group : {64, 0, 128}) {
      for (const Shape& s : {Shape{40, 300}, Shape{17, 2270}, Shape{33, 129}, Shape{64, 768}}) {
        SCOPED_TRACE(::testing::Message() << "b" << bits << " g" << group << " " << s.rows << "x" << s.cols);
        std::mt19937 rng(bits * 100 + group + s.cols);
        const auto w = RandomVec(static_cast<size_t>(s.rows) * s.cols, &rng);
        const QuantizedWeights q = QuantizeRtn(w.data(), s.rows, s.cols, {bits, group});
        auto panels = QuantMatrix::Create(q, QuantLayout::kPanels);
        auto rows = QuantMatrix::Create(q, QuantLayout::kRows);
        ASSERT_TRUE(panels.ok() && rows.ok());
        ASSERT_TRUE((*panels)->panels());
        ASSERT_FALSE((*rows)->panels());
        const int n = 27, ldx = s.cols, ldy = s.rows;
        const auto x = RandomVec(static_cast<size_t>(n) * ldx, &rng);
        for (const std::string& isa : isas) {
          ASSERT_TRUE(cpu::SetActiveIsa(isa));
          MatMulScratch scratch;
          std::vector<float> y(static_cast<size_t>(n) * ldy), yr(y.size());
          MatMul(**panels, x.data(), n, ldx, y.data(), ldy, nullptr, &scratch);
          MatMul(**rows, x.data(), n, ldx, yr.data(), ldy, nullptr, &scratch);
          if (isa == "avx512") {
            ASSERT_EQ(y, yr) << "panels differ from the file layout's weight panels";
          }
          for (const auto& [t0, count] : {std::pair{0, 1}, std::pair{5, 1}, std::pair{3, 2}, std::pair{7, 5},
                                          std::pair{9, 12}, std::pair{13, 13}}) {
            std::vector<float> ys(static_cast<size_t>(count) * ldy, -7.f);
            QuantizedActivations qa;
            qa.Quantize(x.data() + static_cast<size_t>(t0) * ldx, count, s.cols, ldx);
            MatMulInput in;
            in.x = x.data() + static_cast<size_t>(t0) * ldx;
            in.n = count;
            in.ldx = ldx;
            in.qx = &qa;
            // Two ranges that split a panel.
            const int mid = std::min(s.rows, 7);
            (*panels)->MatMulRows(in, ys.data(), ldy, 0, mid);
            (*panels)->MatMulRows(in, ys.data(), ldy, mid, s.rows);
            for (int t = 0; t < count; ++t)
              for (int r = 0; r < s.rows; ++r)
                ASSERT_EQ(ys[static_cast<size_t>(t) * ldy + r], y[static_cast<size_t>(t0 + t) * ldy + r])
                    << isa << " t0=" << t0 << " count=" << count << " t=" << t << " r=" << r;
          }
        }
      }
    }
  }
}

// The panel layout keeps exactly what the file layout keeps.
TEST(MatrixTest, PanelLayoutRoundTrips) {
  for (int bits : {2, 3, 4}) {
    for (int group : {64, 0, 128, 256}) {
      for (const Shape& s : kShapes) {
        SCOPED_TRACE(::testing::Message() << "b" << bits << " g" << group << " " << s.rows << "x" << s.cols);
        std::mt19937 rng(bits + group + s.rows * 31 + s.cols);
        const auto w = RandomVec(static_cast<size_t>(s.rows) * s.cols, &rng);
        const QuantizedWeights q = QuantizeRtn(w.data(), s.rows, s.cols, {bits, group});
        auto panels = QuantMatrix::Create(q, QuantLayout::kPanels);
        auto rows = QuantMatrix::Create(q, QuantLayout::kRows);
        ASSERT_TRUE(panels.ok() && rows.ok());
        ASSERT_TRUE((*panels)->panels());
        const PackedQuant a = (*panels)->packed(), b = (*rows)->packed();
        ASSERT_TRUE(std::equal(a.packed.begin(), a.packed.end(), b.packed.begin(), b.packed.end()));
        ASSERT_EQ(a.scale_f16, b.scale_f16);
        ASSERT_EQ(a.min_f16, b.min_f16);
        const QuantizedWeights ua = (*panels)->Unpack(), ub = (*rows)->Unpack();
        ASSERT_EQ(ua.codes, q.codes);
        ASSERT_EQ(ua.codes, ub.codes);
        ASSERT_EQ(ua.scale, ub.scale);
        ASSERT_EQ(ua.min, ub.min);
        ASSERT_EQ((*panels)->Dequantize(), (*rows)->Dequantize());
        // Back from the file layout into panels: the same matrix again.
        auto again = QuantMatrix::FromPacked(a, QuantLayout::kPanels);
        ASSERT_TRUE(again.ok()) << again.status();
        ASSERT_EQ((*again)->Dequantize(), (*rows)->Dequantize());
      }
    }
  }
}

// Large matrices are converted on several threads (ranges of panels).
TEST(MatrixTest, PanelLayoutOfALargeMatrixRoundTrips) {
  const int rows = 4100, cols = 1030;  // 4.2M codes; a partial last panel, an odd block count
  std::mt19937 rng(5);
  const auto w = RandomVec(static_cast<size_t>(rows) * cols, &rng);
  const QuantizedWeights q = QuantizeRtn(w.data(), rows, cols, {3, 64});
  auto panels = QuantMatrix::Create(q, QuantLayout::kPanels);
  auto rows_m = QuantMatrix::Create(q, QuantLayout::kRows);
  ASSERT_TRUE(panels.ok() && rows_m.ok());
  const PackedQuant a = (*panels)->packed(), b = (*rows_m)->packed();
  ASSERT_TRUE(std::equal(a.packed.begin(), a.packed.end(), b.packed.begin(), b.packed.end()));
  ASSERT_EQ(a.scale_f16, b.scale_f16);
  ASSERT_EQ(a.min_f16, b.min_f16);
  std::vector<uint8_t> ca(cols), cb(cols);
  for (int r : {0, 15, 16, 2047, 4095, 4096, 4099}) {
    (*panels)->RowCodes(r, ca.data());
    (*rows_m)->RowCodes(r, cb.data());
    ASSERT_EQ(ca, cb) << r;
  }
}

TEST(MatrixTest, AccumulateTransposedAllFormats) {
  IsaGuard guard;
  for (const std::string& isa : Isas()) {
    ASSERT_TRUE(cpu::SetActiveIsa(isa));
    for (const Case& c : AllCases()) {
      for (const Shape& s : kShapes) {
        SCOPED_TRACE(isa + " " + c.Name() + " " + std::to_string(s.rows) + "x" + std::to_string(s.cols));
        std::mt19937 rng(s.rows * 7 + s.cols);
        auto m = Build(c, s.rows, s.cols, &rng);
        const std::vector<float> wd = m->Dequantize();
        // Quantized matrices on ISAs with the int8 B side: v_j = u_j * scale_jg is
        // rounded to int8 steps of e = max_j |v_j| / 127 per row and group, which
        // adds up to e / 2 * code_jc per term.
        const auto* qm = dynamic_cast<const QuantMatrix*>(m.get());
        const bool int8_b = qm != nullptr && cpu::Kernels().quant_acc_t_i8 != nullptr;
        QuantizedWeights qw;
        if (int8_b) qw = qm->Unpack();
        for (int n : {1, 2, 3, 5, 17}) {
          for (int rank : {s.rows, std::max(1, s.rows / 2)}) {
            const int c0s[] = {0, std::min(s.cols - 1, 5), 0};
            const int c1s[] = {s.cols, s.cols, std::max(1, s.cols - 3)};
            for (int ci = 0; ci < 3; ++ci) {
              const int c0 = c0s[ci], c1 = c1s[ci];
              const int ldu = s.rows + 2, ldy = s.cols + 7;
              const auto u = RandomVec(static_cast<size_t>(n) * ldu, &rng);
              std::vector<float> y = RandomVec(static_cast<size_t>(n) * ldy, &rng);
              const std::vector<float> y0 = y;
              m->AccumulateTransposed(u.data(), ldu, n, rank, y.data(), ldy, c0, c1);
              for (int t = 0; t < n; ++t) {
                for (int col = 0; col < ldy; ++col) {
                  const size_t i = static_cast<size_t>(t) * ldy + col;
                  if (col < c0 || col >= c1) {
                    ASSERT_EQ(y[i], y0[i]) << "t=" << t << " col=" << col;
                    continue;
                  }
                  double ref = y0[i], absprod = std::fabs(y0[i]);
                  for (int j = 0; j < rank; ++j) {
                    const double p = double(u[static_cast<size_t>(t) * ldu + j]) * wd[static_cast<size_t>(j) * s.cols + col];
                    ref += p;
                    absprod += std::fabs(p);
                  }
                  double qerr = 0;
                  if (int8_b) {
                    const int g = qw.groups() == 1 ? 0 : col / qw.group_size_effective();
                    double vmax = 0, codes = 0;
                    for (int j = 0; j < rank; ++j) {
                      const size_t jg = static_cast<size_t>(j) * qw.groups() + g;
                      const double uj = u[static_cast<size_t>(t) * ldu + j];
                      vmax = std::max(vmax, std::fabs(uj * qw.scale[jg]));
                      absprod += std::fabs(uj * qw.min[jg]) + std::fabs(uj * qw.scale[jg]) * qw.codes[static_cast<size_t>(j) * s.cols + col];
                      codes += qw.codes[static_cast<size_t>(j) * s.cols + col];
                    }
                    qerr = 1.001 * 0.5 * vmax / 127.0 * codes;
                  }
                  ASSERT_LE(std::fabs(y[i] - ref), 1e-5 * absprod + qerr + 1e-30)
                      << "n=" << n << " rank=" << rank << " c0=" << c0 << " c1=" << c1 << " t=" << t
                      << " col=" << col;
                }
              }
            }
          }
        }
      }
    }
  }
}

TEST(MatrixTest, QuantAccumulateTransposedInt8SharedAcrossThreads) {
  // The int8 B side builds its rank-interleaved copy once, on first use, from
  // whichever thread gets there first; every thread then gets the same bits.
  const bool ran = ForEachInt8BSide([&](const std::string&, int bits) {
    const int rows = 64, cols = 333;
    std::mt19937 rng(bits);
    auto m = Build({Kind::kQuant, bits, 64}, rows, cols, &rng);
    const auto* qm = dynamic_cast<const QuantMatrix*>(m.get());
    ASSERT_NE(qm, nullptr);
    EXPECT_EQ(qm->TransposedCopyBytes(), 0u);
    const int n = 3, ldu = rows, ldy = cols;
    const auto u = RandomVec(static_cast<size_t>(n) * ldu, &rng);
    std::vector<std::vector<float>> ys(4, std::vector<float>(static_cast<size_t>(n) * ldy, 0.f));
    std::vector<std::thread> ts;
    for (int i = 0; i < 4; ++i)
      ts.emplace_back([&, i] { m->AccumulateTransposed(u.data(), ldu, n, 48, ys[i].data(), ldy, 0, cols); });
    for (auto& t : ts) t.join();
    for (int i = 1; i < 4; ++i) ASSERT_EQ(ys[i], ys[0]) << "thread " << i;
    // The codes at the matrix's own width (64 ranks x 16 columns x bits / 8 bytes per
    // column block, 21 blocks), plus an F16 scale and min per group and rank.
    EXPECT_EQ(qm->TransposedCopyBytes(), static_cast<size_t>(21 * 64 * 16 * bits / 8) + 2 * 2 * 6 * 64);
  });
  if (!ran) GTEST_SKIP() << "no int8 B-side kernel on this CPU";
}

TEST(MatrixTest, QuantAccumulateTransposedRowsIndependentOfTheBatch) {
  // The int8 B side unpacks each unit once for up to 4 activation rows: a row's
  // result must not depend on how many rows come with it.
  const bool ran = ForEachInt8BSide([&](const std::string& isa, int bits) {
    const int rows = 64, cols = 333, n = 11, ldu = rows + 3, ldy = cols + 5;
    std::mt19937 rng(40 + bits);
    auto m = Build({Kind::kQuant, bits, 0}, rows, cols, &rng);
    const auto u = RandomVec(static_cast<size_t>(n) * ldu, &rng);
    for (int rank : {64, 40}) {
      std::vector<float> all(static_cast<size_t>(n) * ldy, 0.f);
      m->AccumulateTransposed(u.data(), ldu, n, rank, all.data(), ldy, 3, cols);
      for (int t = 0; t < n; ++t) {
        std::vector<float> one(static_cast<size_t>(ldy), 0.f);
        m->AccumulateTransposed(u.data() + static_cast<size_t>(t) * ldu, ldu, 1, rank, one.data(), ldy, 3, cols);
        for (int c = 0; c < ldy; ++c)
          ASSERT_EQ(one[c], all[static_cast<size_t>(t) * ldy + c]) << isa << " bits " << bits << " rank " << rank
                                                                      << " t " << t << " c " << c;
      }
    }
  });
  if (!ran) GTEST_SKIP() << "no int8 B-side kernel on this CPU";
}

TEST(MatrixTest, SharedLowRankRegionEqualsSeparatePasses) {
  // MatMulSharedLowRank (A products repeated per thread, B products on each
  // thread's rows) gives the bits of MatMulShared with the A rows plus
  // AccumulateTransposed afterwards, on every ISA, for dense and quantized factors.
  IsaGuard guard;
  for (const std::string& isa : Isas()) {
    ASSERT_TRUE(cpu::SetActiveIsa(isa));
    for (const Case& fc : {Case{Kind::kF16}, Case{Kind::kQuant, 4, 64}, Case{Kind::kQuant, 3, 32}}) {
      SCOPED_TRACE(isa + " factors " + fc.Name());
      std::mt19937 rng(7);
      const int in = 200, rank = 24;
      auto w1 = Build({Kind::kQuant, 4, 64}, 96, in, &rng);
      auto w2 = Build({Kind::kF32}, 40, in, &rng);
      auto a1 = Build(fc, rank, in, &rng), b1 = Build(fc, rank, 96, &rng);
      auto a2 = Build(fc, rank, in, &rng), b2 = Build(fc, rank, 40, &rng);
      for (int n : {1, 3}) {
        const auto x = RandomVec(static_cast<size_t>(n) * in, &rng);
        std::vector<float> y1(static_cast<size_t>(n) * 96), y2(static_cast<size_t>(n) * 40);
        std::vector<float> e1 = y1, e2 = y2, u1(static_cast<size_t>(n) * 20), u2(static_cast<size_t>(n) * 11);
        ThreadPool pool(2);
        MatMulScratch scratch;
        // Reference: base and A rows in one region, then the B products.
        MatMulShared({{w1.get(), e1.data(), 96}, {w2.get(), e2.data(), 40}, {a1.get(), u1.data(), 20, 20},
                      {a2.get(), u2.data(), 11, 11}},
                     x.data(), n, in, &pool, &scratch);
        b1->AccumulateTransposed(u1.data(), 20, n, 20, e1.data(), 96, 0, 96);
        b2->AccumulateTransposed(u2.data(), 11, n, 11, e2.data(), 40, 0, 40);
        for (int rep = 0; rep < 3; ++rep) {
          std::fill(y1.begin(), y1.end(), 0.f);
          std::fill(y2.begin(), y2.end(), 0.f);
          MatMulSharedLowRank({{w1.get(), y1.data(), 96}, {w2.get(), y2.data(), 40}},
                              {{a1.get(), b1.get(), 20}, {a2.get(), b2.get(), 11}}, x.data(), n, in, &pool,
                              &scratch);
          ASSERT_EQ(y1, e1) << "n " << n;
          ASSERT_EQ(y2, e2) << "n " << n;
        }
        // An output without a term is the plain product.
        std::fill(y1.begin(), y1.end(), 0.f);
        std::fill(y2.begin(), y2.end(), 0.f);
        MatMulSharedLowRank({{w1.get(), y1.data(), 96}, {w2.get(), y2.data(), 40}},
                            {LowRankTerm{}, {a2.get(), b2.get(), 11}}, x.data(), n, in, &pool, &scratch);
        std::vector<float> p1(static_cast<size_t>(n) * 96);
        MatMul(*w1, x.data(), n, in, p1.data(), 96, &pool, &scratch);
        ASSERT_EQ(y1, p1);
        ASSERT_EQ(y2, e2);
      }
    }
  }
}

TEST(MatrixTest, QuantDequantizeRowExactAndRoundTrip) {
  IsaGuard guard;
  std::mt19937 rng(5);
  for (const std::string& isa : Isas()) {
    ASSERT_TRUE(cpu::SetActiveIsa(isa));
    for (int bits : {2, 3, 4}) {
      for (int group : {32, 64, 128, 0}) {
        for (const Shape& s : kShapes) {
          SCOPED_TRACE(isa + " b" + std::to_string(bits) + " g" + std::to_string(group) + " " +
                       std::to_string(s.rows) + "x" + std::to_string(s.cols));
          // Arbitrary codes and scales (not from RTN).
          QuantizedWeights q;
          q.rows = s.rows;
          q.cols = s.cols;
          q.spec = {bits, group};
          std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
          q.codes.resize(static_cast<size_t>(s.rows) * s.cols);
          for (auto& v : q.codes) v = static_cast<uint8_t>(code(rng));
          q.scale = RandomVec(static_cast<size_t>(s.rows) * q.groups(), &rng, 0.1f);
          q.min = RandomVec(static_cast<size_t>(s.rows) * q.groups(), &rng, 0.5f);
          auto m = QuantMatrix::Create(q);
          ASSERT_TRUE(m.ok()) << m.status();
          const int gs = q.group_size_effective();
          std::vector<float> row(s.cols);
          for (int r = 0; r < s.rows; ++r) {
            (*m)->DequantizeRow(r, row.data());
            for (int k = 0; k < s.cols; ++k) {
              const size_t gi = static_cast<size_t>(r) * q.groups() + k / gs;
              const float sc = F16ToF32(F32ToF16(q.scale[gi]));
              const float mn = F16ToF32(F32ToF16(q.min[gi]));
              const float expect = sc * static_cast<float>(q.codes[static_cast<size_t>(r) * s.cols + k]) + mn;
              ASSERT_EQ(row[k], expect) << "r=" << r << " k=" << k;
            }
          }
          // Unpack gives back the codes, and the packed bytes rebuild the same matrix.
          const QuantizedWeights back = (*m)->Unpack();
          ASSERT_EQ(back.codes, q.codes);
          for (size_t i = 0; i < q.scale.size(); ++i) {
            ASSERT_EQ(back.scale[i], F16ToF32(F32ToF16(q.scale[i])));
            ASSERT_EQ(back.min[i], F16ToF32(F32ToF16(q.min[i])));
          }
          auto m2 = QuantMatrix::FromPacked((*m)->packed());
          ASSERT_TRUE(m2.ok()) << m2.status();
          ASSERT_EQ((*m2)->Dequantize(), (*m)->Dequantize());
          // Panels store whole panels of 16 rows (the last padded).
          const size_t stored_rows = (*m)->panels() ? static_cast<size_t>(s.rows + 15) / 16 * 16 : s.rows;
          ASSERT_EQ((*m)->StorageBytes(), stored_rows * ((s.cols + 31) / 32) * QuantBlockBytes(bits) +
                                              4 * stored_rows * q.groups());
        }
      }
    }
  }
}

TEST(MatrixTest, PackedBlockLayout) {
  // The documented version-3 layouts (docs/formats.md), byte for byte.
  uint8_t codes[32], out[24], back[32];
  for (int i = 0; i < 32; ++i) codes[i] = static_cast<uint8_t>(i % 16);
  PackQuantBlock(4, codes, out, 0, 2);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(out[i], (codes[i] & 15) | (codes[i + 16] << 4));
  for (int i = 0; i < 32; ++i) codes[i] = static_cast<uint8_t>((i * 7) % 4);
  PackQuantBlock(2, codes, out, 1, 2);
  for (int i = 0; i < 8; ++i)
    EXPECT_EQ(out[i], codes[i] | codes[i + 8] << 2 | codes[i + 16] << 4 | codes[i + 24] << 6);
  // 3-bit pair (blocks 2j, 2j + 1): [W0 8][W1 8][H 8]; pair code k (the odd
  // block's codes are 32..63) has its low bits in byte k % 8 of word (k / 8) % 2
  // at bit 2 * (k / 16), its high bit at bit k of H.
  uint8_t pair_codes[64];
  for (int k = 0; k < 64; ++k) pair_codes[k] = static_cast<uint8_t>((k * 5 + 3) % 8);
  for (int j : {0, 3}) {
    SCOPED_TRACE(j);
    uint8_t pair[24];
    std::memset(pair, 0xA5, sizeof(pair));  // packing must not depend on what was there
    PackQuantBlock(3, pair_codes + 32, pair + 12, 2 * j + 1, 2 * j + 2);  // either order
    PackQuantBlock(3, pair_codes, pair, 2 * j, 2 * j + 2);
    for (int w = 0; w < 2; ++w) {
      for (int i = 0; i < 8; ++i) {
        int want = 0;
        for (int q = 0; q < 4; ++q) want |= (pair_codes[8 * (2 * q + w) + i] & 3) << (2 * q);
        EXPECT_EQ(pair[8 * w + i], want) << w << " " << i;
      }
    }
    uint64_t h = 0;
    std::memcpy(&h, pair + 16, 8);
    for (int k = 0; k < 64; ++k) EXPECT_EQ((h >> k) & 1, (pair_codes[k] >> 2) & 1u) << k;
    for (int half = 0; half < 2; ++half) {
      UnpackQuantBlock(3, pair + 12 * half, back, 2 * j + half, 2 * j + 2);
      EXPECT_EQ(std::memcmp(pair_codes + 32 * half, back, 32), 0) << half;
    }
  }
  // A row's last block, when the count is odd, is alone: [low plane 8][high word 4].
  for (int i = 0; i < 32; ++i) codes[i] = static_cast<uint8_t>((i * 5 + 3) % 8);
  PackQuantBlock(3, codes, out, 4, 5);
  for (int i = 0; i < 8; ++i)
    EXPECT_EQ(out[i], (codes[i] & 3) | (codes[i + 8] & 3) << 2 | (codes[i + 16] & 3) << 4 | (codes[i + 24] & 3) << 6);
  const uint32_t h = out[8] | out[9] << 8 | out[10] << 16 | static_cast<uint32_t>(out[11]) << 24;
  for (int k = 0; k < 32; ++k) EXPECT_EQ((h >> k) & 1, (codes[k] >> 2) & 1u) << k;
  UnpackQuantBlock(3, out, back, 4, 5);
  EXPECT_EQ(std::memcmp(codes, back, 32), 0);
  for (int bits : {2, 4}) {
    for (int block : {0, 1}) {
      for (int i = 0; i < 32; ++i) codes[i] = static_cast<uint8_t>((i * 11 + bits) % (1 << bits));
      PackQuantBlock(bits, codes, out, block, 2);
      UnpackQuantBlock(bits, out, back, block, 2);
      EXPECT_EQ(std::memcmp(codes, back, 32), 0) << bits << " " << block;
    }
  }
}

// Packed storage read from a file of an earlier format version: 3-bit blocks were
// [low plane][high word] with code k's high bit at bit 8 * (k % 4) + k / 4 in
// version 1; even blocks [low plane][high word], odd ones [high word][low plane],
// bit k = code k's, in version 2. UpgradePacked rewrites them so that the matrix
// has the same codes; other widths never changed. The old layouts are written by
// testing::RewriteQ3RowsAsVersion from their definitions, not with engine code.
TEST(MatrixTest, UpgradesEarlierThreeBitLayouts) {
  std::mt19937 rng(5);
  for (int version : {1, 2}) {
    for (int bits : {2, 3, 4}) {
      for (int cols : {100, 140}) {  // 4 and 5 blocks; the last block is partial
        SCOPED_TRACE(::testing::Message() << "v" << version << " bits " << bits << " cols " << cols);
        const int rows = 3, blocks = (cols + 31) / 32;
        QuantizedWeights w;
        w.rows = rows;
        w.cols = cols;
        w.spec.bits = bits;
        w.spec.group_size = 64;
        w.codes.resize(static_cast<size_t>(rows) * cols);
        for (auto& c : w.codes) c = static_cast<uint8_t>(rng() % (1u << bits));
        const int groups = (blocks + 1) / 2;
        w.scale.assign(static_cast<size_t>(rows) * groups, 0.5f);
        w.min.assign(static_cast<size_t>(rows) * groups, -1.f);
        auto m = QuantMatrix::Create(w);
        ASSERT_TRUE(m.ok()) << m.status();
        PackedQuant old = (*m)->packed();
        if (bits == 3) {
          testing::RewriteQ3RowsAsVersion(version, reinterpret_cast<char*>(old.packed.data()), rows,
                                          static_cast<size_t>(blocks) * QuantBlockBytes(bits));
          EXPECT_NE(old.packed, (*m)->packed().packed);
        }
        UpgradePacked(&old, version);
        EXPECT_EQ(old.packed.size(), (*m)->packed().packed.size());
        EXPECT_TRUE(std::equal(old.packed.begin(), old.packed.end(), (*m)->packed().packed.begin()));
        auto up = QuantMatrix::FromPacked(std::move(old));
        ASSERT_TRUE(up.ok()) << up.status();
        std::vector<uint8_t> a(cols), b(cols);
        for (int r = 0; r < rows; ++r) {
          (*m)->RowCodes(r, a.data());
          (*up)->RowCodes(r, b.data());
          EXPECT_EQ(a, b);
          EXPECT_TRUE(std::equal(a.begin(), a.end(), w.codes.begin() + static_cast<ptrdiff_t>(r) * cols));
        }
      }
    }
  }
}

TEST(MatrixTest, QuantizeRtnErrorBound) {
  std::mt19937 rng(11);
  for (int bits : {2, 3, 4}) {
    for (int group : {32, 64, 128, 0}) {
      for (const Shape& s : kShapes) {
        auto w = RandomVec(static_cast<size_t>(s.rows) * s.cols, &rng);
        // A constant row and a zero row.
        for (int k = 0; k < s.cols; ++k) w[k] = 0.3f;
        if (s.rows > 1) {
          for (int k = 0; k < s.cols; ++k) w[static_cast<size_t>(s.cols) + k] = 0.f;
        }
        const QuantizedWeights q = QuantizeRtn(w.data(), s.rows, s.cols, {bits, group});
        auto m = MakeQuantizedMatrix(q);
        ASSERT_TRUE(m.ok()) << m.status();
        const auto wd = (*m)->Dequantize();
        const int gs = q.group_size_effective();
        for (int r = 0; r < s.rows; ++r) {
          for (int k = 0; k < s.cols; ++k) {
            const size_t gi = static_cast<size_t>(r) * q.groups() + k / gs;
            const size_t i = static_cast<size_t>(r) * s.cols + k;
            ASSERT_LT(q.codes[i], 1 << bits);
            // Scales and mins are already F16 values.
            ASSERT_EQ(q.scale[gi], F16ToF32(F32ToF16(q.scale[gi])));
            ASSERT_EQ(q.min[gi], F16ToF32(F32ToF16(q.min[gi])));
            const double bound = q.scale[gi] / 2.0 * (1 + 1e-6) +
                                 1e-6 * (std::fabs(q.min[gi]) + q.scale[gi] * ((1 << bits) - 1)) + 1e-12;
            ASSERT_LE(std::fabs(double(wd[i]) - w[i]), bound)
                << "b" << bits << " g" << group << " r=" << r << " k=" << k;
          }
        }
        // Constant and zero rows are (almost) exact.
        for (int k = 0; k < s.cols; ++k) ASSERT_NEAR(wd[k], 0.3f, 1e-4f);
        if (s.rows > 1) {
          for (int k = 0; k < s.cols; ++k) ASSERT_EQ(wd[static_cast<size_t>(s.cols) + k], 0.f);
        }
      }
    }
  }
}

TEST(MatrixTest, MakeQuantizedMatrixRejectsBadInput) {
  std::mt19937 rng(3);
  const auto w = RandomVec(4 * 64, &rng);
  const QuantizedWeights good = QuantizeRtn(w.data(), 4, 64, {4, 32});
  ASSERT_TRUE(MakeQuantizedMatrix(good).ok());
  auto expect_bad = [&](QuantizedWeights q, const char* what) {
    auto m = MakeQuantizedMatrix(q);
    EXPECT_FALSE(m.ok()) << what;
    if (!m.ok()) {
      EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument) << what;
    }
  };
  {
    auto q = good;
    q.spec.bits = 5;
    expect_bad(q, "bits 5");
    q.spec.bits = 1;
    expect_bad(q, "bits 1");
    q.spec.bits = 8;
    expect_bad(q, "bits 8");
  }
  {
    auto q = good;
    q.spec.group_size = 48;
    expect_bad(q, "group 48");
    q.spec.group_size = -32;
    expect_bad(q, "group -32");
  }
  {
    auto q = good;
    q.codes.pop_back();
    expect_bad(q, "short codes");
  }
  {
    auto q = good;
    q.codes[17] = 16;
    expect_bad(q, "code 16 in 4 bits");
    q = QuantizeRtn(w.data(), 4, 64, {3, 32});
    q.codes[3] = 8;
    expect_bad(q, "code 8 in 3 bits");
    q = QuantizeRtn(w.data(), 4, 64, {2, 32});
    q.codes[63] = 4;
    expect_bad(q, "code 4 in 2 bits");
  }
  {
    auto q = good;
    q.scale.pop_back();
    expect_bad(q, "short scales");
    q = good;
    q.min.push_back(0.f);
    expect_bad(q, "long mins");
    q = good;
    q.scale[2] = NAN;
    expect_bad(q, "nan scale");
    q = good;
    q.min[1] = 1e6f;
    expect_bad(q, "min overflows f16");
  }
  {
    auto q = good;
    q.rows = 0;
    q.codes.clear();
    q.scale.clear();
    q.min.clear();
    expect_bad(q, "zero rows");
  }
  {
    auto q = good;  // groups() follows the group size: 64 cols, g32 -> 2 groups, g0 -> 1
    q.spec.group_size = 0;
    expect_bad(q, "group count mismatch");
  }
  PackedQuant p = static_cast<const QuantMatrix&>(**MakeQuantizedMatrix(good)).packed();
  p.packed.pop_back();
  EXPECT_FALSE(QuantMatrix::FromPacked(p).ok());
}

TEST(MatrixTest, Sparse24Validation) {
  // 3 non-zeros in one aligned group of 4 fails; 2 in each passes.
  std::vector<float> w = {1, 0, 2, 0, /**/ 0, 3, 4, 0, /**/ 5};
  EXPECT_TRUE(MakeSparse24Matrix(1, 9, w.data()).ok());
  EXPECT_TRUE(MakeSparse24QuantMatrix(1, 9, w.data(), {4, 32}).ok());
  w[3] = 1;
  auto bad = MakeSparse24Matrix(1, 9, w.data());
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(MakeSparse24QuantMatrix(1, 9, w.data(), {4, 32}).ok());
  // Unaligned groups do not count: columns 2..5 have 3 non-zeros but span two groups.
  std::vector<float> w2 = {0, 0, 1, 1, 1, 0, 0, 0};
  EXPECT_TRUE(MakeSparse24Matrix(1, 8, w2.data()).ok());
  // Tail group (cols not a multiple of 4): 3 non-zeros in the partial group fail.
  std::vector<float> w3 = {1, 1, 0, 0, 1, 1, 1};
  EXPECT_FALSE(MakeSparse24Matrix(1, 7, w3.data()).ok());
  w3[6] = 0;
  EXPECT_TRUE(MakeSparse24Matrix(1, 7, w3.data()).ok());
  // Bad quant spec.
  EXPECT_FALSE(MakeSparse24QuantMatrix(1, 8, w2.data(), {5, 32}).ok());
  EXPECT_FALSE(MakeSparse24QuantMatrix(1, 8, w2.data(), {4, 16}).ok());

  // Round trip through the packed form; corrupt metadata is rejected.
  std::mt19937 rng(9);
  const auto ws = RandomSparse24(5, 130, &rng);
  auto sm = Sparse24Matrix::Create(5, 130, ws.data());
  ASSERT_TRUE(sm.ok());
  EXPECT_EQ((*sm)->Dequantize(), [&] {
    std::vector<float> v(ws);
    for (auto& x : v) x = F16ToF32(F32ToF16(x));
    return v;
  }());
  const std::vector<uint16_t> values((*sm)->values_f16().begin(), (*sm)->values_f16().end());
  auto sm2 = Sparse24Matrix::FromPacked(5, 130, values, (*sm)->meta());
  ASSERT_TRUE(sm2.ok());
  EXPECT_EQ((*sm2)->Dequantize(), (*sm)->Dequantize());
  std::vector<uint8_t> meta = (*sm)->meta();
  meta[0] = 0;  // slots 0 and 1 (same group) both at position 0
  meta[1] = 0;
  EXPECT_FALSE(Sparse24Matrix::FromPacked(5, 130, values, meta).ok());
  meta.pop_back();
  EXPECT_FALSE(Sparse24Matrix::FromPacked(5, 130, values, meta).ok());

  auto sq = Sparse24QuantMatrix::Create(5, 130, ws.data(), {3, 64});
  ASSERT_TRUE(sq.ok());
  auto sq2 = Sparse24QuantMatrix::FromPacked(130, (*sq)->kept().packed(), (*sq)->meta());
  ASSERT_TRUE(sq2.ok()) << sq2.status();
  EXPECT_EQ((*sq2)->Dequantize(), (*sq)->Dequantize());
  // Zeros stay zeros in the dequantized sparse-quantized matrix outside kept slots,
  // kept values are within scale/2.
  const auto d = (*sq)->Dequantize();
  for (size_t i = 0; i < ws.size(); ++i) {
    if (ws[i] != 0.f) {
      EXPECT_NEAR(d[i], ws[i], 0.5f) << i;
    }
  }
}

TEST(MatrixTest, QuantizeActivationsSameOnAllIsas) {
  IsaGuard guard;
  std::mt19937 rng(1);
  for (int cols : {1, 31, 32, 33, 172, 768, 1000}) {
    const int n = 3, ldx = cols + 5;
    auto x = RandomVec(static_cast<size_t>(n) * ldx, &rng);
    x[0] = 0.f;
    std::vector<QuantizedActivations> qs;
    for (const std::string& isa : Isas()) {
      ASSERT_TRUE(cpu::SetActiveIsa(isa));
      QuantizedActivations q;
      q.Quantize(x.data(), n, cols, ldx);
      ASSERT_EQ(q.padded_cols, (cols + 31) / 32 * 32);
      for (int t = 0; t < n; ++t) {
        for (int k = 0; k < q.padded_cols; ++k) {
          const int8_t v = q.q[static_cast<size_t>(t) * q.padded_cols + k];
          if (k >= cols) {
            ASSERT_EQ(v, 0);
            continue;
          }
          const float d = q.scale[static_cast<size_t>(t) * (q.padded_cols / 32) + k / 32];
          ASSERT_LE(std::fabs(d * v - x[static_cast<size_t>(t) * ldx + k]), d / 2 * 1.0001f + 1e-30f);
          // One scale per aligned run of kQSpan blocks: amax(run) / 127.
          const int s0 = k / (32 * kQSpan) * (32 * kQSpan);
          float amax = 0.f;
          for (int i = s0; i < std::min(cols, s0 + 32 * kQSpan); ++i)
            amax = std::max(amax, std::fabs(x[static_cast<size_t>(t) * ldx + i]));
          ASSERT_EQ(d, amax / 127.f);
        }
      }
      qs.push_back(std::move(q));
    }
    for (size_t i = 1; i < qs.size(); ++i) {
      EXPECT_EQ(qs[i].q, qs[0].q);
      EXPECT_EQ(qs[i].scale, qs[0].scale);
      EXPECT_EQ(qs[i].sum, qs[0].sum);
    }
  }
}

TEST(MatrixTest, MatMulSharedThreadsExact) {
  IsaGuard guard;
  for (const std::string& isa : Isas()) {
    ASSERT_TRUE(cpu::SetActiveIsa(isa));
    std::mt19937 rng(21);
    const int cols = 172;
    std::vector<std::unique_ptr<Matrix>> ms;
    for (const Case& c : AllCases()) ms.push_back(Build(c, 3 + static_cast<int>(ms.size()) * 7, cols, &rng));
    ThreadPool pool(2);
    for (int n : {1, 4, 7}) {
      // Group by input kind (MatMulShared quantizes once for all).
      const auto x = RandomVec(static_cast<size_t>(n) * cols, &rng);
      std::vector<std::vector<float>> y1(ms.size()), y2(ms.size());
      std::vector<MatMulOutput> o1, o2;
      for (size_t i = 0; i < ms.size(); ++i) {
        y1[i].assign(static_cast<size_t>(n) * ms[i]->rows(), 0.f);
        y2[i].assign(static_cast<size_t>(n) * ms[i]->rows(), 1.f);
        o1.push_back({ms[i].get(), y1[i].data(), ms[i]->rows()});
        o2.push_back({ms[i].get(), y2[i].data(), ms[i]->rows()});
      }
      MatMulScratch s1, s2;
      MatMulShared(o1, x.data(), n, cols, nullptr, &s1);
      MatMulShared(o2, x.data(), n, cols, &pool, &s2);
      for (size_t i = 0; i < ms.size(); ++i) ASSERT_EQ(y1[i], y2[i]) << isa << " " << ms[i]->Describe();
    }
  }
}

TEST(MatrixTest, DescribeAndStorage) {
  std::mt19937 rng(2);
  const auto w = RandomVec(16 * 64, &rng);
  EXPECT_EQ(MakeDenseMatrixFromF32(DType::kF16, 16, 64, w.data())->Describe(), "f16");
  EXPECT_EQ(MakeDenseMatrixFromF32(DType::kF16, 16, 64, w.data())->StorageBytes(), 16u * 64 * 2);
  auto q = MakeQuantizedMatrix(QuantizeRtn(w.data(), 16, 64, {3, 64}));
  ASSERT_TRUE(q.ok());
  EXPECT_EQ((*q)->Describe(), "q3 g64");
  EXPECT_EQ((*q)->format(), MatrixFormat::kQuant);
  EXPECT_TRUE((*q)->WantsQuantizedInput());
  EXPECT_EQ((*q)->StorageBytes(), 16u * 2 * 12 + 16u * 4);
  const std::string isa = KernelIsaName();
  EXPECT_TRUE(isa == "generic" || isa == "avx2" || isa == "avx512" || isa == "amx") << isa;
}

}  // namespace
}  // namespace eora
