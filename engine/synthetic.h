// Models with real shapes and random weights (from a seed), for speed measurements
// at sizes no real checkpoint here has. The numbers they give measure speed, not
// quality.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/lowrank.h"
#include "engine/matrix.h"
#include "engine/model_weights.h"

namespace eora {

// Shapes of well-known models: "stories260k", "stories110m", "llama2-7b", "llama3-8b".
absl::StatusOr<ModelConfig> SyntheticConfig(const std::string& name);

// How linear weights are stored.
struct WeightStorage {
  int bits = 32;        // 32 (F32), 16 (F16), or 2/3/4 (group-wise quantized)
  int group_size = 64;  // for quantized storage
  bool sparse24 = false;
};

// Random weights (uniform, std 0.02; norms 1) with the given storage for every
// linear layer and the output projection. Generated one matrix at a time, so peak
// memory is the stored model plus one float matrix.
absl::StatusOr<std::shared_ptr<ModelWeights>> MakeSyntheticModel(const ModelConfig& config,
                                                                 const WeightStorage& storage,
                                                                 uint64_t seed);

// Converts an existing model's linear layers (and output) to `storage`, by RTN for
// quantized storage. Embedding and norms are shared.
absl::StatusOr<std::shared_ptr<ModelWeights>> ConvertModelStorage(const ModelWeights& weights,
                                                                  const WeightStorage& storage);

// A random adapter of rank `rank` on all seven modules of every layer; factors
// stored as `storage` (bits 32, 16, 4, 3; quantized factors in groups of
// storage.group_size along each row of A and of B^T, as eora-compressor writes them
// with kFactorGroupSize; 0 = one group per row).
absl::StatusOr<std::shared_ptr<const LowRankAdapter>> MakeRandomAdapter(
    const std::string& name, const ModelConfig& config, int rank, const WeightStorage& storage,
    uint64_t seed, float scale = 0.01f);

// Builds a Matrix in `storage` from float weights [rows][cols].
absl::StatusOr<std::unique_ptr<Matrix>> MakeMatrix(const float* w, int rows, int cols,
                                                   const WeightStorage& storage);

}  // namespace eora
