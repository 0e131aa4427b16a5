#include "engine/gguf.h"

#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace eora {
namespace {

using ::eora::testing::MakeTempDir;
using ::eora::testing::ReadFileOrDie;
using ::eora::testing::Stories260kPath;
using ::eora::testing::WriteFileOrDie;

// Whether `s` contains `sub` (with both in the failure message).
::testing::AssertionResult HasSub(const std::string& s, const std::string& sub) {
  if (s.find(sub) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << s << "\" does not contain \"" << sub << "\"";
}

// Builds GGUF files byte by byte (little-endian), for tests of every value type.
class GgufBuilder {
 public:
  template <typename T>
  void Put(std::string& s, T v) {
    s.append(reinterpret_cast<const char*>(&v), sizeof(T));
  }
  void PutString(std::string& s, const std::string& v) {
    Put<uint64_t>(s, v.size());
    s += v;
  }
  template <typename T>
  void Scalar(const std::string& key, GgufType type, T v) {
    PutString(kv_, key);
    Put<uint32_t>(kv_, static_cast<uint32_t>(type));
    Put<T>(kv_, v);
    ++n_kv_;
  }
  void String(const std::string& key, const std::string& v) {
    PutString(kv_, key);
    Put<uint32_t>(kv_, static_cast<uint32_t>(GgufType::kString));
    PutString(kv_, v);
    ++n_kv_;
  }
  template <typename T>
  void Array(const std::string& key, GgufType elem, const std::vector<T>& v) {
    PutString(kv_, key);
    Put<uint32_t>(kv_, static_cast<uint32_t>(GgufType::kArray));
    Put<uint32_t>(kv_, static_cast<uint32_t>(elem));
    Put<uint64_t>(kv_, v.size());
    for (const T& x : v) Put<T>(kv_, x);
    ++n_kv_;
  }
  void StringArray(const std::string& key, const std::vector<std::string>& v) {
    PutString(kv_, key);
    Put<uint32_t>(kv_, static_cast<uint32_t>(GgufType::kArray));
    Put<uint32_t>(kv_, static_cast<uint32_t>(GgufType::kString));
    Put<uint64_t>(kv_, v.size());
    for (const auto& x : v) PutString(kv_, x);
    ++n_kv_;
  }
  // Tensor with explicit offset (relative to the data section) and bytes placed there.
  void Tensor(const std::string& name, uint32_t type, const std::vector<uint64_t>& dims,
              const std::string& bytes, uint64_t offset) {
    PutString(ti_, name);
    Put<uint32_t>(ti_, dims.size());
    for (uint64_t d : dims) Put<uint64_t>(ti_, d);
    Put<uint32_t>(ti_, type);
    Put<uint64_t>(ti_, offset);
    if (data_.size() < offset + bytes.size()) data_.resize(offset + bytes.size(), '\0');
    data_.replace(offset, bytes.size(), bytes);
    ++n_tensors_;
  }
  std::string Build(uint32_t version = 3, uint64_t alignment = 32) const {
    std::string s = "GGUF";
    GgufBuilder* self = const_cast<GgufBuilder*>(this);
    self->Put<uint32_t>(s, version);
    self->Put<uint64_t>(s, n_tensors_);
    self->Put<uint64_t>(s, n_kv_);
    s += kv_;
    s += ti_;
    s.resize((s.size() + alignment - 1) / alignment * alignment, '\0');
    s += data_;
    return s;
  }

 private:
  std::string kv_, ti_, data_;
  uint64_t n_kv_ = 0, n_tensors_ = 0;
};

std::string FloatBytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4);
}

class GgufTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir("gguf_test"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Write(const std::string& name, const std::string& bytes) {
    const std::string p = dir_ + "/" + name;
    WriteFileOrDie(p, bytes);
    return p;
  }
  // Offset of the first occurrence of `needle` in `s` (fails the test if absent).
  static size_t Find(const std::string& s, const std::string& needle) {
    const size_t p = s.find(needle);
    EXPECT_NE(p, std::string::npos) << needle;
    return p;
  }
  template <typename T>
  static void Poke(std::string& s, size_t at, T v) {
    std::memcpy(s.data() + at, &v, sizeof(T));
  }
  std::string dir_;
};

TEST_F(GgufTest, OpensStories260k) {
  auto f = GgufFile::Open(Stories260kPath());
  ASSERT_TRUE(f.ok()) << f.status();
  const GgufFile& g = **f;
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.alignment(), 32u);
  EXPECT_EQ(g.data_offset(), 14176u);
  EXPECT_EQ(g.tensors().size(), 48u);
  EXPECT_EQ(g.keys().size(), 19u);
  EXPECT_EQ(g.keys()[0], "tokenizer.ggml.tokens");
  EXPECT_EQ(*g.GetString("general.architecture"), "llama");
  EXPECT_EQ(*g.GetInt("llama.embedding_length"), 64);
  EXPECT_EQ(*g.GetInt("llama.block_count"), 5);
  EXPECT_EQ(*g.GetInt("llama.attention.head_count"), 8);
  EXPECT_EQ(*g.GetInt("llama.attention.head_count_kv"), 4);
  EXPECT_EQ(*g.GetInt("llama.feed_forward_length"), 172);
  EXPECT_EQ(*g.GetInt("tokenizer.ggml.seperator_token_id"), 4294967295ll);
  EXPECT_FLOAT_EQ(static_cast<float>(*g.GetFloat("llama.attention.layer_norm_rms_epsilon")), 1e-5f);
  auto tokens = g.GetStringArray("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok());
  ASSERT_EQ(tokens->size(), 512u);
  EXPECT_EQ((*tokens)[0], "<unk>");
  EXPECT_EQ((*tokens)[1], "<s>");
  EXPECT_EQ((*tokens)[3], "<0x00>");
  auto scores = g.GetFloatArray("tokenizer.ggml.scores");
  ASSERT_TRUE(scores.ok());
  EXPECT_EQ(scores->size(), 512u);
  auto types = g.GetIntArray("tokenizer.ggml.token_type");
  ASSERT_TRUE(types.ok());
  ASSERT_EQ(types->size(), 512u);
  EXPECT_EQ((*types)[0], 2);
  EXPECT_EQ((*types)[1], 3);
  EXPECT_EQ((*types)[3], 6);

  const GgufTensorInfo* emb = g.FindTensor("token_embd.weight");
  ASSERT_NE(emb, nullptr);
  EXPECT_EQ(emb->dims, (std::vector<uint64_t>{64, 512}));
  EXPECT_EQ(emb->ggml_type, kGgmlTypeF32);
  EXPECT_EQ(emb->byte_size, 64u * 512 * 4);
  EXPECT_EQ(*g.TensorDType(*emb), DType::kF32);
  const GgufTensorInfo* q = g.FindTensor("blk.4.attn_q.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->offset, 989440u);
  // The data pointer is at data_offset + offset in the file.
  const std::string bytes = ReadFileOrDie(Stories260kPath());
  EXPECT_EQ(std::memcmp(q->data, bytes.data() + 14176 + 989440, q->byte_size), 0);
  EXPECT_EQ(g.FindTensor("nope"), nullptr);
}

TEST_F(GgufTest, TypedGetterErrorsNameFileAndKey) {
  auto f = GgufFile::Open(Stories260kPath());
  ASSERT_TRUE(f.ok());
  auto missing = (*f)->GetInt("llama.nonexistent");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(HasSub(std::string(missing.status().message()), "llama.nonexistent"));
  EXPECT_TRUE(HasSub(std::string(missing.status().message()), "stories260K.gguf"));
  auto wrong = (*f)->GetInt("general.architecture");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(HasSub(std::string(wrong.status().message()), "general.architecture"));
  EXPECT_TRUE(HasSub(std::string(wrong.status().message()), "string"));
  EXPECT_FALSE((*f)->GetString("llama.block_count").ok());
  EXPECT_FALSE((*f)->GetStringArray("tokenizer.ggml.scores").ok());
  EXPECT_FALSE((*f)->GetIntArray("tokenizer.ggml.tokens").ok());
  EXPECT_FALSE((*f)->GetFloatArray("tokenizer.ggml.tokens").ok());
  EXPECT_FALSE((*f)->GetBool("llama.block_count").ok());
  auto t = (*f)->GetTensor("blk.9.attn_q.weight");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(HasSub(std::string(t.status().message()), "blk.9.attn_q.weight"));
}

TEST_F(GgufTest, AllValueTypesV2AndAlignment) {
  for (uint32_t version : {2u, 3u}) {
    GgufBuilder b;
    b.Scalar<uint8_t>("u8", GgufType::kUint8, 200);
    b.Scalar<int8_t>("i8", GgufType::kInt8, -100);
    b.Scalar<uint16_t>("u16", GgufType::kUint16, 60000);
    b.Scalar<int16_t>("i16", GgufType::kInt16, -30000);
    b.Scalar<uint32_t>("u32", GgufType::kUint32, 4000000000u);
    b.Scalar<int32_t>("i32", GgufType::kInt32, -2000000000);
    b.Scalar<uint64_t>("u64", GgufType::kUint64, 1ull << 40);
    b.Scalar<uint64_t>("u64big", GgufType::kUint64, ~0ull);
    b.Scalar<int64_t>("i64", GgufType::kInt64, -(1ll << 50));
    b.Scalar<float>("f32", GgufType::kFloat32, 1.5f);
    b.Scalar<double>("f64", GgufType::kFloat64, -2.25);
    b.Scalar<uint8_t>("bool", GgufType::kBool, 1);
    b.Scalar<uint32_t>("general.alignment", GgufType::kUint32, 64);
    b.String("str", "hello \xe2\x96\x81 world");
    b.String("empty", "");
    b.Array<int16_t>("ai16", GgufType::kInt16, {-1, 2, -3});
    b.Array<uint64_t>("au64", GgufType::kUint64, {7, 8});
    b.Array<double>("af64", GgufType::kFloat64, {0.5, -1.0});
    b.Array<float>("af32", GgufType::kFloat32, {});
    b.Array<uint8_t>("abool", GgufType::kBool, {1, 0});
    b.StringArray("astr", {"a", "", "ccc"});
    b.Tensor("f32", kGgmlTypeF32, {3, 2}, FloatBytes({1, 2, 3, 4, 5, 6}), 0);
    const uint16_t h[4] = {F32ToF16(1.f), F32ToF16(-2.f), F32ToF16(0.5f), F32ToF16(8.f)};
    b.Tensor("f16", kGgmlTypeF16, {4}, std::string(reinterpret_cast<const char*>(h), 8), 64);
    const uint16_t bf[2] = {F32ToBF16(3.f), F32ToBF16(-4.f)};
    b.Tensor("bf16", kGgmlTypeBF16, {1, 2, 1}, std::string(reinterpret_cast<const char*>(bf), 4),
             128);
    b.Tensor("q4", 2 /* Q4_0 */, {32, 2}, std::string(36, '\x11'), 192);
    const std::string path = Write("types.gguf", b.Build(version, 64));
    auto f = GgufFile::Open(path);
    ASSERT_TRUE(f.ok()) << f.status();
    const GgufFile& g = **f;
    EXPECT_EQ(g.version(), version);
    EXPECT_EQ(g.alignment(), 64u);
    EXPECT_EQ(g.data_offset() % 64, 0u);
    EXPECT_EQ(*g.GetInt("u8"), 200);
    EXPECT_EQ(*g.GetInt("i8"), -100);
    EXPECT_EQ(*g.GetInt("u16"), 60000);
    EXPECT_EQ(*g.GetInt("i16"), -30000);
    EXPECT_EQ(*g.GetInt("u32"), 4000000000ll);
    EXPECT_EQ(*g.GetInt("i32"), -2000000000);
    EXPECT_EQ(*g.GetInt("u64"), 1ll << 40);
    EXPECT_FALSE(g.GetInt("u64big").ok());  // does not fit in int64
    EXPECT_EQ(*g.GetInt("i64"), -(1ll << 50));
    EXPECT_EQ(*g.GetFloat("f32"), 1.5);
    EXPECT_EQ(*g.GetFloat("f64"), -2.25);
    EXPECT_EQ(*g.GetFloat("i8"), -100.0);
    EXPECT_TRUE(*g.GetBool("bool"));
    EXPECT_FALSE(g.GetInt("f32").ok());
    EXPECT_EQ(*g.GetString("str"), "hello \xe2\x96\x81 world");
    EXPECT_EQ(*g.GetString("empty"), "");
    EXPECT_EQ(*g.GetIntArray("ai16"), (std::vector<int64_t>{-1, 2, -3}));
    EXPECT_EQ(*g.GetIntArray("au64"), (std::vector<int64_t>{7, 8}));
    EXPECT_EQ(*g.GetIntArray("abool"), (std::vector<int64_t>{1, 0}));
    EXPECT_EQ(*g.GetFloatArray("af64"), (std::vector<float>{0.5f, -1.0f}));
    EXPECT_EQ(*g.GetFloatArray("ai16"), (std::vector<float>{-1.f, 2.f, -3.f}));
    EXPECT_TRUE(g.GetFloatArray("af32")->empty());
    EXPECT_EQ(*g.GetStringArray("astr"), (std::vector<std::string>{"a", "", "ccc"}));

    const GgufTensorInfo* t = g.FindTensor("f32");
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->n_elements, 6u);
    float v[6];
    std::memcpy(v, t->data, 24);
    EXPECT_EQ(v[5], 6.f);
    const GgufTensorInfo* t16 = g.FindTensor("f16");
    EXPECT_EQ(*g.TensorDType(*t16), DType::kF16);
    EXPECT_EQ(t16->byte_size, 8u);
    const GgufTensorInfo* tb = g.FindTensor("bf16");
    EXPECT_EQ(*g.TensorDType(*tb), DType::kBF16);
    uint16_t got;
    std::memcpy(&got, tb->data + 2, 2);
    EXPECT_EQ(BF16ToF32(got), -4.f);
    const GgufTensorInfo* tq = g.FindTensor("q4");
    ASSERT_NE(tq, nullptr);
    EXPECT_EQ(tq->byte_size, 36u);  // 2 blocks of 18 bytes
    auto dt = g.TensorDType(*tq);
    EXPECT_EQ(dt.status().code(), absl::StatusCode::kUnimplemented);
    EXPECT_TRUE(HasSub(std::string(dt.status().message()), "q4"));
    EXPECT_TRUE(HasSub(std::string(dt.status().message()), "Q4_0"));
    EXPECT_TRUE(HasSub(std::string(dt.status().message()), "types.gguf"));
  }
}

TEST_F(GgufTest, RejectsBadSyntheticFiles) {
  struct Case {
    std::string name;
    std::function<void(GgufBuilder&)> build;
    uint64_t alignment;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {"align3",
       [](GgufBuilder& b) { b.Scalar<uint32_t>("general.alignment", GgufType::kUint32, 3); }, 32,
       "general.alignment"},
      {"alignstr", [](GgufBuilder& b) { b.String("general.alignment", "x"); }, 32,
       "general.alignment"},
      {"dupkey",
       [](GgufBuilder& b) {
         b.String("k", "a");
         b.String("k", "b");
       },
       32, "duplicate metadata key 'k'"},
      {"duptensor",
       [](GgufBuilder& b) {
         b.Tensor("t", 0, {1}, FloatBytes({1}), 0);
         b.Tensor("t", 0, {1}, FloatBytes({1}), 32);
       },
       32, "duplicate tensor 't'"},
      {"misaligned",
       [](GgufBuilder& b) {
         b.Tensor("mis", 0, {2}, FloatBytes({1, 2}), 4);
       },
       32, "'mis' data offset 4 is not a multiple of the alignment 32"},
      {"nested",
       [](GgufBuilder& b) {
         b.Array<uint32_t>("nest", GgufType::kArray, {0, 0, 0});
       },
       32, "nest"},
      {"badtype", [](GgufBuilder& b) { b.Scalar<uint32_t>("weird", static_cast<GgufType>(77), 0); },
       32, "weird"},
      {"badbool", [](GgufBuilder& b) { b.Scalar<uint8_t>("flag", GgufType::kBool, 7); }, 32,
       "flag"},
      {"zerodims", [](GgufBuilder& b) { b.Tensor("nodims", 0, {}, "", 0); }, 32, "nodims"},
      {"fivedims",
       [](GgufBuilder& b) {
         b.Tensor("five", 0, {1, 1, 1, 1, 1}, FloatBytes({1}), 0);
       },
       32, "five"},
      {"overflow",
       [](GgufBuilder& b) {
         b.Tensor("big", 0, {1ull << 40, 1ull << 40}, FloatBytes({1}), 0);
       },
       32, "'big' dimensions [1099511627776, 1099511627776] overflow"},
      {"pastend", [](GgufBuilder& b) { b.Tensor("far", 0, {1000}, FloatBytes({1}), 0); }, 32,
       "'far'"},
      {"blocksize", [](GgufBuilder& b) { b.Tensor("q", 2, {31}, std::string(18, 0), 0); }, 32,
       "not a multiple of its block size 32"},
      {"unknowntype", [](GgufBuilder& b) { b.Tensor("odd", 999, {4}, FloatBytes({1}), 0); }, 32,
       "'odd' has unknown ggml type 999"},
  };
  for (const Case& c : cases) {
    GgufBuilder b;
    c.build(b);
    const std::string path = Write(c.name + ".gguf", b.Build(3, c.alignment));
    auto f = GgufFile::Open(path);
    ASSERT_FALSE(f.ok()) << c.name;
    const std::string msg(f.status().message());
    EXPECT_TRUE(HasSub(msg, c.name + ".gguf")) << c.name;
    EXPECT_TRUE(HasSub(msg, c.expect)) << c.name;
  }
  // Versions 1 and 4 are not accepted.
  for (uint32_t v : {1u, 4u}) {
    GgufBuilder b;
    auto f = GgufFile::Open(Write("v.gguf", b.Build(v)));
    ASSERT_FALSE(f.ok());
    EXPECT_TRUE(HasSub(std::string(f.status().message()), "version"));
  }
  // A file with no tensors and no metadata is valid.
  GgufBuilder empty;
  EXPECT_TRUE(GgufFile::Open(Write("empty.gguf", empty.Build())).ok());
}

TEST_F(GgufTest, TruncatedCopiesFail) {
  const std::string bytes = ReadFileOrDie(Stories260kPath());
  // Every prefix is invalid (the last tensor ends exactly at the end of the file).
  std::vector<size_t> cuts = {0,    3,     4,     8,     23,    24,    30,     100,
                              7000, 14151, 14152, 14170, 14176, 14177, 500000, bytes.size() - 1};
  for (size_t cut = 0; cut < 14400; cut += 97) cuts.push_back(cut);
  for (size_t cut : cuts) {
    const std::string path = Write("truncated.gguf", bytes.substr(0, cut));
    auto f = GgufFile::Open(path);
    ASSERT_FALSE(f.ok()) << "cut at " << cut;
    EXPECT_TRUE(HasSub(std::string(f.status().message()), "truncated.gguf")) << cut;
  }
  // Cut in the data section: the error names the first tensor that no longer fits
  // (blk.1.ffn_gate.weight spans [493568, 537600) of the data section).
  auto f = GgufFile::Open(Write("truncated.gguf", bytes.substr(0, 14176 + 500000)));
  ASSERT_FALSE(f.ok());
  EXPECT_TRUE(HasSub(std::string(f.status().message()), "blk.1.ffn_gate.weight"));
  EXPECT_TRUE(HasSub(std::string(f.status().message()), "past the end of the file"));
}

TEST_F(GgufTest, CorruptedHeaderFieldsFail) {
  const std::string orig = ReadFileOrDie(Stories260kPath());
  {
    std::string b = orig;
    b[0] = 'X';
    auto f = GgufFile::Open(Write("magic.gguf", b));
    ASSERT_FALSE(f.ok());
    EXPECT_TRUE(HasSub(std::string(f.status().message()), "magic.gguf"));
    EXPECT_TRUE(HasSub(std::string(f.status().message()), "not a GGUF file"));
  }
  {  // Absurd tensor and key counts.
    std::string b = orig;
    Poke<uint64_t>(b, 8, 1ull << 60);
    auto f = GgufFile::Open(Write("ntensors.gguf", b));
    ASSERT_FALSE(f.ok());
    EXPECT_TRUE(HasSub(std::string(f.status().message()), "tensor count"));
    b = orig;
    Poke<uint64_t>(b, 16, 1ull << 62);
    f = GgufFile::Open(Write("nkv.gguf", b));
    ASSERT_FALSE(f.ok());
    EXPECT_TRUE(HasSub(std::string(f.status().message()), "metadata count"));
  }
  {  // Huge string lengths: first key, and an element of the token array.
    std::string b = orig;
    Poke<uint64_t>(b, 24, 1ull << 40);
    auto f = GgufFile::Open(Write("hugekey.gguf", b));
    ASSERT_FALSE(f.ok());
    EXPECT_TRUE(HasSub(std::string(f.status().message()), "hugekey.gguf"));
    EXPECT_TRUE(HasSub(std::string(f.status().message()), "past the end"));
    b = orig;
    const size_t unk = Find(b, "<unk>");
    Poke<uint64_t>(b, unk - 8, ~0ull);
    f = GgufFile::Open(Write("hugestr.gguf", b));
    ASSERT_FALSE(f.ok());
    EXPECT_TRUE(HasSub(std::string(f.status().message()), "tokenizer.ggml.tokens"));
    b = orig;  // array length far beyond the file
    Poke<uint64_t>(b, unk - 16, 1ull << 59);
    f = GgufFile::Open(Write("hugearr.gguf", b));
    ASSERT_FALSE(f.ok());
    EXPECT_TRUE(HasSub(std::string(f.status().message()), "tokenizer.ggml.tokens"));
  }
  // Tensor info of blk.2.attn_q.weight: name, n_dims u32, 2 x u64 dims, type u32, offset u64.
  const std::string name = "blk.2.attn_q.weight";
  const size_t info = Find(orig, name) + name.size();
  {
    std::string b = orig;
    Poke<uint64_t>(b, info + 4 + 16 + 4, 1ull << 40);  // aligned but far past the end
    auto f = GgufFile::Open(Write("badoffset.gguf", b));
    ASSERT_FALSE(f.ok());
    EXPECT_TRUE(HasSub(std::string(f.status().message()), "badoffset.gguf"));
    EXPECT_TRUE(HasSub(std::string(f.status().message()), name));
    b = orig;
    Poke<uint64_t>(b, info + 4 + 16 + 4, 625920 + 4);  // misaligned
    f = GgufFile::Open(Write("misaligned.gguf", b));
    ASSERT_FALSE(f.ok());
    EXPECT_TRUE(HasSub(std::string(f.status().message()), name));
    EXPECT_TRUE(HasSub(std::string(f.status().message()), "alignment"));
  }
  {
    std::string b = orig;
    Poke<uint32_t>(b, info + 4 + 16, 12345);
    auto f = GgufFile::Open(Write("badtype.gguf", b));
    ASSERT_FALSE(f.ok());
    EXPECT_TRUE(HasSub(std::string(f.status().message()), "badtype.gguf"));
    EXPECT_TRUE(HasSub(std::string(f.status().message()), name));
    EXPECT_TRUE(HasSub(std::string(f.status().message()), "12345"));
  }
  {
    std::string b = orig;
    Poke<uint64_t>(b, info + 4, 1ull << 62);
    Poke<uint64_t>(b, info + 12, 1ull << 62);
    auto f = GgufFile::Open(Write("dims.gguf", b));
    ASSERT_FALSE(f.ok());
    EXPECT_TRUE(HasSub(std::string(f.status().message()), name));
    EXPECT_TRUE(HasSub(std::string(f.status().message()), "overflow"));
    b = orig;
    Poke<uint32_t>(b, info, 9);
    f = GgufFile::Open(Write("ndims.gguf", b));
    ASSERT_FALSE(f.ok());
    EXPECT_TRUE(HasSub(std::string(f.status().message()), name));
  }
}

// Random corruption of the header never crashes; every tensor the reader accepts lies
// inside the file.
TEST_F(GgufTest, RandomHeaderCorruptionNeverCrashes) {
  const std::string orig = ReadFileOrDie(Stories260kPath());
  std::mt19937 rng(1234);
  int failures = 0;
  for (int iter = 0; iter < 300; ++iter) {
    std::string b = orig;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      const size_t at = rng() % 14176;
      b[at] = static_cast<char>(rng() & 0xff);
    }
    const std::string path = Write("fuzz.gguf", b);
    auto f = GgufFile::Open(path);
    if (!f.ok()) {
      ++failures;
      EXPECT_TRUE(HasSub(std::string(f.status().message()), "fuzz.gguf"));
      continue;
    }
    const GgufFile& g = **f;
    unsigned sum = 0;
    for (const auto& t : g.tensors()) {
      ASSERT_LE(g.data_offset() + t.offset + t.byte_size, g.file_size()) << t.name;
      if (t.byte_size > 0) sum += t.data[0] + t.data[t.byte_size - 1];  // touch both ends
    }
    for (const auto& k : g.keys()) {
      const GgufValue* v = g.FindKey(k);
      ASSERT_NE(v, nullptr);
      if (v->type == GgufType::kArray && v->elem_type != GgufType::kString) {
        (void)g.GetIntArray(k);
        (void)g.GetFloatArray(k);
      }
    }
    (void)sum;
  }
  EXPECT_GT(failures, 0);
}

}  // namespace
}  // namespace eora
