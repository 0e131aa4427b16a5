// The durable state of eora-compressor: calibration set records and jobs, behind
// the JobStore interface (SQLite is the embedded implementation,
// sqlite_job_store.h; a networked database can implement the same interface).
// Calibration set contents are files (calibration_files.h); the store keeps
// their records.
//
// Plain values here: no protobuf, no gRPC.
//
// Threading contract: JobStore implementations are thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/adapter_io.h"

namespace eora::compress::service {

// Lifecycle of a job: kQueued -> kRunning -> one of the three ends. A queued job
// may also be cancelled directly; a restart fails kRunning jobs (see
// FailInterruptedJobs) and resumes kQueued ones.
enum class JobState {
  kQueued = 1,     // stored and waiting for a worker
  kRunning = 2,    // a worker runs its stages; progress is persisted per layer
  kSucceeded = 3,  // the adapter is in the store (publishing warnings aside)
  kFailed = 4,     // error says why (including "interrupted: ..." after a crash)
  kCancelled = 5,  // by CancelJob, before it started or at a layer boundary
};
inline constexpr JobState kAllJobStates[] = {JobState::kQueued, JobState::kRunning,
                                             JobState::kSucceeded, JobState::kFailed,
                                             JobState::kCancelled};
// "queued", "running", "succeeded", "failed", "cancelled".
const char* JobStateName(JobState s);
bool ParseJobState(const std::string& name, JobState* out);
inline bool IsTerminal(JobState s) { return s != JobState::kQueued && s != JobState::kRunning; }

enum class CalibrationKind { kText = 1, kTokenIds = 2 };

struct CalibrationSetRecord {
  std::string id;  // "cs-" + 32 hex digits of SHA-256(kind, content)
  std::string name;
  CalibrationKind kind = CalibrationKind::kText;
  std::string content_hash;  // "sha256:<hex>" of the stored bytes
  uint64_t bytes = 0;
  uint64_t token_count = 0;
  std::string tokenizer_model;  // the --models id that counted the tokens
  std::string file;             // file name inside the calibration directory
  double created_at = 0;        // Unix seconds
};

// What a CreateAdapterJob request asks for (validated by the core).
struct JobSpec {
  std::string base_model;  // --models id
  // Either compress with (compress_method, bits, group_size) or use an existing
  // compressed base directory (compressed_base_path).
  std::string compress_method;
  int bits = 0;
  int group_size = 0;
  std::string compressed_base_path;
  std::string compensation_method = "eora";
  int max_rank = 0;
  int adapter_bits = 16;
  std::vector<std::string> calibration_set_ids;
  int seq_len = 256;
  int num_seqs = 128;
  int heldout_seqs = 16;
  std::string target_adapter_id;
  bool publish = false;
  bool replace = false;
};

struct JobProgress {
  std::string stage = "queued";
  int layer = 0;
  int num_layers = 0;
  double elapsed_s = 0;
  double eta_s = 0;
};

struct JobRecord {
  std::string id;  // "job-<n>"
  JobState state = JobState::kQueued;
  JobSpec spec;
  JobProgress progress;
  std::string error;
  std::vector<std::string> warnings;
  double created_at = 0, started_at = 0, finished_at = 0;
  // Results (SUCCEEDED).
  std::string adapter_path;
  std::string compressed_base_path;  // the base the adapter compensates
  std::vector<RankQuality> profile;
  double heldout_nll_compressed = 0;
  double heldout_nll_fp = 0;
  std::vector<std::string> published_to;
  std::string calibration_hash;
};

class JobStore {
 public:
  virtual ~JobStore() = default;

  // Schema version of the open store.
  virtual int schema_version() const = 0;

  // ---- Calibration sets ----
  // Inserts `r` unless a record with its id exists. Returns true if inserted.
  virtual absl::StatusOr<bool> PutCalibrationSet(const CalibrationSetRecord& r) = 0;
  virtual absl::StatusOr<CalibrationSetRecord> GetCalibrationSet(const std::string& id) = 0;
  virtual absl::StatusOr<std::vector<CalibrationSetRecord>> ListCalibrationSets() = 0;
  // Removes the record; FAILED_PRECONDITION (naming the jobs) while a queued or
  // running job uses it, NOT_FOUND if absent. Returns the removed record.
  virtual absl::StatusOr<CalibrationSetRecord> DeleteCalibrationSet(const std::string& id) = 0;
  // Queued or running jobs that use the set.
  virtual absl::StatusOr<int> ActiveJobsUsing(const std::string& calibration_set_id) = 0;

  // ---- Jobs ----
  // Inserts a QUEUED job in one transaction that checks that every calibration
  // set exists (NOT_FOUND) and that no queued or running job targets the same
  // adapter id (ALREADY_EXISTS). Returns the stored record (with its id).
  virtual absl::StatusOr<JobRecord> CreateJob(const JobSpec& spec, double now) = 0;
  virtual absl::StatusOr<JobRecord> GetJob(const std::string& id) = 0;
  // Newest first; `states` empty = all; limit 0 = all.
  virtual absl::StatusOr<std::vector<JobRecord>> ListJobs(const std::vector<JobState>& states,
                                                          int limit) = 0;
  // Writes everything of `job` but its id, spec and created_at.
  virtual absl::Status UpdateJob(const JobRecord& job) = 0;
  virtual absl::StatusOr<std::map<JobState, int64_t>> CountJobsByState() = 0;
  // Startup recovery: every RUNNING job (its process died) becomes FAILED with
  // `reason`, in one transaction. Returns the jobs it failed.
  virtual absl::StatusOr<std::vector<JobRecord>> FailInterruptedJobs(const std::string& reason,
                                                                     double now) = 0;
};

// "job-<n>" <-> n; false if `id` is not of that form.
std::string JobIdFromNumber(int64_t n);
bool JobNumberFromId(const std::string& id, int64_t* n);

}  // namespace eora::compress::service
