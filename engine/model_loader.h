// Loading models from files: GGUF (v3) and Hugging Face checkpoints.
//
// GGUF: one file; tensors F32/F16/BF16; llama.cpp tensor names (token_embd,
// blk.N.attn_q, ...); q/k stored permuted for interleaved RoPE; tokenizer from the
// tokenizer.ggml.* metadata.
// Hugging Face: a directory with config.json and model.safetensors, or sharded
// model-0000N-of-0000M.safetensors listed in model.safetensors.index.json; tensor
// names model.layers.N.self_attn.q_proj.weight etc.; rotate-half RoPE; tokenizer
// from tokenizer.json when present.
//
// Every failure returns a Status whose message names the file (and tensor, key or
// offset) that is wrong; malformed input never crashes the process.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "engine/dtype.h"
#include "engine/model_weights.h"

namespace eora {

struct LoadOptions {
  // Storage of dense weights in memory: keep the file's dtype (default) or convert.
  bool convert_dense = false;
  DType dense_dtype = DType::kF32;
};

// `path` is a .gguf file or a Hugging Face checkpoint directory (or its config.json).
absl::StatusOr<ModelWeights> LoadModel(const std::string& path, const LoadOptions& options = {});

// Writes `weights` as a Hugging Face checkpoint directory: config.json,
// model.safetensors (or `shards` > 1 files plus model.safetensors.index.json) in
// `dtype`, and tokenizer.json when the model has an SPM tokenizer. q/k are
// un-permuted so that rotate-half RoPE gives the same model. Files are written
// atomically (temporary name, fsync, rename).
absl::Status WriteHfCheckpoint(const ModelWeights& weights, const std::string& dir, DType dtype,
                               int shards = 1);

}  // namespace eora
