// The domain side of eora-compressor (no sockets, no protobuf): calibration set
// uploads, job validation, the bounded job queue and worker pool, job execution
// on the compressor pipelines, cancellation, progress for watchers, startup
// recovery and drain.
//
// Data layout:
//   <adapter_store>/<adapter id>/      adapters (PEFT dirs), written atomically
//                                      (temporary sibling, fsync, rename)
//   <data_dir>/calibration/<id>.txt    calibration set contents, content-addressed
//   <data_dir>/calibration/<id>.tokens (written to a temporary file, fsynced, renamed)
//   <data_dir>/compressed/<name>/      compressed bases made by jobs (reused by
//                                      later jobs with the same model, spec and
//                                      calibration)
// One eora-compressor process owns a data directory and its database.
//
// Job lifecycle: CreateJob validates everything it can (nothing is stored when
// it fails), stores the job QUEUED and queues it; a worker marks it RUNNING and
// runs the stages loading -> calibrating -> [compressing] -> fitting ->
// profiling -> writing -> publishing, persisting the progress after every layer;
// it ends SUCCEEDED, FAILED (with the error) or CANCELLED. On startup, jobs found
// RUNNING (their process died) are failed with a reason and their temporary
// adapter directories removed; QUEUED jobs are resumed.
//
// Threading contract: all public methods are thread-safe.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "compressor/calibration.h"
#include "compressor/service/job_store.h"
#include "compressor/service/metrics.h"
#include "engine/model_weights.h"

namespace eora::compress::service {

struct CoreOptions {
  std::string adapter_store;  // the servers' --adapter-store
  std::string data_dir;       // calibration/ and compressed/
  // Model id -> path (.gguf or Hugging Face directory); the first is the
  // default tokenizer of uploads.
  std::vector<std::pair<std::string, std::string>> models;
  int workers = 1;          // jobs running at once
  int max_queue = 16;       // queued jobs before RESOURCE_EXHAUSTED
  int threads_per_job = 1;  // engine/compressor threads of one job
  uint64_t max_upload_bytes = 256ull << 20;
  std::vector<std::string> publish_to;          // HOST:PORT of eora-servers
  int layer_delay_ms = 0;                       // testing: sleep after every layer
  std::function<void(const std::string&)> log;  // may be empty
};

// Tells one server to load an adapter from the store (AdapterService.LoadAdapter).
using PublishFn =
    std::function<absl::Status(const std::string& target, const std::string& adapter_id)>;

struct UploadResult {
  CalibrationSetRecord record;
  bool deduplicated = false;
  int active_jobs = 0;
};

class CompressorCore {
 public:
  // `store`, `metrics` not owned (metrics may be null).
  CompressorCore(CoreOptions options, JobStore* store, PublishFn publish,
                 CompressorMetrics* metrics);
  ~CompressorCore();  // drains with no grace if Drain was not called

  // Creates the data directories, recovers interrupted jobs, starts the workers.
  absl::Status Start();
  // Stops accepting jobs (UNAVAILABLE), lets running jobs finish within `grace`,
  // then stops them at the next layer boundary (they end FAILED with a reason);
  // queued jobs stay queued for the next start. Joins the workers.
  void Drain(absl::Duration grace);
  bool draining() const { return draining_.load(); }

  uint64_t max_upload_bytes() const { return options_.max_upload_bytes; }
  absl::StatusOr<UploadResult> UploadCalibration(const std::string& name, CalibrationKind kind,
                                                 const std::string& content,
                                                 const std::string& tokenizer_model);
  // Each set with the number of queued or running jobs that use it.
  absl::StatusOr<std::vector<std::pair<CalibrationSetRecord, int>>> ListCalibrationSets();
  // Returns the bytes freed.
  absl::StatusOr<uint64_t> DeleteCalibrationSet(const std::string& id);

  absl::StatusOr<JobRecord> CreateJob(JobSpec spec);
  absl::StatusOr<JobRecord> GetJob(const std::string& id);
  absl::StatusOr<std::vector<JobRecord>> ListJobs(const std::vector<JobState>& states, int limit);
  absl::StatusOr<JobRecord> CancelJob(const std::string& id);
  // Waits until something changed since *seen (a change counter; start with 0)
  // or `timeout` passed, then returns the job and updates *seen.
  absl::StatusOr<JobRecord> WaitForJob(const std::string& id, uint64_t* seen,
                                       absl::Duration timeout);

 private:
  struct Active {
    std::atomic<bool> cancel{false};
    std::atomic<bool> shutdown{false};
  };

  void Log(const std::string& msg) const;
  void WorkerLoop();
  void RunJob(const std::string& id, const std::shared_ptr<Active>& active);
  absl::Status Execute(JobRecord* rec, const Active& active);
  absl::Status Persist(JobRecord* rec);  // store + notify watchers
  void NotifyChange();
  void RefreshGauges();
  absl::StatusOr<std::shared_ptr<const ModelWeights>> Model(const std::string& id,
                                                            const char* field);
  // The job's calibration sequences from its sets (FAILED_PRECONDITION if too few).
  absl::StatusOr<CalibrationSet> BuildCalibration(const JobSpec& spec, const ModelWeights& model);
  std::string CalibrationDir() const;
  std::string CompressedDir() const;

  CoreOptions options_;
  JobStore* store_;
  PublishFn publish_;
  CompressorMetrics* metrics_;

  std::mutex models_mu_;
  std::map<std::string, std::shared_ptr<const ModelWeights>> loaded_;  // guarded by models_mu_

  std::mutex calib_mu_;  // serializes calibration file + record changes

  std::mutex mu_;
  std::condition_variable work_cv_;                        // queue_ / stopping_ changed
  std::condition_variable idle_cv_;                        // active_ shrank
  std::condition_variable change_cv_;                      // changes_ grew
  std::deque<std::string> queue_;                          // guarded by mu_
  std::map<std::string, std::shared_ptr<Active>> active_;  // guarded by mu_
  uint64_t changes_ = 0;                                   // guarded by mu_
  bool stopping_ = false;                                  // guarded by mu_
  std::atomic<bool> draining_{false};
  std::vector<std::thread> workers_;
  bool started_ = false;
};

// Names the service creates in the adapter store (and model ids): plain adapter
// ids (engine/adapter_io.h) that do not start with '.'. INVALID_ARGUMENT naming
// `field` otherwise.
absl::Status ValidateStoreName(const std::string& id, const char* field);

}  // namespace eora::compress::service
