// Batched text generation: many sequences advance together, one forward step at a
// time. New sequences join between steps and finished ones leave (continuous
// batching); prompts are prefilled in chunks under a per-step token budget, mixed
// with the decode tokens of running sequences.
//
// Threading contract: a Generator is driven from one thread (the step thread).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/sampler.h"

namespace eora {

struct GenerationRequest {
  std::vector<int> prompt;  // token ids (include BOS if wanted); may not be empty
  SamplingParams sampling;
  int max_new_tokens = 128;
  std::vector<int> stop_token_ids;  // in addition to EOS when stop_at_eos
  bool stop_at_eos = true;
  std::shared_ptr<const LowRankAdapter> adapter;  // null: base model
  int rank = 0;  // 0 with an adapter: its max rank
};

enum class FinishReason { kNone, kLength, kStop, kContext, kCancelled, kError };
const char* FinishReasonName(FinishReason r);  // "length", "stop", ...

struct GenerationResult {
  std::vector<int> tokens;  // generated ids (the stop token is not included)
  FinishReason finish = FinishReason::kNone;
  int rank_used = 0;
  absl::Status status;  // set when finish == kError
};

struct GeneratorOptions {
  int max_step_tokens = 512;   // token budget per forward step (decode + prefill)
  int max_running = 64;        // sequences in one step
  int64_t kv_cache_tokens = 0; // 0: max_running * model context
  KvDType kv_dtype = KvDType::kF32;
};

class Generator {
 public:
  Generator(Model* model, const GeneratorOptions& options);

  // Adds a request; returns its id. Validation errors come back immediately;
  // RESOURCE_EXHAUSTED if prompt + max_new_tokens could never fit the KV cache.
  // A request starts (is admitted) only when the KV blocks for its whole prompt and
  // max_new_tokens are free of other admitted requests' reservations, so a running
  // sequence never runs out of cache; the others wait in arrival order.
  absl::StatusOr<int64_t> Add(GenerationRequest request);
  // Runs one step. `on_token(id, token)` is called for each sampled token and
  // `on_finish(id, result)` once per finished request. Returns false when idle.
  absl::StatusOr<bool> Step(const std::function<void(int64_t, int)>& on_token,
                            const std::function<void(int64_t, GenerationResult)>& on_finish);
  // Cancels a request (queued or running); its result has finish = kCancelled.
  void Cancel(int64_t id);
  int running() const;  // admitted sequences
  int waiting() const;  // queued, not yet admitted
  const KvCache& cache() const { return cache_; }

 private:
  struct Seq {
    int64_t id;
    GenerationRequest req;
    KvSequence kv;
    Sampler sampler;
    size_t prefilled = 0;       // prompt tokens already in the cache
    std::vector<int> out;
    int next_token = -1;        // sampled but not yet fed
    bool cancelled = false;
    bool admitted = false;      // holds a KV reservation of need_blocks
    int64_t need_blocks = 0;    // blocks for prompt + max_new_tokens
  };
  void Finish(Seq* s, FinishReason r, absl::Status status,
              const std::function<void(int64_t, GenerationResult)>& on_finish);

  Model* model_;
  GeneratorOptions options_;
  KvCache cache_;
  int64_t next_id_ = 0;
  int64_t committed_blocks_ = 0;  // sum of need_blocks over admitted sequences
  std::vector<std::unique_ptr<Seq>> seqs_;  // in arrival order
  std::vector<float> logits_;
};

// Convenience: runs all requests to completion together.
absl::StatusOr<std::vector<GenerationResult>> GenerateAll(
    Model* model, std::vector<GenerationRequest> requests, const GeneratorOptions& options = {},
    const std::function<void(int, int)>& on_token = nullptr);

}  // namespace eora
