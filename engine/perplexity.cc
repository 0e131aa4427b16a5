#include "engine/perplexity.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace eora {

absl::StatusOr<PerplexityResult> ComputePerplexity(Model& model, const std::vector<int>& tokens,
                                                   int bos_id, const PerplexityOptions& options) {
  const ModelConfig& c = model.config();
  const int ctx = options.ctx;
  if (ctx < 2) return absl::InvalidArgumentError(absl::StrCat("ctx must be >= 2, got ", ctx));
  if (ctx > c.max_seq_len)
    return absl::InvalidArgumentError(
        absl::StrCat("ctx ", ctx, " exceeds the model's context of ", c.max_seq_len));

  // Each window: the token ids fed to the model and the range of logits scored
  // (logit j predicts input j + 1).
  struct Window {
    std::vector<int> input;
    int first_scored = 0;  // first logit row scored
    int last_scored = 0;   // one past the last logit row scored
  };
  std::vector<Window> windows;
  if (options.protocol == PerplexityProtocol::kFull) {
    for (size_t s = 0; s < tokens.size(); s += ctx - 1) {
      Window w;
      w.input.push_back(bos_id);
      const size_t e = std::min(tokens.size(), s + ctx - 1);
      w.input.insert(w.input.end(), tokens.begin() + s, tokens.begin() + e);
      w.first_scored = 0;
      w.last_scored = static_cast<int>(w.input.size()) - 1;
      windows.push_back(std::move(w));
    }
  } else {
    std::vector<int> all;
    all.reserve(tokens.size() + 1);
    all.push_back(bos_id);
    all.insert(all.end(), tokens.begin(), tokens.end());
    const size_t n_chunks = all.size() / ctx;
    for (size_t i = 0; i < n_chunks; ++i) {
      Window w;
      w.input.assign(all.begin() + i * ctx, all.begin() + (i + 1) * ctx);
      w.input[0] = bos_id;
      w.first_scored = ctx / 2;
      w.last_scored = ctx - 1;
      windows.push_back(std::move(w));
    }
  }
  if (windows.empty())
    return absl::InvalidArgumentError(absl::StrCat(
        "text too short: ", tokens.size(), " tokens give no window of ", ctx, " tokens"));

  // Bound logits memory to ~256 MiB per batch.
  const int64_t per_window = static_cast<int64_t>(ctx) * c.vocab_size * 4;
  const int batch = std::max<int>(
      1, std::min<int64_t>(options.max_batch_windows, (int64_t{256} << 20) / per_window));
  KvCache cache(c, static_cast<int64_t>(batch) * (ctx + KvCache::kBlockTokens), options.kv_dtype);

  PerplexityResult result;
  double nll_sum = 0;
  std::vector<float> logits;
  for (size_t w0 = 0; w0 < windows.size(); w0 += batch) {
    const size_t w1 = std::min(windows.size(), w0 + batch);
    std::vector<KvSequence> seqs;
    seqs.reserve(w1 - w0);
    std::vector<SequenceChunk> chunks;
    for (size_t w = w0; w < w1; ++w) {
      seqs.push_back(cache.NewSequence());
      SequenceChunk ch;
      ch.kv = &seqs.back();
      ch.tokens = windows[w].input;
      ch.adapter = options.adapter;
      ch.rank = options.rank;
      ch.logits = LogitsMode::kAll;
      chunks.push_back(ch);
    }
    absl::Status st = model.Forward(chunks, &cache, &logits);
    for (auto& s : seqs) cache.Free(&s);
    RETURN_IF_ERROR(st);
    size_t row = 0;
    for (size_t w = w0; w < w1; ++w) {
      const Window& win = windows[w];
      for (int j = win.first_scored; j < win.last_scored; ++j) {
        const float* lg = logits.data() + (row + j) * c.vocab_size;
        nll_sum -= LogProb(lg, c.vocab_size, win.input[j + 1]);
        ++result.tokens;
      }
      row += win.input.size();
    }
    if (options.progress) options.progress(static_cast<int>(w1), static_cast<int>(windows.size()));
  }
  result.windows = static_cast<int>(windows.size());
  result.nll = nll_sum / static_cast<double>(result.tokens);
  result.ppl = std::exp(result.nll);
  if (!std::isfinite(result.ppl))
    return absl::InternalError("perplexity is not finite (the model produced NaN/Inf logits)");
  return result;
}

}  // namespace eora
