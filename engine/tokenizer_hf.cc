// Hugging Face tokenizer.json BPE tokenizer (Llama-2 / Mistral style) and the
// SentencePiece vocabulary -> tokenizer.json converter.
//
// What is supported (anything else is an error naming the file and the field):
//  - model: type "BPE" (or absent), vocab {piece: id}, merges as "a b" strings or
//    ["a", "b"] pairs (rank = position; a repeated pair keeps its last rank, as the
//    Rust `tokenizers` crate does), byte_fallback, unk_token, fuse_unk,
//    ignore_merges; dropout must be null/0; continuing_subword_prefix and
//    end_of_word_suffix must be null/empty.
//  - added_tokens: special ones (special=true) are never matched in text and decode
//    to ""; non-special ones are matched literally in the raw input (leftmost, then
//    longest) and decode verbatim. Text between them is normalized separately (so a
//    Prepend normalizer applies to every such segment, as in `tokenizers`).
//  - normalizer: null, Prepend, Replace (String pattern) or a Sequence of those.
//  - pre_tokenizer: null, Metaspace (replacement, add_prefix_space or
//    prepend_scheme always/first/never, split) or a Sequence holding one Metaspace.
//  - decoder: null, Replace (String pattern), ByteFallback, Fuse, Strip (start only),
//    Metaspace, or a Sequence of those. Byte pieces decode to raw bytes (a token at a
//    time; invalid UTF-8 is not replaced by U+FFFD).
//  - BOS: the first SpecialToken of post_processor.single (TemplateProcessing), else
//    the token "<s>" if present, else none (-1). EOS: "</s>" if present, else -1.
//    LoadHfTokenizer additionally honours bos_token / eos_token of a
//    tokenizer_config.json next to the file. UNK: model.unk_token.
//  - BPE: each character is a vocabulary piece, else its bytes as <0xXX> pieces
//    (byte_fallback, all bytes present), else UNK (consecutive UNKs fused when
//    fuse_unk); then adjacent pairs are merged lowest rank first, ties leftmost.
//    Characters with neither a piece nor UNK are dropped (the Rust crate errors).
//  - Decoding strips the Strip/Metaspace leading spaces from the first token of a
//    sequence (prev < 0 or prev == BOS).

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <queue>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"
#include "engine/tokenizer.h"
#include "engine/tokenizer_util.h"
#include "nlohmann/json.hpp"

namespace eora {
namespace {

using json = nlohmann::json;
using tokenizer_internal::kSpaceMarker;
using tokenizer_internal::LiteralMatcher;
using tokenizer_internal::ToAbsl;

constexpr int kMaxVocab = 1 << 24;

struct NormStep {
  enum Kind { kPrepend, kReplace } kind;
  std::string a;  // prepend text / pattern
  std::string b;  // replacement content
};

enum class PrependScheme { kAlways, kFirst, kNever };

struct HfSpec {
  std::vector<std::string> pieces;               // id -> piece ("" for holes)
  absl::flat_hash_map<std::string, int> vocab;   // model.vocab
  absl::flat_hash_map<std::string, int> tokens;  // vocab + added tokens
  absl::flat_hash_map<uint64_t, std::pair<int, int>> merges;  // (a,b) -> (rank, new id)
  bool byte_fallback = false;
  bool fuse_unk = false;
  bool ignore_merges = false;
  int unk_id = -1;
  int bos_id = -1;
  int eos_id = -1;
  std::vector<NormStep> normalizers;
  bool metaspace = false;
  std::string ms_replacement = std::string(kSpaceMarker);
  PrependScheme ms_scheme = PrependScheme::kAlways;
  bool ms_split = true;
  std::vector<char> special;  // per id: decodes to ""
  std::vector<char> verbatim;  // per id: non-special added token (decoded as is)
  LiteralMatcher literals;
  // Decoder.
  struct DecStep {
    enum Kind { kReplace, kByteFallback } kind;
    std::string from, to;
  };
  std::vector<DecStep> decoder;
  int strip_start = 0;
  char strip_char = ' ';
};

uint64_t PairKey(int a, int b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

class HfTokenizer final : public Tokenizer {
 public:
  explicit HfTokenizer(HfSpec spec) : s_(std::move(spec)) {
    for (int& b : byte_to_id_) b = -1;
    if (s_.byte_fallback) {
      for (int b = 0; b < 256; ++b) {
        auto it = s_.vocab.find(tokenizer_internal::BytePieceName(static_cast<unsigned char>(b)));
        if (it != s_.vocab.end()) byte_to_id_[b] = it->second;
      }
    }
    decoded_.resize(s_.pieces.size());
    for (size_t id = 0; id < s_.pieces.size(); ++id) {
      if (s_.special[id] || static_cast<int>(id) == s_.unk_id) continue;
      if (s_.verbatim[id]) {
        decoded_[id] = s_.pieces[id];
        continue;
      }
      std::string t = s_.pieces[id];
      for (const auto& step : s_.decoder) {
        if (step.kind == HfSpec::DecStep::kReplace) {
          t = tokenizer_internal::ReplaceAll(t, step.from, step.to);
        } else {
          const int b = tokenizer_internal::ParseBytePiece(t);
          if (b >= 0) t = std::string(1, static_cast<char>(b));
        }
      }
      decoded_[id] = std::move(t);
    }
  }

  std::vector<int> Encode(std::string_view text, bool add_bos) const override;
  std::string DecodeToken(int prev, int token) const override {
    if (token < 0 || token >= vocab_size()) return {};
    const std::string& d = decoded_[token];
    if (s_.strip_start > 0 && (prev < 0 || prev == s_.bos_id) && !s_.verbatim[token]) {
      size_t k = 0;
      while (k < d.size() && k < static_cast<size_t>(s_.strip_start) && d[k] == s_.strip_char) ++k;
      return d.substr(k);
    }
    return d;
  }
  int vocab_size() const override { return static_cast<int>(s_.pieces.size()); }
  int bos_id() const override { return s_.bos_id; }
  int eos_id() const override { return s_.eos_id; }
  std::string_view Piece(int id) const override {
    if (id < 0 || id >= vocab_size()) return {};
    return s_.pieces[id];
  }

 private:
  void EncodeSegment(std::string_view raw, bool first, std::vector<int>& out) const;
  void EncodeWord(std::string_view word, std::vector<int>& out) const;

  HfSpec s_;
  int byte_to_id_[256];
  std::vector<std::string> decoded_;
};

std::vector<int> HfTokenizer::Encode(std::string_view text, bool add_bos) const {
  std::vector<int> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos && s_.bos_id >= 0) out.push_back(s_.bos_id);
  if (text.empty()) return out;
  if (s_.literals.empty()) {
    EncodeSegment(text, true, out);
    return out;
  }
  for (const auto& frag : s_.literals.Split(text)) {
    if (frag.token >= 0) {
      out.push_back(frag.token);
    } else {
      EncodeSegment(frag.text, frag.text.data() == text.data(), out);
    }
  }
  return out;
}

void HfTokenizer::EncodeSegment(std::string_view raw, bool first, std::vector<int>& out) const {
  if (raw.empty()) return;
  std::string t(raw);
  for (const auto& n : s_.normalizers) {
    if (n.kind == NormStep::kPrepend) {
      if (!t.empty()) t.insert(0, n.a);
    } else {
      t = tokenizer_internal::ReplaceAll(t, n.a, n.b);
    }
  }
  if (!s_.metaspace) {
    EncodeWord(t, out);
    return;
  }
  const std::string& rep = s_.ms_replacement;
  t = tokenizer_internal::ReplaceAll(t, " ", rep);
  const bool starts_with_rep = t.compare(0, rep.size(), rep) == 0;
  if (!starts_with_rep && (s_.ms_scheme == PrependScheme::kAlways ||
                           (s_.ms_scheme == PrependScheme::kFirst && first))) {
    t.insert(0, rep);
  }
  if (!s_.ms_split) {
    EncodeWord(t, out);
    return;
  }
  // Split before every replacement character (the delimiter starts the next word).
  std::string_view v(t);
  size_t start = 0;
  size_t pos = v.find(rep, rep.size() > 0 ? 1 : 0);
  while (pos != std::string_view::npos) {
    if (pos > start) EncodeWord(v.substr(start, pos - start), out);
    start = pos;
    pos = v.find(rep, pos + rep.size());
  }
  EncodeWord(v.substr(start), out);
}

void HfTokenizer::EncodeWord(std::string_view word, std::vector<int>& out) const {
  if (word.empty()) return;
  if (s_.ignore_merges) {
    auto it = s_.vocab.find(ToAbsl(word));
    if (it != s_.vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  struct Sym {
    int id;
    int prev;
    int next;
    bool alive;
  };
  std::vector<Sym> syms;
  syms.reserve(word.size());
  auto add = [&](int id) {
    const int idx = static_cast<int>(syms.size());
    syms.push_back({id, idx - 1, idx + 1, true});
  };
  bool last_was_unk = false;
  for (size_t off = 0; off < word.size();) {
    const size_t len = tokenizer_internal::Utf8CharLen(word.data() + off, word.size() - off);
    const std::string_view ch = word.substr(off, len);
    off += len;
    auto it = s_.vocab.find(ToAbsl(ch));
    if (it != s_.vocab.end()) {
      add(it->second);
      last_was_unk = false;
      continue;
    }
    if (s_.byte_fallback) {
      bool all = true;
      for (unsigned char c : ch) all = all && byte_to_id_[c] >= 0;
      if (all) {
        for (unsigned char c : ch) add(byte_to_id_[c]);
        last_was_unk = false;
        continue;
      }
    }
    if (s_.unk_id >= 0) {
      if (!(s_.fuse_unk && last_was_unk)) add(s_.unk_id);
      last_was_unk = true;
    }
  }
  if (syms.empty()) return;
  syms.back().next = -1;

  struct Cand {
    int rank;
    int pos;
    int new_id;
  };
  struct CandGreater {
    bool operator()(const Cand& a, const Cand& b) const {
      return a.rank > b.rank || (a.rank == b.rank && a.pos > b.pos);
    }
  };
  std::vector<Cand> storage;
  storage.reserve(syms.size());
  std::priority_queue<Cand, std::vector<Cand>, CandGreater> queue(CandGreater{}, std::move(storage));
  auto try_add = [&](int left) {
    if (left < 0) return;
    const int right = syms[left].next;
    if (right < 0) return;
    auto it = s_.merges.find(PairKey(syms[left].id, syms[right].id));
    if (it == s_.merges.end()) return;
    queue.push({it->second.first, left, it->second.second});
  };
  for (int i = 0; i + 1 < static_cast<int>(syms.size()); ++i) try_add(i);
  while (!queue.empty()) {
    const Cand c = queue.top();
    queue.pop();
    Sym& l = syms[c.pos];
    if (!l.alive || l.next < 0) continue;
    Sym& r = syms[l.next];
    auto it = s_.merges.find(PairKey(l.id, r.id));
    if (it == s_.merges.end() || it->second.second != c.new_id) continue;
    l.id = c.new_id;
    r.alive = false;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = c.pos;
    try_add(l.prev);
    try_add(c.pos);
  }
  for (int i = 0; i >= 0; i = syms[i].next) out.push_back(syms[i].id);
}

// ---- tokenizer.json parsing ---------------------------------------------------

class Parser {
 public:
  explicit Parser(std::string source) : source_(std::move(source)) {}

  absl::Status Err(std::string_view field, std::string_view msg) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": ", std::string(field), ": ", std::string(msg)));
  }

  // Reads a string-valued field; `out` untouched when absent/null and !required.
  absl::Status GetString(const json& obj, const char* key, std::string_view path, std::string* out,
                         bool required) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) {
      if (required) return Err(absl::StrCat(std::string(path), ".", key), "missing");
      return absl::OkStatus();
    }
    if (!it->is_string()) return Err(absl::StrCat(std::string(path), ".", key), "expected a string");
    *out = it->get<std::string>();
    return absl::OkStatus();
  }
  absl::Status GetBool(const json& obj, const char* key, std::string_view path, bool* out) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_boolean()) return Err(absl::StrCat(std::string(path), ".", key), "expected true/false");
    *out = it->get<bool>();
    return absl::OkStatus();
  }
  // {"String": s} patterns only.
  absl::Status GetStringPattern(const json& obj, std::string_view path, std::string* out) const {
    const std::string p = absl::StrCat(std::string(path), ".pattern");
    auto it = obj.find("pattern");
    if (it == obj.end() || !it->is_object()) return Err(p, "missing or not an object");
    if (it->contains("Regex")) return Err(p, "Regex patterns are not supported");
    auto s = it->find("String");
    if (s == it->end() || !s->is_string()) return Err(p, "expected {\"String\": ...}");
    *out = s->get<std::string>();
    if (out->empty()) return Err(p, "empty pattern");
    return absl::OkStatus();
  }

  absl::StatusOr<HfSpec> Parse(std::string_view text) {
    json root;
    try {
      root = json::parse(text.begin(), text.end());
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(source_, ": invalid JSON: ", e.what()));
    }
    if (!root.is_object()) return Err("(root)", "expected a JSON object");
    try {
      return ParseRoot(root);
    } catch (const std::exception& e) {  // defensive: unexpected JSON types
      return absl::InvalidArgumentError(absl::StrCat(source_, ": ", e.what()));
    }
  }

 private:
  absl::StatusOr<HfSpec> ParseRoot(const json& root) {
    HfSpec s;
    auto mit = root.find("model");
    if (mit == root.end() || !mit->is_object()) return Err("model", "missing or not an object");
    const json& model = *mit;
    std::string type = "BPE";
    RETURN_IF_ERROR(GetString(model, "type", "model", &type, false));
    if (type != "BPE") return Err("model.type", absl::StrCat("'", type, "' is not supported (only BPE)"));
    if (auto d = model.find("dropout"); d != model.end() && !d->is_null()) {
      if (!d->is_number() || d->get<double>() != 0.0) return Err("model.dropout", "BPE dropout is not supported");
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      std::string v;
      RETURN_IF_ERROR(GetString(model, key, "model", &v, false));
      if (!v.empty()) return Err(absl::StrCat("model.", key), "not supported (must be null)");
    }
    RETURN_IF_ERROR(GetBool(model, "byte_fallback", "model", &s.byte_fallback));
    RETURN_IF_ERROR(GetBool(model, "fuse_unk", "model", &s.fuse_unk));
    RETURN_IF_ERROR(GetBool(model, "ignore_merges", "model", &s.ignore_merges));

    // Vocabulary.
    auto vit = model.find("vocab");
    if (vit == model.end() || !vit->is_object()) return Err("model.vocab", "missing or not an object");
    if (vit->empty()) return Err("model.vocab", "empty");
    int max_id = -1;
    for (auto it = vit->begin(); it != vit->end(); ++it) {
      if (!it->is_number_integer()) return Err(absl::StrCat("model.vocab['", it.key(), "']"), "id is not an integer");
      const int64_t id = it->get<int64_t>();
      if (id < 0 || id >= kMaxVocab) {
        return Err(absl::StrCat("model.vocab['", it.key(), "']"), absl::StrCat("id ", id, " out of range"));
      }
      max_id = std::max(max_id, static_cast<int>(id));
    }
    // Added tokens may extend the id range.
    auto ait = root.find("added_tokens");
    if (ait != root.end() && !ait->is_null() && !ait->is_array()) return Err("added_tokens", "expected an array");
    struct Added {
      int id;
      std::string content;
      bool special;
    };
    std::vector<Added> added;
    if (ait != root.end() && ait->is_array()) {
      for (size_t i = 0; i < ait->size(); ++i) {
        const json& a = (*ait)[i];
        const std::string path = absl::StrCat("added_tokens[", i, "]");
        if (!a.is_object()) return Err(path, "expected an object");
        auto idit = a.find("id");
        if (idit == a.end() || !idit->is_number_integer()) return Err(path + ".id", "missing or not an integer");
        const int64_t id = idit->get<int64_t>();
        if (id < 0 || id >= kMaxVocab) return Err(path + ".id", absl::StrCat("id ", id, " out of range"));
        Added ad{static_cast<int>(id), "", false};
        RETURN_IF_ERROR(GetString(a, "content", path, &ad.content, true));
        if (ad.content.empty()) return Err(path + ".content", "empty");
        RETURN_IF_ERROR(GetBool(a, "special", path, &ad.special));
        max_id = std::max(max_id, ad.id);
        added.push_back(std::move(ad));
      }
    }
    s.pieces.assign(max_id + 1, "");
    s.special.assign(max_id + 1, 0);
    s.verbatim.assign(max_id + 1, 0);
    std::vector<char> used(max_id + 1, 0);
    s.vocab.reserve(vit->size());
    for (auto it = vit->begin(); it != vit->end(); ++it) {
      const int id = it->get<int>();
      if (used[id]) {
        return Err(absl::StrCat("model.vocab['", it.key(), "']"),
                   absl::StrCat("id ", id, " is also used by '", s.pieces[id], "'"));
      }
      used[id] = 1;
      s.pieces[id] = it.key();
      s.vocab.emplace(it.key(), id);
    }
    s.tokens = s.vocab;
    for (size_t i = 0; i < added.size(); ++i) {
      const Added& ad = added[i];
      if (used[ad.id] && s.pieces[ad.id] != ad.content) {
        return Err(absl::StrCat("added_tokens[", i, "]"),
                   absl::StrCat("id ", ad.id, " is '", s.pieces[ad.id], "' in model.vocab, not '",
                                ad.content, "'"));
      }
      used[ad.id] = 1;
      s.pieces[ad.id] = ad.content;
      s.tokens.emplace(ad.content, ad.id);
      if (ad.special) {
        s.special[ad.id] = 1;
      } else {
        s.verbatim[ad.id] = 1;
        s.literals.Add(ad.content, ad.id);
      }
    }

    // Merges.
    auto mgit = model.find("merges");
    if (mgit != model.end() && !mgit->is_null()) {
      if (!mgit->is_array()) return Err("model.merges", "expected an array");
      s.merges.reserve(mgit->size());
      for (size_t i = 0; i < mgit->size(); ++i) {
        const json& m = (*mgit)[i];
        const std::string path = absl::StrCat("model.merges[", i, "]");
        std::string a, b;
        if (m.is_string()) {
          const std::string line = m.get<std::string>();
          const size_t sp = line.find(' ');
          if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos) {
            return Err(path, absl::StrCat("'", line, "' is not of the form \"a b\""));
          }
          a = line.substr(0, sp);
          b = line.substr(sp + 1);
        } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
          a = m[0].get<std::string>();
          b = m[1].get<std::string>();
        } else {
          return Err(path, "expected \"a b\" or [\"a\", \"b\"]");
        }
        auto ia = s.vocab.find(a);
        if (ia == s.vocab.end()) return Err(path, absl::StrCat("'", a, "' is not in model.vocab"));
        auto ib = s.vocab.find(b);
        if (ib == s.vocab.end()) return Err(path, absl::StrCat("'", b, "' is not in model.vocab"));
        auto ic = s.vocab.find(a + b);
        if (ic == s.vocab.end()) return Err(path, absl::StrCat("'", a + b, "' is not in model.vocab"));
        s.merges[PairKey(ia->second, ib->second)] = {static_cast<int>(i), ic->second};
      }
    }

    // UNK.
    std::string unk;
    RETURN_IF_ERROR(GetString(model, "unk_token", "model", &unk, false));
    if (!unk.empty()) {
      auto it = s.tokens.find(unk);
      if (it == s.tokens.end()) return Err("model.unk_token", absl::StrCat("'", unk, "' is not in the vocabulary"));
      s.unk_id = it->second;
    }

    RETURN_IF_ERROR(ParseNormalizer(root, s));
    RETURN_IF_ERROR(ParsePreTokenizer(root, s));
    RETURN_IF_ERROR(ParseDecoder(root, s));
    RETURN_IF_ERROR(ParseSpecialIds(root, s));
    return s;
  }

  absl::Status ParseNormalizerItem(const json& n, const std::string& path, HfSpec& s) {
    if (!n.is_object()) return Err(path, "expected an object");
    std::string type;
    RETURN_IF_ERROR(GetString(n, "type", path, &type, true));
    if (type == "Sequence") {
      auto it = n.find("normalizers");
      if (it == n.end() || !it->is_array()) return Err(path + ".normalizers", "missing or not an array");
      for (size_t i = 0; i < it->size(); ++i) {
        RETURN_IF_ERROR(ParseNormalizerItem((*it)[i], absl::StrCat(path, ".normalizers[", i, "]"), s));
      }
    } else if (type == "Prepend") {
      NormStep st{NormStep::kPrepend, "", ""};
      RETURN_IF_ERROR(GetString(n, "prepend", path, &st.a, true));
      s.normalizers.push_back(std::move(st));
    } else if (type == "Replace") {
      NormStep st{NormStep::kReplace, "", ""};
      RETURN_IF_ERROR(GetStringPattern(n, path, &st.a));
      RETURN_IF_ERROR(GetString(n, "content", path, &st.b, true));
      s.normalizers.push_back(std::move(st));
    } else {
      return Err(path + ".type", absl::StrCat("normalizer '", type,
                                              "' is not supported (only Prepend, Replace, Sequence)"));
    }
    return absl::OkStatus();
  }
  absl::Status ParseNormalizer(const json& root, HfSpec& s) {
    auto it = root.find("normalizer");
    if (it == root.end() || it->is_null()) return absl::OkStatus();
    return ParseNormalizerItem(*it, "normalizer", s);
  }

  absl::Status ParseMetaspace(const json& p, const std::string& path, std::string& replacement,
                              PrependScheme& scheme, bool& split) {
    replacement = std::string(kSpaceMarker);
    RETURN_IF_ERROR(GetString(p, "replacement", path, &replacement, false));
    if (replacement.empty() ||
        tokenizer_internal::Utf8CharLen(replacement.data(), replacement.size()) != replacement.size()) {
      return Err(path + ".replacement", "must be a single character");
    }
    scheme = PrependScheme::kAlways;
    if (auto ap = p.find("add_prefix_space"); ap != p.end() && !ap->is_null()) {
      if (!ap->is_boolean()) return Err(path + ".add_prefix_space", "expected true/false");
      scheme = ap->get<bool>() ? PrependScheme::kAlways : PrependScheme::kNever;
    }
    std::string ps;
    RETURN_IF_ERROR(GetString(p, "prepend_scheme", path, &ps, false));
    if (ps == "always") {
      scheme = PrependScheme::kAlways;
    } else if (ps == "first") {
      scheme = PrependScheme::kFirst;
    } else if (ps == "never") {
      scheme = PrependScheme::kNever;
    } else if (!ps.empty()) {
      return Err(path + ".prepend_scheme", absl::StrCat("unknown value '", ps, "'"));
    }
    split = true;
    RETURN_IF_ERROR(GetBool(p, "split", path, &split));
    return absl::OkStatus();
  }

  absl::Status ParsePreTokenizerItem(const json& p, const std::string& path, HfSpec& s) {
    if (!p.is_object()) return Err(path, "expected an object");
    std::string type;
    RETURN_IF_ERROR(GetString(p, "type", path, &type, true));
    if (type == "Sequence") {
      auto it = p.find("pretokenizers");
      if (it == p.end() || !it->is_array()) return Err(path + ".pretokenizers", "missing or not an array");
      for (size_t i = 0; i < it->size(); ++i) {
        RETURN_IF_ERROR(ParsePreTokenizerItem((*it)[i], absl::StrCat(path, ".pretokenizers[", i, "]"), s));
      }
      return absl::OkStatus();
    }
    if (type != "Metaspace") {
      return Err(path + ".type", absl::StrCat("pre-tokenizer '", type, "' is not supported (only Metaspace)"));
    }
    if (s.metaspace) return Err(path, "more than one Metaspace pre-tokenizer is not supported");
    s.metaspace = true;
    return ParseMetaspace(p, path, s.ms_replacement, s.ms_scheme, s.ms_split);
  }
  absl::Status ParsePreTokenizer(const json& root, HfSpec& s) {
    auto it = root.find("pre_tokenizer");
    if (it == root.end() || it->is_null()) return absl::OkStatus();
    return ParsePreTokenizerItem(*it, "pre_tokenizer", s);
  }

  absl::Status ParseDecoderItem(const json& d, const std::string& path, HfSpec& s) {
    if (!d.is_object()) return Err(path, "expected an object");
    std::string type;
    RETURN_IF_ERROR(GetString(d, "type", path, &type, true));
    if (type == "Sequence") {
      auto it = d.find("decoders");
      if (it == d.end() || !it->is_array()) return Err(path + ".decoders", "missing or not an array");
      for (size_t i = 0; i < it->size(); ++i) {
        RETURN_IF_ERROR(ParseDecoderItem((*it)[i], absl::StrCat(path, ".decoders[", i, "]"), s));
      }
    } else if (type == "Replace") {
      HfSpec::DecStep st{HfSpec::DecStep::kReplace, "", ""};
      RETURN_IF_ERROR(GetStringPattern(d, path, &st.from));
      RETURN_IF_ERROR(GetString(d, "content", path, &st.to, true));
      s.decoder.push_back(std::move(st));
    } else if (type == "ByteFallback") {
      s.decoder.push_back({HfSpec::DecStep::kByteFallback, "", ""});
    } else if (type == "Fuse") {
      // Joining tokens is what decoding does anyway.
    } else if (type == "Strip") {
      std::string content = " ";
      RETURN_IF_ERROR(GetString(d, "content", path, &content, false));
      if (content.size() != 1) return Err(path + ".content", "only single-byte strip characters are supported");
      auto num = [&](const char* key, int* out) -> absl::Status {
        auto it = d.find(key);
        if (it == d.end() || it->is_null()) return absl::OkStatus();
        if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > 1000) {
          return Err(absl::StrCat(path, ".", key), "expected a small non-negative integer");
        }
        *out = it->get<int>();
        return absl::OkStatus();
      };
      int start = 0, stop = 0;
      RETURN_IF_ERROR(num("start", &start));
      RETURN_IF_ERROR(num("stop", &stop));
      if (stop != 0) return Err(path + ".stop", "stripping the end of the text is not supported");
      s.strip_start = start;
      s.strip_char = content[0];
    } else if (type == "Metaspace") {
      std::string rep;
      PrependScheme scheme;
      bool split;
      RETURN_IF_ERROR(ParseMetaspace(d, path, rep, scheme, split));
      s.decoder.push_back({HfSpec::DecStep::kReplace, rep, " "});
      if (scheme != PrependScheme::kNever) {
        s.strip_start = 1;
        s.strip_char = ' ';
      }
    } else {
      return Err(path + ".type", absl::StrCat("decoder '", type,
                                              "' is not supported (only Replace, ByteFallback, Fuse, "
                                              "Strip, Metaspace, Sequence)"));
    }
    return absl::OkStatus();
  }
  absl::Status ParseDecoder(const json& root, HfSpec& s) {
    auto it = root.find("decoder");
    if (it == root.end() || it->is_null()) return absl::OkStatus();
    return ParseDecoderItem(*it, "decoder", s);
  }

  absl::Status ParseSpecialIds(const json& root, HfSpec& s) {
    auto find = [&](const std::string& t) {
      auto it = s.tokens.find(t);
      return it == s.tokens.end() ? -1 : it->second;
    };
    s.bos_id = find("<s>");
    s.eos_id = find("</s>");
    auto pit = root.find("post_processor");
    if (pit == root.end() || !pit->is_object()) return absl::OkStatus();
    const json& pp = *pit;
    auto tit = pp.find("type");
    if (tit == pp.end() || !tit->is_string() || tit->get<std::string>() != "TemplateProcessing") {
      return absl::OkStatus();  // other post-processors: BOS from "<s>"
    }
    auto single = pp.find("single");
    if (single == pp.end() || !single->is_array() || single->empty()) return absl::OkStatus();
    const json& first = (*single)[0];
    if (!first.is_object() || !first.contains("SpecialToken")) return absl::OkStatus();
    const json& st = first["SpecialToken"];
    if (!st.is_object() || !st.contains("id") || !st["id"].is_string()) {
      return Err("post_processor.single[0].SpecialToken.id", "expected a string");
    }
    const std::string name = st["id"].get<std::string>();
    int id = -1;
    if (auto sp = pp.find("special_tokens"); sp != pp.end() && sp->is_object() && sp->contains(name)) {
      const json& e = (*sp)[name];
      if (e.is_object() && e.contains("ids") && e["ids"].is_array() && e["ids"].size() == 1 &&
          e["ids"][0].is_number_integer()) {
        id = e["ids"][0].get<int>();
      }
    }
    if (id < 0) id = find(name);
    if (id < 0 || id >= static_cast<int>(s.pieces.size())) {
      return Err("post_processor.single[0].SpecialToken",
                 absl::StrCat("BOS token '", name, "' is not in the vocabulary"));
    }
    s.bos_id = id;
    return absl::OkStatus();
  }

  std::string source_;
};

absl::StatusOr<std::unique_ptr<Tokenizer>> ParseWithConfig(std::string_view json_text,
                                                           std::string_view source_name,
                                                           const std::string* config_text,
                                                           const std::string& config_name) {
  Parser parser{std::string(source_name)};
  ASSIGN_OR_RETURN(HfSpec spec, parser.Parse(json_text));
  if (config_text != nullptr) {
    json cfg;
    try {
      cfg = json::parse(*config_text);
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(config_name, ": invalid JSON: ", e.what()));
    }
    if (cfg.is_object()) {
      for (auto [key, target] : {std::pair<const char*, int*>{"bos_token", &spec.bos_id},
                                 std::pair<const char*, int*>{"eos_token", &spec.eos_id}}) {
        auto it = cfg.find(key);
        if (it == cfg.end() || it->is_null()) continue;
        std::string name;
        if (it->is_string()) {
          name = it->get<std::string>();
        } else if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
          name = (*it)["content"].get<std::string>();
        } else {
          return absl::InvalidArgumentError(absl::StrCat(config_name, ": ", key, ": expected a string"));
        }
        auto t = spec.tokens.find(name);
        if (t == spec.tokens.end()) {
          return absl::InvalidArgumentError(
              absl::StrCat(config_name, ": ", key, ": '", name, "' is not in the vocabulary"));
        }
        *target = t->second;
      }
    }
  }
  return std::unique_ptr<Tokenizer>(std::make_unique<HfTokenizer>(std::move(spec)));
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return false;
  *out = ss.str();
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> ParseHfTokenizer(std::string_view json_text,
                                                            std::string_view source_name) {
  return ParseWithConfig(json_text, source_name, nullptr, "");
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& tokenizer_json_path) {
  std::string text;
  if (!ReadFile(tokenizer_json_path, &text)) {
    return absl::NotFoundError(absl::StrCat(tokenizer_json_path, ": cannot read file"));
  }
  const std::string config_path =
      (std::filesystem::path(tokenizer_json_path).parent_path() / "tokenizer_config.json").string();
  std::string config;
  std::error_code ec;
  const bool have_config = std::filesystem::exists(config_path, ec) && ReadFile(config_path, &config);
  return ParseWithConfig(text, tokenizer_json_path, have_config ? &config : nullptr, config_path);
}

// ---- SPM vocabulary -> tokenizer.json ----------------------------------------------

absl::StatusOr<std::string> SpmVocabToHfTokenizerJson(const SpmVocab& vocab) {
  {
    // Same validation as the SPM tokenizer.
    auto tok = MakeSpmTokenizer(vocab);
    if (!tok.ok()) return tok.status();
  }
  using ojson = nlohmann::ordered_json;
  const int n = static_cast<int>(vocab.pieces.size());
  std::vector<int> type(n, 1);
  bool has_bytes = false;
  for (int i = 0; i < n; ++i) {
    type[i] = vocab.types.empty() ? 1 : vocab.types[i];
    if (vocab.types.empty() && tokenizer_internal::ParseBytePiece(vocab.pieces[i]) >= 0) type[i] = 6;
    if (type[i] == 6) has_bytes = true;
  }
  auto score = [&](int id) { return vocab.scores.empty() ? 0.0f : vocab.scores[id]; };

  // Pieces that merging can produce / consume, as in the SPM tokenizer.
  absl::flat_hash_map<std::string, int> mergeable;
  absl::flat_hash_map<std::string, int> seen;
  ojson vocab_json = ojson::object();
  // ordered_json's object lookups are linear; append to its underlying vector
  // directly (keys are unique thanks to `seen`).
  using ObjectVector = std::vector<std::pair<const std::string, ojson>>;
  auto& vocab_entries = static_cast<ObjectVector&>(vocab_json.get_ref<ojson::object_t&>());
  vocab_entries.reserve(n);
  ojson added = ojson::array();
  for (int i = 0; i < n; ++i) {
    const std::string& p = vocab.pieces[i];
    const bool first = seen.emplace(p, i).second;
    if (first) vocab_entries.emplace_back(p, ojson(i));
    const int t = type[i];
    if (t == 0 || t == 1 || t == 4) {
      if (first) mergeable.emplace(p, i);
    }
    if (t == 2 || t == 3 || t == 4 || t == 5 || !first) {
      added.push_back(ojson{{"id", i},           {"content", p},      {"single_word", false},
                            {"lstrip", false},   {"rstrip", false},   {"normalized", false},
                            {"special", t != 4}});
    }
  }

  struct Merge {
    int left, right;
    float score;
  };
  std::vector<Merge> merges;
  for (int i = 0; i < n; ++i) {
    const int t = type[i];
    if (!(t == 0 || t == 1 || t == 4)) continue;
    const std::string& p = vocab.pieces[i];
    if (mergeable.find(p)->second != i) continue;
    std::vector<Merge> local;
    for (size_t cut = tokenizer_internal::Utf8CharLen(p.data(), p.size()); cut < p.size();
         cut += tokenizer_internal::Utf8CharLen(p.data() + cut, p.size() - cut)) {
      auto l = mergeable.find(absl::string_view(p.data(), cut));
      auto r = mergeable.find(absl::string_view(p.data() + cut, p.size() - cut));
      if (l != mergeable.end() && r != mergeable.end()) local.push_back({l->second, r->second, score(i)});
    }
    std::sort(local.begin(), local.end(), [](const Merge& a, const Merge& b) {
      return a.left != b.left ? a.left < b.left : a.right < b.right;
    });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  std::stable_sort(merges.begin(), merges.end(),
                   [](const Merge& a, const Merge& b) { return a.score > b.score; });
  bool any_space = false;
  for (const auto& m : merges) {
    any_space = any_space || vocab.pieces[m.left].find(' ') != std::string::npos ||
                vocab.pieces[m.right].find(' ') != std::string::npos;
  }
  ojson merges_json = ojson::array();
  for (const auto& m : merges) {
    if (any_space) {
      merges_json.push_back(ojson::array({vocab.pieces[m.left], vocab.pieces[m.right]}));
    } else {
      merges_json.push_back(absl::StrCat(vocab.pieces[m.left], " ", vocab.pieces[m.right]));
    }
  }

  const std::string marker(kSpaceMarker);
  ojson normalizers = ojson::array();
  if (vocab.add_space_prefix) normalizers.push_back(ojson{{"type", "Prepend"}, {"prepend", marker}});
  normalizers.push_back(
      ojson{{"type", "Replace"}, {"pattern", ojson{{"String", " "}}}, {"content", marker}});
  ojson decoders = ojson::array();
  decoders.push_back(ojson{{"type", "Replace"}, {"pattern", ojson{{"String", marker}}}, {"content", " "}});
  decoders.push_back(ojson{{"type", "ByteFallback"}});
  decoders.push_back(ojson{{"type", "Fuse"}});
  if (vocab.add_space_prefix) {
    decoders.push_back(ojson{{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}});
  }
  ojson post = nullptr;
  if (vocab.bos_id >= 0) {
    const std::string& bos = vocab.pieces[vocab.bos_id];
    auto special = [&](int type_id) {
      return ojson{{"SpecialToken", ojson{{"id", bos}, {"type_id", type_id}}}};
    };
    auto seq = [](const char* id, int type_id) {
      return ojson{{"Sequence", ojson{{"id", id}, {"type_id", type_id}}}};
    };
    post = ojson{{"type", "TemplateProcessing"},
                 {"single", ojson::array({special(0), seq("A", 0)})},
                 {"pair", ojson::array({special(0), seq("A", 0), special(1), seq("B", 1)})},
                 {"special_tokens",
                  ojson{{bos, ojson{{"id", bos}, {"ids", ojson::array({vocab.bos_id})},
                                    {"tokens", ojson::array({bos})}}}}}};
  }
  ojson model{{"type", "BPE"},
              {"dropout", nullptr},
              {"unk_token", vocab.unk_id >= 0 ? ojson(vocab.pieces[vocab.unk_id]) : ojson(nullptr)},
              {"continuing_subword_prefix", nullptr},
              {"end_of_word_suffix", nullptr},
              {"fuse_unk", false},
              {"byte_fallback", has_bytes},
              {"ignore_merges", false},
              {"vocab", std::move(vocab_json)},
              {"merges", std::move(merges_json)}};
  ojson root{{"version", "1.0"},
             {"truncation", nullptr},
             {"padding", nullptr},
             {"added_tokens", std::move(added)},
             {"normalizer", ojson{{"type", "Sequence"}, {"normalizers", std::move(normalizers)}}},
             {"pre_tokenizer", nullptr},
             {"post_processor", std::move(post)},
             {"decoder", ojson{{"type", "Sequence"}, {"decoders", std::move(decoders)}}},
             {"model", std::move(model)}};
  try {
    return root.dump(2, ' ', false, nlohmann::json::error_handler_t::strict);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat("SpmVocabToHfTokenizerJson: cannot serialise the vocabulary: ", e.what()));
  }
}

}  // namespace eora
