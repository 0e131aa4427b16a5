#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "engine/backend/cuda/convert.cuh"
#include "engine/backend/cuda/cuda_status.h"

namespace eora::cuda {
namespace {

constexpr int kThreads = 256;

template <typename T>
__device__ __forceinline__ T FromF32(float v);
template <>
__device__ __forceinline__ __half FromF32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 FromF32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T>
__global__ void ConvertKernel(const float* __restrict__ x, int n, int cols, int ldx, T* out) {
  const size_t i = static_cast<size_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= static_cast<size_t>(n) * cols) return;
  const size_t t = i / cols, k = i % cols;
  out[i] = FromF32<T>(x[t * ldx + k]);
}

}  // namespace

absl::Status LaunchConvertF32(const float* x, int n, int cols, int ldx, int dtype, void* out,
                              cudaStream_t stream) {
  const size_t total = static_cast<size_t>(n) * cols;
  if (total == 0) return absl::OkStatus();
  const unsigned grid = static_cast<unsigned>((total + kThreads - 1) / kThreads);
  if (dtype == 1)
    ConvertKernel<__half><<<grid, kThreads, 0, stream>>>(x, n, cols, ldx, static_cast<__half*>(out));
  else if (dtype == 2)
    ConvertKernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(
        x, n, cols, ldx, static_cast<__nv_bfloat16*>(out));
  else
    return absl::InvalidArgumentError(absl::StrCat("convert: dtype ", dtype));
  return LaunchStatus("ConvertKernel");
}

}  // namespace eora::cuda
