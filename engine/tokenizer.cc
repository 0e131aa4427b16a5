// SentencePiece-style BPE tokenizer (GGUF "llama" vocabularies) and the shared
// Tokenizer::Decode. The Hugging Face tokenizer.json implementation and the
// SPM -> tokenizer.json converter live in engine/tokenizer_hf.cc.
//
// Encoding follows llama.cpp's llm_tokenizer_spm:
//  1. The text is split at literal occurrences of user-defined pieces (type 4),
//     which become their own tokens (llama.cpp always matches them).
//  2. Each remaining fragment gets a leading space when add_space_prefix is set and
//     it is the first fragment or follows a user-defined piece; ' ' becomes U+2581.
//     Empty input gives no tokens.
//  3. The fragment is split into UTF-8 characters (malformed bytes count as one
//     character each); adjacent symbols whose concatenation is a vocabulary piece
//     are merged, highest piece score first, ties leftmost, via a priority queue.
//  4. Leftover symbols that are not pieces are emitted byte by byte as <0xXX>
//     pieces, or as UNK (one per character) when the vocabulary has no byte pieces.
// Pieces of type unknown (2), control (3), unused (5) and byte (6) never take part in
// merging: they cannot be produced from text (llama.cpp would look them up too, which
// only matters for vocabularies where such a piece is a concatenation of others).
//
// Decoding: U+2581 -> ' ', byte pieces -> their raw byte, control/unknown/unused
// pieces -> "", user-defined pieces verbatim; with add_space_prefix, the leading
// space of the first piece of a sequence (prev < 0 or prev == BOS) is dropped.
// A literal U+2581 in the input therefore decodes as a space (as in SentencePiece).

#include "engine/tokenizer.h"

#include <cmath>
#include <cstdint>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer_util.h"

namespace eora {

std::string Tokenizer::Decode(const std::vector<int>& tokens) const {
  std::string out;
  int prev = -1;
  for (int t : tokens) {
    out += DecodeToken(prev, t);
    prev = t;
  }
  return out;
}

namespace {

using tokenizer_internal::kSpaceMarker;
using tokenizer_internal::LiteralMatcher;
using tokenizer_internal::ToAbsl;

enum SpmTokenType {
  kTypeUndefined = 0,
  kTypeNormal = 1,
  kTypeUnknown = 2,
  kTypeControl = 3,
  kTypeUserDefined = 4,
  kTypeUnused = 5,
  kTypeByte = 6,
};

class SpmTokenizer final : public Tokenizer {
 public:
  explicit SpmTokenizer(SpmVocab vocab) : vocab_(std::move(vocab)) {}

  // Builds the lookup tables; returns an error for an inconsistent vocabulary.
  absl::Status Init();

  std::vector<int> Encode(std::string_view text, bool add_bos) const override;
  std::string DecodeToken(int prev, int token) const override;
  int vocab_size() const override { return static_cast<int>(vocab_.pieces.size()); }
  int bos_id() const override { return vocab_.bos_id; }
  int eos_id() const override { return vocab_.eos_id; }
  const SpmVocab* spm_vocab() const override { return &vocab_; }
  std::string_view Piece(int id) const override {
    if (id < 0 || id >= vocab_size()) return {};
    return vocab_.pieces[id];
  }

 private:
  struct Symbol {
    int prev;
    int next;
    size_t start;  // byte offset into the normalized fragment
    size_t n;      // byte length; 0 once merged into its left neighbour
  };
  struct Bigram {
    int left;
    int right;
    float score;
    size_t size;
  };
  struct BigramLess {
    bool operator()(const Bigram& a, const Bigram& b) const {
      return a.score < b.score || (a.score == b.score && a.left > b.left);
    }
  };

  int Type(int id) const { return type_[id]; }
  float Score(int id) const { return vocab_.scores.empty() ? 0.0f : vocab_.scores[id]; }
  int Lookup(std::string_view s) const {
    auto it = mergeable_.find(ToAbsl(s));
    return it == mergeable_.end() ? -1 : it->second;
  }
  void EncodeFragment(std::string_view raw, bool prefix_space, std::vector<int>& out) const;
  void EmitSymbol(std::string_view s, std::vector<int>& out) const;

  SpmVocab vocab_;
  absl::flat_hash_map<std::string, int> mergeable_;  // piece -> id (normal/user pieces)
  int byte_to_id_[256];
  bool has_byte_pieces_ = false;
  LiteralMatcher user_defined_;
  std::vector<std::string> decoded_;  // per id, before the leading-space rule
  std::vector<int8_t> type_;          // resolved token type per id
};

absl::Status SpmTokenizer::Init() {
  const size_t n = vocab_.pieces.size();
  if (n == 0) return absl::InvalidArgumentError("SPM vocabulary: no pieces (tokenizer.ggml.tokens is empty)");
  if (n > static_cast<size_t>(INT32_MAX)) return absl::InvalidArgumentError("SPM vocabulary: too many pieces");
  if (!vocab_.scores.empty() && vocab_.scores.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat("SPM vocabulary: ", vocab_.scores.size(),
                                                   " scores (tokenizer.ggml.scores) for ", n,
                                                   " pieces"));
  }
  if (!vocab_.types.empty() && vocab_.types.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat("SPM vocabulary: ", vocab_.types.size(),
                                                   " token types (tokenizer.ggml.token_type) for ",
                                                   n, " pieces"));
  }
  auto check_id = [&](int id, const char* what) -> absl::Status {
    if (id < -1 || id >= static_cast<int>(n)) {
      return absl::InvalidArgumentError(absl::StrCat("SPM vocabulary: ", what, " ", id,
                                                     " is out of range [0, ", n, ") (or -1 for none)"));
    }
    return absl::OkStatus();
  };
  if (auto s = check_id(vocab_.bos_id, "bos_id"); !s.ok()) return s;
  if (auto s = check_id(vocab_.eos_id, "eos_id"); !s.ok()) return s;
  if (auto s = check_id(vocab_.unk_id, "unk_id"); !s.ok()) return s;

  for (int& b : byte_to_id_) b = -1;
  decoded_.resize(n);
  type_.assign(n, kTypeNormal);
  absl::flat_hash_map<std::string, int> first_id;  // for duplicate detection
  first_id.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const int id = static_cast<int>(i);
    const std::string& piece = vocab_.pieces[i];
    if (!vocab_.scores.empty() && !std::isfinite(vocab_.scores[i])) {
      return absl::InvalidArgumentError(absl::StrCat("SPM vocabulary: score of piece ", id, " ('",
                                                     piece, "') is not finite"));
    }
    int type = vocab_.types.empty() ? kTypeNormal : vocab_.types[i];
    if (type < kTypeUndefined || type > kTypeByte) {
      return absl::InvalidArgumentError(absl::StrCat("SPM vocabulary: piece ", id, " ('", piece,
                                                     "') has unknown token type ", type));
    }
    const int byte = tokenizer_internal::ParseBytePiece(piece);
    if (vocab_.types.empty() && byte >= 0) type = kTypeByte;  // no types: recognise by name
    type_[i] = static_cast<int8_t>(type);
    if (type == kTypeByte && byte < 0) {
      return absl::InvalidArgumentError(absl::StrCat("SPM vocabulary: piece ", id, " ('", piece,
                                                     "') has type byte but is not of the form <0xXX>"));
    }
    auto [it, inserted] = first_id.emplace(piece, id);
    if (!inserted) {
      // Real vocabularies sometimes repeat placeholder control/unused pieces; those
      // cannot be produced from text, so a repeat is harmless. Anything else is an error.
      const bool harmless = (type == kTypeControl || type == kTypeUnused) &&
                            (Type(it->second) == kTypeControl || Type(it->second) == kTypeUnused);
      if (!harmless) {
        return absl::InvalidArgumentError(absl::StrCat("SPM vocabulary: duplicate piece '", piece,
                                                       "' (ids ", it->second, " and ", id, ")"));
      }
    }
    switch (type) {
      case kTypeByte:
        if (byte_to_id_[byte] < 0) byte_to_id_[byte] = id;
        has_byte_pieces_ = true;
        decoded_[i] = std::string(1, static_cast<char>(byte));
        break;
      case kTypeUnknown:
      case kTypeControl:
      case kTypeUnused:
        break;  // decodes to ""
      case kTypeUserDefined:
        if (inserted) mergeable_.emplace(piece, id);
        user_defined_.Add(piece, id);
        decoded_[i] = piece;
        break;
      default:  // normal / undefined
        if (inserted) mergeable_.emplace(piece, id);
        decoded_[i] = tokenizer_internal::ReplaceAll(piece, kSpaceMarker, " ");
        break;
    }
  }
  return absl::OkStatus();
}

void SpmTokenizer::EmitSymbol(std::string_view s, std::vector<int>& out) const {
  const int id = Lookup(s);
  if (id >= 0) {
    out.push_back(id);
    return;
  }
  if (has_byte_pieces_) {
    for (unsigned char c : s) {
      const int b = byte_to_id_[c];
      if (b >= 0) {
        out.push_back(b);
      } else if (vocab_.unk_id >= 0) {
        out.push_back(vocab_.unk_id);
      }
    }
  } else if (vocab_.unk_id >= 0) {
    out.push_back(vocab_.unk_id);
  }
}

void SpmTokenizer::EncodeFragment(std::string_view raw, bool prefix_space,
                                  std::vector<int>& out) const {
  if (raw.empty()) return;
  std::string text;
  text.reserve(raw.size() + raw.size() / 2 + 3);
  if (prefix_space) text.append(kSpaceMarker);
  for (char c : raw) {
    if (c == ' ') {
      text.append(kSpaceMarker);
    } else {
      text.push_back(c);
    }
  }

  std::vector<Symbol> symbols;
  symbols.reserve(text.size());
  for (size_t off = 0; off < text.size();) {
    const size_t len = tokenizer_internal::Utf8CharLen(text.data() + off, text.size() - off);
    const int idx = static_cast<int>(symbols.size());
    symbols.push_back({idx - 1, idx + 1, off, len});
    off += len;
  }
  symbols.back().next = -1;

  std::vector<Bigram> heap_storage;
  heap_storage.reserve(symbols.size());
  std::priority_queue<Bigram, std::vector<Bigram>, BigramLess> queue(BigramLess{},
                                                                     std::move(heap_storage));
  auto try_add = [&](int left, int right) {
    if (left < 0 || right < 0) return;
    const size_t size = symbols[left].n + symbols[right].n;
    const int id = Lookup(std::string_view(text.data() + symbols[left].start, size));
    if (id < 0) return;
    queue.push({left, right, Score(id), size});
  };
  for (size_t i = 1; i < symbols.size(); ++i) try_add(static_cast<int>(i) - 1, static_cast<int>(i));

  while (!queue.empty()) {
    const Bigram bg = queue.top();
    queue.pop();
    Symbol& l = symbols[bg.left];
    Symbol& r = symbols[bg.right];
    // Stale entries: one side was merged away or has grown since the push.
    if (l.n == 0 || r.n == 0 || l.n + r.n != bg.size) continue;
    l.n += r.n;
    r.n = 0;
    l.next = r.next;
    if (r.next >= 0) symbols[r.next].prev = bg.left;
    try_add(l.prev, bg.left);
    try_add(bg.left, l.next);
  }

  for (int i = 0; i >= 0; i = symbols[i].next) {
    EmitSymbol(std::string_view(text.data() + symbols[i].start, symbols[i].n), out);
  }
}

std::vector<int> SpmTokenizer::Encode(std::string_view text, bool add_bos) const {
  std::vector<int> out;
  out.reserve(text.size() / 3 + 2);
  if (add_bos && vocab_.bos_id >= 0) out.push_back(vocab_.bos_id);
  if (text.empty()) return out;
  if (user_defined_.empty()) {
    EncodeFragment(text, vocab_.add_space_prefix, out);
    return out;
  }
  bool prev_special = true;
  for (const auto& frag : user_defined_.Split(text)) {
    if (frag.token >= 0) {
      out.push_back(frag.token);
      prev_special = true;
    } else {
      EncodeFragment(frag.text, vocab_.add_space_prefix && prev_special, out);
      prev_special = false;
    }
  }
  return out;
}

std::string SpmTokenizer::DecodeToken(int prev, int token) const {
  if (token < 0 || token >= vocab_size()) return {};
  const std::string& s = decoded_[token];
  if (vocab_.add_space_prefix && (prev < 0 || prev == vocab_.bos_id) && !s.empty() && s[0] == ' ' &&
      Type(token) != kTypeByte && Type(token) != kTypeUserDefined) {
    return s.substr(1);
  }
  return s;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> MakeSpmTokenizer(SpmVocab vocab) {
  auto tok = std::make_unique<SpmTokenizer>(std::move(vocab));
  if (auto s = tok->Init(); !s.ok()) return s;
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

}  // namespace eora
