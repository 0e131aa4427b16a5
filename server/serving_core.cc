#include "server/serving_core.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/adapter_io.h"

namespace eora::server {

ServingCore::ServingCore(const Model* model, const Tokenizer* tokenizer, AdapterRegistry* registry,
                         Scheduler* scheduler, ServingCoreOptions options)
    : model_(model),
      tokenizer_(tokenizer),
      registry_(registry),
      scheduler_(scheduler),
      options_(std::move(options)) {}

absl::Status ServingCore::Validate(const GenerateParams& p) const {
  const ModelConfig& c = model_->config();
  if (!p.adapter_id.empty()) {
    if (absl::Status s = registry_->ValidateId(p.adapter_id); !s.ok()) return s;
  } else if (p.rank != 0) {
    return absl::InvalidArgumentError("rank: set without an adapter_id");
  }
  if (!p.prompt.empty() && !p.prompt_ids.empty())
    return absl::InvalidArgumentError("prompt: give either prompt or prompt_token_ids, not both");
  if (p.prompt_ids.empty() && tokenizer_ == nullptr)
    return absl::InvalidArgumentError("prompt: the model has no tokenizer; send prompt_token_ids");
  for (int64_t t : p.prompt_ids)
    if (t < 0 || t >= c.vocab_size)
      return absl::InvalidArgumentError(absl::StrCat("prompt_token_ids: id ", t,
                                                     " outside the vocabulary [0, ",
                                                     c.vocab_size, ")"));
  for (int64_t t : p.stop_token_ids)
    if (t < 0 || t >= c.vocab_size)
      return absl::InvalidArgumentError(absl::StrCat("stop_token_ids: id ", t,
                                                     " outside the vocabulary [0, ",
                                                     c.vocab_size, ")"));
  if (p.max_new_tokens < 0 || p.max_new_tokens > options_.max_new_tokens_limit)
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens: ", p.max_new_tokens,
                                                   " is outside [0, ",
                                                   options_.max_new_tokens_limit, "]"));
  if (!std::isfinite(p.temperature) || p.temperature < 0)
    return absl::InvalidArgumentError("temperature: must be finite and >= 0");
  if (!std::isfinite(p.top_p) || p.top_p < 0 || p.top_p > 1)
    return absl::InvalidArgumentError("top_p: must be in (0, 1] (0 = unset)");
  if (p.top_k < 0 || p.top_k > c.vocab_size)
    return absl::InvalidArgumentError(
        absl::StrCat("top_k: ", p.top_k, " is outside [0, ", c.vocab_size, "]"));
  if (p.rank < 0) return absl::InvalidArgumentError("rank: must be >= 0");
  if (p.stop.size() > 16) return absl::InvalidArgumentError("stop: at most 16 stop strings");
  for (const auto& s : p.stop)
    if (s.empty() || s.size() > 256)
      return absl::InvalidArgumentError("stop: each stop string must have 1 to 256 bytes");
  if (!std::isfinite(p.slo_ttft_ms) || p.slo_ttft_ms < 0 || !std::isfinite(p.slo_tpot_ms) ||
      p.slo_tpot_ms < 0)
    return absl::InvalidArgumentError("slo: latency targets must be finite and >= 0");
  if (!std::isfinite(p.slo_max_perplexity) || p.slo_max_perplexity < 0)
    return absl::InvalidArgumentError("slo.max_perplexity: must be finite and >= 0");
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<RequestState>> ServingCore::StartGenerate(
    const GenerateParams& p, absl::Time deadline) {
  const absl::Time arrival = absl::Now();
  if (scheduler_->draining()) return absl::UnavailableError("server is shutting down");
  if (absl::Status s = Validate(p); !s.ok()) return s;
  const ModelConfig& c = model_->config();

  ScheduledRequest req;
  req.arrival = arrival;
  req.deadline = deadline;
  req.priority = p.priority;
  req.stop = p.stop;
  req.slo_ttft_ms = p.slo_ttft_ms;
  req.slo_tpot_ms = p.slo_tpot_ms;
  req.notify_every = std::max(0, p.notify_every);
  GenerationRequest& g = req.gen;
  if (!p.prompt_ids.empty()) {
    g.prompt.assign(p.prompt_ids.begin(), p.prompt_ids.end());
  } else {
    g.prompt = tokenizer_->Encode(p.prompt, /*add_bos=*/!p.skip_bos);
    if (g.prompt.empty())
      return absl::InvalidArgumentError("prompt: empty (with skip_bos, give some text)");
  }
  if (static_cast<int>(g.prompt.size()) >= c.max_seq_len)
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", g.prompt.size(),
                                                   " tokens do not fit the context of ",
                                                   c.max_seq_len, " tokens"));
  g.max_new_tokens = p.max_new_tokens == 0 ? options_.default_max_new_tokens
                                           : static_cast<int>(p.max_new_tokens);
  g.sampling.temperature = p.temperature;
  g.sampling.top_k = static_cast<int>(p.top_k);
  g.sampling.top_p = p.top_p == 0 ? 1.f : p.top_p;
  g.sampling.seed = p.seed;
  if (absl::Status s = g.sampling.Validate(); !s.ok()) return s;
  g.stop_token_ids.assign(p.stop_token_ids.begin(), p.stop_token_ids.end());
  g.stop_at_eos = !p.ignore_eos;

  if (!p.adapter_id.empty()) {
    absl::StatusOr<AdapterHandle> h = registry_->Acquire(p.adapter_id, deadline);
    if (!h.ok()) {
      if (absl::IsDeadlineExceeded(h.status())) return h.status();
      return h.status();
    }
    const int stored = h->adapter()->max_rank();
    if (p.rank > stored)
      return absl::InvalidArgumentError(absl::StrCat("rank: ", p.rank, " is above the stored rank ",
                                                     stored, " of adapter '", p.adapter_id, "'"));
    int rank = static_cast<int>(p.rank);
    if (rank == 0 && p.slo_max_perplexity > 0) {
      // Smallest profiled rank that meets the quality floor.
      for (const auto& q : h->metadata().profile)
        if (q.rank > 0 && q.rank <= stored && q.ppl > 0 && q.ppl <= p.slo_max_perplexity) {
          rank = q.rank;
          break;
        }
    }
    g.rank = rank == 0 ? stored : rank;
    req.adapter = std::move(*h);
  }
  return scheduler_->Submit(std::move(req));
}

absl::Status ServingCore::Tokenize(const std::string& text, bool skip_bos, std::vector<int>* ids,
                                   std::vector<std::string>* pieces) const {
  if (tokenizer_ == nullptr)
    return absl::FailedPreconditionError("the model has no tokenizer");
  *ids = tokenizer_->Encode(text, !skip_bos);
  pieces->clear();
  for (int id : *ids) pieces->emplace_back(tokenizer_->Piece(id));
  return absl::OkStatus();
}

ModelSummary ServingCore::Summary() const {
  const ModelConfig& c = model_->config();
  ModelSummary s;
  s.model_path = options_.model_path;
  s.compressed_path = options_.compressed_path;
  s.architecture = c.architecture;
  s.fingerprint = ArchitectureFingerprint(c);
  s.vocab_size = c.vocab_size;
  s.context_length = c.max_seq_len;
  s.hidden_size = c.dim;
  s.num_layers = c.n_layers;
  s.num_heads = c.n_heads;
  s.num_kv_heads = c.n_kv_heads;
  if (tokenizer_) {
    s.bos_id = tokenizer_->bos_id();
    s.eos_id = tokenizer_->eos_id();
  }
  s.max_running = scheduler_->options().max_running;
  s.max_queue = scheduler_->options().max_queue;
  s.default_max_new_tokens = options_.default_max_new_tokens;
  return s;
}

}  // namespace eora::server
