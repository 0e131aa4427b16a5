#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/quant_layout.cuh"
#include "engine/backend/cuda/lowrank_b.cuh"

namespace eora::cuda {
namespace {

constexpr int kThreads = 128;

__global__ void __launch_bounds__(kThreads)
    LowRankBKernel(LowRankTables tb, const float* __restrict__ u, int out, float* __restrict__ y,
                   int ldy) {
  const int t = blockIdx.y;
  const int c = blockIdx.x * kThreads + threadIdx.x;
  const int f = tb.tok_factor[t];
  if (f < 0 || c >= out) return;
  const LrMatDev& bt = tb.factors[f].bt;
  const float* ut = u + tb.tok_uoff[t];
  const int rank = tb.tok_rank[t];
  float s = 0.f;
  for (int j = 0; j < rank; ++j) s = fmaf(ut[j], LrAt(bt, j, c), s);
  y[static_cast<size_t>(t) * ldy + c] += s;
}

}  // namespace

absl::Status LaunchLowRankB(const LowRankTables& tables, const float* u, int tokens, int out,
                            float* y, int ldy, cudaStream_t stream) {
  if (tables.total_u == 0 || tokens == 0 || out == 0) return absl::OkStatus();
  const dim3 grid((out + kThreads - 1) / kThreads, tokens);
  LowRankBKernel<<<grid, kThreads, 0, stream>>>(tables, u, out, y, ldy);
  return LaunchStatus("LowRankBKernel");
}

}  // namespace eora::cuda
