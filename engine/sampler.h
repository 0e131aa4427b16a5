// Token sampling from logits: greedy, temperature, top-k, top-p, with a seed.
//
// Threading contract: a Sampler holds one sequence's random state; use one per
// sequence, from one thread at a time.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "absl/status/status.h"

namespace eora {

struct SamplingParams {
  float temperature = 0.f;  // 0: greedy (argmax; ties -> lowest id)
  int top_k = 0;            // 0: no top-k cut
  float top_p = 1.f;        // 1: no nucleus cut
  uint64_t seed = 0;

  // INVALID_ARGUMENT naming the field when a value is out of range.
  absl::Status Validate() const;
};

// Index of the largest logit (the first one on ties; NaNs are skipped unless
// logits[0] is one). What greedy sampling returns.
int Argmax(const float* logits, int vocab);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // Picks a token from `vocab` logits. Deterministic for a given seed and logits.
  int Sample(const float* logits, int vocab);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int>> cand_;
};

}  // namespace eora
