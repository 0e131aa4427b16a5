#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/quant_layout.cuh"
#include "engine/backend/cuda/lowrank_a.cuh"

namespace eora::cuda {
namespace {

constexpr int kWarps = 8;

__global__ void __launch_bounds__(kWarps * 32)
    LowRankAKernel(LowRankTables tb, const float* __restrict__ x, int ldx, float* __restrict__ u) {
  const int lane = threadIdx.x % 32;
  const int i = blockIdx.x * kWarps + threadIdx.x / 32;
  if (i >= tb.total_u) return;
  const int t = tb.u_tok[i];
  const int j = i - tb.tok_uoff[t];
  const LrMatDev& a = tb.factors[tb.tok_factor[t]].a;
  const float* xt = x + static_cast<size_t>(t) * ldx;
  float s = 0.f;
  if (a.bits == 16) {
    const uint16_t* row = a.f16 + static_cast<size_t>(j) * a.cols;
    for (int k = lane; k < a.cols; k += 32) s = fmaf(H2F(row[k]), xt[k], s);
  } else {
    const QuantDev& q = a.q;
    const uint8_t* row = q.codes + static_cast<size_t>(j) * q.row_bytes;
    const int bb = BlockBytes(q.bits);
    for (int b = lane; b < q.blocks; b += 32) {
      uint8_t c[32];
      UnpackBlockRt(q.bits, row + static_cast<size_t>(b) * bb, c, b, q.blocks);
      const size_t gi = static_cast<size_t>(j) * q.groups + b / q.bpg;
      const int col0 = b * 32;
      const int valid = min(32, q.cols - col0);
      float dot = 0.f, sx = 0.f;
      for (int k = 0; k < valid; ++k) {
        const float xv = xt[col0 + k];
        dot = fmaf(static_cast<float>(c[k]), xv, dot);
        sx += xv;
      }
      s += H2F(q.scale[gi]) * dot + H2F(q.min[gi]) * sx;
    }
  }
  s = WarpSum(s);
  if (lane == 0) u[i] = s;
}

}  // namespace

absl::Status LaunchLowRankA(const LowRankTables& tables, const float* x, int ldx, float* u,
                            cudaStream_t stream) {
  if (tables.total_u == 0) return absl::OkStatus();
  LowRankAKernel<<<(tables.total_u + kWarps - 1) / kWarps, kWarps * 32, 0, stream>>>(tables, x,
                                                                                     ldx, u);
  return LaunchStatus("LowRankAKernel");
}

}  // namespace eora::cuda
