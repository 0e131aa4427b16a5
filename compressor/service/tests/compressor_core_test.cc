// CompressorCore in-process on stories260K (no sockets): content-addressed
// uploads, validation codes (with nothing stored on error), a real job with a
// publisher that fails (warning, job still succeeds), cancel at a layer
// boundary, and startup recovery of a job left running.
#include "compressor/service/compressor_core.h"

#include <filesystem>

#include "compressor/service/sqlite_job_store.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace eora::compress::service {
namespace {

namespace fs = std::filesystem;

class CoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = eora::testing::MakeTempDir("eora-core");
    text_ = eora::testing::ReadFileOrDie(
        eora::testing::SourcePath("tests/data/tinystories/valid-100k.txt"));
  }
  void TearDown() override {
    core_.reset();
    store_.reset();
    fs::remove_all(dir_);
  }
  void StartCore(int delay_ms = 0, uint64_t max_upload = 1 << 20, int max_queue = 4) {
    auto s = SqliteJobStore::Open(dir_ + "/jobs.db");
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
    CoreOptions o;
    o.adapter_store = dir_ + "/store";
    o.data_dir = dir_ + "/data";
    o.models = {{"stories", eora::testing::Stories260kPath()}};
    o.max_upload_bytes = max_upload;
    o.max_queue = max_queue;
    o.publish_to = {"127.0.0.1:1"};
    o.layer_delay_ms = delay_ms;
    core_ = std::make_unique<CompressorCore>(
        o, store_.get(),
        [this](const std::string& target, const std::string& id) {
          published_.push_back(target + "/" + id);
          return absl::UnavailableError("connection refused");
        },
        nullptr);
    ASSERT_TRUE(core_->Start().ok());
  }
  JobSpec Spec(const std::string& calib, const std::string& target) {
    JobSpec s;
    s.base_model = "stories";
    s.compress_method = "rtn";
    s.bits = 3;
    s.max_rank = 4;
    s.calibration_set_ids = {calib};
    s.seq_len = 128;
    s.num_seqs = 8;
    s.heldout_seqs = 4;
    s.target_adapter_id = target;
    s.publish = true;
    return s;
  }
  JobRecord WaitDone(const std::string& id) {
    uint64_t seen = 0;
    for (int i = 0; i < 600; ++i) {
      auto r = core_->WaitForJob(id, &seen, absl::Milliseconds(200));
      EXPECT_TRUE(r.ok()) << r.status();
      if (!r.ok() || IsTerminal(r->state)) return r.ok() ? *r : JobRecord{};
    }
    ADD_FAILURE() << id << " did not finish";
    return {};
  }
  size_t Files(const std::string& d) {
    size_t n = 0;
    std::error_code ec;
    for (fs::directory_iterator it(d, ec), end; !ec && it != end; it.increment(ec)) ++n;
    return n;
  }

  std::string dir_, text_;
  std::unique_ptr<SqliteJobStore> store_;
  std::unique_ptr<CompressorCore> core_;
  std::vector<std::string> published_;
};

TEST_F(CoreTest, UploadsAreContentAddressedAndStoredOnce) {
  StartCore(0, 64 << 10);
  const std::string part = text_.substr(0, 40000);
  auto a = core_->UploadCalibration("first", CalibrationKind::kText, part, "");
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_FALSE(a->deduplicated);
  EXPECT_EQ(a->record.id.size(), 3u + 32u);
  EXPECT_GT(a->record.token_count, 5000u);
  EXPECT_EQ(a->record.tokenizer_model, "stories");
  auto b = core_->UploadCalibration("second name", CalibrationKind::kText, part, "stories");
  ASSERT_TRUE(b.ok());
  EXPECT_TRUE(b->deduplicated);
  EXPECT_EQ(b->record.id, a->record.id);
  EXPECT_EQ(b->record.name, "first");
  EXPECT_EQ(Files(dir_ + "/data/calibration"), 1u);
  // The same bytes as token ids are another set.
  auto t = core_->UploadCalibration("ids", CalibrationKind::kTokenIds, "5 6 7\n8 9\n", "");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->record.token_count, 6u);  // 5 ids + BOS between the two documents
  EXPECT_NE(t->record.id, a->record.id);
  // Errors: nothing more is stored.
  EXPECT_EQ(core_->UploadCalibration("big", CalibrationKind::kText, std::string(70 << 10, 'a'), "")
                .status()
                .code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(core_->UploadCalibration("", CalibrationKind::kText, "x", "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      core_->UploadCalibration("bad", CalibrationKind::kTokenIds, "5 99999\n", "").status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(core_->UploadCalibration("m", CalibrationKind::kText, "x", "nope").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(core_->ListCalibrationSets()->size(), 2u);
  EXPECT_EQ(Files(dir_ + "/data/calibration"), 2u);
  // Delete frees the file.
  EXPECT_EQ(*core_->DeleteCalibrationSet(t->record.id), t->record.bytes);
  EXPECT_EQ(Files(dir_ + "/data/calibration"), 1u);
}

TEST_F(CoreTest, InvalidJobsGetTheirCodeAndStoreNothing) {
  StartCore();
  auto up = core_->UploadCalibration("ts", CalibrationKind::kText, text_.substr(0, 30000), "");
  ASSERT_TRUE(up.ok());
  const std::string cs = up->record.id;
  auto code = [&](JobSpec s) { return core_->CreateJob(std::move(s)).status().code(); };
  using C = absl::StatusCode;
  JobSpec s = Spec(cs, "a");
  s.base_model = "unknown";
  EXPECT_EQ(code(s), C::kNotFound);
  s = Spec(cs, "a");
  s.max_rank = 0;
  EXPECT_EQ(code(s), C::kInvalidArgument);
  s.max_rank = 100000;
  EXPECT_EQ(code(s), C::kInvalidArgument);
  s = Spec(cs, "a");
  s.adapter_bits = 5;
  EXPECT_EQ(code(s), C::kInvalidArgument);
  s = Spec(cs, "a");
  s.bits = 7;
  EXPECT_EQ(code(s), C::kInvalidArgument);
  s = Spec(cs, "a");
  s.compress_method = "zip";
  EXPECT_EQ(code(s), C::kInvalidArgument);
  s = Spec(cs, "a");
  s.compensation_method = "magic";
  EXPECT_EQ(code(s), C::kInvalidArgument);
  s = Spec(cs, "../escape");
  EXPECT_EQ(code(s), C::kInvalidArgument);
  s = Spec("cs-none", "a");
  EXPECT_EQ(code(s), C::kNotFound);
  s = Spec(cs, "a");
  s.num_seqs = 500;  // 30 kB of text is about 60 sequences of 128
  auto st = core_->CreateJob(s).status();
  EXPECT_EQ(st.code(), C::kFailedPrecondition) << st;
  EXPECT_NE(st.message().find("calibration_set_ids"), std::string::npos);
  s = Spec(cs, "a");
  s.seq_len = 100000;
  EXPECT_EQ(code(s), C::kInvalidArgument);
  s = Spec(cs, "a");
  s.compress_method = "";
  s.compressed_base_path = dir_ + "/not-a-model";
  EXPECT_EQ(code(s), C::kNotFound);
  EXPECT_TRUE(core_->ListJobs({}, 0)->empty());
  EXPECT_EQ(core_->CancelJob("job-42").status().code(), C::kNotFound);
}

TEST_F(CoreTest, AJobRunsToAnAdapterAndAFailedPublishIsAWarning) {
  StartCore();
  auto up = core_->UploadCalibration("ts", CalibrationKind::kText, text_.substr(0, 30000), "");
  ASSERT_TRUE(up.ok());
  auto job = core_->CreateJob(Spec(up->record.id, "rtn3-eora"));
  ASSERT_TRUE(job.ok()) << job.status();
  // The set is in use while the job is active.
  const JobRecord done = WaitDone(job->id);
  ASSERT_EQ(done.state, JobState::kSucceeded) << done.error;
  EXPECT_EQ(done.progress.stage, "done");
  EXPECT_TRUE(fs::exists(dir_ + "/store/rtn3-eora/adapter_config.json"));
  EXPECT_EQ(done.adapter_path, dir_ + "/store/rtn3-eora");
  ASSERT_EQ(done.profile.size(), 3u);  // ranks 1, 2, 4
  EXPECT_EQ(done.profile.back().rank, 4);
  EXPECT_LT(done.profile.back().nll, done.heldout_nll_compressed);
  EXPECT_EQ(published_, std::vector<std::string>{"127.0.0.1:1/rtn3-eora"});
  ASSERT_EQ(done.warnings.size(), 1u);
  EXPECT_NE(done.warnings[0].find("UNAVAILABLE"), std::string::npos);
  EXPECT_TRUE(done.published_to.empty());
  EXPECT_TRUE(fs::exists(done.compressed_base_path + "/eora_model.json"));
  // Same target again without replace: ALREADY_EXISTS; with replace it runs and
  // reuses the compressed base.
  JobSpec again = Spec(up->record.id, "rtn3-eora");
  EXPECT_EQ(core_->CreateJob(again).status().code(), absl::StatusCode::kAlreadyExists);
  again.replace = true;
  auto j2 = core_->CreateJob(again);
  ASSERT_TRUE(j2.ok()) << j2.status();
  const JobRecord d2 = WaitDone(j2->id);
  EXPECT_EQ(d2.state, JobState::kSucceeded) << d2.error;
  EXPECT_EQ(d2.compressed_base_path, done.compressed_base_path);
}

TEST_F(CoreTest, CancelStopsARunningJobAtALayerBoundaryAndAQueuedOneAtOnce) {
  StartCore(/*delay_ms=*/300);
  auto up = core_->UploadCalibration("ts", CalibrationKind::kText, text_.substr(0, 30000), "");
  ASSERT_TRUE(up.ok());
  auto j1 = core_->CreateJob(Spec(up->record.id, "slow"));
  auto j2 = core_->CreateJob(Spec(up->record.id, "queued"));
  ASSERT_TRUE(j1.ok() && j2.ok());
  // The set is used by active jobs.
  EXPECT_EQ(core_->DeleteCalibrationSet(up->record.id).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // Wait for job-1 to finish its first layer.
  uint64_t seen = 0;
  for (int i = 0; i < 200; ++i) {
    auto r = core_->WaitForJob(j1->id, &seen, absl::Milliseconds(100));
    if (r->progress.layer >= 1) break;
  }
  auto c2 = core_->CancelJob(j2->id);
  ASSERT_TRUE(c2.ok());
  EXPECT_EQ(c2->state, JobState::kCancelled);
  ASSERT_TRUE(core_->CancelJob(j1->id).ok());
  const JobRecord d1 = WaitDone(j1->id);
  EXPECT_EQ(d1.state, JobState::kCancelled);
  EXPECT_NE(d1.error.find("cancelled"), std::string::npos) << d1.error;
  EXPECT_LT(d1.progress.layer, d1.progress.num_layers);
  EXPECT_FALSE(fs::exists(dir_ + "/store/slow"));
  EXPECT_EQ(core_->CancelJob(j1->id).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(core_->DeleteCalibrationSet(up->record.id).ok());
}

TEST_F(CoreTest, DrainFailsTheRunningJobAndTheNextStartRunsTheQueuedOne) {
  StartCore(/*delay_ms=*/300);
  auto up = core_->UploadCalibration("ts", CalibrationKind::kText, text_.substr(0, 30000), "");
  ASSERT_TRUE(up.ok());
  auto j1 = core_->CreateJob(Spec(up->record.id, "first"));
  auto j2 = core_->CreateJob(Spec(up->record.id, "second"));
  ASSERT_TRUE(j1.ok() && j2.ok());
  uint64_t seen = 0;
  for (int i = 0; i < 200; ++i)
    if (core_->WaitForJob(j1->id, &seen, absl::Milliseconds(100))->progress.layer >= 1) break;
  core_->Drain(absl::ZeroDuration());  // SIGTERM with no grace
  EXPECT_EQ(core_->CreateJob(Spec(up->record.id, "third")).status().code(),
            absl::StatusCode::kUnavailable);
  const JobRecord d1 = *core_->GetJob(j1->id);
  EXPECT_EQ(d1.state, JobState::kFailed);
  EXPECT_NE(d1.error.find("shut down"), std::string::npos) << d1.error;
  EXPECT_EQ(core_->GetJob(j2->id)->state, JobState::kQueued);
  EXPECT_FALSE(fs::exists(dir_ + "/store/first"));
  // The next process resumes the queued job.
  core_.reset();
  store_.reset();
  StartCore();
  const JobRecord d2 = WaitDone(j2->id);
  EXPECT_EQ(d2.state, JobState::kSucceeded) << d2.error;
  EXPECT_TRUE(fs::exists(dir_ + "/store/second/adapter_config.json"));
  EXPECT_EQ(core_->GetJob(j1->id)->state, JobState::kFailed);
}

TEST_F(CoreTest, StartupFailsAJobLeftRunningAndRemovesItsPartialAdapter) {
  {
    auto s = SqliteJobStore::Open(dir_ + "/jobs.db");
    ASSERT_TRUE(s.ok());
    CalibrationSetRecord r;
    r.id = "cs-x";
    r.file = "cs-x.txt";
    ASSERT_TRUE((*s)->PutCalibrationSet(r).ok());
    JobSpec spec = Spec("cs-x", "half");
    auto j = (*s)->CreateJob(spec, 1);
    j->state = JobState::kRunning;
    j->progress = {"fitting", 3, 5, 2, 1};
    ASSERT_TRUE((*s)->UpdateJob(*j).ok());
  }
  fs::create_directories(dir_ + "/store/.half.tmp.12345.0");
  fs::create_directories(dir_ + "/store/other");
  StartCore();
  auto j = core_->GetJob("job-1");
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(j->state, JobState::kFailed);
  EXPECT_NE(j->error.find("interrupted"), std::string::npos) << j->error;
  EXPECT_FALSE(fs::exists(dir_ + "/store/.half.tmp.12345.0"));
  EXPECT_FALSE(fs::exists(dir_ + "/store/half"));
  EXPECT_TRUE(fs::exists(dir_ + "/store/other"));  // not ours to touch
}

}  // namespace
}  // namespace eora::compress::service
