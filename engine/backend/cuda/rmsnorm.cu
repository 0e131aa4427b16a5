#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/rmsnorm.cuh"

namespace eora::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    RmsNormKernel(const float* x, const float* __restrict__ w, int dim, float eps, float* out) {
  __shared__ float partial[kThreads / 32];
  const float* xr = x + static_cast<size_t>(blockIdx.x) * dim;
  float* yr = out + static_cast<size_t>(blockIdx.x) * dim;
  float ss = 0.f;
  for (int i = threadIdx.x; i < dim; i += kThreads) ss = fmaf(xr[i], xr[i], ss);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
  __syncthreads();
  float total = 0.f;
#pragma unroll
  for (int i = 0; i < kThreads / 32; ++i) total += partial[i];
  const float inv = 1.0f / sqrtf(total / dim + eps);
  for (int i = threadIdx.x; i < dim; i += kThreads) yr[i] = xr[i] * inv * w[i];
}

}  // namespace

absl::Status LaunchRmsNorm(const float* x, const float* w, int rows, int dim, float eps, float* out,
                           cudaStream_t stream) {
  if (rows == 0) return absl::OkStatus();
  RmsNormKernel<<<rows, kThreads, 0, stream>>>(x, w, dim, eps, out);
  return LaunchStatus("RmsNormKernel");
}

}  // namespace eora::cuda
