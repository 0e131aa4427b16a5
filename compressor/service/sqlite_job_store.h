// JobStore on SQLite (libsqlite3), the embedded default.
//
// Schema (version in PRAGMA user_version; docs/compressor-service.md):
//   calibration_sets(id PK, name, kind, content_hash, bytes, token_count,
//                    tokenizer_model, file, created_at)
//   jobs(num INTEGER PK AUTOINCREMENT, state, target_adapter_id, method, spec JSON,
//        stage, layer, num_layers, elapsed_s, eta_s, error, result JSON,
//        created_at, started_at, finished_at)
//   job_calibration_sets(job_num, position, calibration_set_id)
// Open() applies the migrations from the file's version up to kSchemaVersion,
// each in its own transaction; a file newer than this binary is refused
// (FAILED_PRECONDITION) rather than touched. WAL journal, synchronous=FULL:
// a committed change survives a crash of the process or the machine.
//
// Threading contract: thread-safe (one connection behind a mutex).
#pragma once

#include <memory>
#include <mutex>
#include <string>

#include "compressor/service/job_store.h"

struct sqlite3;

namespace eora::compress::service {

class SqliteJobStore final : public JobStore {
 public:
  static constexpr int kSchemaVersion = 1;

  // Opens (creating if needed) the database file at `path` and migrates it.
  static absl::StatusOr<std::unique_ptr<SqliteJobStore>> Open(const std::string& path);
  ~SqliteJobStore() override;

  int schema_version() const override { return kSchemaVersion; }

  absl::StatusOr<bool> PutCalibrationSet(const CalibrationSetRecord& r) override;
  absl::StatusOr<CalibrationSetRecord> GetCalibrationSet(const std::string& id) override;
  absl::StatusOr<std::vector<CalibrationSetRecord>> ListCalibrationSets() override;
  absl::StatusOr<CalibrationSetRecord> DeleteCalibrationSet(const std::string& id) override;
  absl::StatusOr<int> ActiveJobsUsing(const std::string& calibration_set_id) override;

  absl::StatusOr<JobRecord> CreateJob(const JobSpec& spec, double now) override;
  absl::StatusOr<JobRecord> GetJob(const std::string& id) override;
  absl::StatusOr<std::vector<JobRecord>> ListJobs(const std::vector<JobState>& states,
                                                  int limit) override;
  absl::Status UpdateJob(const JobRecord& job) override;
  absl::StatusOr<std::map<JobState, int64_t>> CountJobsByState() override;
  absl::StatusOr<std::vector<JobRecord>> FailInterruptedJobs(const std::string& reason,
                                                             double now) override;

 private:
  explicit SqliteJobStore(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
  absl::Status Migrate();
  absl::StatusOr<JobRecord> GetJobLocked(int64_t num);
  absl::StatusOr<int> ActiveJobsUsingLocked(const std::string& id, std::string* which);

  std::mutex mu_;
  sqlite3* db_;
  std::string path_;
};

}  // namespace eora::compress::service
