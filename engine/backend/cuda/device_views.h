// Plain views of device-resident weights and low-rank tables, shared by the
// kernel launchers (.cuh) and the host code that fills them (cuda_ops.cc). Only
// POD structs of device pointers: no CUDA headers, so C++20 host code includes it.
// Formats: docs/formats.md (version 1); F16 values are their uint16 bit patterns.
#pragma once

#include <cstddef>
#include <cstdint>

namespace eora::cuda {

// A kQuant matrix (or the kept slots of a kSparse24Quant one).
struct QuantDev {
  const uint8_t* codes = nullptr;  // [rows][row_bytes]
  const uint16_t* scale = nullptr;   // F16 bits [rows][groups]
  const uint16_t* min = nullptr;     // F16 bits [rows][groups]
  int rows = 0, cols = 0;          // cols: logical columns (kept slots for sparse)
  int blocks = 0, groups = 0, bpg = 1, bits = 4;
  size_t row_bytes = 0;
};

// 2:4 sparse: kept values (F16 `values` or quantized `q`) and 2-bit positions.
struct Sparse24Dev {
  const uint16_t* values = nullptr;  // kSparse24: F16 [rows][kept_blocks * 32]
  QuantDev q;                      // kSparse24Quant: kept slots (q.blocks = kept_blocks)
  const uint8_t* meta = nullptr;   // [rows][kept_blocks * 8]
  int rows = 0, cols = 0, kept_blocks = 0;
};

// One factor (A [R, in] or Bt [R, out]) of a low-rank adapter on the device.
struct LrMatDev {
  int bits = 16;                   // 16: dense F16 in `f16`; 2/3/4: packed in `q`
  const uint16_t* f16 = nullptr;     // [rows][cols]
  QuantDev q;
  int rows = 0, cols = 0;
};

struct LrFactorDev {
  LrMatDev a, bt;
};

// The per-token gather tables of one low-rank step (all in device memory).
// Token t uses factors[tok_factor[t]] at rank tok_rank[t] (tok_factor[t] < 0: no
// adapter) and its u = A x lives at u[tok_uoff[t] .. tok_uoff[t] + tok_rank[t]).
// u_tok[i] is the token of u entry i (the flat work list of the A kernel: no
// padding to a common rank).
struct LowRankTables {
  const LrFactorDev* factors = nullptr;
  const int* tok_factor = nullptr;
  const int* tok_rank = nullptr;
  const int* tok_uoff = nullptr;
  const int* u_tok = nullptr;
  int total_u = 0;
};

// Fused EoRA epilogue of a quantized product: y[t][r] += sum_j u[..j] * Bt[j][r].
// Disabled when tables.factors is null.
struct LowRankEpilogue {
  LowRankTables tables;
  const float* u = nullptr;  // [total_u]
};

// Bytes of one packed block of 32 codes.
#ifdef __CUDACC__
__host__ __device__
#endif
constexpr int BlockBytes(int bits) { return bits == 4 ? 16 : bits == 3 ? 12 : 8; }

}  // namespace eora::cuda
