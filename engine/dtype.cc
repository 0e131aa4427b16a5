#include "engine/dtype.h"

#include <immintrin.h>

#include <cstring>

namespace eora {

const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
  }
  return "?";
}

namespace {

__attribute__((target("avx,f16c"))) void F16ArrayToF32F16c(const uint16_t* src, float* dst, size_t n) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = F16ToF32(src[i]);
}

const bool kHaveF16c = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");

}  // namespace

void F16ArrayToF32(const uint16_t* src, float* dst, size_t n) {
  if (kHaveF16c) return F16ArrayToF32F16c(src, dst, n);
  for (size_t i = 0; i < n; ++i) dst[i] = F16ToF32(src[i]);
}

void ConvertToF32(DType t, const void* src, float* dst, size_t n) {
  switch (t) {
    case DType::kF32:
      std::memcpy(dst, src, n * 4);
      return;
    case DType::kF16:
      F16ArrayToF32(static_cast<const uint16_t*>(src), dst, n);
      return;
    case DType::kBF16: {
      const auto* s = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = BF16ToF32(s[i]);
      return;
    }
  }
}

}  // namespace eora
