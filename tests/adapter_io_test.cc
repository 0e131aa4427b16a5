// Adapter directories: PEFT LoRA files checked by a reader written here from the
// safetensors and PEFT specifications (not only by our loader), round trips of
// float and quantized factors, validation errors, atomic writes.
#include "engine/adapter_io.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include "engine/dtype.h"
#include "engine/quant_matrix.h"
#include "engine/synthetic.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace eora {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;
using testing::MakeTempDir;
using testing::ReadFileOrDie;
using testing::WriteFileOrDie;

ModelConfig TinyConfig() {
  ModelConfig c;
  c.dim = 64;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 16;
  c.ffn_dim = 96;
  c.vocab_size = 50;
  return c;
}

const char* kModules[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

// ---- A safetensors reader from the format specification -------------------------
// (8-byte little-endian header length N, N bytes of JSON, then the data section;
// data_offsets are [begin, end) relative to the data section, contiguous, no gaps.)
struct SpecTensor {
  std::string dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};
struct SpecFile {
  std::map<std::string, SpecTensor> tensors;
  std::map<std::string, std::string> metadata;
};

SpecFile ReadSafetensorsBySpec(const std::string& path) {
  const std::string f = ReadFileOrDie(path);
  EXPECT_GE(f.size(), 8u);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<uint8_t>(f[i])) << (8 * i);
  EXPECT_LE(8 + n, f.size());
  EXPECT_EQ(n % 8, 0u) << "header should be padded to 8 bytes";
  const std::string header = f.substr(8, n);
  EXPECT_EQ(header[0], '{');
  const json h = json::parse(header);
  const size_t data_start = 8 + n;
  SpecFile out;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& [name, v] : h.items()) {
    if (name == "__metadata__") {
      for (const auto& [k, s] : v.items()) {
        EXPECT_TRUE(s.is_string()) << "metadata values must be strings";
        out.metadata[k] = s.get<std::string>();
      }
      continue;
    }
    SpecTensor t;
    t.dtype = v.at("dtype").get<std::string>();
    t.shape = v.at("shape").get<std::vector<int64_t>>();
    const auto off = v.at("data_offsets").get<std::vector<uint64_t>>();
    EXPECT_EQ(off.size(), 2u);
    const int es = t.dtype == "F32" ? 4 : (t.dtype == "F16" || t.dtype == "BF16") ? 2 : t.dtype == "U8" ? 1 : 0;
    EXPECT_NE(es, 0) << name << " " << t.dtype;
    uint64_t count = 1;
    for (int64_t d : t.shape) count *= d;
    EXPECT_EQ(off[1] - off[0], count * es) << name;
    EXPECT_LE(data_start + off[1], f.size());
    t.bytes = f.substr(data_start + off[0], off[1] - off[0]);
    ranges.push_back({off[0], off[1]});
    out.tensors[name] = std::move(t);
  }
  std::sort(ranges.begin(), ranges.end());
  uint64_t pos = 0;
  for (const auto& [b, e] : ranges) {
    EXPECT_EQ(b, pos) << "data section must be contiguous";
    pos = e;
  }
  EXPECT_EQ(data_start + pos, f.size()) << "no trailing bytes";
  return out;
}

std::vector<float> AsFloats(const SpecTensor& t) {
  std::vector<float> v;
  if (t.dtype == "F32") {
    v.resize(t.bytes.size() / 4);
    std::memcpy(v.data(), t.bytes.data(), t.bytes.size());
  } else {
    v.resize(t.bytes.size() / 2);
    for (size_t i = 0; i < v.size(); ++i) {
      uint16_t h;
      std::memcpy(&h, t.bytes.data() + 2 * i, 2);
      v[i] = t.dtype == "F16" ? F16ToF32(h) : BF16ToF32(h);
    }
  }
  return v;
}

std::shared_ptr<const LowRankAdapter> RandomAdapter(int rank, int bits, uint64_t seed = 7) {
  WeightStorage s;
  s.bits = bits;
  auto a = MakeRandomAdapter("test", TinyConfig(), rank, s, seed, 0.05f);
  EXPECT_TRUE(a.ok()) << a.status();
  return *a;
}

AdapterMetadata SampleMeta(const ModelConfig& c, int rank) {
  AdapterMetadata m;
  m.method = "eora";
  m.rank = rank;
  m.base_model = "tiny";
  m.base_fingerprint = ArchitectureFingerprint(c);
  m.compressed_base = "sha256:abc";
  m.calibration_hash = "deadbeef";
  m.calibration_seqs = 16;
  m.calibration_seq_len = 128;
  m.profile = {{1, 2.5, std::exp(2.5)}, {2, 2.4, std::exp(2.4)}, {rank, 2.3, std::exp(2.3)}};
  m.fit_seconds = 1.25;
  m.extra["compressed_method"] = "gptq";
  return m;
}

void ExpectSameFactors(const LowRankAdapter& a, const LowRankAdapter& b, double tol = 0) {
  ASSERT_EQ(a.num_layers(), b.num_layers());
  ASSERT_EQ(a.max_rank(), b.max_rank());
  for (int l = 0; l < a.num_layers(); ++l)
    for (int m = 0; m < kNumModules; ++m) {
      const auto& fa = a.factors(l, static_cast<Module>(m));
      const auto& fb = b.factors(l, static_cast<Module>(m));
      ASSERT_EQ(!fa.a, !fb.a);
      if (!fa.a) continue;
      EXPECT_EQ(fa.a->format(), fb.a->format());
      const auto x = fa.a->Dequantize(), y = fb.a->Dequantize();
      const auto xb = fa.bt->Dequantize(), yb = fb.bt->Dequantize();
      ASSERT_EQ(x.size(), y.size());
      ASSERT_EQ(xb.size(), yb.size());
      for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(x[i], y[i], tol);
      for (size_t i = 0; i < xb.size(); ++i) EXPECT_NEAR(xb[i], yb[i], tol);
    }
}

TEST(AdapterIo, PeftFilesFollowTheSpec) {
  const ModelConfig c = TinyConfig();
  const int R = 6;
  auto adapter = RandomAdapter(R, 32);
  const std::string dir = MakeTempDir("adapter") + "/out";
  ASSERT_TRUE(WriteAdapterDir(dir, *adapter, SampleMeta(c, R)).ok());

  // adapter_config.json fields a PEFT reader needs.
  const json cfg = json::parse(ReadFileOrDie(dir + "/adapter_config.json"));
  EXPECT_EQ(cfg.at("peft_type"), "LORA");
  EXPECT_EQ(cfg.at("task_type"), "CAUSAL_LM");
  EXPECT_EQ(cfg.at("r"), R);
  EXPECT_EQ(cfg.at("lora_alpha"), R);  // scale alpha / r = 1
  std::set<std::string> targets;
  for (const auto& t : cfg.at("target_modules")) targets.insert(t.get<std::string>());
  EXPECT_EQ(targets, std::set<std::string>(std::begin(kModules), std::end(kModules)));
  EXPECT_EQ(cfg.at("bias"), "none");
  EXPECT_EQ(cfg.at("fan_in_fan_out"), false);

  // adapter_model.safetensors: exactly A [r, in] and B [out, r] per module and layer.
  const SpecFile f = ReadSafetensorsBySpec(dir + "/adapter_model.safetensors");
  EXPECT_EQ(f.tensors.size(), static_cast<size_t>(c.n_layers * kNumModules * 2));
  EXPECT_EQ(f.metadata.at("format"), "pt");
  const int in[] = {c.dim, c.dim, c.dim, c.q_dim(), c.dim, c.dim, c.ffn_dim};
  const int out[] = {c.q_dim(), c.kv_dim(), c.kv_dim(), c.dim, c.ffn_dim, c.ffn_dim, c.dim};
  for (int l = 0; l < c.n_layers; ++l)
    for (int m = 0; m < kNumModules; ++m) {
      const std::string parent = m < 4 ? "self_attn" : "mlp";
      const std::string p = "base_model.model.model.layers." + std::to_string(l) + "." + parent +
                            "." + kModules[m];
      ASSERT_TRUE(f.tensors.count(p + ".lora_A.weight")) << p;
      ASSERT_TRUE(f.tensors.count(p + ".lora_B.weight")) << p;
      const SpecTensor& a = f.tensors.at(p + ".lora_A.weight");
      const SpecTensor& b = f.tensors.at(p + ".lora_B.weight");
      EXPECT_EQ(a.dtype, "F32");
      EXPECT_EQ(b.dtype, "F32");
      EXPECT_EQ(a.shape, (std::vector<int64_t>{R, in[m]}));
      EXPECT_EQ(b.shape, (std::vector<int64_t>{out[m], R}));
      // Values: A as stored, B the transpose of the engine's Bt.
      const auto& fac = adapter->factors(l, static_cast<Module>(m));
      const auto av = AsFloats(a), bv = AsFloats(b);
      const auto ea = fac.a->Dequantize(), ebt = fac.bt->Dequantize();
      EXPECT_EQ(av, ea);
      for (int o = 0; o < out[m]; ++o)
        for (int j = 0; j < R; ++j) ASSERT_EQ(bv[o * R + j], ebt[j * out[m] + o]);
    }

  // Our metadata side file.
  const json meta = json::parse(ReadFileOrDie(dir + "/eora_adapter.json"));
  EXPECT_EQ(meta.at("method"), "eora");
  EXPECT_EQ(meta.at("rank"), R);
  EXPECT_EQ(meta.at("profile").size(), 3u);
  EXPECT_FALSE(fs::exists(dir + "/eora_factors.safetensors"));  // float factors only
}

TEST(AdapterIo, RoundTripFloatAndMetadata) {
  const ModelConfig c = TinyConfig();
  for (int bits : {32, 16}) {
    auto adapter = RandomAdapter(5, bits);
    const std::string dir = MakeTempDir("adapter") + "/a";
    const AdapterMetadata meta = SampleMeta(c, 5);
    ASSERT_TRUE(WriteAdapterDir(dir, *adapter, meta).ok());
    AdapterMetadata got;
    auto loaded = LoadAdapterDir(dir, c, "x", &got);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ((*loaded)->name(), "x");
    ExpectSameFactors(*adapter, **loaded);
    EXPECT_EQ(got.method, "eora");
    EXPECT_EQ(got.rank, 5);
    EXPECT_EQ(got.factor_bits, 16);
    EXPECT_EQ(got.base_fingerprint, ArchitectureFingerprint(c));
    EXPECT_EQ(got.calibration_hash, "deadbeef");
    EXPECT_EQ(got.calibration_seqs, 16);
    ASSERT_EQ(got.profile.size(), 3u);
    EXPECT_EQ(got.profile[2].rank, 5);
    EXPECT_DOUBLE_EQ(got.profile[1].nll, 2.4);
    EXPECT_EQ(got.extra.at("compressed_method"), "gptq");
    auto md = ReadAdapterMetadata(dir);
    ASSERT_TRUE(md.ok());
    EXPECT_EQ(md->rank, 5);
    if (bits == 16) {
      const SpecFile f = ReadSafetensorsBySpec(dir + "/adapter_model.safetensors");
      EXPECT_EQ(f.tensors.begin()->second.dtype, "F16");
    }
  }
}

TEST(AdapterIo, QuantizedFactorsAreServedPacked) {
  const ModelConfig c = TinyConfig();
  for (int bits : {4, 3}) {
    auto adapter = RandomAdapter(8, bits);
    ASSERT_EQ(adapter->factors(0, Module::kQ).a->format(), MatrixFormat::kQuant);
    const std::string dir = MakeTempDir("adapter") + "/q";
    ASSERT_TRUE(WriteAdapterDir(dir, *adapter, SampleMeta(c, 8)).ok());
    AdapterMetadata got;
    auto loaded = LoadAdapterDir(dir, c, "q", &got);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(got.factor_bits, bits);
    ExpectSameFactors(*adapter, **loaded);
    EXPECT_EQ((*loaded)->bytes(), adapter->bytes());
    // The PEFT file carries the dequantized values (readable by any PEFT tool).
    const SpecFile f = ReadSafetensorsBySpec(dir + "/adapter_model.safetensors");
    const auto& fac = adapter->factors(1, Module::kDown);
    EXPECT_EQ(AsFloats(f.tensors.at("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight")),
              fac.a->Dequantize());
    // The packed file: U8 codes and F16 scales/mins.
    const SpecFile p = ReadSafetensorsBySpec(dir + "/eora_factors.safetensors");
    EXPECT_EQ(p.metadata.at("bits"), std::to_string(bits));
    const SpecTensor& q = p.tensors.at("base_model.model.model.layers.1.mlp.down_proj.lora_A.qweight");
    EXPECT_EQ(q.dtype, "U8");
    EXPECT_EQ(q.shape, (std::vector<int64_t>{8, ((c.ffn_dim + 31) / 32) * QuantBlockBytes(bits)}));
    EXPECT_EQ(p.tensors.at("base_model.model.model.layers.1.mlp.down_proj.lora_Bt.scales").dtype, "F16");
    // Served straight from the packed file, even without the PEFT copy.
    fs::remove(dir + "/adapter_model.safetensors");
    auto again = LoadAdapterDir(dir, c, "q");
    ASSERT_TRUE(again.ok()) << again.status();
    ExpectSameFactors(*adapter, **again);
    if (bits != 3) continue;
    // The same file as packed format versions 1 and 2 wrote it (earlier 3-bit
    // block layouts, docs/formats.md) loads with the same factors.
    const std::string packed_path = dir + "/eora_factors.safetensors";
    const std::string current = ReadFileOrDie(packed_path);
    for (int version : {1, 2}) {
      SCOPED_TRACE(version);
      std::string st = current;
      uint64_t header_len = 0;
      std::memcpy(&header_len, st.data(), 8);
      const json header = json::parse(st.substr(8, header_len));
      for (const auto& [name, t] : header.items()) {
        if (name.size() < 8 || name.substr(name.size() - 8) != ".qweight") continue;
        const size_t begin = 8 + header_len + t["data_offsets"][0].get<size_t>();
        testing::RewriteQ3RowsAsVersion(version, st.data() + begin, t["shape"][0], t["shape"][1]);
      }
      EXPECT_NE(st, current);
      const size_t key = st.find("\"packed_format_version\"");
      ASSERT_NE(key, std::string::npos);
      const size_t val = st.find("\"" + std::to_string(kPackedFormatVersion) + "\"", key);
      ASSERT_LT(val, 8 + header_len);
      st[val + 1] = static_cast<char>('0' + version);
      WriteFileOrDie(packed_path, st);
      auto old = LoadAdapterDir(dir, c, "q");
      ASSERT_TRUE(old.ok()) << old.status();
      ExpectSameFactors(*adapter, **old);
    }
  }
}

// An adapter written by hand the way PEFT writes one (F16, lora_alpha = 2r, no
// metadata side file, only q and v adapted): the loader folds alpha / r into B.
TEST(AdapterIo, ReadsForeignPeftAdapter) {
  const ModelConfig c = TinyConfig();
  const std::string dir = MakeTempDir("peft");
  const int R = 4;
  json header = json::object();
  std::string data;
  std::map<std::string, std::vector<float>> values;
  uint64_t off = 0;
  for (int l = 0; l < c.n_layers; ++l)
    for (const char* mod : {"q_proj", "v_proj"}) {
      const int out = std::string(mod) == "q_proj" ? c.q_dim() : c.kv_dim();
      for (const char* ab : {"A", "B"}) {
        const bool is_a = ab[0] == 'A';
        const std::string name = "base_model.model.model.layers." + std::to_string(l) +
                                 ".self_attn." + mod + ".lora_" + ab + ".weight";
        const int rows = is_a ? R : out, cols = is_a ? c.dim : R;
        std::vector<float> v(rows * cols);
        for (size_t i = 0; i < v.size(); ++i) v[i] = F16ToF32(F32ToF16(0.01f * ((i * 7 + l) % 23) - 0.1f));
        values[name] = v;
        for (float x : v) {
          const uint16_t h = F32ToF16(x);
          data.append(reinterpret_cast<const char*>(&h), 2);
        }
        header[name] = {{"dtype", "F16"}, {"shape", {rows, cols}}, {"data_offsets", {off, off + v.size() * 2}}};
        off += v.size() * 2;
      }
    }
  std::string h = header.dump();
  while (h.size() % 8) h.push_back(' ');
  std::string file(8, '\0');
  for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((h.size() >> (8 * i)) & 0xff);
  WriteFileOrDie(dir + "/adapter_model.safetensors", file + h + data);
  WriteFileOrDie(dir + "/adapter_config.json",
                 json{{"peft_type", "LORA"}, {"r", R}, {"lora_alpha", 2 * R},
                      {"target_modules", {"q_proj", "v_proj"}}, {"task_type", "CAUSAL_LM"}}
                     .dump());
  AdapterMetadata meta;
  auto a = LoadAdapterDir(dir, c, "foreign", &meta);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(meta.method, "peft");
  EXPECT_EQ((*a)->max_rank(), R);
  EXPECT_FALSE((*a)->factors(0, Module::kK).a);
  const auto& f = (*a)->factors(1, Module::kV);
  EXPECT_EQ(f.a->format(), MatrixFormat::kF16);
  const auto bt = f.bt->Dequantize();
  const auto& b = values.at("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight");
  for (int o = 0; o < c.kv_dim(); ++o)
    for (int j = 0; j < R; ++j) EXPECT_FLOAT_EQ(bt[j * c.kv_dim() + o], 2.0f * b[o * R + j]);
}

TEST(AdapterIo, ValidationErrorsNameFileAndTensor) {
  const ModelConfig c = TinyConfig();
  auto adapter = RandomAdapter(4, 32);
  const std::string root = MakeTempDir("adapter");
  const std::string dir = root + "/a";
  ASSERT_TRUE(WriteAdapterDir(dir, *adapter, SampleMeta(c, 4)).ok());

  // Missing directory.
  EXPECT_EQ(LoadAdapterDir(root + "/none", c, "x").status().code(), absl::StatusCode::kNotFound);

  // Another model: fingerprint mismatch.
  ModelConfig other = c;
  other.ffn_dim = 128;
  auto s = LoadAdapterDir(dir, other, "x").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("eora_adapter.json"), std::string::npos) << s;

  // Without the side file, the shape check catches it and names the tensor.
  const std::string bare = root + "/bare";
  fs::create_directory(bare);
  fs::copy_file(dir + "/adapter_config.json", bare + "/adapter_config.json");
  fs::copy_file(dir + "/adapter_model.safetensors", bare + "/adapter_model.safetensors");
  ASSERT_TRUE(LoadAdapterDir(bare, c, "x").ok());
  s = LoadAdapterDir(bare, other, "x").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("adapter_model.safetensors"), std::string::npos) << s;
  EXPECT_NE(s.message().find("_proj.lora_"), std::string::npos) << s;

  // r in the config disagrees with the tensors.
  json cfg = json::parse(ReadFileOrDie(bare + "/adapter_config.json"));
  cfg["r"] = 5;
  cfg["lora_alpha"] = 5;
  WriteFileOrDie(bare + "/adapter_config.json", cfg.dump());
  s = LoadAdapterDir(bare, c, "x").status();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("rank 4"), std::string::npos) << s;
  EXPECT_NE(s.message().find("lora_A.weight"), std::string::npos) << s;

  // Not LoRA.
  cfg["r"] = 4;
  cfg["peft_type"] = "IA3";
  WriteFileOrDie(bare + "/adapter_config.json", cfg.dump());
  s = LoadAdapterDir(bare, c, "x").status();
  EXPECT_NE(s.message().find("adapter_config.json"), std::string::npos) << s;

  // Garbage config.
  WriteFileOrDie(bare + "/adapter_config.json", "{not json");
  s = LoadAdapterDir(bare, c, "x").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);

  // Truncated weights file.
  cfg["peft_type"] = "LORA";
  WriteFileOrDie(bare + "/adapter_config.json", cfg.dump());
  std::string w = ReadFileOrDie(bare + "/adapter_model.safetensors");
  WriteFileOrDie(bare + "/adapter_model.safetensors", w.substr(0, w.size() - 10));
  s = LoadAdapterDir(bare, c, "x").status();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("adapter_model.safetensors"), std::string::npos) << s;
}

TEST(AdapterIo, AtomicWriteAndOverwrite) {
  const ModelConfig c = TinyConfig();
  const std::string root = MakeTempDir("adapter");
  const std::string dir = root + "/a";
  auto a1 = RandomAdapter(3, 32, 1), a2 = RandomAdapter(3, 32, 2);
  ASSERT_TRUE(WriteAdapterDir(dir, *a1, SampleMeta(c, 3)).ok());
  auto s = WriteAdapterDir(dir, *a2, SampleMeta(c, 3));
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  auto loaded = LoadAdapterDir(dir, c, "x");
  ASSERT_TRUE(loaded.ok());
  ExpectSameFactors(*a1, **loaded);
  ASSERT_TRUE(WriteAdapterDir(dir, *a2, SampleMeta(c, 3), /*overwrite=*/true).ok());
  loaded = LoadAdapterDir(dir, c, "x");
  ASSERT_TRUE(loaded.ok());
  ExpectSameFactors(*a2, **loaded);
  // Metadata inconsistent with the adapter: refused, nothing left behind.
  AdapterMetadata bad = SampleMeta(c, 3);
  bad.rank = 7;
  EXPECT_FALSE(WriteAdapterDir(root + "/b", *a1, bad).ok());
  int entries = 0;
  for (const auto& e : fs::directory_iterator(root)) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1);  // only "a": no temporary directories remain
}

}  // namespace
}  // namespace eora
