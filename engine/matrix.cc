#include "engine/matrix.h"

#include <algorithm>
#include <cmath>

#include "engine/thread_pool.h"

namespace eora {

void QuantizedActivations::Quantize(const float* x, int rows, int c, int ldx) {
  n = rows;
  cols = c;
  padded_cols = (c + kQBlock - 1) / kQBlock * kQBlock;
  const int nb = padded_cols / kQBlock;
  q.assign(static_cast<size_t>(n) * padded_cols, 0);
  scale.assign(static_cast<size_t>(n) * nb, 0.f);
  sum.assign(static_cast<size_t>(n) * nb, 0.f);
  for (int t = 0; t < n; ++t) {
    const float* xr = x + static_cast<size_t>(t) * ldx;
    int8_t* qr = q.data() + static_cast<size_t>(t) * padded_cols;
    for (int b = 0; b < nb; ++b) {
      const int k0 = b * kQBlock;
      const int k1 = std::min(c, k0 + kQBlock);
      float amax = 0.f;
      for (int k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(xr[k]));
      const float d = amax / 127.f;
      const float id = d > 0 ? 1.f / d : 0.f;
      int s = 0;
      for (int k = k0; k < k1; ++k) {
        const int v = static_cast<int>(std::nearbyint(xr[k] * id));
        qr[k] = static_cast<int8_t>(v);
        s += v;
      }
      scale[static_cast<size_t>(t) * nb + b] = d;
      sum[static_cast<size_t>(t) * nb + b] = d * static_cast<float>(s);
    }
  }
}

void Matrix::AccumulateTransposed(const float* u, int ldu, int n, int r, float* y, int ldy, int c0,
                                  int c1) const {
  std::vector<float> row(cols());
  for (int j = 0; j < r; ++j) {
    DequantizeRow(j, row.data());
    for (int t = 0; t < n; ++t) {
      const float uj = u[static_cast<size_t>(t) * ldu + j];
      float* yt = y + static_cast<size_t>(t) * ldy;
      for (int c = c0; c < c1; ++c) yt[c] += uj * row[c];
    }
  }
}

std::vector<float> Matrix::Dequantize() const {
  std::vector<float> out(static_cast<size_t>(rows()) * cols());
  for (int r = 0; r < rows(); ++r) DequantizeRow(r, out.data() + static_cast<size_t>(r) * cols());
  return out;
}

void MatMul(const Matrix& w, const float* x, int n, int ldx, float* y, int ldy, ThreadPool* pool,
            MatMulScratch* scratch) {
  MatMulShared({{&w, y, ldy}}, x, n, ldx, pool, scratch);
}

void MatMulShared(const std::vector<MatMulOutput>& outs, const float* x, int n, int ldx,
                  ThreadPool* pool, MatMulScratch* scratch) {
  if (outs.empty() || n == 0) return;
  MatMulInput in;
  in.x = x;
  in.n = n;
  in.ldx = ldx;
  bool want_q = false;
  int align = 1;
  for (const auto& o : outs) {
    want_q |= o.w->WantsQuantizedInput();
    align = std::max(align, o.w->RowAlignment());
  }
  if (want_q) {
    scratch->qx.Quantize(x, n, outs[0].w->cols(), ldx);
    in.qx = &scratch->qx;
  }
  // Concatenate the row spaces of all outputs, each padded to the alignment.
  std::vector<int64_t> starts;
  int64_t total = 0;
  for (const auto& o : outs) {
    starts.push_back(total);
    total += (o.w->rows() + align - 1) / align * align;
  }
  auto run = [&](int, int64_t b, int64_t e) {
    for (size_t i = 0; i < outs.size(); ++i) {
      const int64_t s = starts[i];
      const int64_t lo = std::max<int64_t>(b, s);
      const int64_t hi = std::min<int64_t>(e, s + outs[i].w->rows());
      if (lo < hi)
        outs[i].w->MatMulRows(in, outs[i].y, outs[i].ldy, static_cast<int>(lo - s),
                              static_cast<int>(hi - s));
    }
  };
  if (pool == nullptr) {
    run(0, 0, total);
  } else {
    pool->ParallelFor(total, align, run);
  }
}

}  // namespace eora
