// PEFT LoRA adapter directories (docs/formats.md, "Adapter directory").
#include "engine/adapter_io.h"

#include <cmath>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/dir_writer.h"
#include "engine/dtype.h"
#include "engine/json_file.h"
#include "engine/quant_matrix.h"
#include "engine/safetensors.h"
#include "engine/status_macros.h"
#include "nlohmann/json.hpp"

namespace eora {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr char kConfigFile[] = "adapter_config.json";
constexpr char kWeightsFile[] = "adapter_model.safetensors";
constexpr char kMetaFile[] = "eora_adapter.json";
constexpr char kFactorsFile[] = "eora_factors.safetensors";
constexpr char kPeftPrefix[] = "base_model.model.model.layers.";

// "base_model.model.model.layers.{l}.{self_attn|mlp}.{module}"
std::string PeftModulePrefix(int layer, Module m) {
  return absl::StrCat(kPeftPrefix, layer, ".", ModuleParent(m), ".", ModuleName(m));
}

struct ModuleDims {
  int in[kNumModules], out[kNumModules];
};
ModuleDims Dims(const ModelConfig& c) {
  return ModuleDims{{c.dim, c.dim, c.dim, c.q_dim(), c.dim, c.dim, c.ffn_dim},
                    {c.q_dim(), c.kv_dim(), c.kv_dim(), c.dim, c.ffn_dim, c.ffn_dim, c.dim}};
}

json MetadataToJson(const AdapterMetadata& m) {
  json profile = json::array();
  for (const RankQuality& q : m.profile)
    profile.push_back({{"rank", q.rank}, {"nll", q.nll}, {"ppl", q.ppl}});
  json extra = json::object();
  for (const auto& [k, v] : m.extra) extra[k] = v;
  return json{{"format", "eora-adapter"},
              {"format_version", m.format_version},
              {"method", m.method},
              {"rank", m.rank},
              {"factor_bits", m.factor_bits},
              {"base_model", m.base_model},
              {"base_fingerprint", m.base_fingerprint},
              {"compressed_base", m.compressed_base},
              {"calibration",
               {{"hash", m.calibration_hash},
                {"seqs", m.calibration_seqs},
                {"seq_len", m.calibration_seq_len}}},
              {"profile", profile},
              {"fit_seconds", m.fit_seconds},
              {"extra", extra}};
}

absl::StatusOr<AdapterMetadata> MetadataFromJson(const json& j, const std::string& file) {
  AdapterMetadata m;
  ASSIGN_OR_RETURN(std::string format, JsonField<std::string>(j, "format", file));
  if (format != "eora-adapter")
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": \"format\" is \"", format, "\", expected \"eora-adapter\""));
  ASSIGN_OR_RETURN(m.format_version, JsonField<int>(j, "format_version", file));
  if (m.format_version != 1)
    return absl::UnimplementedError(absl::StrCat(file, ": format_version ", m.format_version,
                                                 " is not supported (this build reads 1)"));
  ASSIGN_OR_RETURN(m.method, JsonField<std::string>(j, "method", file));
  ASSIGN_OR_RETURN(m.rank, JsonField<int>(j, "rank", file));
  ASSIGN_OR_RETURN(m.factor_bits, JsonField<int>(j, "factor_bits", file, 16));
  ASSIGN_OR_RETURN(m.base_model, JsonField<std::string>(j, "base_model", file, std::string()));
  ASSIGN_OR_RETURN(m.base_fingerprint,
                   JsonField<std::string>(j, "base_fingerprint", file, std::string()));
  ASSIGN_OR_RETURN(m.compressed_base,
                   JsonField<std::string>(j, "compressed_base", file, std::string()));
  if (auto it = j.find("calibration"); it != j.end() && it->is_object()) {
    const std::string f = absl::StrCat(file, " calibration");
    ASSIGN_OR_RETURN(m.calibration_hash, JsonField<std::string>(*it, "hash", f, std::string()));
    ASSIGN_OR_RETURN(m.calibration_seqs, JsonField<int>(*it, "seqs", f, 0));
    ASSIGN_OR_RETURN(m.calibration_seq_len, JsonField<int>(*it, "seq_len", f, 0));
  }
  if (auto it = j.find("profile"); it != j.end() && !it->is_null()) {
    if (!it->is_array())
      return absl::InvalidArgumentError(absl::StrCat(file, ": \"profile\" must be an array"));
    int prev = 0;
    for (const json& p : *it) {
      if (!p.is_object())
        return absl::InvalidArgumentError(absl::StrCat(file, ": profile entries must be objects"));
      RankQuality q;
      const std::string f = absl::StrCat(file, " profile");
      ASSIGN_OR_RETURN(q.rank, JsonField<int>(p, "rank", f));
      ASSIGN_OR_RETURN(q.nll, JsonField<double>(p, "nll", f));
      ASSIGN_OR_RETURN(q.ppl, JsonField<double>(p, "ppl", f));
      if (q.rank <= prev || q.rank > m.rank)
        return absl::InvalidArgumentError(absl::StrCat(
            file, ": profile ranks must increase and stay within 1..", m.rank, " (got ", q.rank,
            ")"));
      prev = q.rank;
      m.profile.push_back(q);
    }
  }
  ASSIGN_OR_RETURN(m.fit_seconds, JsonField<double>(j, "fit_seconds", file, 0.0));
  if (auto it = j.find("extra"); it != j.end() && it->is_object()) {
    for (const auto& [k, v] : it->items())
      m.extra[k] = v.is_string() ? v.get<std::string>() : v.dump();
  }
  if (m.rank <= 0) return absl::InvalidArgumentError(absl::StrCat(file, ": rank must be positive"));
  if (m.factor_bits != 16 && m.factor_bits != 32 && (m.factor_bits < 2 || m.factor_bits > 4))
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": factor_bits ", m.factor_bits, " is not 32, 16, 4, 3 or 2"));
  return m;
}

// Safetensors dtype name of a dense factor's storage (quantized factors are
// written dequantized as F32).
const char* PeftDType(const Matrix& m) {
  switch (m.format()) {
    case MatrixFormat::kF16: return "F16";
    case MatrixFormat::kBF16: return "BF16";
    default: return "F32";
  }
}

// Encodes floats as `dtype` bytes.
std::vector<uint8_t> Encode(const std::vector<float>& v, const std::string& dtype) {
  std::vector<uint8_t> out;
  if (dtype == "F32") {
    out.resize(v.size() * 4);
    std::memcpy(out.data(), v.data(), out.size());
  } else {
    out.resize(v.size() * 2);
    for (size_t i = 0; i < v.size(); ++i) {
      const uint16_t h = dtype == "F16" ? F32ToF16(v[i]) : F32ToBF16(v[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  }
  return out;
}

struct Owned {
  std::vector<uint8_t> bytes;
};

// Parsed "...layers.{l}.{parent}.{module}.lora_{A|B}.weight".
struct PeftKey {
  int layer = -1;
  Module module = Module::kQ;
  bool is_a = true;
};

bool ParsePeftKey(const std::string& name, PeftKey* key) {
  if (name.rfind(kPeftPrefix, 0) != 0) return false;
  std::string rest = name.substr(std::strlen(kPeftPrefix));
  // {l}.{parent}.{module}.lora_{A|B}.weight
  size_t dot = rest.find('.');
  if (dot == std::string::npos || dot == 0 || dot > 9) return false;
  int layer = 0;
  for (size_t i = 0; i < dot; ++i) {
    if (rest[i] < '0' || rest[i] > '9') return false;
    layer = layer * 10 + (rest[i] - '0');
  }
  if (dot > 1 && rest[0] == '0') return false;
  rest = rest.substr(dot + 1);
  const std::string a_suffix = ".lora_A.weight", b_suffix = ".lora_B.weight";
  bool is_a;
  if (rest.size() > a_suffix.size() &&
      rest.compare(rest.size() - a_suffix.size(), a_suffix.size(), a_suffix) == 0) {
    is_a = true;
  } else if (rest.size() > b_suffix.size() &&
             rest.compare(rest.size() - b_suffix.size(), b_suffix.size(), b_suffix) == 0) {
    is_a = false;
  } else {
    return false;
  }
  rest = rest.substr(0, rest.size() - a_suffix.size());
  dot = rest.find('.');
  if (dot == std::string::npos) return false;
  const std::string parent = rest.substr(0, dot), module = rest.substr(dot + 1);
  Module m;
  if (!ParseModuleName(module, &m) || parent != ModuleParent(m)) return false;
  key->layer = layer;
  key->module = m;
  key->is_a = is_a;
  return true;
}

// Copies a 2-D tensor of a float dtype into a Matrix, optionally transposed and scaled.
absl::StatusOr<std::shared_ptr<const Matrix>> TensorToMatrix(const SafetensorsTensor& t, DType dt,
                                                             bool transpose, float scale) {
  const int rows = static_cast<int>(t.shape[0]), cols = static_cast<int>(t.shape[1]);
  const int es = DTypeSize(dt);
  if (scale == 1.0f) {
    if (!transpose) return std::shared_ptr<const Matrix>(MakeDenseMatrix(dt, rows, cols, t.data));
    std::vector<uint8_t> tr(t.byte_size);
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c)
        std::memcpy(tr.data() + (static_cast<size_t>(c) * rows + r) * es,
                    t.data + (static_cast<size_t>(r) * cols + c) * es, es);
    return std::shared_ptr<const Matrix>(MakeDenseMatrix(dt, cols, rows, tr.data()));
  }
  std::vector<float> f(static_cast<size_t>(rows) * cols);
  ConvertToF32(dt, t.data, f.data(), f.size());
  std::vector<float> out(f.size());
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) {
      const float v = f[static_cast<size_t>(r) * cols + c] * scale;
      if (transpose) out[static_cast<size_t>(c) * rows + r] = v;
      else out[static_cast<size_t>(r) * cols + c] = v;
    }
  return std::shared_ptr<const Matrix>(transpose ? MakeDenseMatrixFromF32(dt, cols, rows, out.data())
                                                 : MakeDenseMatrixFromF32(dt, rows, cols, out.data()));
}

// A QuantMatrix [rows x cols] from "<base>.qweight" / ".scales" / ".mins" of the
// packed-factors file.
absl::StatusOr<std::shared_ptr<const Matrix>> LoadPackedFactor(const SafetensorsFile& f,
                                                               const std::string& base, int rows,
                                                               int cols, QuantSpec spec,
                                                               int packed_version) {
  const std::string where = absl::StrCat(f.path(), ": tensor ", base);
  const SafetensorsTensor* q = f.FindTensor(base + ".qweight");
  const SafetensorsTensor* s = f.FindTensor(base + ".scales");
  const SafetensorsTensor* mn = f.FindTensor(base + ".mins");
  if (!q || !s || !mn)
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": needs .qweight, .scales and .mins"));
  RETURN_IF_ERROR(ValidateQuantSpec(rows, cols, spec));
  const int blocks = (cols + 31) / 32;
  const int row_bytes = blocks * QuantBlockBytes(spec.bits);
  const int gs = spec.group_size == 0 ? blocks * 32 : spec.group_size;
  const int groups = (blocks * 32 + gs - 1) / gs;
  auto check = [&](const SafetensorsTensor* t, const char* dtype, int64_t r, int64_t c) {
    if (t->dtype_name != dtype || t->shape.size() != 2 || t->shape[0] != r || t->shape[1] != c)
      return absl::InvalidArgumentError(absl::StrCat(f.path(), ": tensor ", t->name, " is ",
                                                     t->dtype_name, " ", t->ShapeString(),
                                                     ", expected ", dtype, " [", r, ", ", c, "]"));
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(check(q, "U8", rows, row_bytes));
  RETURN_IF_ERROR(check(s, "F16", rows, groups));
  RETURN_IF_ERROR(check(mn, "F16", rows, groups));
  PackedQuant p;
  p.rows = rows;
  p.cols = cols;
  p.spec = spec;
  p.packed.assign(q->data, q->data + q->byte_size);
  p.scale_f16.resize(s->n_elements);
  std::memcpy(p.scale_f16.data(), s->data, s->byte_size);
  p.min_f16.resize(mn->n_elements);
  std::memcpy(p.min_f16.data(), mn->data, mn->byte_size);
  UpgradePacked(&p, packed_version);
  auto m = QuantMatrix::FromPacked(std::move(p));
  if (!m.ok())
    return absl::InvalidArgumentError(absl::StrCat(where, ": ", m.status().message()));
  return std::shared_ptr<const Matrix>(std::move(m).value());
}

}  // namespace

std::string ArchitectureFingerprint(const ModelConfig& c) {
  return absl::StrCat(c.architecture, ":dim=", c.dim, ",layers=", c.n_layers, ",heads=", c.n_heads,
                      ",kv_heads=", c.n_kv_heads, ",head_dim=", c.head_dim, ",ffn=", c.ffn_dim,
                      ",vocab=", c.vocab_size,
                      ",rope=", c.rope_style == RopeStyle::kInterleaved ? "interleaved" : "half");
}

absl::Status WriteAdapterDir(const std::string& dir, const LowRankAdapter& adapter,
                             const AdapterMetadata& meta_in, bool overwrite) {
  AdapterMetadata meta = meta_in;
  const int R = adapter.max_rank();
  if (meta.rank == 0) meta.rank = R;
  if (meta.rank != R)
    return absl::InvalidArgumentError(absl::StrCat(dir, ": metadata rank ", meta.rank,
                                                   " differs from the adapter's rank ", R));
  for (size_t i = 0; i < meta.profile.size(); ++i)
    if (meta.profile[i].rank <= (i ? meta.profile[i - 1].rank : 0) || meta.profile[i].rank > R)
      return absl::InvalidArgumentError(
          absl::StrCat(dir, ": profile ranks must increase and stay within 1..", R));

  // Quantized factors: all must share one spec (stored once in the file metadata).
  std::optional<QuantSpec> qspec;
  bool any_dense = false;
  for (int l = 0; l < adapter.num_layers(); ++l)
    for (int mi = 0; mi < kNumModules; ++mi) {
      const LowRankFactors& f = adapter.factors(l, static_cast<Module>(mi));
      if (!f.a) continue;
      for (const Matrix* m : {f.a.get(), f.bt.get()}) {
        if (m->format() == MatrixFormat::kQuant) {
          const QuantSpec s = static_cast<const QuantMatrix*>(m)->spec();
          if (qspec && (qspec->bits != s.bits || qspec->group_size != s.group_size))
            return absl::InvalidArgumentError(
                absl::StrCat(dir, ": quantized factors with different bit widths or group sizes "
                                  "cannot be written to one adapter"));
          qspec = s;
        } else if (m->format() == MatrixFormat::kF32 || m->format() == MatrixFormat::kF16 ||
                   m->format() == MatrixFormat::kBF16) {
          any_dense = true;
        } else {
          return absl::InvalidArgumentError(absl::StrCat(
              dir, ": layers.", l, ".", ModuleName(static_cast<Module>(mi)),
              ": factors stored as '", m->Describe(), "' cannot be written (dense or quantized only)"));
        }
      }
    }
  if (qspec && any_dense)
    return absl::InvalidArgumentError(
        absl::StrCat(dir, ": an adapter mixing quantized and float factors cannot be written"));
  if (qspec) meta.factor_bits = qspec->bits;
  else if (meta.factor_bits < 16) meta.factor_bits = 16;

  // adapter_model.safetensors (PEFT) and, for quantized factors, eora_factors.safetensors.
  std::vector<RawTensor> peft, packed;
  std::vector<Owned> keep;
  std::deque<PackedQuant> keep_packed;  // the file layout of quantized factors, until written
  keep.reserve(static_cast<size_t>(adapter.num_layers()) * kNumModules * 2);
  std::set<std::string> targets;
  std::set<int> layers_adapted;
  for (int l = 0; l < adapter.num_layers(); ++l)
    for (int mi = 0; mi < kNumModules; ++mi) {
      const Module mod = static_cast<Module>(mi);
      const LowRankFactors& f = adapter.factors(l, mod);
      if (!f.a) continue;
      targets.insert(ModuleName(mod));
      layers_adapted.insert(l);
      const std::string prefix = PeftModulePrefix(l, mod);
      const int in = f.a->cols(), out = f.bt->cols();
      // A [R, in] as is.
      const std::string dta = PeftDType(*f.a);
      keep.push_back({Encode(f.a->Dequantize(), dta)});
      peft.push_back({prefix + ".lora_A.weight", dta, {R, in}, keep.back().bytes.data(),
                      keep.back().bytes.size(), {}});
      // B [out, R] = Bt^T.
      const std::vector<float> bt = f.bt->Dequantize();
      std::vector<float> b(static_cast<size_t>(out) * R);
      for (int j = 0; j < R; ++j)
        for (int o = 0; o < out; ++o) b[static_cast<size_t>(o) * R + j] = bt[static_cast<size_t>(j) * out + o];
      const std::string dtb = PeftDType(*f.bt);
      keep.push_back({Encode(b, dtb)});
      peft.push_back({prefix + ".lora_B.weight", dtb, {out, R}, keep.back().bytes.data(),
                      keep.back().bytes.size(), {}});
      if (qspec) {
        for (const auto& [suffix, mat] :
             {std::pair<const char*, const Matrix*>{".lora_A", f.a.get()}, {".lora_Bt", f.bt.get()}}) {
          const PackedQuant& p = keep_packed.emplace_back(static_cast<const QuantMatrix*>(mat)->packed());
          const int64_t row_bytes = p.rows ? static_cast<int64_t>(p.packed.size() / p.rows) : 0;
          const int64_t groups = p.rows ? static_cast<int64_t>(p.scale_f16.size() / p.rows) : 0;
          packed.push_back({prefix + suffix + ".qweight", "U8", {p.rows, row_bytes},
                            p.packed.data(), p.packed.size(), {}});
          packed.push_back({prefix + suffix + ".scales", "F16", {p.rows, groups},
                            p.scale_f16.data(), p.scale_f16.size() * 2, {}});
          packed.push_back({prefix + suffix + ".mins", "F16", {p.rows, groups}, p.min_f16.data(),
                            p.min_f16.size() * 2, {}});
        }
      }
    }

  json config = {{"peft_type", "LORA"},
                 {"task_type", "CAUSAL_LM"},
                 {"r", R},
                 {"lora_alpha", R},
                 {"lora_dropout", 0.0},
                 {"target_modules", std::vector<std::string>(targets.begin(), targets.end())},
                 {"bias", "none"},
                 {"fan_in_fan_out", false},
                 {"inference_mode", true},
                 {"init_lora_weights", true},
                 {"use_rslora", false},
                 {"use_dora", false},
                 {"modules_to_save", nullptr},
                 {"rank_pattern", json::object()},
                 {"alpha_pattern", json::object()},
                 {"base_model_name_or_path", meta.base_model.empty() ? json(nullptr) : json(meta.base_model)},
                 {"revision", nullptr}};
  if (static_cast<int>(layers_adapted.size()) != adapter.num_layers())
    config["layers_to_transform"] = std::vector<int>(layers_adapted.begin(), layers_adapted.end());
  else
    config["layers_to_transform"] = nullptr;

  ASSIGN_OR_RETURN(std::unique_ptr<DirWriter> w, DirWriter::Begin(dir, overwrite));
  RETURN_IF_ERROR(w->WriteFile(kConfigFile, config.dump(2) + "\n"));
  RETURN_IF_ERROR(w->WriteSafetensors(
      kWeightsFile, peft,
      {{"format", "pt"}, {"eora_method", meta.method}, {"eora_rank", std::to_string(R)},
       {"eora_factor_bits", std::to_string(meta.factor_bits)}}));
  if (qspec) {
    RETURN_IF_ERROR(w->WriteSafetensors(
        kFactorsFile, packed,
        {{"format", "eora-packed-factors"},
         {"packed_format_version", std::to_string(kPackedFormatVersion)},
         {"bits", std::to_string(qspec->bits)},
         {"group_size", std::to_string(qspec->group_size)}}));
  }
  std::string meta_text;
  try {
    meta_text = MetadataToJson(meta).dump(2) + "\n";
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(dir, ": cannot serialise metadata: ", e.what()));
  }
  RETURN_IF_ERROR(w->WriteFile(kMetaFile, meta_text));
  return w->Commit();
}

absl::StatusOr<AdapterMetadata> ReadAdapterMetadata(const std::string& dir) {
  const std::string meta_path = (fs::path(dir) / kMetaFile).string();
  std::error_code ec;
  if (fs::exists(meta_path, ec)) {
    ASSIGN_OR_RETURN(json j, ReadJsonObjectFile(meta_path));
    return MetadataFromJson(j, meta_path);
  }
  // A plain PEFT adapter: what its config says.
  const std::string cfg_path = (fs::path(dir) / kConfigFile).string();
  ASSIGN_OR_RETURN(json cfg, ReadJsonObjectFile(cfg_path));
  AdapterMetadata m;
  m.method = "peft";
  ASSIGN_OR_RETURN(m.rank, JsonField<int>(cfg, "r", cfg_path));
  ASSIGN_OR_RETURN(m.base_model,
                   JsonField<std::string>(cfg, "base_model_name_or_path", cfg_path, std::string()));
  return m;
}

absl::StatusOr<std::shared_ptr<const LowRankAdapter>> LoadAdapterDir(const std::string& dir,
                                                                     const ModelConfig& config,
                                                                     const std::string& name,
                                                                     AdapterMetadata* meta_out) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    return absl::NotFoundError(absl::StrCat(dir, ": not an adapter directory (does not exist or "
                                                 "is not a directory)"));
  const std::string cfg_path = (fs::path(dir) / kConfigFile).string();
  const std::string weights_path = (fs::path(dir) / kWeightsFile).string();
  const std::string meta_path = (fs::path(dir) / kMetaFile).string();
  const std::string factors_path = (fs::path(dir) / kFactorsFile).string();

  // adapter_config.json
  ASSIGN_OR_RETURN(json cfg, ReadJsonObjectFile(cfg_path));
  ASSIGN_OR_RETURN(std::string peft_type, JsonField<std::string>(cfg, "peft_type", cfg_path));
  if (peft_type != "LORA")
    return absl::InvalidArgumentError(
        absl::StrCat(cfg_path, ": peft_type is \"", peft_type, "\", only \"LORA\" is supported"));
  ASSIGN_OR_RETURN(int r, JsonField<int>(cfg, "r", cfg_path));
  if (r <= 0) return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": r must be positive"));
  ASSIGN_OR_RETURN(double alpha, JsonField<double>(cfg, "lora_alpha", cfg_path, 8.0));  // PEFT default
  ASSIGN_OR_RETURN(bool rslora, JsonField<bool>(cfg, "use_rslora", cfg_path, false));
  ASSIGN_OR_RETURN(bool dora, JsonField<bool>(cfg, "use_dora", cfg_path, false));
  ASSIGN_OR_RETURN(bool fan_in_fan_out, JsonField<bool>(cfg, "fan_in_fan_out", cfg_path, false));
  ASSIGN_OR_RETURN(std::string bias, JsonField<std::string>(cfg, "bias", cfg_path, std::string("none")));
  if (dora) return absl::UnimplementedError(absl::StrCat(cfg_path, ": DoRA adapters are not supported"));
  if (fan_in_fan_out)
    return absl::UnimplementedError(absl::StrCat(cfg_path, ": fan_in_fan_out adapters are not supported"));
  if (bias != "none")
    return absl::UnimplementedError(
        absl::StrCat(cfg_path, ": bias \"", bias, "\" is not supported (only \"none\")"));
  for (const char* k : {"rank_pattern", "alpha_pattern"}) {
    auto it = cfg.find(k);
    if (it != cfg.end() && !it->is_null() && !(it->is_object() && it->empty()))
      return absl::UnimplementedError(absl::StrCat(cfg_path, ": per-module \"", k,
                                                   "\" is not supported"));
  }
  const float scale = static_cast<float>(rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / r);
  if (!std::isfinite(scale))
    return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": lora_alpha gives a non-finite scale"));

  // eora_adapter.json (optional for adapters made by other tools).
  AdapterMetadata meta;
  if (fs::exists(meta_path, ec)) {
    ASSIGN_OR_RETURN(json mj, ReadJsonObjectFile(meta_path));
    ASSIGN_OR_RETURN(meta, MetadataFromJson(mj, meta_path));
    if (meta.rank != r)
      return absl::InvalidArgumentError(absl::StrCat(meta_path, ": rank ", meta.rank, " but ",
                                                     cfg_path, " says r = ", r));
    const std::string fp = ArchitectureFingerprint(config);
    if (!meta.base_fingerprint.empty() && meta.base_fingerprint != fp)
      return absl::FailedPreconditionError(
          absl::StrCat(meta_path, ": the adapter was made for a model with architecture \"",
                       meta.base_fingerprint, "\", this model is \"", fp, "\""));
  } else {
    meta.method = "peft";
    meta.rank = r;
    ASSIGN_OR_RETURN(meta.base_model,
                     JsonField<std::string>(cfg, "base_model_name_or_path", cfg_path, std::string()));
  }

  const ModuleDims dims = Dims(config);
  std::vector<std::array<LowRankFactors, kNumModules>> layers(config.n_layers);
  auto shape_error = [&](const std::string& file, const SafetensorsTensor& t, int64_t rows,
                         int64_t cols) {
    return absl::FailedPreconditionError(
        absl::StrCat(file, ": tensor ", t.name, " has shape ", t.ShapeString(), ", expected [",
                     rows, ", ", cols, "] for this model (dim ", config.dim, ", ffn ",
                     config.ffn_dim, ", rank ", r, ")"));
  };

  // Packed factors (quantized adapters): authoritative when present.
  const bool have_packed = fs::exists(factors_path, ec);
  std::set<std::pair<int, int>> packed_modules;
  if (have_packed) {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> pf, SafetensorsFile::Open(factors_path));
    const auto& md = pf->metadata();
    auto get_int = [&](const std::string& key) -> absl::StatusOr<int> {
      auto it = md.find(key);
      if (it == md.end())
        return absl::InvalidArgumentError(absl::StrCat(factors_path, ": __metadata__ lacks \"", key, "\""));
      try {
        size_t pos = 0;
        const int v = std::stoi(it->second, &pos);
        if (pos != it->second.size()) throw std::invalid_argument(it->second);
        return v;
      } catch (const std::exception&) {
        return absl::InvalidArgumentError(absl::StrCat(factors_path, ": __metadata__ \"", key,
                                                       "\" = \"", it->second, "\" is not an integer"));
      }
    };
    ASSIGN_OR_RETURN(int version, get_int("packed_format_version"));
    if (version < 1 || version > kPackedFormatVersion)
      return absl::UnimplementedError(absl::StrCat(factors_path, ": packed_format_version ", version,
                                                   " is not supported (this build reads 1 to ",
                                                   kPackedFormatVersion, ")"));
    QuantSpec spec;
    ASSIGN_OR_RETURN(spec.bits, get_int("bits"));
    ASSIGN_OR_RETURN(spec.group_size, get_int("group_size"));
    if (spec.bits < 2 || spec.bits > 4)
      return absl::InvalidArgumentError(absl::StrCat(factors_path, ": bits ", spec.bits, " is not 2, 3 or 4"));
    if (meta.factor_bits != spec.bits && fs::exists(meta_path, ec))
      return absl::InvalidArgumentError(absl::StrCat(meta_path, ": factor_bits ", meta.factor_bits,
                                                     " but ", factors_path, " holds ", spec.bits,
                                                     "-bit codes"));
    meta.factor_bits = spec.bits;
    // Every tensor must belong to a module of this model.
    for (const SafetensorsTensor& t : pf->tensors()) {
      const std::string& n = t.name;
      bool ok = false;
      for (const char* part : {".lora_A.", ".lora_Bt."}) {
        const size_t p = n.find(part);
        if (p == std::string::npos) continue;
        PeftKey key;
        if (ParsePeftKey(n.substr(0, p) + ".lora_A.weight", &key)) {
          if (key.layer >= config.n_layers)
            return absl::FailedPreconditionError(absl::StrCat(
                factors_path, ": tensor ", n, " is for layer ", key.layer, " but the model has ",
                config.n_layers, " layers"));
          packed_modules.insert({key.layer, static_cast<int>(key.module)});
          ok = true;
        }
      }
      if (!ok)
        return absl::InvalidArgumentError(
            absl::StrCat(factors_path, ": unexpected tensor ", n));
    }
    for (const auto& [l, mi] : packed_modules) {
      const std::string prefix = PeftModulePrefix(l, static_cast<Module>(mi));
      LowRankFactors f;
      ASSIGN_OR_RETURN(f.a, LoadPackedFactor(*pf, prefix + ".lora_A", r, dims.in[mi], spec, version));
      ASSIGN_OR_RETURN(f.bt, LoadPackedFactor(*pf, prefix + ".lora_Bt", r, dims.out[mi], spec, version));
      if (scale != 1.0f)
        return absl::InvalidArgumentError(absl::StrCat(
            factors_path, ": quantized factors need lora_alpha = r in ", cfg_path));
      layers[l][mi] = std::move(f);
    }
  }

  // adapter_model.safetensors: required unless the packed file is there (it is then
  // still validated when present).
  if (!fs::exists(weights_path, ec) && !have_packed)
    return absl::NotFoundError(absl::StrCat(weights_path, ": missing"));
  if (fs::exists(weights_path, ec)) {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> wf, SafetensorsFile::Open(weights_path));
    std::map<std::pair<int, int>, std::pair<const SafetensorsTensor*, const SafetensorsTensor*>> found;
    for (const SafetensorsTensor& t : wf->tensors()) {
      PeftKey key;
      if (!ParsePeftKey(t.name, &key))
        return absl::InvalidArgumentError(absl::StrCat(
            weights_path, ": unexpected tensor ", t.name,
            " (expected base_model.model.model.layers.{i}.{self_attn|mlp}.{q,k,v,o,gate,up,down}"
            "_proj.lora_{A,B}.weight)"));
      if (key.layer >= config.n_layers)
        return absl::FailedPreconditionError(absl::StrCat(weights_path, ": tensor ", t.name,
                                                          " is for layer ", key.layer,
                                                          " but the model has ", config.n_layers,
                                                          " layers"));
      if (!t.dtype)
        return absl::InvalidArgumentError(absl::StrCat(weights_path, ": tensor ", t.name,
                                                       " has dtype ", t.dtype_name,
                                                       " (F32, F16 or BF16 expected)"));
      const int mi = static_cast<int>(key.module);
      const int64_t rows = key.is_a ? r : dims.out[mi], cols = key.is_a ? dims.in[mi] : r;
      if (t.shape.size() != 2)
        return absl::InvalidArgumentError(absl::StrCat(weights_path, ": tensor ", t.name,
                                                       " has shape ", t.ShapeString(),
                                                       ", expected a matrix"));
      const int64_t got_rank = key.is_a ? t.shape[0] : t.shape[1];
      if (got_rank != r)
        return absl::InvalidArgumentError(absl::StrCat(weights_path, ": tensor ", t.name,
                                                       " has rank ", got_rank, " (shape ",
                                                       t.ShapeString(), ") but ", cfg_path,
                                                       " says r = ", r));
      if (t.shape[0] != rows || t.shape[1] != cols) return shape_error(weights_path, t, rows, cols);
      auto& slot = found[{key.layer, mi}];
      (key.is_a ? slot.first : slot.second) = &t;
    }
    for (const auto& [lm, ab] : found) {
      const auto [l, mi] = lm;
      const std::string prefix = PeftModulePrefix(l, static_cast<Module>(mi));
      if (!ab.first || !ab.second)
        return absl::InvalidArgumentError(absl::StrCat(weights_path, ": ", prefix, " has lora_",
                                                       ab.first ? "A" : "B", " but no lora_",
                                                       ab.first ? "B" : "A"));
      if (have_packed) {
        if (!packed_modules.count(lm))
          return absl::InvalidArgumentError(absl::StrCat(factors_path, ": no packed factors for ",
                                                         prefix, " (present in ", weights_path, ")"));
        continue;
      }
      LowRankFactors f;
      ASSIGN_OR_RETURN(f.a, TensorToMatrix(*ab.first, *ab.first->dtype, false, 1.0f));
      ASSIGN_OR_RETURN(f.bt, TensorToMatrix(*ab.second, *ab.second->dtype, true, scale));
      layers[l][mi] = std::move(f);
    }
    if (have_packed)
      for (const auto& lm : packed_modules)
        if (!found.count(lm))
          return absl::InvalidArgumentError(
              absl::StrCat(weights_path, ": no lora_A/lora_B for ",
                           PeftModulePrefix(lm.first, static_cast<Module>(lm.second)),
                           " (present in ", factors_path, ")"));
  }

  auto adapter = LowRankAdapter::Create(name, config, std::move(layers));
  if (!adapter.ok())
    return absl::Status(adapter.status().code(),
                        absl::StrCat(dir, ": ", adapter.status().message()));
  if ((*adapter)->max_rank() != r)
    return absl::InvalidArgumentError(absl::StrCat(dir, ": factors have rank ",
                                                   (*adapter)->max_rank(), " but r = ", r));
  if (meta_out) *meta_out = std::move(meta);
  return adapter;
}

absl::Status ValidateAdapterId(const std::string& id, const char* field, size_t max_length) {
  if (id.empty()) return absl::InvalidArgumentError(absl::StrCat(field, ": must not be empty"));
  if (id.size() > max_length)
    return absl::InvalidArgumentError(absl::StrCat(field, ": longer than ", max_length, " characters"));
  if (id == "." || id == "..")
    return absl::InvalidArgumentError(absl::StrCat(field, ": '", id, "' is not a plain name"));
  for (char c : id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok)
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": must be a plain name of [A-Za-z0-9._-] (no path separators)"));
  }
  return absl::OkStatus();
}

}  // namespace eora
