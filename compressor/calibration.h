// Calibration data for the compressor: token sequences cut from a text file (or a
// token-id file), a held-out slice kept out of every fit (for the rank -> quality
// profile), and a SHA-256 of the tokens so adapters record what they were fitted on.
//
// Sequences: the documents of the text (split on `separator`, trimmed, empty ones
// dropped) are tokenized without BOS and joined into one stream with BOS between
// documents; the stream is cut into consecutive windows, each starting with BOS and
// `seq_len` tokens long in total. The first `num_seqs` windows are the fitting set,
// the next `heldout_seqs` the held-out slice.
//
// Threading contract: plain values; functions are reentrant.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer.h"

namespace eora::compress {

struct CalibrationOptions {
  int num_seqs = 128;      // fitting sequences
  int seq_len = 256;       // tokens per sequence, BOS included
  int heldout_seqs = 16;   // held-out sequences after the fitting ones (0: none)
  std::string separator = "<|endoftext|>";  // document separator in text files
  size_t max_bytes = 0;    // read at most this many bytes of the file (0: all)
};

struct CalibrationSet {
  std::vector<std::vector<int>> fit;      // each: BOS + tokens, seq_len long
  std::vector<std::vector<int>> heldout;  // same shape, never used for fitting
  std::string hash;                       // "sha256:<hex>" of all sequences' ids
  std::string source;                     // file it came from
  int seq_len = 0;
  int64_t fit_tokens() const;
  // Lengths of the fitting sequences (for Model::ForwardLayer) and their tokens
  // back to back (for Model::Embed).
  std::vector<int> fit_lengths() const;
  std::vector<int> fit_flat() const;
};

// Builds sequences from raw text. INVALID_ARGUMENT if the text yields fewer than
// num_seqs + heldout_seqs windows (the message says how many it yields).
absl::StatusOr<CalibrationSet> CalibrationFromText(const std::string& text, const Tokenizer& tok,
                                                   const CalibrationOptions& options);
// Builds sequences from token ids: documents are lines of whitespace-separated ids
// (no BOS); ids must be < vocab_size.
absl::StatusOr<CalibrationSet> CalibrationFromTokenIds(const std::string& contents, int bos_id,
                                                       int vocab_size,
                                                       const CalibrationOptions& options);
// Tokens of the stream the sequences are cut from (documents joined by BOS), for
// text (documents split on `separator`) or token-id contents; INVALID_ARGUMENT for
// malformed ids or ids >= the tokenizer's vocabulary.
absl::StatusOr<int64_t> CountCalibrationTokens(const std::string& contents, bool token_ids,
                                               const Tokenizer& tok,
                                               const std::string& separator = "<|endoftext|>");
// Reads `path`: a token-id file if it ends in ".tokens", else text.
absl::StatusOr<CalibrationSet> LoadCalibration(const std::string& path, const Tokenizer& tok,
                                               const CalibrationOptions& options);

}  // namespace eora::compress
