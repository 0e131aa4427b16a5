#include "compressor/internal.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "compressor/linalg.h"
#include "engine/dtype.h"

namespace eora::compress::internal {

// ---- Quantizer parameters -------------------------------------------------------------

namespace {

GroupParams ParamsFromRange(double xmin, double xmax, int bits, bool symmetric) {
  const int maxq = (1 << bits) - 1;
  xmin = std::min(xmin, 0.0);
  xmax = std::max(xmax, 0.0);
  if (symmetric) {
    xmax = std::max(std::fabs(xmin), xmax);
    if (xmin < 0) xmin = -xmax;
  }
  if (xmin == 0.0 && xmax == 0.0) {
    xmin = -1.0;
    xmax = 1.0;
  }
  double scale = (xmax - xmin) / maxq;
  // F16 storage: keep the scale a normal F16 number (>= 2^-14); tiny groups lose nothing.
  scale = std::max(scale, 6.103515625e-05);
  const float s16 = F16ToF32(F32ToF16(static_cast<float>(scale)));
  const double zero = symmetric ? (maxq + 1) / 2 : std::clamp(std::nearbyint(-xmin / s16), 0.0,
                                                              static_cast<double>(maxq));
  GroupParams p;
  p.scale = s16;
  p.min = F16ToF32(F32ToF16(static_cast<float>(-static_cast<double>(s16) * zero)));
  return p;
}

}  // namespace

GroupParams FindParams(const double* v, int count, int stride, int bits, bool symmetric) {
  return FindParamsMasked(v, nullptr, count, stride, bits, symmetric);
}

GroupParams FindParamsMasked(const double* v, const uint8_t* skip, int count, int stride, int bits,
                             bool symmetric) {
  double mn = 0, mx = 0;
  for (int i = 0; i < count; ++i) {
    if (skip != nullptr && skip[i]) continue;
    const double x = v[static_cast<size_t>(i) * stride];
    mn = std::min(mn, x);
    mx = std::max(mx, x);
  }
  return ParamsFromRange(mn, mx, bits, symmetric);
}

// ---- Hessian preparation ----------------------------------------------------------------

absl::StatusOr<ObsPrep> PrepareObs(std::vector<double> h, int n, double damp, bool act_order) {
  ObsPrep p;
  p.n = n;
  p.dead.assign(n, 0);
  for (int j = 0; j < n; ++j) {
    double& d = h[static_cast<size_t>(j) * n + j];
    if (d == 0.0) {
      p.dead[j] = 1;
      d = 1.0;
      // A dead column has zero inputs, so its off-diagonal entries are zero too.
      for (int k = 0; k < n; ++k) {
        if (k == j) continue;
        h[static_cast<size_t>(j) * n + k] = 0.0;
        h[static_cast<size_t>(k) * n + j] = 0.0;
      }
    }
  }
  p.perm.resize(n);
  std::iota(p.perm.begin(), p.perm.end(), 0);
  if (act_order) {
    std::stable_sort(p.perm.begin(), p.perm.end(), [&](int a, int b) {
      return h[static_cast<size_t>(a) * n + a] > h[static_cast<size_t>(b) * n + b];
    });
    std::vector<double> hp(static_cast<size_t>(n) * n);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j)
        hp[static_cast<size_t>(i) * n + j] = h[static_cast<size_t>(p.perm[i]) * n + p.perm[j]];
    h.swap(hp);
  }
  p.inv_perm.resize(n);
  for (int i = 0; i < n; ++i) p.inv_perm[p.perm[i]] = i;
  double mean_diag = 0;
  for (int j = 0; j < n; ++j) mean_diag += h[static_cast<size_t>(j) * n + j];
  mean_diag /= n;
  double d = damp * mean_diag;
  absl::Status last;
  for (int attempt = 0; attempt < 7; ++attempt) {
    std::vector<double> a = h;
    for (int j = 0; j < n; ++j) a[static_cast<size_t>(j) * n + j] += d;
    last = linalg::CholeskyInverse(n, a.data());
    if (last.ok()) last = linalg::CholeskyUpper(n, a.data());
    if (last.ok()) {
      p.u = std::move(a);
      p.damp_used = d;
      return p;
    }
    d = d > 0 ? d * 10 : 1e-6 * std::max(mean_diag, 1e-300);
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "Hessian not positive definite even with damping ", d, ": ", last.message()));
}

// ---- OBS sweep ---------------------------------------------------------------------------

void ObsSweep(double* w, int m, int n, const ObsPrep* prep, int block, const ColumnFn& fn) {
  block = std::max(1, block);
  std::vector<double> q(m);
  std::vector<double> err(static_cast<size_t>(m) * block);
  const double* u = prep != nullptr ? prep->u.data() : nullptr;
  for (int i1 = 0; i1 < n; i1 += block) {
    const int i2 = std::min(n, i1 + block);
    const int bs = i2 - i1;
    for (int p = i1; p < i2; ++p) {
      fn(p, w, q.data());
      if (u == nullptr) {
        for (int r = 0; r < m; ++r) w[static_cast<size_t>(r) * n + p] = q[r];
        continue;
      }
      const double* up = u + static_cast<size_t>(p) * n;
      const double inv_d = 1.0 / up[p];
      for (int r = 0; r < m; ++r) {
        double* wr = w + static_cast<size_t>(r) * n;
        const double e = (wr[p] - q[r]) * inv_d;
        err[static_cast<size_t>(r) * bs + (p - i1)] = e;
        wr[p] = q[r];
        if (e != 0.0)
          for (int j = p + 1; j < i2; ++j) wr[j] -= e * up[j];
      }
    }
    if (u != nullptr && i2 < n) {
      // w[:, i2:] -= Err [m][bs] * U[i1:i2, i2:]
      linalg::Gemm(false, false, m, n - i2, bs, -1.0, err.data(), bs,
                   u + static_cast<size_t>(i1) * n + i2, n, 1.0, w + i2, n);
    }
  }
}

// ---- Row-group quantizer ------------------------------------------------------------------

RowGroupQuantizer::RowGroupQuantizer(int m, int n, int cols_per_group, int bits, bool symmetric,
                                     const std::vector<int>* inv_perm, const uint8_t* pruned)
    : m_(m), n_(n), cpg_(cols_per_group > 0 ? std::min(cols_per_group, n) : n), bits_(bits),
      maxq_((1 << bits) - 1), groups_((n + cpg_ - 1) / cpg_), symmetric_(symmetric),
      inv_perm_(inv_perm), pruned_(pruned) {
  ready_.assign(groups_, 0);
  codes_.assign(static_cast<size_t>(m) * n, 0);
  params_.assign(static_cast<size_t>(m) * groups_, GroupParams{});
  buf_.resize(cpg_);
  skip_.resize(cpg_);
}

void RowGroupQuantizer::Column(int p, int c, const double* w, double* q) {
  const int g = c / cpg_;
  if (!ready_[g]) {
    ready_[g] = 1;
    const int c0 = g * cpg_, c1 = std::min(n_, c0 + cpg_);
    for (int r = 0; r < m_; ++r) {
      const double* wr = w + static_cast<size_t>(r) * n_;
      for (int cc = c0; cc < c1; ++cc) {
        const int pos = inv_perm_ != nullptr ? (*inv_perm_)[cc] : cc;
        buf_[cc - c0] = wr[pos];
        skip_[cc - c0] = pruned_ != nullptr ? pruned_[static_cast<size_t>(r) * n_ + cc] : 0;
      }
      params_[static_cast<size_t>(r) * groups_ + g] =
          FindParamsMasked(buf_.data(), skip_.data(), c1 - c0, 1, bits_, symmetric_);
    }
  }
  for (int r = 0; r < m_; ++r) {
    const size_t idx = static_cast<size_t>(r) * n_ + c;
    if (pruned_ != nullptr && pruned_[idx]) {
      q[r] = 0.0;
      continue;
    }
    const GroupParams& gp = params_[static_cast<size_t>(r) * groups_ + g];
    const uint8_t code = QuantizeCode(w[static_cast<size_t>(r) * n_ + p], gp, maxq_);
    codes_[idx] = code;
    q[r] = Dequant(code, gp);
  }
}

QuantizedWeights ToQuantizedWeights(int m, int n, int bits, int group_size,
                                    const std::vector<uint8_t>& codes,
                                    const std::vector<GroupParams>& params, int groups) {
  QuantizedWeights qw;
  qw.rows = m;
  qw.cols = n;
  qw.spec.bits = bits;
  qw.spec.group_size = group_size;
  qw.codes = codes;
  const int eg = qw.groups();
  qw.scale.assign(static_cast<size_t>(m) * eg, 1.f);
  qw.min.assign(static_cast<size_t>(m) * eg, 0.f);
  for (int r = 0; r < m; ++r)
    for (int g = 0; g < std::min(eg, groups); ++g) {
      qw.scale[static_cast<size_t>(r) * eg + g] = params[static_cast<size_t>(r) * groups + g].scale;
      qw.min[static_cast<size_t>(r) * eg + g] = params[static_cast<size_t>(r) * groups + g].min;
    }
  return qw;
}

QuantizedWeights GptqRows(const double* w, int m, int n, const ObsPrep* prep, int bits,
                          int group_size, bool symmetric, int block, std::vector<double>* wq) {
  const std::vector<int>* inv = prep != nullptr ? &prep->inv_perm : nullptr;
  const std::vector<int>* perm = prep != nullptr ? &prep->perm : nullptr;
  std::vector<double> work(static_cast<size_t>(m) * n);
  for (int r = 0; r < m; ++r)
    for (int p = 0; p < n; ++p) {
      const int c = perm != nullptr ? (*perm)[p] : p;
      const bool dead = prep != nullptr && prep->dead[c];
      work[static_cast<size_t>(r) * n + p] = dead ? 0.0 : w[static_cast<size_t>(r) * n + c];
    }
  RowGroupQuantizer qz(m, n, group_size, bits, symmetric, inv, nullptr);
  ObsSweep(work.data(), m, n, prep, block, [&](int p, const double* cur, double* q) {
    qz.Column(p, perm != nullptr ? (*perm)[p] : p, cur, q);
  });
  if (wq != nullptr) {
    wq->assign(static_cast<size_t>(m) * n, 0.0);
    for (int r = 0; r < m; ++r)
      for (int p = 0; p < n; ++p) {
        const int c = perm != nullptr ? (*perm)[p] : p;
        (*wq)[static_cast<size_t>(r) * n + c] = work[static_cast<size_t>(r) * n + p];
      }
  }
  return ToQuantizedWeights(m, n, bits, group_size, qz.codes(), qz.params(), qz.groups());
}

QuantizedWeights GptqColumns(const double* w, int m, int n, const ObsPrep* prep, int bits, int group_rows,
                             int block, std::vector<double>* wq) {
  // Columns are processed in their natural order (prep must not be permuted).
  std::vector<double> work(w, w + static_cast<size_t>(m) * n);
  if (prep != nullptr)
    for (int c = 0; c < n; ++c)
      if (prep->dead[c])
        for (int r = 0; r < m; ++r) work[static_cast<size_t>(r) * n + c] = 0.0;
  const int maxq = (1 << bits) - 1;
  const int g = group_rows <= 0 || group_rows >= m ? m : group_rows;
  const int groups = (m + g - 1) / g;
  std::vector<uint8_t> codes_t(static_cast<size_t>(n) * m);  // [n][m]
  std::vector<GroupParams> params(static_cast<size_t>(n) * groups);
  ObsSweep(work.data(), m, n, prep, block, [&](int p, const double* cur, double* q) {
    for (int gi = 0; gi < groups; ++gi) {
      const int r0 = gi * g, r1 = std::min(m, r0 + g);
      const GroupParams gp = FindParams(cur + static_cast<size_t>(r0) * n + p, r1 - r0, n, bits, /*symmetric=*/false);
      params[static_cast<size_t>(p) * groups + gi] = gp;
      for (int r = r0; r < r1; ++r) {
        const uint8_t code = QuantizeCode(cur[static_cast<size_t>(r) * n + p], gp, maxq);
        codes_t[static_cast<size_t>(p) * m + r] = code;
        q[r] = Dequant(code, gp);
      }
    }
  });
  if (wq != nullptr) *wq = work;
  return ToQuantizedWeights(n, m, bits, group_rows > 0 ? group_rows : 0, codes_t, params, groups);
}

// ---- Helpers ------------------------------------------------------------------------------

absl::Status ValidateShape(const char* what, int m, int n) {
  if (m < 1 || n < 1)
    return absl::InvalidArgumentError(absl::StrCat(what, ": bad shape ", m, "x", n));
  return absl::OkStatus();
}

absl::Status ValidateStats(const char* what, const CalibStats& s, int n) {
  if (s.n != n)
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": calibration statistics have ", s.n, " features, the layer has ", n, " inputs"));
  if (s.count <= 0)
    return absl::InvalidArgumentError(absl::StrCat(what, ": calibration statistics are empty (0 rows)"));
  const size_t nn = static_cast<size_t>(n) * n;
  if (s.xtx.size() != nn || s.sum_sq.size() != static_cast<size_t>(n) ||
      s.sum_abs.size() != static_cast<size_t>(n))
    return absl::InvalidArgumentError(absl::StrCat(what, ": calibration statistics have wrong sizes"));
  if (!linalg::AllFinite(s.xtx.data(), nn) || !linalg::AllFinite(s.sum_sq.data(), n) ||
      !linalg::AllFinite(s.sum_abs.data(), n))
    return absl::InvalidArgumentError(absl::StrCat(what, ": non-finite calibration statistics"));
  return absl::OkStatus();
}

absl::Status ValidateFinite(const char* what, const float* x, size_t count) {
  if (x == nullptr) return absl::InvalidArgumentError(absl::StrCat(what, ": null weights"));
  for (size_t i = 0; i < count; ++i)
    if (!std::isfinite(x[i]))
      return absl::InvalidArgumentError(absl::StrCat(what, ": non-finite weight at index ", i));
  return absl::OkStatus();
}

absl::Status ValidateQuant(const char* what, const QuantConfig& q) {
  if (q.bits < 2 || q.bits > 4)
    return absl::InvalidArgumentError(absl::StrCat(what, ": bits must be 2, 3 or 4, got ", q.bits));
  if (q.group_size < 0 || q.group_size % kQBlock != 0)
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": group_size must be 0 or a positive multiple of 32, got ", q.group_size));
  if (!(q.damp >= 0) || !std::isfinite(q.damp))
    return absl::InvalidArgumentError(absl::StrCat(what, ": damp must be >= 0"));
  if (q.block_size < 1)
    return absl::InvalidArgumentError(absl::StrCat(what, ": block_size must be >= 1"));
  return absl::OkStatus();
}

std::vector<double> ToDouble(const float* x, size_t count) { return std::vector<double>(x, x + count); }

std::vector<float> ToFloat(const std::vector<double>& x) {
  return std::vector<float>(x.begin(), x.end());
}

std::vector<double> GptqHessian(const CalibStats& s) {
  std::vector<double> h(s.xtx);
  const double f = 2.0 / static_cast<double>(s.count);
  for (double& v : h) v *= f;
  return h;
}

double HessianNorm(const double* d, int m, int n, const double* h) {
  std::vector<double> dh(static_cast<size_t>(m) * n);
  linalg::Gemm(false, false, m, n, n, 1.0, d, n, h, n, 0.0, dh.data(), n);
  double t = 0;
  for (size_t i = 0; i < dh.size(); ++i) t += dh[i] * d[i];
  return t;
}

}  // namespace eora::compress::internal
