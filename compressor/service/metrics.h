// Prometheus metrics of eora-compressor (prefix eora_compressor_), built once on
// an injected registry. Label values come from bounded sets: job states,
// compensation methods, gRPC method and code names, store kinds.
//
// Threading contract: thread-safe (prometheus-cpp metrics are).
#pragma once

#include <map>
#include <memory>
#include <string>

#include "compressor/service/job_store.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace eora::compress::service {

class CompressorMetrics {
 public:
  explicit CompressorMetrics(std::shared_ptr<prometheus::Registry> registry);
  const std::shared_ptr<prometheus::Registry>& registry() const { return registry_; }

  void RecordRpc(const std::string& method, const std::string& code);
  void SetJobsByState(const std::map<JobState, int64_t>& counts);
  void SetQueueLength(int n);
  // A job that left RUNNING: compensation method, final state, seconds it ran.
  void RecordJobFinished(const std::string& method, JobState state, double seconds);
  void RecordUpload(bool deduplicated, uint64_t bytes);
  // kind: "calibration", "compressed_base", "adapter".
  void SetStoredBytes(const std::string& kind, double bytes);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& rpc_;
  prometheus::Family<prometheus::Gauge>& jobs_;
  prometheus::Gauge& queue_;
  prometheus::Family<prometheus::Histogram>& duration_;
  prometheus::Family<prometheus::Counter>& finished_;
  prometheus::Family<prometheus::Counter>& uploads_;
  prometheus::Counter& upload_bytes_;
  prometheus::Family<prometheus::Gauge>& stored_;
};

}  // namespace eora::compress::service
