// 2:4 sparse GEMV: y[t][r] = sum_k W[r][k] x[t][k] (+ fused EoRA epilogue) for 1..8
// activation rows, on kSparse24 (F16 kept values) and kSparse24Quant (2/3/4-bit
// kept values), docs/formats.md. One warp per row; a lane takes whole blocks of 32
// kept slots (64 columns), decodes the 2-bit positions and gathers x at
// column 64 b + 4 (i / 2) + pos[i]. Larger batches run in chunks of 8 (the
// weights are re-read per chunk; a tiled prefill kernel is future work).
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "engine/backend/cuda/device_views.h"

namespace eora::cuda {

// `quant_bits` 0: kSparse24 (w.values); 2/3/4: kSparse24Quant (w.q). n >= 0 (any).
absl::Status LaunchSparse24Gemv(const Sparse24Dev& w, int quant_bits, const float* x, int ldx,
                                int n, float* y, int ldy, const LowRankEpilogue& epi, int t0,
                                cudaStream_t stream);

}  // namespace eora::cuda
