// Perplexity of a model on a token stream, under two windowing protocols.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/kv_cache.h"
#include "engine/model.h"

namespace eora {

enum class PerplexityProtocol {
  // Tokens (no BOS) cut into consecutive non-overlapping windows of ctx-1 tokens
  // (the last one may be shorter); each window is prefixed with BOS and every token
  // after BOS is scored.
  kFull,
  // llama.cpp's llama-perplexity: [BOS] + tokens cut into floor(n/ctx) chunks of
  // ctx tokens, each chunk's first token replaced by BOS, only the second half of
  // each chunk scored (logits ctx/2 .. ctx-2 predicting the next token).
  kLlamaCpp,
};

struct PerplexityOptions {
  int ctx = 256;
  PerplexityProtocol protocol = PerplexityProtocol::kFull;
  const LowRankAdapter* adapter = nullptr;
  int rank = 0;
  // Windows evaluated together in one forward step (bounded by logits memory).
  int max_batch_windows = 16;
  KvDType kv_dtype = KvDType::kF32;
  // Called after each batch with (windows done, windows total).
  std::function<void(int, int)> progress;
};

struct PerplexityResult {
  int64_t tokens = 0;  // scored tokens
  int windows = 0;
  double nll = 0;      // mean negative log-likelihood, nats
  double ppl = 0;      // exp(nll)
};

// `tokens` is the tokenized text without BOS.
absl::StatusOr<PerplexityResult> ComputePerplexity(Model& model, const std::vector<int>& tokens,
                                                   int bos_id, const PerplexityOptions& options);

}  // namespace eora
