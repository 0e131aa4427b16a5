// The Llama-family forward pass over a batch of sequences.
//
// One call to Forward runs one step: every sequence in the batch contributes a
// chunk of new tokens (a whole prompt for prefill, one token for decode, or any
// mix), which are appended to that sequence's KV cache. All tokens of all
// sequences go through each weight matrix together (one product per matrix per
// step); attention is per sequence. Each sequence may use its own low-rank
// adapter at its own rank.
//
// Threading contract: Forward is not reentrant (it reuses scratch buffers); call
// it from one thread at a time. It parallelises internally on the ThreadPool.
#pragma once

#include <array>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "engine/kv_cache.h"
#include "engine/lowrank.h"
#include "engine/matrix.h"
#include "engine/model_weights.h"
#include "engine/thread_pool.h"

namespace eora {

// Which logits a chunk wants back.
enum class LogitsMode {
  kNone,  // no logits (e.g. a prefill chunk that is not the last one)
  kLast,  // logits of the chunk's last token
  kAll,   // logits of every token of the chunk (perplexity)
};

// One sequence's part of a step. The KvSequence must belong to the KvCache passed
// to Forward; the caller keeps both alive during the call.
struct SequenceChunk {
  KvSequence* kv = nullptr;
  std::span<const int> tokens;  // appended at position kv->length()
  const LowRankAdapter* adapter = nullptr;  // null: base model
  int rank = 0;                             // <= adapter->max_rank(); 0 with no adapter
  LogitsMode logits = LogitsMode::kLast;
};

// Receives the input of linear layers during a forward pass (calibration).
// q/k/v share one input (reported as kQ), gate/up share one (reported as kGate);
// kO and kDown are reported on their own. `x` is [rows][cols], row-major.
class LinearObserver {
 public:
  virtual ~LinearObserver() = default;
  virtual void OnLinearInput(int layer, Module module, const float* x, int rows, int cols) = 0;
};

// Low-rank factors for the seven modules of one layer (calibration overrides).
using LayerFactors = std::array<LowRankFactors, kNumModules>;

class Model {
 public:
  // `pool` is not owned and must outlive the model.
  Model(std::shared_ptr<const ModelWeights> weights, ThreadPool* pool);

  const ModelConfig& config() const { return weights_->config; }
  const ModelWeights& weights() const { return *weights_; }
  std::shared_ptr<const ModelWeights> shared_weights() const { return weights_; }
  ThreadPool* pool() const { return pool_; }

  // Runs one step over `batch`. Appends logits to `logits` (cleared first): for each
  // chunk in order, 0, 1 or len(tokens) rows of vocab_size floats per its mode.
  // Fails (INVALID_ARGUMENT / RESOURCE_EXHAUSTED / OUT_OF_RANGE) without touching
  // any cache if a token id, rank or context length is invalid or the cache is full.
  //
  // Threads: a step whose products are large splits each product across the
  // pool's threads. A step of several sequences whose products are too small to
  // repay a synchronisation per operation (small models: stories260K at batch 16
  // has ~0.1 M multiply-adds per product) is instead split by sequence into one
  // shard per thread, each running the whole step on its own sequences with no
  // synchronisation until the end (see ShardCount).
  absl::Status Forward(std::span<const SequenceChunk> batch, KvCache* cache,
                       std::vector<float>* logits);
  // Number of shards Forward would split `batch` into (1: not split).
  int ShardCount(std::span<const SequenceChunk> batch) const;

  // ---- Layer-wise mode (calibration): whole sequences, one layer at a time.
  // hidden is [sum(seq_lengths)][dim]: the sequences back to back, each starting at
  // position 0.

  // Writes the token embeddings of `tokens` into hidden [tokens.size()][dim].
  absl::Status Embed(std::span<const int> tokens, float* hidden) const;
  // Runs decoder layer `l` in place on `hidden`, with `layer_weights` instead of the
  // model's (if non-null) and adding `factors` at their full rank (if non-null).
  // The observer (optional) sees the input of every linear module. The layer's
  // keys and values go through a KV cache of type `kv_dtype`.
  absl::Status ForwardLayer(int l, const LayerWeights* layer_weights, const LayerFactors* factors,
                            std::span<const int> seq_lengths, float* hidden,
                            LinearObserver* observer, KvDType kv_dtype = KvDType::kF32);
  // Final norm and output projection: logits [rows][vocab] of hidden [rows][dim].
  void Logits(const float* hidden, int rows, float* logits);

 private:
  absl::Status Prepare(std::span<const SequenceChunk> batch, KvCache* cache);
  // Embedding, layers and logits of a prepared batch (no KvCache::Advance).
  void Compute(std::span<const SequenceChunk> batch, KvCache* cache, std::vector<float>* logits);
  absl::Status ForwardSharded(std::span<const SequenceChunk> batch, int shards, KvCache* cache,
                              std::vector<float>* logits);
  void RunLayer(int l, const LayerWeights& L, const LayerFactors* override_factors,
                int cache_layer, std::span<const SequenceChunk> batch, KvCache* cache,
                LinearObserver* observer);

  std::shared_ptr<const ModelWeights> weights_;
  // Per-shard single-thread models (created on first use by ForwardSharded).
  struct Shard {
    std::unique_ptr<ThreadPool> pool;
    std::unique_ptr<Model> model;
    std::vector<float> logits;
    size_t begin = 0, end = 0;  // chunks of the batch
  };
  std::vector<Shard> shards_;
  ThreadPool* pool_;

  // Scratch, reused across steps.
  std::vector<float> x_, xn_, q_, k_, v_, att_, tmp_, gate_, up_, rope_cos_, rope_sin_, last_, lr_u_;
  std::vector<float> rope_table_cos_, rope_table_sin_;  // [position][head_dim / 2], grown on demand
  std::vector<int> pos_, chunk_of_;
  std::vector<LowRankSegment> segments_;
  int T_ = 0;
  MatMulScratch mm_;
  LowRankScratch lr_;
};

// Whether a step of `tokens` tokens of a model of config `c` is too small to
// repay splitting each product across threads (Model::Forward then splits it by
// sequence). The server uses it to pick independent step loops for small models.
bool SmallStep(const ModelConfig& c, int64_t tokens);

// Converts [n][vocab] logits into log-probabilities of `targets` (double precision
// log-sum-exp). Helper for perplexity and tests.
double LogProb(const float* logits, int vocab, int target);

}  // namespace eora
