// Domain types of one generation request, shared by the gRPC layer, the serving
// core and the scheduler (no protobuf here).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/time/time.h"

namespace eora::server {

// What a client asks for (eora.v1.GenerateRequest in domain form). Zero values
// mean "unset" as in the proto; ServingCore applies the defaults.
struct GenerateParams {
  std::string adapter_id;         // "" = base model
  std::string prompt;             // text (tokenized with BOS unless skip_bos)
  std::vector<int64_t> prompt_ids;  // used as given when non-empty
  bool skip_bos = false;
  int64_t max_new_tokens = 0;     // 0: server default
  float temperature = 0;
  int64_t top_k = 0;
  float top_p = 0;                // 0 or 1: off
  uint64_t seed = 0;
  std::vector<std::string> stop;  // stop strings
  std::vector<int64_t> stop_token_ids;
  bool ignore_eos = false;
  int64_t rank = 0;               // 0: adapter default
  double slo_ttft_ms = 0, slo_tpot_ms = 0, slo_max_perplexity = 0;
  int priority = 0;
  // How often the consumer (the RPC handler) is woken for new output: every N
  // tokens, the first token at once (streaming); 0: only when finished (unary).
  // Not a proto field: the gRPC layer sets it per RPC.
  int notify_every = 1;
};

// Server-side timings, milliseconds; negative = not reached.
struct RequestTimings {
  double queue_ms = -1, ttft_ms = -1, tpot_ms = -1, e2e_ms = -1;
};

// Output of a request since the last Poll (deltas), plus the final fields once
// finished.
struct GenerateUpdate {
  std::string text;
  std::vector<int> tokens;
  bool finished = false;
  // Set when finished:
  absl::Status status;        // not OK: the request failed (code says why)
  std::string finish_reason;  // "length", "stop", "context", "cancelled"
  int prompt_tokens = 0;
  int generated_tokens = 0;
  int rank_used = 0;
  std::string adapter_id;
  uint64_t adapter_version = 0;
  RequestTimings timings;
};

// The channel between one client handler and the scheduler.
//
// Waking the handler costs a futex wake and a context switch (tens of
// microseconds on a busy machine, more than a decode step of a small model), so
// Push wakes it only when `notify_every` tokens are pending (the first token at
// once); 0 wakes it only for Finish. Poll still returns what is pending when its
// timeout passes.
//
// Threading contract: Poll/Cancel from the handler thread, Push/Finish from the
// scheduler thread; all methods are thread-safe.
class RequestState {
 public:
  explicit RequestState(int notify_every = 1) : notify_every_(notify_every) {}

  // Waits up to `timeout` for output (see above); moves what arrived since the
  // last call into *out (replacing its contents). Returns true if there was
  // anything new or the request finished.
  bool Poll(absl::Duration timeout, GenerateUpdate* out);
  // Asks the scheduler to stop the request (client gone or deadline passed).
  void Cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }

  // Returns whether it woke the handler.
  bool Push(const std::vector<int>& tokens, const std::string& text);
  // Final fields (text/tokens in `final_update` are appended as a last delta).
  void Finish(GenerateUpdate final_update);
  bool finished() const;

 private:
  const int notify_every_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  GenerateUpdate pending_ ABSL_GUARDED_BY(mu_);
  bool has_new_ ABSL_GUARDED_BY(mu_) = false;
  bool ready_ ABSL_GUARDED_BY(mu_) = false;        // enough pending to wake the handler
  bool woke_first_ ABSL_GUARDED_BY(mu_) = false;   // the first token has been signalled
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  bool delivered_final_ ABSL_GUARDED_BY(mu_) = false;
  std::atomic<bool> cancelled_{false};
};

}  // namespace eora::server
