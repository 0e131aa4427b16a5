#include "compressor/service/metrics.h"

namespace eora::compress::service {
namespace {

// Seconds: a small model's job takes seconds, a 70B one hours.
const prometheus::Histogram::BucketBoundaries kDurationBuckets = {
    1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400};

}  // namespace

CompressorMetrics::CompressorMetrics(std::shared_ptr<prometheus::Registry> registry)
    : registry_(std::move(registry)),
      rpc_(prometheus::BuildCounter()
               .Name("eora_compressor_grpc_requests_total")
               .Help("Finished gRPC requests by method and status code.")
               .Register(*registry_)),
      jobs_(prometheus::BuildGauge()
                .Name("eora_compressor_jobs")
                .Help("Jobs in the job store by state.")
                .Register(*registry_)),
      queue_(prometheus::BuildGauge()
                 .Name("eora_compressor_queue_length")
                 .Help("Jobs waiting for a worker.")
                 .Register(*registry_)
                 .Add({})),
      duration_(
          prometheus::BuildHistogram()
              .Name("eora_compressor_job_duration_seconds")
              .Help("Wall time of jobs from start to end (any result), by compensation method.")
              .Register(*registry_)),
      finished_(prometheus::BuildCounter()
                    .Name("eora_compressor_jobs_finished_total")
                    .Help("Jobs that ran and ended, by compensation method and final state.")
                    .Register(*registry_)),
      uploads_(prometheus::BuildCounter()
                   .Name("eora_compressor_calibration_uploads_total")
                   .Help("Calibration set uploads, by result (stored, deduplicated).")
                   .Register(*registry_)),
      upload_bytes_(prometheus::BuildCounter()
                        .Name("eora_compressor_calibration_upload_bytes_total")
                        .Help("Bytes received in calibration uploads.")
                        .Register(*registry_)
                        .Add({})),
      stored_(prometheus::BuildGauge()
                  .Name("eora_compressor_stored_bytes")
                  .Help("Bytes stored, by kind (calibration, compressed_base, adapter).")
                  .Register(*registry_)) {
  for (JobState s : kAllJobStates) jobs_.Add({{"state", JobStateName(s)}}).Set(0);
  for (const char* k : {"calibration", "compressed_base", "adapter"})
    stored_.Add({{"kind", k}}).Set(0);
}

void CompressorMetrics::RecordRpc(const std::string& method, const std::string& code) {
  rpc_.Add({{"method", method}, {"code", code}}).Increment();
}

void CompressorMetrics::SetJobsByState(const std::map<JobState, int64_t>& counts) {
  for (const auto& [state, n] : counts)
    jobs_.Add({{"state", JobStateName(state)}}).Set(static_cast<double>(n));
}

void CompressorMetrics::SetQueueLength(int n) { queue_.Set(n); }

void CompressorMetrics::RecordJobFinished(const std::string& method, JobState state,
                                          double seconds) {
  duration_.Add({{"method", method}}, kDurationBuckets).Observe(seconds);
  finished_.Add({{"method", method}, {"state", JobStateName(state)}}).Increment();
}

void CompressorMetrics::RecordUpload(bool deduplicated, uint64_t bytes) {
  uploads_.Add({{"result", deduplicated ? "deduplicated" : "stored"}}).Increment();
  upload_bytes_.Increment(static_cast<double>(bytes));
}

void CompressorMetrics::SetStoredBytes(const std::string& kind, double bytes) {
  stored_.Add({{"kind", kind}}).Set(bytes);
}

}  // namespace eora::compress::service
