// Rotary position embedding in place, both conventions of RopeStyle:
// interleaved pairs (2i, 2i+1) (GGUF) and half pairs (i, i + head_dim/2) (Hugging
// Face). Angles as the CPU: pos * theta^(-2i/head_dim), computed in double.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace eora::cuda {

// v: [rows][ld], heads of head_dim at v + t*ld + h*head_dim, h < n_heads; pos: [rows].
// interleaved: true for RopeStyle::kInterleaved.
absl::Status LaunchRope(float* v, int rows, int ld, int n_heads, int head_dim, const int* pos,
                        float theta, bool interleaved, cudaStream_t stream);

}  // namespace eora::cuda
