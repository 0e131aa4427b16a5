// Whole-model compression and adapter fitting on top of the per-layer algorithms
// (compressor/algorithms.h) and the engine's layer-wise calibration mode
// (Model::Embed / ForwardLayer / Logits).
//
// Both pipelines are sequential: calibration sequences are embedded once, then the
// decoder layers are processed in order and the hidden states that feed layer i+1
// are the outputs of the already compressed (or compensated) layer i. Inside a
// layer the modules are handled in four groups in forward order, one forward pass
// each, so that each group's inputs come from the already processed groups
// ("true sequential"): {q, k, v} (shared input), {o}, {gate, up} (shared), {down}.
// Only the statistics of the group being processed are held: one layer's worth at
// most.
//
// Threading contract: the functions run on the given ThreadPool (and OpenBLAS's
// threads); they are not reentrant on one pool.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "compressor/algorithms.h"
#include "compressor/calibration.h"
#include "engine/adapter_io.h"
#include "engine/lowrank.h"
#include "engine/model.h"
#include "engine/model_weights.h"
#include "engine/thread_pool.h"

namespace eora::compress {

// Progress of a long run: called after each layer with (layer done, 1-based; layers;
// seconds elapsed; estimated seconds left).
using ProgressFn = std::function<void(int layer, int n_layers, double elapsed, double eta)>;

// Cancellation: when `cancel` (in the options below; not owned, may be null) reads
// true, a pipeline stops at the next layer boundary (and FitAdapter also before
// the quality profile) and returns CANCELLED; nothing it produced is returned.

// ---- Base compression ----------------------------------------------------------

enum class BaseMethod { kRtn, kGptq, kSparseGpt, kWanda, kSlimQuant, kCaldera };
// "rtn", "gptq", "sparsegpt", "wanda", "slim-quant", "caldera".
const char* BaseMethodName(BaseMethod m);
bool ParseBaseMethod(const std::string& name, BaseMethod* out);

struct CompressOptions {
  BaseMethod method = BaseMethod::kGptq;
  // Quantization bits (2, 3, 4). For sparsegpt / wanda: 0 keeps the kept 2:4 values
  // as F16; 2/3/4 quantizes them too. CALDERA: the bits of Q.
  int bits = 4;
  int group_size = 0;       // 0 = per output channel, else a multiple of 32
  bool symmetric = false;
  bool act_order = false;
  double damp = 0.01;
  // Token embedding (and the output projection when tied): 0 keeps it as loaded;
  // 2/3/4 quantizes it (RTN, asymmetric, groups of embedding_group_size) before
  // calibration, so the compressed model is what calibration runs through.
  int embedding_bits = 0;
  int embedding_group_size = 32;
  // CALDERA: rank and bits of L, R; iterations.
  int caldera_rank = 16;
  int caldera_bits_lr = 4;
  int caldera_outer_iters = 20;
  int caldera_inner_iters = 3;
  // As FitOptions::sequential_groups.
  bool sequential_groups = true;
  const std::atomic<bool>* cancel = nullptr;  // see "Cancellation" above
};

struct CompressResult {
  std::shared_ptr<ModelWeights> weights;  // the compressed model (shares norms/tokenizer)
  // CALDERA only: L, R as an adapter (A = R [r, in], Bt = L^T [r, out]).
  std::shared_ptr<const LowRankAdapter> caldera_adapter;
  std::map<std::string, std::string> metadata;  // method, bits, calibration hash, ...
  double seconds = 0;
};

// `calib` may be null for methods that need no calibration (rtn, slim-quant).
absl::StatusOr<CompressResult> CompressModel(const ModelWeights& fp, const CalibrationSet* calib,
                                             const CompressOptions& options, ThreadPool* pool,
                                             const ProgressFn& progress = nullptr);

// ---- Adapter fitting ---------------------------------------------------------------

enum class AdapterMethod { kEora, kSvd, kActS, kSlim };
// "eora", "svd", "act-s", "slim".
const char* AdapterMethodName(AdapterMethod m);
bool ParseAdapterMethod(const std::string& name, AdapterMethod* out);

struct FitOptions {
  AdapterMethod method = AdapterMethod::kEora;
  int rank = 16;
  // 32: F32 factors; 16: F16 factors; 4 / 3: quantized factors (QuantizeFactors,
  // per row, asymmetric, with the input statistics).
  int factor_bits = 16;
  // Ranks of the rank -> quality profile (held-out loss with the stored factors
  // truncated to each); empty: 1, 2, 4, ... below `rank`, and `rank`.
  std::vector<int> profile_ranks;
  std::string base_model;       // identifier recorded in the metadata
  std::string compressed_base;  // content hash of the compressed base
  // Collect each group's inputs after the previous groups of the same layer are
  // compensated (4 extra forward passes per layer); false: one pass per layer
  // collects all four inputs from the uncompensated layer.
  bool sequential_groups = true;
  const std::atomic<bool>* cancel = nullptr;  // see "Cancellation" above
};

struct FitResult {
  std::shared_ptr<const LowRankAdapter> adapter;
  AdapterMetadata meta;  // complete: method, ranks, profile, calibration, timing
  double fit_seconds = 0;      // the sequential fit itself (forward passes + solves)
  double solve_seconds = 0;    // of which: the per-layer math (statistics, factorizations)
  double profile_seconds = 0;  // the held-out evaluations
};

// Fits `options.method` factors so that compressed + B A approximates `fp`, layer
// by layer on the stream of the compensated model (see the file comment).
absl::StatusOr<FitResult> FitAdapter(const ModelWeights& fp, const ModelWeights& compressed,
                                     const CalibrationSet& calib, const FitOptions& options,
                                     ThreadPool* pool, const ProgressFn& progress = nullptr);

// ---- Evaluation ----------------------------------------------------------------------

// Mean negative log-likelihood (nats/token) of `seqs` (each starting with BOS; every
// token after the first is predicted) under `weights` with `adapter` at `rank`.
absl::StatusOr<double> SequenceNll(std::shared_ptr<const ModelWeights> weights,
                                   const std::vector<std::vector<int>>& seqs,
                                   const LowRankAdapter* adapter, int rank, ThreadPool* pool);

// The profile: held-out loss at each rank (increasing, each <= adapter max rank).
absl::StatusOr<std::vector<RankQuality>> RankProfile(std::shared_ptr<const ModelWeights> weights,
                                                     const LowRankAdapter& adapter,
                                                     const std::vector<std::vector<int>>& heldout,
                                                     std::vector<int> ranks, ThreadPool* pool);

// 1, 2, 4, ... < r, then r.
std::vector<int> DefaultProfileRanks(int r);

// Bits per weight of the linear layers (codes + scales + metadata as stored) plus an
// optional adapter, over the number of linear-layer weights.
double LinearBitsPerWeight(const ModelWeights& w, const LowRankAdapter* adapter, int rank);

}  // namespace eora::compress
