#include "compressor/linalg.h"

#include <cblas.h>
#include <lapacke.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace eora::compress::linalg {

void Gemm(bool trans_a, bool trans_b, int m, int n, int k, double alpha, const double* a, int lda,
          const double* b, int ldb, double beta, double* c, int ldc) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < n; ++j) c[static_cast<size_t>(i) * ldc + j] *= beta;
    return;
  }
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
              m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

bool AllFinite(const double* x, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  return true;
}
bool AllFinite(const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  return true;
}

absl::Status SymEig(int n, const double* a, std::vector<double>* w, std::vector<double>* v) {
  if (n <= 0) return absl::InvalidArgumentError(absl::StrCat("SymEig: bad size ", n));
  const size_t nn = static_cast<size_t>(n) * n;
  if (!AllFinite(a, nn)) return absl::InvalidArgumentError("SymEig: non-finite matrix entry");
  v->assign(a, a + nn);
  w->assign(n, 0.0);
  const lapack_int info = LAPACKE_dsyevd(LAPACK_ROW_MAJOR, 'V', 'U', n, v->data(), n, w->data());
  if (info != 0)
    return absl::InternalError(absl::StrCat("SymEig: LAPACKE_dsyevd failed, info=", info));
  if (!AllFinite(w->data(), w->size()))
    return absl::InternalError("SymEig: non-finite eigenvalue");
  return absl::OkStatus();
}

absl::Status Svd(int m, int n, const double* a, std::vector<double>* u, std::vector<double>* s,
                 std::vector<double>* vt) {
  if (m <= 0 || n <= 0) return absl::InvalidArgumentError(absl::StrCat("Svd: bad shape ", m, "x", n));
  const size_t mn = static_cast<size_t>(m) * n;
  if (!AllFinite(a, mn)) return absl::InvalidArgumentError("Svd: non-finite matrix entry");
  const int k = std::min(m, n);
  std::vector<double> work(a, a + mn);
  u->assign(static_cast<size_t>(m) * k, 0.0);
  s->assign(k, 0.0);
  vt->assign(static_cast<size_t>(k) * n, 0.0);
  lapack_int info = LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'S', m, n, work.data(), n, s->data(), u->data(),
                                   k, vt->data(), n);
  if (info > 0) {  // divide and conquer did not converge: QR iteration instead
    work.assign(a, a + mn);
    std::vector<double> superb(std::max(1, k - 1));
    info = LAPACKE_dgesvd(LAPACK_ROW_MAJOR, 'S', 'S', m, n, work.data(), n, s->data(), u->data(), k,
                          vt->data(), n, superb.data());
  }
  if (info != 0) return absl::InternalError(absl::StrCat("Svd: LAPACK SVD failed, info=", info));
  if (!AllFinite(s->data(), s->size())) return absl::InternalError("Svd: non-finite singular value");
  return absl::OkStatus();
}

absl::Status TopSvd(int m, int n, const double* a, int r, std::vector<double>* u, std::vector<double>* s,
                    std::vector<double>* vt) {
  if (m <= 0 || n <= 0) return absl::InvalidArgumentError(absl::StrCat("TopSvd: bad shape ", m, "x", n));
  const int k = std::min(m, n);
  if (r < 1 || r > k) return absl::InvalidArgumentError(absl::StrCat("TopSvd: rank ", r, " not in [1, ", k, "]"));
  const size_t mn = static_cast<size_t>(m) * n;
  if (!AllFinite(a, mn)) return absl::InvalidArgumentError("TopSvd: non-finite matrix entry");
  // Work on the smaller side: left = true -> eigenvectors are U (Gram a a^T, m x m).
  const bool left = m <= n;
  std::vector<double> g(static_cast<size_t>(k) * k, 0.0);
  if (left)
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasNoTrans, m, n, 1.0, a, n, 0.0, g.data(), k);
  else
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, n, m, 1.0, a, n, 0.0, g.data(), k);
  std::vector<double> w(k), z(static_cast<size_t>(k) * r);
  std::vector<lapack_int> isuppz(2 * static_cast<size_t>(k));
  lapack_int found = 0;
  const lapack_int info = LAPACKE_dsyevr(LAPACK_ROW_MAJOR, 'V', 'I', 'U', k, g.data(), k, 0.0, 0.0, k - r + 1, k,
                                         0.0, &found, w.data(), z.data(), r, isuppz.data());
  if (info != 0 || found != r)
    return absl::InternalError(absl::StrCat("TopSvd: LAPACKE_dsyevr failed, info=", info, " found=", found));
  // z [k][r] holds eigenvectors ascending; the other side: p = x^T a (left) or a x.
  std::vector<double> x(static_cast<size_t>(r) * k);  // [r][k], descending order
  for (int j = 0; j < r; ++j)
    for (int i = 0; i < k; ++i) x[static_cast<size_t>(j) * k + i] = z[static_cast<size_t>(i) * r + (r - 1 - j)];
  const int other = left ? n : m;
  std::vector<double> p(static_cast<size_t>(r) * other);  // [r][other]
  if (left)
    Gemm(false, false, r, n, m, 1.0, x.data(), k, a, n, 0.0, p.data(), n);  // U^T a
  else
    Gemm(false, true, r, m, n, 1.0, x.data(), k, a, n, 0.0, p.data(), m);   // (a V)^T
  std::vector<double> sig(r);
  for (int j = 0; j < r; ++j) {
    double acc = 0;
    for (int i = 0; i < other; ++i) acc += p[static_cast<size_t>(j) * other + i] * p[static_cast<size_t>(j) * other + i];
    sig[j] = std::sqrt(acc);
  }
  std::vector<int> order(r);
  for (int j = 0; j < r; ++j) order[j] = j;
  std::stable_sort(order.begin(), order.end(), [&](int x1, int x2) { return sig[x1] > sig[x2]; });
  u->assign(static_cast<size_t>(m) * r, 0.0);
  vt->assign(static_cast<size_t>(r) * n, 0.0);
  s->assign(r, 0.0);
  for (int jj = 0; jj < r; ++jj) {
    const int j = order[jj];
    const double sj = sig[j];
    (*s)[jj] = sj;
    const double inv = sj > 0 ? 1.0 / sj : 0.0;
    for (int i = 0; i < k; ++i) {
      const double xv = x[static_cast<size_t>(j) * k + i];
      if (left) (*u)[static_cast<size_t>(i) * r + jj] = xv; else (*vt)[static_cast<size_t>(jj) * n + i] = xv;
    }
    for (int i = 0; i < other; ++i) {
      const double pv = p[static_cast<size_t>(j) * other + i] * inv;
      if (left) (*vt)[static_cast<size_t>(jj) * n + i] = pv; else (*u)[static_cast<size_t>(i) * r + jj] = pv;
    }
  }
  if (!AllFinite(s->data(), s->size())) return absl::InternalError("TopSvd: non-finite singular value");
  return absl::OkStatus();
}

absl::Status CholeskyInverse(int n, double* a) {
  lapack_int info = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', n, a, n);
  if (info > 0)
    return absl::FailedPreconditionError(
        absl::StrCat("CholeskyInverse: matrix not positive definite (leading minor ", info, ")"));
  if (info < 0) return absl::InternalError(absl::StrCat("CholeskyInverse: dpotrf info=", info));
  info = LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'U', n, a, n);
  if (info != 0)
    return absl::FailedPreconditionError(absl::StrCat("CholeskyInverse: dpotri failed, info=", info));
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < i; ++j) a[static_cast<size_t>(i) * n + j] = a[static_cast<size_t>(j) * n + i];
  return absl::OkStatus();
}

absl::Status CholeskyUpper(int n, double* a) {
  const lapack_int info = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', n, a, n);
  if (info > 0)
    return absl::FailedPreconditionError(
        absl::StrCat("CholeskyUpper: matrix not positive definite (leading minor ", info, ")"));
  if (info < 0) return absl::InternalError(absl::StrCat("CholeskyUpper: dpotrf info=", info));
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < i; ++j) a[static_cast<size_t>(i) * n + j] = 0.0;
  return absl::OkStatus();
}

absl::Status TriangularInverse(int n, bool upper, double* a) {
  const lapack_int info = LAPACKE_dtrtri(LAPACK_ROW_MAJOR, upper ? 'U' : 'L', 'N', n, a, n);
  if (info > 0)
    return absl::FailedPreconditionError(
        absl::StrCat("TriangularInverse: singular (zero diagonal at ", info, ")"));
  if (info < 0) return absl::InternalError(absl::StrCat("TriangularInverse: dtrtri info=", info));
  return absl::OkStatus();
}

double EigenCutoff(double lambda_max, int n) {
  const double eps32 = static_cast<double>(std::numeric_limits<float>::epsilon());
  return std::max(lambda_max, 0.0) * std::min(1.0, n * eps32);
}

absl::Status SymPinvSolve(int k, const double* g, int c, double* rhs) {
  std::vector<double> w, v;
  if (absl::Status st = SymEig(k, g, &w, &v); !st.ok()) return st;
  const double cut = EigenCutoff(w.empty() ? 0.0 : w.back(), k);
  // rhs <- V diag(1/w) V^T rhs over kept eigenvalues.
  std::vector<double> t(static_cast<size_t>(k) * c);
  Gemm(true, false, k, c, k, 1.0, v.data(), k, rhs, c, 0.0, t.data(), c);
  for (int i = 0; i < k; ++i) {
    const double inv = w[i] > cut ? 1.0 / w[i] : 0.0;
    for (int j = 0; j < c; ++j) t[static_cast<size_t>(i) * c + j] *= inv;
  }
  Gemm(false, false, k, c, k, 1.0, v.data(), k, t.data(), c, 0.0, rhs, c);
  return absl::OkStatus();
}

}  // namespace eora::compress::linalg
