// The unfused B side of a batched multi-adapter low-rank step:
//   y[t][c] += sum_{j < rank(t)} u[tok_uoff[t] + j] * Bt_{f(t)}[j][c]
// for every token with an adapter (different adapters and ranks in one launch).
// Used after dense (cuBLAS) products, and as the reference for the fused
// epilogue. One thread per output column: reads of Bt rows are coalesced.
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "engine/backend/cuda/device_views.h"

namespace eora::cuda {

// y: [tokens][ldy]; `out` columns.
absl::Status LaunchLowRankB(const LowRankTables& tables, const float* u, int tokens, int out,
                            float* y, int ldy, cudaStream_t stream);

}  // namespace eora::cuda
