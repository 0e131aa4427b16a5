#include "compressor/calibration.h"

#include <cerrno>
#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "engine/sha256.h"

namespace eora::compress {
namespace {

std::string_view Trim(std::string_view s) {
  const char* ws = " \t\r\n";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  const size_t e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

absl::Status CheckOptions(const CalibrationOptions& o) {
  if (o.num_seqs < 1) return absl::InvalidArgumentError("calibration: need at least 1 sequence");
  if (o.seq_len < 2) return absl::InvalidArgumentError("calibration: sequence length must be >= 2");
  if (o.heldout_seqs < 0)
    return absl::InvalidArgumentError("calibration: held-out sequence count must be >= 0");
  return absl::OkStatus();
}

// Cuts the document streams (already tokenized, no BOS) into windows.
absl::StatusOr<CalibrationSet> Windows(const std::vector<std::vector<int>>& docs, int bos,
                                       const CalibrationOptions& o, const std::string& source) {
  std::vector<int> stream;
  for (const auto& d : docs) {
    if (d.empty()) continue;
    if (!stream.empty()) stream.push_back(bos);
    stream.insert(stream.end(), d.begin(), d.end());
  }
  const int need = o.num_seqs + o.heldout_seqs;
  CalibrationSet set;
  set.source = source;
  set.seq_len = o.seq_len;
  size_t p = 0;
  std::vector<std::vector<int>> all;
  while (static_cast<int>(all.size()) < need) {
    if (p < stream.size() && stream[p] == bos) ++p;  // the window's own BOS replaces it
    if (stream.size() - p < static_cast<size_t>(o.seq_len - 1)) break;
    std::vector<int> s;
    s.reserve(o.seq_len);
    s.push_back(bos);
    s.insert(s.end(), stream.begin() + p, stream.begin() + p + (o.seq_len - 1));
    p += o.seq_len - 1;
    all.push_back(std::move(s));
  }
  if (static_cast<int>(all.size()) < need)
    return absl::InvalidArgumentError(absl::StrCat(
        "the calibration data gives ", all.size(), " sequences of ", o.seq_len,
        " tokens (", stream.size(), " tokens in all), need ", o.num_seqs, " + ", o.heldout_seqs,
        " held out; use a longer text or fewer/shorter sequences"));
  Sha256 h;
  for (const auto& s : all) {
    const uint32_t n = static_cast<uint32_t>(s.size());
    h.Update(&n, sizeof(n));
    for (int t : s) {
      const int32_t v = t;
      h.Update(&v, sizeof(v));
    }
  }
  set.hash = "sha256:" + h.HexFinal();
  set.fit.assign(all.begin(), all.begin() + o.num_seqs);
  set.heldout.assign(all.begin() + o.num_seqs, all.end());
  return set;
}

}  // namespace

int64_t CalibrationSet::fit_tokens() const {
  int64_t n = 0;
  for (const auto& s : fit) n += static_cast<int64_t>(s.size());
  return n;
}

std::vector<int> CalibrationSet::fit_lengths() const {
  std::vector<int> v;
  for (const auto& s : fit) v.push_back(static_cast<int>(s.size()));
  return v;
}

std::vector<int> CalibrationSet::fit_flat() const {
  std::vector<int> v;
  v.reserve(fit_tokens());
  for (const auto& s : fit) v.insert(v.end(), s.begin(), s.end());
  return v;
}

namespace {

std::vector<std::vector<int>> TextDocuments(const std::string& text, const Tokenizer& tok,
                                            const std::string& separator) {
  std::vector<std::vector<int>> docs;
  std::string_view rest(text);
  while (true) {
    const size_t cut = separator.empty() ? std::string_view::npos : rest.find(separator);
    const std::string_view doc = Trim(rest.substr(0, cut));
    if (!doc.empty()) docs.push_back(tok.Encode(doc, /*add_bos=*/false));
    if (cut == std::string_view::npos) break;
    rest.remove_prefix(cut + separator.size());
  }
  return docs;
}

absl::StatusOr<std::vector<std::vector<int>>> TokenIdDocuments(const std::string& contents,
                                                               int vocab_size) {
  std::vector<std::vector<int>> docs;
  size_t line_no = 0, pos = 0;
  while (pos <= contents.size()) {
    size_t end = contents.find('\n', pos);
    if (end == std::string::npos) end = contents.size();
    ++line_no;
    std::string line(contents.substr(pos, end - pos));
    std::vector<int> doc;
    const char* c = line.c_str();
    while (*c) {
      while (*c == ' ' || *c == '\t' || *c == '\r') ++c;
      if (!*c) break;
      char* e = nullptr;
      errno = 0;
      const long v = std::strtol(c, &e, 10);
      if (e == c || errno != 0 || v < 0 || v >= vocab_size || (*e && *e != ' ' && *e != '\t' && *e != '\r'))
        return absl::InvalidArgumentError(absl::StrCat("token file line ", line_no,
                                                       ": expected token ids in [0, ", vocab_size,
                                                       ")"));
      doc.push_back(static_cast<int>(v));
      c = e;
    }
    if (!doc.empty()) docs.push_back(std::move(doc));
    pos = end + 1;
  }
  return docs;
}

// Tokens of the stream Windows() cuts: the documents joined by BOS.
int64_t StreamTokens(const std::vector<std::vector<int>>& docs) {
  int64_t n = 0, nonempty = 0;
  for (const auto& d : docs)
    if (!d.empty()) {
      n += static_cast<int64_t>(d.size());
      ++nonempty;
    }
  return n + (nonempty > 0 ? nonempty - 1 : 0);
}

}  // namespace

absl::StatusOr<CalibrationSet> CalibrationFromText(const std::string& text, const Tokenizer& tok,
                                                   const CalibrationOptions& o) {
  if (absl::Status s = CheckOptions(o); !s.ok()) return s;
  return Windows(TextDocuments(text, tok, o.separator), tok.bos_id(), o, "calibration text");
}

absl::StatusOr<CalibrationSet> CalibrationFromTokenIds(const std::string& contents, int bos_id,
                                                       int vocab_size,
                                                       const CalibrationOptions& o) {
  if (absl::Status s = CheckOptions(o); !s.ok()) return s;
  auto docs = TokenIdDocuments(contents, vocab_size);
  if (!docs.ok()) return docs.status();
  return Windows(*docs, bos_id, o, "token file");
}

absl::StatusOr<int64_t> CountCalibrationTokens(const std::string& contents, bool token_ids,
                                               const Tokenizer& tok, const std::string& separator) {
  if (!token_ids) return StreamTokens(TextDocuments(contents, tok, separator));
  auto docs = TokenIdDocuments(contents, tok.vocab_size());
  if (!docs.ok()) return docs.status();
  return StreamTokens(*docs);
}

absl::StatusOr<CalibrationSet> LoadCalibration(const std::string& path, const Tokenizer& tok,
                                               const CalibrationOptions& o) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open calibration file"));
  std::string data;
  char buf[1 << 16];
  while (in && (o.max_bytes == 0 || data.size() < o.max_bytes)) {
    size_t want = sizeof(buf);
    if (o.max_bytes) want = std::min(want, o.max_bytes - data.size());
    in.read(buf, static_cast<std::streamsize>(want));
    data.append(buf, static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  const bool ids = path.size() >= 7 && path.compare(path.size() - 7, 7, ".tokens") == 0;
  auto set = ids ? CalibrationFromTokenIds(data, tok.bos_id(), tok.vocab_size(), o)
                 : CalibrationFromText(data, tok, o);
  if (!set.ok())
    return absl::Status(set.status().code(), absl::StrCat(path, ": ", set.status().message()));
  set->source = path;
  return set;
}

}  // namespace eora::compress
