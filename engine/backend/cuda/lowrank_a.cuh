// The A side of a batched multi-adapter low-rank step: u = A x, computed once per
// step per module and consumed by the fused epilogue of the quantized product
// (or by LaunchLowRankB on the unfused path). One launch for the whole batch,
// whatever the mix of adapters and ranks: the work list is the flat gather table
// LowRankTables::u_tok (one entry per (token, rank component), no padding to a
// common rank); one warp computes one entry, A in F16 or 2/3/4-bit.
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "engine/backend/cuda/device_views.h"

namespace eora::cuda {

// u[i] = A_{f(t)}[j] . x[t] for every entry i of the tables (t = u_tok[i],
// j = i - tok_uoff[t]). x: [tokens][ldx] (the step's rows), u: [total_u].
absl::Status LaunchLowRankA(const LowRankTables& tables, const float* x, int ldx, float* u,
                            cudaStream_t stream);

}  // namespace eora::cuda
