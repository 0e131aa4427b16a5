#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace eora {

absl::Status SamplingParams::Validate() const {
  if (!(temperature >= 0.f) || !std::isfinite(temperature))
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be a finite number >= 0, got ", temperature));
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", top_k));
  if (!(top_p > 0.f && top_p <= 1.f))
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", top_p));
  return absl::OkStatus();
}

namespace {
typedef float ArgV __attribute__((vector_size(64)));
typedef int32_t ArgI __attribute__((vector_size(64)));
}  // namespace

// Sixteen independent running maxima (lane j sees indices = j mod 16), then the
// largest of them with the smallest index on ties: the first maximum, as a
// single scan finds it, without a dependent compare per element (a greedy step
// of a 32000-token vocabulary was ~50 us of scalar compares per sequence). NaNs
// are never greater than anything and are skipped, as in a single scan (which
// returns 0 when logits[0] is NaN, or when nothing beats logits[0]). Compiled
// for several ISAs; the loader picks one (GCC target_clones).
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
int Argmax(const float* logits, int vocab) {
  constexpr int kL = 16;
  if (vocab < 2 * kL || std::isnan(logits[0])) {
    int best = 0;
    for (int i = 1; i < vocab; ++i)
      if (logits[i] > logits[best]) best = i;
    return best;
  }
  ArgV bv = ArgV{} - INFINITY;
  ArgI bi = ArgI{} + vocab;  // none yet
  ArgI idx = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  int i = 0;
  for (; i + kL <= vocab; i += kL) {
    ArgV v;
    std::memcpy(&v, logits + i, sizeof(v));
    const ArgI gt = v > bv;
    bv = gt ? v : bv;
    bi = gt ? idx : bi;
    idx += kL;
  }
  for (int j = 0; i + j < vocab; ++j)
    if (logits[i + j] > bv[j]) {
      bv[j] = logits[i + j];
      bi[j] = i + j;
    }
  int best = 0;
  for (int j = 1; j < kL; ++j)
    if (bv[j] > bv[best] || (bv[j] == bv[best] && bi[j] < bi[best])) best = j;
  return bi[best] < vocab ? bi[best] : 0;  // all -inf: the first
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

int Sampler::Sample(const float* logits, int vocab) {
  if (params_.temperature <= 0.f) return Argmax(logits, vocab);
  cand_.resize(vocab);
  for (int i = 0; i < vocab; ++i) cand_[i] = {logits[i], i};
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  int n = vocab;
  if (params_.top_k > 0 && params_.top_k < vocab) {
    n = params_.top_k;
    std::partial_sort(cand_.begin(), cand_.begin() + n, cand_.end(), by_logit);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  // Softmax over the kept candidates at the given temperature.
  const double mx = cand_[0].first;
  std::vector<double> p(n);
  double sum = 0;
  for (int i = 0; i < n; ++i) {
    p[i] = std::exp((cand_[i].first - mx) / params_.temperature);
    sum += p[i];
  }
  for (auto& v : p) v /= sum;
  if (params_.top_p < 1.f) {
    double cum = 0;
    int keep = n;
    for (int i = 0; i < n; ++i) {
      cum += p[i];
      if (cum >= params_.top_p) {
        keep = i + 1;
        break;
      }
    }
    n = keep;
    sum = 0;
    for (int i = 0; i < n; ++i) sum += p[i];
  }
  std::uniform_real_distribution<double> dist(0.0, sum);
  double r = dist(rng_);
  for (int i = 0; i < n; ++i) {
    r -= p[i];
    if (r <= 0) return cand_[i].second;
  }
  return cand_[n - 1].second;
}

}  // namespace eora
