#include "engine/compressed_model.h"

#include <cstring>
#include <functional>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/dir_writer.h"
#include "engine/dtype.h"
#include "engine/gguf.h"
#include "engine/json_file.h"
#include "engine/quant_matrix.h"
#include "engine/safetensors.h"
#include "engine/sha256.h"
#include "engine/sparse_matrix.h"
#include "engine/status_macros.h"
#include "engine/tokenizer.h"
#include "nlohmann/json.hpp"

namespace eora {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr char kJsonFile[] = "eora_model.json";
constexpr char kWeightsFile[] = "weights.safetensors";
constexpr char kHfTokenizerFile[] = "tokenizer.json";

// ---- Tokenizer capture -----------------------------------------------------------

// What to store for the model's tokenizer: the "tokenizer" JSON entry, plus the
// contents of tokenizer.json for Hugging Face tokenizers.
absl::Status CaptureTokenizer(const ModelWeights& w, json* entry, std::string* hf_json) {
  *entry = nullptr;
  hf_json->clear();
  if (!w.tokenizer) return absl::OkStatus();
  const Tokenizer& tok = *w.tokenizer;
  const SpmVocab* vocab = tok.spm_vocab();
  if (vocab == nullptr) {
    std::error_code ec;
    if (fs::is_directory(w.source, ec)) {
      const fs::path hf = fs::path(w.source) / kHfTokenizerFile;
      if (!fs::exists(hf, ec))
        return absl::FailedPreconditionError(
            absl::StrCat("cannot store the tokenizer: ", hf.string(), " does not exist"));
      std::ifstream in(hf, std::ios::binary);
      std::ostringstream ss;
      ss << in.rdbuf();
      if (!in.good() && !in.eof())
        return absl::InternalError(absl::StrCat(hf.string(), ": cannot read"));
      *hf_json = ss.str();
      *entry = {{"type", "hf"}, {"file", kHfTokenizerFile}};
      return absl::OkStatus();
    } else {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot store the tokenizer: it is not a SentencePiece vocabulary and its source '",
          w.source, "' is not a Hugging Face directory"));
    }
  }
  json j = {{"type", "spm"},
            {"pieces", vocab->pieces},
            {"scores", vocab->scores},
            {"types", vocab->types},
            {"bos_id", vocab->bos_id},
            {"eos_id", vocab->eos_id},
            {"unk_id", vocab->unk_id},
            {"add_space_prefix", vocab->add_space_prefix}};
  *entry = std::move(j);
  return absl::OkStatus();
}

// ---- Writing tensors -------------------------------------------------------------

// The tensors of a compressed model. Bytes that need a conversion (dense matrices
// to their file dtype, quantized matrices from panels to the file's row layout) are
// made when the writer reaches the tensor (RawTensor::produce), one matrix at a
// time, so writing holds one converted matrix, not a second copy of the model.
struct Sink {
  std::vector<RawTensor> tensors;
  json entries = json::object();
  // The converted bytes of the tensor being written (valid until the next produce).
  std::vector<uint8_t> scratch;
  // The file-layout storage of the quantized matrix being written, and whose it is.
  const QuantMatrix* packed_of = nullptr;
  PackedQuant packed;

  void Add(std::string name, const char* dtype, std::vector<int64_t> shape, const void* data,
           size_t bytes) {
    tensors.push_back({std::move(name), dtype, std::move(shape), data, bytes, {}});
  }
  void AddProduced(std::string name, const char* dtype, std::vector<int64_t> shape, size_t bytes,
                   std::function<const void*()> produce) {
    tensors.push_back({std::move(name), dtype, std::move(shape), nullptr, bytes, std::move(produce)});
  }
  // The file layout of q (PackedQuant), converted once for its three tensors.
  const PackedQuant& PackedOf(const QuantMatrix* q) {
    if (packed_of != q) {
      packed = q->packed();
      packed_of = q;
    }
    return packed;
  }
  void AddPacked(const std::string& base, const QuantMatrix* q) {
    const int64_t rows = q->rows(), row_bytes = static_cast<int64_t>(q->row_bytes()), groups = q->groups();
    const size_t code_bytes = static_cast<size_t>(rows * row_bytes), scale_bytes = static_cast<size_t>(rows * groups) * 2;
    AddProduced(base + ".qweight", "U8", {rows, row_bytes}, code_bytes,
                [this, q] { return static_cast<const void*>(PackedOf(q).packed.data()); });
    AddProduced(base + ".scales", "F16", {rows, groups}, scale_bytes,
                [this, q] { return static_cast<const void*>(PackedOf(q).scale_f16.data()); });
    AddProduced(base + ".mins", "F16", {rows, groups}, scale_bytes, [this, q] {
      return static_cast<const void*>(PackedOf(q).min_f16.data());
    });
  }
};

absl::Status AddMatrix(const std::string& name, const Matrix& m, Sink* sink) {
  json e = {{"rows", m.rows()}, {"cols", m.cols()}};
  switch (m.format()) {
    case MatrixFormat::kF32:
    case MatrixFormat::kF16:
    case MatrixFormat::kBF16: {
      const MatrixFormat f = m.format();
      const char* dt = f == MatrixFormat::kF32 ? "F32" : f == MatrixFormat::kF16 ? "F16" : "BF16";
      e["format"] = f == MatrixFormat::kF32 ? "f32" : f == MatrixFormat::kF16 ? "f16" : "bf16";
      const size_t es = f == MatrixFormat::kF32 ? 4 : 2;
      if (const void* elements = m.DenseElements()) {  // already the file's bytes
        sink->Add(name + ".weight", dt, {m.rows(), m.cols()}, elements, static_cast<size_t>(m.rows()) * m.cols() * es);
        break;
      }
      const Matrix* mp = &m;
      sink->AddProduced(name + ".weight", dt, {m.rows(), m.cols()}, static_cast<size_t>(m.rows()) * m.cols() * es,
                        [sink, mp, f, es] {
        const std::vector<float> v = mp->Dequantize();
        sink->scratch.resize(v.size() * es);
        if (f == MatrixFormat::kF32) {
          std::memcpy(sink->scratch.data(), v.data(), sink->scratch.size());
        } else {
          for (size_t i = 0; i < v.size(); ++i) {
            // Exact: the values came from this dtype.
            const uint16_t h = f == MatrixFormat::kF16 ? F32ToF16(v[i]) : F32ToBF16(v[i]);
            std::memcpy(sink->scratch.data() + 2 * i, &h, 2);
          }
        }
        return static_cast<const void*>(sink->scratch.data());
      });
      break;
    }
    case MatrixFormat::kQuant: {
      const auto* q = dynamic_cast<const QuantMatrix*>(&m);
      if (!q) return absl::InvalidArgumentError(absl::StrCat(name, ": unknown quantized matrix type"));
      e["format"] = "quant";
      e["bits"] = q->spec().bits;
      e["group_size"] = q->spec().group_size;
      sink->AddPacked(name, q);
      break;
    }
    case MatrixFormat::kSparse24: {
      const auto* s = dynamic_cast<const Sparse24Matrix*>(&m);
      if (!s) return absl::InvalidArgumentError(absl::StrCat(name, ": unknown 2:4 matrix type"));
      e["format"] = "sparse24";
      const int64_t kb = s->kept_blocks();
      sink->Add(name + ".values", "F16", {m.rows(), kb * 32}, s->values_f16().data(),
                s->values_f16().size() * 2);
      sink->Add(name + ".meta", "U8", {m.rows(), kb * 8}, s->meta().data(), s->meta().size());
      break;
    }
    case MatrixFormat::kSparse24Quant: {
      const auto* s = dynamic_cast<const Sparse24QuantMatrix*>(&m);
      if (!s) return absl::InvalidArgumentError(absl::StrCat(name, ": unknown 2:4 matrix type"));
      e["format"] = "sparse24-quant";
      e["bits"] = s->kept().spec().bits;
      e["group_size"] = s->kept().spec().group_size;
      sink->AddPacked(name, &s->kept());
      sink->Add(name + ".meta", "U8", {m.rows(), static_cast<int64_t>(s->kept_blocks()) * 8},
                s->meta().data(), s->meta().size());
      break;
    }
  }
  sink->entries[name] = std::move(e);
  return absl::OkStatus();
}

void AddVector(const std::string& name, const std::vector<float>& v, Sink* sink) {
  sink->Add(name, "F32", {static_cast<int64_t>(v.size())}, v.data(), v.size() * 4);
  sink->entries[name] = {{"format", "f32"}, {"size", v.size()}};
}

std::string LinearName(int layer, Module m) {
  return absl::StrCat("layers.", layer, ".", ModuleParent(m), ".", ModuleName(m));
}

json ConfigToJson(const ModelConfig& c) {
  return {{"architecture", c.architecture},
          {"dim", c.dim},
          {"n_layers", c.n_layers},
          {"n_heads", c.n_heads},
          {"n_kv_heads", c.n_kv_heads},
          {"head_dim", c.head_dim},
          {"ffn_dim", c.ffn_dim},
          {"vocab_size", c.vocab_size},
          {"max_seq_len", c.max_seq_len},
          {"norm_eps", c.norm_eps},
          {"rope_theta", c.rope_theta},
          {"rope_style", c.rope_style == RopeStyle::kInterleaved ? "interleaved" : "half"},
          {"tied_embeddings", c.tied_embeddings}};
}

// ---- Reading ---------------------------------------------------------------------

absl::Status JsonError(const std::string& file, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", what));
}

absl::StatusOr<ModelConfig> ConfigFromJson(const json& j, const std::string& file) {
  if (!j.is_object()) return JsonError(file, "\"config\" must be an object");
  const std::string f = absl::StrCat(file, " config");
  ModelConfig c;
  ASSIGN_OR_RETURN(c.architecture, JsonField<std::string>(j, "architecture", f));
  ASSIGN_OR_RETURN(c.dim, JsonField<int>(j, "dim", f));
  ASSIGN_OR_RETURN(c.n_layers, JsonField<int>(j, "n_layers", f));
  ASSIGN_OR_RETURN(c.n_heads, JsonField<int>(j, "n_heads", f));
  ASSIGN_OR_RETURN(c.n_kv_heads, JsonField<int>(j, "n_kv_heads", f));
  ASSIGN_OR_RETURN(c.head_dim, JsonField<int>(j, "head_dim", f));
  ASSIGN_OR_RETURN(c.ffn_dim, JsonField<int>(j, "ffn_dim", f));
  ASSIGN_OR_RETURN(c.vocab_size, JsonField<int>(j, "vocab_size", f));
  ASSIGN_OR_RETURN(c.max_seq_len, JsonField<int>(j, "max_seq_len", f));
  ASSIGN_OR_RETURN(c.norm_eps, JsonField<float>(j, "norm_eps", f));
  ASSIGN_OR_RETURN(c.rope_theta, JsonField<float>(j, "rope_theta", f));
  ASSIGN_OR_RETURN(std::string rope, JsonField<std::string>(j, "rope_style", f));
  if (rope == "interleaved") c.rope_style = RopeStyle::kInterleaved;
  else if (rope == "half") c.rope_style = RopeStyle::kHalf;
  else return JsonError(f, absl::StrCat("rope_style \"", rope, "\" is not interleaved or half"));
  ASSIGN_OR_RETURN(c.tied_embeddings, JsonField<bool>(j, "tied_embeddings", f));
  constexpr int kMax = 1 << 24;
  for (int v : {c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.vocab_size,
                c.max_seq_len})
    if (v <= 0 || v > kMax) return JsonError(f, "dimensions must be positive and plausible");
  return c;
}

struct Reader {
  const SafetensorsFile* file;
  const json* entries;
  std::string json_path;
  int packed_version;  // of the file's packed layouts (older ones are upgraded)

  absl::StatusOr<const SafetensorsTensor*> Tensor(const std::string& name, const char* dtype,
                                                  std::vector<int64_t> shape) const {
    const SafetensorsTensor* t = file->FindTensor(name);
    if (!t) return absl::InvalidArgumentError(absl::StrCat(file->path(), ": missing tensor ", name));
    if (t->dtype_name != dtype || t->shape != shape) {
      std::string want = "[";
      for (size_t i = 0; i < shape.size(); ++i) absl::StrAppend(&want, i ? ", " : "", shape[i]);
      want += "]";
      return absl::InvalidArgumentError(absl::StrCat(file->path(), ": tensor ", name, " is ",
                                                     t->dtype_name, " ", t->ShapeString(),
                                                     ", expected ", dtype, " ", want));
    }
    return t;
  }

  absl::StatusOr<PackedQuant> Packed(const std::string& name, int rows, int cols,
                                     QuantSpec spec) const {
    if (absl::Status s = ValidateQuantSpec(rows, cols, spec); !s.ok())
      return absl::InvalidArgumentError(
          absl::StrCat(json_path, " tensor ", name, ": ", s.message()));
    const int blocks = (cols + 31) / 32;
    const int gs = spec.group_size == 0 ? blocks * 32 : spec.group_size;
    const int groups = (blocks * 32 + gs - 1) / gs;
    ASSIGN_OR_RETURN(const SafetensorsTensor* q,
                     Tensor(name + ".qweight", "U8", {rows, blocks * QuantBlockBytes(spec.bits)}));
    ASSIGN_OR_RETURN(const SafetensorsTensor* s, Tensor(name + ".scales", "F16", {rows, groups}));
    ASSIGN_OR_RETURN(const SafetensorsTensor* m, Tensor(name + ".mins", "F16", {rows, groups}));
    PackedQuant p;
    p.rows = rows;
    p.cols = cols;
    p.spec = spec;
    p.packed.assign(q->data, q->data + q->byte_size);
    p.scale_f16.resize(s->n_elements);
    std::memcpy(p.scale_f16.data(), s->data, s->byte_size);
    p.min_f16.resize(m->n_elements);
    std::memcpy(p.min_f16.data(), m->data, m->byte_size);
    UpgradePacked(&p, packed_version);
    return p;
  }

  absl::StatusOr<std::shared_ptr<const Matrix>> MatrixNamed(const std::string& name, int rows,
                                                            int cols) const {
    auto it = entries->find(name);
    if (it == entries->end() || !it->is_object())
      return JsonError(json_path, absl::StrCat("no entry for tensor ", name));
    const std::string where = absl::StrCat(json_path, " tensor ", name);
    ASSIGN_OR_RETURN(std::string format, JsonField<std::string>(*it, "format", where));
    ASSIGN_OR_RETURN(int r, JsonField<int>(*it, "rows", where));
    ASSIGN_OR_RETURN(int c, JsonField<int>(*it, "cols", where));
    if (r != rows || c != cols)
      return absl::InvalidArgumentError(absl::StrCat(where, ": shape [", r, ", ", c,
                                                     "] but the config implies [", rows, ", ", cols,
                                                     "]"));
    auto wrap = [&](auto made) -> absl::StatusOr<std::shared_ptr<const Matrix>> {
      if (!made.ok())
        return absl::InvalidArgumentError(
            absl::StrCat(file->path(), ": tensor ", name, ": ", made.status().message()));
      return std::shared_ptr<const Matrix>(std::move(made).value());
    };
    if (format == "f32" || format == "f16" || format == "bf16") {
      const DType dt = format == "f32" ? DType::kF32 : format == "f16" ? DType::kF16 : DType::kBF16;
      ASSIGN_OR_RETURN(const SafetensorsTensor* t,
                       Tensor(name + ".weight", SafetensorsDTypeName(dt), {rows, cols}));
      return std::shared_ptr<const Matrix>(MakeDenseMatrix(dt, rows, cols, t->data));
    }
    QuantSpec spec;
    if (format == "quant" || format == "sparse24-quant") {
      ASSIGN_OR_RETURN(spec.bits, JsonField<int>(*it, "bits", where));
      ASSIGN_OR_RETURN(spec.group_size, JsonField<int>(*it, "group_size", where));
    }
    if (format == "quant") {
      ASSIGN_OR_RETURN(PackedQuant p, Packed(name, rows, cols, spec));
      return wrap(QuantMatrix::FromPacked(std::move(p)));
    }
    if (format == "sparse24" || format == "sparse24-quant") {
      const int kb = Sparse24KeptBlocks(cols);
      ASSIGN_OR_RETURN(const SafetensorsTensor* meta, Tensor(name + ".meta", "U8", {rows, kb * 8}));
      std::vector<uint8_t> m(meta->data, meta->data + meta->byte_size);
      if (format == "sparse24") {
        ASSIGN_OR_RETURN(const SafetensorsTensor* v, Tensor(name + ".values", "F16", {rows, kb * 32}));
        std::vector<uint16_t> vals(v->n_elements);
        std::memcpy(vals.data(), v->data, v->byte_size);
        return wrap(Sparse24Matrix::FromPacked(rows, cols, std::move(vals), std::move(m)));
      }
      ASSIGN_OR_RETURN(PackedQuant p, Packed(name, rows, kb * 32, spec));
      return wrap(Sparse24QuantMatrix::FromPacked(cols, std::move(p), std::move(m)));
    }
    return JsonError(where, absl::StrCat("unknown format \"", format, "\""));
  }

  absl::StatusOr<std::vector<float>> Vector(const std::string& name, int size) const {
    ASSIGN_OR_RETURN(const SafetensorsTensor* t, Tensor(name, "F32", {size}));
    std::vector<float> v(size);
    std::memcpy(v.data(), t->data, t->byte_size);
    return v;
  }
};

absl::StatusOr<std::shared_ptr<const Tokenizer>> TokenizerFromJson(const json& j,
                                                                   const std::string& dir,
                                                                   const std::string& file) {
  if (j.is_null()) return std::shared_ptr<const Tokenizer>();
  if (!j.is_object()) return JsonError(file, "\"tokenizer\" must be an object or null");
  const std::string f = absl::StrCat(file, " tokenizer");
  ASSIGN_OR_RETURN(std::string type, JsonField<std::string>(j, "type", f));
  if (type == "hf") {
    ASSIGN_OR_RETURN(std::string name, JsonField<std::string>(j, "file", f));
    if (name.empty() || name.find('/') != std::string::npos || name == "..")
      return JsonError(f, "\"file\" must be a plain file name");
    ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> t, LoadHfTokenizer((fs::path(dir) / name).string()));
    return std::shared_ptr<const Tokenizer>(std::move(t));
  }
  if (type != "spm") return JsonError(f, absl::StrCat("unknown type \"", type, "\""));
  SpmVocab v;
  try {
    v.pieces = j.at("pieces").get<std::vector<std::string>>();
    v.scores = j.at("scores").get<std::vector<float>>();
    v.types = j.at("types").get<std::vector<int>>();
    v.bos_id = j.at("bos_id").get<int>();
    v.eos_id = j.at("eos_id").get<int>();
    v.unk_id = j.at("unk_id").get<int>();
    v.add_space_prefix = j.at("add_space_prefix").get<bool>();
  } catch (const std::exception& e) {
    return JsonError(f, e.what());
  }
  auto t = MakeSpmTokenizer(v);
  if (!t.ok()) return JsonError(f, std::string(t.status().message()));
  return std::shared_ptr<const Tokenizer>(std::move(t).value());
}

}  // namespace

bool IsCompressedModelDir(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) return fs::exists(fs::path(path) / kJsonFile, ec);
  return fs::path(path).filename() == kJsonFile && fs::is_regular_file(path, ec);
}

absl::Status WriteCompressedModel(const std::string& dir, const ModelWeights& w,
                                  const std::map<std::string, std::string>& metadata,
                                  bool overwrite) {
  if (absl::Status s = w.Validate(); !s.ok())
    return absl::Status(s.code(), absl::StrCat("cannot write ", dir, ": ", s.message()));
  const ModelConfig& c = w.config;
  Sink sink;
  RETURN_IF_ERROR(AddMatrix("token_embedding", *w.token_embedding, &sink));
  const bool output_shared = w.output.get() == w.token_embedding.get();
  if (!output_shared) RETURN_IF_ERROR(AddMatrix("output", *w.output, &sink));
  AddVector("output_norm", w.output_norm, &sink);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& L = w.layers[l];
    AddVector(absl::StrCat("layers.", l, ".attn_norm"), L.attn_norm, &sink);
    AddVector(absl::StrCat("layers.", l, ".ffn_norm"), L.ffn_norm, &sink);
    for (int m = 0; m < kNumModules; ++m)
      RETURN_IF_ERROR(AddMatrix(LinearName(l, static_cast<Module>(m)), *L.linear[m], &sink));
  }
  json tok_entry;
  std::string hf_tokenizer;
  RETURN_IF_ERROR(CaptureTokenizer(w, &tok_entry, &hf_tokenizer));
  json meta = json::object();
  for (const auto& [k, v] : metadata) meta[k] = v;
  json j = {{"format", kCompressedModelFormat},
            {"version", kCompressedModelVersion},
            {"packed_format_version", kPackedFormatVersion},
            {"config", ConfigToJson(c)},
            {"output_shares_embedding", output_shared},
            {"tensors", sink.entries},
            {"tokenizer", tok_entry},
            {"content_sha256", std::string(64, '0')},  // filled in once the tensors are written
            {"source", w.source},
            {"metadata", meta}};
  std::string text;
  auto dump = [&]() -> absl::Status {
    try {
      text = j.dump() + "\n";  // compact: it is part of every served byte count
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(
          absl::StrCat(dir, ": cannot serialise ", kJsonFile, " (tokenizer pieces or metadata are "
                            "not valid UTF-8?): ", e.what()));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(dump());  // fail before writing the tensors
  ASSIGN_OR_RETURN(std::unique_ptr<DirWriter> dw, DirWriter::Begin(dir, overwrite));
  // The content hash covers every tensor's name, dtype, shape and bytes, in order,
  // hashed as the tensors are written.
  Sha256 h;
  RETURN_IF_ERROR(dw->WriteSafetensors(kWeightsFile, sink.tensors,
                                       {{"format", kCompressedModelFormat},
                                        {"version", std::to_string(kCompressedModelVersion)}},
                                       [&h](const RawTensor& t, const void* data) {
                                         h.Update(t.name);
                                         h.Update(t.dtype);
                                         for (int64_t d : t.shape) h.Update(&d, sizeof(d));
                                         h.Update(data, t.byte_size);
                                       }));
  sink = Sink();  // the last converted matrix
  j["content_sha256"] = h.HexFinal();
  RETURN_IF_ERROR(dump());
  if (!hf_tokenizer.empty()) RETURN_IF_ERROR(dw->WriteFile(kHfTokenizerFile, hf_tokenizer));
  RETURN_IF_ERROR(dw->WriteFile(kJsonFile, text));
  return dw->Commit();
}

absl::StatusOr<ModelWeights> LoadCompressedModel(const std::string& path,
                                                 CompressedModelInfo* info) {
  std::error_code ec;
  std::string dir = path;
  if (!fs::is_directory(dir, ec) && fs::path(dir).filename() == kJsonFile)
    dir = fs::path(dir).parent_path().string();
  if (!fs::is_directory(dir, ec))
    return absl::NotFoundError(absl::StrCat(path, ": not a compressed model directory"));
  const std::string json_path = (fs::path(dir) / kJsonFile).string();
  const std::string weights_path = (fs::path(dir) / kWeightsFile).string();
  if (!fs::exists(json_path, ec))
    return absl::NotFoundError(
        absl::StrCat(json_path, ": cannot open (not a compressed model directory?)"));
  ASSIGN_OR_RETURN(json j, ReadJsonObjectFile(json_path));
  ASSIGN_OR_RETURN(std::string format, JsonField<std::string>(j, "format", json_path));
  if (format != kCompressedModelFormat)
    return JsonError(json_path, absl::StrCat("format is \"", format, "\", expected \"",
                                             kCompressedModelFormat, "\""));
  ASSIGN_OR_RETURN(int version, JsonField<int>(j, "version", json_path));
  if (version != kCompressedModelVersion)
    return absl::UnimplementedError(absl::StrCat(json_path, ": version ", version,
                                                 " is not supported (this build reads ",
                                                 kCompressedModelVersion, ")"));
  ASSIGN_OR_RETURN(int packed_version, JsonField<int>(j, "packed_format_version", json_path));
  if (packed_version < 1 || packed_version > kPackedFormatVersion)
    return absl::UnimplementedError(absl::StrCat(json_path, ": packed_format_version ",
                                                 packed_version, " is not supported (this build "
                                                 "reads 1 to ", kPackedFormatVersion, ")"));
  ModelWeights w;
  w.source = dir;
  if (!j.contains("config")) return JsonError(json_path, "missing \"config\"");
  ASSIGN_OR_RETURN(w.config, ConfigFromJson(j["config"], json_path));
  const ModelConfig& c = w.config;
  ASSIGN_OR_RETURN(bool shared, JsonField<bool>(j, "output_shares_embedding", json_path));
  auto tensors_it = j.find("tensors");
  if (tensors_it == j.end() || !tensors_it->is_object())
    return JsonError(json_path, "missing \"tensors\" object");

  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(weights_path));
  Reader r{file.get(), &*tensors_it, json_path, packed_version};
  ASSIGN_OR_RETURN(w.token_embedding, r.MatrixNamed("token_embedding", c.vocab_size, c.dim));
  if (shared) {
    w.output = w.token_embedding;
  } else {
    ASSIGN_OR_RETURN(w.output, r.MatrixNamed("output", c.vocab_size, c.dim));
  }
  ASSIGN_OR_RETURN(w.output_norm, r.Vector("output_norm", c.dim));
  const int shapes[kNumModules][2] = {{c.q_dim(), c.dim},  {c.kv_dim(), c.dim}, {c.kv_dim(), c.dim},
                                      {c.dim, c.q_dim()},  {c.ffn_dim, c.dim},  {c.ffn_dim, c.dim},
                                      {c.dim, c.ffn_dim}};
  w.layers.resize(c.n_layers);
  size_t expected_entries = 1 + (shared ? 0 : 1) + 1;
  for (int l = 0; l < c.n_layers; ++l) {
    LayerWeights& L = w.layers[l];
    ASSIGN_OR_RETURN(L.attn_norm, r.Vector(absl::StrCat("layers.", l, ".attn_norm"), c.dim));
    ASSIGN_OR_RETURN(L.ffn_norm, r.Vector(absl::StrCat("layers.", l, ".ffn_norm"), c.dim));
    for (int m = 0; m < kNumModules; ++m) {
      ASSIGN_OR_RETURN(L.linear[m], r.MatrixNamed(LinearName(l, static_cast<Module>(m)),
                                                  shapes[m][0], shapes[m][1]));
    }
    expected_entries += 2 + kNumModules;
  }
  if (tensors_it->size() != expected_entries)
    return JsonError(json_path, absl::StrCat("\"tensors\" has ", tensors_it->size(),
                                             " entries, the config implies ", expected_entries));
  // Every tensor of the file must have been used (no stray data).
  size_t stored = 0;
  for (const auto& [name, e] : tensors_it->items()) {
    const std::string fmt = e.value("format", "");
    if (name.find("norm") != std::string::npos && e.contains("size")) stored += 1;
    else if (fmt == "f32" || fmt == "f16" || fmt == "bf16") stored += 1;
    else if (fmt == "quant") stored += 3;
    else if (fmt == "sparse24") stored += 2;
    else if (fmt == "sparse24-quant") stored += 4;
  }
  if (file->tensors().size() != stored)
    return absl::InvalidArgumentError(absl::StrCat(weights_path, ": holds ", file->tensors().size(),
                                                   " tensors, ", json_path, " describes ", stored));
  auto tok_it = j.find("tokenizer");
  ASSIGN_OR_RETURN(w.tokenizer, TokenizerFromJson(tok_it == j.end() ? json() : *tok_it, dir, json_path));
  if (w.tokenizer && w.tokenizer->vocab_size() != c.vocab_size)
    return JsonError(json_path, absl::StrCat("tokenizer has ", w.tokenizer->vocab_size(),
                                             " tokens, the model ", c.vocab_size));
  RETURN_IF_ERROR(w.Validate());
  if (info) {
    info->version = version;
    info->content_sha256 = j.value("content_sha256", "");
    info->metadata.clear();
    if (auto it = j.find("metadata"); it != j.end() && it->is_object())
      for (const auto& [k, v] : it->items())
        info->metadata[k] = v.is_string() ? v.get<std::string>() : v.dump();
    auto bytes = DirectoryBytes(dir);
    info->bytes = bytes.ok() ? *bytes : 0;
  }
  return w;
}

}  // namespace eora
