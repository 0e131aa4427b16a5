// Portable packing and unpacking of 32-code blocks and 2:4 position metadata
// (version 1 layouts, docs/formats.md). Used by the matrix classes and the
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

// Bit index, inside the 32-bit high plane of a 3-bit block, of the high bit of code c.
inline int Q3HighBit(int c) { return 8 * (c % 4) + c / 4; }

// Packs 32 codes (each < 2^bits) into QuantBlockBytes(bits) bytes.
inline void PackBlock(int bits, const uint8_t* c, uint8_t* out) {
  if (bits == 4) {
    for (int i = 0; i < 16; ++i) out[i] = static_cast<uint8_t>((c[i] & 15) | ((c[i + 16] & 15) << 4));
    return;
  }
  // 2-bit plane: byte i, bits 2j..2j+1 = code[i + 8j] & 3.
  for (int i = 0; i < 8; ++i) {
    out[i] = static_cast<uint8_t>((c[i] & 3) | ((c[i + 8] & 3) << 2) | ((c[i + 16] & 3) << 4) |
                                  ((c[i + 24] & 3) << 6));
  }
  if (bits == 3) {
    uint32_t h = 0;
    for (int k = 0; k < 32; ++k) h |= static_cast<uint32_t>((c[k] >> 2) & 1) << Q3HighBit(k);
    for (int i = 0; i < 4; ++i) out[8 + i] = static_cast<uint8_t>(h >> (8 * i));
  }
}

// Unpacks one block into 32 codes.
inline void UnpackBlock(int bits, const uint8_t* p, uint8_t* c) {
  if (bits == 4) {
    for (int i = 0; i < 16; ++i) {
      c[i] = p[i] & 15;
      c[i + 16] = p[i] >> 4;
    }
    return;
  }
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 4; ++j) c[i + 8 * j] = (p[i] >> (2 * j)) & 3;
  if (bits == 3) {
    const uint32_t h = static_cast<uint32_t>(p[8]) | (static_cast<uint32_t>(p[9]) << 8) |
                       (static_cast<uint32_t>(p[10]) << 16) | (static_cast<uint32_t>(p[11]) << 24);
    for (int k = 0; k < 32; ++k) c[k] |= static_cast<uint8_t>(((h >> Q3HighBit(k)) & 1) << 2);
  }
}

}  // namespace eora::cpu
