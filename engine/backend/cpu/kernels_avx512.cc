// AVX-512 (F + BW + VL + DQ) kernels: quantized GEMV/GEMM for 2/3/4-bit codes and
// the dense F32 product. Everything else is inherited from the AVX2 table (every
// AVX-512 CPU has AVX2). Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq
// -mavx2 -mfma -mf16c; only reached through the dispatch table on CPUs that have them.
//
// Deliberately simple: one output element at a time, two 32-code blocks per 512-bit
// step, the same arithmetic as the portable kernel (integer block dot products,
// then scale_g * d_b * dot + min_g * gsum_g). Internal linkage, raw pointers only.
// GCC 12 reports false -Wmaybe-uninitialized inside its AVX-512 headers
// (_mm512_undefined_* operands of inserts/converts).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "engine/backend/cpu/kernels.h"

namespace eora::cpu {
namespace {

inline float HalfToFloat(uint16_t h) { return _cvtsh_ss(h); }

inline uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline uint32_t Load32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// 32 codes of one block in 32 bytes (same layouts as kernels_avx2.cc / docs/formats.md).
template <int kBits>
inline __m256i Unpack(const uint8_t* p) {
  if constexpr (kBits == 4) {
    const __m256i v = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0F));
  } else {
    const __m256i v = _mm256_set1_epi64x(static_cast<long long>(Load64(p)));
    const __m256i lo = _mm256_and_si256(_mm256_srlv_epi64(v, _mm256_setr_epi64x(0, 2, 4, 6)), _mm256_set1_epi8(0x03));
    if constexpr (kBits == 2) {
      return lo;
    } else {
      const __m256i h = _mm256_set1_epi32(static_cast<int>(Load32(p + 8)));
      const __m256i hb = _mm256_and_si256(_mm256_srlv_epi32(h, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)),
                                          _mm256_set1_epi8(0x01));
      return _mm256_or_si256(lo, _mm256_slli_epi16(hb, 2));
    }
  }
}

inline float Hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int kBits>
float QuantDot(const QuantView& w, const QActView& x, int r, int t) {
  constexpr int kBB = QuantBlockBytes(kBits);
  const uint8_t* row = w.codes + static_cast<size_t>(r) * w.row_bytes;
  const uint16_t* sc = w.scale + static_cast<size_t>(r) * w.groups;
  const uint16_t* mn = w.min + static_cast<size_t>(r) * w.groups;
  const int8_t* q = x.q + static_cast<size_t>(t) * x.padded_cols;
  const float* d = x.d + static_cast<size_t>(t) * x.nb;
  const float* gs = x.gsum + static_cast<size_t>(t) * x.groups;
  const __m512i ones = _mm512_set1_epi16(1);
  __m512 acc = _mm512_setzero_ps();
  int b = 0;
  for (; b + 2 <= w.blocks; b += 2) {
    const __m512i wv = _mm512_inserti64x4(_mm512_castsi256_si512(Unpack<kBits>(row + static_cast<size_t>(b) * kBB)),
                                          Unpack<kBits>(row + static_cast<size_t>(b + 1) * kBB), 1);
    const __m512i qv = _mm512_loadu_si512(q + 32 * b);
    const __m512i dot = _mm512_madd_epi16(_mm512_maddubs_epi16(wv, qv), ones);
    const float s0 = HalfToFloat(sc[b / w.bpg]) * d[b];
    const float s1 = HalfToFloat(sc[(b + 1) / w.bpg]) * d[b + 1];
    const __m512 sv = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(s0)), _mm256_set1_ps(s1), 1);
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), sv, acc);
  }
  float total = _mm512_reduce_add_ps(acc);
  if (b < w.blocks) {
    const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 32 * b));
    const __m256i dot = _mm256_madd_epi16(
        _mm256_maddubs_epi16(Unpack<kBits>(row + static_cast<size_t>(b) * kBB), qv), _mm256_set1_epi16(1));
    total += Hsum256(_mm256_cvtepi32_ps(dot)) * (HalfToFloat(sc[b / w.bpg]) * d[b]);
  }
  for (int g = 0; g < w.groups; ++g) total += HalfToFloat(mn[g]) * gs[g];
  return total;
}

template <int kBits>
void QuantGemm(const QuantView& w, const QActView& x, float* y, int ldy, int r0, int r1) {
  for (int r = r0; r < r1; ++r)
    for (int t = 0; t < x.n; ++t) y[static_cast<size_t>(t) * ldy + r] = QuantDot<kBits>(w, x, r, t);
}

// Dense F32: one row against one activation row, 16 lanes, masked tail.
void DenseGemmF32(const void* wp, int cols, int r0, int r1, const float* x, int n, int ldx, float* y, int ldy) {
  const float* w = static_cast<const float*>(wp);
  const int tail = cols % 16;
  const __mmask16 mask = static_cast<__mmask16>((1u << tail) - 1u);
  for (int r = r0; r < r1; ++r) {
    const float* wr = w + static_cast<size_t>(r) * cols;
    for (int t = 0; t < n; ++t) {
      const float* xt = x + static_cast<size_t>(t) * ldx;
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
      int k = 0;
      for (; k + 32 <= cols; k += 32) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(wr + k), _mm512_loadu_ps(xt + k), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(wr + k + 16), _mm512_loadu_ps(xt + k + 16), a1);
      }
      if (k + 16 <= cols) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(wr + k), _mm512_loadu_ps(xt + k), a0);
        k += 16;
      }
      if (tail != 0) a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, wr + k), _mm512_maskz_loadu_ps(mask, xt + k), a1);
      y[static_cast<size_t>(t) * ldy + r] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    }
  }
}

}  // namespace

void FillAvx512Kernels(KernelTable* t) {
  t->dense_gemm[kDenseF32] = DenseGemmF32;
  t->quant_gemm[2] = QuantGemm<2>;
  t->quant_gemm[3] = QuantGemm<3>;
  t->quant_gemm[4] = QuantGemm<4>;
}

}  // namespace eora::cpu
