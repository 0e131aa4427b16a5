// AVX-512 (F + BW + VL + DQ + VNNI + VBMI) and GFNI kernels: the dense F32 product (16x16
// register tiles) and the group-wise quantized products (two 32-code blocks per
// vector, vpdpbusd). Everything else is inherited from the AVX2 table (every
// AVX-512 CPU has AVX2); an entry is overridden here only where it measured faster
// (docs/performance.md). Compiled with the flags of those extensions (see
// engine/CMakeLists.txt); only reached through the dispatch table on CPUs that
// have all of them (CpuHasAvx512). Internal linkage, raw pointers only (see
// kernels.h).
// GCC 12 reports false -Wmaybe-uninitialized inside its AVX-512 headers
// (_mm512_undefined_* operands of inserts/converts).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "engine/backend/cpu/avx512_common.h"
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

// Quad layout for up to 4 activation rows: xq[kk][4j + e] = x[j][4kk + e] for
// j < m (zero for m <= j < 4 and past cols), kk < ceil(cols / 4).
void QuadActivations(const float* x, int ldx, int m, int cols, float* xq) {
  const int quads = cols / 4;
  for (int kk = 0; kk < quads; ++kk) {
    __m512 v = _mm512_setzero_ps();
    if (m > 0) v = _mm512_insertf32x4(v, _mm_loadu_ps(x + 4 * kk), 0);
    if (m > 1) v = _mm512_insertf32x4(v, _mm_loadu_ps(x + static_cast<size_t>(ldx) + 4 * kk), 1);
    if (m > 2) v = _mm512_insertf32x4(v, _mm_loadu_ps(x + 2 * static_cast<size_t>(ldx) + 4 * kk), 2);
    if (m > 3) v = _mm512_insertf32x4(v, _mm_loadu_ps(x + 3 * static_cast<size_t>(ldx) + 4 * kk), 3);
    _mm512_storeu_ps(xq + static_cast<size_t>(kk) * 16, v);
  }
  if (cols % 4 != 0)
    for (int j = 0; j < 4; ++j)
      for (int e = 0; e < 4; ++e)
        xq[static_cast<size_t>(quads) * 16 + 4 * j + e] =
            j < m && 4 * quads + e < cols ? x[static_cast<size_t>(j) * ldx + 4 * quads + e] : 0.f;
}

// kG consecutive weights of a row (W[i][k..k+kG-1]) in every kG-lane group; the
// first `valid` of them from memory, the rest zero (a row's last, partial group).
template <int kG>
inline __m512 BroadcastGroup(const float* p, int valid = kG) {
  if constexpr (kG == 2) {
    if (valid == 2) return _mm512_castpd_ps(_mm512_broadcastsd_pd(_mm_load_sd(reinterpret_cast<const double*>(p))));
    return _mm512_broadcast_f32x2(_mm_maskz_loadu_ps(static_cast<__mmask8>((1u << valid) - 1u), p));
  } else {
    static_assert(kG == 4);
    if (valid == 4) return _mm512_broadcast_f32x4(_mm_loadu_ps(p));
    return _mm512_broadcast_f32x4(_mm_maskz_loadu_ps(static_cast<__mmask8>((1u << valid) - 1u), p));
  }
}

// Up to 16 weight rows against up to 16 / kG activation rows in the pair (kG = 2,
// PairActivations) or quad (kG = 4, QuadActivations) layout: each step multiplies
// kG broadcast weights of each row with the groups of the activation rows, so all
// 16 lanes do useful work (pairs for 5-8 activation rows, quads for up to 4);
// lanes kG*j..kG*j+kG-1 then hold row j's partial sums. A partial last group is
// zero-padded on both sides.
template <int kG, bool kFull>
void DenseTileGroups(const float* w, int cols, int r, int nrows, const float* xg, int m, float* y, int ldy) {
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  const int groups = cols / kG;
  const float* wr[16];
  for (int i = 0; i < 16; ++i) wr[i] = w + static_cast<size_t>(r + (i < nrows ? i : nrows - 1)) * cols;
  if constexpr (kFull) {
    // Eight row pointers and one stride (the row after each): fewer registers.
    const size_t s = static_cast<size_t>(cols);
    const float* p[8];
    for (int j = 0; j < 8; ++j) p[j] = wr[2 * j];
    for (int kk = 0; kk < groups; ++kk) {
      const __m512 xv = _mm512_loadu_ps(xg + static_cast<size_t>(kk) * 16);
      for (int j = 0; j < 8; ++j) {
        acc[2 * j] = _mm512_fmadd_ps(BroadcastGroup<kG>(p[j]), xv, acc[2 * j]);
        acc[2 * j + 1] = _mm512_fmadd_ps(BroadcastGroup<kG>(p[j] + s), xv, acc[2 * j + 1]);
        p[j] += kG;
      }
    }
  } else {
    for (int kk = 0; kk < groups; ++kk) {
      const __m512 xv = _mm512_loadu_ps(xg + static_cast<size_t>(kk) * 16);
      for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(BroadcastGroup<kG>(wr[i] + kG * kk), xv, acc[i]);
    }
  }
  if (cols % kG != 0) {
    const __m512 xv = _mm512_loadu_ps(xg + static_cast<size_t>(groups) * 16);
    for (int i = 0; i < 16; ++i)
      acc[i] = _mm512_fmadd_ps(BroadcastGroup<kG>(wr[i] + kG * groups, cols % kG), xv, acc[i]);
  }
  Transpose16(acc);
  const __mmask16 mask = static_cast<__mmask16>(nrows >= 16 ? 0xFFFFu : (1u << nrows) - 1u);
  for (int t = 0; t < m; ++t) {
    __m512 sum = _mm512_add_ps(acc[kG * t], acc[kG * t + 1]);
    if constexpr (kG == 4) sum = _mm512_add_ps(sum, _mm512_add_ps(acc[kG * t + 2], acc[kG * t + 3]));
    _mm512_mask_storeu_ps(y + static_cast<size_t>(t) * ldy + r, mask, sum);
  }
}

// Products of 2..4 activation rows keep the AVX2 register tiles.
void (*g_avx2_dense_f32)(const void*, int, int, int, const float*, int, int, float*, int) = nullptr;
void (*g_avx2_dense_half[3])(const void*, int, int, int, const float*, int, int, float*, int) = {};

// Dense F16, one activation row (decode): one weight row at a time, 32 columns per
// step, and a software prefetch into L2 running kF16PrefetchAhead bytes in front of
// the loads. Decode streams the F16 weights from DRAM once per token and is
// memory-bound; on the Xeon of docs/performance.md the hardware prefetchers alone
// read ~20 GB/s with 2 threads, with this ~25 GB/s (eora-membw: 25-27 plain,
// 28-31 with the same prefetch).
constexpr size_t kF16PrefetchAhead = 16384;

inline __m512 CvtF16x16(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

void DenseGemvF16(const uint16_t* w, int cols, int r0, int r1, const float* x, float* y) {
  const size_t row_bytes = static_cast<size_t>(cols) * 2;
  const char* base = reinterpret_cast<const char*>(w);
  const char* end = base + static_cast<size_t>(r1) * row_bytes;
  const char* pf = base + static_cast<size_t>(r0) * row_bytes;
  for (const char* p0 = pf + kF16PrefetchAhead; pf < p0 && pf < end; pf += 64) _mm_prefetch(pf, _MM_HINT_T1);
  const int tail = cols % 16;
  const __mmask16 mask = static_cast<__mmask16>((1u << tail) - 1u);
  for (int r = r0; r < r1; ++r) {
    const uint16_t* wr = w + static_cast<size_t>(r) * cols;
    const char* target = reinterpret_cast<const char*>(wr + cols) + kF16PrefetchAhead;
    for (; pf < target && pf < end; pf += 64) _mm_prefetch(pf, _MM_HINT_T1);
    // Four accumulators: with two, the FMA latency chain held the read rate back
    // (2-thread stream over 537 MB on huge pages: 29.7 -> 32.5 GB/s).
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(),
           a3 = _mm512_setzero_ps();
    int k = 0;
    for (; k + 64 <= cols; k += 64) {
      a0 = _mm512_fmadd_ps(CvtF16x16(wr + k), _mm512_loadu_ps(x + k), a0);
      a1 = _mm512_fmadd_ps(CvtF16x16(wr + k + 16), _mm512_loadu_ps(x + k + 16), a1);
      a2 = _mm512_fmadd_ps(CvtF16x16(wr + k + 32), _mm512_loadu_ps(x + k + 32), a2);
      a3 = _mm512_fmadd_ps(CvtF16x16(wr + k + 48), _mm512_loadu_ps(x + k + 48), a3);
    }
    for (; k + 16 <= cols; k += 16) a0 = _mm512_fmadd_ps(CvtF16x16(wr + k), _mm512_loadu_ps(x + k), a0);
    if (tail != 0)
      a1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, wr + k)), _mm512_maskz_loadu_ps(mask, x + k), a1);
    y[r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
  }
}


// F16 / BF16 weights: activation rows per call at or above which the 16-lane
// tiles are used on converted weights (the pair layout up to 8 rows, the
// transposed one above); fewer keep the AVX2 tiles.
constexpr int kTransposedMinRows = 5;

// Activation rows are taken 16 at a time (transposed tiles); 13-15 left over take
// one transposed tile, 9-12 take 8 in pair tiles and the rest as below, 6-8 one
// pair tile, 5 a quad tile and a GEMV, 2-4 a quad tile, 1 the GEMV: a 16-lane
// tile costs the same for 9 rows as for 16, a pair tile the same for 1 row as
// for 8, a quad tile the same for 1 as for 4. (stories260K, 1 thread, decode at
// context 64, alternating runs: batch 9 44.4k -> 49.3k tok/s with the GEMV;
// batch 2 / 3 / 4 37.2k / 40.4k / 48.7k -> 39.0k / 46.8k / 51.9k with quad
// tiles instead of the AVX2 tiles, batch 5 46.9k -> 48.1k as 4 + 1; splitting 10-12 rows as 8 plus the AVX2 tiles
// was no faster than one transposed tile.)
void DenseGemmF32(const void* wp, int cols, int r0, int r1, const float* x, int n, int ldx, float* y, int ldy) {
  const float* w = static_cast<const float*>(wp);
  if (n == 1) return DenseGemvF32(w, cols, r0, r1, x, y);
  float* xt = ScratchFloats(static_cast<size_t>(cols + 1) * 16);
  for (int t0 = 0, m = 0; t0 < n; t0 += m) {
    const int left = n - t0;
    // A cheap cover of what is left, in units of a pair tile: transposed 2, pair
    // 1, quad 1/2, GEMV ~1/8 (5 = 4 + 1, 9 = 8 + 1, 12 = 8 + 4; 13 as 8 + 4 + 1
    // measured ~2% slower than one transposed tile).
    m = left >= 16 ? 16 : left >= 13 ? left : left >= 9 ? 8 : left >= 6 ? left : left == 5 ? 4 : left;
    float* yt = y + static_cast<size_t>(t0) * ldy;
    const float* xs = x + static_cast<size_t>(t0) * ldx;
    if (m == 1) {
      DenseGemvF32(w, cols, r0, r1, xs, yt);
      continue;
    }
    if (m <= 4) {
      QuadActivations(xs, ldx, m, cols, xt);
      int r = r0;
      for (; r + 16 <= r1; r += 16) DenseTileGroups<4, true>(w, cols, r, 16, xt, m, yt, ldy);
      if (r < r1) DenseTileGroups<4, false>(w, cols, r, r1 - r, xt, m, yt, ldy);
      continue;
    }
    if (m <= 8) {
      PairActivations(x + static_cast<size_t>(t0) * ldx, ldx, m, cols, xt);
      int r = r0;
      for (; r + 16 <= r1; r += 16) DenseTileGroups<2, true>(w, cols, r, 16, xt, m, yt, ldy);
      if (r < r1) DenseTileGroups<2, false>(w, cols, r, r1 - r, xt, m, yt, ldy);
      continue;
    }
    TransposeActivations(x + static_cast<size_t>(t0) * ldx, ldx, m, cols, xt);
    int r = r0;
    for (; r + 16 <= r1; r += 16) DenseTile16<true>(w, cols, r, 16, xt, m, yt, ldy);
    if (r < r1) DenseTile16<false>(w, cols, r, r1 - r, xt, m, yt, ldy);
  }
}

// Dense F16 / BF16: one activation row streams the weights (DenseGemvF16; BF16
// keeps the AVX2 GEMV); 2-4 rows keep the AVX2 tiles; 5 or more convert each tile
// of 16 weight rows to F32 once (exact) and run the F32 tiles on it against all
// activation blocks, so a conversion serves every activation row.
template <int kType>
void DenseGemmHalf(const void* wp, int cols, int r0, int r1, const float* x, int n, int ldx, float* y, int ldy) {
  static_assert(kType == kDenseF16 || kType == kDenseBF16);
  if constexpr (kType == kDenseF16) {
    if (n == 1) return DenseGemvF16(static_cast<const uint16_t*>(wp), cols, r0, r1, x, y);
  }
  if (n < kTransposedMinRows) return g_avx2_dense_half[kType](wp, cols, r0, r1, x, n, ldx, y, ldy);
  const int nblk = (n + 15) / 16;
  const size_t xsz = static_cast<size_t>(cols + 1) * 16;
  float* xt = ScratchFloats(xsz * nblk, 0);
  for (int b = 0; b < nblk; ++b) {
    const int m = n - 16 * b < 16 ? n - 16 * b : 16;
    const float* xb = x + static_cast<size_t>(16 * b) * ldx;
    if (m <= 8) PairActivations(xb, ldx, m, cols, xt + b * xsz);
    else TransposeActivations(xb, ldx, m, cols, xt + b * xsz);
  }
  float* wt = ScratchFloats(static_cast<size_t>(cols) * 16 + 16, 3);
  const uint16_t* w = static_cast<const uint16_t*>(wp);
  const int tail = cols % 16;
  const __mmask16 tmask = static_cast<__mmask16>((1u << tail) - 1u);
  auto to_f32 = [](__m256i h) {
    if constexpr (kType == kDenseF16) return _mm512_cvtph_ps(h);
    else return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  };
  for (int r = r0; r < r1; r += 16) {
    const int nrows = r1 - r < 16 ? r1 - r : 16;
    for (int i = 0; i < nrows; ++i) {
      const uint16_t* src = w + static_cast<size_t>(r + i) * cols;
      float* dst = wt + static_cast<size_t>(i) * cols;
      int k = 0;
      for (; k + 16 <= cols; k += 16)
        _mm512_storeu_ps(dst + k, to_f32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + k))));
      if (tail != 0) _mm512_mask_storeu_ps(dst + k, tmask, to_f32(_mm256_maskz_loadu_epi16(tmask, src + k)));
    }
    for (int b = 0; b < nblk; ++b) {
      const int m = n - 16 * b < 16 ? n - 16 * b : 16;
      float* yt = y + static_cast<size_t>(16 * b) * ldy + r;
      const float* xb = xt + b * xsz;
      if (m <= 8) {
        if (nrows == 16) DenseTileGroups<2, true>(wt, cols, 0, 16, xb, m, yt, ldy);
        else DenseTileGroups<2, false>(wt, cols, 0, nrows, xb, m, yt, ldy);
      } else {
        if (nrows == 16) DenseTile16<true>(wt, cols, 0, 16, xb, m, yt, ldy);
        else DenseTile16<false>(wt, cols, 0, nrows, xb, m, yt, ldy);
      }
    }
  }
}

// ---- Group-wise quantized, AVX-512 VNNI ------------------------------------------
// Two 32-code blocks per 512-bit vector; vpdpbusd does the unsigned-code x int8
// products and their sums of 4 in one instruction. Needs blocks paired with one
// scale: the activation scale shared by aligned pairs (x.span even) and the weight
// group too (bpg even, or one group per row); other layouts keep the AVX2 kernels.

// Sums of 16 vectors in a tree of 15 adds: lane 4L + m of the result is the sum
// of v[4m + L] (the caller orders its inputs for that).
inline __m512 Hsum16(const __m512 v[16]) {
  __m512 b[8], c[4], d[2];
  for (int i = 0; i < 8; ++i)  // 256-bit halves: 8 partials of v[2i], of v[2i+1]
    b[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE));
  for (int i = 0; i < 4; ++i)  // 128-bit lane L: 4 partials of v[4i + L]
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
  for (int i = 0; i < 2; ++i)  // lane L: 2 partials of v[8i + L], of v[8i + 4 + L]
    d[i] = _mm512_add_ps(_mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0x88),
                         _mm512_shuffle_ps(c[2 * i], c[2 * i + 1], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], 0x88), _mm512_shuffle_ps(d[0], d[1], 0xDD));
}

// Pairs of blocks per chunk of combined scales.
constexpr int kPairChunk = 16;

// kR weight rows x kT activation rows: y = sum over block pairs of
// scale_g * d_pair * dot(codes, q) + sum_g min_g * gsum_g. The combined scales of
// a chunk of 16 pairs are formed as vectors first, then each pair's product
// accumulates with one broadcast FMA.
template <int kBits, int kR, int kT>
void QuantTileVnni(const QuantView& w, const QActView& x, float* y, int ldy, int r, int t0) {
  constexpr int kBB = QuantBlockBytes(kBits);
  const int nb = w.blocks, np = nb / 2;
  const uint8_t* rows[kR];
  const uint16_t* scs[kR];
  EORA_UNROLL for (int i = 0; i < kR; ++i) {
    rows[i] = w.codes + static_cast<size_t>(r + i) * w.row_bytes;
    scs[i] = w.scale + static_cast<size_t>(r + i) * w.groups;
  }
  const int8_t* q[kT];
  const float* d[kT];
  EORA_UNROLL for (int t = 0; t < kT; ++t) {
    q[t] = x.q + static_cast<size_t>(t0 + t) * x.padded_cols;
    d[t] = x.d + static_cast<size_t>(t0 + t) * x.nb;
  }
  __m512 acc[kR][kT];
  EORA_UNROLL for (int i = 0; i < kR; ++i)
    EORA_UNROLL for (int t = 0; t < kT; ++t) acc[i][t] = _mm512_setzero_ps();
  alignas(64) float sc[kR][kT][kPairChunk];
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  for (int p0 = 0; p0 < np; p0 += kPairChunk) {
    const int cnt = np - p0 < kPairChunk ? np - p0 : kPairChunk;
    // d of each pair (its first block), per activation row.
    __m512 dp[kT];
    const int nbl = 2 * cnt;  // blocks in the chunk
    const __mmask16 mlo = static_cast<__mmask16>(nbl >= 16 ? 0xFFFFu : (1u << nbl) - 1u);
    const __mmask16 mhi = static_cast<__mmask16>(nbl <= 16 ? 0u : nbl >= 32 ? 0xFFFFu : (1u << (nbl - 16)) - 1u);
    EORA_UNROLL for (int t = 0; t < kT; ++t) {
      const float* dd = d[t] + 2 * p0;
      dp[t] = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(mlo, dd), even, _mm512_maskz_loadu_ps(mhi, dd + 16));
    }
    const __mmask16 mcnt = static_cast<__mmask16>(cnt >= 16 ? 0xFFFFu : (1u << cnt) - 1u);
    EORA_UNROLL for (int i = 0; i < kR; ++i) {
      // Weight scale of each pair: one group per pair (group 64), one group per
      // row, or a scalar walk over the groups.
      __m512 spv;
      if (w.bpg == 2) {
        spv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mcnt, scs[i] + p0));
      } else if (w.groups == 1) {
        spv = _mm512_set1_ps(HalfToFloat(scs[i][0]));
      } else {
        alignas(64) float sp[kPairChunk] = {};
        const int ppg = w.bpg / 2;  // pairs per group
        int g = p0 / ppg, left = ppg - p0 % ppg;
        for (int j = 0; j < cnt; ++j) {
          sp[j] = HalfToFloat(scs[i][g]);
          if (--left == 0) {
            ++g;
            left = ppg;
          }
        }
        spv = _mm512_load_ps(sp);
      }
      EORA_UNROLL for (int t = 0; t < kT; ++t) _mm512_store_ps(sc[i][t], _mm512_mul_ps(spv, dp[t]));
    }
    for (int j = 0; j < cnt; ++j) {
      const size_t b = 2 * static_cast<size_t>(p0 + j);
      __m512i wv[kR];
      EORA_UNROLL for (int i = 0; i < kR; ++i) wv[i] = UnpackPair<kBits>(rows[i] + b * kBB);
      EORA_UNROLL for (int t = 0; t < kT; ++t) {
        const __m512i qv = _mm512_loadu_si512(q[t] + 32 * b);
        EORA_UNROLL for (int i = 0; i < kR; ++i) {
          const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv[i], qv);
          acc[i][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(sc[i][t][j]), acc[i][t]);
        }
      }
    }
  }
  float tail[kR][kT] = {};
  if (nb % 2 != 0) {
    const int b = nb - 1;
    EORA_UNROLL for (int i = 0; i < kR; ++i) {
      const __m256i wv = UnpackOne<kBits>(rows[i] + static_cast<size_t>(b) * kBB);
      const float s = HalfToFloat(scs[i][b / w.bpg]);
      EORA_UNROLL for (int t = 0; t < kT; ++t) {
        const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q[t] + 32 * b));
        const __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wv, qv);
        const __m256 f = _mm256_cvtepi32_ps(dot);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(f), _mm256_extractf128_ps(f, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        tail[i][t] = _mm_cvtss_f32(h) * (s * d[t][b]);
      }
    }
  }
  // The min term joins the accumulators (16 groups per vector), then one
  // transposing reduction sums all kR x kT of them.
  const uint16_t* mins[kR];
  EORA_UNROLL for (int i = 0; i < kR; ++i) mins[i] = w.min + static_cast<size_t>(r + i) * w.groups;
  for (int g0 = 0; g0 < w.groups; g0 += 16) {
    const int gc = w.groups - g0 < 16 ? w.groups - g0 : 16;
    const __mmask16 m = static_cast<__mmask16>(gc >= 16 ? 0xFFFFu : (1u << gc) - 1u);
    __m512 mv[kR];
    EORA_UNROLL for (int i = 0; i < kR; ++i) mv[i] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, mins[i] + g0));
    EORA_UNROLL for (int t = 0; t < kT; ++t) {
      const __m512 gv = _mm512_maskz_loadu_ps(m, x.gsum + static_cast<size_t>(t0 + t) * x.groups + g0);
      EORA_UNROLL for (int i = 0; i < kR; ++i) acc[i][t] = _mm512_fmadd_ps(mv[i], gv, acc[i][t]);
    }
  }
  static_assert(kR * kT <= 16);
  __m512 v[16];
  EORA_UNROLL for (int k = 0; k < 16; ++k) {
    const int src = 4 * (k % 4) + k / 4;  // see Hsum16
    v[k] = src < kR * kT ? acc[src / kT][src % kT] : _mm512_setzero_ps();
  }
  alignas(64) float sums[16];
  _mm512_store_ps(sums, Hsum16(v));
  EORA_UNROLL for (int i = 0; i < kR; ++i)
    EORA_UNROLL for (int t = 0; t < kT; ++t) y[static_cast<size_t>(t0 + t) * ldy + r + i] = sums[i * kT + t] + tail[i][t];
}

template <int kBits, int kR>
void QuantRowsVnni(const QuantView& w, const QActView& x, float* y, int ldy, int r) {
  int t = 0;
  for (; t + 4 <= x.n; t += 4) QuantTileVnni<kBits, kR, 4>(w, x, y, ldy, r, t);
  switch (x.n - t) {
    case 3: QuantTileVnni<kBits, kR, 3>(w, x, y, ldy, r, t); break;
    case 2: QuantTileVnni<kBits, kR, 2>(w, x, y, ldy, r, t); break;
    case 1: QuantTileVnni<kBits, kR, 1>(w, x, y, ldy, r, t); break;
    default: break;
  }
}

// The AVX2 kernels, for layouts whose blocks do not pair (see above).
void (*g_avx2_quant[5])(const QuantView&, const QActView&, float*, int, int, int) = {};

// Software prefetch of `count` weight rows from row r (clamped): the codes stream
// from memory once per product, and the hardware prefetchers alone keep too few
// lines in flight for the interleaved row streams of a tile.
inline void PrefetchRows(const QuantView& w, int r, int count) {
  if (r >= w.rows) return;
  if (r + count > w.rows) count = w.rows - r;
  const char* p = reinterpret_cast<const char*>(w.codes + static_cast<size_t>(r) * w.row_bytes);
  const size_t bytes = static_cast<size_t>(count) * w.row_bytes;
  for (size_t off = 0; off < bytes; off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
}

// ---- Many activation rows: weight panels in VNNI layout -------------------------
// The AMX kernel's arithmetic on the vector unit. Per panel of 16 weight rows, the
// codes of each pair of blocks are unpacked and transposed once into
// panel[p][k4] = codes 4k4..4k4+3 of the 16 rows (64 bytes, row i in dword i);
// then for each activation row m, vpdpbusd with the 4 bytes q[m][64p + 4k4]
// broadcast gives C[i][m], the exact int32 dot of the pair, in lane i. The epilogue
// is AMX's, operation for operation: acc += float(C) * d[m][pair] (rounded) times
// the pair's weight scale (fused), then the min term per group. So a row's result
// is the same bits here and on the tiles, and independent of how rows are split.
// Against the per-row kernel above (vpdpbusd, conversion and FMA per weight row,
// activation row and pair) it issues one vpdpbusd per 16 x 64 multiply-adds with
// one conversion per 16 rows; the panel costs an unpack and a transpose per
// 16 rows and pair, shared by all activation rows.
// Fewer activation rows take the per-row kernel: `eora-matmul-bench
// --benchmark_filter='q[34]g64/2048x768/n'`, one thread, in-cache: at 6 rows the
// two kernels tie (54-65 G multiply-adds/s), from 8 rows the panels win
// (58-82 against 59-69; 16 rows: 114-119 against 60-73).
constexpr int kPanelMinRows = 8;
constexpr int kPanelTile = 12;    // activation rows per register tile (2 x 12 accumulators)

// Codes of rows [r, r + nrows) in panel layout (rows past nrows, and a missing
// second block of the last pair, read as zero codes).
template <int kBits>
void PackPanelVnni(const QuantView& w, int r, int nrows, int np, uint8_t* dst) {
  constexpr int kBB = QuantBlockBytes(kBits);
  const int full = w.blocks / 2;
  const uint8_t* rows[16];
  for (int i = 0; i < 16; ++i) rows[i] = w.codes + static_cast<size_t>(r + (i < nrows ? i : 0)) * w.row_bytes;
  for (int p = 0; p < np; ++p) {
    __m512 v[16];
    EORA_UNROLL for (int i = 0; i < 16; ++i) {
      if (i >= nrows) {
        v[i] = _mm512_setzero_ps();
      } else if (p < full) {
        v[i] = _mm512_castsi512_ps(UnpackPair<kBits>(rows[i] + 2 * static_cast<size_t>(p) * kBB));
      } else {
        v[i] = _mm512_castsi512_ps(_mm512_zextsi256_si512(UnpackOne<kBits>(rows[i] + 2 * static_cast<size_t>(p) * kBB)));
      }
    }
    Transpose16(v);  // dword k4 of row i -> lane i of v[k4]
    EORA_UNROLL for (int k4 = 0; k4 < 16; ++k4)
      _mm512_store_ps(reinterpret_cast<float*>(dst + 1024 * static_cast<size_t>(p) + 64 * k4), v[k4]);
  }
}

// Int8 rows and scales of kM activation rows from t0.
template <int kM>
struct TileRows {
  const int8_t* q[kM];
  const float* d[kM];
  TileRows(const QActView& x, int t0) {
    EORA_UNROLL for (int m = 0; m < kM; ++m) {
      q[m] = x.q + static_cast<size_t>(t0 + m) * x.padded_cols;
      d[m] = x.d + static_cast<size_t>(t0 + m) * x.nb;
    }
  }
};

// out[j * 16 + i] = table[(r + i) * groups + index[j]] as float for the panel's
// rows i < nrows (index null: j itself), 0 for i >= nrows; j < count.
inline void PanelColumnsOfHalf(const uint16_t* table, int groups, int r, int nrows, const int* index, int count,
                               float* out) {
  for (int i = 0; i < 16; ++i) {
    const uint16_t* row = table + static_cast<size_t>(r + (i < nrows ? i : 0)) * groups;
    for (int j = 0; j < count; ++j)
      out[16 * static_cast<size_t>(j) + i] = i < nrows ? HalfToFloat(row[index ? index[j] : j]) : 0.f;
  }
}

// The weight group of each of np pairs of blocks (a pair never straddles groups).
inline void PairGroups(const QuantView& w, int np, int* out) {
  for (int p = 0; p < np; ++p) out[p] = w.groups == 1 ? 0 : 2 * p / w.bpg;
}

// Panels of 16 weight rows over [r0, r1): panel(r, nrows, store mask).
template <typename F>
inline void ForEachPanel(int r0, int r1, F&& panel) {
  for (int r = r0; r < r1; r += 16) {
    const int nrows = r1 - r < 16 ? r1 - r : 16;
    panel(r, nrows, static_cast<__mmask16>(nrows == 16 ? 0xFFFFu : (1u << nrows) - 1u));
  }
}

// Splits n activation rows into near-equal tiles of at most max_tile: tile(t0, m).
template <typename F>
inline void ForEachTile(int n, int max_tile, F&& tile) {
  const int tiles = (n + max_tile - 1) / max_tile;
  int t0 = 0;
  for (int k = 0; k < tiles; ++k) {
    const int m = (n - t0) / (tiles - k);
    tile(t0, m);
    t0 += m;
  }
}

// c[m] += the dots of kK4 dwords of one pair of the panel with activation row m.
template <int kM, int kK4>
inline void PanelDots(const uint8_t* pp, const int8_t* const* q, size_t off, __m512i* c) {
  EORA_UNROLL for (int k4 = 0; k4 < kK4; ++k4) {
    const __m512i wv = _mm512_load_si512(pp + 64 * k4);
    EORA_UNROLL for (int m = 0; m < kM; ++m) {
      int32_t a;
      std::memcpy(&a, q[m] + off + 4 * k4, 4);
      c[m] = _mm512_dpbusd_epi32(c[m], wv, _mm512_set1_epi32(a));
    }
  }
}

// The panel epilogue shared by every panel kernel (so they give the same bits,
// and the AMX kernel's): acc[m] += float(c[m]) * d[m][pair] (rounded) times the
// pair's weight scales sv (fused).
template <int kM>
inline void PanelPairEpilogue(const __m512i* c, const float* const* d, int p, __m512 sv, __m512* acc) {
  EORA_UNROLL for (int m = 0; m < kM; ++m) {
    const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(c[m]), _mm512_set1_ps(d[m][2 * p]));
    acc[m] = _mm512_fmadd_ps(v, sv, acc[m]);
  }
}

// Then the min term, group by group (mins(g): the 16 rows' mins of group g), and
// the store of the rows in store_mask: y[t0 + m][r + i].
template <int kM, typename Mins>
inline void PanelMinsAndStore(const QActView& x, int t0, int groups, Mins&& mins, __m512* acc, float* y, int ldy,
                              int r, __mmask16 store_mask) {
  for (int g = 0; g < groups; ++g) {
    const __m512 mv = mins(g);
    EORA_UNROLL for (int m = 0; m < kM; ++m)
      acc[m] = _mm512_fmadd_ps(mv, _mm512_set1_ps(x.gsum[static_cast<size_t>(t0 + m) * x.groups + g]), acc[m]);
  }
  EORA_UNROLL for (int m = 0; m < kM; ++m)
    _mm512_mask_storeu_ps(y + static_cast<size_t>(t0 + m) * ldy + r, store_mask, acc[m]);
}

// kM activation rows from t0 against one panel: y[t0 + m][r + i] for i < nrows.
template <int kM>
void PanelTileVnni(const QActView& x, const uint8_t* panel, const float* spair, const float* mins, int np,
                   int half_last, int groups, float* y, int ldy, int r, __mmask16 store_mask, int t0) {
  const TileRows<kM> rows(x, t0);
  const int8_t* const* q = rows.q;
  const float* const* d = rows.d;
  __m512 acc[kM];
  EORA_UNROLL for (int m = 0; m < kM; ++m) acc[m] = _mm512_setzero_ps();
  for (int p = 0; p < np; ++p) {
    const uint8_t* pp = panel + 1024 * static_cast<size_t>(p);
    __m512i c[kM];
    EORA_UNROLL for (int m = 0; m < kM; ++m) c[m] = _mm512_setzero_si512();
    if (p == np - 1 && half_last) {  // a lone last block: 32 codes
      PanelDots<kM, 8>(pp, q, 64 * static_cast<size_t>(p), c);
    } else {
      PanelDots<kM, 16>(pp, q, 64 * static_cast<size_t>(p), c);
    }
    PanelPairEpilogue<kM>(c, d, p, _mm512_load_ps(spair + 16 * static_cast<size_t>(p)), acc);
  }
  PanelMinsAndStore<kM>(
      x, t0, groups, [&](int g) { return _mm512_load_ps(mins + 16 * static_cast<size_t>(g)); }, acc, y, ldy, r,
      store_mask);
}

using PanelTileFn = void (*)(const QActView&, const uint8_t*, const float*, const float*, int, int, int, float*,
                             int, int, __mmask16, int);
constexpr PanelTileFn kPanelTiles[kPanelTile + 1] = {
    nullptr,          PanelTileVnni<1>, PanelTileVnni<2>, PanelTileVnni<3>,  PanelTileVnni<4>,
    PanelTileVnni<5>, PanelTileVnni<6>, PanelTileVnni<7>, PanelTileVnni<8>,  PanelTileVnni<9>,
    PanelTileVnni<10>, PanelTileVnni<11>, PanelTileVnni<12>};

// Needs x.span even and pairs inside one weight group (as the AMX kernel).
template <int kBits>
void QuantGemmPanels(const QuantView& w, const QActView& x, float* y, int ldy, int r0, int r1) {
  const int np = (w.blocks + 1) / 2;
  const int half_last = w.blocks % 2;
  // Scratch (slot 0; slot 1 holds x.gsum): the panel, then per-pair weight scales
  // and per-group mins of its 16 rows.
  const size_t panel_bytes = static_cast<size_t>(np) * 1024;
  uint8_t* panel = reinterpret_cast<uint8_t*>(ScratchFloats(panel_bytes / 4 + 17 * static_cast<size_t>(np) + 16 * static_cast<size_t>(w.groups), 0));
  float* spair = reinterpret_cast<float*>(panel + panel_bytes);  // [np][16]
  float* mins = spair + static_cast<size_t>(np) * 16;            // [groups][16]
  int* pair_group = reinterpret_cast<int*>(mins + static_cast<size_t>(w.groups) * 16);  // [np]
  PairGroups(w, np, pair_group);
  ForEachPanel(r0, r1, [&](int r, int nrows, __mmask16 store_mask) {
    PackPanelVnni<kBits>(w, r, nrows, np, panel);
    PanelColumnsOfHalf(w.scale, w.groups, r, nrows, pair_group, np, spair);
    PanelColumnsOfHalf(w.min, w.groups, r, nrows, nullptr, w.groups, mins);
    ForEachTile(x.n, kPanelTile, [&](int t0, int m) {
      kPanelTiles[m](x, panel, spair, mins, np, half_last, w.groups, y, ldy, r, store_mask, t0);
    });
  });
}

// ---- Panel layout (QuantView::panels): 16 rows interleaved per vector -------------
// The codes are stored the way QuantGemmPanels above lays them out in scratch
// (quant_pack.h), so any number of activation rows, one included, runs the panel
// arithmetic straight from memory: per 64 codes of 16 rows one unpack (an affine
// transform, plus a masked add for 3-bit) and one vpdpbusd per activation row,
// and one conversion and FMA per 16 rows and pair. Against the per-row kernel
// (unpack, vpdpbusd, conversion and FMA per row and pair) that is about half the
// vector work of a batch-1 product (docs/performance.md). The epilogue is
// PanelTileVnni's, so a row's result has the same bits for every batch size.

// Group t of a pair unit: the 64-code vectors 2t, 2t + 1 (4-bit) or 4t..4t+3.
template <int kBits>
inline void UnpackPanelGroup(const uint8_t* g, __m512i* v) {
  const __m512i x = _mm512_loadu_si512(g);
  if constexpr (kBits == 4) {
    v[0] = _mm512_and_si512(x, _mm512_set1_epi8(0x0F));
    v[1] = _mm512_gf2p8affine_epi64_epi8(x, _mm512_set1_epi64(NibbleMatrix(1)), 0);
  } else {
    EORA_UNROLL for (int j = 0; j < 4; ++j) {
      v[j] = _mm512_gf2p8affine_epi64_epi8(x, _mm512_set1_epi64(Plane2Matrix(j)), 0);
      if constexpr (kBits == 3)
        v[j] = _mm512_mask_add_epi8(v[j], _cvtu64_mask64(Load64(g + 64 + 8 * j)), v[j], _mm512_set1_epi8(0x04));
    }
  }
}

// c[chain][m] += the dots of the first kGroups groups of a pair unit with
// activation row m (bytes from q[m] + off). Two chains of accumulation for one or
// two rows (the vpdpbusd latency), one for more.
template <int kBits, int kM, int kGroups, int kChains>
inline void PanelUnitDots(const uint8_t* unit, const int8_t* const* q, size_t off, __m512i (*c)[kM]) {
  constexpr int kGV = kBits == 4 ? 2 : 4, kGB = kBits == 3 ? 96 : 64;  // quant_pack.h
  EORA_UNROLL for (int t = 0; t < kGroups; ++t) {
    __m512i v[kGV];
    UnpackPanelGroup<kBits>(unit + kGB * t, v);
    EORA_UNROLL for (int j = 0; j < kGV; ++j) {
      const int k4 = kGV * t + j;
      EORA_UNROLL for (int m = 0; m < kM; ++m) {
        int32_t a;
        std::memcpy(&a, q[m] + off + 4 * k4, 4);
        c[k4 % kChains][m] = _mm512_dpbusd_epi32(c[k4 % kChains][m], v[j], _mm512_set1_epi32(a));
      }
    }
  }
}

// kM activation rows from t0 against panel pn; stores the rows of store_mask.
template <int kBits, int kM>
void PanelStoredTile(const QuantView& w, const QActView& x, int pn, const int* pair_group, float* y, int ldy,
                     __mmask16 store_mask, int t0) {
  constexpr int kGV = kBits == 4 ? 2 : 4;
  constexpr int kChains = kM <= 2 ? 2 : 1;
  const TileRows<kM> rows(x, t0);
  const int np = (w.blocks + 1) / 2;
  const bool half_last = w.blocks % 2 != 0;
  const uint8_t* panel = w.codes + static_cast<size_t>(pn) * w.blocks * 64 * kBits;  // PanelBytes
  const uint16_t* sc = w.scale + static_cast<size_t>(pn) * w.groups * 16;
  const uint16_t* mn = w.min + static_cast<size_t>(pn) * w.groups * 16;
  __m512 acc[kM];
  EORA_UNROLL for (int m = 0; m < kM; ++m) acc[m] = _mm512_setzero_ps();
  for (int p = 0; p < np; ++p) {
    const uint8_t* unit = panel + static_cast<size_t>(p) * 128 * kBits;  // PanelPairOffset
    __m512i c[kChains][kM];
    EORA_UNROLL for (int h = 0; h < kChains; ++h)
      EORA_UNROLL for (int m = 0; m < kM; ++m) c[h][m] = _mm512_setzero_si512();
    const size_t off = 64 * static_cast<size_t>(p);
    if (half_last && p == np - 1) PanelUnitDots<kBits, kM, 8 / kGV, kChains>(unit, rows.q, off, c);
    else PanelUnitDots<kBits, kM, 16 / kGV, kChains>(unit, rows.q, off, c);
    EORA_UNROLL for (int h = 1; h < kChains; ++h)
      EORA_UNROLL for (int m = 0; m < kM; ++m) c[0][m] = _mm512_add_epi32(c[0][m], c[h][m]);
    const __m512 sv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc + 16 * pair_group[p])));
    PanelPairEpilogue<kM>(c[0], rows.d, p, sv, acc);
  }
  PanelMinsAndStore<kM>(
      x, t0, w.groups,
      [&](int g) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(mn + 16 * g))); },
      acc, y, ldy, 16 * pn, store_mask);
}

using PanelStoredTileFn = void (*)(const QuantView&, const QActView&, int, const int*, float*, int, __mmask16, int);
template <int kBits>
constexpr PanelStoredTileFn kPanelStoredTiles[kPanelTile + 1] = {
    nullptr,
    PanelStoredTile<kBits, 1>,  PanelStoredTile<kBits, 2>,  PanelStoredTile<kBits, 3>,  PanelStoredTile<kBits, 4>,
    PanelStoredTile<kBits, 5>,  PanelStoredTile<kBits, 6>,  PanelStoredTile<kBits, 7>,  PanelStoredTile<kBits, 8>,
    PanelStoredTile<kBits, 9>,  PanelStoredTile<kBits, 10>, PanelStoredTile<kBits, 11>, PanelStoredTile<kBits, 12>};

// The portable kernel, for activations whose scale runs are odd (not produced by
// QuantizedActivations).
void (*g_generic_panel_quant[5])(const QuantView&, const QActView&, float*, int, int, int) = {};

template <int kBits>
void QuantPanelGemm(const QuantView& w, const QActView& x, float* y, int ldy, int r0, int r1) {
  if (x.span % 2 != 0) return g_generic_panel_quant[kBits](w, x, y, ldy, r0, r1);
  const int np = (w.blocks + 1) / 2;
  int* pair_group = reinterpret_cast<int*>(ScratchFloats(static_cast<size_t>(np), 0));
  PairGroups(w, np, pair_group);
  // A range that starts or ends inside a panel computes the whole panel and
  // stores its own rows (the same bits as any other split).
  for (int pn = r0 / 16; 16 * pn < r1; ++pn) {
    const int lo = r0 > 16 * pn ? r0 - 16 * pn : 0;
    const int hi = r1 < 16 * pn + 16 ? r1 - 16 * pn : 16;
    const __mmask16 store_mask = static_cast<__mmask16>(((1u << hi) - 1u) & ~((1u << lo) - 1u));
    ForEachTile(x.n, kPanelTile, [&](int t0, int m) {
      kPanelStoredTiles<kBits>[m](w, x, pn, pair_group, y, ldy, store_mask, t0);
    });
  }
}

template <int kBits>
void QuantGemmVnni(const QuantView& w, const QActView& x, float* y, int ldy, int r0, int r1) {
  if (x.span % 2 != 0 || (w.groups > 1 && w.bpg % 2 != 0))
    return g_avx2_quant[kBits](w, x, y, ldy, r0, r1);
  if (x.n >= kPanelMinRows) return QuantGemmPanels<kBits>(w, x, y, ldy, r0, r1);
  int r = r0;
  PrefetchRows(w, r, 8);
  for (; r + 4 <= r1; r += 4) {
    PrefetchRows(w, r + 8, 4);
    QuantRowsVnni<kBits, 4>(w, x, y, ldy, r);
  }
  for (; r < r1; ++r) QuantRowsVnni<kBits, 1>(w, x, y, ldy, r);
}

// ---- 2:4 sparse, quantized kept values, VNNI + VBMI ----------------------------------
// A pair of kept blocks (64 slots) covers 128 columns, i.e. 4 activation blocks, one
// aligned span of the activation scale (x.span % 4 == 0), and lies in one weight
// group (bpg even, or one group per row). Per pair, row and activation row:
// vpermi2b gathers the 64 activation bytes of the slots from the 128 columns (index
// = 64 * block + 4 * (slot / 2) + position), then vpdpbusd gives sum(code * q) and
// sum(q) over the kept slots (the min term needs the latter per row). Other layouts
// keep the AVX2 kernel.
void (*g_avx2_sparse24q[5])(const Sparse24QuantView&, const QActView&, float*, int, int, int) = {};

template <int kBits, int kT>
void Sparse24QRowVnni(const Sparse24QuantView& w, const QActView& x, float* y, int ldy, int r, int t0) {
  constexpr int kBB = QuantBlockBytes(kBits);
  const QuantView& qv = w.q;
  const int kb = qv.blocks, np = (kb + 1) / 2;
  const uint8_t* codes = qv.codes + static_cast<size_t>(r) * qv.row_bytes;
  const uint8_t* meta = w.meta + static_cast<size_t>(r) * kb * 8;
  const uint16_t* sc = qv.scale + static_cast<size_t>(r) * qv.groups;
  const uint16_t* mn = qv.min + static_cast<size_t>(r) * qv.groups;
  alignas(64) static constexpr uint8_t kBase[64] = {
      0,  0,  4,  4,  8,  8,  12, 12, 16, 16, 20, 20, 24, 24, 28, 28, 32, 32, 36, 36, 40, 40,
      44, 44, 48, 48, 52, 52, 56, 56, 60, 60, 64, 64, 68, 68, 72, 72, 76, 76, 80, 80, 84, 84,
      88, 88, 92, 92, 96, 96, 100, 100, 104, 104, 108, 108, 112, 112, 116, 116, 120, 120, 124, 124};
  const __m512i base = _mm512_load_si512(kBase);
  const __m512i ones = _mm512_set1_epi8(1);
  __m512 acc[kT];
  EORA_UNROLL for (int t = 0; t < kT; ++t) acc[t] = _mm512_setzero_ps();
  const int ppg = qv.groups == 1 ? np + 1 : qv.bpg / 2;  // pairs per weight group
  int g = 0, in_group = 0;
  for (int p = 0; p < np; ++p) {
    if (in_group == ppg) {
      ++g;
      in_group = 0;
    }
    ++in_group;
    const bool full = 2 * p + 1 < kb;
    __m512i idx, cv;
    if (full) {
      idx = UnpackPair<2>(meta + 16 * static_cast<size_t>(p));
      cv = UnpackPair<kBits>(codes + 2 * static_cast<size_t>(p) * kBB);
    } else {
      idx = _mm512_zextsi256_si512(UnpackOne<2>(meta + 16 * static_cast<size_t>(p)));
      cv = _mm512_zextsi256_si512(UnpackOne<kBits>(codes + 2 * static_cast<size_t>(p) * kBB));
    }
    idx = _mm512_add_epi8(idx, base);
    const float s = HalfToFloat(sc[g]), m = HalfToFloat(mn[g]);
    // Activation bytes [128p, 128p + 128) that exist in the padded row.
    const int left = x.padded_cols - 128 * p;
    const __mmask64 m0 = left >= 64 ? ~__mmask64{0} : (__mmask64{1} << left) - 1;
    const __mmask64 m1 = left >= 128 ? ~__mmask64{0} : left <= 64 ? 0 : (__mmask64{1} << (left - 64)) - 1;
    EORA_UNROLL for (int t = 0; t < kT; ++t) {
      const int8_t* xq = x.q + static_cast<size_t>(t0 + t) * x.padded_cols + 128 * static_cast<size_t>(p);
      const __m512i lo = _mm512_maskz_loadu_epi8(m0, xq), hi = _mm512_maskz_loadu_epi8(m1, xq + 64);
      const __m512i gq = _mm512_permutex2var_epi8(lo, idx, hi);
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), cv, gq);
      const __m512i qs = _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, gq);
      const float d = x.d[static_cast<size_t>(t0 + t) * x.nb + 4 * p];
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_set1_ps(d * s), acc[t]);
      acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(qs), _mm512_set1_ps(d * m), acc[t]);
    }
  }
  EORA_UNROLL for (int t = 0; t < kT; ++t) y[static_cast<size_t>(t0 + t) * ldy + r] = _mm512_reduce_add_ps(acc[t]);
}

// ---- 2:4 sparse quantized, 5+ activation rows: dense weight panels ---------------
// Per panel of 16 weight rows and pair p of kept blocks (64 slots, 128 columns),
// each row's slots are expanded to their columns (vpexpandb under the mask of kept
// columns, built from the 2-bit positions) as dense codes, zero elsewhere, and as
// an indicator (1 at kept columns); both are transposed into the tile layout of
// QuantGemmPanels. Per activation row, two vpdpbusd per 4 columns give the code
// dot C and the kept-column sum Q of the pair for the 16 rows; then
// y += float(C) * d * scale + float(Q) * d * min (the slots' min term). Twice the
// multiply-adds of a dense panel over the same columns, but no per-row gather.
bool g_has_vbmi2 = false;
constexpr int kSparsePanelTile = 8;  // activation rows per register tile (3 x 8 accumulators)
// Fewer activation rows take the gather kernel: `eora-matmul-bench
// --benchmark_filter='sp24_q4g64/2048x768/n'`, one thread: 4 rows tie (27-29 G
// multiply-adds/s), 6 rows 39 against 27, 8 rows 47-48 against 29-30.
constexpr int kSparsePanelMinRows = 5;

// The 128-bit mask of the kept columns of a pair (bit c: column c of the 128)
// from the slots' positions `pos` (byte k: position 0-3 of slot k in its group of
// 4 columns; slots 2m and 2m + 1 belong to group m).
inline __m128i KeptColumns(__m512i pos) {
  const __m512i lut = _mm512_set4_epi32(0, 0, 0, 0x08040201);
  const __m512i onehot = _mm512_shuffle_epi8(lut, pos);                     // 1 << pos
  const __m512i grp = _mm512_or_si512(onehot, _mm512_srli_epi16(onehot, 8));  // word m: nibble of group m
  // Dword j holds groups 2j (bits 0-3) and 2j + 1 (bits 16-19): pack them into byte j.
  const __m512i packed = _mm512_ternarylogic_epi32(_mm512_set1_epi32(0x0F), grp, _mm512_srli_epi32(grp, 12), 0xCA);
  return _mm512_cvtepi32_epi8(packed);
}

template <int kBits>
__attribute__((target("avx512vbmi2"))) void PackSparsePanel(const Sparse24QuantView& w, int r, int nrows, int np,
                                                             uint8_t* dst) {
  constexpr int kBB = QuantBlockBytes(kBits);
  const QuantView& qv = w.q;
  const int kb = qv.blocks;
  const __m512i ones = _mm512_set1_epi8(1);
  for (int p = 0; p < np; ++p) {
    __m512 c_lo[16], c_hi[16], i_lo[16], i_hi[16];
    const bool full = 2 * p + 1 < kb;
    EORA_UNROLL for (int i = 0; i < 16; ++i) {
      if (i >= nrows) {
        c_lo[i] = c_hi[i] = i_lo[i] = i_hi[i] = _mm512_setzero_ps();
        continue;
      }
      const uint8_t* codes = qv.codes + static_cast<size_t>(r + i) * qv.row_bytes + 2 * static_cast<size_t>(p) * kBB;
      const uint8_t* meta = w.meta + (static_cast<size_t>(r + i) * kb + 2 * static_cast<size_t>(p)) * 8;
      __m512i cv, pos;
      if (full) {
        cv = UnpackPair<kBits>(codes);
        pos = UnpackPair<2>(meta);
      } else {
        cv = _mm512_zextsi256_si512(UnpackOne<kBits>(codes));
        pos = _mm512_zextsi256_si512(UnpackOne<2>(meta));
      }
      const __m128i kept = KeptColumns(pos);
      // A lone last block covers the first 64 columns only.
      const __mmask64 mlo = _cvtu64_mask64(static_cast<uint64_t>(_mm_cvtsi128_si64(kept)));
      const __mmask64 mhi = full ? _cvtu64_mask64(static_cast<uint64_t>(_mm_extract_epi64(kept, 1))) : 0;
      c_lo[i] = _mm512_castsi512_ps(_mm512_maskz_expand_epi8(mlo, cv));
      c_hi[i] = _mm512_castsi512_ps(_mm512_maskz_expand_epi8(mhi, _mm512_shuffle_i64x2(cv, cv, 0xEE)));
      i_lo[i] = _mm512_castsi512_ps(_mm512_maskz_mov_epi8(mlo, ones));
      i_hi[i] = _mm512_castsi512_ps(_mm512_maskz_mov_epi8(mhi, ones));
    }
    Transpose16(c_lo);
    Transpose16(c_hi);
    Transpose16(i_lo);
    Transpose16(i_hi);
    float* d = reinterpret_cast<float*>(dst + 4096 * static_cast<size_t>(p));
    EORA_UNROLL for (int k4 = 0; k4 < 16; ++k4) {
      _mm512_store_ps(d + 16 * k4, c_lo[k4]);
      _mm512_store_ps(d + 16 * (16 + k4), c_hi[k4]);
      _mm512_store_ps(d + 16 * (32 + k4), i_lo[k4]);
      _mm512_store_ps(d + 16 * (48 + k4), i_hi[k4]);
    }
  }
}

template <int kM>
void SparsePanelTile(const QActView& x, const uint8_t* panel, const float* spair, const float* mpair, int np,
                     float* y, int ldy, int r, __mmask16 store_mask, int t0) {
  const TileRows<kM> rows(x, t0);
  const int8_t* const* q = rows.q;
  const float* const* d = rows.d;
  __m512 acc[kM];
  EORA_UNROLL for (int m = 0; m < kM; ++m) acc[m] = _mm512_setzero_ps();
  for (int p = 0; p < np; ++p) {
    const uint8_t* pp = panel + 4096 * static_cast<size_t>(p);
    // Columns of this pair inside the activation row (the last pair may stop early).
    const int left = x.padded_cols - 128 * p;
    const int k4n = left >= 128 ? 32 : left / 4;
    __m512i c[kM], z[kM];
    EORA_UNROLL for (int m = 0; m < kM; ++m) c[m] = z[m] = _mm512_setzero_si512();
    for (int k4 = 0; k4 < k4n; ++k4) {
      const __m512i wc = _mm512_load_si512(pp + 64 * k4);
      const __m512i wi = _mm512_load_si512(pp + 2048 + 64 * k4);
      const size_t off = 128 * static_cast<size_t>(p) + 4 * static_cast<size_t>(k4);
      EORA_UNROLL for (int m = 0; m < kM; ++m) {
        int32_t a;
        std::memcpy(&a, q[m] + off, 4);
        const __m512i av = _mm512_set1_epi32(a);
        c[m] = _mm512_dpbusd_epi32(c[m], wc, av);
        z[m] = _mm512_dpbusd_epi32(z[m], wi, av);
      }
    }
    const __m512 sv = _mm512_load_ps(spair + 16 * static_cast<size_t>(p));
    const __m512 mv = _mm512_load_ps(mpair + 16 * static_cast<size_t>(p));
    EORA_UNROLL for (int m = 0; m < kM; ++m) {
      const __m512 dv = _mm512_set1_ps(d[m][4 * p]);
      acc[m] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(c[m]), dv), sv, acc[m]);
      acc[m] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(z[m]), dv), mv, acc[m]);
    }
  }
  EORA_UNROLL for (int m = 0; m < kM; ++m)
    _mm512_mask_storeu_ps(y + static_cast<size_t>(t0 + m) * ldy + r, store_mask, acc[m]);
}

using SparsePanelTileFn = void (*)(const QActView&, const uint8_t*, const float*, const float*, int, float*, int,
                                   int, __mmask16, int);
constexpr SparsePanelTileFn kSparsePanelTiles[kSparsePanelTile + 1] = {
    nullptr, SparsePanelTile<1>, SparsePanelTile<2>, SparsePanelTile<3>, SparsePanelTile<4>,
    SparsePanelTile<5>, SparsePanelTile<6>, SparsePanelTile<7>, SparsePanelTile<8>};

template <int kBits>
void Sparse24QGemmPanels(const Sparse24QuantView& w, const QActView& x, float* y, int ldy, int r0, int r1) {
  const QuantView& qv = w.q;
  const int np = (qv.blocks + 1) / 2;
  const size_t panel_bytes = static_cast<size_t>(np) * 4096;
  uint8_t* panel = reinterpret_cast<uint8_t*>(ScratchFloats(panel_bytes / 4 + 33 * static_cast<size_t>(np), 0));
  float* spair = reinterpret_cast<float*>(panel + panel_bytes);  // [np][16]
  float* mpair = spair + 16 * static_cast<size_t>(np);            // [np][16]
  int* pair_group = reinterpret_cast<int*>(mpair + 16 * static_cast<size_t>(np));  // [np]
  PairGroups(qv, np, pair_group);
  ForEachPanel(r0, r1, [&](int r, int nrows, __mmask16 store_mask) {
    PackSparsePanel<kBits>(w, r, nrows, np, panel);
    PanelColumnsOfHalf(qv.scale, qv.groups, r, nrows, pair_group, np, spair);
    PanelColumnsOfHalf(qv.min, qv.groups, r, nrows, pair_group, np, mpair);
    ForEachTile(x.n, kSparsePanelTile, [&](int t0, int m) {
      kSparsePanelTiles[m](x, panel, spair, mpair, np, y, ldy, r, store_mask, t0);
    });
  });
}

template <int kBits>
void Sparse24QGemmVnni(const Sparse24QuantView& w, const QActView& x, float* y, int ldy, int r0, int r1) {
  if (x.span % 4 != 0 || (w.q.groups > 1 && w.q.bpg % 2 != 0))
    return g_avx2_sparse24q[kBits](w, x, y, ldy, r0, r1);
  if (g_has_vbmi2 && x.n >= kSparsePanelMinRows) return Sparse24QGemmPanels<kBits>(w, x, y, ldy, r0, r1);
  // Software prefetch of the code and metadata streams, 16 rows ahead.
  const size_t meta_bytes = static_cast<size_t>(w.q.blocks) * 8;
  auto prefetch_meta = [&](int r) {
    if (r >= w.q.rows) return;
    const char* m = reinterpret_cast<const char*>(w.meta + static_cast<size_t>(r) * meta_bytes);
    for (size_t off = 0; off < meta_bytes; off += 64) _mm_prefetch(m + off, _MM_HINT_T0);
  };
  PrefetchRows(w.q, r0, 16);
  for (int i = 0; i < 16; ++i) prefetch_meta(r0 + i);
  for (int r = r0; r < r1; ++r) {
    PrefetchRows(w.q, r + 16, 1);
    prefetch_meta(r + 16);
    int t = 0;
    for (; t + 4 <= x.n; t += 4) Sparse24QRowVnni<kBits, 4>(w, x, y, ldy, r, t);
    switch (x.n - t) {
      case 3: Sparse24QRowVnni<kBits, 3>(w, x, y, ldy, r, t); break;
      case 2: Sparse24QRowVnni<kBits, 2>(w, x, y, ldy, r, t); break;
      case 1: Sparse24QRowVnni<kBits, 1>(w, x, y, ldy, r, t); break;
      default: break;
    }
  }
}

// ---- y += u W in int8 on the rank-interleaved copy (QuantAccTView) ------------------
// Per activation row t and weight group g: v_j = u_j * scale_jg for j < r is
// quantized to int8 with one scale e = max|v| / 127, then for 16 columns at a time
// vpdpbusd multiplies 4 ranks' codes with 4 ranks' v per 32-bit lane (the copy's
// units unpack as the panel layout's groups, UnpackPanelGroup), and
// y += e * sum + sum_j u_j * min_jg. A 16-column block never straddles a group
// (groups are multiples of 32 columns). The sums are exact integers, so every
// storage width, and every blocking of the rows, gives the same bits.

// v_j = u_j * scale_jg (j < r) of one activation row and group, quantized to int8
// words of 4 ranks at qv (room for `padded` ranks, zero past r); the step e to *e
// and the min term sum_j u_j * min_jg to *m.
inline __m512 LoadF16(__mmask16 k, const uint16_t* p) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p)); }

inline void QuantizeRankVector(const float* ut, const uint16_t* sc, const uint16_t* mn, int r, int padded,
                               int32_t* qv, float* e, float* m) {
  __m512 amax = _mm512_setzero_ps(), msum = _mm512_setzero_ps();
  auto rank_mask = [r](int j) {
    const int left = r - j;
    return static_cast<__mmask16>(left >= 16 ? 0xFFFFu : left <= 0 ? 0u : (1u << left) - 1u);
  };
  auto store = [&](int j, __m512 v, __m512 inv) {
    const __m128i q8 = _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(_mm512_mul_ps(v, inv)));
    // Only whole 4-rank words up to `padded` ranks are used.
    const int words = (padded - j) >= 16 ? 4 : (padded - j) / 4;
    _mm_mask_storeu_epi32(qv + j / 4, static_cast<__mmask8>((1u << words) - 1u), q8);
  };
  for (int j = 0; j < padded; j += 16) {
    const __mmask16 k = rank_mask(j);
    const __m512 uj = _mm512_maskz_loadu_ps(k, ut + j);
    const __m512 v = _mm512_mul_ps(uj, LoadF16(k, sc + j));
    amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
    msum = _mm512_fmadd_ps(uj, LoadF16(k, mn + j), msum);
  }
  const float mx = _mm512_reduce_max_ps(amax);
  const __m512 inv = _mm512_set1_ps(mx > 0.f ? 127.f / mx : 0.f);
  for (int j = 0; j < padded; j += 16) {
    const __mmask16 k = rank_mask(j);
    store(j, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, ut + j), LoadF16(k, sc + j)), inv);
  }
  *e = mx / 127.f;
  *m = _mm512_reduce_add_ps(msum);
}

// Activation rows t0..t0 + kT - 1 against the copy: each unit is unpacked once for
// all kT rows, so a batch of rows (prefill, batched decode) pays the unpack once per
// kT rows. One or two rows take two column blocks of a group at a time (four or
// eight accumulation chains, each broadcast of v serving both); more rows take one
// (registers).
template <int kBits, int kT>
void QuantAccTI8Rows(const QuantAccTView& w, const float* u, int ldu, int t0, int r, float* y, int ldy, int c0,
                     int c1, int32_t* qv_all) {
  constexpr int kGV = kBits == 4 ? 2 : 4, kGB = kBits == 3 ? 96 : 64;  // quant_pack.h
  constexpr int kUnitRows = 4 * kGV;
  const int units = (r + kUnitRows - 1) / kUnitRows;  // units used at rank r
  const int padded = units * kUnitRows;
  const size_t words = static_cast<size_t>(padded) / 4;
  const size_t stride = static_cast<size_t>(w.units) * kUnitRows;
  const size_t block_bytes = static_cast<size_t>(w.units) * kGB;
  const int cb0 = c0 / 16, cb1 = (c1 + 15) / 16;
  int cur = -1;
  __m512 ev[kT], mv[kT];
  for (int cb = cb0; cb < cb1;) {
    const int g = w.groups == 1 ? 0 : 16 * cb / w.group_cols;
    if (g != cur) {
      cur = g;
      const uint16_t* sc = w.scale_t + static_cast<size_t>(g) * stride;
      const uint16_t* mn = w.min_t + static_cast<size_t>(g) * stride;
      EORA_UNROLL for (int t = 0; t < kT; ++t) {
        float e, m;
        QuantizeRankVector(u + static_cast<size_t>(t0 + t) * ldu, sc, mn, r, padded, qv_all + t * words, &e, &m);
        ev[t] = _mm512_set1_ps(e);
        mv[t] = _mm512_set1_ps(m);
      }
    }
    // y[16 b ..] += e * sum + min term, for the columns of [c0, c1).
    auto store = [&](int t, int b, __m512i sum) {
      float* yt = y + static_cast<size_t>(t0 + t) * ldy;
      const __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), ev[t], mv[t]);
      const int k0 = 16 * b;
      const int lo = c0 > k0 ? c0 : k0, hi = c1 < k0 + 16 ? c1 : k0 + 16;
      const __mmask16 m = static_cast<__mmask16>(((1u << (hi - k0)) - 1u) & ~((1u << (lo - k0)) - 1u));
      _mm512_mask_storeu_ps(yt + k0, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, yt + k0), f));
    };
    const uint8_t* p = w.il + static_cast<size_t>(cb) * block_bytes;
    if (kT <= 2 && cb + 1 < cb1 && (w.groups == 1 || 16 * (cb + 1) / w.group_cols == g)) {
      const uint8_t* p2 = p + block_bytes;
      __m512i a[kT][2], b[kT][2];
      EORA_UNROLL for (int t = 0; t < kT; ++t) a[t][0] = a[t][1] = b[t][0] = b[t][1] = _mm512_setzero_si512();
      for (int k = 0; k < units; ++k) {
        __m512i va[kGV], vb[kGV];
        UnpackPanelGroup<kBits>(p + kGB * static_cast<size_t>(k), va);
        UnpackPanelGroup<kBits>(p2 + kGB * static_cast<size_t>(k), vb);
        EORA_UNROLL for (int j = 0; j < kGV; ++j) {
          EORA_UNROLL for (int t = 0; t < kT; ++t) {
            const __m512i q = _mm512_set1_epi32(qv_all[t * words + kGV * k + j]);
            a[t][j % 2] = _mm512_dpbusd_epi32(a[t][j % 2], va[j], q);
            b[t][j % 2] = _mm512_dpbusd_epi32(b[t][j % 2], vb[j], q);
          }
        }
      }
      EORA_UNROLL for (int t = 0; t < kT; ++t) {
        store(t, cb, _mm512_add_epi32(a[t][0], a[t][1]));
        store(t, cb + 1, _mm512_add_epi32(b[t][0], b[t][1]));
      }
      cb += 2;
      continue;
    }
    __m512i a[kT][2];
    EORA_UNROLL for (int t = 0; t < kT; ++t) a[t][0] = a[t][1] = _mm512_setzero_si512();
    for (int k = 0; k < units; ++k) {
      __m512i va[kGV];
      UnpackPanelGroup<kBits>(p + kGB * static_cast<size_t>(k), va);
      EORA_UNROLL for (int j = 0; j < kGV; ++j)
        EORA_UNROLL for (int t = 0; t < kT; ++t)
          a[t][j % 2] = _mm512_dpbusd_epi32(a[t][j % 2], va[j], _mm512_set1_epi32(qv_all[t * words + kGV * k + j]));
    }
    EORA_UNROLL for (int t = 0; t < kT; ++t) store(t, cb, _mm512_add_epi32(a[t][0], a[t][1]));
    ++cb;
  }
}

template <int kBits>
void QuantAccTI8Bits(const QuantAccTView& w, const float* u, int ldu, int n, int r, float* y, int ldy, int c0,
                     int c1) {
  constexpr int kUnitRows = 4 * (kBits == 4 ? 2 : 4);
  const int padded = (r + kUnitRows - 1) / kUnitRows * kUnitRows;
  // int8 v of up to 4 rows, `padded` / 4 words each.
  int32_t* qv = reinterpret_cast<int32_t*>(ScratchFloats(static_cast<size_t>(padded) + 16, 0));
  int t = 0;
  for (; t + 4 <= n; t += 4) QuantAccTI8Rows<kBits, 4>(w, u, ldu, t, r, y, ldy, c0, c1, qv);
  switch (n - t) {
    case 3: QuantAccTI8Rows<kBits, 3>(w, u, ldu, t, r, y, ldy, c0, c1, qv); break;
    case 2: QuantAccTI8Rows<kBits, 2>(w, u, ldu, t, r, y, ldy, c0, c1, qv); break;
    case 1: QuantAccTI8Rows<kBits, 1>(w, u, ldu, t, r, y, ldy, c0, c1, qv); break;
    default: break;
  }
}

void QuantAccTI8(const QuantAccTView& w, const float* u, int ldu, int n, int r, float* y, int ldy, int c0,
                 int c1) {
  switch (w.bits) {
    case 2: return QuantAccTI8Bits<2>(w, u, ldu, n, r, y, ldy, c0, c1);
    case 3: return QuantAccTI8Bits<3>(w, u, ldu, n, r, y, ldy, c0, c1);
    default: return QuantAccTI8Bits<4>(w, u, ldu, n, r, y, ldy, c0, c1);
  }
}

}  // namespace

void FillAvx512Kernels(KernelTable* t) {
  g_has_vbmi2 = __builtin_cpu_supports("avx512vbmi2");
  g_avx2_dense_f32 = t->dense_gemm[kDenseF32];
  t->dense_gemm[kDenseF32] = DenseGemmF32;
  g_avx2_dense_half[kDenseF16] = t->dense_gemm[kDenseF16];
  g_avx2_dense_half[kDenseBF16] = t->dense_gemm[kDenseBF16];
  t->dense_gemm[kDenseF16] = DenseGemmHalf<kDenseF16>;
  t->dense_gemm[kDenseBF16] = DenseGemmHalf<kDenseBF16>;
  for (int b = 2; b <= 4; ++b) g_avx2_quant[b] = t->quant_gemm[b];
  t->quant_gemm[2] = QuantGemmVnni<2>;
  t->quant_gemm[3] = QuantGemmVnni<3>;
  t->quant_gemm[4] = QuantGemmVnni<4>;
  for (int b = 2; b <= 4; ++b) g_generic_panel_quant[b] = t->quant_panel_gemm[b];
  t->quant_panel_gemm[2] = QuantPanelGemm<2>;
  t->quant_panel_gemm[3] = QuantPanelGemm<3>;
  t->quant_panel_gemm[4] = QuantPanelGemm<4>;
  t->prefers_quant_panels = true;
  // The B side of low-rank products: always the int8 kernel here (QuantMatrix takes
  // quant_acc_t_i8 whenever the table has it; the float entries stay the AVX2 ones).
  t->quant_acc_t_i8 = QuantAccTI8;
  for (int b = 2; b <= 4; ++b) g_avx2_sparse24q[b] = t->sparse24q_gemm[b];
  t->sparse24q_gemm[2] = Sparse24QGemmVnni<2>;
  t->sparse24q_gemm[3] = Sparse24QGemmVnni<3>;
  t->sparse24q_gemm[4] = Sparse24QGemmVnni<4>;
}

}  // namespace eora::cpu
