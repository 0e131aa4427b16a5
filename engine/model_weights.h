// The weights of a Llama-family model in engine form, whatever file they came from.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/matrix.h"
#include "engine/model_config.h"
#include "engine/tokenizer.h"

namespace eora {

// The seven linear modules of a decoder layer, in a fixed order. Names are the
// Hugging Face / PEFT module names.
enum class Module { kQ = 0, kK, kV, kO, kGate, kUp, kDown };
inline constexpr int kNumModules = 7;
const char* ModuleName(Module m);     // "q_proj", ..., "down_proj"
const char* ModuleParent(Module m);     // "self_attn" or "mlp"
// Parses "q_proj" etc.; returns false if unknown.
bool ParseModuleName(std::string_view name, Module* out);

struct LayerWeights {
  std::vector<float> attn_norm;  // [dim]
  std::vector<float> ffn_norm;   // [dim]
  // Indexed by Module. Shapes: q [q_dim, dim], k/v [kv_dim, dim], o [dim, q_dim],
  // gate/up [ffn_dim, dim], down [dim, ffn_dim].
  std::array<std::shared_ptr<const Matrix>, kNumModules> linear;
  const Matrix& w(Module m) const { return *linear[static_cast<int>(m)]; }
};

struct ModelWeights {
  ModelConfig config;
  std::shared_ptr<const Matrix> token_embedding;  // [vocab, dim]; rows looked up
  std::vector<float> output_norm;                 // [dim]
  std::shared_ptr<const Matrix> output;           // [vocab, dim]; == token_embedding if tied
  std::vector<LayerWeights> layers;
  std::shared_ptr<const Tokenizer> tokenizer;     // may be null for synthetic models
  std::string source;                             // file or directory it was loaded from

  // Bytes of weights read per decoded token (all linear layers + output, plus
  // one embedding row and the norms).
  size_t DecodeBytesPerToken() const;
  // Checks that every tensor is present with the shape the config implies.
  absl::Status Validate() const;
};

}  // namespace eora
