// SwiGLU: out[i] = silu(gate[i]) * up[i] = gate / (1 + exp(-gate)) * up.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace eora::cuda {

// out may alias gate or up.
absl::Status LaunchSwiGlu(const float* gate, const float* up, size_t n, float* out,
                          cudaStream_t stream);

}  // namespace eora::cuda
