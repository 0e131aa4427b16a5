// Compressed base models: a self-contained, versioned directory holding every file
// needed to serve a (quantized and/or 2:4-pruned) model. docs/formats.md,
// "Compressed model directory".
//
//   eora_model.json       {"format": "eora-compressed-model", "version": 1,
//                          "config": {...ModelConfig...},
//                          "tensors": {name: {"format", "rows", "cols", "bits", "group_size"}},
//                          "tokenizer": {"type": "spm", pieces, scores, ...} |
//                                       {"type": "hf", "file": "tokenizer.json"} | null,
//                          "content_sha256": ..., "metadata": {free-form strings}}
//   weights.safetensors   packed codes (U8), F16 scales/mins, 2:4 metadata (U8),
//                         dense tensors (F32/F16/BF16), norms (F32)
//   tokenizer.json        (Hugging Face tokenizers only) a copy of the source's file
//
// Tensor names: token_embedding, output (absent when the output projection is the
// token embedding), output_norm, layers.{i}.attn_norm, layers.{i}.ffn_norm,
// layers.{i}.{self_attn|mlp}.{q,k,v,o,gate,up,down}_proj; each matrix is stored
// under its name plus suffixes that depend on its format:
//   f32 / f16 / bf16    .weight [rows, cols]
//   quant               .qweight U8 [rows, blocks * QuantBlockBytes(bits)],
//                       .scales F16 [rows, groups], .mins F16 [rows, groups]
//   sparse24            .values F16 [rows, kept_blocks * 32], .meta U8 [rows, kept_blocks * 8]
//   sparse24-quant      .qweight/.scales/.mins of the kept slots (a quant matrix of
//                       [rows, kept_blocks * 32]) and .meta
// Packed layouts are those of engine/quant_matrix.h and engine/sparse_matrix.h
// (kPackedFormatVersion); a file records the version it was written with.
//
// Writes are atomic (temporary sibling directory, fsync, rename). Loading validates
// everything and returns errors that name the file and tensor.
#pragma once

#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model_weights.h"

namespace eora {

inline constexpr char kCompressedModelFormat[] = "eora-compressed-model";
inline constexpr int kCompressedModelVersion = 1;

// What LoadCompressedModel reports besides the weights.
struct CompressedModelInfo {
  int version = 0;
  std::string content_sha256;                   // hash of the stored tensors
  std::map<std::string, std::string> metadata;  // as written
  uint64_t bytes = 0;                           // all files of the directory
};

// Writes `weights` (any mix of engine matrix formats) to `dir`. The tokenizer is
// stored as its SentencePiece vocabulary (GGUF / compressed-dir sources) or as a
// copy of the source's tokenizer.json (Hugging Face sources); FAILED_PRECONDITION
// if a tokenizer exists but neither applies. Fails if `dir` exists and !overwrite.
absl::Status WriteCompressedModel(const std::string& dir, const ModelWeights& weights,
                                  const std::map<std::string, std::string>& metadata,
                                  bool overwrite = false);

// Loads a directory written by WriteCompressedModel. `dir` may also name its
// eora_model.json.
absl::StatusOr<ModelWeights> LoadCompressedModel(const std::string& dir,
                                                 CompressedModelInfo* info = nullptr);

// True if `path` is a directory holding eora_model.json (or is that file).
bool IsCompressedModelDir(const std::string& path);

}  // namespace eora
