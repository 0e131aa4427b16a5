// Compressed model directories: every engine matrix format round-trips bit for bit
// (identical logits), tokenizers are carried along, errors name file and tensor.
#include "engine/compressed_model.h"

#include <cstring>
#include <filesystem>

#include "engine/model.h"
#include "engine/model_loader.h"
#include "engine/quant_matrix.h"
#include "engine/synthetic.h"
#include "engine/thread_pool.h"
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

std::shared_ptr<ModelWeights> Stories() {
  auto w = LoadModel(testing::Stories260kPath());
  EXPECT_TRUE(w.ok()) << w.status();
  return std::make_shared<ModelWeights>(std::move(*w));
}

std::vector<float> AllLogits(std::shared_ptr<const ModelWeights> w, const std::vector<int>& tokens) {
  ThreadPool pool(2);
  Model m(std::move(w), &pool);
  KvCache cache(m.config(), 256);
  KvSequence s = cache.NewSequence();
  SequenceChunk ch{&s, tokens, nullptr, 0, LogitsMode::kAll};
  std::vector<float> logits;
  EXPECT_TRUE(m.Forward({&ch, 1}, &cache, &logits).ok());
  return logits;
}

std::shared_ptr<const Matrix> QuantizeMatrix(const Matrix& m, int bits, int group) {
  const auto f = m.Dequantize();
  auto q = MakeQuantizedMatrix(QuantizeRtn(f.data(), m.rows(), m.cols(), {bits, group}));
  EXPECT_TRUE(q.ok()) << q.status();
  return std::shared_ptr<const Matrix>(std::move(*q));
}

// A model using every format: layer 0 q4 g32, layer 1 2:4 f16, layer 2 2:4 + q3,
// layer 3 f16, layer 4 q2 per channel; embedding q4 (shared with the output).
std::shared_ptr<ModelWeights> MixedModel(const ModelWeights& base) {
  auto w = std::make_shared<ModelWeights>(base);
  WeightStorage q4{4, 32, false}, sp{32, 64, true}, spq{3, 32, true}, f16{16, 64, false},
      q2{2, 0, false};
  const WeightStorage per_layer[] = {q4, sp, spq, f16, q2};
  for (int l = 0; l < w->config.n_layers; ++l)
    for (int m = 0; m < kNumModules; ++m) {
      const auto f = base.layers[l].linear[m]->Dequantize();
      const Matrix& src = *base.layers[l].linear[m];
      std::vector<float> pruned = f;
      if (per_layer[l % 5].sparse24)  // keep the 2 largest of every 4
        for (int r = 0; r < src.rows(); ++r)
          for (int c = 0; c + 3 < src.cols(); c += 4) {
            float* g = &pruned[static_cast<size_t>(r) * src.cols() + c];
            int a = 0, b = 1;
            if (std::fabs(g[b]) > std::fabs(g[a])) std::swap(a, b);
            for (int k = 2; k < 4; ++k) {
              if (std::fabs(g[k]) > std::fabs(g[a])) { b = a; a = k; }
              else if (std::fabs(g[k]) > std::fabs(g[b])) b = k;
            }
            for (int k = 0; k < 4; ++k)
              if (k != a && k != b) g[k] = 0;
          }
      auto mm = MakeMatrix(pruned.data(), src.rows(), src.cols(), per_layer[l % 5]);
      EXPECT_TRUE(mm.ok()) << mm.status();
      w->layers[l].linear[m] = std::move(*mm);
    }
  w->token_embedding = QuantizeMatrix(*base.token_embedding, 4, 32);
  w->output = w->token_embedding;
  return w;
}

TEST(CompressedModel, EveryFormatRoundTripsWithIdenticalLogits) {
  auto base = Stories();
  ASSERT_TRUE(base->tokenizer);
  auto mixed = MixedModel(*base);
  const std::string dir = MakeTempDir("cm") + "/model";
  ASSERT_TRUE(WriteCompressedModel(dir, *mixed, {{"method", "test"}}).ok());
  CompressedModelInfo info;
  auto loaded = LoadCompressedModel(dir, &info);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(info.version, 1);
  EXPECT_EQ(info.metadata.at("method"), "test");
  EXPECT_EQ(info.content_sha256.size(), 64u);
  EXPECT_GT(info.bytes, 0u);
  auto lw = std::make_shared<ModelWeights>(std::move(*loaded));
  for (int l = 0; l < 5; ++l)
    for (int m = 0; m < kNumModules; ++m) {
      EXPECT_EQ(lw->layers[l].linear[m]->format(), mixed->layers[l].linear[m]->format());
      EXPECT_EQ(lw->layers[l].linear[m]->Describe(), mixed->layers[l].linear[m]->Describe());
      EXPECT_EQ(lw->layers[l].linear[m]->Dequantize(), mixed->layers[l].linear[m]->Dequantize());
    }
  EXPECT_EQ(lw->token_embedding->format(), MatrixFormat::kQuant);
  EXPECT_EQ(lw->output.get(), lw->token_embedding.get());
  // Tokenizer carried along.
  const std::string text = "Once upon a time, there was a little dog named Max.";
  ASSERT_TRUE(lw->tokenizer);
  const auto toks = base->tokenizer->Encode(text, true);
  EXPECT_EQ(lw->tokenizer->Encode(text, true), toks);
  EXPECT_EQ(lw->tokenizer->Decode(toks), base->tokenizer->Decode(toks));
  // Identical logits.
  EXPECT_EQ(AllLogits(lw, toks), AllLogits(mixed, toks));
  // Writing the loaded model again gives the same content hash.
  const std::string dir2 = MakeTempDir("cm") + "/again";
  ASSERT_TRUE(WriteCompressedModel(dir2, *lw, {}).ok());
  CompressedModelInfo info2;
  ASSERT_TRUE(LoadCompressedModel(dir2, &info2).ok());
  EXPECT_EQ(info2.content_sha256, info.content_sha256);
  EXPECT_TRUE(IsCompressedModelDir(dir));
  EXPECT_FALSE(IsCompressedModelDir(testing::Stories260kPath()));
}

// Directories written by packed format versions 1 and 2 (earlier 3-bit block
// layouts, docs/formats.md) still load, with the same codes: their 3-bit blocks
// are rewritten on load.
TEST(CompressedModel, ReadsEarlierPackedFormatVersions) {
  auto base = Stories();
  auto w3 = std::make_shared<ModelWeights>(*base);
  const WeightStorage q3{3, 64, false}, spq3{3, 32, true};
  for (int l = 0; l < w3->config.n_layers; ++l)
    for (int m = 0; m < kNumModules; ++m) {
      const Matrix& src = *base->layers[l].linear[m];
      const auto f = src.Dequantize();
      auto mm = MakeMatrix(f.data(), src.rows(), src.cols(), l % 2 == 0 ? q3 : spq3);
      ASSERT_TRUE(mm.ok()) << mm.status();
      w3->layers[l].linear[m] = std::move(*mm);
    }
  const auto toks = base->tokenizer->Encode("Once upon a time", true);
  const auto want_logits = AllLogits(w3, toks);
  for (int version : {1, 2}) {
    SCOPED_TRACE(version);
    const std::string dir = MakeTempDir("cm") + "/old";
    ASSERT_TRUE(WriteCompressedModel(dir, *w3, {}).ok());

    // Rewrite the directory as that version.
    const std::string json_path = dir + "/eora_model.json";
    json j = json::parse(ReadFileOrDie(json_path));
    ASSERT_EQ(j["packed_format_version"], kPackedFormatVersion);
    std::string weights_path;
    for (const auto& e : fs::directory_iterator(dir))
      if (e.path().extension() == ".safetensors") weights_path = e.path().string();
    ASSERT_FALSE(weights_path.empty());
    std::string st = ReadFileOrDie(weights_path);
    const std::string current = st;
    uint64_t header_len = 0;
    std::memcpy(&header_len, st.data(), 8);
    const json header = json::parse(st.substr(8, header_len));
    int rewritten = 0;
    for (const auto& [name, entry] : j["tensors"].items()) {
      if (!entry.contains("bits") || entry["bits"] != 3) continue;
      const json& t = header.at(name + ".qweight");
      const size_t begin = 8 + header_len + t["data_offsets"][0].get<size_t>();
      testing::RewriteQ3RowsAsVersion(version, st.data() + begin, t["shape"][0], t["shape"][1]);
      ++rewritten;
    }
    EXPECT_EQ(rewritten, w3->config.n_layers * kNumModules);
    EXPECT_NE(st, current);
    WriteFileOrDie(weights_path, st);
    j["packed_format_version"] = version;
    WriteFileOrDie(json_path, j.dump(2));

    auto loaded = LoadCompressedModel(dir, nullptr);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    auto lw = std::make_shared<ModelWeights>(std::move(*loaded));
    for (int l = 0; l < w3->config.n_layers; ++l)
      for (int m = 0; m < kNumModules; ++m)
        EXPECT_EQ(lw->layers[l].linear[m]->Dequantize(), w3->layers[l].linear[m]->Dequantize())
            << "layer " << l << " module " << m;
    EXPECT_EQ(AllLogits(lw, toks), want_logits);

    // A version this build does not know is refused, naming the file.
    j["packed_format_version"] = kPackedFormatVersion + 1;
    WriteFileOrDie(json_path, j.dump(2));
    auto bad = LoadCompressedModel(dir, nullptr);
    EXPECT_EQ(bad.status().code(), absl::StatusCode::kUnimplemented);
    EXPECT_NE(bad.status().message().find("eora_model.json"), std::string::npos) << bad.status();
  }
}

TEST(CompressedModel, FloatModelAndHfTokenizer) {
  auto base = Stories();
  const std::string root = MakeTempDir("cm");
  // Hugging Face source: tokenizer.json is copied.
  ASSERT_TRUE(WriteHfCheckpoint(*base, root + "/hf", DType::kF32).ok());
  auto hf = LoadModel(root + "/hf");
  ASSERT_TRUE(hf.ok()) << hf.status();
  ASSERT_TRUE(WriteCompressedModel(root + "/c", *hf, {}).ok());
  EXPECT_TRUE(fs::exists(root + "/c/tokenizer.json"));
  auto loaded = LoadCompressedModel(root + "/c/eora_model.json");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  const std::string text = "The cat sat on the mat and looked at the sun.";
  EXPECT_EQ(loaded->tokenizer->Encode(text, true), hf->tokenizer->Encode(text, true));
  const auto toks = hf->tokenizer->Encode(text, true);
  auto a = std::make_shared<ModelWeights>(std::move(*loaded));
  auto b = std::make_shared<ModelWeights>(std::move(*hf));
  EXPECT_EQ(AllLogits(a, toks), AllLogits(b, toks));
}

TEST(CompressedModel, ErrorsNameFileAndTensor) {
  auto base = Stories();
  const std::string root = MakeTempDir("cm");
  const std::string dir = root + "/m";
  ASSERT_TRUE(WriteCompressedModel(dir, *MixedModel(*base), {}).ok());
  EXPECT_EQ(WriteCompressedModel(dir, *base, {}).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(LoadCompressedModel(root + "/nope").status().code(), absl::StatusCode::kNotFound);

  auto copy = [&](const std::string& name) {
    const std::string d = root + "/" + name;
    fs::create_directory(d);
    for (const auto& e : fs::directory_iterator(dir)) fs::copy_file(e.path(), d + "/" + e.path().filename().string());
    return d;
  };
  // Unsupported version.
  std::string d = copy("v2");
  json j = json::parse(ReadFileOrDie(d + "/eora_model.json"));
  j["version"] = 2;
  WriteFileOrDie(d + "/eora_model.json", j.dump());
  auto s = LoadCompressedModel(d).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(s.message().find("eora_model.json"), std::string::npos) << s;

  // Shape in the JSON disagrees with the config.
  d = copy("shape");
  j = json::parse(ReadFileOrDie(d + "/eora_model.json"));
  j["tensors"]["layers.2.mlp.up_proj"]["cols"] = 65;
  WriteFileOrDie(d + "/eora_model.json", j.dump());
  s = LoadCompressedModel(d).status();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("layers.2.mlp.up_proj"), std::string::npos) << s;

  // Wrong bit width for the stored codes.
  d = copy("bits");
  j = json::parse(ReadFileOrDie(d + "/eora_model.json"));
  j["tensors"]["layers.0.self_attn.q_proj"]["bits"] = 3;
  WriteFileOrDie(d + "/eora_model.json", j.dump());
  s = LoadCompressedModel(d).status();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("layers.0.self_attn.q_proj.qweight"), std::string::npos) << s;

  // Truncated weights.
  d = copy("trunc");
  std::string w = ReadFileOrDie(d + "/weights.safetensors");
  WriteFileOrDie(d + "/weights.safetensors", w.substr(0, w.size() / 2));
  s = LoadCompressedModel(d).status();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("weights.safetensors"), std::string::npos) << s;

  // Garbage JSON.
  d = copy("garbage");
  WriteFileOrDie(d + "/eora_model.json", "[1, 2");
  s = LoadCompressedModel(d).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("eora_model.json"), std::string::npos) << s;
}

}  // namespace
}  // namespace eora
