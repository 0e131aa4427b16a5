// Portable packing and unpacking of 32-code blocks and 2:4 position metadata
// (version 2 layouts, docs/formats.md). Used by the matrix classes and the
// generic kernels; the SIMD kernels have their own register-level versions.
#pragma once

#include <cstdint>
#include <cstring>

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

// 3-bit blocks (12 bytes) hold an 8-byte low plane L (the 2-bit layout of the
// codes' low two bits) and a 32-bit high word H whose bit k is code k's high bit.
// An even block of a row stores [L][H], an odd one [H][L], so that the two high
// words of a block pair are one little-endian 64-bit mask (bytes 8..15 of the
// pair): the AVX-512 kernels load it straight into a mask register.
inline int Q3LowOffset(int block) { return block % 2 == 0 ? 0 : 4; }
inline int Q3HighOffset(int block) { return block % 2 == 0 ? 8 : 0; }

// The high word of a version 1 3-bit block (bytes 8..11, code k's bit at
// 8 * (k % 4) + k / 4), in the version 2 order.
inline uint32_t Q3HighFromV1(uint32_t h1) {
  uint32_t h = 0;
  for (int k = 0; k < 32; ++k) h |= ((h1 >> (8 * (k % 4) + k / 4)) & 1u) << k;
  return h;
}

// Packs 32 codes (each < 2^bits) into QuantBlockBytes(bits) bytes; `block` is
// the block's index in its row (its parity places the 3-bit planes).
inline void PackBlock(int bits, const uint8_t* c, uint8_t* out, int block) {
  if (bits == 4) {
    for (int i = 0; i < 16; ++i) out[i] = static_cast<uint8_t>((c[i] & 15) | ((c[i + 16] & 15) << 4));
    return;
  }
  uint8_t* lo = out + (bits == 3 ? Q3LowOffset(block) : 0);
  // 2-bit plane: byte i, bits 2j..2j+1 = code[i + 8j] & 3.
  for (int i = 0; i < 8; ++i) {
    lo[i] = static_cast<uint8_t>((c[i] & 3) | ((c[i + 8] & 3) << 2) | ((c[i + 16] & 3) << 4) |
                                 ((c[i + 24] & 3) << 6));
  }
  if (bits == 3) {
    uint32_t h = 0;
    for (int k = 0; k < 32; ++k) h |= static_cast<uint32_t>((c[k] >> 2) & 1) << k;
    std::memcpy(out + Q3HighOffset(block), &h, 4);
  }
}

// Unpacks block `block` of a row (at p) into 32 codes.
inline void UnpackBlock(int bits, const uint8_t* p, uint8_t* c, int block) {
  if (bits == 4) {
    for (int i = 0; i < 16; ++i) {
      c[i] = p[i] & 15;
      c[i + 16] = p[i] >> 4;
    }
    return;
  }
  const uint8_t* lo = p + (bits == 3 ? Q3LowOffset(block) : 0);
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 4; ++j) c[i + 8 * j] = (lo[i] >> (2 * j)) & 3;
  if (bits == 3) {
    const uint32_t h = Load32(p + Q3HighOffset(block));
    for (int k = 0; k < 32; ++k) c[k] |= static_cast<uint8_t>(((h >> k) & 1) << 2);
  }
}

// Rewrites `rows` rows of `blocks` version 1 3-bit blocks ([L][H], H in the
// version 1 bit order) in place into the version 2 layout.
inline void UpgradeQ3RowsFromV1(uint8_t* data, size_t rows, int blocks) {
  for (size_t r = 0; r < rows; ++r) {
    for (int b = 0; b < blocks; ++b) {
      uint8_t* p = data + (r * static_cast<size_t>(blocks) + static_cast<size_t>(b)) * 12;
      uint8_t lo[8];
      std::memcpy(lo, p, 8);
      const uint32_t h = Q3HighFromV1(Load32(p + 8));
      std::memcpy(p + Q3LowOffset(b), lo, 8);
      std::memcpy(p + Q3HighOffset(b), &h, 4);
    }
  }
}

}  // namespace eora::cpu
