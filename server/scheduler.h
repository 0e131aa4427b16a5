// The scheduler: admission, the waiting queue, and the step thread that owns the
// engine Generator (continuous batching).
//
// Submit() admits a request into a bounded waiting queue (RESOURCE_EXHAUSTED
// when full, UNAVAILABLE while draining). The step thread moves waiting requests
// into the Generator at step boundaries, in the order the SchedulingPolicy gives,
// as long as the batch has a free slot and the KV cache has blocks for the
// request's prompt + max_new_tokens; then runs one Generator step (prefill chunks
// and decode tokens of many sequences, each with its own adapter version and
// rank, under a token budget). Finished sequences leave after the step and free
// their KV blocks and adapter pins. Cancelled requests and passed deadlines are
// stopped at the next step boundary.
//
// Lanes: with SchedulerOptions::lanes > 1 the scheduler runs that many step
// loops side by side, each with its own Generator, KV cache share and copy of
// the Model (the weights are shared) on its own threads. They take requests
// from the one waiting queue, a new request going to the lane with the fewest
// sequences. For a small model this replaces one step over all sequences split
// by sequence across threads (Model::ShardCount), whose threads wait for each
// other at the end of every step and then for the serial work between steps
// (sampling, token delivery), with loops that never wait for each other.
//
// Threading contract: Submit, Stats and Drain are thread-safe. A lane's
// Generator and Model are used only by its step thread.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/generator.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "server/adapter_registry.h"
#include "server/request.h"
#include "server/scheduling_policy.h"

namespace eora::server {

class ServerMetrics;

struct SchedulerOptions {
  // Sequences in one step (the batch). Default 32.
  int max_running = 32;
  // Requests waiting to join the batch before Submit refuses. Default 256.
  int max_queue = 256;
  // Token budget of one step (decode tokens + prefill chunks). Default 512.
  int max_step_tokens = 512;
  // KV cache positions in total; 0 = max_running * model context.
  int64_t kv_cache_tokens = 0;
  // Element type of the KV cache (F16 holds twice the positions in the same bytes).
  KvDType kv_dtype = KvDType::kF32;
  // Independent step loops (see above); max_running and kv_cache_tokens are
  // divided among them. 1: one loop on the Model given to the constructor.
  int lanes = 1;
  // Threads of each lane's own thread pool when lanes > 1.
  int lane_threads = 1;
};

// Lanes for a server of `threads` engine threads: one per thread when a step of
// max_running tokens is small for the model (SmallStep), else one.
int DefaultLanes(const ModelConfig& config, int threads, int max_running);

// A request ready for the engine: validated, tokenized, adapter pinned.
struct ScheduledRequest {
  GenerationRequest gen;          // gen.adapter is set from `adapter`
  AdapterHandle adapter;          // empty for the base model
  std::vector<std::string> stop;  // stop strings
  int priority = 0;
  absl::Time arrival = absl::Now();
  absl::Time deadline = absl::InfiniteFuture();
  double slo_ttft_ms = 0, slo_tpot_ms = 0;
  int notify_every = 1;  // RequestState wake-ups (see request.h)
};

struct SchedulerStats {
  int running = 0;   // sequences in the Generators
  int waiting = 0;   // queued + admitted but not yet prefilled
  double kv_cache_usage = 0;  // fraction of KV blocks reserved
  std::set<std::string> running_adapters, waiting_adapters;
  int64_t steps = 0;
  std::vector<int64_t> lane_steps;  // steps of each lane (they add up to steps)
};

class Scheduler {
 public:
  // `model` and `tokenizer` are not owned and must outlive the scheduler;
  // `metrics` may be null. The step threads start immediately. lanes and
  // lane_threads below 1 count as 1; lanes above max_running as max_running.
  Scheduler(Model* model, const Tokenizer* tokenizer, SchedulerOptions options,
            std::unique_ptr<SchedulingPolicy> policy, ServerMetrics* metrics = nullptr);
  ~Scheduler();  // Drain(0) if still running
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Queues `request`. On success the scheduler owns it and reports through the
  // returned state; on failure the request (and its adapter pin) is released.
  absl::StatusOr<std::shared_ptr<RequestState>> Submit(ScheduledRequest request);

  // Stops accepting, lets in-flight requests finish for up to `grace`, cancels
  // the rest (they finish with UNAVAILABLE), and stops the step thread.
  void Drain(absl::Duration grace);
  bool draining() const;

  SchedulerStats Stats() const;
  const SchedulerOptions& options() const { return options_; }

 private:
  struct Job {
    uint64_t seq = 0;
    std::shared_ptr<RequestState> state;
    ScheduledRequest req;
    int prompt_len = 0;
    int64_t engine_id = -1;
    int64_t reserved_blocks = 0;
    // Output tracking (step thread only).
    int prev_token = -1;
    std::string text;
    size_t emitted = 0;   // bytes of `text` already delivered
    int generated = 0;
    bool stopped_by_string = false;
    size_t stop_at = std::string::npos;
    absl::Status cancel_status;  // why it was cancelled (deadline, shutdown)
    absl::Time admitted, first_token, last_token;
  };

  // One step loop and what it owns.
  struct Lane {
    std::unique_ptr<ThreadPool> pool;  // lanes > 1: the lane's own pool and model
    std::unique_ptr<Model> own_model;
    Model* model = nullptr;            // own_model, or the scheduler's model
    int max_running = 0;
    int64_t kv_cache_tokens = 0;
    std::unique_ptr<Generator> gen;    // step thread
    // Written only by the lane's step thread, under mu_; read by that thread
    // without the lock and by others under mu_.
    std::map<int64_t, std::unique_ptr<Job>> running;  // by engine id
    int64_t reserved_blocks = 0;           // guarded by mu_
    int gen_running = 0, gen_waiting = 0;  // guarded by mu_
    int64_t steps = 0;                     // guarded by mu_
    int woken = 0;  // step thread: handlers woken in the current step
    std::thread thread;
  };

  void Loop(Lane* lane);
  // Whether `lane` should admit a request needing `need` KV blocks now: it has
  // room, and no other lane with fewer sequences has room too.
  bool ShouldAdmitLocked(const Lane& lane, int64_t need) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void OnToken(Lane* lane, Job* j, int token);
  void FinishJob(Job* j, const GenerationResult* result, absl::Status status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t BlocksFor(const Job& j) const;
  SchedulerStats StatsLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Sequences admitted into the lanes' Generators.
  size_t RunningLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PublishLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::unique_ptr<Generator> MakeGenerator(const Lane& lane) const;

  Model* const model_;
  const Tokenizer* const tokenizer_;
  const SchedulerOptions options_;
  ServerMetrics* const metrics_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::unique_ptr<SchedulingPolicy> policy_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, std::unique_ptr<Job>> waiting_ ABSL_GUARDED_BY(mu_);
  std::vector<std::unique_ptr<Lane>> lanes_;  // fixed after construction
  int64_t lane_blocks_ = 0;                   // KV blocks of each lane
  uint64_t next_seq_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool cancel_all_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int64_t steps_ ABSL_GUARDED_BY(mu_) = 0;
};

// Length of the longest prefix of s[0, n) that does not end inside a UTF-8
// multi-byte sequence.
size_t Utf8CompletePrefix(const std::string& s, size_t n);
// Replaces invalid UTF-8 with U+FFFD.
std::string SanitizeUtf8(const std::string& s);

}  // namespace eora::server
