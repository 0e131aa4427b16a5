#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/quant_layout.cuh"
#include "engine/backend/cuda/quant_gemm.cuh"

namespace eora::cuda {
namespace {

constexpr int kTileR = 64, kTileT = 64, kThreads = 256;

template <int BITS>
__global__ void __launch_bounds__(kThreads)
    QuantGemmKernel(QuantDev w, const float* __restrict__ x, int ldx, int n, float* __restrict__ y,
                    int ldy, LowRankEpilogue epi, int t0) {
  __shared__ float ws[kTileR][33];
  __shared__ float xs[kTileT][33];
  const int r0 = blockIdx.x * kTileR, tt0 = blockIdx.y * kTileT;
  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;  // tokens tx*4.., rows ty*4..
  float acc[4][4] = {};
  constexpr int BB = BlockBytes(BITS);
  for (int b = 0; b < w.blocks; ++b) {
    const int col0 = b * 32;
    const int valid = min(32, w.cols - col0);
    if (tid < kTileR) {
      const int r = r0 + tid;
      if (r < w.rows) {
        uint8_t c[32];
        UnpackBlock<BITS>(w.codes + static_cast<size_t>(r) * w.row_bytes +
                              static_cast<size_t>(b) * BB, c, b, w.blocks);
        const size_t gi = static_cast<size_t>(r) * w.groups + b / w.bpg;
        const float s = H2F(w.scale[gi]), m = H2F(w.min[gi]);
#pragma unroll
        for (int k = 0; k < 32; ++k) ws[tid][k] = s * static_cast<float>(c[k]) + m;
      } else {
#pragma unroll
        for (int k = 0; k < 32; ++k) ws[tid][k] = 0.f;
      }
    } else {
      for (int i = tid - kTileR; i < kTileT * 32; i += kThreads - kTileR) {
        const int t = i / 32, k = i % 32;
        const int tok = tt0 + t;
        xs[t][k] = (tok < n && k < valid) ? x[static_cast<size_t>(tok) * ldx + col0 + k] : 0.f;
      }
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < 32; ++k) {
      float wr[4], xr[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) wr[i] = ws[ty * 4 + i][k];
#pragma unroll
      for (int j = 0; j < 4; ++j) xr[j] = xs[tx * 4 + j][k];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(wr[i], xr[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = r0 + ty * 4 + i;
    if (r >= w.rows) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int tok = tt0 + tx * 4 + j;
      if (tok >= n) continue;
      float v = acc[i][j];
      if (epi.tables.factors != nullptr) v += EpilogueSerial(epi, t0 + tok, r);
      y[static_cast<size_t>(tok) * ldy + r] = v;
    }
  }
}

using GemmFn = void (*)(QuantDev, const float*, int, int, float*, int, LowRankEpilogue, int);
const GemmFn kGemmTable[5] = {nullptr, nullptr, &QuantGemmKernel<2>, &QuantGemmKernel<3>,
                              &QuantGemmKernel<4>};

}  // namespace

absl::Status LaunchQuantGemm(const QuantDev& w, const float* x, int ldx, int n, float* y, int ldy,
                             const LowRankEpilogue& epi, int t0, cudaStream_t stream) {
  if (w.bits < 2 || w.bits > 4 || n < 0)
    return absl::InvalidArgumentError(absl::StrCat("quant gemm: bits ", w.bits, " not supported"));
  if (w.rows == 0 || n == 0) return absl::OkStatus();
  const dim3 grid((w.rows + kTileR - 1) / kTileR, (n + kTileT - 1) / kTileT);
  kGemmTable[w.bits]<<<grid, kThreads, 0, stream>>>(w, x, ldx, n, y, ldy, epi, t0);
  return LaunchStatus("QuantGemmKernel");
}

}  // namespace eora::cuda
