#include <array>

#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/quant_layout.cuh"
#include "engine/backend/cuda/sparse24_gemv.cuh"

namespace eora::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kMaxBatch = 8;

// BITS 0: F16 kept values; 2/3/4: quantized kept values.
template <int BITS, int NB>
__global__ void __launch_bounds__(kWarps * 32)
    Sparse24GemvKernel(Sparse24Dev w, const float* __restrict__ x, int ldx, float* __restrict__ y,
                       int ldy, LowRankEpilogue epi, int t0) {
  const int lane = threadIdx.x % 32;
  const int r = blockIdx.x * kWarps + threadIdx.x / 32;
  if (r >= w.rows) return;
  float acc[NB];
#pragma unroll
  for (int t = 0; t < NB; ++t) acc[t] = 0.f;
  const uint8_t* meta = w.meta + static_cast<size_t>(r) * w.kept_blocks * 8;
  for (int b = lane; b < w.kept_blocks; b += 32) {
    uint8_t pos[32];
    UnpackBlock<2>(meta + static_cast<size_t>(b) * 8, pos, b, 0);
    float val[32];
    float s = 1.f, m = 0.f;
    if constexpr (BITS == 0) {
      const uint16_t* v = w.values + (static_cast<size_t>(r) * w.kept_blocks + b) * 32;
#pragma unroll
      for (int i = 0; i < 32; ++i) val[i] = H2F(v[i]);
    } else {
      uint8_t c[32];
      UnpackBlock<BITS>(w.q.codes + static_cast<size_t>(r) * w.q.row_bytes +
                            static_cast<size_t>(b) * BlockBytes(BITS), c, b, w.q.blocks);
#pragma unroll
      for (int i = 0; i < 32; ++i) val[i] = static_cast<float>(c[i]);
      const size_t gi = static_cast<size_t>(r) * w.q.groups + b / w.q.bpg;
      s = H2F(w.q.scale[gi]);
      m = H2F(w.q.min[gi]);
    }
#pragma unroll
    for (int t = 0; t < NB; ++t) {
      const float* xp = x + static_cast<size_t>(t) * ldx;
      float dot = 0.f, sx = 0.f;
#pragma unroll
      for (int i = 0; i < 32; ++i) {
        const int col = 64 * b + 4 * (i / 2) + pos[i];
        const float xv = col < w.cols ? __ldg(xp + col) : 0.f;
        dot = fmaf(val[i], xv, dot);
        sx += xv;
      }
      acc[t] += BITS == 0 ? dot : s * dot + m * sx;
    }
  }
#pragma unroll
  for (int t = 0; t < NB; ++t) {
    float v = WarpSum(acc[t]);
    if (epi.tables.factors != nullptr) v += EpilogueWarp(epi, t0 + t, r, lane);
    if (lane == 0) y[static_cast<size_t>(t) * ldy + r] = v;
  }
}

using Fn = void (*)(Sparse24Dev, const float*, int, float*, int, LowRankEpilogue, int);
template <int BITS>
constexpr std::array<Fn, kMaxBatch + 1> Row() {
  return {nullptr,          &Sparse24GemvKernel<BITS, 1>, &Sparse24GemvKernel<BITS, 2>, &Sparse24GemvKernel<BITS, 3>,
          &Sparse24GemvKernel<BITS, 4>, &Sparse24GemvKernel<BITS, 5>, &Sparse24GemvKernel<BITS, 6>, &Sparse24GemvKernel<BITS, 7>,
          &Sparse24GemvKernel<BITS, 8>};
}
static_assert(kMaxBatch == 8, "Row() lists 8 instances");
// Instance table: [quant bits (0 = F16)][n].
const std::array<Fn, kMaxBatch + 1> kTable[5] = {Row<0>(), {}, Row<2>(), Row<3>(), Row<4>()};

}  // namespace

absl::Status LaunchSparse24Gemv(const Sparse24Dev& w, int quant_bits, const float* x, int ldx,
                                int n, float* y, int ldy, const LowRankEpilogue& epi, int t0,
                                cudaStream_t stream) {
  if (quant_bits != 0 && (quant_bits < 2 || quant_bits > 4))
    return absl::InvalidArgumentError(absl::StrCat("sparse gemv: bits ", quant_bits));
  if (w.rows == 0) return absl::OkStatus();
  for (int c = 0; c < n; c += kMaxBatch) {
    const int nb = n - c < kMaxBatch ? n - c : kMaxBatch;
    kTable[quant_bits][nb]<<<(w.rows + kWarps - 1) / kWarps, kWarps * 32, 0, stream>>>(
        w, x + static_cast<size_t>(c) * ldx, ldx, y + static_cast<size_t>(c) * ldy, ldy, epi,
        t0 + c);
    absl::Status s = LaunchStatus("Sparse24GemvKernel");
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace eora::cuda
