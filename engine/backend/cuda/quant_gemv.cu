#include <array>

#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/quant_layout.cuh"
#include "engine/backend/cuda/quant_gemv.cuh"

namespace eora::cuda {
namespace {

constexpr int kWarps = 4;  // rows per thread block

template <int BITS, int NB>
__global__ void __launch_bounds__(kWarps * 32)
    QuantGemvKernel(QuantDev w, const float* __restrict__ x, int ldx, float* __restrict__ y,
                    int ldy, LowRankEpilogue epi, int t0) {
  const int lane = threadIdx.x % 32;
  const int r = blockIdx.x * kWarps + threadIdx.x / 32;
  if (r >= w.rows) return;
  constexpr int BB = BlockBytes(BITS);
  const uint8_t* row = w.codes + static_cast<size_t>(r) * w.row_bytes;
  const uint16_t* scale = w.scale + static_cast<size_t>(r) * w.groups;
  const uint16_t* mins = w.min + static_cast<size_t>(r) * w.groups;
  float acc[NB];
#pragma unroll
  for (int t = 0; t < NB; ++t) acc[t] = 0.f;
  for (int b = lane; b < w.blocks; b += 32) {
    uint8_t c[32];
    UnpackBlock<BITS>(row + static_cast<size_t>(b) * BB, c, b, w.blocks);
    const int g = b / w.bpg;
    const float s = H2F(scale[g]), m = H2F(mins[g]);
    const int col0 = b * 32;
    const int valid = min(32, w.cols - col0);
#pragma unroll
    for (int t = 0; t < NB; ++t) {
      const float* xp = x + static_cast<size_t>(t) * ldx + col0;
      float dot = 0.f, sx = 0.f;
      if (valid == 32) {
#pragma unroll
        for (int k = 0; k < 32; ++k) {
          const float xv = __ldg(xp + k);
          dot = fmaf(static_cast<float>(c[k]), xv, dot);
          sx += xv;
        }
      } else {
        for (int k = 0; k < valid; ++k) {
          const float xv = __ldg(xp + k);
          dot = fmaf(static_cast<float>(c[k]), xv, dot);
          sx += xv;
        }
      }
      acc[t] += s * dot + m * sx;
    }
  }
#pragma unroll
  for (int t = 0; t < NB; ++t) {
    float v = WarpSum(acc[t]);
    if (epi.tables.factors != nullptr) v += EpilogueWarp(epi, t0 + t, r, lane);
    if (lane == 0) y[static_cast<size_t>(t) * ldy + r] = v;
  }
}

using GemvFn = void (*)(QuantDev, const float*, int, float*, int, LowRankEpilogue, int);

// Instance table: [bits][n], bits 2..4, n 1..8.
template <int BITS>
constexpr std::array<GemvFn, kMaxGemvBatch + 1> Row() {
  return {nullptr,          &QuantGemvKernel<BITS, 1>, &QuantGemvKernel<BITS, 2>, &QuantGemvKernel<BITS, 3>,
          &QuantGemvKernel<BITS, 4>, &QuantGemvKernel<BITS, 5>, &QuantGemvKernel<BITS, 6>, &QuantGemvKernel<BITS, 7>,
          &QuantGemvKernel<BITS, 8>};
}
static_assert(kMaxGemvBatch == 8, "Row() lists 8 instances");
const std::array<GemvFn, kMaxGemvBatch + 1> kGemvTable[5] = {{}, {}, Row<2>(), Row<3>(), Row<4>()};

}  // namespace

absl::Status LaunchQuantGemv(const QuantDev& w, const float* x, int ldx, int n, float* y, int ldy,
                             const LowRankEpilogue& epi, int t0, cudaStream_t stream) {
  if (w.bits < 2 || w.bits > 4 || n < 1 || n > kMaxGemvBatch)
    return absl::InvalidArgumentError(
        absl::StrCat("quant gemv: bits ", w.bits, ", batch ", n, " not supported"));
  if (w.rows == 0) return absl::OkStatus();
  const GemvFn fn = kGemvTable[w.bits][n];
  fn<<<(w.rows + kWarps - 1) / kWarps, kWarps * 32, 0, stream>>>(w, x, ldx, y, ldy, epi, t0);
  return LaunchStatus("QuantGemvKernel");
}

}  // namespace eora::cuda
