// Prometheus metrics of the serving daemon, built once on an injected registry.
//
// Names follow vLLM's (vllm:foo -> eora_foo; promtool's linter rejects ':' in
// exposed metric names, so the prefix is "eora_"). Every label has a bounded set
// of values (method, gRPC code, finish reason, tier, result), except
// eora_lora_requests_info, which like vLLM's vllm:lora_requests_info keeps one
// series whose labels list the adapter ids running and waiting (the previous
// series is removed on each update).
//
// Threading contract: all methods are thread-safe (prometheus-cpp metrics are).
#pragma once

#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace eora::server {

class ServerMetrics {
 public:
  explicit ServerMetrics(std::shared_ptr<prometheus::Registry> registry);

  // Prometheus text exposition format of everything in the registry.
  std::string Serialize() const;
  prometheus::Registry& registry() { return *registry_; }

  // One finished RPC: method ("Generate", ...) and gRPC code name ("OK", ...).
  void RecordRpc(const std::string& method, const std::string& code);
  // A request that ran (or was cancelled) in the engine. Negative times: unknown.
  void RecordFinished(const std::string& finish_reason, int prompt_tokens, int generated_tokens,
                      double queue_s, double ttft_s, double tpot_s, double e2e_s);
  void RecordRejected(const std::string& reason);  // admission refusals
  void SetSchedulerState(int running, int waiting, double kv_cache_usage);
  void SetLoraInfo(const std::set<std::string>& running, const std::set<std::string>& waiting,
                   int max_lora);
  void RecordStep(int tokens, double seconds);

  // Adapter registry.
  void AdapterLoad(bool ok, double seconds);
  void AdapterHit(const char* tier);
  void AdapterMiss(const char* tier);
  void AdapterEviction(const char* tier);
  void SetAdapterTier(const char* tier, double bytes, int adapters);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& rpc_;
  prometheus::Family<prometheus::Counter>& success_;
  prometheus::Family<prometheus::Counter>& rejected_;
  prometheus::Counter& prompt_tokens_;
  prometheus::Counter& generation_tokens_;
  prometheus::Histogram& ttft_;
  prometheus::Histogram& tpot_;
  prometheus::Histogram& e2e_;
  prometheus::Histogram& queue_;
  prometheus::Histogram& step_tokens_;
  prometheus::Histogram& step_seconds_;
  prometheus::Gauge& running_;
  prometheus::Gauge& waiting_;
  prometheus::Gauge& kv_usage_;
  prometheus::Family<prometheus::Gauge>& lora_info_;
  prometheus::Family<prometheus::Counter>& adapter_loads_;
  prometheus::Histogram& adapter_load_seconds_;
  prometheus::Family<prometheus::Counter>& adapter_hits_;
  prometheus::Family<prometheus::Counter>& adapter_misses_;
  prometheus::Family<prometheus::Counter>& adapter_evictions_;
  prometheus::Family<prometheus::Gauge>& adapter_bytes_;
  prometheus::Family<prometheus::Gauge>& adapters_resident_;

  std::mutex lora_mu_;
  prometheus::Gauge* lora_series_ = nullptr;  // guarded by lora_mu_
  std::string lora_key_;                      // guarded by lora_mu_
};

}  // namespace eora::server
