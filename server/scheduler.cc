#include <pthread.h>
#include <sched.h>

#include "server/scheduler.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "server/metrics.h"

namespace eora::server {

size_t Utf8CompletePrefix(const std::string& s, size_t n) {
  n = std::min(n, s.size());
  // Walk back over at most 3 continuation bytes to the last lead byte.
  size_t i = n;
  int cont = 0;
  while (i > 0 && cont < 4 && (static_cast<unsigned char>(s[i - 1]) & 0xC0) == 0x80) {
    --i;
    ++cont;
  }
  if (i == 0) return n;
  const unsigned char lead = static_cast<unsigned char>(s[i - 1]);
  int need = 0;
  if (lead >= 0xF0) need = 3;
  else if (lead >= 0xE0) need = 2;
  else if (lead >= 0xC0) need = 1;
  else return n;  // ASCII (or stray continuation bytes: leave as is)
  return cont >= need ? n : i - 1;
}

std::string SanitizeUtf8(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = len > 0 && i + len <= s.size();
    for (int k = 1; ok && k < len; ++k)
      ok = (static_cast<unsigned char>(s[i + k]) & 0xC0) == 0x80;
    if (ok) {
      out.append(s, i, len);
      i += len;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

namespace {
double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }
}  // namespace

Scheduler::Scheduler(Model* model, const Tokenizer* tokenizer, SchedulerOptions options,
                     std::unique_ptr<SchedulingPolicy> policy, ServerMetrics* metrics)
    : model_(model),
      tokenizer_(tokenizer),
      options_(options),
      metrics_(metrics),
      policy_(policy ? std::move(policy) : std::make_unique<FcfsPriorityPolicy>()) {
  const int max_running = std::max(1, options_.max_running);
  const int lanes = std::clamp(options_.lanes, 1, max_running);
  for (int i = 0; i < lanes; ++i) {
    auto lane = std::make_unique<Lane>();
    if (lanes > 1) {
      lane->pool = std::make_unique<ThreadPool>(std::max(1, options_.lane_threads));
      lane->own_model = std::make_unique<Model>(model_->shared_weights(), lane->pool.get());
      lane->model = lane->own_model.get();
    } else {
      lane->model = model_;
    }
    // Shares of the batch and the cache; the first lanes take the remainders.
    lane->max_running = max_running / lanes + (i < max_running % lanes ? 1 : 0);
    lane->kv_cache_tokens = options_.kv_cache_tokens == 0
                                ? 0
                                : std::max<int64_t>(1, options_.kv_cache_tokens / lanes);
    lane->gen = MakeGenerator(*lane);
    lanes_.push_back(std::move(lane));
  }
  // Every lane can hold what the smallest one can (admission refuses requests
  // no lane could ever take).
  lane_blocks_ = lanes_[0]->gen->cache().total_blocks();
  for (const auto& lane : lanes_) lane_blocks_ = std::min(lane_blocks_, lane->gen->cache().total_blocks());
  for (size_t i = 0; i < lanes_.size(); ++i) {
    Lane* lane = lanes_[i].get();
    lane->thread = std::thread([this, lane, i] {
      // The serving loops, in top -H and perf.
      const std::string name = lanes_.size() == 1 ? "eora-step" : "eora-step-" + std::to_string(i);
      pthread_setname_np(pthread_self(), name.c_str());
      Loop(lane);
    });
  }
}

std::unique_ptr<Generator> Scheduler::MakeGenerator(const Lane& lane) const {
  GeneratorOptions g;
  g.max_running = lane.max_running;
  g.max_step_tokens = options_.max_step_tokens;
  g.kv_cache_tokens = lane.kv_cache_tokens;
  g.kv_dtype = options_.kv_dtype;
  return std::make_unique<Generator>(lane.model, g);
}

int DefaultLanes(const ModelConfig& config, int threads, int max_running) {
  if (threads < 2 || max_running < 2 || !SmallStep(config, max_running)) return 1;
  return std::min(threads, max_running);
}

Scheduler::~Scheduler() { Drain(absl::ZeroDuration()); }

bool Scheduler::draining() const {
  std::lock_guard<std::mutex> lock(mu_);
  return draining_;
}

int64_t Scheduler::BlocksFor(const Job& j) const {
  const int64_t positions =
      std::min<int64_t>(static_cast<int64_t>(j.prompt_len) + j.req.gen.max_new_tokens + 1,
                        model_->config().max_seq_len);
  return (positions + KvCache::kBlockTokens - 1) / KvCache::kBlockTokens;
}

absl::StatusOr<std::shared_ptr<RequestState>> Scheduler::Submit(ScheduledRequest request) {
  auto job = std::make_unique<Job>();
  job->state = std::make_shared<RequestState>(request.notify_every);
  job->prompt_len = static_cast<int>(request.gen.prompt.size());
  job->prev_token = request.gen.prompt.empty() ? -1 : request.gen.prompt.back();
  if (request.adapter) request.gen.adapter = request.adapter.adapter();
  job->req = std::move(request);
  const int64_t blocks = BlocksFor(*job);
  if (blocks > lane_blocks_) {
    if (metrics_) metrics_->RecordRejected("kv_cache");
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache too small: the request needs ", blocks * KvCache::kBlockTokens,
        " positions, the cache has ", lane_blocks_ * KvCache::kBlockTokens,
        lanes_.size() > 1 ? absl::StrCat(" per step loop (", lanes_.size(), " loops share ") : " (",
        "--kv-cache-tokens)"));
  }
  std::shared_ptr<RequestState> state = job->state;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_) {
      if (metrics_) metrics_->RecordRejected("shutting_down");
      return absl::UnavailableError("server is shutting down");
    }
    if (static_cast<int>(policy_->size()) >= options_.max_queue) {
      if (metrics_) metrics_->RecordRejected("queue_full");
      return absl::ResourceExhaustedError(absl::StrCat(
          "admission queue full: ", policy_->size(), " requests waiting (--max-queue ",
          options_.max_queue, "), ", RunningLocked(), " running"));
    }
    job->seq = next_seq_++;
    QueuedRequest q;
    q.seq = job->seq;
    q.priority = job->req.priority;
    q.arrival = job->req.arrival;
    q.deadline = job->req.deadline;
    q.prompt_tokens = job->prompt_len;
    q.max_new_tokens = job->req.gen.max_new_tokens;
    q.adapter_id = job->req.adapter ? job->req.adapter.id() : "";
    q.slo_ttft_ms = job->req.slo_ttft_ms;
    q.slo_tpot_ms = job->req.slo_tpot_ms;
    policy_->Push(q);
    waiting_[job->seq] = std::move(job);
    PublishLocked();
  }
  cv_.notify_all();
  return state;
}

void Scheduler::Drain(absl::Duration grace) {
  std::unique_lock<std::mutex> lock(mu_);
  if (stop_) return;
  draining_ = true;
  const absl::Time until = absl::Now() + grace;
  cv_.notify_all();
  while ((!waiting_.empty() || RunningLocked() > 0) && absl::Now() < until)
    cv_.wait_for(lock, std::chrono::milliseconds(20));
  cancel_all_ = true;
  stop_ = true;
  cv_.notify_all();
  lock.unlock();
  for (auto& lane : lanes_)
    if (lane->thread.joinable()) lane->thread.join();
}

size_t Scheduler::RunningLocked() const {
  size_t n = 0;
  for (const auto& lane : lanes_) n += lane->running.size();
  return n;
}

SchedulerStats Scheduler::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return StatsLocked();
}

SchedulerStats Scheduler::StatsLocked() const {
  SchedulerStats s;
  s.waiting = static_cast<int>(waiting_.size());
  int64_t reserved = 0, total = 0;
  for (const auto& lane : lanes_) {
    s.running += lane->gen_running;
    s.waiting += lane->gen_waiting;
    reserved += lane->reserved_blocks;
    total += lane->gen->cache().total_blocks();
    s.lane_steps.push_back(lane->steps);
    for (const auto& [id, j] : lane->running)
      if (j->req.adapter) s.running_adapters.insert(j->req.adapter.id());
  }
  s.kv_cache_usage = total > 0 ? static_cast<double>(reserved) / total : 0;
  for (const auto& [seq, j] : waiting_)
    if (j->req.adapter) s.waiting_adapters.insert(j->req.adapter.id());
  s.steps = steps_;
  return s;
}

void Scheduler::PublishLocked() {
  if (!metrics_) return;
  const SchedulerStats s = StatsLocked();
  metrics_->SetSchedulerState(s.running, s.waiting, s.kv_cache_usage);
  metrics_->SetLoraInfo(s.running_adapters, s.waiting_adapters, options_.max_running);
}

bool Scheduler::ShouldAdmitLocked(const Lane& lane, int64_t need) const {
  auto room = [&](const Lane& l) {
    return static_cast<int>(l.running.size()) < l.max_running &&
           l.reserved_blocks + need <= l.gen->cache().total_blocks();
  };
  if (!room(lane)) return false;
  // Leave the request to a lane with fewer sequences that can take it: it does
  // at its next step boundary (or at once, if it is idle: Submit woke it).
  for (const auto& other : lanes_)
    if (other.get() != &lane && other->running.size() < lane.running.size() && room(*other))
      return false;
  return true;
}

void Scheduler::OnToken(Lane* lane, Job* j, int token) {
  const absl::Time now = absl::Now();
  if (j->generated == 0) j->first_token = now;
  j->last_token = now;
  ++j->generated;
  if (j->stopped_by_string) return;  // already stopping; ignore the rest
  const size_t before = j->text.size();
  j->text += tokenizer_ ? tokenizer_->DecodeToken(j->prev_token, token) : "";
  j->prev_token = token;
  size_t max_stop = 0;
  for (const auto& s : j->req.stop) max_stop = std::max(max_stop, s.size());
  if (max_stop > 0) {
    const size_t from = before >= max_stop ? before - max_stop + 1 : 0;
    size_t best = std::string::npos;
    for (const auto& s : j->req.stop) {
      if (s.empty()) continue;
      const size_t p = j->text.find(s, from);
      if (p != std::string::npos) best = std::min(best, p);
    }
    if (best != std::string::npos) {
      j->stopped_by_string = true;
      j->stop_at = best;
      lane->gen->Cancel(j->engine_id);
    }
  }
  // Deliver text that can no longer be part of a stop string and that ends on
  // a whole UTF-8 character.
  size_t limit = j->text.size();
  if (j->stopped_by_string) limit = j->stop_at;
  else if (max_stop > 1) limit = limit >= max_stop - 1 ? limit - (max_stop - 1) : 0;
  limit = Utf8CompletePrefix(j->text, limit);
  std::string delta;
  if (limit > j->emitted) {
    delta = j->text.substr(j->emitted, limit - j->emitted);
    j->emitted = limit;
  }
  if (j->state->Push({token}, delta)) ++lane->woken;
}

void Scheduler::FinishJob(Job* j, const GenerationResult* result, absl::Status status) {
  const absl::Time now = absl::Now();
  GenerateUpdate u;
  std::string reason = "cancelled";
  if (result != nullptr) {
    reason = FinishReasonName(result->finish);
    if (result->finish == FinishReason::kError && status.ok()) status = result->status;
  }
  if (j->stopped_by_string) {
    reason = "stop";
  } else if (reason == "cancelled" && !j->cancel_status.ok()) {
    status = j->cancel_status;
  }
  if (!status.ok()) reason = "cancelled";
  const size_t end = j->stopped_by_string ? j->stop_at : j->text.size();
  if (end > j->emitted) u.text = SanitizeUtf8(j->text.substr(j->emitted, end - j->emitted));
  j->emitted = std::max(j->emitted, end);
  u.status = status;
  u.finish_reason = reason;
  u.prompt_tokens = j->prompt_len;
  u.generated_tokens = j->generated;
  u.rank_used = result ? result->rank_used : (j->req.adapter ? j->req.gen.rank : 0);
  if (j->req.adapter) {
    u.adapter_id = j->req.adapter.id();
    u.adapter_version = j->req.adapter.version();
    if (u.rank_used == 0) u.rank_used = j->req.adapter.adapter()->max_rank();
  }
  const absl::Time arrival = j->req.arrival;
  if (j->admitted != absl::Time()) u.timings.queue_ms = Ms(j->admitted - arrival);
  if (j->generated > 0) u.timings.ttft_ms = Ms(j->first_token - arrival);
  if (j->generated > 1)
    u.timings.tpot_ms = Ms(j->last_token - j->first_token) / (j->generated - 1);
  u.timings.e2e_ms = Ms(now - arrival);
  if (metrics_)
    metrics_->RecordFinished(status.ok() ? reason : "error", j->prompt_len, j->generated,
                             u.timings.queue_ms / 1e3, u.timings.ttft_ms / 1e3,
                             u.timings.tpot_ms / 1e3, u.timings.e2e_ms / 1e3);
  j->req.adapter.Reset();  // unpin now
  j->req.gen.adapter.reset();
  j->state->Finish(std::move(u));
}

void Scheduler::Loop(Lane* lane) {
  std::map<int64_t, std::unique_ptr<Job>>& running = lane->running;
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    const absl::Time now = absl::Now();
    // Waiting requests that were cancelled or timed out leave the queue.
    for (auto it = waiting_.begin(); it != waiting_.end();) {
      Job* j = it->second.get();
      absl::Status why;
      if (cancel_all_) why = absl::UnavailableError("server is shutting down");
      else if (j->state->cancelled()) why = absl::CancelledError("cancelled by the client");
      else if (now >= j->req.deadline) why = absl::DeadlineExceededError("deadline passed while queued");
      if (why.ok()) {
        ++it;
        continue;
      }
      policy_->Remove(j->seq);
      FinishJob(j, nullptr, why);
      it = waiting_.erase(it);
    }
    // Admit at the step boundary.
    for (;;) {
      auto next = policy_->Next();
      if (!next) break;
      Job* j = waiting_[*next].get();
      const int64_t need = BlocksFor(*j);
      if (!ShouldAdmitLocked(*lane, need)) break;
      policy_->Remove(*next);
      std::unique_ptr<Job> job = std::move(waiting_[*next]);
      waiting_.erase(*next);
      GenerationRequest g = job->req.gen;  // keep a copy for rank/adapter reporting
      absl::StatusOr<int64_t> id = lane->gen->Add(std::move(g));
      if (!id.ok()) {
        FinishJob(job.get(), nullptr, id.status());
        continue;
      }
      job->engine_id = *id;
      job->admitted = absl::Now();
      job->reserved_blocks = need;
      lane->reserved_blocks += need;
      if (job->req.adapter && job->req.gen.rank == 0)
        job->req.gen.rank = job->req.adapter.adapter()->max_rank();
      running[*id] = std::move(job);
    }
    // Running requests that were cancelled or timed out stop at this boundary.
    for (auto& [id, j] : running) {
      if (!j->cancel_status.ok()) continue;
      if (cancel_all_) j->cancel_status = absl::UnavailableError("server is shutting down");
      else if (j->state->cancelled()) j->cancel_status = absl::CancelledError("cancelled by the client");
      else if (now >= j->req.deadline) j->cancel_status = absl::DeadlineExceededError("deadline exceeded");
      if (!j->cancel_status.ok()) lane->gen->Cancel(id);
    }
    lane->gen_running = lane->gen->running();
    lane->gen_waiting = lane->gen->waiting();
    PublishLocked();
    if (running.empty()) {
      if (stop_ && waiting_.empty()) break;
      cv_.notify_all();  // Drain waits on emptiness
      cv_.wait_for(lock, std::chrono::milliseconds(waiting_.empty() ? 50 : 5));
      continue;
    }
    lock.unlock();

    std::vector<std::pair<int64_t, GenerationResult>> finished;
    int step_tokens = 0;
    lane->woken = 0;
    const auto t0 = std::chrono::steady_clock::now();
    absl::StatusOr<bool> more = lane->gen->Step(
        [&](int64_t id, int token) {
          ++step_tokens;
          auto it = running.find(id);
          if (it != running.end()) OnToken(lane, it->second.get(), token);
        },
        [&](int64_t id, GenerationResult r) { finished.emplace_back(id, std::move(r)); });
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // With a loop busy on every core, the kernel let a gRPC thread with a new
    // request (or the reply of a finished one) wait for a lane's time slice:
    // unary TTFT p99 of 8-20 ms at 16 streams on 2 cores. Offering the core at
    // each boundary lets such threads run at once (p99 1.4-1.7 ms); with nothing
    // else ready the call returns at once. Not after a step that woke stream
    // handlers: they are running or queued already, and yielding to them at
    // every step cost a third of the per-token streaming throughput.
    if (lanes_.size() > 1 && lane->woken == 0) sched_yield();

    lock.lock();
    ++steps_;
    ++lane->steps;
    if (metrics_) metrics_->RecordStep(step_tokens, secs);
    const bool had_finished = !finished.empty();
    for (auto& [id, r] : finished) {
      auto it = running.find(id);
      if (it == running.end()) continue;
      FinishJob(it->second.get(), &r, absl::OkStatus());
      lane->reserved_blocks -= it->second->reserved_blocks;
      running.erase(it);
    }
    if (!more.ok()) {
      // The step failed as a whole: fail everything in it and start over with a
      // fresh Generator (and KV cache).
      for (auto& [id, j] : running) {
        FinishJob(j.get(), nullptr,
                  absl::InternalError(absl::StrCat("engine step failed: ", more.status().ToString())));
      }
      running.clear();
      lane->reserved_blocks = 0;
      lane->gen = MakeGenerator(*lane);
    }
    // Freed room may let another (idle) lane's turn come, and Drain waits for
    // lanes to empty.
    if (had_finished || !more.ok()) cv_.notify_all();
  }
  lane->gen_running = lane->gen_waiting = 0;
  PublishLocked();
  cv_.notify_all();
}

}  // namespace eora::server
