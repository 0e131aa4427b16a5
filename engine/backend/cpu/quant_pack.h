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

// ---- Panel layout (in memory only; docs/formats.md "Panels of 16 rows") -----------
// Rows in panels of 16 (the last padded with zero codes), and per panel the pairs of
// blocks in order, one unit of 128 * bits bytes per pair (64 * bits for a row's
// lone last block). A unit holds 16 vectors k4 = 0..15 (8 for a lone block) of 64
// codes: byte 4i + e of vector k4 = code of panel row i, pair column 4k4 + e. The
// vectors are stored in groups:
//   4-bit: 2 vectors per 64 bytes, vector 2t + h in the nibble h of group t;
//   2-bit: 4 vectors per 64 bytes, vector 4t + j at bits 2j, 2j + 1 of group t;
//   3-bit: 4 vectors per 96 bytes: their low bits as in 2-bit (64 bytes), then per
//          vector j a 64-bit word whose bit b is the high bit of byte b.
// A panel of a row of `blocks` blocks takes 16 * blocks * QuantBlockBytes(bits) bytes.
inline size_t PanelBytes(int bits, int blocks) { return static_cast<size_t>(blocks) * 64 * bits; }

// Index of row r's group g in the panel layout's scales and mins, F16
// [ceil(rows / 16)][groups][16].
inline size_t PanelScaleIndex(int groups, int r, int g) {
  return (static_cast<size_t>(r / 16) * groups + g) * 16 + r % 16;
}

// Byte offset of vector k4 of the pair at `pair` in its panel, and its code's
// position inside the group (nibble, crumb).
inline size_t PanelPairOffset(int bits, int pair) { return static_cast<size_t>(pair) * 128 * bits; }
inline int PanelGroupVectors(int bits) { return bits == 4 ? 2 : 4; }
inline int PanelGroupBytes(int bits) { return bits == 3 ? 96 : 64; }

// Code c (0..31) of block `block` of panel row i (0..15).
inline uint8_t PanelCode(int bits, const uint8_t* panel, int block, int i, int c) {
  const int k = 32 * (block % 2) + c, k4 = k / 4, e = k % 4;
  const int gv = PanelGroupVectors(bits);
  const uint8_t* g = panel + PanelPairOffset(bits, block / 2) + static_cast<size_t>(k4 / gv) * PanelGroupBytes(bits);
  const int slot = k4 % gv, byte = 4 * i + e;
  const int field = bits == 4 ? 4 : 2;
  uint8_t code = static_cast<uint8_t>((g[byte] >> (field * slot)) & ((1 << field) - 1));
  if (bits == 3) code = static_cast<uint8_t>(code | (((g[64 + 8 * slot + byte / 8] >> (byte % 8)) & 1) << 2));
  return code;
}

// Encodes nvec vectors of 64 codes (vec[k4 * 64 + byte]) into one pair's unit at
// out, and back.
inline void PackPanelUnit(int bits, const uint8_t* vec, int nvec, uint8_t* out) {
  const int gv = PanelGroupVectors(bits), gb = PanelGroupBytes(bits);
  std::memset(out, 0, static_cast<size_t>(nvec / gv) * gb);
  for (int k4 = 0; k4 < nvec; ++k4) {
    uint8_t* g = out + static_cast<size_t>(k4 / gv) * gb;
    const int slot = k4 % gv;
    const uint8_t* v = vec + 64 * k4;
    if (bits == 4) {
      for (int b = 0; b < 64; ++b) g[b] = static_cast<uint8_t>(g[b] | ((v[b] & 15) << (4 * slot)));
      continue;
    }
    uint64_t h = 0;
    for (int b = 0; b < 64; ++b) {
      g[b] = static_cast<uint8_t>(g[b] | ((v[b] & 3) << (2 * slot)));
      h |= static_cast<uint64_t>((v[b] >> 2) & 1) << b;
    }
    if (bits == 3) std::memcpy(g + 64 + 8 * slot, &h, 8);
  }
}
inline void UnpackPanelUnit(int bits, const uint8_t* in, int nvec, uint8_t* vec) {
  const int gv = PanelGroupVectors(bits), gb = PanelGroupBytes(bits);
  for (int k4 = 0; k4 < nvec; ++k4) {
    const uint8_t* g = in + static_cast<size_t>(k4 / gv) * gb;
    const int slot = k4 % gv;
    uint8_t* v = vec + 64 * k4;
    if (bits == 4) {
      for (int b = 0; b < 64; ++b) v[b] = (g[b] >> (4 * slot)) & 15;
      continue;
    }
    const uint64_t h = bits == 3 ? Load64(g + 64 + 8 * slot) : 0;
    for (int b = 0; b < 64; ++b) v[b] = static_cast<uint8_t>(((g[b] >> (2 * slot)) & 3) | (((h >> b) & 1) << 2));
  }
}

// The 32 codes of block `block` of matrix row r (panel storage at `codes`).
inline void UnpackPanelBlock(int bits, const uint8_t* codes, int blocks, int r, int block, uint8_t* out) {
  const uint8_t* panel = codes + static_cast<size_t>(r / 16) * PanelBytes(bits, blocks);
  for (int c = 0; c < 32; ++c) out[c] = PanelCode(bits, panel, block, r % 16, c);
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
