#include "engine/safetensors.h"

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace eora {
namespace {

using ::eora::testing::MakeTempDir;
using ::eora::testing::ReadFileOrDie;
using ::eora::testing::WriteFileOrDie;

::testing::AssertionResult HasSub(const std::string& s, const std::string& sub) {
  if (s.find(sub) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << s << "\" does not contain \"" << sub << "\"";
}

// A raw safetensors file: header JSON (as given) + data bytes.
std::string RawFile(const std::string& header, const std::string& data) {
  std::string s(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(s.data(), &n, 8);
  return s + header + data;
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir("safetensors_test"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string P(const std::string& name) const { return dir_ + "/" + name; }
  std::string dir_;
};

TEST_F(SafetensorsTest, RoundTripAllDtypes) {
  std::vector<float> f32 = {1.f, -2.5f, 3.25f, 0.f, 1e-8f, -1e6f};
  std::vector<uint16_t> f16, bf16;
  for (float v : f32) {
    f16.push_back(F32ToF16(v));
    bf16.push_back(F32ToBF16(v));
  }
  std::vector<SafetensorsWriteTensor> ts = {
      {"a.f32", DType::kF32, {2, 3}, f32.data(), f32.size() * 4},
      {"b.f16", DType::kF16, {6}, f16.data(), f16.size() * 2},
      {"c.bf16", DType::kBF16, {3, 1, 2}, bf16.data(), bf16.size() * 2},
      {"d.empty", DType::kF32, {0, 4}, nullptr, 0},
  };
  const std::string path = P("rt.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, ts, {{"format", "pt"}, {"note", "x\"y"}}).ok());
  // No temporary files are left behind.
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_)) {
    ++files;
    EXPECT_EQ(e.path().filename().string(), "rt.safetensors");
  }
  EXPECT_EQ(files, 1);
  // The header is padded to 8 bytes and the file has exactly header + data bytes.
  const std::string raw = ReadFileOrDie(path);
  uint64_t n;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(raw.size(), 8 + n + 24 + 12 + 12);

  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  const SafetensorsFile& s = **f;
  ASSERT_EQ(s.tensors().size(), 4u);
  EXPECT_EQ(s.metadata().at("format"), "pt");
  EXPECT_EQ(s.metadata().at("note"), "x\"y");
  for (const auto& w : ts) {
    const SafetensorsTensor* t = s.FindTensor(w.name);
    ASSERT_NE(t, nullptr) << w.name;
    EXPECT_EQ(t->shape, w.shape);
    ASSERT_TRUE(t->dtype.has_value());
    EXPECT_EQ(*t->dtype, w.dtype);
    EXPECT_EQ(*s.TensorDType(*t), w.dtype);
    EXPECT_EQ(t->dtype_name, DTypeName(w.dtype));
    ASSERT_EQ(t->byte_size, w.byte_size);
    if (w.byte_size) {
      EXPECT_EQ(std::memcmp(t->data, w.data, w.byte_size), 0) << w.name;
    }
  }
  // Tensors are listed in data order.
  EXPECT_EQ(s.tensors()[0].name, "a.f32");
  EXPECT_EQ(s.tensors()[1].name, "b.f16");
  std::vector<float> back(6);
  ConvertToF32(DType::kBF16, s.FindTensor("c.bf16")->data, back.data(), 6);
  EXPECT_EQ(back[1], -2.5f);
  EXPECT_EQ(s.FindTensor("zzz"), nullptr);
  EXPECT_EQ(s.GetTensor("zzz").status().code(), absl::StatusCode::kNotFound);

  // Overwriting replaces the file atomically.
  ASSERT_TRUE(WriteSafetensors(path, {ts[0]}).ok());
  auto f2 = SafetensorsFile::Open(path);
  ASSERT_TRUE(f2.ok());
  EXPECT_EQ((*f2)->tensors().size(), 1u);
  EXPECT_TRUE((*f2)->metadata().empty());
}

TEST_F(SafetensorsTest, WriterRejectsInconsistentTensors) {
  std::vector<float> v(4, 1.f);
  auto s = WriteSafetensors(P("w.safetensors"), {{"x", DType::kF32, {2, 3}, v.data(), 16}});
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(HasSub(std::string(s.message()), "'x'"));
  s = WriteSafetensors(P("w.safetensors"), {{"x", DType::kF32, {4}, v.data(), 16},
                                            {"x", DType::kF32, {4}, v.data(), 16}});
  EXPECT_FALSE(s.ok());
  s = WriteSafetensors(P("w.safetensors"), {{"__metadata__", DType::kF32, {4}, v.data(), 16}});
  EXPECT_FALSE(s.ok());
  EXPECT_FALSE(std::filesystem::exists(P("w.safetensors")));
  // Unwritable destination directory.
  s = WriteSafetensors(P("missing_dir/w.safetensors"), {{"x", DType::kF32, {4}, v.data(), 16}});
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(HasSub(std::string(s.message()), "missing_dir"));
}

TEST_F(SafetensorsTest, OverlappingRangesAndOtherDtypesAreReadable) {
  const std::string data(16, '\x01');
  const std::string path = P("ov.safetensors");
  WriteFileOrDie(path, RawFile(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                               R"("b":{"dtype":"F16","shape":[2,2],"data_offsets":[8,16]},)"
                               R"("c":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}})",
                               data));
  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->tensors().size(), 3u);
  const SafetensorsTensor* c = (*f)->FindTensor("c");
  ASSERT_NE(c, nullptr);
  EXPECT_FALSE(c->dtype.has_value());
  auto dt = (*f)->TensorDType(*c);
  EXPECT_EQ(dt.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_TRUE(HasSub(std::string(dt.status().message()), "'c'"));
  EXPECT_TRUE(HasSub(std::string(dt.status().message()), "I64"));
  EXPECT_TRUE(HasSub(std::string(dt.status().message()), "ov.safetensors"));
}

TEST_F(SafetensorsTest, RejectsBadFiles) {
  const std::string d16(16, '\0');
  struct Case {
    std::string name;
    std::string bytes;
    std::string expect;
  };
  std::string huge(8, '\0');
  const uint64_t big = 1ull << 62;
  std::memcpy(huge.data(), &big, 8);
  huge += "{}";
  std::string past(8, '\0');
  const uint64_t len = 1000;
  std::memcpy(past.data(), &len, 8);
  past += "{}";
  const std::vector<Case> cases = {
      {"empty", "", "truncated"},
      {"short", "abc", "truncated"},
      {"huge_header", huge, "header length"},
      {"header_past_eof", past, "truncated"},
      {"zero_header", RawFile("", ""), "header length"},
      {"not_json", RawFile("{nope", ""), "not valid JSON"},
      {"not_object", RawFile("{}", "").substr(0, 8) + "[]", "header"},
      {"array", RawFile("[1,2]", ""), "'{'"},
      {"entry_not_object", RawFile(R"({"t":5})", ""), "tensor 't'"},
      {"no_dtype", RawFile(R"({"t":{"shape":[4],"data_offsets":[0,16]}})", d16), "tensor 't'"},
      {"bad_dtype", RawFile(R"({"t":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}})", d16),
       "unknown dtype 'Q4'"},
      {"neg_shape", RawFile(R"({"t":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", d16),
       "negative"},
      {"float_shape", RawFile(R"({"t":{"dtype":"F32","shape":[4.0],"data_offsets":[0,16]}})", d16),
       "tensor 't'"},
      {"shape_overflow",
       RawFile(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,16]}})",
               d16),
       "overflows"},
      {"past_end", RawFile(R"({"t":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}})", d16),
       "outside the data section"},
      {"reversed", RawFile(R"({"t":{"dtype":"F32","shape":[0],"data_offsets":[16,8]}})", d16),
       "tensor 't'"},
      {"size_mismatch", RawFile(R"({"t":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", d16),
       "needs 12"},
      {"bf16_mismatch", RawFile(R"({"t":{"dtype":"BF16","shape":[4],"data_offsets":[0,16]}})", d16),
       "needs 8"},
      {"offsets_type", RawFile(R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0]}})", d16),
       "data_offsets"},
      {"neg_offsets", RawFile(R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[-16,0]}})", d16),
       "data_offsets"},
      {"metadata_value", RawFile(R"({"__metadata__":{"k":1}})", ""), "__metadata__"},
  };
  for (const Case& c : cases) {
    const std::string path = P(c.name + ".safetensors");
    WriteFileOrDie(path, c.bytes);
    auto f = SafetensorsFile::Open(path);
    ASSERT_FALSE(f.ok()) << c.name;
    const std::string msg(f.status().message());
    EXPECT_TRUE(HasSub(msg, c.name + ".safetensors")) << c.name;
    EXPECT_TRUE(HasSub(msg, c.expect)) << c.name;
  }
  EXPECT_EQ(SafetensorsFile::Open(P("nonexistent.safetensors")).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_FALSE(SafetensorsFile::Open(dir_).ok());  // a directory
}

TEST_F(SafetensorsTest, TruncatedWrittenFileFails) {
  std::vector<float> v(64, 0.5f);
  const std::string path = P("t.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, {{"w", DType::kF32, {8, 8}, v.data(), 256}}).ok());
  const std::string raw = ReadFileOrDie(path);
  for (size_t cut :
       {size_t{0}, size_t{7}, size_t{8}, size_t{20}, raw.size() - 256, raw.size() - 1}) {
    WriteFileOrDie(path, raw.substr(0, cut));
    auto f = SafetensorsFile::Open(path);
    EXPECT_FALSE(f.ok()) << cut;
    EXPECT_TRUE(HasSub(std::string(f.status().message()), "t.safetensors")) << cut;
  }
}

TEST_F(SafetensorsTest, ShardedCheckpoint) {
  std::vector<float> a = {1, 2, 3, 4}, b = {5, 6}, c = {7};
  ASSERT_TRUE(WriteSafetensors(P("s1.safetensors"), {{"a", DType::kF32, {2, 2}, a.data(), 16},
                                                     {"b", DType::kF32, {2}, b.data(), 8}})
                  .ok());
  ASSERT_TRUE(WriteSafetensors(P("s2.safetensors"), {{"c", DType::kF32, {1}, c.data(), 4}}).ok());
  ASSERT_TRUE(WriteSafetensorsIndex(
                  P("model.safetensors.index.json"),
                  {{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s2.safetensors"}}, 28)
                  .ok());
  auto wm = ReadSafetensorsIndex(P("model.safetensors.index.json"));
  ASSERT_TRUE(wm.ok()) << wm.status();
  EXPECT_EQ(wm->size(), 3u);
  EXPECT_EQ(wm->at("c"), "s2.safetensors");

  auto ck = SafetensorsCheckpoint::Open(dir_);
  ASSERT_TRUE(ck.ok()) << ck.status();
  EXPECT_EQ((*ck)->files().size(), 2u);
  auto e = (*ck)->Get("c");
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(HasSub(e->file->path(), "s2.safetensors"));
  float got;
  std::memcpy(&got, e->tensor->data, 4);
  EXPECT_EQ(got, 7.f);
  EXPECT_FALSE((*ck)->Find("d").has_value());
  auto missing = (*ck)->Get("d");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(HasSub(std::string(missing.status().message()), "'d'"));

  // The index names a tensor its shard lacks.
  ASSERT_TRUE(WriteSafetensorsIndex(P("model.safetensors.index.json"),
                                    {{"a", "s1.safetensors"}, {"c", "s1.safetensors"}}, 0)
                  .ok());
  auto bad = SafetensorsCheckpoint::Open(dir_);
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(HasSub(std::string(bad.status().message()), "'c'"));
  EXPECT_TRUE(HasSub(std::string(bad.status().message()), "s1.safetensors"));

  // The index names a shard that does not exist.
  ASSERT_TRUE(
      WriteSafetensorsIndex(P("model.safetensors.index.json"), {{"a", "s9.safetensors"}}, 0).ok());
  bad = SafetensorsCheckpoint::Open(dir_);
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(HasSub(std::string(bad.status().message()), "s9.safetensors"));

  // Shard names escaping the directory, and malformed indexes.
  WriteFileOrDie(P("model.safetensors.index.json"), R"({"weight_map":{"a":"../s1.safetensors"}})");
  EXPECT_FALSE(SafetensorsCheckpoint::Open(dir_).ok());
  WriteFileOrDie(P("model.safetensors.index.json"), R"({"weight_map":{"a":"/etc/passwd"}})");
  EXPECT_FALSE(SafetensorsCheckpoint::Open(dir_).ok());
  WriteFileOrDie(P("model.safetensors.index.json"), R"({"weight_map":{"a":3}})");
  EXPECT_FALSE(SafetensorsCheckpoint::Open(dir_).ok());
  WriteFileOrDie(P("model.safetensors.index.json"), R"({"metadata":{}})");
  auto nomap = ReadSafetensorsIndex(P("model.safetensors.index.json"));
  ASSERT_FALSE(nomap.ok());
  EXPECT_TRUE(HasSub(std::string(nomap.status().message()), "weight_map"));
  WriteFileOrDie(P("model.safetensors.index.json"), "{not json");
  EXPECT_FALSE(SafetensorsCheckpoint::Open(dir_).ok());

  // Without an index, model.safetensors is used; with neither, NOT_FOUND.
  std::filesystem::remove(P("model.safetensors.index.json"));
  EXPECT_EQ(SafetensorsCheckpoint::Open(dir_).status().code(), absl::StatusCode::kNotFound);
  std::filesystem::rename(P("s1.safetensors"), P("model.safetensors"));
  auto single = SafetensorsCheckpoint::Open(dir_);
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_TRUE((*single)->Find("a").has_value());
  EXPECT_TRUE((*single)->Find("b").has_value());
}

TEST_F(SafetensorsTest, WriteFileAtomic) {
  ASSERT_TRUE(WriteFileAtomic(P("x.json"), "{\"a\": 1}").ok());
  EXPECT_EQ(ReadFileOrDie(P("x.json")), "{\"a\": 1}");
  ASSERT_TRUE(WriteFileAtomic(P("x.json"), "").ok());
  EXPECT_EQ(ReadFileOrDie(P("x.json")), "");
  EXPECT_FALSE(WriteFileAtomic(P("no/such/dir/x.json"), "1").ok());
}

}  // namespace
}  // namespace eora
