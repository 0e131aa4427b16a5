// Register-level helpers shared by the AVX-512 kernel files (kernels_avx512.cc,
// kernels_amx.cc): block unpacking of the packed code layouts (docs/formats.md)
// and a 16x16 transpose. Internal linkage (an unnamed namespace per including
// file), so no inline function is shared with portable code (see kernels.h).
// Include only from files compiled with the AVX-512 flags of engine/CMakeLists.txt.
#pragma once

#if !defined(__AVX512F__) || !defined(__AVX512VBMI__) || !defined(__AVX512VNNI__) || !defined(__GFNI__)
#error "avx512_common.h needs the AVX-512 F/BW/VL/DQ/VNNI/VBMI and GFNI flags"
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

// GF(2) affine matrices for vgf2p8affineqb that take bits 2j, 2j+1 of every byte
// (j = the 64-bit lane's index mod 4) to bits 0, 1 and clear the rest: one
// instruction for the variable shift and the mask of a 2-bit plane. Output bit i
// of a byte is the parity of (matrix byte 7 - i) AND (input byte).
constexpr long long Plane2Matrix(int j) {
  unsigned long long m = 0;
  for (int i = 0; i < 2; ++i) m |= (1ull << (2 * j + i)) << (8 * (7 - i));
  return static_cast<long long>(m);
}
// The same for nibbles: bits 4j..4j+3 to bits 0..3.
constexpr long long NibbleMatrix(int j) {
  unsigned long long m = 0;
  for (int i = 0; i < 4; ++i) m |= (1ull << (4 * j + i)) << (8 * (7 - i));
  return static_cast<long long>(m);
}

// Codes of the two blocks at p (blocks 2j and 2j + 1 of a row), code k of the pair
// in byte k (layouts: docs/formats.md).
template <int kBits>
inline __m512i UnpackPair(const uint8_t* p) {
  if constexpr (kBits == 4) {
    // Bytes 0-15: codes 0-15 in the low nibbles, 16-31 in the high ones.
    const __m512i v = _mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    const __m512i d = _mm512_shuffle_i64x2(v, v, 0x50);  // 128-bit lanes: A A B B
    const __m512i m = _mm512_setr_epi64(NibbleMatrix(0), NibbleMatrix(0), NibbleMatrix(1), NibbleMatrix(1),
                                        NibbleMatrix(0), NibbleMatrix(0), NibbleMatrix(1), NibbleMatrix(1));
    return _mm512_gf2p8affine_epi64_epi8(d, m, 0);
  } else if constexpr (kBits == 2) {
    // Pairs are [L_A][L_B]; 64-bit lane j of a block holds codes 8j..8j+7 at bits 2j..2j+1.
    const __m512i a = _mm512_set1_epi64(static_cast<long long>(Load64(p)));
    const __m512i l = _mm512_mask_set1_epi64(a, 0xF0, static_cast<long long>(Load64(p + 8)));
    const __m512i m = _mm512_setr_epi64(Plane2Matrix(0), Plane2Matrix(1), Plane2Matrix(2), Plane2Matrix(3),
                                        Plane2Matrix(0), Plane2Matrix(1), Plane2Matrix(2), Plane2Matrix(3));
    return _mm512_gf2p8affine_epi64_epi8(l, m, 0);
  } else {
    // 3-bit pairs are [W0][W1][H]: one broadcast of [W0 W1] gives 64-bit lane j
    // word j % 2, which holds codes 8j..8j+7 at bits 2 * (j / 2)..+1 of its bytes
    // (no shuffle); H is the mask of the codes' bit 2 (quant_pack.h).
    const __m512i l = _mm512_broadcast_i64x2(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m512i m = _mm512_setr_epi64(Plane2Matrix(0), Plane2Matrix(0), Plane2Matrix(1), Plane2Matrix(1),
                                        Plane2Matrix(2), Plane2Matrix(2), Plane2Matrix(3), Plane2Matrix(3));
    const __m512i lo = _mm512_gf2p8affine_epi64_epi8(l, m, 0);
    const __mmask64 h = _cvtu64_mask64(Load64(p + 16));
    return _mm512_mask_add_epi8(lo, h, lo, _mm512_set1_epi8(0x04));
  }
}

// The last block of a row with an odd number of blocks (no pair), 32 codes.
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
      // A block alone (a row's last, odd count): [L][H], bit k of H = code k's bit 2.
      return _mm256_mask_add_epi8(lo, _cvtu32_mask32(Load32(p + 8)), lo, _mm256_set1_epi8(0x04));
    }
  }
}

}  // namespace
}  // namespace eora::cpu
