// Adapter files: PEFT LoRA directories that other tools read, plus our metadata.
//
// Layout of an adapter directory (docs/formats.md, "Adapter directory"):
//   adapter_config.json         PEFT config: peft_type "LORA", r, lora_alpha = r,
//                               target_modules, base_model_name_or_path, ...
//   adapter_model.safetensors   base_model.model.model.layers.{i}.{self_attn|mlp}.
//                               {q,k,v,o,gate,up,down}_proj.lora_{A,B}.weight
//                               A [r, in], B [out, r] (F32 or F16, dequantized values)
//   eora_adapter.json           our metadata (AdapterMetadata below)
//   eora_factors.safetensors    (quantized adapters only) packed factor codes the
//                               engine serves directly
// Writers are atomic: everything is written into a temporary sibling directory,
// fsynced, then renamed into place, so a reader never sees a half-written adapter.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/lowrank.h"
#include "engine/model_config.h"

namespace eora {

// One point of the rank -> quality profile: held-out loss at a truncated rank.
struct RankQuality {
  int rank = 0;
  double nll = 0;   // mean negative log-likelihood (nats/token) on held-out text
  double ppl = 0;   // exp(nll)
};

struct AdapterMetadata {
  int format_version = 1;
  std::string method;          // "eora", "svd", "act-s", "slim", "caldera", ...
  int rank = 0;                // stored rank R
  int factor_bits = 16;        // 16 (float) or 4 / 3 (quantized factors)
  std::string base_model;      // identifier of the base model the adapter fits
  std::string base_fingerprint;  // hash of the base model's shapes (+ weights when known)
  std::string compressed_base;   // identifier/hash of the compressed base it compensates
  std::string calibration_hash;  // sha256 of the calibration tokens
  int calibration_seqs = 0;
  int calibration_seq_len = 0;
  std::vector<RankQuality> profile;  // increasing ranks, ending at `rank`
  double fit_seconds = 0;
  std::map<std::string, std::string> extra;  // free-form
};

// Fingerprint of a model's architecture (dims, layers, vocab): adapters are
// checked against it before use.
std::string ArchitectureFingerprint(const ModelConfig& config);

// Writes `adapter` to `dir` atomically (fails if `dir` exists and !overwrite).
absl::Status WriteAdapterDir(const std::string& dir, const LowRankAdapter& adapter,
                             const AdapterMetadata& meta, bool overwrite = false);

// Reads an adapter directory and validates it against `config` (module names,
// shapes, rank, dtype). `name` becomes the adapter's name. Errors name the file
// and tensor; FAILED_PRECONDITION when the adapter was made for another model.
absl::StatusOr<std::shared_ptr<const LowRankAdapter>> LoadAdapterDir(const std::string& dir,
                                                                     const ModelConfig& config,
                                                                     const std::string& name,
                                                                     AdapterMetadata* meta = nullptr);

// Adapter ids (the names of an adapter store's directories, STORE/<id>/) are
// plain names: [A-Za-z0-9._-], 1..max_length characters, not "." or "..", so no
// id reaches a path outside the store. INVALID_ARGUMENT naming `field` otherwise.
absl::Status ValidateAdapterId(const std::string& id, const char* field, size_t max_length = 128);

// Reads only the metadata (cheap; for listings).
absl::StatusOr<AdapterMetadata> ReadAdapterMetadata(const std::string& dir);

}  // namespace eora
