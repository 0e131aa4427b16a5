// Writes the new tokens' keys and values into the paged KV cache on the device.
// Pool layout = the CPU KvCache (engine/kv_cache.h): blocks of kKvBlockTokens
// positions, element (block, layer, kind 0=K 1=V, slot, d) at
//   ((((block * n_layers + layer) * 2 + kind) * kKvBlockTokens + slot) * kv_dim + d).
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"

namespace eora::cuda {

inline constexpr int kKvBlockTokens = 16;

// k, v: [tokens][kv_dim]; token t goes to position pos[t] of the sequence whose
// block table starts at block_tables[tok_table[t]].
absl::Status LaunchKvStore(const float* k, const float* v, int tokens, int kv_dim, const int* pos,
                           const int* tok_table, const int* block_tables, float* pool,
                           int n_layers, int layer, cudaStream_t stream);

}  // namespace eora::cuda
