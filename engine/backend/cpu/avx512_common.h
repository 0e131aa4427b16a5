// Register-level helpers shared by the AVX-512 kernel files (kernels_avx512.cc,
// kernels_amx.cc): block unpacking of the packed code layouts (docs/formats.md)
// and a 16x16 transpose. Internal linkage (an unnamed namespace per including
// file), so no inline function is shared with portable code (see kernels.h).
// Include only from files compiled with the AVX-512 flags of engine/CMakeLists.txt.
#pragma once

#if !defined(__AVX512F__) || !defined(__AVX512VBMI__) || !defined(__AVX512VNNI__)
#error "avx512_common.h needs the AVX-512 F/BW/VL/DQ/VNNI/VBMI flags"
#endif

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "engine/backend/cpu/kernels.h"
#include "engine/backend/cpu/quant_pack.h"

// Full unrolling of the small loops over register tiles, so that their
// accumulators stay in registers (a loop GCC leaves rolled indexes them in memory).
#ifndef EORA_UNROLL
#define EORA_UNROLL _Pragma("GCC unroll 16")
#endif

namespace eora::cpu {
namespace {

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


inline float HalfToFloat(uint16_t h) { return _cvtsh_ss(h); }

// Codes of the two blocks at p and p + QuantBlockBytes(kBits), code k of the pair
// in byte k (layouts: docs/formats.md).
template <int kBits>
inline __m512i UnpackPair(const uint8_t* p) {
  if constexpr (kBits == 4) {
    // Bytes 0-15: codes 0-15 in the low nibbles, 16-31 in the high ones.
    const __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    const __m512i d = _mm512_shuffle_i64x2(v, v, 0x50);  // 128-bit lanes: A A B B
    return _mm512_and_si512(_mm512_srlv_epi64(d, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4)), _mm512_set1_epi8(0x0F));
  } else {
    constexpr int kBB = QuantBlockBytes(kBits);
    // Low plane: 64-bit lane j of a block holds codes 8j..8j+7 at bits 2j..2j+1.
    const __m128i lo2 = _mm_set_epi64x(static_cast<long long>(Load64(p + kBB)), static_cast<long long>(Load64(p)));
    const __m512i l = _mm512_permutexvar_epi64(_mm512_setr_epi64(0, 0, 0, 0, 1, 1, 1, 1), _mm512_castsi128_si512(lo2));
    const __m512i lo = _mm512_and_si512(_mm512_srlv_epi64(l, _mm512_setr_epi64(0, 2, 4, 6, 0, 2, 4, 6)), _mm512_set1_epi8(0x03));
    if constexpr (kBits == 2) {
      return lo;
    } else {
      // High plane: code 4L+k has its bit at 8k+L of the block's 32-bit word.
      const __m128i hi2 = _mm_set_epi32(0, 0, static_cast<int>(Load32(p + kBB + 8)), static_cast<int>(Load32(p + 8)));
      const __m512i h = _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
                                                 _mm512_castsi128_si512(hi2));
      const __m512i hb = _mm512_and_si512(
          _mm512_srlv_epi32(h, _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7)), _mm512_set1_epi8(0x01));
      return _mm512_or_si512(lo, _mm512_slli_epi16(hb, 2));
    }
  }
}

// The 3-bit pair with VBMI: two byte permutes put each block's low plane (and
// its high word, twice) in the 64-bit lanes of its 32 codes; vpmultishiftqb then
// moves each code's two low bits to bits 0-1 and its high bit to bit 2 of its
// byte, and one bit-select merges them. Constants built once (see below).
struct Vbmi3Tables {
  alignas(64) uint8_t lo_idx[64], hi_idx[64], lo_ctl[64], hi_ctl[64];
};
constexpr Vbmi3Tables MakeVbmi3Tables() {
  Vbmi3Tables t{};
  for (int p = 0; p < 64; ++p) {
    const int lane = p / 8, b = p % 8, blk = lane / 4, j = lane % 4;
    t.lo_idx[p] = static_cast<uint8_t>(blk * 12 + b);          // low plane byte b of the block
    t.hi_idx[p] = static_cast<uint8_t>(blk * 12 + 8 + b % 4);  // high word, in both halves
    t.lo_ctl[p] = static_cast<uint8_t>(8 * b + 2 * j);         // code 8j+b: bits 8b+2j
    const int bit = 8 * (b % 4) + 2 * j + b / 4;               // code 4L+k: bit 8k+L
    t.hi_ctl[p] = static_cast<uint8_t>((bit - 2 + 64) % 64);   // lands at bit 2
  }
  return t;
}
constexpr Vbmi3Tables kVbmi3 = MakeVbmi3Tables();

struct Vbmi3Consts {
  __m512i lo_idx, hi_idx, lo_ctl, hi_ctl;
};
inline Vbmi3Consts LoadVbmi3Consts() {
  return {_mm512_load_si512(kVbmi3.lo_idx), _mm512_load_si512(kVbmi3.hi_idx),
          _mm512_load_si512(kVbmi3.lo_ctl), _mm512_load_si512(kVbmi3.hi_ctl)};
}

inline __m512i UnpackPair3Vbmi(const uint8_t* p, const Vbmi3Consts& c) {
  const __m512i raw = _mm512_castsi256_si512(_mm256_maskz_loadu_epi8(0x00FFFFFFu, p));  // 24 bytes
  const __m512i l = _mm512_multishift_epi64_epi8(c.lo_ctl, _mm512_permutexvar_epi8(c.lo_idx, raw));
  const __m512i h = _mm512_multishift_epi64_epi8(c.hi_ctl, _mm512_permutexvar_epi8(c.hi_idx, raw));
  // bits 0-1 from l, the rest from h, then keep bits 0-2.
  return _mm512_and_si512(_mm512_ternarylogic_epi32(l, h, _mm512_set1_epi8(0x03), 0xE4), _mm512_set1_epi8(0x07));
}

// One block (a row with an odd number of blocks ends with one), 32 codes.
template <int kBits>
inline __m256i UnpackOne(const uint8_t* p) {
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

}  // namespace
}  // namespace eora::cpu
