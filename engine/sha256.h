// SHA-256 (FIPS 180-4), for content fingerprints: calibration token streams,
// compressed weights. Not for anything security-sensitive.
//
// Threading contract: a Sha256 object is used from one thread at a time.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace eora {

class Sha256 {
 public:
  Sha256();
  void Update(const void* data, size_t n);
  void Update(std::string_view s) { Update(s.data(), s.size()); }
  // Finishes the hash; the object must not be updated afterwards.
  std::array<uint8_t, 32> Final();
  // Finishes and returns 64 lowercase hex digits.
  std::string HexFinal();

 private:
  void Block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t buf_len_ = 0;
  uint64_t total_ = 0;
};

// Hex SHA-256 of a byte string.
std::string Sha256Hex(std::string_view data);

}  // namespace eora
