// Compression and low-rank compensation algorithms (docs: ../shared ALGORITHMS.md,
// docs/compressor.md). Pure math on one linear layer at a time: no model, no files.
//
// Conventions: a linear layer is W [m x n] (out x in), row-major floats, y = W x.
// Calibration statistics of its input are accumulated in fp64.
// Threading contract: functions are reentrant; they may use OpenBLAS threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/matrix.h"

namespace eora::compress {

// Second moment and per-channel statistics of a layer's inputs x (n features).
struct CalibStats {
  explicit CalibStats(int n = 0);
  int n = 0;
  int64_t count = 0;             // rows accumulated
  std::vector<double> xtx;       // [n][n]  sum x x^T
  std::vector<double> sum_sq;    // [n]     sum x_j^2
  std::vector<double> sum_abs;   // [n]     sum |x_j|
  // Adds rows x [rows][ld] (first n columns).
  void Accumulate(const float* x, int rows, int ld);
};

// How a compressed layer is stored.
struct QuantConfig {
  int bits = 4;             // 2, 3, 4
  int group_size = 0;       // 0 = per output channel; else a multiple of 32
  bool symmetric = false;
  bool act_order = false;   // GPTQ: process columns by decreasing diag(H)
  double damp = 0.01;       // GPTQ/SparseGPT: H += damp * mean(diag H) * I
  int block_size = 128;     // GPTQ/SparseGPT column block
};

// A compressed linear layer: the engine matrix to serve, and its dequantized
// float form W_c (what the error dW = W - W_c is computed from).
struct CompressedLinear {
  std::shared_ptr<const Matrix> matrix;  // engine format (kQuant, kSparse24, kSparse24Quant, kF32)
  std::vector<float> w_c;                // [m][n]
};

absl::StatusOr<CompressedLinear> CompressRtn(const float* w, int m, int n, const QuantConfig& q);
absl::StatusOr<CompressedLinear> CompressGptq(const float* w, int m, int n, const CalibStats& s,
                                              const QuantConfig& q);
// 2:4 pruning, optionally followed/combined with quantization (quant = nullopt: kept values F16).
absl::StatusOr<CompressedLinear> CompressSparseGpt24(const float* w, int m, int n,
                                                     const CalibStats& s,
                                                     const std::optional<QuantConfig>& quant);
absl::StatusOr<CompressedLinear> CompressWanda24(const float* w, int m, int n, const CalibStats& s,
                                                 const std::optional<QuantConfig>& quant);
// SLiM-Quant: one symmetric scale per tensor chosen by the histogram search.
absl::StatusOr<CompressedLinear> CompressSlimQuant(const float* w, int m, int n, int bits);

// Low-rank factors: y += B (A x); B [m x r], A [r x n]; rank components ordered by
// importance (prefix truncation gives the best smaller-rank adapter for EoRA/SVD).
struct LowRank {
  int m = 0, n = 0, r = 0;
  std::vector<float> b;  // [m][r]
  std::vector<float> a;  // [r][n]
  std::vector<double> singular_values;  // [r]
};

// dW = W - W_c, [m][n].
absl::StatusOr<LowRank> FitSvd(const float* dw, int m, int n, int r);
absl::StatusOr<LowRank> FitActS(const float* dw, int m, int n, const CalibStats& s, int r);
absl::StatusOr<LowRank> FitEora(const float* dw, int m, int n, const CalibStats& s, int r);
// EoRA's input-side step (fp64 eigendecomposition of S / N with the relative cutoff),
// computed once and reused by layers that share an input (q/k/v, gate/up):
// FitEora(dw, m, n, ComputeEoraBasis(s), r) == FitEora(dw, m, n, s, r).
struct EoraBasis {
  int n = 0;
  std::vector<double> q;                // [n][n] eigenvectors (columns) of S / N
  std::vector<double> sqrt_lambda;      // [n] sqrt(lambda_i), 0 for dropped eigenvalues
  std::vector<double> inv_sqrt_lambda;  // [n] 1 / sqrt(lambda_i), 0 for dropped eigenvalues
  int kept = 0;                         // eigenvalues above the cutoff
};
absl::StatusOr<EoraBasis> ComputeEoraBasis(const CalibStats& s);
absl::StatusOr<LowRank> FitEora(const float* dw, int m, int n, const EoraBasis& basis, int r);
absl::StatusOr<LowRank> FitSlimLowRank(const float* dw, int m, int n, const CalibStats& s, int r);

// CALDERA: W ~= Q + L R with Q (bits_q) and L, R (bits_lr) quantized. H = S / mean(diag S)
// + 0.01 I. Scalar (GPTQ/LDLQ-style) quantizers, not the paper's E8 lattice codebooks:
// Q per row groups of group_size, L per column (rank component), R per row.
struct CalderaConfig {
  int rank = 16;
  int bits_q = 2;
  int bits_lr = 4;
  int outer_iters = 20;
  int inner_iters = 3;
  int group_size = 0;
};
// Quantized factors of a low-rank adapter (see QuantizeFactors below).
struct QuantizedFactors {
  std::shared_ptr<const Matrix> a;
  std::shared_ptr<const Matrix> bt;
};
struct CalderaResult {
  CompressedLinear q;  // the quantized backbone
  LowRank lr;          // L = b [m][r], R = a [r][n] (dequantized from their quantized form);
                       // singular_values: top-r singular values of (W - Q) H^1/2 at the best
                       // iteration's initialisation
  QuantizedFactors lr_quant;  // R as `a` [r][n], L^T as `bt` [r][m] (bits_lr, one group per row)
  double rel_error = 0;  // tr(dW H dW^T) / tr(W H W^T), dW = W - Q - L R, H as below
};
absl::StatusOr<CalderaResult> Caldera(const float* w, int m, int n, const CalibStats& s,
                                      const CalderaConfig& config);

// Quantizes factors along each rank component (rows of A, rows of B^T = columns of
// B), asymmetric, in groups of 64 (a shorter row is one group), to `bits` (2-4),
// GPTQ-style on the factors when
// stats are given (inputs of A are x; of B are A x), else RTN. Returns engine
// matrices for A [r x n] and Bt [r x m].
absl::StatusOr<QuantizedFactors> QuantizeFactors(const LowRank& lr, int bits,
                                                 const CalibStats* input_stats);

}  // namespace eora::compress
