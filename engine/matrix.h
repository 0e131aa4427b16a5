// Weight matrices in every storage format the engine computes on.
//
// A Matrix is an immutable [rows x cols] weight W (rows = output features,
// cols = input features, row-major semantics). The forward pass calls
//   y[t][r] = sum_k W[r][k] * x[t][k]
// for a block of n activation rows. Implementations compute directly on their
// stored (packed) representation; none keeps a dequantized copy.
//
// Threading contract: a Matrix is immutable after construction; all const methods
// may be called concurrently. Parallelism is the caller's: it splits [0, rows)
// into ranges and calls MatMulRows on each range from different threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/dtype.h"

namespace eora {

// Block size of activation quantization (and of the packed weight layouts).
inline constexpr int kQBlock = 32;
// QuantizedActivations::Quantize gives each aligned run of kQSpan consecutive
// blocks (kQSpan * 32 columns) one shared scale (the largest |x| of the run / 127),
// which lets the integer kernels add the products of up to kQSpan blocks of one
// weight group in int16 before converting and scaling (like llama.cpp's 256-wide
// Q8_K). 1 gives one scale per 32-column block.
inline constexpr int kQSpan = 4;

// Activations quantized to int8 in blocks of kQBlock along the input dimension,
// the input form of the integer kernels (quantized weights). Rows are padded with
// zeros to `padded_cols` (a multiple of kQBlock).
struct QuantizedActivations {
  int n = 0;            // activation rows
  int cols = 0;         // logical input features
  int padded_cols = 0;  // cols rounded up to kQBlock
  std::vector<int8_t> q;       // [n][padded_cols]
  std::vector<float> scale;    // [n][padded_cols / kQBlock]: x ~= scale * q
  std::vector<float> sum;      // [n][padded_cols / kQBlock]: scale * sum(q) over the block
  // Aligned runs of `span` blocks share one scale value (repeated in `scale`).
  int span = 1;

  // Quantizes x [n][cols] (row stride ldx) into *this, reusing its buffers.
  void Quantize(const float* x, int n, int cols, int ldx);
};

// The input to a matrix product: float activations, plus their int8 form when the
// matrix asked for it (Matrix::WantsQuantizedInput()).
struct MatMulInput {
  const float* x = nullptr;  // [n][ldx], first `cols` used
  int n = 0;
  int ldx = 0;
  const QuantizedActivations* qx = nullptr;
};

enum class MatrixFormat {
  kF32,       // dense float
  kF16,       // dense IEEE half
  kBF16,      // dense bfloat16
  kQuant,     // 2/3/4-bit integer codes, per-group scale and min (see docs/formats.md)
  kSparse24,  // 2:4 structured sparse, kept values dense float (F16 storage)
  kSparse24Quant,  // 2:4 structured sparse, kept values as 2/3/4-bit codes
};

class Matrix {
 public:
  Matrix(int rows, int cols) : rows_(rows), cols_(cols) {}
  virtual ~Matrix() = default;
  Matrix(const Matrix&) = delete;
  Matrix& operator=(const Matrix&) = delete;

  int rows() const { return rows_; }
  int cols() const { return cols_; }

  virtual MatrixFormat format() const = 0;
  // Short human-readable description, e.g. "f32", "q4 g64", "2:4 q3 g128".
  virtual std::string Describe() const = 0;
  // Bytes of storage read by one full product with a single activation row
  // (codes + scales + metadata). Used for bandwidth reporting.
  virtual size_t StorageBytes() const = 0;
  // Whether MatMulRows needs MatMulInput::qx (int8 activations).
  virtual bool WantsQuantizedInput() const { return false; }
  // Preferred granularity of row ranges handed to MatMulRows (a multiple of it
  // keeps the kernel on its fast path); any range is still correct.
  virtual int RowAlignment() const { return 16; }

  // y[t * ldy + r] = sum_k W[r][k] * x[t][k] for t in [0, in.n), r in [r0, r1).
  virtual void MatMulRows(const MatMulInput& in, float* y, int ldy, int r0, int r1) const = 0;

  // y[t * ldy + c] += sum_{j < r} u[t * ldu + j] * W[j][c] for t in [0, n), c in [c0, c1).
  // (W used transposed, restricted to its first r rows: the B-side of a low-rank
  // product stored as B^T, truncated to rank r.)
  virtual void AccumulateTransposed(const float* u, int ldu, int n, int r, float* y, int ldy,
                                    int c0, int c1) const;
  // Builds whatever AccumulateTransposed keeps beside the stored form (the int8
  // B side's rank-interleaved copy of quantized matrices), so that the first
  // product does not pay for it; otherwise built on first use. Thread-safe.
  virtual void PrepareAccumulateTransposed() const {}
  // Bytes held beside the stored form (that copy, once built).
  virtual size_t AuxiliaryBytes() const { return 0; }

  // Dense formats (F32, F16, BF16): the stored elements, rows * cols of them
  // row-major in the format's dtype (what a file holds), or nullptr (other formats).
  virtual const void* DenseElements() const { return nullptr; }

  // Writes row r of W as floats (cols() values): reference path and embedding lookup.
  virtual void DequantizeRow(int r, float* out) const = 0;

  // Full float copy (rows * cols). For tests and the compressor, never the hot path.
  std::vector<float> Dequantize() const;

 private:
  const int rows_;
  const int cols_;
};

// ---- Dense ------------------------------------------------------------------

// Takes a copy of `data` ([rows][cols] elements of `dtype`).
std::unique_ptr<Matrix> MakeDenseMatrix(DType dtype, int rows, int cols, const void* data);
// Converts float weights to `dtype` storage.
std::unique_ptr<Matrix> MakeDenseMatrixFromF32(DType dtype, int rows, int cols, const float* w);

// ---- Group-wise quantized -----------------------------------------------------

// Parameters of the group-wise integer format. Dequantization is
//   W[r][k] = scale[r][g] * code[r][k] + min[r][g],  g = k / group_size,
// with code in [0, 2^bits). Symmetric and integer-zero-point schemes are special
// cases (min = -scale * zero).
struct QuantSpec {
  int bits = 4;         // 2, 3 or 4
  int group_size = 64;  // multiple of 32, or 0 for one group per row (per channel)
};

// The unpacked form of a quantized matrix: what quantizers produce and what the
// file format stores after packing.
struct QuantizedWeights {
  int rows = 0, cols = 0;
  QuantSpec spec;
  std::vector<uint8_t> codes;  // [rows][cols], each < 2^bits
  std::vector<float> scale;    // [rows][groups]
  std::vector<float> min;      // [rows][groups]
  int groups() const;          // groups per row
  int group_size_effective() const;  // spec.group_size or padded cols for per channel
};

// Validates and packs. Scales and mins are stored as F16 (rounded here).
absl::StatusOr<std::unique_ptr<Matrix>> MakeQuantizedMatrix(const QuantizedWeights& w);

// Round-to-nearest asymmetric quantization of float weights (min/max per group).
QuantizedWeights QuantizeRtn(const float* w, int rows, int cols, QuantSpec spec);

// ---- 2:4 sparse ----------------------------------------------------------------

// W with at most 2 non-zeros in every aligned group of 4 along each row (cols is
// padded to a multiple of 4 with zeros). Fails if the pattern is violated.
absl::StatusOr<std::unique_ptr<Matrix>> MakeSparse24Matrix(int rows, int cols, const float* w);
// 2:4 sparse with the kept values quantized group-wise (groups count kept values).
absl::StatusOr<std::unique_ptr<Matrix>> MakeSparse24QuantMatrix(int rows, int cols, const float* w,
                                                                 QuantSpec spec);

// ---- Products -------------------------------------------------------------------

class ThreadPool;

// The A products u = A[:r] x of a MatMulSharedLowRank call, cut into row pieces
// that the threads of the region claim; each thread then waits until all pieces
// are done. Only threads already running claim pieces, so the wait never depends
// on a thread that has not started.
struct LowRankShare {
  struct Piece {
    int term, r0, r1;
    size_t off;  // of the term's u in `u`
  };
  std::vector<Piece> pieces;
  std::vector<float> u;  // n * r floats per term, back to back in term order
  // Written by every thread of the region: each on its own cache line, away from
  // the fields above, which the threads only read.
  alignas(64) std::atomic<int> next{0};
  alignas(64) std::atomic<int> done{0};
};

// Scratch space reused across products (int8 activations, low-rank u).
struct MatMulScratch {
  QuantizedActivations qx;
  std::unique_ptr<LowRankShare> lr = std::make_unique<LowRankShare>();
};

// Products of at most this many activation rows (decode) read their weights once,
// as streams. Their parallel regions run one chunk per thread when the weights
// are at most kOneChunkMaxBytes (a chunk boundary restarts the streams), and the
// pool's default chunks per thread above that (a long region's join waits on the
// slower core's share; dynamic chunks even it out). MatMulSharedImpl and the
// model's fused gate/up region use DecodeChunksPerThread.
inline constexpr int kStreamRows = 4;
inline constexpr size_t kOneChunkMaxBytes = size_t{4} << 20;
int DecodeChunksPerThread(size_t weight_bytes);

// y[t][r] = W x[t] over all rows, parallel over rows. x is [n][ldx], y [n][ldy].
void MatMul(const Matrix& w, const float* x, int n, int ldx, float* y, int ldy, ThreadPool* pool,
            MatMulScratch* scratch);

// Several matrices sharing one input (q/k/v, gate/up): the input is quantized once
// and all rows of all matrices are split across threads in one parallel region.
struct MatMulOutput {
  const Matrix* w;
  float* y;
  int ldy;
  int rows = -1;  // compute only the first `rows` rows of w (-1: all), e.g. A[:r]
};
void MatMulShared(const std::vector<MatMulOutput>& outs, const float* x, int n, int ldx,
                  ThreadPool* pool, MatMulScratch* scratch);

// A low-rank term y += (x A[:r]^T) Bt[:r] of one output of MatMulSharedLowRank
// (a == nullptr: none).
struct LowRankTerm {
  const Matrix* a = nullptr;   // [R, in]
  const Matrix* bt = nullptr;  // [R, out]
  int r = 0;
};
// MatMulShared with an optional low-rank term per output (lr[i] for outs[i]), in
// the same parallel region: the threads first share out u = A[:r] x of every term
// (row pieces, LowRankShare) and wait for it, then each computes its rows of the
// base products and adds u Bt[:r] to them. That saves the region (and the join)
// that adding the B products after a separate A pass needs; the caller uses it
// when the A products are small (decode).
// Results are the same bits as MatMulShared followed by AccumulateTransposed.
void MatMulSharedLowRank(const std::vector<MatMulOutput>& outs, const std::vector<LowRankTerm>& lr,
                         const float* x, int n, int ldx, ThreadPool* pool, MatMulScratch* scratch);
// PrepareLowRankU cuts the terms' A products into pieces for `threads` threads
// (before the region); LowRankU, called by each thread in the region, computes
// pieces until none are left, waits for the rest, and returns u (n * r floats per
// term, back to back in term order).
// ClaimLowRankU only computes pieces (no wait): call it early in the region so
// that the pieces are done by the time anyone needs u.
void PrepareLowRankU(const std::vector<LowRankTerm>& lr, int n, int threads, MatMulScratch* scratch);
void ClaimLowRankU(const std::vector<LowRankTerm>& lr, const MatMulInput& in, MatMulScratch* scratch);
const float* LowRankU(const std::vector<LowRankTerm>& lr, const MatMulInput& in, MatMulScratch* scratch);

// Name of the SIMD kernel set chosen at runtime ("amx", "avx512", "avx2", "generic").
const char* KernelIsaName();

}  // namespace eora
