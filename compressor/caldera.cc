// CALDERA (Saha et al.): W ~= Q + L R with every part quantized. This is the scalar-
// quantizer version: Q, L and R are quantized with our GPTQ/LDLQ-style sweep (uniform
// integer grids), not the paper's E8 lattice codebooks (docs/compressor.md).
#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "compressor/algorithms.h"
#include "compressor/internal.h"
#include "compressor/linalg.h"

namespace eora::compress {
namespace {

// Low-rank part of one outer iteration (quantized).
struct LrState {
  std::vector<double> l;  // [m][k] dequantized
  std::vector<double> r;  // [k][n] dequantized
  QuantizedWeights ql;    // L^T [k][m]
  QuantizedWeights qr;    // R [k][n]
  std::vector<double> sv;
};

// tr(D H D^T) for D = E - L R.
double LrError(const std::vector<double>& e, const LrState& s, int m, int n, int k,
               const std::vector<double>& h) {
  std::vector<double> d(e);
  linalg::Gemm(false, false, m, n, k, -1.0, s.l.data(), k, s.r.data(), n, 1.0, d.data(), n);
  return internal::HessianNorm(d.data(), m, n, h.data());
}

}  // namespace

absl::StatusOr<CalderaResult> Caldera(const float* w, int m, int n, const CalibStats& s,
                                      const CalderaConfig& cfg) {
  const char* what = "Caldera";
  if (absl::Status st = internal::ValidateShape(what, m, n); !st.ok()) return st;
  if (absl::Status st = internal::ValidateFinite(what, w, static_cast<size_t>(m) * n); !st.ok()) return st;
  if (absl::Status st = internal::ValidateStats(what, s, n); !st.ok()) return st;
  const int k = cfg.rank;
  if (k < 1 || k > std::min(m, n))
    return absl::InvalidArgumentError(
        absl::StrCat("Caldera: rank ", k, " must be in [1, min(m, n) = ", std::min(m, n), "]"));
  QuantConfig qcfg;
  qcfg.bits = cfg.bits_q;
  qcfg.group_size = cfg.group_size;
  if (absl::Status st = internal::ValidateQuant("Caldera (Q)", qcfg); !st.ok()) return st;
  if (cfg.bits_lr < 2 || cfg.bits_lr > 4)
    return absl::InvalidArgumentError(absl::StrCat("Caldera: bits_lr must be 2, 3 or 4, got ", cfg.bits_lr));
  if (cfg.outer_iters < 1 || cfg.inner_iters < 1)
    return absl::InvalidArgumentError("Caldera: outer_iters and inner_iters must be >= 1");

  // H = S / mean(diag S) + 0.01 I (S = xtx / N; the 1/N cancels).
  const size_t nn = static_cast<size_t>(n) * n;
  std::vector<double> h(s.xtx);
  double md = 0;
  for (int j = 0; j < n; ++j) md += h[static_cast<size_t>(j) * n + j];
  md /= n;
  if (!(md > 0)) return absl::InvalidArgumentError("Caldera: calibration inputs are all zero");
  for (double& v : h) v /= md;
  for (int j = 0; j < n; ++j) h[static_cast<size_t>(j) * n + j] += 0.01;

  // H^1/2 = Qh Λ^1/2 (right factor P) and its inverse Λ^-1/2 Qh^T (Pinv).
  std::vector<double> lam, qh;
  if (absl::Status st = linalg::SymEig(n, h.data(), &lam, &qh); !st.ok()) return st;
  std::vector<double> p(nn), pinv(nn);
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) {
      const double l = std::max(lam[j], 0.0);
      const double v = qh[static_cast<size_t>(i) * n + j];
      p[static_cast<size_t>(i) * n + j] = v * std::sqrt(l);
      pinv[static_cast<size_t>(j) * n + i] = l > 0 ? v / std::sqrt(l) : 0.0;
    }
  auto prep_h = internal::PrepareObs(h, n, 0.0, false);
  if (!prep_h.ok()) return prep_h.status();

  const std::vector<double> wd = internal::ToDouble(w, static_cast<size_t>(m) * n);
  const double tr_w = internal::HessianNorm(wd.data(), m, n, h.data());
  const double denom = tr_w > 0 ? tr_w : 1.0;

  std::vector<double> qm(static_cast<size_t>(m) * n, 0.0);  // current Q (dequantized)
  double best_total = std::numeric_limits<double>::infinity();
  QuantizedWeights best_q;
  LrState best_lr;
  bool have_q = false;

  std::vector<double> e(static_cast<size_t>(m) * n), ep(static_cast<size_t>(m) * n);
  std::vector<double> rh(static_cast<size_t>(k) * n), g(static_cast<size_t>(k) * k);
  for (int outer = 0; outer < cfg.outer_iters; ++outer) {
    for (size_t i = 0; i < e.size(); ++i) e[i] = wd[i] - qm[i];
    // Initialise L, R by the EoRA-style projection: SVD of E H^1/2.
    linalg::Gemm(false, false, m, n, n, 1.0, e.data(), n, p.data(), n, 0.0, ep.data(), n);
    std::vector<double> u, sv, vt;
    if (absl::Status st = linalg::TopSvd(m, n, ep.data(), k, &u, &sv, &vt); !st.ok()) return st;
    const int kk = k;  // u is [m][k]
    std::vector<double> l(static_cast<size_t>(m) * k), r(static_cast<size_t>(k) * n), rt(static_cast<size_t>(k) * n);
    for (int j = 0; j < k; ++j) {
      const double sq = std::sqrt(std::max(0.0, sv[j]));
      for (int i = 0; i < m; ++i) l[static_cast<size_t>(i) * k + j] = u[static_cast<size_t>(i) * kk + j] * sq;
      for (int c = 0; c < n; ++c) rt[static_cast<size_t>(j) * n + c] = vt[static_cast<size_t>(j) * n + c] * sq;
    }
    linalg::Gemm(false, false, k, n, n, 1.0, rt.data(), n, pinv.data(), n, 0.0, r.data(), n);

    LrState best_inner;
    double best_inner_err = std::numeric_limits<double>::infinity();
    for (int it = 0; it < cfg.inner_iters; ++it) {
      // L <- E H R^T (R H R^T)^+  (least squares in the H-norm), then quantize L with
      // GPTQ on its inputs R x (H_L = R H R^T), one group per column of L.
      linalg::Gemm(false, false, k, n, n, 1.0, r.data(), n, h.data(), n, 0.0, rh.data(), n);
      linalg::Gemm(false, true, k, k, n, 1.0, rh.data(), n, r.data(), n, 0.0, g.data(), k);
      std::vector<double> lt(static_cast<size_t>(k) * m);  // (R H E^T) -> L^T
      linalg::Gemm(false, true, k, m, n, 1.0, rh.data(), n, e.data(), n, 0.0, lt.data(), m);
      if (absl::Status st = linalg::SymPinvSolve(k, g.data(), m, lt.data()); !st.ok()) return st;
      for (int i = 0; i < m; ++i)
        for (int j = 0; j < k; ++j) l[static_cast<size_t>(i) * k + j] = lt[static_cast<size_t>(j) * m + i];
      LrState cur;
      auto prep_l = internal::PrepareObs(g, k, 0.01, false);
      if (!prep_l.ok()) return prep_l.status();
      cur.ql = internal::GptqColumns(l.data(), m, k, &*prep_l, cfg.bits_lr, 0, 128, &cur.l);
      // R <- L_q^+ E, then quantize R with GPTQ on H, one group per row.
      std::vector<double> g2(static_cast<size_t>(k) * k);
      linalg::Gemm(true, false, k, k, m, 1.0, cur.l.data(), k, cur.l.data(), k, 0.0, g2.data(), k);
      linalg::Gemm(true, false, k, n, m, 1.0, cur.l.data(), k, e.data(), n, 0.0, r.data(), n);
      if (absl::Status st = linalg::SymPinvSolve(k, g2.data(), n, r.data()); !st.ok()) return st;
      cur.qr = internal::GptqRows(r.data(), k, n, &*prep_h, cfg.bits_lr, 0, false, 128, &cur.r);
      r = cur.r;
      const double err = LrError(e, cur, m, n, k, h);
      if (err < best_inner_err) {
        best_inner_err = err;
        cur.sv.assign(sv.begin(), sv.begin() + k);
        best_inner = std::move(cur);
      }
    }
    // Q step: quantize W - L R with GPTQ (LDLQ) on H.
    std::vector<double> wr(wd);
    linalg::Gemm(false, false, m, n, k, -1.0, best_inner.l.data(), k, best_inner.r.data(), n, 1.0, wr.data(), n);
    QuantizedWeights qq =
        internal::GptqRows(wr.data(), m, n, &*prep_h, cfg.bits_q, cfg.group_size, false, 128, &qm);
    for (size_t i = 0; i < wr.size(); ++i) wr[i] -= qm[i];  // W - LR - Q
    const double total = internal::HessianNorm(wr.data(), m, n, h.data()) / denom;
    if (!std::isfinite(total)) return absl::InternalError("Caldera: non-finite error");
    if (total < best_total) {
      best_total = total;
      best_q = std::move(qq);
      best_lr = std::move(best_inner);
      have_q = true;
    }
  }
  if (!have_q) return absl::InternalError("Caldera: no iteration produced a result");

  CalderaResult out;
  auto qmat = MakeQuantizedMatrix(best_q);
  if (!qmat.ok()) return qmat.status();
  auto amat = MakeQuantizedMatrix(best_lr.qr);
  if (!amat.ok()) return amat.status();
  auto btmat = MakeQuantizedMatrix(best_lr.ql);
  if (!btmat.ok()) return btmat.status();
  out.q.w_c = (*qmat)->Dequantize();
  out.q.matrix = std::shared_ptr<const Matrix>(std::move(*qmat));
  out.lr.m = m;
  out.lr.n = n;
  out.lr.r = k;
  out.lr.a = (*amat)->Dequantize();
  const std::vector<float> bt = (*btmat)->Dequantize();
  out.lr.b.resize(static_cast<size_t>(m) * k);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < k; ++j) out.lr.b[static_cast<size_t>(i) * k + j] = bt[static_cast<size_t>(j) * m + i];
  out.lr.singular_values = best_lr.sv;
  out.lr_quant.a = std::shared_ptr<const Matrix>(std::move(*amat));
  out.lr_quant.bt = std::shared_ptr<const Matrix>(std::move(*btmat));
  // Final error from the served (F16-parameter) values.
  std::vector<double> d(wd);
  for (size_t i = 0; i < d.size(); ++i) d[i] -= out.q.w_c[i];
  const std::vector<double> lb(out.lr.b.begin(), out.lr.b.end()), la(out.lr.a.begin(), out.lr.a.end());
  linalg::Gemm(false, false, m, n, k, -1.0, lb.data(), k, la.data(), n, 1.0, d.data(), n);
  out.rel_error = internal::HessianNorm(d.data(), m, n, h.data()) / denom;
  return out;
}

}  // namespace eora::compress
