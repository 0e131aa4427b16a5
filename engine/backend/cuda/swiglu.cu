#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/swiglu.cuh"

namespace eora::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void SwiGluKernel(const float* gate, const float* up, size_t n, float* out) {
  const size_t i = static_cast<size_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= n) return;
  const float g = gate[i];
  out[i] = g / (1.0f + expf(-g)) * up[i];
}

}  // namespace

absl::Status LaunchSwiGlu(const float* gate, const float* up, size_t n, float* out,
                          cudaStream_t stream) {
  if (n == 0) return absl::OkStatus();
  SwiGluKernel<<<static_cast<unsigned>((n + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      gate, up, n, out);
  return LaunchStatus("SwiGluKernel");
}

}  // namespace eora::cuda
