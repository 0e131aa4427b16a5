// Private helpers shared by the tokenizer implementations (engine/tokenizer*.cc).
// Not part of the public interface.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"

namespace eora::tokenizer_internal {

// U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's whitespace marker.
inline constexpr std::string_view kSpaceMarker = "\xE2\x96\x81";

inline absl::string_view ToAbsl(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// Byte length of the UTF-8 character starting at p (n bytes available). Malformed
// or truncated sequences count as a single byte, so every input splits into
// "characters" whose concatenation is the input (needed for exact round trips).
inline size_t Utf8CharLen(const char* p, size_t n) {
  const auto b0 = static_cast<unsigned char>(p[0]);
  size_t len;
  if (b0 < 0x80) return 1;
  if ((b0 & 0xE0) == 0xC0 && b0 >= 0xC2) {
    len = 2;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3;
  } else if ((b0 & 0xF8) == 0xF0 && b0 <= 0xF4) {
    len = 4;
  } else {
    return 1;
  }
  if (len > n) return 1;
  for (size_t i = 1; i < len; ++i) {
    if ((static_cast<unsigned char>(p[i]) & 0xC0) != 0x80) return 1;
  }
  // Reject overlong 3/4-byte forms, surrogates and code points above U+10FFFF.
  const auto b1 = static_cast<unsigned char>(p[1]);
  if (len == 3 && ((b0 == 0xE0 && b1 < 0xA0) || (b0 == 0xED && b1 >= 0xA0))) return 1;
  if (len == 4 && ((b0 == 0xF0 && b1 < 0x90) || (b0 == 0xF4 && b1 >= 0x90))) return 1;
  return len;
}

// The byte a "<0xXX>" piece stands for (hex digits in either case), or -1.
inline int ParseBytePiece(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = piece[i];
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else {
      return -1;
    }
    v = v * 16 + d;
  }
  return v;
}

inline std::string BytePieceName(unsigned char b) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string s = "<0x00>";
  s[3] = kHex[b >> 4];
  s[4] = kHex[b & 15];
  return s;
}

// Replaces every occurrence of `from` (non-empty) in s by `to`.
inline std::string ReplaceAll(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (true) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(s.data() + pos, hit - pos);
    out.append(to);
    pos = hit + from.size();
  }
  out.append(s.data() + pos, s.size() - pos);
  return out;
}

// Splits text at literal occurrences of a set of strings (user-defined pieces /
// non-special added tokens): leftmost match wins, the longest at that position.
class LiteralMatcher {
 public:
  struct Fragment {
    int token = -1;         // >= 0: a matched literal
    std::string_view text;  // the fragment's text (the literal itself when token >= 0)
  };

  void Add(std::string literal, int id) {
    if (literal.empty()) return;
    const auto first = static_cast<unsigned char>(literal[0]);
    by_first_byte_[first].emplace_back(std::move(literal), id);
    any_ = true;
  }
  bool empty() const { return !any_; }

  std::vector<Fragment> Split(std::string_view text) const {
    std::vector<Fragment> out;
    size_t start = 0;  // start of the pending raw fragment
    size_t i = 0;
    while (i < text.size()) {
      const auto& cands = by_first_byte_[static_cast<unsigned char>(text[i])];
      size_t best_len = 0;
      int best_id = -1;
      for (const auto& [lit, id] : cands) {
        if (lit.size() > best_len && text.compare(i, lit.size(), lit) == 0) {
          best_len = lit.size();
          best_id = id;
        }
      }
      if (best_id < 0) {
        ++i;
        continue;
      }
      if (i > start) out.push_back({-1, text.substr(start, i - start)});
      out.push_back({best_id, text.substr(i, best_len)});
      i += best_len;
      start = i;
    }
    if (start < text.size() || out.empty()) out.push_back({-1, text.substr(start)});
    return out;
  }

 private:
  std::vector<std::pair<std::string, int>> by_first_byte_[256];
  bool any_ = false;
};

}  // namespace eora::tokenizer_internal
