// Converts F32 activations to F16 or BF16 (the input type of cuBLAS mixed products).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace eora::cuda {

// dtype 1: F16, 2: BF16 (cpu::DenseType numbering). x: [n][ldx] -> out: [n][cols] dense.
absl::Status LaunchConvertF32(const float* x, int n, int cols, int ldx, int dtype, void* out,
                              cudaStream_t stream);

}  // namespace eora::cuda
