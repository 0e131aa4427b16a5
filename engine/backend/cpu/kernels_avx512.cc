// AVX-512 (F + BW + VL + DQ) kernels: the dense F32 product. Everything else is
// inherited from the AVX2 table (every AVX-512 CPU has AVX2); an entry is
// overridden here only where it measured faster (docs/performance.md). Compiled
// with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx2 -mfma -mf16c; only reached
// through the dispatch table on CPUs that have them. Internal linkage, raw
// pointers only (see kernels.h).
// GCC 12 reports false -Wmaybe-uninitialized inside its AVX-512 headers
// (_mm512_undefined_* operands of inserts/converts).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "engine/backend/cpu/kernels.h"

namespace eora::cpu {
namespace {

// Dense F32, one activation row: one weight row at a time, 16 lanes, masked tail.
void DenseGemvF32(const float* w, int cols, int r0, int r1, const float* x, float* y) {
  const int tail = cols % 16;
  const __mmask16 mask = static_cast<__mmask16>((1u << tail) - 1u);
  for (int r = r0; r < r1; ++r) {
    const float* wr = w + static_cast<size_t>(r) * cols;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    int k = 0;
    for (; k + 32 <= cols; k += 32) {
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(wr + k), _mm512_loadu_ps(x + k), a0);
      a1 = _mm512_fmadd_ps(_mm512_loadu_ps(wr + k + 16), _mm512_loadu_ps(x + k + 16), a1);
    }
    if (k + 16 <= cols) {
      a0 = _mm512_fmadd_ps(_mm512_loadu_ps(wr + k), _mm512_loadu_ps(x + k), a0);
      k += 16;
    }
    if (tail != 0) a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, wr + k), _mm512_maskz_loadu_ps(mask, x + k), a1);
    y[r] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
  }
}

// In-register transpose: lane j of r[i] moves to lane i of r[j].
inline void Transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {  // 128-bit blocks: a0 b0 a1 b1 / a2 b2 a3 b3
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {  // block L of r[4i + j]: rows 4i..4i+3 of column 4L + j
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int j = 0; j < 4; ++j) {
    t[j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);        // rows 0-7: columns j, 8+j
    t[4 + j] = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);    // rows 0-7: columns 4+j, 12+j
    t[8 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);   // rows 8-15
    t[12 + j] = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
  }
  for (int j = 0; j < 4; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
    r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);
    r[4 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0x88);
    r[12 + j] = _mm512_shuffle_f32x4(t[4 + j], t[12 + j], 0xDD);
  }
}

// xt[k][j] = x[j][k] for j < m (zero for m <= j < 16), k < cols.
void TransposeActivations(const float* x, int ldx, int m, int cols, float* xt) {
  const __m512 zero = _mm512_setzero_ps();
  int k = 0;
  for (; k + 16 <= cols; k += 16) {
    __m512 r[16];
    for (int j = 0; j < 16; ++j) r[j] = j < m ? _mm512_loadu_ps(x + static_cast<size_t>(j) * ldx + k) : zero;
    Transpose16(r);
    for (int i = 0; i < 16; ++i) _mm512_storeu_ps(xt + static_cast<size_t>(k + i) * 16, r[i]);
  }
  for (; k < cols; ++k)
    for (int j = 0; j < 16; ++j) xt[static_cast<size_t>(k) * 16 + j] = j < m ? x[static_cast<size_t>(j) * ldx + k] : 0.f;
}

// Up to 16 weight rows [r, r + nrows) against 16 transposed activation rows:
// each k broadcasts one weight per row against a vector of 16 activations (no
// horizontal sums), then one 16x16 transpose turns the accumulators into rows
// of y. A full tile addresses its rows in pairs (p, p + cols) from 8 pointers so
// that they stay in general registers; a partial tile repeats its last row and
// masks the extra columns out of the stores.
template <bool kFull>
void DenseTile16(const float* w, int cols, int r, int nrows, const float* xt, int m, float* y, int ldy) {
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  if constexpr (kFull) {
    const size_t s = static_cast<size_t>(cols);
    const float* p[8];
    for (int j = 0; j < 8; ++j) p[j] = w + static_cast<size_t>(r + 2 * j) * s;
    for (int k = 0; k < cols; ++k) {
      const __m512 xv = _mm512_loadu_ps(xt + static_cast<size_t>(k) * 16);
      for (int j = 0; j < 8; ++j) {
        acc[2 * j] = _mm512_fmadd_ps(_mm512_set1_ps(p[j][0]), xv, acc[2 * j]);
        acc[2 * j + 1] = _mm512_fmadd_ps(_mm512_set1_ps(p[j][s]), xv, acc[2 * j + 1]);
        ++p[j];
      }
    }
  } else {
    const float* wr[16];
    for (int i = 0; i < 16; ++i) wr[i] = w + static_cast<size_t>(r + (i < nrows ? i : nrows - 1)) * cols;
    for (int k = 0; k < cols; ++k) {
      const __m512 xv = _mm512_loadu_ps(xt + static_cast<size_t>(k) * 16);
      for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(wr[i][k]), xv, acc[i]);
    }
  }
  Transpose16(acc);
  const __mmask16 mask = static_cast<__mmask16>(nrows >= 16 ? 0xFFFFu : (1u << nrows) - 1u);
  for (int t = 0; t < m; ++t) _mm512_mask_storeu_ps(y + static_cast<size_t>(t) * ldy + r, mask, acc[t]);
}

// Pair layout for up to 8 activation rows: xp[kk][2j + e] = x[j][2kk + e] for
// j < m (zero for m <= j < 8 and past cols), kk < ceil(cols / 2). An 8x8
// transpose of 64-bit pairs per 16 columns.
void PairActivations(const float* x, int ldx, int m, int cols, float* xp) {
  const __m512d zero = _mm512_setzero_pd();
  int k = 0;
  for (; k + 16 <= cols; k += 16) {
    __m512d r[8], t[8];
    for (int j = 0; j < 8; ++j) r[j] = j < m ? _mm512_castps_pd(_mm512_loadu_ps(x + static_cast<size_t>(j) * ldx + k)) : zero;
    for (int i = 0; i < 4; ++i) {  // 128-bit lane L: pairs 2L (t[2i]) and 2L+1 (t[2i+1]) of rows 2i, 2i+1
      t[2 * i] = _mm512_unpacklo_pd(r[2 * i], r[2 * i + 1]);
      t[2 * i + 1] = _mm512_unpackhi_pd(r[2 * i], r[2 * i + 1]);
    }
    for (int e = 0; e < 2; ++e) {
      const __m512d slo = _mm512_shuffle_f64x2(t[e], t[2 + e], 0x44), shi = _mm512_shuffle_f64x2(t[e], t[2 + e], 0xEE);
      const __m512d qlo = _mm512_shuffle_f64x2(t[4 + e], t[6 + e], 0x44), qhi = _mm512_shuffle_f64x2(t[4 + e], t[6 + e], 0xEE);
      float* out = xp + static_cast<size_t>(k / 2) * 16;
      _mm512_storeu_ps(out + (0 + e) * 16, _mm512_castpd_ps(_mm512_shuffle_f64x2(slo, qlo, 0x88)));
      _mm512_storeu_ps(out + (2 + e) * 16, _mm512_castpd_ps(_mm512_shuffle_f64x2(slo, qlo, 0xDD)));
      _mm512_storeu_ps(out + (4 + e) * 16, _mm512_castpd_ps(_mm512_shuffle_f64x2(shi, qhi, 0x88)));
      _mm512_storeu_ps(out + (6 + e) * 16, _mm512_castpd_ps(_mm512_shuffle_f64x2(shi, qhi, 0xDD)));
    }
  }
  for (; k < cols; k += 2)
    for (int j = 0; j < 8; ++j)
      for (int e = 0; e < 2; ++e)
        xp[static_cast<size_t>(k / 2) * 16 + 2 * j + e] =
            j < m && k + e < cols ? x[static_cast<size_t>(j) * ldx + k + e] : 0.f;
}

inline __m512 BroadcastPair(const float* p) { return _mm512_castpd_ps(_mm512_broadcastsd_pd(_mm_load_sd(reinterpret_cast<const double*>(p)))); }

// Up to 16 weight rows against up to 8 activation rows in the pair layout: each
// step multiplies a broadcast pair of weights (W[i][k], W[i][k+1]) with the
// pairs of the 8 rows, so all 16 lanes do useful work; lanes 2j and 2j+1 then
// hold the even-k and odd-k partial sums of row j. An odd last column is one
// broadcast weight against the zero-padded last pair.
template <bool kFull>
void DenseTilePairs(const float* w, int cols, int r, int nrows, const float* xp, int m, float* y, int ldy) {
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  const int pairs = cols / 2;
  const float* wr[16];
  for (int i = 0; i < 16; ++i) wr[i] = w + static_cast<size_t>(r + (i < nrows ? i : nrows - 1)) * cols;
  if constexpr (kFull) {
    const size_t s = static_cast<size_t>(cols);
    const float* p[8];
    for (int j = 0; j < 8; ++j) p[j] = wr[2 * j];
    for (int kk = 0; kk < pairs; ++kk) {
      const __m512 xv = _mm512_loadu_ps(xp + static_cast<size_t>(kk) * 16);
      for (int j = 0; j < 8; ++j) {
        acc[2 * j] = _mm512_fmadd_ps(BroadcastPair(p[j]), xv, acc[2 * j]);
        acc[2 * j + 1] = _mm512_fmadd_ps(BroadcastPair(p[j] + s), xv, acc[2 * j + 1]);
        p[j] += 2;
      }
    }
  } else {
    for (int kk = 0; kk < pairs; ++kk) {
      const __m512 xv = _mm512_loadu_ps(xp + static_cast<size_t>(kk) * 16);
      for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(BroadcastPair(wr[i] + 2 * kk), xv, acc[i]);
    }
  }
  if (cols % 2 != 0) {
    const __m512 xv = _mm512_loadu_ps(xp + static_cast<size_t>(pairs) * 16);
    for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(wr[i][cols - 1]), xv, acc[i]);
  }
  Transpose16(acc);
  const __mmask16 mask = static_cast<__mmask16>(nrows >= 16 ? 0xFFFFu : (1u << nrows) - 1u);
  for (int t = 0; t < m; ++t)
    _mm512_mask_storeu_ps(y + static_cast<size_t>(t) * ldy + r, mask, _mm512_add_ps(acc[2 * t], acc[2 * t + 1]));
}

// Products of 2..4 activation rows keep the AVX2 register tiles.
void (*g_avx2_dense_f32)(const void*, int, int, int, const float*, int, int, float*, int) = nullptr;

// Activation rows per call at or above which the 16-lane tiles are used (the pair
// layout up to 8 rows, the transposed one above).
constexpr int kTransposedMinRows = 5;

void DenseGemmF32(const void* wp, int cols, int r0, int r1, const float* x, int n, int ldx, float* y, int ldy) {
  const float* w = static_cast<const float*>(wp);
  if (n == 1) return DenseGemvF32(w, cols, r0, r1, x, y);
  if (n < kTransposedMinRows) return g_avx2_dense_f32(wp, cols, r0, r1, x, n, ldx, y, ldy);
  float* xt = ScratchFloats(static_cast<size_t>(cols + 1) * 16);
  for (int t0 = 0; t0 < n; t0 += 16) {
    const int m = n - t0 < 16 ? n - t0 : 16;
    float* yt = y + static_cast<size_t>(t0) * ldy;
    if (m <= 8) {
      PairActivations(x + static_cast<size_t>(t0) * ldx, ldx, m, cols, xt);
      int r = r0;
      for (; r + 16 <= r1; r += 16) DenseTilePairs<true>(w, cols, r, 16, xt, m, yt, ldy);
      if (r < r1) DenseTilePairs<false>(w, cols, r, r1 - r, xt, m, yt, ldy);
      continue;
    }
    TransposeActivations(x + static_cast<size_t>(t0) * ldx, ldx, m, cols, xt);
    int r = r0;
    for (; r + 16 <= r1; r += 16) DenseTile16<true>(w, cols, r, 16, xt, m, yt, ldy);
    if (r < r1) DenseTile16<false>(w, cols, r, r1 - r, xt, m, yt, ldy);
  }
}

}  // namespace

void FillAvx512Kernels(KernelTable* t) {
  g_avx2_dense_f32 = t->dense_gemm[kDenseF32];
  t->dense_gemm[kDenseF32] = DenseGemmF32;
}

}  // namespace eora::cpu
