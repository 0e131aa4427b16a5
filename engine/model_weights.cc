#include "engine/model_weights.h"

#include "absl/strings/str_cat.h"

namespace eora {
namespace {
constexpr std::string_view kModuleNames[kNumModules] = {"q_proj",    "k_proj",  "v_proj", "o_proj",
                                                        "gate_proj", "up_proj", "down_proj"};
}  // namespace

const char* ModuleName(Module m) { return kModuleNames[static_cast<int>(m)].data(); }

const char* ModuleParent(Module m) {
  return static_cast<int>(m) <= static_cast<int>(Module::kO) ? "self_attn" : "mlp";
}

bool ParseModuleName(std::string_view name, Module* out) {
  for (int i = 0; i < kNumModules; ++i) {
    if (kModuleNames[i] == name) {
      *out = static_cast<Module>(i);
      return true;
    }
  }
  return false;
}

size_t ModelWeights::DecodeBytesPerToken() const {
  size_t bytes = 0;
  for (const auto& l : layers) {
    for (const auto& m : l.linear) bytes += m ? m->StorageBytes() : 0;
    bytes += (l.attn_norm.size() + l.ffn_norm.size()) * sizeof(float);
  }
  if (output) bytes += output->StorageBytes();
  if (token_embedding && token_embedding->rows() > 0)
    bytes += token_embedding->StorageBytes() / token_embedding->rows();
  bytes += output_norm.size() * sizeof(float);
  return bytes;
}

absl::Status ModelWeights::Validate() const {
  const ModelConfig& c = config;
  if (c.dim <= 0 || c.n_layers <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 || c.head_dim <= 0 ||
      c.ffn_dim <= 0 || c.vocab_size <= 0)
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid model dimensions"));
  if (c.n_heads % c.n_kv_heads != 0)
    return absl::InvalidArgumentError(absl::StrCat(source, ": n_heads ", c.n_heads,
                                                    " is not a multiple of n_kv_heads ",
                                                    c.n_kv_heads));
  auto check = [&](const Matrix* m, int rows, int cols, const std::string& name) -> absl::Status {
    if (m == nullptr) return absl::InvalidArgumentError(absl::StrCat(source, ": missing ", name));
    if (m->rows() != rows || m->cols() != cols)
      return absl::InvalidArgumentError(absl::StrCat(source, ": tensor ", name, " has shape [",
                                                     m->rows(), ", ", m->cols(), "], expected [",
                                                     rows, ", ", cols, "]"));
    return absl::OkStatus();
  };
  absl::Status s = check(token_embedding.get(), c.vocab_size, c.dim, "token embedding");
  if (!s.ok()) return s;
  s = check(output.get(), c.vocab_size, c.dim, "output");
  if (!s.ok()) return s;
  if (output_norm.size() != static_cast<size_t>(c.dim))
    return absl::InvalidArgumentError(absl::StrCat(source, ": output norm has wrong size"));
  if (layers.size() != static_cast<size_t>(c.n_layers))
    return absl::InvalidArgumentError(absl::StrCat(source, ": expected ", c.n_layers,
                                                   " layers, have ", layers.size()));
  const int shapes[kNumModules][2] = {{c.q_dim(), c.dim},  {c.kv_dim(), c.dim}, {c.kv_dim(), c.dim},
                                      {c.dim, c.q_dim()},  {c.ffn_dim, c.dim},  {c.ffn_dim, c.dim},
                                      {c.dim, c.ffn_dim}};
  for (int i = 0; i < c.n_layers; ++i) {
    const auto& l = layers[i];
    for (int m = 0; m < kNumModules; ++m) {
      s = check(l.linear[m].get(), shapes[m][0], shapes[m][1],
                absl::StrCat("layers.", i, ".", ModuleParent(static_cast<Module>(m)), ".",
                             ModuleName(static_cast<Module>(m))));
      if (!s.ok()) return s;
    }
    if (l.attn_norm.size() != static_cast<size_t>(c.dim) ||
        l.ffn_norm.size() != static_cast<size_t>(c.dim))
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": layer ", i, " norm weights have wrong size"));
  }
  return absl::OkStatus();
}

}  // namespace eora
