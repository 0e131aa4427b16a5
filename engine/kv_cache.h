// Paged key/value cache for many sequences.
//
// Memory is one pool of fixed-size blocks (kBlockTokens positions each, all layers,
// keys and values, F32). A sequence owns a list of blocks (its block table) that
// grows as tokens are appended; freeing a sequence returns its blocks to the pool.
// This lets a server admit sequences by free blocks and report cache usage.
//
// Threading contract: not thread-safe; owned by the thread that runs forward steps.
// Attention may read blocks from several threads while no one mutates the cache.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/model_config.h"

namespace eora {

class KvCache;

// A sequence's view of the cache: its block table and length. Create through
// KvCache::NewSequence; release with KvCache::Free (or the destructor of the
// sequence handle's owner calling Free).
class KvSequence {
 public:
  int length() const { return length_; }  // positions already stored
  int id() const { return id_; }

 private:
  friend class KvCache;
  int id_ = -1;
  int length_ = 0;
  int reserved_ = 0;  // positions covered by blocks
  std::vector<int32_t> blocks_;
};

class KvCache {
 public:
  static constexpr int kBlockTokens = 16;

  // Room for `max_tokens` positions in total across all sequences.
  KvCache(const ModelConfig& config, int64_t max_tokens);

  KvSequence NewSequence();
  // Makes room for `n` more positions in `seq` (allocating blocks). On failure
  // (RESOURCE_EXHAUSTED) nothing changes.
  absl::Status Reserve(KvSequence* seq, int n);
  // Marks `n` reserved positions as written (after a forward step).
  void Advance(KvSequence* seq, int n);
  // Drops the last positions so that the sequence has `length` positions.
  void Truncate(KvSequence* seq, int length);
  // Returns all blocks of `seq` to the pool; the sequence becomes empty.
  void Free(KvSequence* seq);

  // The key / value of `pos` in `layer`: its kv_dim elements are kBlockTokens
  // floats apart (stored dim-major within a block, so that attention works on a
  // block's positions with full-width vector operations).
  float* Key(const KvSequence& seq, int layer, int pos);
  float* Value(const KvSequence& seq, int layer, int pos);
  const float* Key(const KvSequence& seq, int layer, int pos) const;
  const float* Value(const KvSequence& seq, int layer, int pos) const;

  // Base of the keys / values of block `b` of `seq` in `layer`: kv_dim rows of
  // kBlockTokens floats (element c of position b * kBlockTokens + i at
  // [c * kBlockTokens + i]).
  const float* BlockKeys(const KvSequence& seq, int layer, int b) const {
    return data_.data() + Offset(seq.blocks_[b], layer, 0, 0);
  }
  const float* BlockValues(const KvSequence& seq, int layer, int b) const {
    return data_.data() + Offset(seq.blocks_[b], layer, 1, 0);
  }

  int64_t total_blocks() const { return num_blocks_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t capacity_tokens() const { return num_blocks_ * kBlockTokens; }
  size_t bytes() const { return data_.size() * sizeof(float); }

 private:
  size_t Offset(int32_t block, int layer, int kind, int slot) const {
    return ((((static_cast<size_t>(block) * n_layers_ + layer) * 2 + kind) * kBlockTokens + slot) *
            kv_dim_);
  }

  const int n_layers_;
  const int kv_dim_;
  const int64_t num_blocks_;
  int next_id_ = 0;
  std::vector<float> data_;
  std::vector<int32_t> free_;
};

}  // namespace eora
