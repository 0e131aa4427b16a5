// Paged key/value cache for many sequences.
//
// Memory is one pool of fixed-size blocks (kBlockTokens positions each, all layers,
// keys and values, F32 or F16). A sequence owns a list of blocks (its block table) that
// grows as tokens are appended; freeing a sequence returns its blocks to the pool.
// This lets a server admit sequences by free blocks and report cache usage.
//
// Threading contract: not thread-safe; owned by the thread that runs forward steps.
// Attention may read blocks from several threads while no one mutates the cache.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model_config.h"

namespace eora {

class KvCache;

// Element type of the cache. F16 halves its memory: keys and values are rounded
// to the nearest F16 when stored, and attention converts each block back to F32.
enum class KvDType { kF32, kF16 };
// "f32" / "f16".
const char* KvDTypeName(KvDType t);
// Parses "f32" / "f16"; INVALID_ARGUMENT naming the accepted values otherwise.
absl::StatusOr<KvDType> ParseKvDType(std::string_view name);

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
  KvCache(const ModelConfig& config, int64_t max_tokens, KvDType dtype = KvDType::kF32);

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

  KvDType dtype() const { return dtype_; }

  // Stores the key and value (kv_dim elements each) of reserved position `pos`
  // in `layer`, converted to the cache's type. Within a block, element c of slot
  // i sits at [c * kBlockTokens + i] (dim-major, so that attention works on a
  // block's positions with full-width vector operations).
  void Store(const KvSequence& seq, int layer, int pos, const float* key, const float* value);
  // Reads them back as floats (tests, debugging).
  void Load(const KvSequence& seq, int layer, int pos, float* key, float* value) const;

  // Keys / values of block `b` of `seq` in `layer` as F32, in the layout above
  // (kv_dim rows of kBlockTokens floats). An F32 cache returns its own storage;
  // an F16 cache converts the block's floats [begin, begin + count) (default: all
  // BlockFloats()) into the same positions of `scratch` and returns `scratch`
  // (only that range is valid then).
  const float* BlockKeys(const KvSequence& seq, int layer, int b, float* scratch = nullptr, size_t begin = 0,
                         size_t count = SIZE_MAX) const {
    return Block(seq, layer, b, 0, scratch, begin, count);
  }
  const float* BlockValues(const KvSequence& seq, int layer, int b, float* scratch = nullptr, size_t begin = 0,
                           size_t count = SIZE_MAX) const {
    return Block(seq, layer, b, 1, scratch, begin, count);
  }
  size_t BlockFloats() const { return static_cast<size_t>(kBlockTokens) * kv_dim_; }
  // An F16 cache's own storage of those blocks (same layout, F16 bits).
  const uint16_t* BlockKeysF16(const KvSequence& seq, int layer, int b) const {
    return f16_.data() + Offset(seq.blocks_[b], layer, 0, 0);
  }
  const uint16_t* BlockValuesF16(const KvSequence& seq, int layer, int b) const {
    return f16_.data() + Offset(seq.blocks_[b], layer, 1, 0);
  }

  int64_t total_blocks() const { return num_blocks_; }
  int64_t free_blocks() const { return static_cast<int64_t>(free_.size()); }
  int64_t capacity_tokens() const { return num_blocks_ * kBlockTokens; }
  size_t bytes() const { return f32_.size() * sizeof(float) + f16_.size() * sizeof(uint16_t); }
  // Bytes of one position (all layers, key and value).
  size_t BytesPerToken() const { return BytesPerToken(n_layers_, kv_dim_, dtype_); }
  static size_t BytesPerToken(int n_layers, int kv_dim, KvDType dtype) {
    return static_cast<size_t>(n_layers) * 2 * kv_dim * (dtype == KvDType::kF16 ? 2 : 4);
  }

 private:
  size_t Offset(int32_t block, int layer, int kind, int slot) const {
    return ((((static_cast<size_t>(block) * n_layers_ + layer) * 2 + kind) * kBlockTokens + slot) *
            kv_dim_);
  }
  const float* Block(const KvSequence& seq, int layer, int b, int kind, float* scratch, size_t begin,
                     size_t count) const;

  const int n_layers_;
  const int kv_dim_;
  const int64_t num_blocks_;
  const KvDType dtype_;
  int next_id_ = 0;
  std::vector<float> f32_;     // F32 caches
  std::vector<uint16_t> f16_;  // F16 caches (IEEE half bits)
  std::vector<int32_t> free_;
};

}  // namespace eora
