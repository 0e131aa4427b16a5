#include "engine/model_loader.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace eora {
namespace {

namespace fs = std::filesystem;
using ::eora::testing::MakeTempDir;
using ::eora::testing::ReadFileOrDie;
using ::eora::testing::Stories260kPath;
using ::eora::testing::WriteFileOrDie;

::testing::AssertionResult HasSub(const std::string& s, const std::string& sub) {
  if (s.find(sub) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << s << "\" does not contain \"" << sub << "\"";
}

constexpr size_t kStoriesDataOffset = 14176;  // data section of stories260K.gguf

// Row r of a float tensor stored in the GGUF file at data-section offset `off`.
std::vector<float> RawRow(const std::string& file, uint64_t off, int cols, int r) {
  std::vector<float> out(cols);
  std::memcpy(out.data(),
              file.data() + kStoriesDataOffset + off + static_cast<size_t>(r) * cols * 4, cols * 4);
  return out;
}

// llama.cpp's convert_hf_to_gguf.py permute (HF rotate-half -> GGUF interleaved):
//   w.reshape(n_head, 2, head_dim // 2, dim).swapaxes(1, 2).reshape(w.shape)
// written out element by element.
std::vector<float> HfToGgufPermute(const std::vector<float>& w, int n_head, int rows, int cols) {
  const int hd = rows / n_head, half = hd / 2;
  std::vector<float> out(w.size());
  for (int h = 0; h < n_head; ++h)
    for (int s = 0; s < 2; ++s)
      for (int j = 0; j < half; ++j)
        for (int c = 0; c < cols; ++c)
          // reshaped index [h][s][j][c] moves to [h][j][s][c]
          out[((static_cast<size_t>(h) * half + j) * 2 + s) * cols + c] =
              w[((static_cast<size_t>(h) * 2 + s) * half + j) * cols + c];
  return out;
}

std::vector<float> RoundTo(DType t, std::vector<float> v) {
  for (float& x : v) {
    if (t == DType::kF16) x = F16ToF32(F32ToF16(x));
    if (t == DType::kBF16) x = BF16ToF32(F32ToBF16(x));
  }
  return v;
}

class ModelLoaderTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir("model_loader_test"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string P(const std::string& name) const { return dir_ + "/" + name; }
  static size_t Find(const std::string& s, const std::string& needle) {
    const size_t p = s.find(needle);
    EXPECT_NE(p, std::string::npos) << needle;
    return p;
  }
  template <typename T>
  static void Poke(std::string& s, size_t at, T v) {
    std::memcpy(s.data() + at, &v, sizeof(T));
  }
  // Offset just after the name of tensor `name` in the GGUF header (its tensor info).
  static size_t TensorInfo(const std::string& file, const std::string& name) {
    // Tensor names follow the metadata; search after the last metadata key.
    const size_t from = file.find("llama.attention.layer_norm_rms_epsilon");
    const size_t p = file.find(name, from);
    EXPECT_NE(p, std::string::npos) << name;
    return p + name.size();
  }
  std::string dir_;
};

TEST_F(ModelLoaderTest, LoadsStories260k) {
  auto w = LoadModel(Stories260kPath());
  ASSERT_TRUE(w.ok()) << w.status();
  const ModelConfig& c = w->config;
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.ffn_dim, 172);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_seq_len, 2048);
  EXPECT_FLOAT_EQ(c.norm_eps, 1e-5f);
  EXPECT_EQ(c.rope_theta, 10000.f);
  EXPECT_EQ(c.rope_style, RopeStyle::kInterleaved);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_EQ(w->output, w->token_embedding);
  EXPECT_EQ(w->source, Stories260kPath());
  EXPECT_TRUE(w->Validate().ok());
  ASSERT_EQ(w->layers.size(), 5u);
  EXPECT_EQ(w->token_embedding->rows(), 512);
  EXPECT_EQ(w->token_embedding->cols(), 64);
  EXPECT_EQ(w->token_embedding->format(), MatrixFormat::kF32);
  const LayerWeights& l = w->layers[2];
  EXPECT_EQ(l.w(Module::kQ).rows(), 64);
  EXPECT_EQ(l.w(Module::kK).rows(), 32);
  EXPECT_EQ(l.w(Module::kV).rows(), 32);
  EXPECT_EQ(l.w(Module::kO).cols(), 64);
  EXPECT_EQ(l.w(Module::kGate).rows(), 172);
  EXPECT_EQ(l.w(Module::kUp).rows(), 172);
  EXPECT_EQ(l.w(Module::kDown).rows(), 64);
  EXPECT_EQ(l.w(Module::kDown).cols(), 172);
  EXPECT_EQ(l.attn_norm.size(), 64u);
  EXPECT_EQ(w->output_norm.size(), 64u);

  // Values are the file's, row-major: ne = [cols, rows].
  const std::string file = ReadFileOrDie(Stories260kPath());
  std::vector<float> row(172);
  l.w(Module::kQ).DequantizeRow(5, row.data());
  EXPECT_EQ(std::vector<float>(row.begin(), row.begin() + 64), RawRow(file, 625920, 64, 5));
  l.w(Module::kDown).DequantizeRow(63, row.data());
  EXPECT_EQ(row, RawRow(file, 719360, 172, 63));
  EXPECT_EQ(l.attn_norm, RawRow(file, 675072, 64, 0));
  EXPECT_EQ(w->layers[4].ffn_norm, RawRow(file, 1170944, 64, 0));

  ASSERT_NE(w->tokenizer, nullptr);
  EXPECT_EQ(w->tokenizer->vocab_size(), 512);
  EXPECT_EQ(w->tokenizer->bos_id(), 1);
  EXPECT_EQ(w->tokenizer->eos_id(), 2);
  EXPECT_EQ(w->tokenizer->Piece(1), "<s>");
}

TEST_F(ModelLoaderTest, ConvertsDenseStorage) {
  LoadOptions opt;
  opt.convert_dense = true;
  opt.dense_dtype = DType::kBF16;
  auto w = LoadModel(Stories260kPath(), opt);
  ASSERT_TRUE(w.ok()) << w.status();
  auto ref = LoadModel(Stories260kPath());
  ASSERT_TRUE(ref.ok());
  EXPECT_EQ(w->token_embedding->format(), MatrixFormat::kBF16);
  EXPECT_EQ(w->layers[0].w(Module::kUp).format(), MatrixFormat::kBF16);
  EXPECT_EQ(w->layers[0].w(Module::kUp).Dequantize(),
            RoundTo(DType::kBF16, ref->layers[0].w(Module::kUp).Dequantize()));
  EXPECT_EQ(w->layers[0].attn_norm, ref->layers[0].attn_norm);  // norms stay float
}

TEST_F(ModelLoaderTest, GgufErrorsNameFileAndTensor) {
  const std::string orig = ReadFileOrDie(Stories260kPath());
  {  // Unsupported tensor type (Q4_0; same byte size is not needed, offsets still fit).
    std::string b = orig;
    Poke<uint32_t>(b, TensorInfo(b, "blk.3.attn_v.weight") + 4 + 16, 2);
    const std::string path = P("q4.gguf");
    WriteFileOrDie(path, b);
    auto w = LoadModel(path);
    ASSERT_FALSE(w.ok());
    EXPECT_EQ(w.status().code(), absl::StatusCode::kUnimplemented);
    const std::string msg(w.status().message());
    EXPECT_TRUE(HasSub(msg, "q4.gguf"));
    EXPECT_TRUE(HasSub(msg, "blk.3.attn_v.weight"));
    EXPECT_TRUE(HasSub(msg, "Q4_0"));
  }
  {  // Wrong shape: k stored as ne [32, 64] (a [64 x 32] matrix) instead of [64, 32].
    std::string b = orig;
    const size_t info = TensorInfo(b, "blk.1.attn_k.weight");
    Poke<uint64_t>(b, info + 4, 32);
    Poke<uint64_t>(b, info + 12, 64);
    const std::string path = P("shape.gguf");
    WriteFileOrDie(path, b);
    auto w = LoadModel(path);
    ASSERT_FALSE(w.ok());
    const std::string msg(w.status().message());
    EXPECT_TRUE(HasSub(msg, "shape.gguf"));
    EXPECT_TRUE(HasSub(msg, "blk.1.attn_k.weight"));
    EXPECT_TRUE(HasSub(msg, "[64, 32]"));
    EXPECT_TRUE(HasSub(msg, "expected [32, 64]"));
  }
  {  // Missing tensor (renamed).
    std::string b = orig;
    const size_t at = TensorInfo(b, "blk.3.ffn_up.weight") - std::string("up.weight").size();
    b.replace(at, 2, "xx");
    const std::string path = P("missing.gguf");
    WriteFileOrDie(path, b);
    auto w = LoadModel(path);
    ASSERT_FALSE(w.ok());
    EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "missing.gguf"));
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "blk.3.ffn_up.weight"));
  }
  {  // Unsupported architecture.
    std::string b = orig;
    const size_t key = Find(b, "general.architecture") + std::string("general.architecture").size();
    b.replace(key + 4 + 8, 5, "gptxx");
    const std::string path = P("arch.gguf");
    WriteFileOrDie(path, b);
    auto w = LoadModel(path);
    ASSERT_FALSE(w.ok());
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "arch.gguf"));
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "gptxx"));
  }
  {  // Hyper-parameter inconsistent with the tensors.
    std::string b = orig;
    const size_t key =
        Find(b, "llama.feed_forward_length") + std::string("llama.feed_forward_length").size();
    Poke<uint32_t>(b, key + 4, 170);
    const std::string path = P("ffn.gguf");
    WriteFileOrDie(path, b);
    auto w = LoadModel(path);
    ASSERT_FALSE(w.ok());
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "ffn.gguf"));
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "blk.0.ffn_gate.weight"));
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "expected [170, 64]"));
  }
  {  // Truncated copy.
    const std::string path = P("cut.gguf");
    WriteFileOrDie(path, orig.substr(0, orig.size() / 2));
    auto w = LoadModel(path);
    ASSERT_FALSE(w.ok());
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "cut.gguf"));
  }
  EXPECT_EQ(LoadModel(P("nothing.gguf")).status().code(), absl::StatusCode::kNotFound);
  WriteFileOrDie(P("text.bin"), "hello world");
  auto w = LoadModel(P("text.bin"));
  ASSERT_FALSE(w.ok());
  EXPECT_TRUE(HasSub(std::string(w.status().message()), "text.bin"));
}

// Un-permuting q/k: HF q = inverse permute of the GGUF q, so llama.cpp's own
// permute applied to the exported q gives the GGUF q back. Other tensors unchanged.
void ExpectSameModelModuloRope(const ModelWeights& gguf, const ModelWeights& hf, DType dtype) {
  const ModelConfig& c = gguf.config;
  EXPECT_EQ(hf.config.rope_style, RopeStyle::kHalf);
  EXPECT_EQ(hf.config.dim, c.dim);
  EXPECT_EQ(hf.config.n_layers, c.n_layers);
  EXPECT_EQ(hf.config.n_heads, c.n_heads);
  EXPECT_EQ(hf.config.n_kv_heads, c.n_kv_heads);
  EXPECT_EQ(hf.config.head_dim, c.head_dim);
  EXPECT_EQ(hf.config.ffn_dim, c.ffn_dim);
  EXPECT_EQ(hf.config.vocab_size, c.vocab_size);
  EXPECT_EQ(hf.config.max_seq_len, c.max_seq_len);
  EXPECT_EQ(hf.config.norm_eps, c.norm_eps);
  EXPECT_EQ(hf.config.rope_theta, c.rope_theta);
  EXPECT_EQ(hf.config.tied_embeddings, c.tied_embeddings);
  if (c.tied_embeddings) {
    EXPECT_EQ(hf.output, hf.token_embedding);
  }
  EXPECT_EQ(hf.token_embedding->Dequantize(), RoundTo(dtype, gguf.token_embedding->Dequantize()));
  EXPECT_EQ(hf.output->Dequantize(), RoundTo(dtype, gguf.output->Dequantize()));
  EXPECT_EQ(hf.output_norm, RoundTo(dtype, gguf.output_norm));
  for (int i = 0; i < c.n_layers; ++i) {
    const LayerWeights& a = gguf.layers[i];
    const LayerWeights& b = hf.layers[i];
    EXPECT_EQ(b.attn_norm, RoundTo(dtype, a.attn_norm)) << i;
    EXPECT_EQ(b.ffn_norm, RoundTo(dtype, a.ffn_norm)) << i;
    for (Module m : {Module::kV, Module::kO, Module::kGate, Module::kUp, Module::kDown})
      EXPECT_EQ(b.w(m).Dequantize(), RoundTo(dtype, a.w(m).Dequantize()))
          << i << " " << ModuleName(m);
    EXPECT_EQ(HfToGgufPermute(b.w(Module::kQ).Dequantize(), c.n_heads, c.q_dim(), c.dim),
              RoundTo(dtype, a.w(Module::kQ).Dequantize()))
        << i;
    EXPECT_EQ(HfToGgufPermute(b.w(Module::kK).Dequantize(), c.n_kv_heads, c.kv_dim(), c.dim),
              RoundTo(dtype, a.w(Module::kK).Dequantize()))
        << i;
    // And q really moved (stories260K's q is not symmetric under the permutation).
    EXPECT_NE(b.w(Module::kQ).Dequantize(), RoundTo(dtype, a.w(Module::kQ).Dequantize()));
  }
}

TEST_F(ModelLoaderTest, HfCheckpointOneShardF32) {
  auto gguf = LoadModel(Stories260kPath());
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  const std::string out = P("hf1");
  ASSERT_TRUE(WriteHfCheckpoint(*gguf, out, DType::kF32).ok());
  EXPECT_TRUE(fs::exists(out + "/config.json"));
  EXPECT_TRUE(fs::exists(out + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(out + "/model.safetensors.index.json"));
  for (const auto& e : fs::directory_iterator(out))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();

  const auto cfg = nlohmann::json::parse(ReadFileOrDie(out + "/config.json"));
  EXPECT_EQ(cfg["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(cfg["hidden_size"], 64);
  EXPECT_EQ(cfg["num_key_value_heads"], 4);
  EXPECT_EQ(cfg["tie_word_embeddings"], true);
  EXPECT_EQ(cfg["torch_dtype"], "float32");

  auto st = SafetensorsFile::Open(out + "/model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ((*st)->tensors().size(), 1u + 5 * 9 + 1);  // tied: no lm_head
  EXPECT_EQ((*st)->metadata().at("format"), "pt");
  EXPECT_EQ((*st)->FindTensor("model.layers.0.self_attn.q_proj.weight")->shape,
            (std::vector<int64_t>{64, 64}));
  EXPECT_EQ((*st)->FindTensor("model.layers.0.mlp.down_proj.weight")->shape,
            (std::vector<int64_t>{64, 172}));
  EXPECT_EQ((*st)->FindTensor("lm_head.weight"), nullptr);

  auto hf = LoadModel(out);
  ASSERT_TRUE(hf.ok()) << hf.status();
  ExpectSameModelModuloRope(*gguf, *hf, DType::kF32);
  EXPECT_EQ(hf->source, out);
  // The path of config.json works too.
  auto hf2 = LoadModel(out + "/config.json");
  ASSERT_TRUE(hf2.ok()) << hf2.status();
  EXPECT_EQ(hf2->layers[1].w(Module::kQ).Dequantize(), hf->layers[1].w(Module::kQ).Dequantize());

  // The tokenizer is exported and encodes like the GGUF one.
  ASSERT_TRUE(fs::exists(out + "/tokenizer.json"));
  ASSERT_NE(hf->tokenizer, nullptr);
  const std::string text = "Once upon a time, there was a little girl named Lily.";
  EXPECT_EQ(hf->tokenizer->Encode(text, true), gguf->tokenizer->Encode(text, true));

  // Re-exporting a rotate-half model does not permute again.
  const std::string out2 = P("hf1b");
  ASSERT_TRUE(WriteHfCheckpoint(*hf, out2, DType::kF32).ok());
  auto again = LoadModel(out2);
  ASSERT_TRUE(again.ok()) << again.status();
  for (int i = 0; i < 5; ++i)
    for (int m = 0; m < kNumModules; ++m)
      EXPECT_EQ(again->layers[i].linear[m]->Dequantize(), hf->layers[i].linear[m]->Dequantize());
  EXPECT_TRUE(fs::exists(out2 + "/tokenizer.json"));
}

TEST_F(ModelLoaderTest, HfCheckpointThreeShardsBF16AndF16) {
  auto gguf = LoadModel(Stories260kPath());
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  for (DType dt : {DType::kBF16, DType::kF16}) {
    const std::string out = P(std::string("hf3_") + DTypeName(dt));
    ASSERT_TRUE(WriteHfCheckpoint(*gguf, out, dt, 3).ok());
    EXPECT_FALSE(fs::exists(out + "/model.safetensors"));
    for (int s = 1; s <= 3; ++s)
      EXPECT_TRUE(fs::exists(out + "/model-0000" + std::to_string(s) + "-of-00003.safetensors"));
    auto wm = ReadSafetensorsIndex(out + "/model.safetensors.index.json");
    ASSERT_TRUE(wm.ok()) << wm.status();
    EXPECT_EQ(wm->size(), 47u);
    EXPECT_EQ(wm->at("model.embed_tokens.weight"), "model-00001-of-00003.safetensors");
    EXPECT_EQ(wm->at("model.norm.weight"), "model-00003-of-00003.safetensors");
    const auto index = nlohmann::json::parse(ReadFileOrDie(out + "/model.safetensors.index.json"));
    EXPECT_EQ(index["metadata"]["total_size"], 520064u);  // 260032 parameters (tied) * 2 bytes
    auto st = SafetensorsFile::Open(out + "/model-00002-of-00003.safetensors");
    ASSERT_TRUE(st.ok());
    EXPECT_FALSE((*st)->tensors().empty());
    EXPECT_EQ((*st)->tensors()[0].dtype_name, DTypeName(dt));

    auto hf = LoadModel(out);
    ASSERT_TRUE(hf.ok()) << hf.status();
    EXPECT_EQ(hf->token_embedding->format(),
              dt == DType::kBF16 ? MatrixFormat::kBF16 : MatrixFormat::kF16);
    ExpectSameModelModuloRope(*gguf, *hf, dt);

    // Overwriting with a single shard removes the stale shards and index.
    ASSERT_TRUE(WriteHfCheckpoint(*gguf, out, DType::kF32, 1).ok());
    EXPECT_FALSE(fs::exists(out + "/model.safetensors.index.json"));
    EXPECT_FALSE(fs::exists(out + "/model-00001-of-00003.safetensors"));
    auto single = LoadModel(out);
    ASSERT_TRUE(single.ok()) << single.status();
    ExpectSameModelModuloRope(*gguf, *single, DType::kF32);
  }
  EXPECT_FALSE(WriteHfCheckpoint(*gguf, P("bad"), DType::kF32, 0).ok());
  EXPECT_FALSE(WriteHfCheckpoint(*gguf, P("bad"), DType::kF32, 1000).ok());
}

// A tiny interleaved model with W[r][c] = 1000 * module + 10 * r + c, to check the row
// order of the exported q/k by hand.
ModelWeights TinyModel(RopeStyle style, bool tied) {
  ModelWeights w;
  ModelConfig& c = w.config;
  c.dim = 8;
  c.n_layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 4;
  c.ffn_dim = 6;
  c.vocab_size = 5;
  c.rope_style = style;
  c.tied_embeddings = tied;
  auto make = [](int base, int rows, int cols) {
    std::vector<float> v(static_cast<size_t>(rows) * cols);
    for (int r = 0; r < rows; ++r)
      for (int k = 0; k < cols; ++k) v[r * cols + k] = static_cast<float>(base + 10 * r + k);
    return std::shared_ptr<const Matrix>(MakeDenseMatrixFromF32(DType::kF32, rows, cols, v.data()));
  };
  w.token_embedding = make(7000, 5, 8);
  w.output = tied ? w.token_embedding : make(8000, 5, 8);
  w.output_norm = std::vector<float>(8, 1.5f);
  w.layers.resize(1);
  LayerWeights& l = w.layers[0];
  l.attn_norm = std::vector<float>(8, 0.5f);
  l.ffn_norm = std::vector<float>(8, 0.25f);
  const int shapes[kNumModules][2] = {{8, 8}, {4, 8}, {4, 8}, {8, 8}, {6, 8}, {6, 8}, {8, 6}};
  for (int m = 0; m < kNumModules; ++m) l.linear[m] = make(1000 * m, shapes[m][0], shapes[m][1]);
  w.source = "tiny";
  return w;
}

TEST_F(ModelLoaderTest, UnpermutesTinyModelRows) {
  const ModelWeights tiny = TinyModel(RopeStyle::kInterleaved, /*tied=*/false);
  ASSERT_TRUE(tiny.Validate().ok());
  const std::string out = P("tiny");
  ASSERT_TRUE(WriteHfCheckpoint(tiny, out, DType::kF32).ok());
  EXPECT_FALSE(fs::exists(out + "/tokenizer.json"));  // no tokenizer
  auto st = SafetensorsFile::Open(out + "/model.safetensors");
  ASSERT_TRUE(st.ok()) << st.status();
  auto rows_of = [&](const std::string& name, int rows, int cols) {
    const SafetensorsTensor* t = (*st)->FindTensor(name);
    EXPECT_NE(t, nullptr) << name;
    std::vector<float> v(static_cast<size_t>(rows) * cols);
    std::memcpy(v.data(), t->data, v.size() * 4);
    // The source row of each exported row: (value - base) / 10.
    std::vector<int> src(rows);
    for (int r = 0; r < rows; ++r) src[r] = static_cast<int>(std::lround(v[r * cols]) % 1000) / 10;
    return src;
  };
  // head_dim 4: HF row (head, s, j) = GGUF row head*4 + 2j + s, i.e. per head [0, 2, 1, 3].
  EXPECT_EQ(rows_of("model.layers.0.self_attn.q_proj.weight", 8, 8),
            (std::vector<int>{0, 2, 1, 3, 4, 6, 5, 7}));
  EXPECT_EQ(rows_of("model.layers.0.self_attn.k_proj.weight", 4, 8),
            (std::vector<int>{0, 2, 1, 3}));
  EXPECT_EQ(rows_of("model.layers.0.self_attn.v_proj.weight", 4, 8),
            (std::vector<int>{0, 1, 2, 3}));
  EXPECT_EQ(rows_of("model.layers.0.self_attn.o_proj.weight", 8, 8),
            (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7}));
  EXPECT_EQ(rows_of("lm_head.weight", 5, 8), (std::vector<int>{0, 1, 2, 3, 4}));

  auto hf = LoadModel(out);
  ASSERT_TRUE(hf.ok()) << hf.status();
  EXPECT_FALSE(hf->config.tied_embeddings);
  EXPECT_NE(hf->output, hf->token_embedding);
  EXPECT_EQ(hf->output->Dequantize(), tiny.output->Dequantize());
  EXPECT_EQ(hf->tokenizer, nullptr);

  // A rotate-half model is written as is.
  const ModelWeights half = TinyModel(RopeStyle::kHalf, /*tied=*/true);
  ASSERT_TRUE(WriteHfCheckpoint(half, P("tiny_half"), DType::kF32).ok());
  auto h = LoadModel(P("tiny_half"));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->layers[0].w(Module::kQ).Dequantize(), half.layers[0].w(Module::kQ).Dequantize());
  EXPECT_TRUE(h->config.tied_embeddings);
}

// Rewrites `dir`/model.safetensors with tensor `name` replaced (or removed when
// `replacement` is null).
void ReplaceTensor(const std::string& dir, const std::string& name,
                   const SafetensorsWriteTensor* replacement) {
  const std::string path = dir + "/model.safetensors";
  auto st = SafetensorsFile::Open(path);
  ASSERT_TRUE(st.ok());
  std::vector<SafetensorsWriteTensor> ts;
  for (const auto& t : (*st)->tensors()) {
    if (t.name == name) {
      if (replacement) ts.push_back(*replacement);
      continue;
    }
    ts.push_back({t.name, *t.dtype, t.shape, t.data, t.byte_size});
  }
  ASSERT_TRUE(WriteSafetensors(path + ".new", ts).ok());
  st->reset();
  fs::rename(path + ".new", path);
}

TEST_F(ModelLoaderTest, HfErrorsNameFileAndTensor) {
  const ModelWeights tiny = TinyModel(RopeStyle::kHalf, false);
  auto fresh = [&](const std::string& name) {
    const std::string out = P(name);
    EXPECT_TRUE(WriteHfCheckpoint(tiny, out, DType::kF32).ok());
    return out;
  };
  {  // q_proj of the wrong shape.
    const std::string out = fresh("shape");
    std::vector<float> v(8 * 6, 1.f);
    SafetensorsWriteTensor t{
        "model.layers.0.self_attn.q_proj.weight", DType::kF32, {6, 8}, v.data(), v.size() * 4};
    ReplaceTensor(out, t.name, &t);
    auto w = LoadModel(out);
    ASSERT_FALSE(w.ok());
    const std::string msg(w.status().message());
    EXPECT_TRUE(HasSub(msg, "model.safetensors"));
    EXPECT_TRUE(HasSub(msg, "model.layers.0.self_attn.q_proj.weight"));
    EXPECT_TRUE(HasSub(msg, "[6, 8]"));
    EXPECT_TRUE(HasSub(msg, "expected [8, 8]"));
  }
  {  // A tensor missing.
    const std::string out = fresh("missing");
    ReplaceTensor(out, "model.norm.weight", nullptr);
    auto w = LoadModel(out);
    ASSERT_FALSE(w.ok());
    EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "model.norm.weight"));
    EXPECT_TRUE(HasSub(std::string(w.status().message()), out));
  }
  {  // Unsupported dtype (F64), written by hand.
    const std::string out = fresh("dtype");
    const std::string name = "model.layers.0.mlp.up_proj.weight";
    // Give the tensor a dtype the engine does not compute in: rewrite its header entry.
    std::string bytes = ReadFileOrDie(out + "/model.safetensors");
    uint64_t n;
    std::memcpy(&n, bytes.data(), 8);
    auto header = nlohmann::json::parse(bytes.substr(8, n));
    auto& e = header[name];
    const uint64_t begin = e["data_offsets"][0];
    e["dtype"] = "F64";
    e["shape"] = {6, 4};  // same 192 bytes
    ASSERT_EQ(static_cast<uint64_t>(e["data_offsets"][1]) - begin, 192u);
    std::string h = header.dump();
    std::string file(8, '\0');
    const uint64_t hn = h.size();
    std::memcpy(file.data(), &hn, 8);
    file += h + bytes.substr(8 + n);
    WriteFileOrDie(out + "/model.safetensors", file);
    auto w = LoadModel(out);
    ASSERT_FALSE(w.ok());
    const std::string msg(w.status().message());
    EXPECT_TRUE(HasSub(msg, name));
    EXPECT_TRUE(HasSub(msg, "F64"));
  }
  {  // config.json problems.
    const std::string out = fresh("config");
    const auto good = nlohmann::json::parse(ReadFileOrDie(out + "/config.json"));
    auto with = [&](const std::function<void(nlohmann::json&)>& edit) {
      nlohmann::json j = good;
      edit(j);
      WriteFileOrDie(out + "/config.json", j.dump());
      return LoadModel(out);
    };
    auto w = with([](nlohmann::json& j) {
      j["architectures"] = {"GPT2LMHeadModel"};
      j["model_type"] = "llama";
    });
    ASSERT_FALSE(w.ok());
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "GPT2LMHeadModel"));
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "config.json"));
    w = with([](nlohmann::json& j) { j["model_type"] = "gpt2"; });
    ASSERT_FALSE(w.ok());
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "gpt2"));
    w = with([](nlohmann::json& j) { j.erase("hidden_size"); });
    ASSERT_FALSE(w.ok());
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "hidden_size"));
    w = with([](nlohmann::json& j) { j["num_attention_heads"] = "two"; });
    ASSERT_FALSE(w.ok());
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "num_attention_heads"));
    w = with([](nlohmann::json& j) { j["num_key_value_heads"] = 3; });
    ASSERT_FALSE(w.ok());
    w = with([](nlohmann::json& j) { j["rope_scaling"] = {{"rope_type", "llama3"}}; });
    ASSERT_FALSE(w.ok());
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "rope_scaling"));
    w = with([](nlohmann::json& j) { j["vocab_size"] = 6; });
    ASSERT_FALSE(w.ok());
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "model.embed_tokens.weight"));
    // Defaults: no num_key_value_heads means multi-head attention (2 != 1 here: error),
    // no head_dim means hidden_size / heads.
    w = with([](nlohmann::json& j) { j.erase("head_dim"); });
    EXPECT_TRUE(w.ok()) << w.status();
    w = with([](nlohmann::json& j) { j.erase("num_key_value_heads"); });
    ASSERT_FALSE(w.ok());
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "k_proj"));
    WriteFileOrDie(out + "/config.json", "{ broken");
    w = LoadModel(out);
    ASSERT_FALSE(w.ok());
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "config.json"));
    // tie_word_embeddings makes lm_head unused.
    w = with([](nlohmann::json& j) { j["tie_word_embeddings"] = true; });
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_EQ(w->output, w->token_embedding);
  }
  {  // No weights at all.
    fs::create_directories(P("empty"));
    WriteFileOrDie(P("empty/config.json"), ReadFileOrDie(P("config/config.json")));
    auto w = LoadModel(P("empty"));
    ASSERT_FALSE(w.ok());
    EXPECT_TRUE(HasSub(std::string(w.status().message()), "model.safetensors"));
  }
}

}  // namespace
}  // namespace eora
