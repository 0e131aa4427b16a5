#include <cblas.h>

#include <algorithm>
#include <cmath>

#include "compressor/algorithms.h"

namespace eora::compress {

CalibStats::CalibStats(int n_in)
    : n(n_in),
      count(0),
      xtx(static_cast<size_t>(std::max(0, n_in)) * std::max(0, n_in), 0.0),
      sum_sq(std::max(0, n_in), 0.0),
      sum_abs(std::max(0, n_in), 0.0) {}

void CalibStats::Accumulate(const float* x, int rows, int ld) {
  if (rows <= 0 || n <= 0) return;
  // Chunks of rows converted to fp64, then xtx += X^T X (dsyrk on the upper triangle).
  constexpr int kChunk = 256;
  std::vector<double> buf(static_cast<size_t>(std::min(rows, kChunk)) * n);
  for (int t0 = 0; t0 < rows; t0 += kChunk) {
    const int t1 = std::min(rows, t0 + kChunk);
    const int cnt = t1 - t0;
    for (int t = t0; t < t1; ++t) {
      const float* xr = x + static_cast<size_t>(t) * ld;
      double* br = buf.data() + static_cast<size_t>(t - t0) * n;
      for (int j = 0; j < n; ++j) {
        const double v = xr[j];
        br[j] = v;
        sum_sq[j] += v * v;
        sum_abs[j] += std::fabs(v);
      }
    }
    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, n, cnt, 1.0, buf.data(), n, 1.0, xtx.data(), n);
  }
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < i; ++j) xtx[static_cast<size_t>(i) * n + j] = xtx[static_cast<size_t>(j) * n + i];
  count += rows;
}

}  // namespace eora::compress
