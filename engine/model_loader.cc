// Model loading (GGUF, Hugging Face safetensors) and Hugging Face checkpoint export.
//
// Both loaders reduce a file's tensor to a TensorView (dtype, row-major shape, bytes)
// and build engine matrices from it with the same shape checks, so every error names
// the file, the tensor and both shapes.
#include "engine/model_loader.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <regex>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "engine/gguf.h"
#include "engine/json_file.h"
#include "engine/safetensors.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

namespace eora {
namespace {

namespace fs = std::filesystem;

// A tensor in a file, reduced to what the engine needs. `shape` is row-major
// (slowest-varying first). `data` may be unaligned.
struct TensorView {
  std::string file;
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  std::string note;  // extra text for shape errors (e.g. the GGUF ne order)
};

std::string ShapeStr(const std::vector<int64_t>& s) {
  return absl::StrCat("[", absl::StrJoin(s, ", "), "]");
}

absl::Status ShapeError(const TensorView& t, const std::vector<int64_t>& want) {
  return absl::InvalidArgumentError(absl::StrCat(t.file, ": tensor '", t.name, "' has shape ",
                                                 ShapeStr(t.shape), t.note, ", expected ",
                                                 ShapeStr(want)));
}

// A [rows x cols] matrix from `t`, stored in the file's dtype or converted per `options`.
absl::StatusOr<std::shared_ptr<const Matrix>> MatrixFromTensor(const TensorView& t, int rows,
                                                               int cols,
                                                               const LoadOptions& options) {
  if (t.shape != std::vector<int64_t>{rows, cols}) return ShapeError(t, {rows, cols});
  std::unique_ptr<Matrix> m = MakeDenseMatrix(t.dtype, rows, cols, t.data);  // aligned copy
  if (options.convert_dense && options.dense_dtype != t.dtype) {
    const std::vector<float> f = m->Dequantize();
    m = MakeDenseMatrixFromF32(options.dense_dtype, rows, cols, f.data());
  }
  return std::shared_ptr<const Matrix>(std::move(m));
}

// A float vector of `n` elements (norm weights) from a 1-D tensor.
absl::StatusOr<std::vector<float>> VectorFromTensor(const TensorView& t, int n) {
  if (t.shape != std::vector<int64_t>{n}) return ShapeError(t, {n});
  const size_t bytes = static_cast<size_t>(n) * DTypeSize(t.dtype);
  std::vector<uint32_t> aligned((bytes + 3) / 4);
  std::memcpy(aligned.data(), t.data, bytes);
  std::vector<float> out(n);
  ConvertToF32(t.dtype, aligned.data(), out.data(), n);
  return out;
}

absl::Status CheckDim(const std::string& file, const std::string& key, int64_t v,
                      int64_t max = 1 << 24) {
  if (v <= 0 || v > max)
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": ", key, " = ", v, " is out of range (1..", max, ")"));
  return absl::OkStatus();
}

// Finishes a config: head_dim default and consistency checks shared by both formats.
absl::Status CheckConfig(const std::string& file, ModelConfig& c) {
  RETURN_IF_ERROR(CheckDim(file, "hidden size", c.dim));
  RETURN_IF_ERROR(CheckDim(file, "layer count", c.n_layers, 1 << 16));
  RETURN_IF_ERROR(CheckDim(file, "head count", c.n_heads, 1 << 16));
  RETURN_IF_ERROR(CheckDim(file, "kv head count", c.n_kv_heads, 1 << 16));
  RETURN_IF_ERROR(CheckDim(file, "ffn size", c.ffn_dim));
  RETURN_IF_ERROR(CheckDim(file, "vocab size", c.vocab_size, 1 << 26));
  RETURN_IF_ERROR(CheckDim(file, "context length", c.max_seq_len, 1 << 30));
  if (c.head_dim == 0) {
    if (c.dim % c.n_heads != 0)
      return absl::InvalidArgumentError(absl::StrCat(
          file, ": hidden size ", c.dim, " is not a multiple of the head count ", c.n_heads));
    c.head_dim = c.dim / c.n_heads;
  }
  RETURN_IF_ERROR(CheckDim(file, "head dim", c.head_dim, 1 << 16));
  if (c.head_dim % 2 != 0)
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": head dim ", c.head_dim, " is odd (RoPE needs pairs)"));
  if (c.n_heads % c.n_kv_heads != 0)
    return absl::InvalidArgumentError(absl::StrCat(file, ": head count ", c.n_heads,
                                                   " is not a multiple of the kv head count ",
                                                   c.n_kv_heads));
  if (static_cast<int64_t>(c.n_heads) * c.head_dim > (1 << 24))
    return absl::InvalidArgumentError(absl::StrCat(file, ": q dimension is too large"));
  if (!(c.norm_eps > 0.f) || !(c.rope_theta > 0.f))
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": norm epsilon and rope theta must be positive"));
  return absl::OkStatus();
}

// Loads the per-layer and global tensors through `get` (name in the file's convention).
struct TensorNames {
  std::string embedding, output_norm, output;
  std::function<std::string(int layer, Module m)> linear;
  std::function<std::string(int layer)> attn_norm, ffn_norm;
};

absl::Status LoadLayers(const ModelConfig& c, const TensorNames& names,
                        const std::function<absl::StatusOr<TensorView>(const std::string&)>& get,
                        const LoadOptions& options, ModelWeights* w) {
  const int shapes[kNumModules][2] = {{c.q_dim(), c.dim}, {c.kv_dim(), c.dim}, {c.kv_dim(), c.dim},
                                      {c.dim, c.q_dim()}, {c.ffn_dim, c.dim},  {c.ffn_dim, c.dim},
                                      {c.dim, c.ffn_dim}};
  w->layers.resize(c.n_layers);
  for (int i = 0; i < c.n_layers; ++i) {
    LayerWeights& l = w->layers[i];
    for (int m = 0; m < kNumModules; ++m) {
      ASSIGN_OR_RETURN(TensorView t, get(names.linear(i, static_cast<Module>(m))));
      ASSIGN_OR_RETURN(l.linear[m], MatrixFromTensor(t, shapes[m][0], shapes[m][1], options));
    }
    ASSIGN_OR_RETURN(TensorView an, get(names.attn_norm(i)));
    ASSIGN_OR_RETURN(l.attn_norm, VectorFromTensor(an, c.dim));
    ASSIGN_OR_RETURN(TensorView fn, get(names.ffn_norm(i)));
    ASSIGN_OR_RETURN(l.ffn_norm, VectorFromTensor(fn, c.dim));
  }
  ASSIGN_OR_RETURN(TensorView on, get(names.output_norm));
  ASSIGN_OR_RETURN(w->output_norm, VectorFromTensor(on, c.dim));
  return absl::OkStatus();
}

// ---- GGUF ------------------------------------------------------------------------

absl::StatusOr<TensorView> GgufView(const GgufFile& f, const std::string& name) {
  ASSIGN_OR_RETURN(const GgufTensorInfo* t, f.GetTensor(name));
  TensorView v;
  v.file = f.path();
  v.name = name;
  ASSIGN_OR_RETURN(v.dtype, f.TensorDType(*t));
  for (auto it = t->dims.rbegin(); it != t->dims.rend(); ++it)
    v.shape.push_back(static_cast<int64_t>(*it));  // fits: checked at Open
  v.data = t->data;
  v.note = absl::StrCat(" (ggml ne ", t->DimsString(), ")");
  return v;
}

// Optional integer metadata; `def` when absent.
absl::StatusOr<int64_t> GgufIntOr(const GgufFile& f, const std::string& key, int64_t def) {
  if (!f.HasKey(key)) return def;
  return f.GetInt(key);
}
absl::StatusOr<double> GgufFloatOr(const GgufFile& f, const std::string& key, double def) {
  if (!f.HasKey(key)) return def;
  return f.GetFloat(key);
}
absl::StatusOr<int> GgufRequiredInt(const GgufFile& f, const std::string& key) {
  ASSIGN_OR_RETURN(int64_t v, f.GetInt(key));
  RETURN_IF_ERROR(CheckDim(f.path(), key, v, std::numeric_limits<int>::max()));
  return static_cast<int>(v);
}

// A token id from metadata: -1 (or the uint32 sentinel 0xFFFFFFFF) means "none".
absl::StatusOr<int> GgufTokenId(const GgufFile& f, const std::string& key, int def, int n_vocab) {
  if (!f.HasKey(key)) return def;
  ASSIGN_OR_RETURN(int64_t v, f.GetInt(key));
  if (v == -1 || v == 0xFFFFFFFFll) return -1;
  if (v < 0 || v >= n_vocab)
    return absl::InvalidArgumentError(absl::StrCat(
        f.path(), ": ", key, " = ", v, " is outside the vocabulary of ", n_vocab, " tokens"));
  return static_cast<int>(v);
}

absl::StatusOr<std::shared_ptr<const Tokenizer>> GgufTokenizer(const GgufFile& f) {
  if (!f.HasKey("tokenizer.ggml.tokens")) return std::shared_ptr<const Tokenizer>();
  if (f.HasKey("tokenizer.ggml.model")) {
    ASSIGN_OR_RETURN(std::string model, f.GetString("tokenizer.ggml.model"));
    if (model != "llama")
      return absl::UnimplementedError(
          absl::StrCat(f.path(), ": tokenizer.ggml.model '", model,
                       "' is not supported (only SentencePiece-style 'llama' vocabularies)"));
  }
  SpmVocab vocab;
  ASSIGN_OR_RETURN(vocab.pieces, f.GetStringArray("tokenizer.ggml.tokens"));
  const size_t n = vocab.pieces.size();
  if (f.HasKey("tokenizer.ggml.scores")) {
    ASSIGN_OR_RETURN(vocab.scores, f.GetFloatArray("tokenizer.ggml.scores"));
    if (vocab.scores.size() != n)
      return absl::InvalidArgumentError(absl::StrCat(f.path(), ": tokenizer.ggml.scores has ",
                                                     vocab.scores.size(), " entries but there are ",
                                                     n, " tokens"));
  }
  if (f.HasKey("tokenizer.ggml.token_type")) {
    ASSIGN_OR_RETURN(std::vector<int64_t> types, f.GetIntArray("tokenizer.ggml.token_type"));
    if (types.size() != n)
      return absl::InvalidArgumentError(absl::StrCat(f.path(), ": tokenizer.ggml.token_type has ",
                                                     types.size(), " entries but there are ", n,
                                                     " tokens"));
    vocab.types.reserve(n);
    for (int64_t t : types) {
      if (t < 0 || t > 1000)
        return absl::InvalidArgumentError(
            absl::StrCat(f.path(), ": tokenizer.ggml.token_type has invalid value ", t));
      vocab.types.push_back(static_cast<int>(t));
    }
  }
  const int nv = static_cast<int>(n);
  ASSIGN_OR_RETURN(vocab.bos_id, GgufTokenId(f, "tokenizer.ggml.bos_token_id", 1, nv));
  ASSIGN_OR_RETURN(vocab.eos_id, GgufTokenId(f, "tokenizer.ggml.eos_token_id", 2, nv));
  ASSIGN_OR_RETURN(vocab.unk_id, GgufTokenId(f, "tokenizer.ggml.unknown_token_id", 0, nv));
  if (f.HasKey("tokenizer.ggml.add_space_prefix")) {
    ASSIGN_OR_RETURN(vocab.add_space_prefix, f.GetBool("tokenizer.ggml.add_space_prefix"));
  }
  auto tok = MakeSpmTokenizer(vocab);
  if (!tok.ok())
    return absl::Status(tok.status().code(),
                        absl::StrCat(f.path(), ": tokenizer: ", tok.status().message()));
  return std::shared_ptr<const Tokenizer>(std::move(tok).value());
}

absl::StatusOr<ModelWeights> LoadGguf(const std::string& path, const LoadOptions& options) {
  ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> f, GgufFile::Open(path));
  std::string arch = "llama";
  if (f->HasKey("general.architecture")) {
    ASSIGN_OR_RETURN(arch, f->GetString("general.architecture"));
  }
  if (arch != "llama")
    return absl::UnimplementedError(
        absl::StrCat(path, ": general.architecture '", arch, "' is not supported (only 'llama')"));
  const std::string p = arch + ".";

  ModelWeights w;
  w.source = path;
  ModelConfig& c = w.config;
  c.architecture = "llama";
  c.rope_style = RopeStyle::kInterleaved;
  ASSIGN_OR_RETURN(c.dim, GgufRequiredInt(*f, p + "embedding_length"));
  ASSIGN_OR_RETURN(c.n_layers, GgufRequiredInt(*f, p + "block_count"));
  ASSIGN_OR_RETURN(c.n_heads, GgufRequiredInt(*f, p + "attention.head_count"));
  ASSIGN_OR_RETURN(c.ffn_dim, GgufRequiredInt(*f, p + "feed_forward_length"));
  ASSIGN_OR_RETURN(int64_t kv, GgufIntOr(*f, p + "attention.head_count_kv", c.n_heads));
  RETURN_IF_ERROR(CheckDim(path, p + "attention.head_count_kv", kv, 1 << 16));
  c.n_kv_heads = static_cast<int>(kv);
  ASSIGN_OR_RETURN(int64_t ctx, GgufIntOr(*f, p + "context_length", c.max_seq_len));
  RETURN_IF_ERROR(CheckDim(path, p + "context_length", ctx, 1 << 30));
  c.max_seq_len = static_cast<int>(ctx);
  ASSIGN_OR_RETURN(double eps, GgufFloatOr(*f, p + "attention.layer_norm_rms_epsilon", 1e-5));
  c.norm_eps = static_cast<float>(eps);
  ASSIGN_OR_RETURN(double theta, GgufFloatOr(*f, p + "rope.freq_base", 10000.0));
  c.rope_theta = static_cast<float>(theta);
  if (f->HasKey(p + "attention.key_length")) {
    ASSIGN_OR_RETURN(c.head_dim, GgufRequiredInt(*f, p + "attention.key_length"));
    if (f->HasKey(p + "attention.value_length")) {
      ASSIGN_OR_RETURN(int vl, GgufRequiredInt(*f, p + "attention.value_length"));
      if (vl != c.head_dim)
        return absl::UnimplementedError(absl::StrCat(path, ": key length ", c.head_dim,
                                                     " != value length ", vl, " is not supported"));
    }
  }
  ASSIGN_OR_RETURN(int64_t experts, GgufIntOr(*f, p + "expert_count", 0));
  if (experts > 0)
    return absl::UnimplementedError(absl::StrCat(path, ": mixture-of-experts models (", p,
                                                 "expert_count = ", experts,
                                                 ") are not supported"));
  if (f->HasKey(p + "rope.scaling.type")) {
    ASSIGN_OR_RETURN(std::string st, f->GetString(p + "rope.scaling.type"));
    if (st != "none")
      return absl::UnimplementedError(
          absl::StrCat(path, ": ", p, "rope.scaling.type '", st, "' is not supported"));
  }

  ASSIGN_OR_RETURN(TensorView emb, GgufView(*f, "token_embd.weight"));
  if (emb.shape.size() != 2)
    return absl::InvalidArgumentError(absl::StrCat(path, ": tensor 'token_embd.weight' has shape ",
                                                   ShapeStr(emb.shape), emb.note,
                                                   ", expected 2 dimensions"));
  if (emb.shape[0] <= 0 || emb.shape[0] > (1 << 26))
    return absl::InvalidArgumentError(absl::StrCat(path, ": tensor 'token_embd.weight' has ",
                                                   emb.shape[0], " rows (vocabulary size)"));
  c.vocab_size = static_cast<int>(emb.shape[0]);
  if (f->HasKey("tokenizer.ggml.tokens")) {
    const GgufValue* tv = f->FindKey("tokenizer.ggml.tokens");
    if (tv->type == GgufType::kArray && tv->count != static_cast<uint64_t>(c.vocab_size))
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tokenizer.ggml.tokens has ", tv->count,
                       " tokens but token_embd.weight has ", c.vocab_size, " rows"));
  }
  RETURN_IF_ERROR(CheckConfig(path, c));
  if (f->HasKey(p + "rope.dimension_count")) {
    ASSIGN_OR_RETURN(int64_t rd, f->GetInt(p + "rope.dimension_count"));
    if (rd != c.head_dim)
      return absl::UnimplementedError(
          absl::StrCat(path, ": ", p, "rope.dimension_count ", rd, " != head dim ", c.head_dim,
                       " (partial rotary embeddings are not supported)"));
  }

  ASSIGN_OR_RETURN(w.token_embedding, MatrixFromTensor(emb, c.vocab_size, c.dim, options));
  // The output projection is tied when absent, or when it is a byte-identical copy of the
  // embedding (as in stories260K), so that it is stored once.
  const GgufTensorInfo* out = f->FindTensor("output.weight");
  const GgufTensorInfo* embt = f->FindTensor("token_embd.weight");
  if (out == nullptr || (out->ggml_type == embt->ggml_type && out->dims == embt->dims &&
                         std::memcmp(out->data, embt->data, out->byte_size) == 0)) {
    w.output = w.token_embedding;
    c.tied_embeddings = true;
  } else {
    ASSIGN_OR_RETURN(TensorView ov, GgufView(*f, "output.weight"));
    ASSIGN_OR_RETURN(w.output, MatrixFromTensor(ov, c.vocab_size, c.dim, options));
  }

  static const char* const kGgufModule[kNumModules] = {
      "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"};
  TensorNames names;
  names.output_norm = "output_norm.weight";
  names.linear = [](int i, Module m) {
    return absl::StrCat("blk.", i, ".", kGgufModule[static_cast<int>(m)], ".weight");
  };
  names.attn_norm = [](int i) { return absl::StrCat("blk.", i, ".attn_norm.weight"); };
  names.ffn_norm = [](int i) { return absl::StrCat("blk.", i, ".ffn_norm.weight"); };
  RETURN_IF_ERROR(LoadLayers(
      c, names, [&](const std::string& n) { return GgufView(*f, n); }, options, &w));
  ASSIGN_OR_RETURN(w.tokenizer, GgufTokenizer(*f));
  RETURN_IF_ERROR(w.Validate());
  return w;
}

// ---- Hugging Face ------------------------------------------------------------------

// Reads an integer field within the range of int; `def` (if given) when absent or null.
absl::StatusOr<int> JsonInt(const nlohmann::json& j, const std::string& file,
                            const std::string& key, std::optional<int> def = std::nullopt) {
  auto it = j.find(key);
  if (def && (it == j.end() || it->is_null())) return *def;
  ASSIGN_OR_RETURN(int64_t v, JsonField<int64_t>(j, key, file));
  RETURN_IF_ERROR(
      CheckDim(file, absl::StrCat("\"", key, "\""), v, std::numeric_limits<int>::max()));
  return static_cast<int>(v);
}

absl::Status CheckHfArchitecture(const nlohmann::json& j, const std::string& file) {
  static const std::set<std::string> kArchs = {"LlamaForCausalLM", "MistralForCausalLM"};
  static const std::set<std::string> kTypes = {"llama", "mistral"};
  auto mt = j.find("model_type");
  if (mt != j.end() && !mt->is_null()) {
    if (!mt->is_string() || !kTypes.count(mt->get<std::string>()))
      return absl::UnimplementedError(
          absl::StrCat(file, ": model_type ", mt->dump(),
                       " is not supported (expected \"llama\" or \"mistral\")"));
  }
  auto ar = j.find("architectures");
  if (ar != j.end() && !ar->is_null()) {
    if (!ar->is_array())
      return absl::InvalidArgumentError(absl::StrCat(file, ": \"architectures\" is not an array"));
    for (const auto& a : *ar)
      if (a.is_string() && kArchs.count(a.get<std::string>())) return absl::OkStatus();
    return absl::UnimplementedError(absl::StrCat(file, ": architectures ", ar->dump(),
                                                 " are not supported (expected LlamaForCausalLM "
                                                 "or MistralForCausalLM)"));
  }
  if (mt == j.end() || mt->is_null())
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": neither \"architectures\" nor \"model_type\" is set"));
  return absl::OkStatus();
}

absl::StatusOr<TensorView> HfView(const SafetensorsCheckpoint& ck, const std::string& name) {
  ASSIGN_OR_RETURN(SafetensorsCheckpoint::Entry e, ck.Get(name));
  TensorView v;
  v.file = e.file->path();
  v.name = name;
  ASSIGN_OR_RETURN(v.dtype, e.file->TensorDType(*e.tensor));
  v.shape = e.tensor->shape;
  v.data = e.tensor->data;
  return v;
}

absl::StatusOr<ModelWeights> LoadHf(const std::string& dir, const LoadOptions& options) {
  const std::string config_path = (fs::path(dir) / "config.json").string();
  ASSIGN_OR_RETURN(nlohmann::json j, ReadJsonObjectFile(config_path));
  RETURN_IF_ERROR(CheckHfArchitecture(j, config_path));
  // Features the engine's Llama forward pass does not implement.
  if (auto it = j.find("rope_scaling"); it != j.end() && !it->is_null())
    return absl::UnimplementedError(
        absl::StrCat(config_path, ": rope_scaling ", it->dump(), " is not supported"));
  if (auto it = j.find("hidden_act"); it != j.end() && !it->is_null() && *it != "silu")
    return absl::UnimplementedError(
        absl::StrCat(config_path, ": hidden_act ", it->dump(), " is not supported (only silu)"));
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    ASSIGN_OR_RETURN(bool b, JsonField<bool>(j, key, config_path, false));
    if (b)
      return absl::UnimplementedError(
          absl::StrCat(config_path, ": ", key, " = true is not supported"));
  }

  ModelWeights w;
  w.source = dir;
  ModelConfig& c = w.config;
  c.architecture = "llama";
  c.rope_style = RopeStyle::kHalf;
  ASSIGN_OR_RETURN(c.dim, JsonInt(j, config_path, "hidden_size"));
  ASSIGN_OR_RETURN(c.n_layers, JsonInt(j, config_path, "num_hidden_layers"));
  ASSIGN_OR_RETURN(c.n_heads, JsonInt(j, config_path, "num_attention_heads"));
  ASSIGN_OR_RETURN(c.n_kv_heads, JsonInt(j, config_path, "num_key_value_heads", c.n_heads));
  ASSIGN_OR_RETURN(c.ffn_dim, JsonInt(j, config_path, "intermediate_size"));
  ASSIGN_OR_RETURN(c.vocab_size, JsonInt(j, config_path, "vocab_size"));
  ASSIGN_OR_RETURN(c.max_seq_len, JsonInt(j, config_path, "max_position_embeddings", 2048));
  ASSIGN_OR_RETURN(c.head_dim, JsonInt(j, config_path, "head_dim", 0));
  ASSIGN_OR_RETURN(double eps, JsonField<double>(j, "rms_norm_eps", config_path, 1e-6));
  c.norm_eps = static_cast<float>(eps);
  ASSIGN_OR_RETURN(double theta, JsonField<double>(j, "rope_theta", config_path, 10000.0));
  c.rope_theta = static_cast<float>(theta);
  ASSIGN_OR_RETURN(bool tie, JsonField<bool>(j, "tie_word_embeddings", config_path, false));
  RETURN_IF_ERROR(CheckConfig(config_path, c));

  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> ck, SafetensorsCheckpoint::Open(dir));
  ASSIGN_OR_RETURN(TensorView emb, HfView(*ck, "model.embed_tokens.weight"));
  ASSIGN_OR_RETURN(w.token_embedding, MatrixFromTensor(emb, c.vocab_size, c.dim, options));
  if (tie || !ck->Find("lm_head.weight")) {
    w.output = w.token_embedding;
    c.tied_embeddings = true;
  } else {
    ASSIGN_OR_RETURN(TensorView ov, HfView(*ck, "lm_head.weight"));
    ASSIGN_OR_RETURN(w.output, MatrixFromTensor(ov, c.vocab_size, c.dim, options));
  }
  TensorNames names;
  names.output_norm = "model.norm.weight";
  names.linear = [](int i, Module m) {
    return absl::StrCat("model.layers.", i, ".", ModuleParent(m), ".", ModuleName(m), ".weight");
  };
  names.attn_norm = [](int i) {
    return absl::StrCat("model.layers.", i, ".input_layernorm.weight");
  };
  names.ffn_norm = [](int i) {
    return absl::StrCat("model.layers.", i, ".post_attention_layernorm.weight");
  };
  RETURN_IF_ERROR(LoadLayers(
      c, names, [&](const std::string& n) { return HfView(*ck, n); }, options, &w));

  const std::string tok_path = (fs::path(dir) / "tokenizer.json").string();
  std::error_code ec;
  if (fs::exists(tok_path, ec)) {
    ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, LoadHfTokenizer(tok_path));
    w.tokenizer = std::move(tok);
  }
  RETURN_IF_ERROR(w.Validate());
  return w;
}

// ---- Writing -----------------------------------------------------------------------

// One tensor of the exported checkpoint and how to produce its rows.
struct ExportTensor {
  std::string name;
  const Matrix* matrix = nullptr;           // 2-D
  const std::vector<float>* vec = nullptr;  // 1-D
  int unpermute_heads = 0;  // > 0: q/k rows un-permuted from interleaved to rotate-half
  int head_dim = 0;
  size_t Elements() const {
    return matrix ? static_cast<size_t>(matrix->rows()) * matrix->cols() : vec->size();
  }
};

// The source row (in llama.cpp's interleaved order) of row `r` in rotate-half order.
// llama.cpp's converter maps HF row (head, s, j) -- s in {0, 1}, j < head_dim/2, row
// head*head_dim + s*head_dim/2 + j -- to GGUF row head*head_dim + 2*j + s.
int InterleavedSourceRow(int r, int head_dim) {
  const int head = r / head_dim, within = r % head_dim, half = head_dim / 2;
  const int s = within / half, jj = within % half;
  return head * head_dim + 2 * jj + s;
}

void StoreAs(DType dtype, const float* src, size_t n, uint8_t* dst) {
  if (dtype == DType::kF32) {
    std::memcpy(dst, src, n * 4);
    return;
  }
  for (size_t k = 0; k < n; ++k) {
    const uint16_t h = dtype == DType::kF16 ? F32ToF16(src[k]) : F32ToBF16(src[k]);
    std::memcpy(dst + 2 * k, &h, 2);
  }
}

std::vector<uint8_t> ExportBytes(const ExportTensor& t, DType dtype) {
  const int es = DTypeSize(dtype);
  std::vector<uint8_t> out(t.Elements() * es);
  if (t.vec) {
    StoreAs(dtype, t.vec->data(), t.vec->size(), out.data());
    return out;
  }
  const int rows = t.matrix->rows(), cols = t.matrix->cols();
  std::vector<float> row(cols);
  for (int r = 0; r < rows; ++r) {
    const int src = t.unpermute_heads > 0 ? InterleavedSourceRow(r, t.head_dim) : r;
    t.matrix->DequantizeRow(src, row.data());
    StoreAs(dtype, row.data(), cols, out.data() + static_cast<size_t>(r) * cols * es);
  }
  return out;
}

const char* TorchDTypeName(DType t) {
  switch (t) {
    case DType::kF32:
      return "float32";
    case DType::kF16:
      return "float16";
    case DType::kBF16:
      return "bfloat16";
  }
  return "float32";
}

// tokenizer.json for the exported checkpoint: converted from the SPM vocabulary of a
// GGUF-loaded tokenizer, or copied (with tokenizer_config.json) from a Hugging Face
// source directory. Models whose tokenizer has neither origin get no tokenizer.json.
absl::Status WriteTokenizer(const ModelWeights& weights, const std::string& dir) {
  if (!weights.tokenizer) return absl::OkStatus();
  const std::string out = (fs::path(dir) / "tokenizer.json").string();
  if (const SpmVocab* vocab = weights.tokenizer->spm_vocab()) {
    auto json = SpmVocabToHfTokenizerJson(*vocab);
    if (!json.ok())
      return absl::Status(
          json.status().code(),
          absl::StrCat(out, ": cannot convert the tokenizer: ", json.status().message()));
    return WriteFileAtomic(out, *json);
  }
  std::error_code ec;
  if (!fs::is_directory(weights.source, ec)) return absl::OkStatus();
  for (const char* name : {"tokenizer.json", "tokenizer_config.json"}) {
    const fs::path src = fs::path(weights.source) / name;
    if (!fs::exists(src, ec)) continue;
    if (fs::equivalent(src, fs::path(dir) / name, ec)) continue;  // exporting in place
    std::ifstream in(src, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    if (!in.good() && !in.eof())
      return absl::InternalError(absl::StrCat(src.string(), ": cannot read"));
    RETURN_IF_ERROR(WriteFileAtomic((fs::path(dir) / name).string(), ss.str()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelWeights> LoadModel(const std::string& path, const LoadOptions& options) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st))
    return absl::NotFoundError(absl::StrCat(path, ": no such file or directory"));
  if (fs::is_directory(st)) return LoadHf(path, options);
  const fs::path p(path);
  if (p.filename() == "config.json") {
    const std::string dir = p.has_parent_path() ? p.parent_path().string() : std::string(".");
    return LoadHf(dir, options);
  }
  char magic[4] = {0, 0, 0, 0};
  {
    std::ifstream in(path, std::ios::binary);
    if (!in) return absl::InvalidArgumentError(absl::StrCat(path, ": cannot open"));
    in.read(magic, 4);
  }
  if (std::memcmp(magic, "GGUF", 4) == 0 || p.extension() == ".gguf")
    return LoadGguf(path, options);
  return absl::InvalidArgumentError(absl::StrCat(
      path,
      ": not a GGUF file (no \"GGUF\" magic) and not a Hugging Face checkpoint directory or "
      "config.json"));
}

absl::Status WriteHfCheckpoint(const ModelWeights& weights, const std::string& dir, DType dtype,
                               int shards) {
  RETURN_IF_ERROR(weights.Validate());
  const ModelConfig& c = weights.config;
  if (c.head_dim % 2 != 0)
    return absl::InvalidArgumentError(absl::StrCat(weights.source, ": head dim ", c.head_dim,
                                                   " is odd; cannot convert the RoPE layout"));
  const bool unpermute = c.rope_style == RopeStyle::kInterleaved;
  const bool tied = c.tied_embeddings || weights.output == weights.token_embedding;

  std::vector<ExportTensor> tensors;
  tensors.push_back({"model.embed_tokens.weight", weights.token_embedding.get()});
  for (int i = 0; i < c.n_layers; ++i) {
    const LayerWeights& l = weights.layers[i];
    const std::string pre = absl::StrCat("model.layers.", i, ".");
    tensors.push_back({pre + "input_layernorm.weight", nullptr, &l.attn_norm});
    for (int m = 0; m < kNumModules; ++m) {
      const Module mod = static_cast<Module>(m);
      ExportTensor t{absl::StrCat(pre, ModuleParent(mod), ".", ModuleName(mod), ".weight"),
                     l.linear[m].get()};
      if (unpermute && (mod == Module::kQ || mod == Module::kK)) {
        t.unpermute_heads = mod == Module::kQ ? c.n_heads : c.n_kv_heads;
        t.head_dim = c.head_dim;
      }
      tensors.push_back(std::move(t));
    }
    tensors.push_back({pre + "post_attention_layernorm.weight", nullptr, &l.ffn_norm});
  }
  tensors.push_back({"model.norm.weight", nullptr, &weights.output_norm});
  if (!tied) tensors.push_back({"lm_head.weight", weights.output.get()});

  if (shards < 1 || static_cast<size_t>(shards) > tensors.size())
    return absl::InvalidArgumentError(absl::StrCat(
        dir, ": shard count ", shards, " must be between 1 and the tensor count ", tensors.size()));
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    return absl::InternalError(absl::StrCat(dir, ": cannot create directory: ", ec.message()));

  // Assign tensors to shards in order, balancing bytes, every shard non-empty.
  const int es = DTypeSize(dtype);
  uint64_t total = 0;
  for (const auto& t : tensors) total += t.Elements() * es;
  std::vector<int> shard_of(tensors.size());
  {
    int s = 0, in_shard = 0;
    uint64_t cum = 0;
    const size_t n = tensors.size();
    for (size_t k = 0; k < n; ++k) {
      const uint64_t sz = tensors[k].Elements() * es;
      if (s < shards - 1 && in_shard > 0 &&
          (static_cast<long double>(cum) + sz / 2.0L >=
               static_cast<long double>(total) * (s + 1) / shards ||
           n - k == static_cast<size_t>(shards - 1 - s))) {
        ++s;
        in_shard = 0;
      }
      shard_of[k] = s;
      ++in_shard;
      cum += sz;
    }
  }

  const std::map<std::string, std::string> st_meta = {{"format", "pt"}};
  std::map<std::string, std::string> weight_map;
  std::set<std::string> written;
  for (int s = 0; s < shards; ++s) {
    const std::string file = shards == 1
                                 ? std::string("model.safetensors")
                                 : absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards);
    std::vector<std::vector<uint8_t>> bufs;
    std::vector<SafetensorsWriteTensor> out;
    for (size_t k = 0; k < tensors.size(); ++k) {
      if (shard_of[k] != s) continue;
      const ExportTensor& t = tensors[k];
      bufs.push_back(ExportBytes(t, dtype));
      SafetensorsWriteTensor w;
      w.name = t.name;
      w.dtype = dtype;
      if (t.matrix)
        w.shape = {t.matrix->rows(), t.matrix->cols()};
      else
        w.shape = {static_cast<int64_t>(t.vec->size())};
      w.data = bufs.back().data();
      w.byte_size = bufs.back().size();
      out.push_back(std::move(w));
      weight_map[t.name] = file;
    }
    RETURN_IF_ERROR(WriteSafetensors((fs::path(dir) / file).string(), out, st_meta));
    written.insert(file);
  }

  nlohmann::ordered_json cfg;
  cfg["architectures"] = {"LlamaForCausalLM"};
  cfg["model_type"] = "llama";
  cfg["hidden_size"] = c.dim;
  cfg["intermediate_size"] = c.ffn_dim;
  cfg["num_hidden_layers"] = c.n_layers;
  cfg["num_attention_heads"] = c.n_heads;
  cfg["num_key_value_heads"] = c.n_kv_heads;
  cfg["head_dim"] = c.head_dim;
  cfg["vocab_size"] = c.vocab_size;
  cfg["max_position_embeddings"] = c.max_seq_len;
  cfg["rms_norm_eps"] = static_cast<double>(c.norm_eps);
  cfg["rope_theta"] = static_cast<double>(c.rope_theta);
  cfg["rope_scaling"] = nullptr;
  cfg["hidden_act"] = "silu";
  cfg["attention_bias"] = false;
  cfg["mlp_bias"] = false;
  cfg["tie_word_embeddings"] = tied;
  cfg["torch_dtype"] = TorchDTypeName(dtype);
  if (weights.tokenizer) {
    const int bos = weights.tokenizer->bos_id(), eos = weights.tokenizer->eos_id();
    cfg["bos_token_id"] = bos >= 0 ? nlohmann::ordered_json(bos) : nlohmann::ordered_json();
    cfg["eos_token_id"] = eos >= 0 ? nlohmann::ordered_json(eos) : nlohmann::ordered_json();
  }
  RETURN_IF_ERROR(WriteFileAtomic((fs::path(dir) / "config.json").string(), cfg.dump(2) + "\n"));

  RETURN_IF_ERROR(WriteTokenizer(weights, dir));

  const std::string index_path = (fs::path(dir) / "model.safetensors.index.json").string();
  if (shards > 1) RETURN_IF_ERROR(WriteSafetensorsIndex(index_path, weight_map, total));

  // Remove weight files of an earlier export into the same directory that would shadow or
  // confuse the new one (a stale index or single file, shards of another count).
  static const std::regex kShardName(R"(model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?)");
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (!std::regex_match(name, kShardName) || written.count(name)) continue;
    if (shards > 1 && name == "model.safetensors.index.json") continue;
    std::error_code rm_ec;
    fs::remove(entry.path(), rm_ec);
  }
  return absl::OkStatus();
}

}  // namespace eora
