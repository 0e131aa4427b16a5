// Quantized GEMM (prefill): y[t][r] = sum_k W[r][k] x[t][k] (+ fused EoRA epilogue)
// for any number of activation rows, on the packed kQuant layout. A thread block
// computes a 64-row x 64-token tile: per 32-column block, 64 threads unpack one
// row's codes each and dequantize into shared memory, the others stage the
// activations; every thread then accumulates a 4x4 sub-tile in registers (F32
// FMA; a tensor-core path is future work, see docs/cuda.md).
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "engine/backend/cuda/device_views.h"

namespace eora::cuda {

// x: [n][ldx], y: [n][ldy]; token t of x is t0 + t in the epilogue tables.
absl::Status LaunchQuantGemm(const QuantDev& w, const float* x, int ldx, int n, float* y, int ldy,
                             const LowRankEpilogue& epi, int t0, cudaStream_t stream);

}  // namespace eora::cuda
