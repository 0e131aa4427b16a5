// The SQLite job store: schema version and migration, calibration set records
// (dedupe by id, delete refused while used), job rules, restart recovery.
#include <sqlite3.h>

#include <filesystem>

#include "compressor/service/sqlite_job_store.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace eora::compress::service {
namespace {

class JobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = eora::testing::MakeTempDir("eora-jobstore");
    path_ = dir_ + "/jobs.db";
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::unique_ptr<SqliteJobStore> Open() {
    auto s = SqliteJobStore::Open(path_);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }
  static int64_t UserVersion(const std::string& path) {
    sqlite3* db = nullptr;
    sqlite3_open(path.c_str(), &db);
    sqlite3_stmt* st = nullptr;
    sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, nullptr);
    sqlite3_step(st);
    const int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
  }
  static CalibrationSetRecord Calib(const std::string& id) {
    CalibrationSetRecord r;
    r.id = id;
    r.name = "name-" + id;
    r.kind = CalibrationKind::kText;
    r.content_hash = "sha256:abc";
    r.bytes = 100;
    r.token_count = 40;
    r.tokenizer_model = "stories";
    r.file = id + ".txt";
    r.created_at = 1000;
    return r;
  }
  static JobSpec Spec(const std::string& target, std::vector<std::string> calib = {"cs-a"}) {
    JobSpec s;
    s.base_model = "stories";
    s.compress_method = "gptq";
    s.bits = 3;
    s.max_rank = 8;
    s.calibration_set_ids = std::move(calib);
    s.seq_len = 128;
    s.num_seqs = 16;
    s.heldout_seqs = 4;
    s.target_adapter_id = target;
    s.publish = true;
    return s;
  }
  std::string dir_, path_;
};

TEST_F(JobStoreTest, FreshDatabaseGetsTheSchemaVersionAndReopensIdempotently) {
  {
    auto store = Open();
    ASSERT_TRUE(store);
    EXPECT_EQ(store->schema_version(), SqliteJobStore::kSchemaVersion);
    ASSERT_TRUE(store->PutCalibrationSet(Calib("cs-a")).ok());
  }
  EXPECT_EQ(UserVersion(path_), SqliteJobStore::kSchemaVersion);
  auto again = Open();
  ASSERT_TRUE(again);
  EXPECT_EQ(again->ListCalibrationSets()->size(), 1u);  // nothing re-created or lost
}

TEST_F(JobStoreTest, ANewerSchemaIsRefusedAndLeftUntouched) {
  { ASSERT_TRUE(Open()); }
  sqlite3* db = nullptr;
  sqlite3_open(path_.c_str(), &db);
  sqlite3_exec(db, "PRAGMA user_version = 99", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  auto s = SqliteJobStore::Open(path_);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.status().message().find("schema version 99"), std::string::npos) << s.status();
  EXPECT_EQ(UserVersion(path_), 99);
}

TEST_F(JobStoreTest, SameCalibrationIdIsStoredOnce) {
  auto store = Open();
  EXPECT_TRUE(*store->PutCalibrationSet(Calib("cs-a")));
  CalibrationSetRecord other = Calib("cs-a");
  other.name = "another name";
  EXPECT_FALSE(*store->PutCalibrationSet(other));  // not inserted, first record kept
  EXPECT_EQ(store->GetCalibrationSet("cs-a")->name, "name-cs-a");
  EXPECT_TRUE(*store->PutCalibrationSet(Calib("cs-b")));
  EXPECT_EQ(store->ListCalibrationSets()->size(), 2u);
  EXPECT_EQ(store->GetCalibrationSet("cs-zzz").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(JobStoreTest, JobsRoundTripAndTheirRulesHold) {
  auto store = Open();
  ASSERT_TRUE(store->PutCalibrationSet(Calib("cs-a")).ok());
  // Unknown calibration set: NOT_FOUND, nothing stored.
  EXPECT_EQ(store->CreateJob(Spec("x", {"cs-missing"}), 1).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(store->ListJobs({}, 0)->empty());
  auto j1 = store->CreateJob(Spec("adapter-1"), 10);
  ASSERT_TRUE(j1.ok()) << j1.status();
  EXPECT_EQ(j1->id, "job-1");
  EXPECT_EQ(j1->state, JobState::kQueued);
  EXPECT_EQ(j1->spec.target_adapter_id, "adapter-1");
  EXPECT_EQ(j1->spec.bits, 3);
  EXPECT_EQ(j1->spec.calibration_set_ids, std::vector<std::string>{"cs-a"});
  EXPECT_TRUE(j1->spec.publish);
  // A second active job for the same adapter id is refused.
  EXPECT_EQ(store->CreateJob(Spec("adapter-1"), 11).status().code(),
            absl::StatusCode::kAlreadyExists);
  // The set cannot be deleted while job-1 is queued.
  auto del = store->DeleteCalibrationSet("cs-a");
  EXPECT_EQ(del.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(del.status().message().find("job-1"), std::string::npos);
  EXPECT_EQ(*store->ActiveJobsUsing("cs-a"), 1);
  // Finish it with results; they round-trip.
  JobRecord r = *j1;
  r.state = JobState::kSucceeded;
  r.progress = {"done", 5, 5, 12.5, 0};
  r.profile = {{1, 2.0, 7.389}, {8, 1.5, 4.48}};
  r.warnings = {"publish to x failed"};
  r.published_to = {"127.0.0.1:1"};
  r.adapter_path = "/store/adapter-1";
  r.heldout_nll_compressed = 1.7;
  r.finished_at = 20;
  ASSERT_TRUE(store->UpdateJob(r).ok());
  auto back = store->GetJob("job-1");
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->state, JobState::kSucceeded);
  ASSERT_EQ(back->profile.size(), 2u);
  EXPECT_EQ(back->profile[1].rank, 8);
  EXPECT_DOUBLE_EQ(back->profile[1].nll, 1.5);
  EXPECT_EQ(back->warnings, r.warnings);
  EXPECT_EQ(back->published_to, r.published_to);
  EXPECT_DOUBLE_EQ(back->progress.elapsed_s, 12.5);
  EXPECT_DOUBLE_EQ(back->finished_at, 20);
  // Now the same target may be used again, and the set deleted.
  ASSERT_TRUE(store->CreateJob(Spec("adapter-1"), 30).ok());
  EXPECT_EQ(store->DeleteCalibrationSet("cs-a").status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto j2 = *store->GetJob("job-2");
  j2.state = JobState::kCancelled;
  ASSERT_TRUE(store->UpdateJob(j2).ok());
  EXPECT_TRUE(store->DeleteCalibrationSet("cs-a").ok());
  EXPECT_EQ(store->DeleteCalibrationSet("cs-a").status().code(), absl::StatusCode::kNotFound);
  // Listing: newest first, by state, limited.
  auto all = store->ListJobs({}, 0);
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].id, "job-2");
  EXPECT_EQ(store->ListJobs({JobState::kSucceeded}, 0)->size(), 1u);
  EXPECT_EQ(store->ListJobs({}, 1)->size(), 1u);
  auto counts = *store->CountJobsByState();
  EXPECT_EQ(counts[JobState::kSucceeded], 1);
  EXPECT_EQ(counts[JobState::kCancelled], 1);
  EXPECT_EQ(counts[JobState::kRunning], 0);
  EXPECT_EQ(store->GetJob("job-99").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->GetJob("nonsense").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(JobStoreTest, RestartFailsRunningJobsWithAReasonAndKeepsQueuedOnes) {
  {
    auto store = Open();
    ASSERT_TRUE(store->PutCalibrationSet(Calib("cs-a")).ok());
    auto running = *store->CreateJob(Spec("a1"), 1);
    ASSERT_TRUE(store->CreateJob(Spec("a2"), 2).ok());
    running.state = JobState::kRunning;
    running.started_at = 3;
    running.progress = {"fitting", 2, 5, 1.5, 2.0};
    ASSERT_TRUE(store->UpdateJob(running).ok());
  }  // the process "dies": the store is closed with job-1 running
  auto store = Open();
  auto failed = store->FailInterruptedJobs("interrupted: test restart", 50);
  ASSERT_TRUE(failed.ok()) << failed.status();
  ASSERT_EQ(failed->size(), 1u);
  EXPECT_EQ((*failed)[0].id, "job-1");
  auto j1 = *store->GetJob("job-1");
  EXPECT_EQ(j1.state, JobState::kFailed);
  EXPECT_NE(j1.error.find("interrupted: test restart"), std::string::npos);
  EXPECT_NE(j1.error.find("fitting, layer 2 of 5"), std::string::npos) << j1.error;
  EXPECT_DOUBLE_EQ(j1.finished_at, 50);
  EXPECT_EQ(store->GetJob("job-2")->state, JobState::kQueued);
  EXPECT_TRUE(store->FailInterruptedJobs("again", 60)->empty());  // idempotent
  // Ids keep increasing after a restart.
  EXPECT_EQ(store->CreateJob(Spec("a3"), 70)->id, "job-3");
}

}  // namespace
}  // namespace eora::compress::service
