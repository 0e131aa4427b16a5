#include "server/metrics.h"

#include <chrono>
#include <sstream>

#include "prometheus/text_serializer.h"

namespace eora::server {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

// Buckets as vLLM's (seconds).
const Histogram::BucketBoundaries kTtftBuckets = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08,
                                                  0.1,   0.25,  0.5,  0.75, 1.0,  2.5,  5.0,
                                                  7.5,   10.0};
const Histogram::BucketBoundaries kTpotBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                  0.05,   0.075, 0.1,    0.15,  0.2,  0.3,
                                                  0.4,    0.5,   0.75,   1.0,   2.5};
const Histogram::BucketBoundaries kE2eBuckets = {0.01, 0.05, 0.1, 0.3,  0.5,  0.8,  1.0, 1.5,
                                                 2.0,  2.5,  5.0, 10.0, 15.0, 20.0, 30.0, 60.0};
const Histogram::BucketBoundaries kLoadBuckets = {0.001, 0.005, 0.01, 0.05, 0.1,
                                                  0.5,   1.0,   5.0,  10.0, 30.0};
const Histogram::BucketBoundaries kStepTokenBuckets = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024};

template <typename T>
T& Single(prometheus::Family<T>& f) {
  return f.Add({});
}

}  // namespace

ServerMetrics::ServerMetrics(std::shared_ptr<prometheus::Registry> registry)
    : registry_(std::move(registry)),
      rpc_(BuildCounter()
               .Name("eora_grpc_requests_total")
               .Help("Finished gRPC requests by method and status code.")
               .Register(*registry_)),
      success_(BuildCounter()
                   .Name("eora_request_success_total")
                   .Help("Generation requests that finished in the engine, by finish reason.")
                   .Register(*registry_)),
      rejected_(BuildCounter()
                    .Name("eora_request_rejected_total")
                    .Help("Generation requests refused at admission, by reason.")
                    .Register(*registry_)),
      prompt_tokens_(Single(BuildCounter()
                                .Name("eora_prompt_tokens_total")
                                .Help("Prompt tokens processed.")
                                .Register(*registry_))),
      generation_tokens_(Single(BuildCounter()
                                    .Name("eora_generation_tokens_total")
                                    .Help("Tokens generated.")
                                    .Register(*registry_))),
      ttft_(BuildHistogram()
                .Name("eora_time_to_first_token_seconds")
                .Help("Time from arrival to the first generated token.")
                .Register(*registry_)
                .Add({}, kTtftBuckets)),
      tpot_(BuildHistogram()
                .Name("eora_time_per_output_token_seconds")
                .Help("Mean time per generated token after the first, per request.")
                .Register(*registry_)
                .Add({}, kTpotBuckets)),
      e2e_(BuildHistogram()
               .Name("eora_e2e_request_latency_seconds")
               .Help("Time from arrival to the end of generation.")
               .Register(*registry_)
               .Add({}, kE2eBuckets)),
      queue_(BuildHistogram()
                 .Name("eora_request_queue_time_seconds")
                 .Help("Time from arrival until the request joined the running batch.")
                 .Register(*registry_)
                 .Add({}, kE2eBuckets)),
      step_tokens_(BuildHistogram()
                       .Name("eora_iteration_tokens")
                       .Help("Tokens (prefill + decode) per engine step.")
                       .Register(*registry_)
                       .Add({}, kStepTokenBuckets)),
      step_seconds_(BuildHistogram()
                        .Name("eora_iteration_seconds")
                        .Help("Wall time of one engine step.")
                        .Register(*registry_)
                        .Add({}, kTpotBuckets)),
      running_(Single(BuildGauge()
                          .Name("eora_num_requests_running")
                          .Help("Requests in the running batch.")
                          .Register(*registry_))),
      waiting_(Single(BuildGauge()
                          .Name("eora_num_requests_waiting")
                          .Help("Requests admitted and waiting to join the batch.")
                          .Register(*registry_))),
      kv_usage_(Single(BuildGauge()
                           .Name("eora_kv_cache_usage_perc")
                           .Help("Fraction of KV cache blocks in use (0 to 1).")
                           .Register(*registry_))),
      lora_info_(BuildGauge()
                     .Name("eora_lora_requests_info")
                     .Help("Adapters of running and waiting requests (labels, comma separated); "
                           "value: Unix time of the update. Shaped like vllm:lora_requests_info.")
                     .Register(*registry_)),
      adapter_loads_(BuildCounter()
                         .Name("eora_adapter_loads_total")
                         .Help("Adapter loads from disk, by result.")
                         .Register(*registry_)),
      adapter_load_seconds_(BuildHistogram()
                                .Name("eora_adapter_load_seconds")
                                .Help("Time to read and validate an adapter from disk.")
                                .Register(*registry_)
                                .Add({}, kLoadBuckets)),
      adapter_hits_(BuildCounter()
                        .Name("eora_adapter_cache_hits_total")
                        .Help("Adapter lookups served from a tier.")
                        .Register(*registry_)),
      adapter_misses_(BuildCounter()
                          .Name("eora_adapter_cache_misses_total")
                          .Help("Adapter lookups that missed a tier.")
                          .Register(*registry_)),
      adapter_evictions_(BuildCounter()
                             .Name("eora_adapter_evictions_total")
                             .Help("Adapters evicted from a tier (LRU, unpinned).")
                             .Register(*registry_)),
      adapter_bytes_(BuildGauge()
                         .Name("eora_adapter_bytes")
                         .Help("Bytes of adapter factors resident per tier.")
                         .Register(*registry_)),
      adapters_resident_(BuildGauge()
                             .Name("eora_adapters_resident")
                             .Help("Adapters resident per tier.")
                             .Register(*registry_)) {
  for (const char* t : {"device", "host"}) {
    adapter_bytes_.Add({{"tier", t}});
    adapters_resident_.Add({{"tier", t}});
    adapter_hits_.Add({{"tier", t}});
    adapter_misses_.Add({{"tier", t}});
    adapter_evictions_.Add({{"tier", t}});
  }
  adapter_loads_.Add({{"result", "ok"}});
  adapter_loads_.Add({{"result", "error"}});
  SetLoraInfo({}, {}, 0);
}

std::string ServerMetrics::Serialize() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, registry_->Collect());
  return out.str();
}

void ServerMetrics::RecordRpc(const std::string& method, const std::string& code) {
  rpc_.Add({{"method", method}, {"code", code}}).Increment();
}

void ServerMetrics::RecordFinished(const std::string& finish_reason, int prompt_tokens,
                                   int generated_tokens, double queue_s, double ttft_s,
                                   double tpot_s, double e2e_s) {
  success_.Add({{"finished_reason", finish_reason}}).Increment();
  prompt_tokens_.Increment(prompt_tokens);
  generation_tokens_.Increment(generated_tokens);
  if (queue_s >= 0) queue_.Observe(queue_s);
  if (ttft_s >= 0) ttft_.Observe(ttft_s);
  if (tpot_s >= 0) tpot_.Observe(tpot_s);
  if (e2e_s >= 0) e2e_.Observe(e2e_s);
}

void ServerMetrics::RecordRejected(const std::string& reason) {
  rejected_.Add({{"reason", reason}}).Increment();
}

void ServerMetrics::SetSchedulerState(int running, int waiting, double kv_cache_usage) {
  running_.Set(running);
  waiting_.Set(waiting);
  kv_usage_.Set(kv_cache_usage);
}

void ServerMetrics::RecordStep(int tokens, double seconds) {
  step_tokens_.Observe(tokens);
  step_seconds_.Observe(seconds);
}

void ServerMetrics::SetLoraInfo(const std::set<std::string>& running,
                                const std::set<std::string>& waiting, int max_lora) {
  auto join = [](const std::set<std::string>& s) {
    std::string out;
    for (const auto& id : s) {
      if (!out.empty()) out += ',';
      out += id;
    }
    return out;
  };
  const std::string r = join(running), w = join(waiting), m = std::to_string(max_lora);
  const std::string key = r + '\n' + w + '\n' + m;
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::lock_guard<std::mutex> lock(lora_mu_);
  if (lora_series_ != nullptr && key == lora_key_) {
    lora_series_->Set(now);
    return;
  }
  if (lora_series_ != nullptr) lora_info_.Remove(lora_series_);
  lora_series_ = &lora_info_.Add(
      {{"running_lora_adapters", r}, {"waiting_lora_adapters", w}, {"max_lora", m}});
  lora_series_->Set(now);
  lora_key_ = key;
}

void ServerMetrics::AdapterLoad(bool ok, double seconds) {
  adapter_loads_.Add({{"result", ok ? "ok" : "error"}}).Increment();
  if (ok) adapter_load_seconds_.Observe(seconds);
}
void ServerMetrics::AdapterHit(const char* tier) { adapter_hits_.Add({{"tier", tier}}).Increment(); }
void ServerMetrics::AdapterMiss(const char* tier) {
  adapter_misses_.Add({{"tier", tier}}).Increment();
}
void ServerMetrics::AdapterEviction(const char* tier) {
  adapter_evictions_.Add({{"tier", tier}}).Increment();
}
void ServerMetrics::SetAdapterTier(const char* tier, double bytes, int adapters) {
  adapter_bytes_.Add({{"tier", tier}}).Set(bytes);
  adapters_resident_.Add({{"tier", tier}}).Set(adapters);
}

}  // namespace eora::server
