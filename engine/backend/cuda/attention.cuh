// Causal GQA attention over the paged KV cache, for decode and prefill: query token
// t (head h, KV head h / (n_heads / n_kv_heads)) attends to positions [0, pos[t]]
// of its sequence. One thread block of 4 warps per (token, head); each warp runs an
// online softmax over a strided subset of positions (any context length, no score
// buffer), then the warps are merged. head_dim <= 256. Prefill uses the same kernel
// (one query per block); a tensor-core flash-attention prefill is future work.
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "engine/backend/cuda/kv_store.cuh"

namespace eora::cuda {

inline constexpr int kMaxHeadDim = 256;

struct AttentionArgs {
  const float* q = nullptr;   // [tokens][n_heads * head_dim], RoPE applied
  float* out = nullptr;       // [tokens][n_heads * head_dim]
  int tokens = 0;
  const int* pos = nullptr;        // [tokens]: position of each query token
  const int* tok_table = nullptr;  // [tokens]: start of its sequence's block table
  const int* block_tables = nullptr;
  const float* pool = nullptr;     // layout of kv_store.cuh
  int n_layers = 0, layer = 0;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  float scale = 0.f;  // usually 1 / sqrt(head_dim)
};

absl::Status LaunchAttention(const AttentionArgs& a, cudaStream_t stream);

}  // namespace eora::cuda
