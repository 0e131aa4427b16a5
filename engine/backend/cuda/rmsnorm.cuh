// RMSNorm over rows: out[t][i] = x[t][i] * w[i] / sqrt(mean(x[t]^2) + eps), as
// the CPU forward pass (engine/model.cc). One thread block per row.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace eora::cuda {

// x, out: [rows][dim] (may alias); w: [dim].
absl::Status LaunchRmsNorm(const float* x, const float* w, int rows, int dim, float eps, float* out,
                           cudaStream_t stream);

}  // namespace eora::cuda
