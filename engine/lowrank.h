// Low-rank adapters (EoRA / LoRA factors) and their batched application.
//
// For a linear module W [out x in] an adapter adds  y += B (A x)  with
// A [R x in] and B [out x R]. We store A as a Matrix with R rows and B transposed
// (Bt [R x out]) so that rank component j is row j of both: truncating to rank
// r <= R uses the first r rows of each (EoRA factors are ordered by importance, so
// the prefix is the best rank-r adapter). Any scaling (PEFT alpha / r) is folded
// into B when an adapter is built.
//
// Threading contract: immutable after construction; shared freely (shared_ptr)
// between the registry that loads it and the forward steps that use it.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/matrix.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"

namespace eora {

class ThreadPool;

// Group size of quantized factors as eora-compressor writes them: groups of this
// many columns along each row (rank component) of A and of B^T. (Per-row groups were
// 0.2-0.3% worse in perplexity on stories260K, docs/accuracy.md.)
inline constexpr int kFactorGroupSize = 64;

struct LowRankFactors {
  std::shared_ptr<const Matrix> a;   // [R, in]
  std::shared_ptr<const Matrix> bt;  // [R, out]
  int rank() const { return a ? a->rows() : 0; }
};

class LowRankAdapter {
 public:
  // `layers[i][m]` may have null factors (module not adapted). Validates shapes
  // against `config` and that every adapted module has the same rank.
  static absl::StatusOr<std::shared_ptr<const LowRankAdapter>> Create(
      std::string name, const ModelConfig& config,
      std::vector<std::array<LowRankFactors, kNumModules>> layers);

  const std::string& name() const { return name_; }
  int max_rank() const { return max_rank_; }
  int num_layers() const { return static_cast<int>(layers_.size()); }
  const LowRankFactors& factors(int layer, Module m) const {
    return layers_[layer][static_cast<int>(m)];
  }
  // Bytes of all factors as stored.
  size_t bytes() const;
  // Bytes in memory: the factors plus the kernels' copies of them (the int8 B
  // side's rank-interleaved codes, on AVX-512 CPUs). What a memory tier holds.
  size_t resident_bytes() const;
  // Bytes read per decoded token at rank r (all adapted modules): A as stored, and
  // B's kernel copy where the B side reads one (else B as stored).
  size_t BytesPerToken(int r) const;

 private:
  LowRankAdapter() = default;
  std::string name_;
  int max_rank_ = 0;
  std::vector<std::array<LowRankFactors, kNumModules>> layers_;
};

// A run of consecutive activation rows [begin, end) that use one adapter at one rank.
struct LowRankSegment {
  int begin = 0, end = 0;
  const LowRankAdapter* adapter = nullptr;
  int rank = 0;
};

// Scratch reused across calls.
struct LowRankScratch {
  std::vector<float> u;  // [rows][max rank]
  std::vector<QuantizedActivations> qx;  // per run: its input rows in int8
  MatMulScratch mm;
};

// For every segment s: y[t] += Bt[:r]^T (A[:r] x[t]) for t in [s.begin, s.end),
// where A, Bt are the factors of (layer, module) of s.adapter at rank s.rank.
// Segments with no adapter, rank 0 or no factors for the module are skipped.
// One parallel region for all A products and one for all B products, whatever the
// mix of adapters and ranks (no padding to a common rank).
void ApplyLowRank(const std::vector<LowRankSegment>& segments, int layer, Module module,
                  const float* x, int ldx, float* y, int ldy, ThreadPool* pool,
                  LowRankScratch* scratch);

// y[t] += Bt[:r]^T (A[:r] x[t]) for t in [0, rows) with explicit factors (calibration).
void ApplyLowRankFactors(const LowRankFactors& f, int rank, int rows, const float* x, int ldx,
                         float* y, int ldy, ThreadPool* pool, LowRankScratch* scratch);

}  // namespace eora
