// Quantized GEMV (decode): y[t][r] = sum_k W[r][k] x[t][k] (+ fused EoRA epilogue)
// for 1..8 activation rows, computing from the packed 2/3/4-bit group-wise blocks
// (kQuant, docs/formats.md) in registers. One warp per output row; each lane
// unpacks whole 32-code blocks and applies scale/min per group:
//   sum_k W x = scale_g * sum_k code_k x_k + min_g * sum_k x_k.
// Activations stay F32 (no int8 activation quantization, unlike the CPU kernels).
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "engine/backend/cuda/device_views.h"

namespace eora::cuda {

inline constexpr int kMaxGemvBatch = 8;

// x: [n][ldx] (first w.cols used), y: [n][ldy]. n in 1..kMaxGemvBatch. `t0` is the
// index of x's first row in the step's token tables (epilogue lookups); pass an
// epilogue with null tables for the plain product. Instances: one per (bits, n),
// chosen by table lookup.
absl::Status LaunchQuantGemv(const QuantDev& w, const float* x, int ldx, int n, float* y, int ldy,
                             const LowRankEpilogue& epi, int t0, cudaStream_t stream);

}  // namespace eora::cuda
