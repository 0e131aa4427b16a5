#include "engine/generator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/status_macros.h"

namespace eora {

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kNone: return "none";
    case FinishReason::kLength: return "length";
    case FinishReason::kStop: return "stop";
    case FinishReason::kContext: return "context";
    case FinishReason::kCancelled: return "cancelled";
    case FinishReason::kError: return "error";
  }
  return "?";
}

Generator::Generator(Model* model, const GeneratorOptions& options)
    : model_(model),
      options_(options),
      cache_(model->config(), options.kv_cache_tokens > 0
                                  ? options.kv_cache_tokens
                                  : static_cast<int64_t>(options.max_running) *
                                        model->config().max_seq_len,
             options.kv_dtype) {}

absl::StatusOr<int64_t> Generator::Add(GenerationRequest request) {
  const ModelConfig& c = model_->config();
  if (request.prompt.empty()) return absl::InvalidArgumentError("prompt: must not be empty");
  for (int t : request.prompt)
    if (t < 0 || t >= c.vocab_size)
      return absl::InvalidArgumentError(
          absl::StrCat("prompt: token id ", t, " outside the vocabulary [0, ", c.vocab_size, ")"));
  if (static_cast<int>(request.prompt.size()) >= c.max_seq_len)
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", request.prompt.size(),
                                                   " tokens do not fit the context of ",
                                                   c.max_seq_len));
  if (request.max_new_tokens < 0)
    return absl::InvalidArgumentError("max_new_tokens: must be >= 0");
  RETURN_IF_ERROR(request.sampling.Validate());
  if (request.adapter) {
    if (request.rank < 0 || request.rank > request.adapter->max_rank())
      return absl::InvalidArgumentError(absl::StrCat("rank: ", request.rank, " is outside [0, ",
                                                     request.adapter->max_rank(), "]"));
    if (request.rank == 0) request.rank = request.adapter->max_rank();
  } else if (request.rank != 0) {
    return absl::InvalidArgumentError("rank: set without an adapter");
  }
  const int64_t need_tokens =
      static_cast<int64_t>(request.prompt.size()) + request.max_new_tokens;
  const int64_t need_blocks = (need_tokens + KvCache::kBlockTokens - 1) / KvCache::kBlockTokens;
  if (need_blocks > cache_.total_blocks())
    return absl::ResourceExhaustedError(absl::StrCat(
        "prompt + max_new_tokens = ", need_tokens, " tokens exceed the KV cache capacity of ",
        cache_.capacity_tokens(), " tokens"));
  auto s = std::make_unique<Seq>(Seq{next_id_++, std::move(request), cache_.NewSequence(),
                                     Sampler(SamplingParams{}), 0, {}, -1, false, false,
                                     need_blocks});
  s->sampler = Sampler(s->req.sampling);
  const int64_t id = s->id;
  seqs_.push_back(std::move(s));
  return id;
}

void Generator::Cancel(int64_t id) {
  for (auto& s : seqs_)
    if (s->id == id) s->cancelled = true;
}

int Generator::running() const {
  int n = 0;
  for (const auto& s : seqs_) n += s->admitted ? 1 : 0;
  return n;
}
int Generator::waiting() const { return static_cast<int>(seqs_.size()) - running(); }

void Generator::Finish(Seq* s, FinishReason r, absl::Status status,
                       const std::function<void(int64_t, GenerationResult)>& on_finish) {
  cache_.Free(&s->kv);
  if (s->admitted) committed_blocks_ -= s->need_blocks;
  s->admitted = false;
  GenerationResult res;
  res.tokens = std::move(s->out);
  res.finish = r;
  res.rank_used = s->req.adapter ? s->req.rank : 0;
  res.status = std::move(status);
  if (on_finish) on_finish(s->id, std::move(res));
}

absl::StatusOr<bool> Generator::Step(
    const std::function<void(int64_t, int)>& on_token,
    const std::function<void(int64_t, GenerationResult)>& on_finish) {
  const ModelConfig& c = model_->config();
  // Retire cancelled and zero-length requests.
  for (auto it = seqs_.begin(); it != seqs_.end();) {
    Seq* s = it->get();
    if (s->cancelled || s->req.max_new_tokens == 0) {
      Finish(s, s->cancelled ? FinishReason::kCancelled : FinishReason::kLength, absl::OkStatus(),
             on_finish);
      it = seqs_.erase(it);
    } else {
      ++it;
    }
  }
  if (seqs_.empty()) return false;

  // Decode tokens of running sequences first, then prefill chunks in arrival order.
  std::vector<SequenceChunk> chunks;
  std::vector<Seq*> members;
  int budget = options_.max_step_tokens;
  for (auto& up : seqs_) {
    Seq* s = up.get();
    if (s->next_token < 0 || static_cast<int>(chunks.size()) >= options_.max_running) continue;
    SequenceChunk ch;
    ch.kv = &s->kv;
    ch.tokens = std::span<const int>(&s->next_token, 1);
    ch.adapter = s->req.adapter.get();
    ch.rank = s->req.adapter ? s->req.rank : 0;
    ch.logits = LogitsMode::kLast;
    chunks.push_back(ch);
    members.push_back(s);
    --budget;
  }
  for (auto& up : seqs_) {
    Seq* s = up.get();
    if (s->next_token >= 0 || budget <= 0 ||
        static_cast<int>(chunks.size()) >= options_.max_running)
      continue;
    if (!s->admitted) {
      // Admission in arrival order: stop at the first request that does not fit.
      if (committed_blocks_ + s->need_blocks > cache_.total_blocks()) break;
      s->admitted = true;
      committed_blocks_ += s->need_blocks;
    }
    const size_t n = std::min<size_t>(budget, s->req.prompt.size() - s->prefilled);
    SequenceChunk ch;
    ch.kv = &s->kv;
    ch.tokens = std::span<const int>(s->req.prompt.data() + s->prefilled, n);
    ch.adapter = s->req.adapter.get();
    ch.rank = s->req.adapter ? s->req.rank : 0;
    ch.logits = s->prefilled + n == s->req.prompt.size() ? LogitsMode::kLast : LogitsMode::kNone;
    chunks.push_back(ch);
    members.push_back(s);
    budget -= static_cast<int>(n);
  }
  if (chunks.empty()) return !seqs_.empty();

  // Admission reserved KV blocks for every admitted sequence, so this cannot run
  // out of cache; any error here is a bug or invalid input and ends the step.
  absl::Status st = model_->Forward(chunks, &cache_, &logits_);
  if (!st.ok()) return st;

  size_t row = 0;
  std::vector<Seq*> done;
  std::vector<FinishReason> why;
  for (size_t i = 0; i < chunks.size(); ++i) {
    Seq* s = members[i];
    if (chunks[i].tokens.data() != &s->next_token) s->prefilled += chunks[i].tokens.size();
    if (chunks[i].logits == LogitsMode::kNone) continue;
    const int tok = s->sampler.Sample(logits_.data() + row * c.vocab_size, c.vocab_size);
    ++row;
    const bool stop =
        (s->req.stop_at_eos && model_->weights().tokenizer &&
         tok == model_->weights().tokenizer->eos_id()) ||
        std::find(s->req.stop_token_ids.begin(), s->req.stop_token_ids.end(), tok) !=
            s->req.stop_token_ids.end();
    if (stop) {
      done.push_back(s);
      why.push_back(FinishReason::kStop);
      continue;
    }
    s->out.push_back(tok);
    if (on_token) on_token(s->id, tok);
    if (static_cast<int>(s->out.size()) >= s->req.max_new_tokens) {
      done.push_back(s);
      why.push_back(FinishReason::kLength);
    } else if (s->kv.length() + 1 >= c.max_seq_len) {
      done.push_back(s);
      why.push_back(FinishReason::kContext);
    } else {
      s->next_token = tok;
    }
  }
  for (size_t i = 0; i < done.size(); ++i) {
    Finish(done[i], why[i], absl::OkStatus(), on_finish);
    seqs_.erase(std::find_if(seqs_.begin(), seqs_.end(),
                             [&](const auto& p) { return p.get() == done[i]; }));
  }
  return !seqs_.empty();
}

absl::StatusOr<std::vector<GenerationResult>> GenerateAll(
    Model* model, std::vector<GenerationRequest> requests, const GeneratorOptions& options,
    const std::function<void(int, int)>& on_token) {
  GeneratorOptions opt = options;
  int64_t need = 0;
  for (const auto& r : requests)
    need += static_cast<int64_t>(r.prompt.size()) + r.max_new_tokens + KvCache::kBlockTokens;
  if (opt.kv_cache_tokens == 0)
    opt.kv_cache_tokens = std::min<int64_t>(
        need, static_cast<int64_t>(opt.max_running) * model->config().max_seq_len);
  Generator gen(model, opt);
  std::vector<int64_t> ids;
  for (auto& r : requests) {
    ASSIGN_OR_RETURN(int64_t id, gen.Add(std::move(r)));
    ids.push_back(id);
  }
  std::vector<GenerationResult> results(ids.size());
  for (;;) {
    ASSIGN_OR_RETURN(bool more, gen.Step(
                                    [&](int64_t id, int tok) {
                                      if (on_token) on_token(static_cast<int>(id), tok);
                                    },
                                    [&](int64_t id, GenerationResult r) {
                                      results[static_cast<size_t>(id)] = std::move(r);
                                    }));
    if (!more) break;
  }
  return results;
}

}  // namespace eora
