#include "engine/kv_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/dtype.h"

namespace eora {

const char* KvDTypeName(KvDType t) { return t == KvDType::kF16 ? "f16" : "f32"; }

absl::StatusOr<KvDType> ParseKvDType(std::string_view name) {
  if (name == "f32") return KvDType::kF32;
  if (name == "f16") return KvDType::kF16;
  return absl::InvalidArgumentError(absl::StrCat("KV cache type \"", absl::string_view(name.data(), name.size()), "\": expected f32 or f16"));
}

KvCache::KvCache(const ModelConfig& config, int64_t max_tokens, KvDType dtype)
    : n_layers_(config.n_layers),
      kv_dim_(config.kv_dim()),
      num_blocks_(std::max<int64_t>(1, (max_tokens + kBlockTokens - 1) / kBlockTokens)),
      dtype_(dtype) {
  const size_t elems = static_cast<size_t>(num_blocks_) * n_layers_ * 2 * kBlockTokens * kv_dim_;
  if (dtype_ == KvDType::kF16) {
    f16_.resize(elems);
  } else {
    f32_.resize(elems);
  }
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

void KvCache::Store(const KvSequence& seq, int layer, int pos, const float* key, const float* value) {
  const int32_t block = seq.blocks_[pos / kBlockTokens];
  const int slot = pos % kBlockTokens;
  const size_t k0 = Offset(block, layer, 0, 0) + slot, v0 = Offset(block, layer, 1, 0) + slot;
  if (dtype_ == KvDType::kF16) {
    for (int i = 0; i < kv_dim_; ++i) {
      f16_[k0 + static_cast<size_t>(i) * kBlockTokens] = F32ToF16(key[i]);
      f16_[v0 + static_cast<size_t>(i) * kBlockTokens] = F32ToF16(value[i]);
    }
  } else {
    for (int i = 0; i < kv_dim_; ++i) {
      f32_[k0 + static_cast<size_t>(i) * kBlockTokens] = key[i];
      f32_[v0 + static_cast<size_t>(i) * kBlockTokens] = value[i];
    }
  }
}

void KvCache::Load(const KvSequence& seq, int layer, int pos, float* key, float* value) const {
  const int32_t block = seq.blocks_[pos / kBlockTokens];
  const int slot = pos % kBlockTokens;
  const size_t k0 = Offset(block, layer, 0, 0) + slot, v0 = Offset(block, layer, 1, 0) + slot;
  for (int i = 0; i < kv_dim_; ++i) {
    const size_t dk = k0 + static_cast<size_t>(i) * kBlockTokens, dv = v0 + static_cast<size_t>(i) * kBlockTokens;
    key[i] = dtype_ == KvDType::kF16 ? F16ToF32(f16_[dk]) : f32_[dk];
    value[i] = dtype_ == KvDType::kF16 ? F16ToF32(f16_[dv]) : f32_[dv];
  }
}

const float* KvCache::Block(const KvSequence& seq, int layer, int b, int kind, float* scratch, size_t begin,
                           size_t count) const {
  const size_t off = Offset(seq.blocks_[b], layer, kind, 0);
  if (dtype_ == KvDType::kF32) return f32_.data() + off;
  const size_t n = BlockFloats();
  begin = std::min(begin, n);
  count = std::min(count, n - begin);
  F16ArrayToF32(f16_.data() + off + begin, scratch + begin, count);
  return scratch;
}

}  // namespace eora
