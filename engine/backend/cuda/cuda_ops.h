// Host API of the CUDA backend: upload weight matrices and low-rank adapters in
// their packed formats (the bytes of docs/formats.md, as-is) and run each op.
// No CUDA types here (device state is behind opaque handles), so CPU code and
// tests include this header without the CUDA toolkit's headers.
//
// The op methods take and return HOST arrays: each copies its inputs to the
// device, runs the kernels on the context's stream, synchronises and copies the
// result back. That is what parity tests and benchmarks need; a GPU forward pass
// would keep activations on the device and call the launchers (*.cuh) directly.
//
// Threading contract: a CudaContext (its stream, cuBLAS handle and scratch) is
// used from one thread at a time. Uploaded DeviceMatrix / DeviceLowRank objects
// own their device memory, are immutable, and may be used by any context on the
// same device.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/lowrank.h"
#include "engine/matrix.h"
#include "engine/model_config.h"

namespace eora::cuda {

// A Matrix on the device in its own format: kQuant and kSparse24(Quant) keep their
// packed bytes; dense kF32/kF16/kBF16 keep their element type.
class DeviceMatrix {
 public:
  struct Impl;  // defined in cuda_ops.cc
  explicit DeviceMatrix(std::unique_ptr<Impl> impl);
  ~DeviceMatrix();
  int rows() const;
  int cols() const;
  MatrixFormat format() const;
  size_t device_bytes() const;  // bytes of device memory held
  const Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// Low-rank factors (A [R, in], Bt [R, out]) on the device: packed 2/3/4-bit
// factors stay packed; dense factors are stored as F16 (F32/BF16 are rounded).
class DeviceLowRank {
 public:
  struct Impl;
  explicit DeviceLowRank(std::unique_ptr<Impl> impl);
  ~DeviceLowRank();
  int rank() const;
  int in() const;
  int out() const;
  const Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

// Activation rows [begin, end) use `factors` truncated to `rank` (<= its rank).
// Rows in no segment get no low-rank term. Segments must not overlap.
struct DeviceLowRankSegment {
  int begin = 0, end = 0;
  const DeviceLowRank* factors = nullptr;
  int rank = 0;
};

// Paged attention inputs (host arrays). The KV pool has the CPU KvCache layout:
// num_blocks blocks of 16 positions; float index
//   ((((block * n_layers + layer) * 2 + kind) * 16 + slot) * kv_dim + d).
struct PagedAttentionInput {
  int n_layers = 1, layer = 0;
  int n_heads = 0, n_kv_heads = 0, head_dim = 0;
  float scale = 0.f;
  const float* pool = nullptr;
  size_t pool_floats = 0;
  std::vector<std::vector<int>> block_tables;  // per sequence: block ids
  const float* q = nullptr;                    // [tokens][n_heads * head_dim]
  int tokens = 0;
  const int* pos = nullptr;           // [tokens]
  const int* seq_of_token = nullptr;  // [tokens]: index into block_tables
};

class CudaContext {
 public:
  // Selects `device`, creates a stream and a cuBLAS handle. UNAVAILABLE without a
  // usable device.
  static absl::StatusOr<std::unique_ptr<CudaContext>> Create(int device = 0);
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  absl::StatusOr<std::unique_ptr<DeviceMatrix>> Upload(const Matrix& m);
  absl::StatusOr<std::unique_ptr<DeviceLowRank>> Upload(const LowRankFactors& f);

  // y[t][r] = sum_k W[r][k] x[t][k]; x: [n][cols], y: [n][rows] (dense rows).
  // Quantized: GEMV for n <= 8, tiled GEMM above; 2:4: sparse GEMV; dense: cuBLAS.
  absl::Status MatMul(const DeviceMatrix& w, const float* x, int n, float* y);
  // y = W x + the segments' low-rank terms. fused: u = A x by one batched kernel,
  // then B u and the add inside the quantized/sparse product's epilogue (dense W
  // always takes the unfused path); unfused: A kernel, product, B kernel.
  absl::Status MatMulLowRank(const DeviceMatrix& w, std::span<const DeviceLowRankSegment> segments,
                             const float* x, int n, float* y, bool fused);
  // y[t] += Bt^T (A x[t]) for the segments (the CPU ApplyLowRank); x: [n][in],
  // y: [n][out] (read and written).
  absl::Status LowRank(std::span<const DeviceLowRankSegment> segments, const float* x, int n,
                       int in, int out, float* y);

  absl::Status RmsNorm(const float* x, const float* w, int rows, int dim, float eps, float* out);
  // v: [rows][n_heads * head_dim], rotated in place (host array).
  absl::Status Rope(float* v, int rows, int n_heads, int head_dim, const int* pos, float theta,
                    RopeStyle style);
  absl::Status SwiGlu(const float* gate, const float* up, size_t n, float* out);
  absl::Status Argmax(const float* logits, int rows, int vocab, int* ids);
  // out: [tokens][n_heads * head_dim].
  absl::Status PagedAttention(const PagedAttentionInput& in, float* out);
  // Stores k, v ([tokens][kv_dim]) at (seq_of_token, pos) into `pool` (host array,
  // read and written), through the device kernel.
  absl::Status KvStore(const PagedAttentionInput& layout, const float* k, const float* v,
                       float* pool);

  struct State;

 private:
  explicit CudaContext(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

}  // namespace eora::cuda
