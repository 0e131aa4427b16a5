// Device helpers that read the packed weight formats (docs/formats.md, version 3:
// the same bytes as the CPU matrices, uploaded as-is) through the views of
// device_views.h. Header-only device code for .cu files; no launchers here.
#pragma once

#include <cuda_fp16.h>

#include "engine/backend/cuda/device_views.h"
#include <cstddef>
#include <cstdint>

namespace eora::cuda {

__device__ __forceinline__ float H2F(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// Unpacks block `block` of a row of `row_blocks` blocks (at p, the block's own
// bytes; layouts of docs/formats.md) into c[0..31]. 3-bit blocks 2j, 2j + 1 share
// 24 bytes [W0 8][W1 8][H 8]: code k of half h has its low bits in byte k % 8 of
// word (k / 8) % 2 at bit 4h + 2 * (k / 16), its high bit at bit 32h + k of H. A
// row's last block, when the count is odd, is [low plane 8][high word 4].
template <int BITS>
__device__ __forceinline__ void UnpackBlock(const uint8_t* p, uint8_t (&c)[32], int block, int row_blocks) {
  if constexpr (BITS == 4) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      const uint32_t byte = (w[i / 4] >> (8 * (i % 4))) & 0xffu;
      c[i] = static_cast<uint8_t>(byte & 15u);
      c[i + 16] = static_cast<uint8_t>(byte >> 4);
    }
  } else if (BITS == 2 || (block % 2 == 0 && block + 1 >= row_blocks)) {
    const uint32_t* p32 = reinterpret_cast<const uint32_t*>(p);  // 4-byte aligned
    const uint32_t w[2] = {p32[0], p32[1]};
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const uint32_t byte = (w[i / 4] >> (8 * (i % 4))) & 0xffu;
#pragma unroll
      for (int j = 0; j < 4; ++j) c[i + 8 * j] = static_cast<uint8_t>((byte >> (2 * j)) & 3u);
    }
    if constexpr (BITS == 3) {
      const uint32_t h = p32[2];
#pragma unroll
      for (int k = 0; k < 32; ++k) c[k] |= static_cast<uint8_t>(((h >> k) & 1u) << 2);
    }
  } else {
    const int half = block % 2;
    const uint32_t* pair = reinterpret_cast<const uint32_t*>(p - 12 * half);  // 4-byte aligned
    const uint32_t w[4] = {pair[0], pair[1], pair[2], pair[3]};  // W0, W1
    const uint32_t h = pair[4 + half];
#pragma unroll
    for (int k = 0; k < 32; ++k) {
      const int byte_index = 8 * ((k >> 3) & 1) + (k & 7);
      const uint32_t byte = (w[byte_index / 4] >> (8 * (byte_index % 4))) & 0xffu;
      c[k] = static_cast<uint8_t>(((byte >> (4 * half + 2 * (k >> 4))) & 3u) | (((h >> k) & 1u) << 2));
    }
  }
}

__device__ __forceinline__ void UnpackBlockRt(int bits, const uint8_t* p, uint8_t (&c)[32], int block,
                                              int row_blocks) {
  if (bits == 4) UnpackBlock<4>(p, c, block, row_blocks);
  else if (bits == 3) UnpackBlock<3>(p, c, block, row_blocks);
  else UnpackBlock<2>(p, c, block, row_blocks);
}

// Code of (row, col) of a quantized matrix.
__device__ __forceinline__ int QuantCode(const QuantDev& w, int row, int col) {
  const int b = col / 32;
  const uint8_t* p = w.codes + static_cast<size_t>(row) * w.row_bytes +
                     static_cast<size_t>(b) * BlockBytes(w.bits);
  const int k = col % 32;
  if (w.bits == 4) return k < 16 ? (p[k] & 15) : (p[k - 16] >> 4);
  if (w.bits == 2 || (b % 2 == 0 && b + 1 >= w.blocks)) {
    int c = (p[k % 8] >> (2 * (k / 8))) & 3;
    if (w.bits == 3) c |= ((p[8 + k / 8] >> (k % 8)) & 1) << 2;
    return c;
  }
  const int half = b % 2;
  const uint8_t* pair = p - 12 * half;
  const int kp = 32 * half + k;  // code of the pair
  return ((pair[8 * ((k >> 3) & 1) + (k & 7)] >> (4 * half + 2 * (k >> 4))) & 3) |
         (((pair[16 + kp / 8] >> (kp % 8)) & 1) << 2);
}

// W[row][col] of a quantized matrix, dequantized.
__device__ __forceinline__ float QuantAt(const QuantDev& w, int row, int col) {
  const int g = (col / 32) / w.bpg;
  const size_t gi = static_cast<size_t>(row) * w.groups + g;
  return H2F(w.scale[gi]) * static_cast<float>(QuantCode(w, row, col)) +
         H2F(w.min[gi]);
}

__device__ __forceinline__ float LrAt(const LrMatDev& m, int row, int col) {
  if (m.bits == 16) return H2F(m.f16[static_cast<size_t>(row) * m.cols + col]);
  return QuantAt(m.q, row, col);
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Lane-parallel part of the fused epilogue for token t and output row r: the warp's
// lanes split the rank components; returns the full sum on every lane.
__device__ __forceinline__ float EpilogueWarp(const LowRankEpilogue& e, int t, int r, int lane) {
  const int f = e.tables.tok_factor[t];
  if (f < 0) return 0.f;
  const LrFactorDev& fd = e.tables.factors[f];
  const int rank = e.tables.tok_rank[t];
  const float* u = e.u + e.tables.tok_uoff[t];
  float s = 0.f;
  for (int j = lane; j < rank; j += 32) s += u[j] * LrAt(fd.bt, j, r);
  return WarpSum(s);
}

// Serial form (one thread computes the whole term), for tiled kernels.
__device__ __forceinline__ float EpilogueSerial(const LowRankEpilogue& e, int t, int r) {
  const int f = e.tables.tok_factor[t];
  if (f < 0) return 0.f;
  const LrFactorDev& fd = e.tables.factors[f];
  const int rank = e.tables.tok_rank[t];
  const float* u = e.u + e.tables.tok_uoff[t];
  float s = 0.f;
  for (int j = 0; j < rank; ++j) s += u[j] * LrAt(fd.bt, j, r);
  return s;
}

}  // namespace eora::cuda
