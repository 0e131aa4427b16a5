// Greedy sampling: ids[t] = argmax_v logits[t][v], ties to the lowest id (as the
// CPU sampler at temperature 0). One thread block per row.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace eora::cuda {

// logits: [rows][ld], first vocab used; ids: [rows].
absl::Status LaunchArgmax(const float* logits, int rows, int vocab, int ld, int* ids,
                          cudaStream_t stream);

}  // namespace eora::cuda
