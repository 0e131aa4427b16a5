// Tests of the SentencePiece-style tokenizer (MakeSpmTokenizer) and of the
// SPM vocabulary -> tokenizer.json converter (SpmVocabToHfTokenizerJson), on
// hand-built vocabularies and on the 512-piece vocabulary of the bundled
// stories260K GGUF (read by a minimal GGUF metadata reader in this file, so the
// test does not depend on the engine's GGUF loader).

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace eora {
namespace {

// ---- Minimal GGUF (v2/v3) metadata reader ----------------------------------------

class GgufMeta {
 public:
  explicit GgufMeta(const std::string& path) : data_(eora::testing::ReadFileOrDie(path)) {
    if (data_.size() < 24 || data_.compare(0, 4, "GGUF") != 0) throw std::runtime_error("not a GGUF file");
    pos_ = 4;
    const uint32_t version = Read<uint32_t>();
    if (version < 2) throw std::runtime_error("unsupported GGUF version");
    Read<uint64_t>();  // n_tensors
    const uint64_t n_kv = Read<uint64_t>();
    for (uint64_t i = 0; i < n_kv; ++i) {
      const std::string key = ReadString();
      const uint32_t type = Read<uint32_t>();
      Value v;
      ReadValue(type, v);
      kv_[key] = std::move(v);
    }
  }

  struct Value {
    double number = 0;                 // scalars
    std::string str;                   // type 8
    std::vector<double> numbers;       // arrays of scalars
    std::vector<std::string> strings;  // arrays of strings
  };
  bool Has(const std::string& key) const { return kv_.count(key) > 0; }
  const Value& Get(const std::string& key) const {
    auto it = kv_.find(key);
    if (it == kv_.end()) throw std::runtime_error("missing GGUF key " + key);
    return it->second;
  }

 private:
  template <typename T>
  T Read() {
    if (pos_ + sizeof(T) > data_.size()) throw std::runtime_error("truncated GGUF");
    T v;
    std::memcpy(&v, data_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string ReadString() {
    const uint64_t n = Read<uint64_t>();
    if (n > data_.size() - pos_) throw std::runtime_error("truncated GGUF string");
    std::string s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  double ReadScalar(uint32_t type) {
    switch (type) {
      case 0: return Read<uint8_t>();
      case 1: return Read<int8_t>();
      case 2: return Read<uint16_t>();
      case 3: return Read<int16_t>();
      case 4: return Read<uint32_t>();
      case 5: return Read<int32_t>();
      case 6: return Read<float>();
      case 7: return Read<uint8_t>();
      case 10: return static_cast<double>(Read<uint64_t>());
      case 11: return static_cast<double>(Read<int64_t>());
      case 12: return Read<double>();
      default: throw std::runtime_error("bad GGUF value type " + std::to_string(type));
    }
  }
  void ReadValue(uint32_t type, Value& v) {
    if (type == 8) {
      v.str = ReadString();
    } else if (type == 9) {
      const uint32_t elem = Read<uint32_t>();
      const uint64_t count = Read<uint64_t>();
      for (uint64_t i = 0; i < count; ++i) {
        if (elem == 8) {
          v.strings.push_back(ReadString());
        } else if (elem == 9) {
          throw std::runtime_error("nested GGUF arrays not supported here");
        } else {
          v.numbers.push_back(ReadScalar(elem));
        }
      }
    } else {
      v.number = ReadScalar(type);
    }
  }

  std::string data_;
  size_t pos_ = 0;
  std::map<std::string, Value> kv_;
};

SpmVocab ReadStoriesVocab() {
  GgufMeta meta(eora::testing::Stories260kPath());
  SpmVocab v;
  v.pieces = meta.Get("tokenizer.ggml.tokens").strings;
  for (double s : meta.Get("tokenizer.ggml.scores").numbers) v.scores.push_back(static_cast<float>(s));
  for (double t : meta.Get("tokenizer.ggml.token_type").numbers) v.types.push_back(static_cast<int>(t));
  v.bos_id = static_cast<int>(meta.Get("tokenizer.ggml.bos_token_id").number);
  v.eos_id = static_cast<int>(meta.Get("tokenizer.ggml.eos_token_id").number);
  v.unk_id = static_cast<int>(meta.Get("tokenizer.ggml.unknown_token_id").number);
  return v;
}

const SpmVocab& StoriesVocab() {
  static const SpmVocab* v = new SpmVocab(ReadStoriesVocab());
  return *v;
}
const Tokenizer& Stories() {
  static const Tokenizer* t = [] {
    auto tok = MakeSpmTokenizer(StoriesVocab());
    if (!tok.ok()) throw std::runtime_error(std::string(tok.status().message()));
    return tok->release();
  }();
  return *t;
}

constexpr char kReference[] =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";

std::vector<int> Cat(std::vector<int> a, const std::vector<int>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// Texts covering the awkward cases; all must round-trip exactly.
std::vector<std::string> RoundTripTexts() {
  return {kReference,
          "",
          "a",
          " ",
          "   ",
          " leading space",
          "trailing space ",
          "  two  spaces  everywhere  ",
          "line one\nline two\n\n\nline five\n",
          "tab\there\r\nCRLF",
          "héllo 世界 🙂",
          "naïve café, Straße, Ελληνικά, Русский, 日本語, 한국어, 🇫🇷👍🏽",
          "Numbers 0123456789 and punctuation !\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
          "<s> and </s> and <unk> are plain text here",
          "<0x41> is not a byte token in text",
          std::string("nul\0byte", 8),
          "\x01\x02\x7f control bytes",
          "One day, she saw a big, red ball. \"Can I play?\" she asked. Mom said yes!"};
}

// ---- Naive O(n^2) reference implementation ---------------------------------------

// Splits valid UTF-8 by lead byte (the texts fed to it are valid UTF-8).
std::vector<std::string> NaiveChars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    len = std::min(len, s.size() - i);
    out.push_back(s.substr(i, len));
    i += len;
  }
  return out;
}

// Repeatedly merges the adjacent pair whose concatenation is a (normal) piece with
// the highest score, leftmost on ties; then byte fallback. Mirrors the documented
// SentencePiece/llama.cpp semantics without any of the implementation's machinery.
std::vector<int> NaiveSpmEncode(const SpmVocab& v, const std::string& text) {
  if (text.empty()) return {};
  std::unordered_map<std::string, int> normal;
  std::unordered_map<std::string, int> bytes;
  for (size_t i = 0; i < v.pieces.size(); ++i) {
    const int type = v.types.empty() ? 1 : v.types[i];
    if (type == 1) normal.emplace(v.pieces[i], static_cast<int>(i));
    if (type == 6) bytes.emplace(v.pieces[i], static_cast<int>(i));
  }
  std::string norm = v.add_space_prefix ? "\xE2\x96\x81" : "";
  for (char c : text) norm += (c == ' ') ? std::string("\xE2\x96\x81") : std::string(1, c);
  std::vector<std::string> sym = NaiveChars(norm);
  while (true) {
    int best = -1;
    float best_score = -std::numeric_limits<float>::infinity();
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = normal.find(sym[i] + sym[i + 1]);
      if (it == normal.end()) continue;
      const float sc = v.scores[it->second];
      if (best < 0 || sc > best_score) {
        best = static_cast<int>(i);
        best_score = sc;
      }
    }
    if (best < 0) break;
    sym[best] += sym[best + 1];
    sym.erase(sym.begin() + best + 1);
  }
  std::vector<int> out;
  for (const auto& s : sym) {
    auto it = normal.find(s);
    if (it != normal.end()) {
      out.push_back(it->second);
      continue;
    }
    for (unsigned char c : s) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", c);
      auto b = bytes.find(name);
      out.push_back(b != bytes.end() ? b->second : v.unk_id);
    }
  }
  return out;
}

// Random character-aligned slices of a text (never splitting a UTF-8 sequence).
std::vector<std::string> RandomSlices(const std::string& text, int count, size_t max_len, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::string> out;
  auto is_cont = [&](size_t i) { return i < text.size() && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80; };
  while (static_cast<int>(out.size()) < count) {
    size_t a = std::uniform_int_distribution<size_t>(0, text.size() - 1)(rng);
    size_t len = std::uniform_int_distribution<size_t>(0, max_len)(rng);
    size_t b = std::min(text.size(), a + len);
    while (is_cont(a)) ++a;
    while (is_cont(b)) ++b;
    if (a > b) continue;
    out.push_back(text.substr(a, b - a));
  }
  return out;
}

// Built-in corpus used when ../shared is absent (and in addition to it).
std::string BuiltinCorpus() {
  std::string s;
  for (const auto& t : RoundTripTexts()) {
    if (t.find('\0') != std::string::npos) continue;
    s += t;
    s += "\n";
  }
  s += "Tom and Sue went to the zoo. They saw a lion, a tiger and a very tall giraffe. "
       "\"Look!\" said Tom. The giraffe ate leaves from the top of the tree. Sue laughed "
       "and laughed.  Then it was time to go home; they were tired but happy.\n";
  return s;
}

// ---- Hand-built vocabularies ------------------------------------------------------

constexpr int kFirstByte = 11;  // <0x00> is id 11 in the toy vocabulary

// 0 <unk>, 1 <s>, 2 </s>, 3 ▁, 4 a, 5 b, 6 c, 7 ab, 8 bc, 9 ▁a, 10 abc, 11.. <0x00>..<0xFF>
SpmVocab ToyVocab(float score_ab, float score_bc, bool with_bytes = true) {
  SpmVocab v;
  v.pieces = {"<unk>", "<s>", "</s>", "\xE2\x96\x81", "a", "b", "c", "ab", "bc", "\xE2\x96\x81" "a", "abc"};
  v.scores = {0, 0, 0, -10, -11, -12, -13, score_ab, score_bc, -2, -3};
  v.types = {2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1};
  if (with_bytes) {
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      v.pieces.push_back(name);
      v.scores.push_back(0);
      v.types.push_back(6);
    }
  }
  return v;
}

std::unique_ptr<Tokenizer> MustMake(SpmVocab v) {
  auto t = MakeSpmTokenizer(std::move(v));
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

TEST(SpmTokenizerToy, MergeOrderFollowsScores) {
  // "abc" -> "▁abc". bc (-0.5) beats ab (-1): [▁ a bc]; then ▁a (-2) beats abc (-3): [▁a bc].
  auto t1 = MustMake(ToyVocab(-1.0f, -0.5f));
  EXPECT_EQ(t1->Encode("abc", false), (std::vector<int>{9, 8}));
  // ab (-0.5) beats bc (-1): [▁ ab c]; then abc (-3) ([▁a] is gone): [▁ abc].
  auto t2 = MustMake(ToyVocab(-0.5f, -1.0f));
  EXPECT_EQ(t2->Encode("abc", false), (std::vector<int>{3, 10}));
  // Tie between ab and bc: the leftmost pair (ab) wins, as in the previous case.
  auto t3 = MustMake(ToyVocab(-1.0f, -1.0f));
  EXPECT_EQ(t3->Encode("abc", false), (std::vector<int>{3, 10}));
  EXPECT_EQ(t3->Encode("abc", true), (std::vector<int>{1, 3, 10}));
  // Two words: spaces become ▁ and merge like any other symbol.
  EXPECT_EQ(t1->Encode("abc abc", false), (std::vector<int>{9, 8, 9, 8}));
  for (auto* t : {t1.get(), t2.get(), t3.get()}) {
    EXPECT_EQ(t->Decode(t->Encode("abc abc", true)), "abc abc");
  }
}

TEST(SpmTokenizerToy, ByteFallbackAndUnk) {
  auto t = MustMake(ToyVocab(-1.0f, -0.5f));
  // "aé" -> "▁aé": ▁a merges, é (C3 A9) has no piece -> two byte pieces.
  EXPECT_EQ(t->Encode("a\xC3\xA9", false), (std::vector<int>{9, kFirstByte + 0xC3, kFirstByte + 0xA9}));
  EXPECT_EQ(t->Decode(t->Encode("a\xC3\xA9", true)), "a\xC3\xA9");
  // "z" is not a piece: byte 0x7A; "▁" stays alone.
  EXPECT_EQ(t->Encode("z", false), (std::vector<int>{3, kFirstByte + 'z'}));
  EXPECT_EQ(t->Decode({1, 3, kFirstByte + 'z'}), "z");
  // Without byte pieces: one UNK per unknown character.
  auto nobytes = MustMake(ToyVocab(-1.0f, -0.5f, /*with_bytes=*/false));
  EXPECT_EQ(nobytes->Encode("a\xC3\xA9z", false), (std::vector<int>{9, 0, 0}));
  EXPECT_EQ(nobytes->Decode({9, 0, 0}), "a");
}

TEST(SpmTokenizerToy, DecodeRules) {
  auto t = MustMake(ToyVocab(-1.0f, -0.5f));
  EXPECT_EQ(t->DecodeToken(-1, 9), "a");     // leading space of the first piece dropped
  EXPECT_EQ(t->DecodeToken(1, 9), "a");      // ... also right after BOS
  EXPECT_EQ(t->DecodeToken(8, 9), " a");     // but kept elsewhere
  EXPECT_EQ(t->DecodeToken(2, 9), " a");     // (EOS is not BOS)
  EXPECT_EQ(t->DecodeToken(-1, 1), "");      // control pieces decode to nothing
  EXPECT_EQ(t->DecodeToken(-1, 2), "");
  EXPECT_EQ(t->DecodeToken(-1, 0), "");      // UNK too
  EXPECT_EQ(t->DecodeToken(9, kFirstByte + 0x41), "A");
  EXPECT_EQ(t->DecodeToken(-1, 100000), "");  // out of range
  EXPECT_EQ(t->DecodeToken(-1, -5), "");
  EXPECT_EQ(t->Piece(9), "\xE2\x96\x81" "a");
  EXPECT_EQ(t->Piece(-1), "");
  EXPECT_EQ(t->Piece(t->vocab_size()), "");
  EXPECT_EQ(t->Decode({1, 9, 8, 2}), "abc");
}

TEST(SpmTokenizerToy, NoSpacePrefix) {
  SpmVocab v = ToyVocab(-1.0f, -0.5f);
  v.add_space_prefix = false;
  auto t = MustMake(v);
  // "abc": bc first, then a+bc = abc.
  EXPECT_EQ(t->Encode("abc", false), (std::vector<int>{10}));
  EXPECT_EQ(t->Encode(" abc", false), (std::vector<int>{9, 8}));
  EXPECT_EQ(t->Decode(t->Encode(" abc", true)), " abc");  // nothing stripped
  EXPECT_EQ(t->Decode(t->Encode("abc", true)), "abc");
}

TEST(SpmTokenizerToy, TypesOptionalAndUserDefined) {
  SpmVocab v = ToyVocab(-1.0f, -0.5f);
  v.types.clear();  // byte pieces are then recognised by their <0xXX> form
  v.scores.clear();  // all scores 0: ties everywhere, leftmost wins
  auto t = MustMake(v);
  // "▁abc": all pairs score 0 -> leftmost (▁a), then ▁a+b no, bc -> [▁a bc].
  EXPECT_EQ(t->Encode("abc", false), (std::vector<int>{9, 8}));
  EXPECT_EQ(t->Encode("\xC3\xA9", false), (std::vector<int>{3, kFirstByte + 0xC3, kFirstByte + 0xA9}));
  // Without types, <s> is an ordinary piece and decodes as its text.
  EXPECT_EQ(t->DecodeToken(5, 1), "<s>");

  // A user-defined piece (type 4) is matched literally and splits the text; each
  // following text fragment gets its own space prefix (llama.cpp behaviour).
  SpmVocab u = ToyVocab(-1.0f, -0.5f);
  u.pieces.push_back("<tool>");
  u.scores.push_back(0);
  u.types.push_back(4);
  const int tool = static_cast<int>(u.pieces.size()) - 1;
  auto tu = MustMake(u);
  EXPECT_EQ(tu->Encode("abc<tool>abc", false), (std::vector<int>{9, 8, tool, 9, 8}));
  EXPECT_EQ(tu->Encode("<tool>", false), (std::vector<int>{tool}));
  EXPECT_EQ(tu->Decode({tool, 9, 8}), "<tool> abc");
}

TEST(SpmTokenizerToy, ValidationErrors) {
  auto expect_error = [](SpmVocab v, const std::string& needle) {
    auto t = MakeSpmTokenizer(std::move(v));
    ASSERT_FALSE(t.ok()) << "expected an error mentioning " << needle;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(std::string(t.status().message()).find(needle), std::string::npos) << t.status();
  };
  expect_error(SpmVocab{}, "no pieces");
  {
    SpmVocab v = ToyVocab(-1, -1);
    v.scores.pop_back();
    expect_error(v, "scores");
  }
  {
    SpmVocab v = ToyVocab(-1, -1);
    v.types.push_back(1);
    expect_error(v, "token types");
  }
  {
    SpmVocab v = ToyVocab(-1, -1);
    v.bos_id = 100000;
    expect_error(v, "bos_id");
  }
  {
    SpmVocab v = ToyVocab(-1, -1);
    v.eos_id = -7;
    expect_error(v, "eos_id");
  }
  {
    SpmVocab v = ToyVocab(-1, -1);
    v.unk_id = static_cast<int>(v.pieces.size());
    expect_error(v, "unk_id");
  }
  {
    SpmVocab v = ToyVocab(-1, -1);
    v.pieces[5] = "a";  // duplicate of id 4
    expect_error(v, "duplicate piece 'a' (ids 4 and 5)");
  }
  {
    SpmVocab v = ToyVocab(-1, -1);
    v.types[4] = 6;  // "a" claims to be a byte piece
    expect_error(v, "not of the form <0xXX>");
  }
  {
    SpmVocab v = ToyVocab(-1, -1);
    v.types[4] = 9;
    expect_error(v, "unknown token type 9");
  }
  {
    SpmVocab v = ToyVocab(-1, -1);
    v.scores[4] = std::numeric_limits<float>::quiet_NaN();
    expect_error(v, "not finite");
  }
  {
    // Repeated control pieces are tolerated (some real vocabularies have them).
    SpmVocab v = ToyVocab(-1, -1);
    v.pieces.push_back("</s>");
    v.scores.push_back(0);
    v.types.push_back(3);
    EXPECT_TRUE(MakeSpmTokenizer(v).ok());
  }
  {
    // -1 means "none" for the special ids.
    SpmVocab v = ToyVocab(-1, -1, /*with_bytes=*/false);
    v.unk_id = -1;
    v.bos_id = -1;
    auto t = MustMake(v);
    EXPECT_EQ(t->Encode("az", true), (std::vector<int>{9}));  // z dropped: no byte piece, no UNK
  }
}

// ---- stories260K ------------------------------------------------------------------

TEST(SpmTokenizerStories, VocabularyFromGguf) {
  const Tokenizer& t = Stories();
  EXPECT_EQ(t.vocab_size(), 512);
  EXPECT_EQ(t.bos_id(), 1);
  EXPECT_EQ(t.eos_id(), 2);
  EXPECT_EQ(t.Piece(0), "<unk>");
  EXPECT_EQ(t.Piece(1), "<s>");
  EXPECT_EQ(t.Piece(3), "<0x00>");
  EXPECT_EQ(t.Piece(258), "<0xFF>");
  EXPECT_EQ(t.Piece(259), "\xE2\x96\x81t");  // "▁t", the first merge
}

TEST(SpmTokenizerStories, ReferenceSentence) {
  const Tokenizer& t = Stories();
  const std::vector<int> ids = t.Encode(kReference, true);
  ASSERT_GE(ids.size(), 2u);
  EXPECT_EQ(ids[0], 1);
  std::string joined;
  for (size_t i = 1; i < ids.size(); ++i) {
    // ASCII text needs no byte fallback in this vocabulary.
    EXPECT_GE(ids[i], 259) << "piece " << t.Piece(ids[i]);
    joined += std::string(t.Piece(ids[i]));
  }
  std::string normalized = "\xE2\x96\x81";
  for (char c : std::string(kReference)) normalized += (c == ' ') ? std::string("\xE2\x96\x81") : std::string(1, c);
  EXPECT_EQ(joined, normalized);  // a segmentation of the normalized text
  EXPECT_EQ(t.Decode(ids), kReference);
  EXPECT_EQ(ids, Cat({1}, NaiveSpmEncode(StoriesVocab(), kReference)));
}

// Ids computed independently by transformers.js (npm @lenml/tokenizers 3.7.2, a
// separate BPE implementation) from the tokenizer.json that SpmVocabToHfTokenizerJson
// produces for the stories260K vocabulary (the converter's merges follow
// transformers' SentencePiece converter, so these are the ids Hugging Face would give).
TEST(SpmTokenizerStories, MatchesTransformersJsIds) {
  const Tokenizer& t = Stories();
  const std::vector<std::pair<std::string, std::vector<int>>> cases = {
      {kReference,
       {1,   403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426,
        338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295, 433, 426}},
      {"h\xC3\xA9llo \xE4\xB8\x96\xE7\x95\x8C \xF0\x9F\x99\x82",
       {1, 270, 485, 306, 414, 410, 231, 187, 153, 234, 152, 143, 410, 243, 162, 156, 133}},
      {"  two  spaces  everywhere  ",
       {1, 410, 410, 259, 424, 414, 410, 262, 427, 412, 331, 419, 410, 344, 363, 424, 260, 276, 410, 410}},
      {"line one\nline two\n\n\nline five\n",
       {1, 278, 271, 411, 353, 411, 13, 421, 271, 411, 259, 424, 414, 13, 13, 13, 421, 271, 411, 272,
        417, 360, 13}},
  };
  for (const auto& [text, expected] : cases) {
    EXPECT_EQ(t.Encode(text, true), expected) << text;
    EXPECT_EQ(t.Decode(expected), text);
  }
}

TEST(SpmTokenizerStories, RoundTrips) {
  const Tokenizer& t = Stories();
  for (const std::string& text : RoundTripTexts()) {
    for (bool bos : {false, true}) {
      const std::vector<int> ids = t.Encode(text, bos);
      for (int id : ids) ASSERT_TRUE(id >= 0 && id < t.vocab_size());
      EXPECT_EQ(t.Decode(ids), text) << "bos=" << bos;
      // Token-by-token decoding concatenates to the same text.
      std::string streamed;
      int prev = -1;
      for (int id : ids) {
        streamed += t.DecodeToken(prev, id);
        prev = id;
      }
      EXPECT_EQ(streamed, text);
    }
  }
  EXPECT_TRUE(t.Encode("", false).empty());
  EXPECT_EQ(t.Encode("", true), (std::vector<int>{1}));
  // Non-ASCII characters absent from the vocabulary go through byte pieces.
  const std::vector<int> ids = t.Encode("世", false);
  ASSERT_EQ(ids.size(), 4u);  // ▁ + 3 bytes
  EXPECT_EQ(t.Piece(ids[1]), "<0xE4>");
  EXPECT_EQ(t.Piece(ids[2]), "<0xB8>");
  EXPECT_EQ(t.Piece(ids[3]), "<0x96>");
}

TEST(SpmTokenizerStories, MalformedUtf8RoundTrips) {
  const Tokenizer& t = Stories();
  std::mt19937 rng(7);
  for (int i = 0; i < 300; ++i) {
    std::string s(std::uniform_int_distribution<int>(0, 40)(rng), '\0');
    for (char& c : s) c = static_cast<char>(std::uniform_int_distribution<int>(0, 255)(rng));
    EXPECT_EQ(t.Decode(t.Encode(s, true)), s);
  }
  // Truncated / invalid sequences.
  for (const std::string s : {"\xE4\xB8", "\xC3", "a\x80z", "\xF0\x9F\x99", "\xED\xA0\x80", "\xC0\xAF"}) {
    EXPECT_EQ(t.Decode(t.Encode(s, false)), s);
  }
}

std::string CorpusOrEmpty() {
  const std::string path = eora::testing::SharedDataPath("tinystories/valid.txt");
  if (path.empty()) return "";
  return eora::testing::ReadFileOrDie(path);
}

TEST(SpmTokenizerStories, MatchesNaiveReferenceOnBuiltinText) {
  const std::string corpus = BuiltinCorpus();
  for (const std::string& s : RandomSlices(corpus, 500, 120, 123)) {
    ASSERT_EQ(Stories().Encode(s, false), NaiveSpmEncode(StoriesVocab(), s)) << "text: " << s;
  }
}

TEST(SpmTokenizerStories, MatchesNaiveReferenceOnTinyStories) {
  const std::string corpus = CorpusOrEmpty();
  if (corpus.empty()) GTEST_SKIP() << "../shared/data/tinystories/valid.txt not present";
  int checked = 0;
  for (const std::string& s : RandomSlices(corpus, 2000, 160, 2024)) {
    const std::vector<int> ids = Stories().Encode(s, false);
    ASSERT_EQ(ids, NaiveSpmEncode(StoriesVocab(), s)) << "text: " << s;
    ASSERT_EQ(Stories().Decode(ids), s);
    ++checked;
  }
  EXPECT_EQ(checked, 2000);
}

TEST(SpmTokenizerStories, EncodesLargeTextRoundTrip) {
  std::string text = CorpusOrEmpty();
  if (text.size() < 100000) {
    const std::string b = BuiltinCorpus();
    while (text.size() < 100000) text += b;
  }
  text.resize(100000);
  while (!text.empty() && (static_cast<unsigned char>(text.back()) & 0xC0) == 0x80) text.pop_back();
  // Best of three runs (printed for information).
  std::vector<int> ids;
  double ms = 1e9;
  for (int run = 0; run < 3; ++run) {
    const auto t0 = std::chrono::steady_clock::now();
    ids = Stories().Encode(text, true);
    ms = std::min(ms, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::printf("encoded %zu bytes into %zu tokens in %.2f ms\n", text.size(), ids.size(), ms);
  EXPECT_EQ(Stories().Decode(ids), text);
  // Speed is reported, not asserted (tests check behaviour; timings belong in bench/).
}

// ---- SPM vocabulary -> tokenizer.json ------------------------------------------------

std::unique_ptr<Tokenizer> ConvertedStories() {
  auto json_text = SpmVocabToHfTokenizerJson(StoriesVocab());
  EXPECT_TRUE(json_text.ok()) << json_text.status();
  if (!json_text.ok()) return nullptr;
  if (const char* dump = std::getenv("EORA_DUMP_CONVERTED_TOKENIZER")) {
    eora::testing::WriteFileOrDie(dump, *json_text);
  }
  auto tok = ParseHfTokenizer(*json_text, "converted stories260K");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(*tok) : nullptr;
}

TEST(SpmToHfJson, Structure) {
  auto json_text = SpmVocabToHfTokenizerJson(StoriesVocab());
  ASSERT_TRUE(json_text.ok()) << json_text.status();
  const nlohmann::json j = nlohmann::json::parse(*json_text);
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_EQ(j["model"]["byte_fallback"], true);
  EXPECT_EQ(j["model"]["unk_token"], "<unk>");
  EXPECT_EQ(j["model"]["vocab"].size(), 512u);
  EXPECT_EQ(j["model"]["vocab"]["<0x41>"], 68);
  // One merge per way of splitting a normal piece into two normal pieces (165 for
  // this vocabulary; every one of its 151 multi-character pieces has a split).
  std::unordered_map<std::string, int> normal;
  for (size_t i = 0; i < StoriesVocab().pieces.size(); ++i) {
    if (StoriesVocab().types[i] == 1) normal.emplace(StoriesVocab().pieces[i], static_cast<int>(i));
  }
  size_t n_merges = 0;
  for (const auto& [piece, id] : normal) {
    const std::vector<std::string> chars = NaiveChars(piece);
    std::string left;
    for (size_t k = 0; k + 1 < chars.size(); ++k) {
      left += chars[k];
      n_merges += normal.count(left) && normal.count(piece.substr(left.size()));
    }
  }
  EXPECT_EQ(n_merges, 165u);
  EXPECT_EQ(j["model"]["merges"].size(), n_merges);
  // Highest-scoring piece first: "▁t" (id 259, score 0) = "▁" + "t".
  EXPECT_EQ(j["model"]["merges"][0], "\xE2\x96\x81 t");
  EXPECT_EQ(j["post_processor"]["single"][0]["SpecialToken"]["id"], "<s>");
  ASSERT_EQ(j["added_tokens"].size(), 3u);  // <unk>, <s>, </s>
  EXPECT_EQ(j["added_tokens"][1]["content"], "<s>");
  EXPECT_EQ(j["added_tokens"][1]["special"], true);

  auto bad = SpmVocabToHfTokenizerJson(SpmVocab{});
  EXPECT_FALSE(bad.ok());
}

TEST(SpmToHfJson, SameIdsAsSpmOnBuiltinText) {
  auto hf = ConvertedStories();
  ASSERT_NE(hf, nullptr);
  EXPECT_EQ(hf->vocab_size(), 512);
  EXPECT_EQ(hf->bos_id(), 1);
  EXPECT_EQ(hf->eos_id(), 2);
  for (const std::string& text : RoundTripTexts()) {
    EXPECT_EQ(hf->Encode(text, true), Stories().Encode(text, true)) << text;
    EXPECT_EQ(hf->Decode(hf->Encode(text, true)), text);
  }
  for (const std::string& s : RandomSlices(BuiltinCorpus(), 3000, 200, 99)) {
    ASSERT_EQ(hf->Encode(s, false), Stories().Encode(s, false)) << s;
  }
}

TEST(SpmToHfJson, SameIdsAsSpmOnTinyStories) {
  const std::string corpus = CorpusOrEmpty();
  if (corpus.empty()) GTEST_SKIP() << "../shared/data/tinystories/valid.txt not present";
  auto hf = ConvertedStories();
  ASSERT_NE(hf, nullptr);
  for (const std::string& s : RandomSlices(corpus, 5000, 400, 31337)) {
    const std::vector<int> ids = Stories().Encode(s, true);
    ASSERT_EQ(hf->Encode(s, true), ids) << s;
    ASSERT_EQ(hf->Decode(ids), s);
  }
  // And one big slice.
  const std::string big = corpus.substr(0, std::min<size_t>(corpus.size(), 200000));
  EXPECT_EQ(hf->Encode(big, true), Stories().Encode(big, true));
}

TEST(SpmToHfJson, ToyVocabularies) {
  for (auto [ab, bc] : {std::pair{-1.0f, -0.5f}, std::pair{-0.5f, -1.0f}}) {
    SpmVocab v = ToyVocab(ab, bc);
    auto spm = MustMake(v);
    auto json_text = SpmVocabToHfTokenizerJson(v);
    ASSERT_TRUE(json_text.ok()) << json_text.status();
    auto hf = ParseHfTokenizer(*json_text, "toy");
    ASSERT_TRUE(hf.ok()) << hf.status();
    for (const std::string s : {"abc", "abc abc", "aabbcc", "cba", "a\xC3\xA9z", "  ab  ", ""}) {
      EXPECT_EQ((*hf)->Encode(s, true), spm->Encode(s, true)) << s;
      EXPECT_EQ((*hf)->Decode(spm->Encode(s, true)), s);
    }
  }
}

}  // namespace
}  // namespace eora
