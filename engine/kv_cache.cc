#include "engine/kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace eora {

KvCache::KvCache(const ModelConfig& config, int64_t max_tokens)
    : n_layers_(config.n_layers),
      kv_dim_(config.kv_dim()),
      num_blocks_(std::max<int64_t>(1, (max_tokens + kBlockTokens - 1) / kBlockTokens)) {
  data_.resize(static_cast<size_t>(num_blocks_) * n_layers_ * 2 * kBlockTokens * kv_dim_);
  free_.reserve(num_blocks_);
  for (int64_t b = num_blocks_ - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
}

KvSequence KvCache::NewSequence() {
  KvSequence s;
  s.id_ = next_id_++;
  return s;
}

absl::Status KvCache::Reserve(KvSequence* seq, int n) {
  const int need_pos = seq->length_ + n;
  const int need_blocks = (need_pos + kBlockTokens - 1) / kBlockTokens;
  const int extra = need_blocks - static_cast<int>(seq->blocks_.size());
  if (extra <= 0) return absl::OkStatus();
  if (extra > static_cast<int>(free_.size()))
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache full: need ", extra, " more blocks of ", kBlockTokens,
                     " tokens, ", free_.size(), " of ", num_blocks_, " free"));
  for (int i = 0; i < extra; ++i) {
    seq->blocks_.push_back(free_.back());
    free_.pop_back();
  }
  seq->reserved_ = static_cast<int>(seq->blocks_.size()) * kBlockTokens;
  return absl::OkStatus();
}

void KvCache::Advance(KvSequence* seq, int n) {
  seq->length_ = std::min(seq->length_ + n, seq->reserved_);
}

void KvCache::Truncate(KvSequence* seq, int length) {
  seq->length_ = std::clamp(length, 0, seq->length_);
  const int keep = (seq->length_ + kBlockTokens - 1) / kBlockTokens;
  while (static_cast<int>(seq->blocks_.size()) > keep) {
    free_.push_back(seq->blocks_.back());
    seq->blocks_.pop_back();
  }
  seq->reserved_ = static_cast<int>(seq->blocks_.size()) * kBlockTokens;
}

void KvCache::Free(KvSequence* seq) { Truncate(seq, 0); }

float* KvCache::Key(const KvSequence& seq, int layer, int pos) {
  return data_.data() + Offset(seq.blocks_[pos / kBlockTokens], layer, 0, 0) + pos % kBlockTokens;
}
float* KvCache::Value(const KvSequence& seq, int layer, int pos) {
  return data_.data() + Offset(seq.blocks_[pos / kBlockTokens], layer, 1, 0) + pos % kBlockTokens;
}
const float* KvCache::Key(const KvSequence& seq, int layer, int pos) const {
  return data_.data() + Offset(seq.blocks_[pos / kBlockTokens], layer, 0, 0) + pos % kBlockTokens;
}
const float* KvCache::Value(const KvSequence& seq, int layer, int pos) const {
  return data_.data() + Offset(seq.blocks_[pos / kBlockTokens], layer, 1, 0) + pos % kBlockTokens;
}

}  // namespace eora
