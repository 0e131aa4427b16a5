#include "engine/backend/cuda/argmax.cuh"
#include "engine/backend/cuda/cuda_status.h"

namespace eora::cuda {
namespace {

constexpr int kThreads = 256;

// (value, id) order: larger value wins, then lower id. NaN never wins.
__device__ __forceinline__ bool Better(float v, int i, float bv, int bi) {
  return v > bv || (v == bv && i < bi) || (bi < 0 && v == v);
}

__global__ void __launch_bounds__(kThreads)
    ArgmaxKernel(const float* __restrict__ logits, int vocab, int ld, int* ids) {
  __shared__ float sv[kThreads];
  __shared__ int si[kThreads];
  const float* row = logits + static_cast<size_t>(blockIdx.x) * ld;
  float bv = -INFINITY;
  int bi = -1;
  for (int i = threadIdx.x; i < vocab; i += kThreads)
    if (Better(row[i], i, bv, bi)) bv = row[i], bi = i;
  sv[threadIdx.x] = bv;
  si[threadIdx.x] = bi;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      const int j = threadIdx.x + s;
      if (si[j] >= 0 && Better(sv[j], si[j], sv[threadIdx.x], si[threadIdx.x])) {
        sv[threadIdx.x] = sv[j];
        si[threadIdx.x] = si[j];
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) ids[blockIdx.x] = si[0] < 0 ? 0 : si[0];
}

}  // namespace

absl::Status LaunchArgmax(const float* logits, int rows, int vocab, int ld, int* ids,
                          cudaStream_t stream) {
  if (rows == 0) return absl::OkStatus();
  ArgmaxKernel<<<rows, kThreads, 0, stream>>>(logits, vocab, ld, ids);
  return LaunchStatus("ArgmaxKernel");
}

}  // namespace eora::cuda
