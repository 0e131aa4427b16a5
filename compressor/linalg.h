// Thin fp64 wrappers over LAPACKE and CBLAS (OpenBLAS). All matrices are
// row-major and dense; every LAPACK failure comes back as an absl::Status.
#pragma once

#include <vector>

#include "absl/status/status.h"

namespace eora::compress::linalg {

// C[m][n] = alpha * op(A) * op(B) + beta * C, row-major; op(A) is [m][k], op(B) [k][n].
void Gemm(bool trans_a, bool trans_b, int m, int n, int k, double alpha, const double* a, int lda,
          const double* b, int ldb, double beta, double* c, int ldc);

// Symmetric eigendecomposition (dsyevd) of a [n][n] (only the upper triangle is read).
// Eigenvalues ascending in *w; *v is [n][n] row-major with eigenvector k in column k
// (a = V diag(w) V^T). Fails on non-finite input or when LAPACK does not converge.
absl::Status SymEig(int n, const double* a, std::vector<double>* w, std::vector<double>* v);

// Thin SVD a [m][n] = U diag(s) VT with k = min(m, n): U [m][k], s [k] descending,
// VT [k][n]. dgesdd, falling back to dgesvd when dgesdd does not converge.
absl::Status Svd(int m, int n, const double* a, std::vector<double>* u, std::vector<double>* s,
                 std::vector<double>* vt);

// Top-r singular triplets of a [m][n] (1 <= r <= min(m, n)): U [m][r], s [r] descending,
// VT [r][n]. Through the Gram matrix of the smaller side (dsyrk + dsyevr for the top r
// eigenvectors only), then the other side's vectors and the singular values from the
// products themselves (sigma_i = ||a^T u_i||, v_i = a^T u_i / sigma_i; components with
// sigma_i = 0 get v_i = 0). Several times cheaper than a full dgesdd for large layers;
// U_r U_r^T a (what a truncated adapter applies) is accurate even where tiny singular
// values are not.
absl::Status TopSvd(int m, int n, const double* a, int r, std::vector<double>* u, std::vector<double>* s,
                    std::vector<double>* vt);

// In place: a [n][n] symmetric positive definite -> a^-1 (full matrix, both triangles),
// via dpotrf + dpotri. Fails (FailedPrecondition) if a is not positive definite.
absl::Status CholeskyInverse(int n, double* a);

// In place: a [n][n] SPD -> U upper triangular with a = U^T U (dpotrf 'U'); the strict
// lower triangle is zeroed.
absl::Status CholeskyUpper(int n, double* a);

// In place: inverse of an upper (upper = true) or lower triangular a [n][n] (dtrtri).
absl::Status TriangularInverse(int n, bool upper, double* a);

// Truncated pseudo-inverse of a symmetric positive semi-definite g [k][k] applied to the
// right-hand sides rhs [k][c] (in place): rhs <- g^+ rhs, dropping eigenvalues
// <= max(lambda_max, 0) * min(1, k * eps_fp32) (the same cutoff as EoRA).
absl::Status SymPinvSolve(int k, const double* g, int c, double* rhs);

// Relative eigenvalue cutoff used by EoRA and SymPinvSolve.
double EigenCutoff(double lambda_max, int n);

bool AllFinite(const double* x, size_t n);
bool AllFinite(const float* x, size_t n);

}  // namespace eora::compress::linalg
