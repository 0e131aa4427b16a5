// Portable packing and unpacking of 32-code blocks and 2:4 position metadata
// (version 3 layouts, docs/formats.md). Used by the matrix classes and the
// generic kernels; the SIMD kernels have their own register-level versions.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace eora::cpu {

// Unaligned little-endian loads of packed planes (any alignment, no aliasing issue).
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

// 3-bit codes (12 bytes per block of 32). Blocks 2j and 2j + 1 of a row, when
// both exist, share 24 bytes [W0 8][W1 8][H 8] (format version 3): pair code k
// (the even block's codes are 0..31, the odd block's 32..63) keeps its low two
// bits in byte k % 8 of word (k / 8) % 2, at bit 2 * (k / 16), and its high bit at
// bit k of the little-endian 64-bit word H. One 128-bit broadcast of [W0 W1] puts
// every code's low bits in its own 64-bit lane, and H loads straight into a mask
// register (the AVX-512 kernels). A row's last block, when the row has an odd
// number of blocks, is alone: [L 8][H 4], L the 2-bit plane layout, bit k of H =
// code k's high bit.
inline bool Q3Alone(int block, int row_blocks) { return block % 2 == 0 && block + 1 >= row_blocks; }

// Byte (from the pair's start) and bit shift of the low bits of code c (0..31)
// of the half `h` (0: even block, 1: odd) of a 3-bit pair.
inline int Q3PairByte(int c) { return 8 * ((c >> 3) & 1) + (c & 7); }
inline int Q3PairShift(int h, int c) { return 4 * h + 2 * (c >> 4); }

// The 2-bit plane: byte i, bits 2j..2j+1 = code[i + 8j] & 3.
inline void PackPlane2(const uint8_t* c, uint8_t* lo) {
  for (int i = 0; i < 8; ++i)
    lo[i] = static_cast<uint8_t>((c[i] & 3) | ((c[i + 8] & 3) << 2) | ((c[i + 16] & 3) << 4) | ((c[i + 24] & 3) << 6));
}
inline void UnpackPlane2(const uint8_t* lo, uint8_t* c) {
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 4; ++j) c[i + 8 * j] = (lo[i] >> (2 * j)) & 3;
}
inline uint32_t HighBits(const uint8_t* c) {
  uint32_t h = 0;
  for (int k = 0; k < 32; ++k) h |= static_cast<uint32_t>((c[k] >> 2) & 1) << k;
  return h;
}
inline void AddHighBits(uint32_t h, uint8_t* c) {
  for (int k = 0; k < 32; ++k) c[k] |= static_cast<uint8_t>(((h >> k) & 1) << 2);
}

// Packs 32 codes (each < 2^bits) of block `block` of a row of `row_blocks` blocks
// into its QuantBlockBytes(bits) bytes at out (the block's own start). A paired
// 3-bit block writes only its own bits of the pair's shared bytes.
inline void PackBlock(int bits, const uint8_t* c, uint8_t* out, int block, int row_blocks) {
  if (bits == 4) {
    for (int i = 0; i < 16; ++i) out[i] = static_cast<uint8_t>((c[i] & 15) | ((c[i + 16] & 15) << 4));
    return;
  }
  if (bits == 2) return PackPlane2(c, out);
  if (Q3Alone(block, row_blocks)) {
    PackPlane2(c, out);
    const uint32_t h = HighBits(c);
    std::memcpy(out + 8, &h, 4);
    return;
  }
  const int half = block % 2;
  uint8_t* pair = out - 12 * half;
  for (int k = 0; k < 32; ++k) {
    const int sh = Q3PairShift(half, k);
    uint8_t& byte = pair[Q3PairByte(k)];
    byte = static_cast<uint8_t>((byte & ~(3 << sh)) | ((c[k] & 3) << sh));
  }
  const uint32_t h = HighBits(c);
  std::memcpy(pair + 16 + 4 * half, &h, 4);
}

// Unpacks block `block` of a row of `row_blocks` blocks (at p, its own start)
// into 32 codes.
inline void UnpackBlock(int bits, const uint8_t* p, uint8_t* c, int block, int row_blocks) {
  if (bits == 4) {
    for (int i = 0; i < 16; ++i) {
      c[i] = p[i] & 15;
      c[i + 16] = p[i] >> 4;
    }
    return;
  }
  if (bits == 2) return UnpackPlane2(p, c);
  if (Q3Alone(block, row_blocks)) {
    UnpackPlane2(p, c);
    return AddHighBits(Load32(p + 8), c);
  }
  const int half = block % 2;
  const uint8_t* pair = p - 12 * half;
  for (int k = 0; k < 32; ++k) c[k] = (pair[Q3PairByte(k)] >> Q3PairShift(half, k)) & 3;
  AddHighBits(Load32(pair + 16 + 4 * half), c);
}

// Earlier 3-bit layouts, read when a file of that version is loaded.
// Version 1: every block [L 8][H 4], code k's high bit at bit 8 * (k % 4) + k / 4.
// Version 2: even blocks [L 8][H 4], odd ones [H 4][L 8], bit k of H = code k's.
inline void UnpackQ3BlockV1(const uint8_t* p, uint8_t* c) {
  UnpackPlane2(p, c);
  const uint32_t h1 = Load32(p + 8);
  for (int k = 0; k < 32; ++k) c[k] |= static_cast<uint8_t>(((h1 >> (8 * (k % 4) + k / 4)) & 1) << 2);
}
inline void UnpackQ3BlockV2(const uint8_t* p, uint8_t* c, int block) {
  const bool odd = block % 2 != 0;
  UnpackPlane2(p + (odd ? 4 : 0), c);
  AddHighBits(Load32(p + (odd ? 0 : 8)), c);
}

// Rewrites `rows` rows of `blocks` 3-bit blocks of format version `from` (1 or 2)
// in place into the current layout.
inline void UpgradeQ3Rows(uint8_t* data, size_t rows, int blocks, int from) {
  std::vector<uint8_t> codes(static_cast<size_t>(blocks) * 32);
  for (size_t r = 0; r < rows; ++r) {
    uint8_t* row = data + r * static_cast<size_t>(blocks) * 12;
    for (int b = 0; b < blocks; ++b) {
      if (from == 1) UnpackQ3BlockV1(row + 12 * b, codes.data() + 32 * b);
      else UnpackQ3BlockV2(row + 12 * b, codes.data() + 32 * b, b);
    }
    for (int b = 0; b < blocks; ++b) PackBlock(3, codes.data() + 32 * b, row + 12 * b, b, blocks);
  }
}

}  // namespace eora::cpu
