// AVX2 + FMA + F16C kernels. Compiled with -mavx2 -mfma -mf16c (engine/CMakeLists.txt);
// only reached through the dispatch table when the CPU supports them.
//
// Everything here has internal linkage and uses raw pointers only (see kernels.h).
// Per output element, the sequence of floating-point operations does not depend on
// the tile an element is computed in, so any split of rows across threads gives
// bit-identical results.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "engine/backend/cpu/kernels.h"
#include "engine/backend/cpu/quant_pack.h"

// Full unrolling of the register-tile loops before scalar replacement keeps GCC
// from mirroring accumulator arrays on the stack.
#define EORA_UNROLL _Pragma("GCC unroll 16")

namespace eora::cpu {
namespace {

// ---- Helpers ---------------------------------------------------------------------

inline int Min(int a, int b) { return a < b ? a : b; }

// [sum(a), sum(b), sum(c), sum(d)] with a fixed association order per input.
inline __m128 Hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab = _mm256_hadd_ps(a, b);
  const __m256 cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);
  return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

inline float Hsum(__m256 a) { return _mm_cvtss_f32(Hsum4(a, a, a, a)); }

inline float HalfToFloat(uint16_t h) { return _cvtsh_ss(h); }

// Unpacks block `block` of a row of `nb` blocks (at p, the block's own bytes)
// into 32 bytes (code k in byte k). Layouts: docs/formats.md (only 3-bit blocks
// depend on the block's index: the two blocks of a pair share their bytes).
template <int kBits>
inline __m256i Unpack(const uint8_t* p, int block, int nb);

template <>
inline __m256i Unpack<4>(const uint8_t* p, int, int) {
  // Both 128-bit halves get the 16 bytes; the high half is shifted right by 4.
  const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i s = _mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4));
  return _mm256_and_si256(s, _mm256_set1_epi8(0x0F));
}

template <>
inline __m256i Unpack<2>(const uint8_t* p, int, int) {
  // 64-bit lane j holds codes 8j..8j+7: bits 2j..2j+1 of each byte.
  const __m256i v = _mm256_set1_epi64x(static_cast<long long>(Load64(p)));
  const __m256i s = _mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 2, 4, 6));
  return _mm256_and_si256(s, _mm256_set1_epi8(0x03));
}

template <>
inline __m256i Unpack<3>(const uint8_t* p, int block, int nb) {
  __m256i lo;
  uint32_t hw;
  if (Q3Alone(block, nb)) {
    lo = Unpack<2>(p, 0, 0);
    hw = Load32(p + 8);
  } else {
    // Half h of a pair [W0][W1][H]: 64-bit lane j of [W0 W1 W0 W1] holds codes
    // 8j..8j+7 at bit 4h + 2 * (j / 2) of each byte.
    const int h = block % 2;
    const uint8_t* pair = p - 12 * h;
    const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(pair)));
    const __m256i s = _mm256_add_epi64(_mm256_setr_epi64x(0, 0, 2, 2), _mm256_set1_epi64x(4 * h));
    lo = _mm256_and_si256(_mm256_srlv_epi64(v, s), _mm256_set1_epi8(0x03));
    hw = Load32(pair + 16 + 4 * h);
  }
  // High word: bit k is code k's bit 2. Byte k gets byte k / 8 of the word, then
  // its own bit k % 8 is tested.
  const __m256i h = _mm256_set1_epi32(static_cast<int>(hw));
  const __m256i spread = _mm256_shuffle_epi8(
      h, _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3,
                          3, 3, 3, 3, 3, 3));
  const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
  return _mm256_or_si256(lo, _mm256_and_si256(set, _mm256_set1_epi8(0x04)));
}

// Sum over 32 bytes of unsigned codes times signed int8, as 8 int32 partial sums
// converted to float.
inline __m256 DotBlock(__m256i codes, __m256i q, __m256i ones16) {
  const __m256i p16 = _mm256_maddubs_epi16(codes, q);
  return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones16));
}

// ---- Activation quantization ----------------------------------------------------------

// Loads block b of x (zero-filled past cols) into v[4].
inline void LoadXBlock(const float* x, int cols, int b, __m256 v[4]) {
  const int k0 = b * 32;
  if (k0 + 32 <= cols) {
    EORA_UNROLL for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_ps(x + k0 + 8 * i);
    return;
  }
  alignas(32) float tmp[32];
  const int valid = cols > k0 ? cols - k0 : 0;
  for (int i = 0; i < 32; ++i) tmp[i] = i < valid ? x[k0 + i] : 0.f;
  EORA_UNROLL for (int i = 0; i < 4; ++i) v[i] = _mm256_load_ps(tmp + 8 * i);
}

void QuantizeRow(const float* x, int cols, int padded_cols, int span, int8_t* q, float* d, float* s) {
  const int nb = padded_cols / 32;
  if (span < 1) span = 1;
  const __m256 sign = _mm256_set1_ps(-0.f);
  const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  for (int b0 = 0; b0 < nb; b0 += span) {
    const int b1 = Min(nb, b0 + span);
    __m256 m = _mm256_setzero_ps();
    for (int b = b0; b < b1; ++b) {
      __m256 v[4];
      LoadXBlock(x, cols, b, v);
      m = _mm256_max_ps(m, _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                                         _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3]))));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float amax = _mm_cvtss_f32(m4);
    const float db = amax / 127.f;
    const float id = db > 0 ? 1.f / db : 0.f;
    const __m256 vid = _mm256_set1_ps(id);
    for (int b = b0; b < b1; ++b) {
      __m256 v[4];
      LoadXBlock(x, cols, b, v);
      __m256i iv[4];
      EORA_UNROLL for (int i = 0; i < 4; ++i) iv[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], vid));
      // Integer sum of the 32 codes.
      const __m256i s8 = _mm256_add_epi32(_mm256_add_epi32(iv[0], iv[1]), _mm256_add_epi32(iv[2], iv[3]));
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
      s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
      const int isum = _mm_cvtsi128_si32(s4);
      const __m256i p01 = _mm256_packs_epi32(iv[0], iv[1]);
      const __m256i p23 = _mm256_packs_epi32(iv[2], iv[3]);
      const __m256i p = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p01, p23), perm);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 32 * b), p);
      d[b] = db;
      s[b] = db * static_cast<float>(isum);
    }
  }
}

// ---- Dense -------------------------------------------------------------------------

template <int kType>
inline __m256 Load8(const void* w, size_t i) {
  if constexpr (kType == kDenseF32) {
    return _mm256_loadu_ps(static_cast<const float*>(w) + i);
  } else if constexpr (kType == kDenseF16) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i)));
  } else {
    const __m256i v = _mm256_cvtepu16_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(w) + i)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  }
}

// First `count` (< 8) elements at w[i], zero-filled.
// Lanes [0, count) all ones: kLaneMask + 8 - count.
alignas(64) constexpr int32_t kLaneMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

template <int kType>
inline __m256 LoadPartial(const void* w, size_t i, int count) {
  if constexpr (kType == kDenseF32) {
    // A masked load reads no byte past the last valid element.
    const __m256i mask = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLaneMask + 8 - count));
    return _mm256_maskload_ps(static_cast<const float*>(w) + i, mask);
  } else {
    alignas(16) uint16_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::memcpy(tmp, static_cast<const uint16_t*>(w) + i, sizeof(uint16_t) * count);
    return Load8<kType>(tmp, 0);
  }
}

inline __m256 LoadPartialF32(const float* x, int count) { return LoadPartial<kDenseF32>(x, 0, count); }

// n == 1, one row: four accumulators (FMA latency), 32 columns per step.
template <int kType>
float DenseDotRow(const void* w, size_t base, int cols, const float* x) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  int k = 0;
  for (; k + 32 <= cols; k += 32) {
    a0 = _mm256_fmadd_ps(Load8<kType>(w, base + k), _mm256_loadu_ps(x + k), a0);
    a1 = _mm256_fmadd_ps(Load8<kType>(w, base + k + 8), _mm256_loadu_ps(x + k + 8), a1);
    a2 = _mm256_fmadd_ps(Load8<kType>(w, base + k + 16), _mm256_loadu_ps(x + k + 16), a2);
    a3 = _mm256_fmadd_ps(Load8<kType>(w, base + k + 24), _mm256_loadu_ps(x + k + 24), a3);
  }
  for (; k + 8 <= cols; k += 8) a0 = _mm256_fmadd_ps(Load8<kType>(w, base + k), _mm256_loadu_ps(x + k), a0);
  if (k < cols) a1 = _mm256_fmadd_ps(LoadPartial<kType>(w, base + k, cols - k), LoadPartialF32(x + k, cols - k), a1);
  return Hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
}

// n > 1: kR rows x kT activation rows, one accumulator each.
template <int kType, int kR, int kT>
void DenseGemmTile(const void* w, int cols, int r, const float* x, int ldx, float* y, int ldy) {
  __m256 acc[kR][kT];
  EORA_UNROLL for (int i = 0; i < kR; ++i)
    EORA_UNROLL for (int j = 0; j < kT; ++j) acc[i][j] = _mm256_setzero_ps();
  size_t base[kR];
  EORA_UNROLL for (int i = 0; i < kR; ++i) base[i] = static_cast<size_t>(r + i) * cols;
  int k = 0;
  for (; k + 8 <= cols; k += 8) {
    __m256 wv[kR];
    EORA_UNROLL for (int i = 0; i < kR; ++i) wv[i] = Load8<kType>(w, base[i] + k);
    EORA_UNROLL for (int j = 0; j < kT; ++j) {
      const __m256 xv = _mm256_loadu_ps(x + static_cast<size_t>(j) * ldx + k);
      EORA_UNROLL for (int i = 0; i < kR; ++i) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
    }
  }
  if (k < cols) {
    __m256 wv[kR];
    EORA_UNROLL for (int i = 0; i < kR; ++i) wv[i] = LoadPartial<kType>(w, base[i] + k, cols - k);
    EORA_UNROLL for (int j = 0; j < kT; ++j) {
      const __m256 xv = LoadPartialF32(x + static_cast<size_t>(j) * ldx + k, cols - k);
      EORA_UNROLL for (int i = 0; i < kR; ++i) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
    }
  }
  if constexpr (kR == 2 && kT % 2 == 0) {
    // Four sums per Hsum4 (same association order as Hsum): rows r, r+1 of two
    // activation rows.
    EORA_UNROLL for (int j = 0; j < kT; j += 2) {
      const __m128 s = Hsum4(acc[0][j], acc[1][j], acc[0][j + 1], acc[1][j + 1]);
      _mm_storel_pi(reinterpret_cast<__m64*>(y + static_cast<size_t>(j) * ldy + r), s);
      _mm_storeh_pi(reinterpret_cast<__m64*>(y + static_cast<size_t>(j + 1) * ldy + r), s);
    }
  } else if constexpr (kR * kT % 4 == 0) {
    // Four sums per Hsum4 through a small buffer.
    alignas(16) float sums[kR * kT];
    EORA_UNROLL for (int g = 0; g < kR * kT; g += 4)
      _mm_store_ps(sums + g, Hsum4(acc[g % kR][g / kR], acc[(g + 1) % kR][(g + 1) / kR],
                                   acc[(g + 2) % kR][(g + 2) / kR], acc[(g + 3) % kR][(g + 3) / kR]));
    EORA_UNROLL for (int j = 0; j < kT; ++j)
      EORA_UNROLL for (int i = 0; i < kR; ++i) y[static_cast<size_t>(j) * ldy + r + i] = sums[j * kR + i];
  } else {
    EORA_UNROLL for (int j = 0; j < kT; ++j)
      EORA_UNROLL for (int i = 0; i < kR; ++i) y[static_cast<size_t>(j) * ldy + r + i] = Hsum(acc[i][j]);
  }
}

template <int kType, int kR>
void DenseGemmRows(const void* w, int cols, int r, const float* x, int n, int ldx, float* y, int ldy) {
  int t = 0;
  for (; t + 4 <= n; t += 4)
    DenseGemmTile<kType, kR, 4>(w, cols, r, x + static_cast<size_t>(t) * ldx, ldx, y + static_cast<size_t>(t) * ldy, ldy);
  const float* xt = x + static_cast<size_t>(t) * ldx;
  float* yt = y + static_cast<size_t>(t) * ldy;
  switch (n - t) {
    case 3: DenseGemmTile<kType, kR, 3>(w, cols, r, xt, ldx, yt, ldy); break;
    case 2: DenseGemmTile<kType, kR, 2>(w, cols, r, xt, ldx, yt, ldy); break;
    case 1: DenseGemmTile<kType, kR, 1>(w, cols, r, xt, ldx, yt, ldy); break;
    default: break;
  }
}

// Software prefetch of `count` rows of `row_bytes` starting at row r (clamped to
// `rows`): the weights stream from DRAM once per product and the hardware
// prefetchers alone keep too few lines in flight for the 4 row streams of a tile.
inline void PrefetchBytes(const void* base, size_t row_bytes, int rows, int r, int count) {
  if (r >= rows) return;
  if (r + count > rows) count = rows - r;
  const char* p = static_cast<const char*>(base) + static_cast<size_t>(r) * row_bytes;
  const size_t bytes = static_cast<size_t>(count) * row_bytes;
  for (size_t off = 0; off < bytes; off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
}

template <int kType>
void DenseGemm(const void* w, int cols, int r0, int r1, const float* x, int n, int ldx, float* y, int ldy) {
  if (n == 1) {
    // One row at a time (a single weight stream streams from DRAM faster than
    // four interleaved ones), prefetching 4 rows ahead.
    const size_t row_bytes = static_cast<size_t>(cols) * (kType == kDenseF32 ? 4 : 2);
    PrefetchBytes(w, row_bytes, r1, r0, 4);
    for (int r = r0; r < r1; ++r) {
      PrefetchBytes(w, row_bytes, r1, r + 4, 1);
      y[r] = DenseDotRow<kType>(w, static_cast<size_t>(r) * cols, cols, x);
    }
    return;
  }
  int r = r0;
  // 3 x 4 tiles: 12 accumulators (3 FMA chains per load of x), then 2 x 4.
  for (; r + 3 <= r1; r += 3) DenseGemmRows<kType, 3>(w, cols, r, x, n, ldx, y, ldy);
  for (; r + 2 <= r1; r += 2) DenseGemmRows<kType, 2>(w, cols, r, x, n, ldx, y, ldy);
  if (r < r1) DenseGemmRows<kType, 1>(w, cols, r, x, n, ldx, y, ldy);
}

// y[t][c] += sum_j u[t][j] W[j][c]: columns in chunks of 32 (4 vectors), kT
// activation rows at a time.
template <int kType, int kT>
void DenseAccTTile(const void* w, int cols, const float* u, int ldu, int r, float* y, int ldy, int c0, int c1) {
  int c = c0;
  for (; c + 32 <= c1; c += 32) {
    __m256 acc[kT][4];
    EORA_UNROLL for (int t = 0; t < kT; ++t)
      EORA_UNROLL for (int i = 0; i < 4; ++i) acc[t][i] = _mm256_setzero_ps();
    for (int j = 0; j < r; ++j) {
      const size_t base = static_cast<size_t>(j) * cols + c;
      __m256 wv[4];
      EORA_UNROLL for (int i = 0; i < 4; ++i) wv[i] = Load8<kType>(w, base + 8 * i);
      EORA_UNROLL for (int t = 0; t < kT; ++t) {
        const __m256 ub = _mm256_broadcast_ss(u + static_cast<size_t>(t) * ldu + j);
        EORA_UNROLL for (int i = 0; i < 4; ++i) acc[t][i] = _mm256_fmadd_ps(wv[i], ub, acc[t][i]);
      }
    }
    EORA_UNROLL for (int t = 0; t < kT; ++t) {
      float* yt = y + static_cast<size_t>(t) * ldy + c;
      EORA_UNROLL for (int i = 0; i < 4; ++i) _mm256_storeu_ps(yt + 8 * i, _mm256_add_ps(_mm256_loadu_ps(yt + 8 * i), acc[t][i]));
    }
  }
  for (; c < c1; c += 8) {
    const int cnt = Min(8, c1 - c);
    __m256 acc[kT];
    EORA_UNROLL for (int t = 0; t < kT; ++t) acc[t] = _mm256_setzero_ps();
    for (int j = 0; j < r; ++j) {
      const size_t base = static_cast<size_t>(j) * cols + c;
      const __m256 wv = cnt == 8 ? Load8<kType>(w, base) : LoadPartial<kType>(w, base, cnt);
      EORA_UNROLL for (int t = 0; t < kT; ++t)
        acc[t] = _mm256_fmadd_ps(wv, _mm256_broadcast_ss(u + static_cast<size_t>(t) * ldu + j), acc[t]);
    }
    EORA_UNROLL for (int t = 0; t < kT; ++t) {
      alignas(32) float tmp[8];
      _mm256_store_ps(tmp, acc[t]);
      float* yt = y + static_cast<size_t>(t) * ldy + c;
      for (int i = 0; i < cnt; ++i) yt[i] += tmp[i];
    }
  }
}

template <int kType>
void DenseAccT(const void* w, int cols, const float* u, int ldu, int n, int r, float* y, int ldy, int c0, int c1) {
  int t = 0;
  for (; t + 2 <= n; t += 2)
    DenseAccTTile<kType, 2>(w, cols, u + static_cast<size_t>(t) * ldu, ldu, r, y + static_cast<size_t>(t) * ldy, ldy, c0, c1);
  if (t < n)
    DenseAccTTile<kType, 1>(w, cols, u + static_cast<size_t>(t) * ldu, ldu, r, y + static_cast<size_t>(t) * ldy, ldy, c0, c1);
}

// ---- Group-wise quantized --------------------------------------------------------------

// Combined per-block scales of one weight row and one activation row:
// out[b] = scale[b / bpg] * d[b]. (Vector paths for the common group sizes; the
// product is the same IEEE multiplication on every path.)
inline void BlockScales(const uint16_t* sc, int groups, int bpg, int nb, const float* d, float* out) {
  int b = 0;
  if (groups == 1) {
    const float s = HalfToFloat(sc[0]);
    const __m256 v = _mm256_set1_ps(s);
    for (; b + 8 <= nb; b += 8) _mm256_storeu_ps(out + b, _mm256_mul_ps(v, _mm256_loadu_ps(d + b)));
    for (; b < nb; ++b) out[b] = s * d[b];
    return;
  }
  if (bpg == 1) {
    for (; b + 8 <= nb; b += 8) {
      const __m256 v = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + b)));
      _mm256_storeu_ps(out + b, _mm256_mul_ps(v, _mm256_loadu_ps(d + b)));
    }
  } else if (bpg == 2) {
    const __m256i idx = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    for (; b + 8 <= nb; b += 8) {  // groups b/2 .. b/2+3 exist
      const __m128 s4 = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(sc + b / 2)));
      const __m256 v = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(s4), idx);
      _mm256_storeu_ps(out + b, _mm256_mul_ps(v, _mm256_loadu_ps(d + b)));
    }
  } else if (bpg == 4) {
    const __m256i idx = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    for (; b + 8 <= nb; b += 8) {  // groups b/4, b/4+1 exist
      int32_t two;
      std::memcpy(&two, sc + b / 4, 4);
      const __m128 s2 = _mm_cvtph_ps(_mm_cvtsi32_si128(two));
      const __m256 v = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(s2), idx);
      _mm256_storeu_ps(out + b, _mm256_mul_ps(v, _mm256_loadu_ps(d + b)));
    }
  } else if (bpg % 8 == 0) {
    for (; b + 8 <= nb; b += 8) {  // 8 blocks inside one group
      const __m256 v = _mm256_set1_ps(HalfToFloat(sc[b / bpg]));
      _mm256_storeu_ps(out + b, _mm256_mul_ps(v, _mm256_loadu_ps(d + b)));
    }
  }
  for (; b < nb; ++b) out[b] = HalfToFloat(sc[b / bpg]) * d[b];
}

// sum_g min[g] * gsum[g] (8, then 4 groups per step, then scalar).
inline float MinTerm(const uint16_t* mn, const float* gs, int groups) {
  int g = 0;
  __m128 a4 = _mm_setzero_ps();
  if (groups >= 8) {
    __m256 a = _mm256_setzero_ps();
    for (; g + 8 <= groups; g += 8) {
      const __m256 m = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(mn + g)));
      a = _mm256_fmadd_ps(m, _mm256_loadu_ps(gs + g), a);
    }
    a4 = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  }
  for (; g + 4 <= groups; g += 4) {
    const __m128 m = _mm_cvtph_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(mn + g)));
    a4 = _mm_fmadd_ps(m, _mm_loadu_ps(gs + g), a4);
  }
  a4 = _mm_add_ps(a4, _mm_movehl_ps(a4, a4));
  a4 = _mm_add_ss(a4, _mm_movehdup_ps(a4));
  float acc = _mm_cvtss_f32(a4);
  for (; g < groups; ++g) acc += HalfToFloat(mn[g]) * gs[g];
  return acc;
}

// Blocks per column chunk of the quantized kernels: the combined scales of a tile
// live in a [kR * kT][kChunk] array with a compile-time stride.
constexpr int kChunk = 64;

// kR weight rows x kT activation rows. Runs of kRL consecutive blocks that share
// both the activation scale and the weight group add their maddubs products in
// int16 (|sum| <= 4 * 2 * 15 * 127 < 2^15) before one madd/convert/fma.
template <int kBits, int kR, int kT, int kRL>
void QuantTile(const QuantView& w, const QActView& x, float* y, int ldy, int r, int t0) {
  constexpr int kBB = QuantBlockBytes(kBits);
  const int nb = w.blocks;
  alignas(32) float sc[kR * kT][kChunk];
  const uint8_t* rows[kR];
  EORA_UNROLL for (int i = 0; i < kR; ++i) rows[i] = w.codes + static_cast<size_t>(r + i) * w.row_bytes;
  const int8_t* qrow[kT];
  EORA_UNROLL for (int j = 0; j < kT; ++j) qrow[j] = x.q + static_cast<size_t>(t0 + j) * x.padded_cols;

  const __m256i ones = _mm256_set1_epi16(1);
  __m256 total[kR][kT];
  EORA_UNROLL for (int i = 0; i < kR; ++i)
    EORA_UNROLL for (int j = 0; j < kT; ++j) total[i][j] = _mm256_setzero_ps();
  for (int c0 = 0; c0 < nb; c0 += kChunk) {
    const int cn = Min(kChunk, nb - c0);
    // Combined scales of this chunk. The chunk starts at a multiple of 64 blocks,
    // so for the group sizes with vector paths (bpg 1, 2, 4, multiples of 8)
    // groups do not straddle chunks; BlockScales is given the chunk's first group.
    EORA_UNROLL for (int i = 0; i < kR; ++i) {
      const uint16_t* srow = w.scale + static_cast<size_t>(r + i) * w.groups;
      EORA_UNROLL for (int j = 0; j < kT; ++j) {
        const float* d = x.d + static_cast<size_t>(t0 + j) * x.nb + c0;
        float* out = sc[i * kT + j];
        if (w.groups == 1) {
          BlockScales(srow, 1, w.bpg, cn, d, out);
        } else if (c0 % w.bpg == 0) {
          BlockScales(srow + c0 / w.bpg, w.groups - c0 / w.bpg, w.bpg, cn, d, out);
        } else {
          for (int b = 0; b < cn; ++b) out[b] = HalfToFloat(srow[(c0 + b) / w.bpg]) * d[b];
        }
      }
    }
    const uint8_t* wp[kR];
    EORA_UNROLL for (int i = 0; i < kR; ++i) wp[i] = rows[i] + static_cast<size_t>(c0) * kBB;
    const int8_t* qp[kT];
    EORA_UNROLL for (int j = 0; j < kT; ++j) qp[j] = qrow[j] + 32 * c0;
    // Accumulators live for one chunk only (keeps GCC from spilling them).
    __m256 acc[kR][kT];
    EORA_UNROLL for (int i = 0; i < kR; ++i)
      EORA_UNROLL for (int j = 0; j < kT; ++j) acc[i][j] = _mm256_setzero_ps();
    int b = 0;
    if constexpr (kBits == 4 && kRL > 1 && kT == 1) {
      // 4-bit GEMV, two blocks per 32-byte load: the low nibbles are codes 0-15
      // of both blocks, the high nibbles codes 16-31, so the run's activations are
      // regrouped once (shared by the kR rows) to [q_b[0:16] | q_b+1[0:16]] and
      // [q_b[16:32] | q_b+1[16:32]]. All blocks of a run share the scale, so which
      // lane holds which block does not matter; int16 sums stay < 2^15 as above.
      const __m256i nib = _mm256_set1_epi8(0x0F);
      for (; b + kRL <= cn; b += kRL) {
        __m256i xl[kRL / 2], xh[kRL / 2];
        EORA_UNROLL for (int u = 0; u < kRL / 2; ++u) {
          const __m256i qa = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qp[0] + 32 * (b + 2 * u)));
          const __m256i qb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qp[0] + 32 * (b + 2 * u + 1)));
          xl[u] = _mm256_permute2x128_si256(qa, qb, 0x20);
          xh[u] = _mm256_permute2x128_si256(qa, qb, 0x31);
        }
        EORA_UNROLL for (int i = 0; i < kR; ++i) {
          __m256i p16 = _mm256_setzero_si256();
          EORA_UNROLL for (int u = 0; u < kRL / 2; ++u) {
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp[i] + (b + 2 * u) * kBB));
            const __m256i lo = _mm256_and_si256(v, nib);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);
            const __m256i s = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xl[u]), _mm256_maddubs_epi16(hi, xh[u]));
            p16 = u == 0 ? s : _mm256_add_epi16(p16, s);
          }
          const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
          acc[i][0] = _mm256_fmadd_ps(dot, _mm256_broadcast_ss(&sc[i][b]), acc[i][0]);
        }
      }
    } else if constexpr (kRL > 1 && kT == 1) {
      // GEMV: one weight row at a time through the run (few live registers);
      // the activation blocks are re-loaded from L1 for each row.
      for (; b + kRL <= cn; b += kRL) {
        EORA_UNROLL for (int i = 0; i < kR; ++i) {
          __m256i p16 = _mm256_maddubs_epi16(Unpack<kBits>(wp[i] + b * kBB, c0 + b, nb),
                                             _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qp[0] + 32 * b)));
          EORA_UNROLL for (int u = 1; u < kRL; ++u) {
            const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qp[0] + 32 * (b + u)));
            p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(Unpack<kBits>(wp[i] + (b + u) * kBB, c0 + b + u, nb), qv));
          }
          const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
          acc[i][0] = _mm256_fmadd_ps(dot, _mm256_broadcast_ss(&sc[i][b]), acc[i][0]);
        }
      }
    } else if constexpr (kRL > 1) {
      // GEMM: unpack the run of each weight row once, use it for kT activation rows.
      for (; b + kRL <= cn; b += kRL) {
        EORA_UNROLL for (int i = 0; i < kR; ++i) {
          __m256i wv[kRL];
          EORA_UNROLL for (int u = 0; u < kRL; ++u) wv[u] = Unpack<kBits>(wp[i] + (b + u) * kBB, c0 + b + u, nb);
          EORA_UNROLL for (int j = 0; j < kT; ++j) {
            __m256i p16 = _mm256_maddubs_epi16(wv[0], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qp[j] + 32 * b)));
            EORA_UNROLL for (int u = 1; u < kRL; ++u) {
              const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qp[j] + 32 * (b + u)));
              p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(wv[u], qv));
            }
            const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
            acc[i][j] = _mm256_fmadd_ps(dot, _mm256_broadcast_ss(&sc[i * kT + j][b]), acc[i][j]);
          }
        }
      }
    }
    for (; b < cn; ++b) {
      __m256i wv[kR];
      EORA_UNROLL for (int i = 0; i < kR; ++i) wv[i] = Unpack<kBits>(wp[i] + b * kBB, c0 + b, nb);
      EORA_UNROLL for (int j = 0; j < kT; ++j) {
        const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qp[j] + 32 * b));
        EORA_UNROLL for (int i = 0; i < kR; ++i) {
          const __m256 dot = DotBlock(wv[i], qv, ones);
          acc[i][j] = _mm256_fmadd_ps(dot, _mm256_broadcast_ss(&sc[i * kT + j][b]), acc[i][j]);
        }
      }
    }
    EORA_UNROLL for (int i = 0; i < kR; ++i)
      EORA_UNROLL for (int j = 0; j < kT; ++j) total[i][j] = c0 == 0 ? acc[i][j] : _mm256_add_ps(total[i][j], acc[i][j]);
  }
  if constexpr (kT == 4) {
    // Same association per output as Hsum (bit-identical to the 1-row paths).
    EORA_UNROLL for (int i = 0; i < kR; ++i) {
      alignas(16) float h[4];
      _mm_store_ps(h, Hsum4(total[i][0], total[i][1], total[i][2], total[i][3]));
      const uint16_t* mn = w.min + static_cast<size_t>(r + i) * w.groups;
      EORA_UNROLL for (int j = 0; j < 4; ++j)
        y[static_cast<size_t>(t0 + j) * ldy + r + i] =
            h[j] + MinTerm(mn, x.gsum + static_cast<size_t>(t0 + j) * x.groups, w.groups);
    }
    return;
  }
  EORA_UNROLL for (int j = 0; j < kT; ++j) {
    const float* gs = x.gsum + static_cast<size_t>(t0 + j) * x.groups;
    float* yj = y + static_cast<size_t>(t0 + j) * ldy + r;
    if constexpr (kR == 4) {
      // Same association per row as Hsum (bit-identical to the 1-row path).
      alignas(16) float h[4];
      _mm_store_ps(h, Hsum4(total[0][j], total[1][j], total[2][j], total[3][j]));
      EORA_UNROLL for (int i = 0; i < 4; ++i)
        yj[i] = h[i] + MinTerm(w.min + static_cast<size_t>(r + i) * w.groups, gs, w.groups);
    } else {
      EORA_UNROLL for (int i = 0; i < kR; ++i)
        yj[i] = Hsum(total[i][j]) + MinTerm(w.min + static_cast<size_t>(r + i) * w.groups, gs, w.groups);
    }
  }
}

template <int kBits, int kR, int kRL>
void QuantRowsAllT(const QuantView& w, const QActView& x, float* y, int ldy, int r) {
  int t = 0;
  for (; t + 4 <= x.n; t += 4) QuantTile<kBits, kR, 4, kRL>(w, x, y, ldy, r, t);
  switch (x.n - t) {
    case 3: QuantTile<kBits, kR, 3, kRL>(w, x, y, ldy, r, t); break;
    case 2: QuantTile<kBits, kR, 2, kRL>(w, x, y, ldy, r, t); break;
    case 1: QuantTile<kBits, kR, 1, kRL>(w, x, y, ldy, r, t); break;
    default: break;
  }
}

// Software prefetch of the codes of rows [r, r + count) (clamped to the matrix):
// decode streams the weights once, and the hardware prefetchers alone do not keep
// enough lines in flight across the several row streams of a tile.
inline void PrefetchRows(const QuantView& w, int r, int count) {
  if (r >= w.rows) return;
  if (r + count > w.rows) count = w.rows - r;
  const char* p = reinterpret_cast<const char*>(w.codes + static_cast<size_t>(r) * w.row_bytes);
  const size_t bytes = static_cast<size_t>(count) * w.row_bytes;
  for (size_t off = 0; off < bytes; off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
}

// ---- Quantized GEMM (several activation rows: prefill, batches) ----------------------
//
// The activation scale is shared by aligned spans of kSpan = 4 blocks (x.span), so
// per weight row and activation row the product is
//   sum_spans d[t][span] * sum_{sub-runs in span} s[r][g] * isum(sub-run)
// where a sub-run is kG consecutive blocks of one weight group whose maddubs
// products add in int16. Per sub-run: madd, convert, one FMA with the broadcast
// weight scale (shared by the kT activation rows); per span: one FMA with the
// activation scale. The min term sum_g min[r][g] * gsum[t][g] is computed for 4
// activation rows at once from a transposed copy of gsum. Tiles: 1 weight row x
// kT = 4 activation rows, rows in blocks of kRowBlock so that their codes stay in L1
// while all activation tiles pass.
constexpr int kSpan = 4;
constexpr int kRowBlock = 16;

template <int kBits, int kT, int kG>
inline void GemmSubRun(const uint8_t* wp, const int8_t* const* qp, int b, int nb, __m256 sbc, __m256* sacc,
                       __m256i ones) {
  constexpr int kBB = QuantBlockBytes(kBits);
  __m256i wv[kG];
  EORA_UNROLL for (int u = 0; u < kG; ++u) wv[u] = Unpack<kBits>(wp + (b + u) * kBB, b + u, nb);
  EORA_UNROLL for (int t = 0; t < kT; ++t) {
    __m256i p16 = _mm256_maddubs_epi16(wv[0], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qp[t] + 32 * b)));
    EORA_UNROLL for (int u = 1; u < kG; ++u)
      p16 = _mm256_add_epi16(
          p16, _mm256_maddubs_epi16(wv[u], _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qp[t] + 32 * (b + u)))));
    sacc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones)), sbc, sacc[t]);
  }
}

// One weight row (codes `wp`, float weight scale of each block `sf`) times kT
// activation rows: the kT dot products without the min term.
template <int kBits, int kT, int kG>
inline __m128 GemmTile(const QuantView& w, const QActView& x, const uint8_t* wp, const float* sf,
                       int t0) {
  const int nb = w.blocks;
  const int8_t* qp[kT];
  const float* dp[kT];
  EORA_UNROLL for (int t = 0; t < kT; ++t) {
    qp[t] = x.q + static_cast<size_t>(t0 + t) * x.padded_cols;
    dp[t] = x.d + static_cast<size_t>(t0 + t) * x.nb;
  }
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[kT];
  EORA_UNROLL for (int t = 0; t < kT; ++t) acc[t] = _mm256_setzero_ps();
  for (int s0 = 0; s0 < nb; s0 += kSpan) {
    const int s1 = Min(nb, s0 + kSpan);
    __m256 sacc[kT];
    EORA_UNROLL for (int t = 0; t < kT; ++t) sacc[t] = _mm256_setzero_ps();
    int b = s0;
    if (s1 - s0 == kSpan) {
      EORA_UNROLL for (int u = 0; u < kSpan / kG; ++u) {
        const int bb = s0 + u * kG;
        const __m256 sbc = _mm256_broadcast_ss(sf + bb);
        GemmSubRun<kBits, kT, kG>(wp, qp, bb, nb, sbc, sacc, ones);
      }
      b = s1;
    }
    for (; b < s1; ++b) {  // partial last span: block by block
      const __m256 sbc = _mm256_broadcast_ss(sf + b);
      GemmSubRun<kBits, kT, 1>(wp, qp, b, nb, sbc, sacc, ones);
    }
    EORA_UNROLL for (int t = 0; t < kT; ++t)
      acc[t] = _mm256_fmadd_ps(sacc[t], _mm256_broadcast_ss(dp[t] + s0), acc[t]);
  }
  if constexpr (kT == 4) {
    return Hsum4(acc[0], acc[1], acc[2], acc[3]);
  } else {
    alignas(16) float h[4] = {0, 0, 0, 0};
    EORA_UNROLL for (int t = 0; t < kT; ++t) h[t] = Hsum(acc[t]);
    return _mm_load_ps(h);
  }
}

template <int kBits, int kG>
void QuantGemmMulti(const QuantView& w, const QActView& x, float* y, int ldy, int r0, int r1) {
  const int n = x.n;
  const int np = (n + 3) / 4 * 4;
  const int groups = w.groups;
  const int nb = w.blocks;
  // Scratch: gsum transposed [groups][np], then for a row block the weight scale of
  // every block [kRowBlock][nb] and the mins [kRowBlock][groups].
  float* scratch = ScratchFloats(static_cast<size_t>(groups) * np + kRowBlock * (nb + groups) + 16);
  float* gst = scratch;
  float* sf = gst + static_cast<size_t>(groups) * np;
  float* mf = sf + kRowBlock * nb;
  for (int g = 0; g < groups; ++g) {
    for (int t = 0; t < n; ++t) gst[static_cast<size_t>(g) * np + t] = x.gsum[static_cast<size_t>(t) * x.groups + g];
    for (int t = n; t < np; ++t) gst[static_cast<size_t>(g) * np + t] = 0.f;
  }
  for (int rb = r0; rb < r1; rb += kRowBlock) {
    const int re = Min(r1, rb + kRowBlock);
    for (int r = rb; r < re; ++r) {
      const uint16_t* sc = w.scale + static_cast<size_t>(r) * groups;
      const uint16_t* mn = w.min + static_cast<size_t>(r) * groups;
      float* sr = sf + (r - rb) * nb;
      float* mr = mf + (r - rb) * groups;
      for (int g = 0, b = 0; g < groups; ++g) {
        const float v = HalfToFloat(sc[g]);
        const int b1 = Min(nb, (g + 1) * w.bpg);
        for (; b < b1; ++b) sr[b] = v;
        mr[g] = HalfToFloat(mn[g]);
      }
    }
    for (int t0 = 0; t0 < n; t0 += 4) {
      const int kt = Min(4, n - t0);
      for (int r = rb; r < re; ++r) {
        const uint8_t* wp = w.codes + static_cast<size_t>(r) * w.row_bytes;
        const float* sr = sf + (r - rb) * nb;
        const float* mr = mf + (r - rb) * groups;
        __m128 v;
        switch (kt) {
          case 4: v = GemmTile<kBits, 4, kG>(w, x, wp, sr, t0); break;
          case 3: v = GemmTile<kBits, 3, kG>(w, x, wp, sr, t0); break;
          case 2: v = GemmTile<kBits, 2, kG>(w, x, wp, sr, t0); break;
          default: v = GemmTile<kBits, 1, kG>(w, x, wp, sr, t0); break;
        }
        __m128 m = _mm_setzero_ps();
        for (int g = 0; g < groups; ++g)
          m = _mm_fmadd_ps(_mm_set1_ps(mr[g]), _mm_loadu_ps(gst + static_cast<size_t>(g) * np + t0), m);
        alignas(16) float out[4];
        _mm_store_ps(out, _mm_add_ps(v, m));
        for (int t = 0; t < kt; ++t) y[static_cast<size_t>(t0 + t) * ldy + r] = out[t];
      }
    }
  }
}

// Whether QuantGemmMulti handles this matrix and activation layout; *kg = sub-run.
inline bool MultiPath(const QuantView& w, const QActView& x, int* kg) {
  if (x.span != kSpan) return false;
  if (w.groups == 1 || w.bpg % 4 == 0) {
    *kg = 4;
  } else if (w.bpg == 1 || w.bpg == 2) {
    *kg = w.bpg;
  } else {
    return false;
  }
  return true;
}

template <int kBits, int kRL>
void QuantGemmRL(const QuantView& w, const QActView& x, float* y, int ldy, int r0, int r1) {
  if (x.n == 1) {
    // 4 weight rows per tile share each activation load (measured faster than 1 or
    // 2 rows, for 3-bit too).
    constexpr int kGR = 4;
    int r = r0;
    PrefetchRows(w, r, 2 * kGR);
    for (; r + kGR <= r1; r += kGR) {
      PrefetchRows(w, r + 2 * kGR, kGR);
      QuantTile<kBits, kGR, 1, kRL>(w, x, y, ldy, r, 0);
    }
    for (; r < r1; ++r) QuantTile<kBits, 1, 1, kRL>(w, x, y, ldy, r, 0);
    return;
  }
  int kg = 0;
  if (MultiPath(w, x, &kg)) {
    switch (kg) {
      case 4: QuantGemmMulti<kBits, 4>(w, x, y, ldy, r0, r1); return;
      case 2: QuantGemmMulti<kBits, 2>(w, x, y, ldy, r0, r1); return;
      default: QuantGemmMulti<kBits, 1>(w, x, y, ldy, r0, r1); return;
    }
  }
  if constexpr (kRL == 1) {
    // 2 weight rows x 4 activation rows: each unpacked block serves 4 products.
    int r = r0;
    for (; r + 2 <= r1; r += 2) QuantRowsAllT<kBits, 2, 1>(w, x, y, ldy, r);
    if (r < r1) QuantRowsAllT<kBits, 1, 1>(w, x, y, ldy, r);
  } else {
    // 1 x 4 (the int16 partial sums take the registers of the second row).
    for (int r = r0; r < r1; ++r) QuantRowsAllT<kBits, 1, kRL>(w, x, y, ldy, r);
  }
}

template <int kBits>
void QuantGemm(const QuantView& w, const QActView& x, float* y, int ldy, int r0, int r1) {
  // Run length: blocks sharing the activation scale (aligned runs of x.span) and
  // the weight group (aligned runs of bpg; any run when there is one group per row).
  int rl = 1;
  const bool one_group = w.groups == 1;
  if (x.span % 4 == 0 && (one_group || w.bpg % 4 == 0)) {
    rl = 4;
  } else if (x.span % 2 == 0 && (one_group || w.bpg % 2 == 0)) {
    rl = 2;
  }
  switch (rl) {
    case 4: QuantGemmRL<kBits, 4>(w, x, y, ldy, r0, r1); break;
    case 2: QuantGemmRL<kBits, 2>(w, x, y, ldy, r0, r1); break;
    default: QuantGemmRL<kBits, 1>(w, x, y, ldy, r0, r1); break;
  }
}

// Codes of one block as 4 float vectors (codes 0-7, 8-15, 16-23, 24-31).
inline void CodesToFloat(__m256i c, __m256 f[4]) {
  const __m128i lo = _mm256_castsi256_si128(c);
  const __m128i hi = _mm256_extracti128_si256(c, 1);
  f[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
  f[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8)));
  f[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
  f[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8)));
}

template <int kBits>
void QuantDequantRow(const QuantView& w, int r, float* out) {
  constexpr int kBB = QuantBlockBytes(kBits);
  const uint8_t* row = w.codes + static_cast<size_t>(r) * w.row_bytes;
  const uint16_t* sc = w.scale + static_cast<size_t>(r) * w.groups;
  const uint16_t* mn = w.min + static_cast<size_t>(r) * w.groups;
  for (int b = 0; b < w.blocks; ++b) {
    const int g = b / w.bpg;
    const __m256 s = _mm256_set1_ps(HalfToFloat(sc[g]));
    const __m256 m = _mm256_set1_ps(HalfToFloat(mn[g]));
    __m256 f[4];
    CodesToFloat(Unpack<kBits>(row + static_cast<size_t>(b) * kBB, b, w.blocks), f);
    // mul then add (not fma): bit-exact with scale * code + min.
    EORA_UNROLL for (int i = 0; i < 4; ++i) f[i] = _mm256_add_ps(_mm256_mul_ps(f[i], s), m);
    const int k0 = b * 32;
    if (k0 + 32 <= w.cols) {
      EORA_UNROLL for (int i = 0; i < 4; ++i) _mm256_storeu_ps(out + k0 + 8 * i, f[i]);
    } else {
      alignas(32) float tmp[32];
      EORA_UNROLL for (int i = 0; i < 4; ++i) _mm256_store_ps(tmp + 8 * i, f[i]);
      for (int k = k0; k < w.cols; ++k) out[k] = tmp[k - k0];
    }
  }
}

template <int kBits, int kT>
void QuantAccTTile(const QuantView& w, const float* u, int ldu, int r, float* y, int ldy, int c0, int c1) {
  constexpr int kBB = QuantBlockBytes(kBits);
  for (int b = c0 / 32; b * 32 < c1; ++b) {
    const int g = b / w.bpg;
    __m256 acc[kT][4];
    float cst[kT];
    EORA_UNROLL for (int t = 0; t < kT; ++t) {
      cst[t] = 0.f;
      EORA_UNROLL for (int i = 0; i < 4; ++i) acc[t][i] = _mm256_setzero_ps();
    }
    for (int j = 0; j < r; ++j) {
      __m256 f[4];
      CodesToFloat(Unpack<kBits>(w.codes + static_cast<size_t>(j) * w.row_bytes + static_cast<size_t>(b) * kBB, b, w.blocks), f);
      const float s = HalfToFloat(w.scale[static_cast<size_t>(j) * w.groups + g]);
      const float m = HalfToFloat(w.min[static_cast<size_t>(j) * w.groups + g]);
      EORA_UNROLL for (int t = 0; t < kT; ++t) {
        const float uj = u[static_cast<size_t>(t) * ldu + j];
        const __m256 a = _mm256_set1_ps(uj * s);
        EORA_UNROLL for (int i = 0; i < 4; ++i) acc[t][i] = _mm256_fmadd_ps(f[i], a, acc[t][i]);
        cst[t] += uj * m;
      }
    }
    const int k0 = b * 32;
    const int lo = c0 > k0 ? c0 : k0;
    const int hi = Min(c1, k0 + 32);
    EORA_UNROLL for (int t = 0; t < kT; ++t) {
      float* yt = y + static_cast<size_t>(t) * ldy;
      const __m256 cv = _mm256_set1_ps(cst[t]);
      if (lo == k0 && hi == k0 + 32) {
        EORA_UNROLL for (int i = 0; i < 4; ++i)
          _mm256_storeu_ps(yt + k0 + 8 * i,
                           _mm256_add_ps(_mm256_loadu_ps(yt + k0 + 8 * i), _mm256_add_ps(acc[t][i], cv)));
      } else {
        alignas(32) float tmp[32];
        EORA_UNROLL for (int i = 0; i < 4; ++i) _mm256_store_ps(tmp + 8 * i, _mm256_add_ps(acc[t][i], cv));
        for (int k = lo; k < hi; ++k) yt[k] += tmp[k - k0];
      }
    }
  }
}

template <int kBits>
void QuantAccT(const QuantView& w, const float* u, int ldu, int n, int r, float* y, int ldy, int c0, int c1) {
  int t = 0;
  for (; t + 2 <= n; t += 2)
    QuantAccTTile<kBits, 2>(w, u + static_cast<size_t>(t) * ldu, ldu, r, y + static_cast<size_t>(t) * ldy, ldy, c0, c1);
  if (t < n)
    QuantAccTTile<kBits, 1>(w, u + static_cast<size_t>(t) * ldu, ldu, r, y + static_cast<size_t>(t) * ldy, ldy, c0, c1);
}

// ---- 2:4 sparse, F16 kept values ---------------------------------------------------------

// Gathers, for 8 kept slots whose 16 columns start at c, x[c + 4*(l/2) + pos_l].
inline __m256 Gather8(const float* c, __m256i idx) {
  const __m256 lo = _mm256_permutevar8x32_ps(_mm256_loadu_ps(c), idx);
  const __m256 hi = _mm256_permutevar8x32_ps(_mm256_loadu_ps(c + 8), idx);
  return _mm256_blend_ps(lo, hi, 0xF0);
}

template <int kT>
void Sparse24Tile(const Sparse24View& w, int r, const float* x, int ldx, float* y, int ldy, float* xpad) {
  const int kb = w.kept_blocks;
  const uint16_t* v = w.values + static_cast<size_t>(r) * kb * 32;
  const uint8_t* meta = w.meta + static_cast<size_t>(r) * kb * 8;
  const __m256i base = _mm256_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12);
  __m256 acc[kT];
  EORA_UNROLL for (int t = 0; t < kT; ++t) acc[t] = _mm256_setzero_ps();
  for (int b = 0; b < kb; ++b) {
    const float* xs[kT];
    const int c0 = 64 * b;
    EORA_UNROLL for (int t = 0; t < kT; ++t) {
      xs[t] = x + static_cast<size_t>(t) * ldx + c0;
      if (c0 + 64 > w.cols) {  // last block: zero-padded copy (never read past the row)
        float* p = xpad + 64 * t;
        for (int i = 0; i < 64; ++i) p[i] = c0 + i < w.cols ? xs[t][i] : 0.f;
        xs[t] = p;
      }
    }
    const __m256i pos = Unpack<2>(meta + 8 * b, b, 0);
    const __m128i plo = _mm256_castsi256_si128(pos);
    const __m128i phi = _mm256_extracti128_si256(pos, 1);
    const __m128i p8[4] = {plo, _mm_srli_si128(plo, 8), phi, _mm_srli_si128(phi, 8)};
    EORA_UNROLL for (int h = 0; h < 4; ++h) {
      const __m256i idx = _mm256_add_epi32(_mm256_cvtepu8_epi32(p8[h]), base);
      const __m256 vals = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + 32 * b + 8 * h)));
      EORA_UNROLL for (int t = 0; t < kT; ++t) acc[t] = _mm256_fmadd_ps(vals, Gather8(xs[t] + 16 * h, idx), acc[t]);
    }
  }
  EORA_UNROLL for (int t = 0; t < kT; ++t) y[static_cast<size_t>(t) * ldy + r] = Hsum(acc[t]);
}

void Sparse24Gemm(const Sparse24View& w, const float* x, int n, int ldx, float* y, int ldy, int r0, int r1) {
  float* xpad = ScratchFloats(4 * 64);
  for (int r = r0; r < r1; ++r) {
    int t = 0;
    for (; t + 4 <= n; t += 4)
      Sparse24Tile<4>(w, r, x + static_cast<size_t>(t) * ldx, ldx, y + static_cast<size_t>(t) * ldy, ldy, xpad);
    const float* xt = x + static_cast<size_t>(t) * ldx;
    float* yt = y + static_cast<size_t>(t) * ldy;
    switch (n - t) {
      case 3: Sparse24Tile<3>(w, r, xt, ldx, yt, ldy, xpad); break;
      case 2: Sparse24Tile<2>(w, r, xt, ldx, yt, ldy, xpad); break;
      case 1: Sparse24Tile<1>(w, r, xt, ldx, yt, ldy, xpad); break;
      default: break;
    }
  }
}

// ---- 2:4 sparse, quantized kept values ----------------------------------------------------
//
// Per kept block b (32 slots, columns 64b..64b+63, activation blocks 2b and 2b+1),
// the int8 activations are gathered with two in-lane byte shuffles. To make that
// possible, each 64-byte activation chunk [A0 A1 | B0 B1] (16-byte quarters) is
// first re-ordered once per call into X = [A0 | B0], Y = [A1 | B1]: slots 0..7 come
// from A0, 8..15 from A1, 16..23 from B0, 24..31 from B1.

struct SwizzledActs {
  const uint8_t* q;  // [n][kb][64]
  const float* dv;   // [n][kb][8]: d[2b] x4, d[2b+1] x4 (0 if absent)
};

SwizzledActs Swizzle(const QActView& x, int kb, float* scratch) {
  uint8_t* q = reinterpret_cast<uint8_t*>(scratch);
  float* dv = scratch + static_cast<size_t>(x.n) * kb * 16;
  for (int t = 0; t < x.n; ++t) {
    const int8_t* qt = x.q + static_cast<size_t>(t) * x.padded_cols;
    const float* dt = x.d + static_cast<size_t>(t) * x.nb;
    for (int b = 0; b < kb; ++b) {
      const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qt + 64 * b));  // block 2b exists
      const bool has_b = 2 * b + 1 < x.nb;
      const __m256i bb = has_b ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qt + 64 * b + 32))
                               : _mm256_setzero_si256();
      uint8_t* out = q + (static_cast<size_t>(t) * kb + b) * 64;
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_permute2x128_si256(a, bb, 0x20));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 32), _mm256_permute2x128_si256(a, bb, 0x31));
      const __m128 d0 = _mm_set1_ps(dt[2 * b]);
      const __m128 d1 = _mm_set1_ps(has_b ? dt[2 * b + 1] : 0.f);
      _mm256_storeu_ps(dv + (static_cast<size_t>(t) * kb + b) * 8, _mm256_set_m128(d1, d0));
    }
  }
  return {q, dv};
}

template <int kBits, int kT>
void Sparse24QTile(const Sparse24QuantView& w, const SwizzledActs& sa, int kb, int r, int t0, float* y, int ldy) {
  constexpr int kBB = QuantBlockBytes(kBits);
  const QuantView& qv = w.q;
  const uint8_t* codes = qv.codes + static_cast<size_t>(r) * qv.row_bytes;
  const uint8_t* meta = w.meta + static_cast<size_t>(r) * kb * 8;
  const uint16_t* sc = qv.scale + static_cast<size_t>(r) * qv.groups;
  const uint16_t* mn = qv.min + static_cast<size_t>(r) * qv.groups;
  const __m256i base = _mm256_setr_epi8(0, 0, 4, 4, 8, 8, 12, 12, 0, 0, 4, 4, 8, 8, 12, 12,  //
                                        0, 0, 4, 4, 8, 8, 12, 12, 0, 0, 4, 4, 8, 8, 12, 12);
  const __m256i zero_hi = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, -128, -128, -128, -128, -128, -128, -128, -128,  //
                                           0, 0, 0, 0, 0, 0, 0, 0, -128, -128, -128, -128, -128, -128, -128, -128);
  const __m256i zero_lo = _mm256_setr_epi8(-128, -128, -128, -128, -128, -128, -128, -128, 0, 0, 0, 0, 0, 0, 0, 0,  //
                                           -128, -128, -128, -128, -128, -128, -128, -128, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m256i ones16 = _mm256_set1_epi16(1);
  const __m256i ones8 = _mm256_set1_epi8(1);
  __m256 acc[kT];
  EORA_UNROLL for (int t = 0; t < kT; ++t) acc[t] = _mm256_setzero_ps();
  for (int g = 0; g < qv.groups; ++g) {
    const __m256 s = _mm256_set1_ps(HalfToFloat(sc[g]));
    const __m256 m = _mm256_set1_ps(HalfToFloat(mn[g]));
    const int b1 = Min(kb, (g + 1) * qv.bpg);
    for (int b = g * qv.bpg; b < b1; ++b) {
      const __m256i idx = _mm256_add_epi8(Unpack<2>(meta + 8 * b, b, 0), base);
      const __m256i ix = _mm256_or_si256(idx, zero_hi);
      const __m256i iy = _mm256_or_si256(idx, zero_lo);
      const __m256i cv = Unpack<kBits>(codes + static_cast<size_t>(b) * kBB, b, kb);
      EORA_UNROLL for (int t = 0; t < kT; ++t) {
        const size_t o = static_cast<size_t>(t0 + t) * kb + b;
        const uint8_t* xq = sa.q + o * 64;
        const __m256i gq = _mm256_or_si256(
            _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq)), ix),
            _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + 32)), iy));
        const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(cv, gq), ones16));
        const __m256 qs = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(ones8, gq), ones16));
        const __m256 dv = _mm256_loadu_ps(sa.dv + o * 8);
        acc[t] = _mm256_fmadd_ps(dot, _mm256_mul_ps(dv, s), acc[t]);
        acc[t] = _mm256_fmadd_ps(qs, _mm256_mul_ps(dv, m), acc[t]);
      }
    }
  }
  EORA_UNROLL for (int t = 0; t < kT; ++t) y[static_cast<size_t>(t0 + t) * ldy + r] = Hsum(acc[t]);
}

template <int kBits>
void Sparse24QGemm(const Sparse24QuantView& w, const QActView& x, float* y, int ldy, int r0, int r1) {
  const int kb = w.q.blocks;
  float* scratch = ScratchFloats(static_cast<size_t>(x.n) * kb * 24 + 16);
  const SwizzledActs sa = Swizzle(x, kb, scratch);
  for (int r = r0; r < r1; ++r) {
    int t = 0;
    for (; t + 4 <= x.n; t += 4) Sparse24QTile<kBits, 4>(w, sa, kb, r, t, y, ldy);
    switch (x.n - t) {
      case 3: Sparse24QTile<kBits, 3>(w, sa, kb, r, t, y, ldy); break;
      case 2: Sparse24QTile<kBits, 2>(w, sa, kb, r, t, y, ldy); break;
      case 1: Sparse24QTile<kBits, 1>(w, sa, kb, r, t, y, ldy); break;
      default: break;
    }
  }
}

}  // namespace

void FillAvx2Kernels(KernelTable* t) {
  t->quantize_row = QuantizeRow;
  t->dense_gemm[kDenseF32] = DenseGemm<kDenseF32>;
  t->dense_gemm[kDenseF16] = DenseGemm<kDenseF16>;
  t->dense_gemm[kDenseBF16] = DenseGemm<kDenseBF16>;
  t->dense_acc_t[kDenseF32] = DenseAccT<kDenseF32>;
  t->dense_acc_t[kDenseF16] = DenseAccT<kDenseF16>;
  t->dense_acc_t[kDenseBF16] = DenseAccT<kDenseBF16>;
  t->quant_gemm[2] = QuantGemm<2>;
  t->quant_gemm[3] = QuantGemm<3>;
  t->quant_gemm[4] = QuantGemm<4>;
  t->quant_acc_t[2] = QuantAccT<2>;
  t->quant_acc_t[3] = QuantAccT<3>;
  t->quant_acc_t[4] = QuantAccT<4>;
  t->quant_dequant_row[2] = QuantDequantRow<2>;
  t->quant_dequant_row[3] = QuantDequantRow<3>;
  t->quant_dequant_row[4] = QuantDequantRow<4>;
  t->sparse24_gemm = Sparse24Gemm;
  t->sparse24q_gemm[2] = Sparse24QGemm<2>;
  t->sparse24q_gemm[3] = Sparse24QGemm<3>;
  t->sparse24q_gemm[4] = Sparse24QGemm<4>;
}

}  // namespace eora::cpu
