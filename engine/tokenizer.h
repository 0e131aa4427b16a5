// Text <-> token ids.
//
// Two implementations behind one interface:
//  - SentencePiece-style BPE with piece scores and byte fallback, as carried inside
//    GGUF files (tokenizer.ggml.model = "llama"): text is prefixed with a space,
//    spaces become U+2581, pairs are merged by highest score, unknown bytes become
//    <0xXX> pieces.
//  - Hugging Face `tokenizer.json` BPE (model.type = "BPE", Llama-2 style: merges
//    list, byte_fallback, Prepend/Replace normalizer or Metaspace pre-tokenizer).
//
// Threading contract: immutable after creation; all methods are thread-safe.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace eora {

struct SpmVocab;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Encodes text. `add_bos` prepends the BOS id. Never fails: bytes with no piece
  // use byte fallback (or UNK when the vocabulary has no byte pieces).
  virtual std::vector<int> Encode(std::string_view text, bool add_bos) const = 0;

  // The text of `token` when it follows `prev` (-1 for none): strips the leading
  // space of the first piece after BOS, turns U+2581 into spaces and byte pieces
  // into raw bytes. Control tokens (BOS/EOS/UNK) decode to "".
  virtual std::string DecodeToken(int prev, int token) const = 0;

  // Decodes a whole sequence (as if each token were decoded after its predecessor).
  std::string Decode(const std::vector<int>& tokens) const;

  virtual int vocab_size() const = 0;
  virtual int bos_id() const = 0;
  virtual int eos_id() const = 0;
  // The vocabulary piece of an id ("" if out of range).
  virtual std::string_view Piece(int id) const = 0;
  // The SentencePiece vocabulary this tokenizer was built from (MakeSpmTokenizer), so
  // that a model can be written again with it; nullptr for other tokenizers.
  virtual const SpmVocab* spm_vocab() const { return nullptr; }
};

// SentencePiece-style vocabulary (from GGUF metadata).
struct SpmVocab {
  std::vector<std::string> pieces;   // tokenizer.ggml.tokens
  std::vector<float> scores;         // tokenizer.ggml.scores (may be empty: all 0)
  std::vector<int> types;            // tokenizer.ggml.token_type (1 normal, 2 unknown,
                                     // 3 control, 4 user defined, 5 unused, 6 byte); may be empty
  int bos_id = 1;
  int eos_id = 2;
  int unk_id = 0;
  bool add_space_prefix = true;
};
absl::StatusOr<std::unique_ptr<Tokenizer>> MakeSpmTokenizer(SpmVocab vocab);

// Hugging Face tokenizer.json (BPE). Errors name the file and the offending field.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadHfTokenizer(const std::string& tokenizer_json_path);
absl::StatusOr<std::unique_ptr<Tokenizer>> ParseHfTokenizer(std::string_view json_text,
                                                            std::string_view source_name);

}  // namespace eora

namespace eora {

// Hugging Face tokenizer.json (model.type "BPE", byte_fallback) equivalent to
// MakeSpmTokenizer(vocab): every piece that splits into two pieces of the vocabulary
// yields a merge, ordered by the merged piece's score (descending, ties by id) as
// transformers' SentencePiece converter does; Prepend/Replace normalizer,
// Replace/ByteFallback/Fuse/Strip decoder, BOS via a TemplateProcessing
// post-processor; control/unknown/unused pieces become special added tokens,
// user-defined pieces non-special ones. ParseHfTokenizer(result) encodes exactly as
// the SPM tokenizer whenever the scores of mergeable pieces are distinct.
absl::StatusOr<std::string> SpmVocabToHfTokenizerJson(const SpmVocab& vocab);

}  // namespace eora
