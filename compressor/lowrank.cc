// Low-rank compensation: SVD, Act-S, EoRA, SLiM low-rank; quantized factors
// (docs/compressor.md).
#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "compressor/algorithms.h"
#include "compressor/internal.h"
#include "compressor/linalg.h"
#include "engine/lowrank.h"

namespace eora::compress {
namespace {

absl::Status CheckFit(const char* what, const float* dw, int m, int n, int r) {
  if (absl::Status st = internal::ValidateShape(what, m, n); !st.ok()) return st;
  if (r < 1 || r > std::min(m, n))
    return absl::InvalidArgumentError(absl::StrCat(what, ": rank ", r, " must be in [1, min(m, n) = ",
                                                   std::min(m, n), "] for a ", m, "x", n, " layer"));
  return internal::ValidateFinite(what, dw, static_cast<size_t>(m) * n);
}

// SVD of M [m][n] (the weighted error) truncated to rank r. B = U_r diag(b_pow(s)),
// A = diag(a_pow(s)) V_r^T with col_scale[j] multiplying column j of A (nullptr: 1).
// For split = true the singular values are split evenly (sqrt on each side);
// otherwise B = U_r and A = Σ_r V_r^T.
absl::StatusOr<LowRank> FromSvd(const std::vector<double>& mat, int m, int n, int r, bool split,
                                const std::vector<double>* col_scale) {
  std::vector<double> u, s, vt;
  if (absl::Status st = linalg::TopSvd(m, n, mat.data(), r, &u, &s, &vt); !st.ok()) return st;
  const int k = r;  // u is [m][r]
  LowRank lr;
  lr.m = m;
  lr.n = n;
  lr.r = r;
  lr.b.resize(static_cast<size_t>(m) * r);
  lr.a.resize(static_cast<size_t>(r) * n);
  lr.singular_values.assign(s.begin(), s.begin() + r);
  for (int j = 0; j < r; ++j) {
    const double sv = std::max(0.0, s[j]);
    const double bs = split ? std::sqrt(sv) : 1.0;
    const double as = split ? std::sqrt(sv) : sv;
    for (int i = 0; i < m; ++i)
      lr.b[static_cast<size_t>(i) * r + j] = static_cast<float>(u[static_cast<size_t>(i) * k + j] * bs);
    for (int c = 0; c < n; ++c) {
      const double cs = col_scale != nullptr ? (*col_scale)[c] : 1.0;
      lr.a[static_cast<size_t>(j) * n + c] = static_cast<float>(vt[static_cast<size_t>(j) * n + c] * as * cs);
    }
  }
  return lr;
}

// mat[:, j] *= d[j]
std::vector<double> ScaleColumns(const float* dw, int m, int n, const std::vector<double>& d) {
  std::vector<double> out(static_cast<size_t>(m) * n);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < n; ++j)
      out[static_cast<size_t>(i) * n + j] = static_cast<double>(dw[static_cast<size_t>(i) * n + j]) * d[j];
  return out;
}

}  // namespace

absl::StatusOr<LowRank> FitSvd(const float* dw, int m, int n, int r) {
  if (absl::Status st = CheckFit("FitSvd", dw, m, n, r); !st.ok()) return st;
  return FromSvd(internal::ToDouble(dw, static_cast<size_t>(m) * n), m, n, r, true, nullptr);
}

absl::StatusOr<LowRank> FitActS(const float* dw, int m, int n, const CalibStats& s, int r) {
  if (absl::Status st = CheckFit("FitActS", dw, m, n, r); !st.ok()) return st;
  if (absl::Status st = internal::ValidateStats("FitActS", s, n); !st.ok()) return st;
  // D = diag(mean |x_j|); A = Σ^1/2 V^T D^-1 with D^-1 := 0 on channels that never fire
  // (their weights never meet a non-zero input, so any value is exact).
  std::vector<double> d(n), dinv(n);
  for (int j = 0; j < n; ++j) {
    d[j] = s.sum_abs[j] / static_cast<double>(s.count);
    dinv[j] = d[j] > 0 ? 1.0 / d[j] : 0.0;
  }
  return FromSvd(ScaleColumns(dw, m, n, d), m, n, r, true, &dinv);
}

absl::StatusOr<LowRank> FitSlimLowRank(const float* dw, int m, int n, const CalibStats& s, int r) {
  if (absl::Status st = CheckFit("FitSlimLowRank", dw, m, n, r); !st.ok()) return st;
  if (absl::Status st = internal::ValidateStats("FitSlimLowRank", s, n); !st.ok()) return st;
  // D = diag(sqrt(mean x_j^2)) shifted by 1e-6 * max so that no entry is zero
  // (all zero -> identity: plain SVD); B = U_r, A = Σ_r V_r^T D^-1.
  std::vector<double> d(n), dinv(n);
  double mx = 0;
  for (int j = 0; j < n; ++j) {
    d[j] = std::sqrt(std::max(0.0, s.sum_sq[j]) / static_cast<double>(s.count));
    mx = std::max(mx, d[j]);
  }
  const double shift = mx > 0 ? 1e-6 * mx : 1.0;
  for (int j = 0; j < n; ++j) {
    d[j] += shift;
    dinv[j] = 1.0 / d[j];
  }
  return FromSvd(ScaleColumns(dw, m, n, d), m, n, r, false, &dinv);
}

absl::StatusOr<EoraBasis> ComputeEoraBasis(const CalibStats& s) {
  if (s.n < 1) return absl::InvalidArgumentError("ComputeEoraBasis: empty statistics");
  if (absl::Status st = internal::ValidateStats("ComputeEoraBasis", s, s.n); !st.ok()) return st;
  const int n = s.n;
  // 1. S / N = Q Λ Q^T in fp64 (the 1/N only scales the singular values:
  //    Σ_{i>r} σ_i^2 is then the mean squared output error per token).
  std::vector<double> sm(s.xtx);
  const double inv_n = 1.0 / static_cast<double>(s.count);
  for (double& v : sm) v *= inv_n;
  EoraBasis b;
  b.n = n;
  std::vector<double> lam;
  if (absl::Status st = linalg::SymEig(n, sm.data(), &lam, &b.q); !st.ok())
    return absl::Status(st.code(), absl::StrCat("EoRA: eigendecomposition of the input second moment failed: ",
                                                st.message()));
  for (int i = 0; i < n; ++i)
    if (!std::isfinite(lam[i]))
      return absl::InternalError(absl::StrCat("EoRA: non-finite eigenvalue ", i, " of the input second moment"));
  // 2. Relative cutoff; dropped eigenvalues get 0 for both sqrt and 1/sqrt (truncated
  //    pseudo-inverse), never a substitute value.
  const double cut = linalg::EigenCutoff(lam.back(), n);
  b.sqrt_lambda.assign(n, 0.0);
  b.inv_sqrt_lambda.assign(n, 0.0);
  for (int i = 0; i < n; ++i) {
    if (lam[i] > cut) {
      b.sqrt_lambda[i] = std::sqrt(lam[i]);
      b.inv_sqrt_lambda[i] = 1.0 / b.sqrt_lambda[i];
      ++b.kept;
    }
  }
  return b;
}

absl::StatusOr<LowRank> FitEora(const float* dw, int m, int n, const CalibStats& s, int r) {
  if (absl::Status st = CheckFit("FitEora", dw, m, n, r); !st.ok()) return st;
  if (absl::Status st = internal::ValidateStats("FitEora", s, n); !st.ok()) return st;
  auto basis = ComputeEoraBasis(s);
  if (!basis.ok()) return basis.status();
  return FitEora(dw, m, n, *basis, r);
}

absl::StatusOr<LowRank> FitEora(const float* dw, int m, int n, const EoraBasis& basis, int r) {
  if (absl::Status st = CheckFit("FitEora", dw, m, n, r); !st.ok()) return st;
  const size_t nn = static_cast<size_t>(n) * n;
  if (basis.n != n || basis.q.size() != nn || basis.sqrt_lambda.size() != static_cast<size_t>(n) ||
      basis.inv_sqrt_lambda.size() != static_cast<size_t>(n))
    return absl::InvalidArgumentError(
        absl::StrCat("FitEora: basis is for ", basis.n, " inputs, the layer has ", n));
  // 3. dW' = dW Q Λ^1/2.
  const std::vector<double> d = internal::ToDouble(dw, static_cast<size_t>(m) * n);
  std::vector<double> dwp(static_cast<size_t>(m) * n);
  linalg::Gemm(false, false, m, n, n, 1.0, d.data(), n, basis.q.data(), n, 0.0, dwp.data(), n);
  for (int i = 0; i < m; ++i)
    for (int k = 0; k < n; ++k) dwp[static_cast<size_t>(i) * n + k] *= basis.sqrt_lambda[k];
  // 4. B = U_r Σ_r^1/2, A' = Σ_r^1/2 V_r^T Λ^-1/2, then A = A' Q^T.
  auto lr = FromSvd(dwp, m, n, r, true, &basis.inv_sqrt_lambda);
  if (!lr.ok()) return lr.status();
  std::vector<double> ap(lr->a.begin(), lr->a.end()), a(static_cast<size_t>(r) * n);
  linalg::Gemm(false, true, r, n, n, 1.0, ap.data(), n, basis.q.data(), n, 0.0, a.data(), n);
  for (size_t i = 0; i < a.size(); ++i) lr->a[i] = static_cast<float>(a[i]);
  if (!linalg::AllFinite(lr->a.data(), lr->a.size()) || !linalg::AllFinite(lr->b.data(), lr->b.size()))
    return absl::InternalError("FitEora: non-finite factors");
  return lr;
}

// Group size of quantized factors, along each rank component of A and of B^T (a
// row shorter than this is one group): the engine's kFactorGroupSize.
constexpr int kFactorGroup = kFactorGroupSize;

absl::StatusOr<QuantizedFactors> QuantizeFactors(const LowRank& lr, int bits,
                                                 const CalibStats* input_stats) {
  if (bits < 2 || bits > 4)
    return absl::InvalidArgumentError(absl::StrCat("QuantizeFactors: bits must be 2, 3 or 4, got ", bits));
  if (lr.r < 1 || lr.m < 1 || lr.n < 1 || lr.a.size() != static_cast<size_t>(lr.r) * lr.n ||
      lr.b.size() != static_cast<size_t>(lr.m) * lr.r)
    return absl::InvalidArgumentError(absl::StrCat("QuantizeFactors: inconsistent factors m=", lr.m, " n=", lr.n,
                                                   " r=", lr.r));
  if (absl::Status st = internal::ValidateFinite("QuantizeFactors", lr.a.data(), lr.a.size()); !st.ok()) return st;
  if (absl::Status st = internal::ValidateFinite("QuantizeFactors", lr.b.data(), lr.b.size()); !st.ok()) return st;
  if (input_stats != nullptr) {
    if (absl::Status st = internal::ValidateStats("QuantizeFactors", *input_stats, lr.n); !st.ok()) return st;
  }
  const int m = lr.m, n = lr.n, r = lr.r;
  constexpr double kDamp = 0.01;
  // A [r][n]: groups of kFactorGroup columns along each row (rank component); GPTQ
  // with H = 2/N xtx.
  const std::vector<double> a = internal::ToDouble(lr.a.data(), lr.a.size());
  std::vector<double> aq;
  QuantizedWeights qa;
  if (input_stats != nullptr) {
    auto prep = internal::PrepareObs(internal::GptqHessian(*input_stats), n, kDamp, false);
    if (!prep.ok()) return prep.status();
    qa = internal::GptqRows(a.data(), r, n, &*prep, bits, kFactorGroup, false, 128, &aq);
  } else {
    qa = internal::GptqRows(a.data(), r, n, nullptr, bits, kFactorGroup, false, 128, &aq);
  }
  // B [m][r]: stored as B^T [r][m] with groups of kFactorGroup along each row of B^T,
  // i.e. down each column of B.
  // Its inputs are u = A_q x, so H_B = A_q H A_q^T.
  const std::vector<double> b = internal::ToDouble(lr.b.data(), lr.b.size());
  QuantizedWeights qbt;
  if (input_stats != nullptr) {
    const std::vector<double> h = internal::GptqHessian(*input_stats);
    std::vector<double> ah(static_cast<size_t>(r) * n), hb(static_cast<size_t>(r) * r);
    linalg::Gemm(false, false, r, n, n, 1.0, aq.data(), n, h.data(), n, 0.0, ah.data(), n);
    linalg::Gemm(false, true, r, r, n, 1.0, ah.data(), n, aq.data(), n, 0.0, hb.data(), r);
    auto prep = internal::PrepareObs(std::move(hb), r, kDamp, false);
    if (!prep.ok()) return prep.status();
    qbt = internal::GptqColumns(b.data(), m, r, &*prep, bits, kFactorGroup, 128, nullptr);
  } else {
    qbt = internal::GptqColumns(b.data(), m, r, nullptr, bits, kFactorGroup, 128, nullptr);
  }
  auto ma = MakeQuantizedMatrix(qa);
  if (!ma.ok()) return ma.status();
  auto mb = MakeQuantizedMatrix(qbt);
  if (!mb.ok()) return mb.status();
  QuantizedFactors out;
  out.a = std::shared_ptr<const Matrix>(std::move(*ma));
  out.bt = std::shared_ptr<const Matrix>(std::move(*mb));
  return out;
}

}  // namespace eora::compress
