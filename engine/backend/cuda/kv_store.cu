#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/kv_store.cuh"

namespace eora::cuda {
namespace {

constexpr int kThreads = 128;

__global__ void KvStoreKernel(const float* __restrict__ k, const float* __restrict__ v, int kv_dim,
                              const int* __restrict__ pos, const int* __restrict__ tok_table,
                              const int* __restrict__ block_tables, float* pool, int n_layers,
                              int layer) {
  const int t = blockIdx.y;
  const int d = blockIdx.x * kThreads + threadIdx.x;
  if (d >= kv_dim) return;
  const int p = pos[t];
  const int block = block_tables[tok_table[t] + p / kKvBlockTokens];
  const int slot = p % kKvBlockTokens;
  const size_t base = ((static_cast<size_t>(block) * n_layers + layer) * 2) * kKvBlockTokens;
  pool[(base + slot) * kv_dim + d] = k[static_cast<size_t>(t) * kv_dim + d];
  pool[(base + kKvBlockTokens + slot) * kv_dim + d] = v[static_cast<size_t>(t) * kv_dim + d];
}

}  // namespace

absl::Status LaunchKvStore(const float* k, const float* v, int tokens, int kv_dim, const int* pos,
                           const int* tok_table, const int* block_tables, float* pool,
                           int n_layers, int layer, cudaStream_t stream) {
  if (tokens == 0 || kv_dim == 0) return absl::OkStatus();
  const dim3 grid((kv_dim + kThreads - 1) / kThreads, tokens);
  KvStoreKernel<<<grid, kThreads, 0, stream>>>(k, v, kv_dim, pos, tok_table, block_tables, pool,
                                               n_layers, layer);
  return LaunchStatus("KvStoreKernel");
}

}  // namespace eora::cuda
