// End to end: the real eora-compressor and eora-server binaries on 127.0.0.1
// (port 0, ports read from their logs) with the bundled stories260K model, a
// 3-bit GPTQ base made by `eora compress` in the test setup, TinyStories
// calibration text, and C++ gRPC clients (plus the `eora` CLI clients).
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <mutex>
#include <regex>
#include <set>
#include <thread>

#include "engine/adapter_io.h"
#include "eora/v1/adapter.grpc.pb.h"
#include "eora/v1/compression.grpc.pb.h"
#include "eora/v1/inference.grpc.pb.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/tests/server_test_util.h"
#include "tests/daemon_process.h"
#include "tests/test_util.h"

namespace eora::compress::service {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using eora::server::testing::RunCommand;
using eora::server::testing::ServerProcess;
using eora::testing::DaemonProcess;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string TextPath() {
  return eora::testing::SourcePath("tests/data/tinystories/valid-100k.txt");
}

// A port nothing listens on (bound, then released).
int UnusedPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

std::string Bytes(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  (void)b.Dump(&slices);
  std::string out;
  for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// grpc.health.v1.Health/Check("") through the generic stub: the serialized
// response (field 1 = status; SERVING = 1).
std::string HealthCheck(const std::shared_ptr<grpc::Channel>& ch) {
  grpc::GenericStub stub(ch);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Slice empty("");
  grpc::ByteBuffer req(&empty, 1), resp;
  grpc::Status st;
  auto call = stub.PrepareUnaryCall(&ctx, "/grpc.health.v1.Health/Check", req, &cq);
  call->StartCall();
  call->Finish(&resp, &st, reinterpret_cast<void*>(1));
  void* tag;
  bool ok;
  cq.Next(&tag, &ok);
  return st.ok() ? Bytes(resp) : "error: " + st.error_message();
}

// Reflection (v1alpha) list_services: the raw response bytes, which carry the
// service names.
std::string ReflectionList(const std::shared_ptr<grpc::Channel>& ch) {
  grpc::GenericStub stub(ch);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto call =
      stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag;
  bool ok;
  auto step = [&](intptr_t t) {
    cq.Next(&tag, &ok);
    return ok && reinterpret_cast<intptr_t>(tag) == t;
  };
  call->StartCall(reinterpret_cast<void*>(1));
  if (!step(1)) return "";
  const char list_services[] = {0x3a, 0x00};  // field 7 (list_services) = ""
  grpc::Slice s(list_services, 2);
  grpc::ByteBuffer req(&s, 1), resp;
  call->Write(req, reinterpret_cast<void*>(2));
  if (!step(2)) return "";
  call->Read(&resp, reinterpret_cast<void*>(3));
  if (!step(3)) return "";
  call->WritesDone(reinterpret_cast<void*>(4));
  step(4);
  grpc::Status st;
  call->Finish(&st, reinterpret_cast<void*>(5));
  step(5);
  return Bytes(resp);
}

class CompressorE2ETest : public ::testing::Test {
 protected:
  // The 3-bit GPTQ base, made once for all tests with the CLI.
  static void SetUpTestSuite() {
    suite_dir_ = new std::string(eora::testing::MakeTempDir("eora-comp-e2e-suite"));
    gptq3_ = new std::string(*suite_dir_ + "/stories260K-gptq3");
    const auto t0 = Clock::now();
    std::string out;
    const int rc = RunCommand(
        std::string(EORA_CLI_BIN) + " compress --model " + eora::testing::Stories260kPath() +
            " --method gptq --bits 3 --calib " + TextPath() +
            " --calib-seqs 32 --seq-len 128 --threads 1 --out " + *gptq3_ + " 2>&1",
        &out);
    ASSERT_EQ(rc, 0) << out;
    std::printf("[timing] eora compress --method gptq --bits 3: %.2fs\n", Since(t0));
  }
  static void TearDownTestSuite() {
    fs::remove_all(*suite_dir_);
    delete suite_dir_;
    delete gptq3_;
  }
  void SetUp() override {
    dir_ = eora::testing::MakeTempDir("eora-comp-e2e");
    store_ = dir_ + "/store";
    fs::create_directories(store_);
    text_ = eora::testing::ReadFileOrDie(TextPath());
  }
  void TearDown() override {
    compressor_.reset();
    server_.reset();
    fs::remove_all(dir_);
  }

  void StartServer() {
    server_ = std::make_unique<ServerProcess>();
    ASSERT_TRUE(server_->Start(store_, {"--compressed", *gptq3_})) << server_->Log();
  }
  void StartCompressor(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {EORA_COMPRESSOR_BIN,
                                     "--store",
                                     store_,
                                     "--db",
                                     dir_ + "/jobs.db",
                                     "--models",
                                     "stories=" + eora::testing::Stories260kPath(),
                                     "--listen",
                                     "127.0.0.1:0",
                                     "--http-listen",
                                     "127.0.0.1:0",
                                     "--threads",
                                     "1"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    compressor_ = std::make_unique<DaemonProcess>();
    ASSERT_TRUE(compressor_->Start(argv, dir_ + "/compressor.log." + std::to_string(++starts_)))
        << compressor_->Log();
    channel_ = grpc::CreateChannel(compressor_->grpc_target(), grpc::InsecureChannelCredentials());
    stub_ = eora::v1::CompressionService::NewStub(channel_);
  }

  // Uploads `text` in chunks of `chunk` bytes.
  grpc::Status Upload(const std::string& name, const std::string& text,
                      eora::v1::CalibrationSetInfo* info, size_t chunk = 32 << 10) {
    grpc::ClientContext ctx;
    auto w = stub_->UploadCalibrationSet(&ctx, info);
    for (size_t p = 0; p < text.size(); p += chunk) {
      eora::v1::UploadCalibrationChunk c;
      if (p == 0) c.set_name(name);
      c.set_text(text.substr(p, chunk));
      if (!w->Write(c)) break;
    }
    w->WritesDone();
    return w->Finish();
  }
  eora::v1::CreateAdapterJobRequest JobReq(const std::string& calib, const std::string& target,
                                           int rank, int seqs = 32, int heldout = 8) {
    eora::v1::CreateAdapterJobRequest r;
    r.set_base_model("stories");
    r.set_compressed_base_path(*gptq3_);
    r.set_compensation_method("eora");
    r.set_max_rank(rank);
    r.set_adapter_bits(16);
    r.add_calibration_set_ids(calib);
    r.set_seq_len(128);
    r.set_num_seqs(seqs);
    r.set_heldout_seqs(heldout);
    r.set_target_adapter_id(target);
    return r;
  }
  grpc::Status Create(const eora::v1::CreateAdapterJobRequest& r, eora::v1::Job* job) {
    grpc::ClientContext ctx;
    return stub_->CreateAdapterJob(&ctx, r, job);
  }
  eora::v1::Job Get(const std::string& id) {
    grpc::ClientContext ctx;
    eora::v1::GetJobRequest r;
    r.set_id(id);
    eora::v1::Job j;
    EXPECT_TRUE(stub_->GetJob(&ctx, r, &j).ok());
    return j;
  }
  // All WatchJob messages until the stream ends (or `stop` returns true).
  std::vector<eora::v1::Job> Watch(
      const std::string& id, const std::function<bool(const eora::v1::Job&)>& stop = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(240));
    eora::v1::WatchJobRequest r;
    r.set_id(id);
    auto reader = stub_->WatchJob(&ctx, r);
    std::vector<eora::v1::Job> out;
    eora::v1::Job j;
    while (reader->Read(&j)) {
      out.push_back(j);
      if (stop && stop(j)) {
        ctx.TryCancel();
        break;
      }
    }
    grpc::Status s = reader->Finish();
    if (!stop) {
      EXPECT_TRUE(s.ok()) << s.error_message();
    }
    return out;
  }
  std::string Metrics(int port) {
    std::string m;
    RunCommand("curl -sf http://127.0.0.1:" + std::to_string(port) + "/metrics", &m);
    return m;
  }
  std::vector<std::string> StoreEntries() {
    std::vector<std::string> v;
    for (const auto& e : fs::directory_iterator(store_)) v.push_back(e.path().filename().string());
    std::sort(v.begin(), v.end());
    return v;
  }

  static std::string* suite_dir_;
  static std::string* gptq3_;
  std::string dir_, store_, text_;
  int starts_ = 0;
  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<DaemonProcess> compressor_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<eora::v1::CompressionService::Stub> stub_;
};
std::string* CompressorE2ETest::suite_dir_ = nullptr;
std::string* CompressorE2ETest::gptq3_ = nullptr;

double PerplexityOf(const std::string& extra) {
  std::string out;
  const int rc =
      RunCommand(std::string(EORA_CLI_BIN) + " perplexity --model " +
                     eora::testing::Stories260kPath() + " --text " + TextPath() +
                     " --ctx 128 --max-bytes 40000 --threads 1 --json " + extra + " 2>/dev/null",
                 &out);
  std::smatch m;
  if (rc != 0 || !std::regex_search(out, m, std::regex("\"ppl\": ([0-9.]+)"))) {
    ADD_FAILURE() << "eora perplexity " << extra << " failed: " << out;
    return 0;
  }
  return std::stod(m[1]);
}

TEST_F(CompressorE2ETest, UploadFitPublishAndServeAnEoraAdapterWithoutRestart) {
  const auto t_all = Clock::now();
  StartServer();
  StartCompressor({"--publish-to", server_->grpc_target()});
  // Health, reflection, readiness.
  EXPECT_EQ(HealthCheck(channel_), std::string("\x08\x01", 2));
  EXPECT_NE(ReflectionList(channel_).find("eora.v1.CompressionService"), std::string::npos);
  std::string ready;
  EXPECT_EQ(RunCommand(
                "curl -sf http://127.0.0.1:" + std::to_string(compressor_->http_port()) + "/readyz",
                &ready),
            0);

  // Upload twice: stored once.
  eora::v1::CalibrationSetInfo info, again;
  ASSERT_TRUE(Upload("tinystories", text_, &info).ok());
  EXPECT_EQ(info.id().rfind("cs-", 0), 0u);
  EXPECT_EQ(info.bytes(), text_.size());
  EXPECT_GT(info.token_count(), 20000u);
  EXPECT_EQ(info.content_hash().rfind("sha256:", 0), 0u);
  EXPECT_FALSE(info.deduplicated());
  ASSERT_TRUE(Upload("same text", text_, &again, 7000).ok());
  EXPECT_EQ(again.id(), info.id());
  EXPECT_TRUE(again.deduplicated());

  // The EoRA job on the 3-bit base, published to the running server.
  const auto t_job = Clock::now();
  auto req = JobReq(info.id(), "tinystories-eora-r8", 8);
  req.set_publish(true);
  eora::v1::Job job;
  ASSERT_TRUE(Create(req, &job).ok());
  EXPECT_EQ(job.state(), eora::v1::JOB_STATE_QUEUED);
  const auto msgs = Watch(job.id());
  const double job_s = Since(t_job);
  ASSERT_FALSE(msgs.empty());
  const eora::v1::Job& done = msgs.back();
  ASSERT_EQ(done.state(), eora::v1::JOB_STATE_SUCCEEDED) << done.error() << "\n"
                                                         << compressor_->Log();
  bool saw_layer = false;
  double last_elapsed = 0;
  for (const auto& m : msgs) {
    if (m.progress().stage() == "fitting" && m.progress().num_layers() == 5 &&
        m.progress().layer() >= 1)
      saw_layer = true;
    EXPECT_GE(m.progress().elapsed_s() + 1e-9, last_elapsed);
    last_elapsed = m.progress().elapsed_s();
  }
  EXPECT_TRUE(saw_layer) << "WatchJob reported no 'fitting, layer i of 5' progress";
  ASSERT_EQ(done.quality_profile_size(), 4);  // ranks 1, 2, 4, 8
  EXPECT_EQ(done.quality_profile(3).rank(), 8u);
  EXPECT_LT(done.quality_profile(3).nll(), done.heldout_nll_compressed() - 0.02);
  EXPECT_GT(done.quality_profile(3).nll(), done.heldout_nll_fp() - 0.05);
  EXPECT_EQ(done.published_to_size(), 1);
  EXPECT_EQ(done.warnings_size(), 0) << done.warnings(0);
  EXPECT_EQ(done.adapter_path(), store_ + "/tinystories-eora-r8");
  EXPECT_EQ(StoreEntries(), (std::vector<std::string>{".eora-compressor", "tinystories-eora-r8"}));

  // The server loaded it when told (no restart) and serves it with its rank.
  auto ch = grpc::CreateChannel(server_->grpc_target(), grpc::InsecureChannelCredentials());
  auto adapters = eora::v1::AdapterService::NewStub(ch);
  {
    grpc::ClientContext ctx;
    eora::v1::GetAdapterRequest g;
    g.set_adapter_id("tinystories-eora-r8");
    eora::v1::AdapterInfo ai;
    ASSERT_TRUE(adapters->GetAdapter(&ctx, g, &ai).ok());
    EXPECT_EQ(ai.state(), eora::v1::ADAPTER_STATE_READY);
    EXPECT_EQ(ai.stored_rank(), 8u);
    EXPECT_EQ(ai.method(), "eora");
    EXPECT_EQ(ai.quality_profile_size(), 4);
  }
  auto inference = eora::v1::InferenceService::NewStub(ch);
  for (int rank : {0, 4}) {
    grpc::ClientContext ctx;
    eora::v1::GenerateRequest g;
    g.set_prompt("Once upon a time");
    g.set_adapter_id("tinystories-eora-r8");
    g.set_rank(rank);
    g.set_max_new_tokens(24);
    eora::v1::GenerateResponse r;
    ASSERT_TRUE(inference->Generate(&ctx, g, &r).ok());
    EXPECT_EQ(r.adapter_id(), "tinystories-eora-r8");
    EXPECT_EQ(r.rank_used(), rank == 0 ? 8u : 4u);
    EXPECT_GT(r.generated_tokens(), 0u);
  }
  // Perplexity of the served combination (eora CLI) is better with the adapter.
  const double base_ppl = PerplexityOf("--compressed " + *gptq3_);
  const double eora_ppl =
      PerplexityOf("--compressed " + *gptq3_ + " --adapter " + done.adapter_path());
  std::printf("[result] perplexity (ctx 128, 40 kB): gptq w3 %.4f, + eora r8 %.4f\n", base_ppl,
              eora_ppl);
  EXPECT_LT(eora_ppl, base_ppl * 0.99);

  // The CLI clients see the same.
  std::string out;
  const std::string target = " --target " + compressor_->grpc_target();
  EXPECT_EQ(RunCommand(std::string(EORA_CLI_BIN) + " list-jobs" + target, &out), 0);
  EXPECT_NE(out.find(job.id()), std::string::npos) << out;
  EXPECT_NE(out.find("succeeded"), std::string::npos) << out;
  EXPECT_EQ(RunCommand(std::string(EORA_CLI_BIN) + " watch-job --id " + job.id() + target + " 2>&1",
                       &out),
            0);
  EXPECT_NE(out.find("rank   8"), std::string::npos) << out;
  EXPECT_EQ(
      RunCommand(std::string(EORA_CLI_BIN) + " upload-calib --file " + TextPath() + target, &out),
      0);
  EXPECT_NE(out.find(info.id()), std::string::npos) << out;
  EXPECT_NE(out.find("already stored"), std::string::npos) << out;

  // Metrics.
  const std::string metrics = Metrics(compressor_->http_port());
  EXPECT_NE(metrics.find("eora_compressor_jobs{state=\"succeeded\"} 1"), std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("eora_compressor_job_duration_seconds_count{method=\"eora\"} 1"),
            std::string::npos);
  EXPECT_NE(metrics.find("eora_compressor_queue_length 0"), std::string::npos);
  EXPECT_NE(metrics.find("eora_compressor_stored_bytes{kind=\"calibration\"} " +
                         std::to_string(text_.size())),
            std::string::npos);
  if (RunCommand("command -v promtool >/dev/null", &out) == 0) {
    const std::string file = dir_ + "/metrics.txt";
    eora::testing::WriteFileOrDie(file, metrics);
    EXPECT_EQ(RunCommand("promtool check metrics < " + file + " 2>&1", &out), 0) << out;
  }
  // SIGTERM drains and exits 0.
  compressor_->Signal(SIGTERM);
  EXPECT_EQ(compressor_->Wait(30), 0) << compressor_->Log();
  std::printf("[timing] job (32 x 128 tokens, EoRA r8, publish): %.2fs; whole test %.2fs\n", job_s,
              Since(t_all));
}

TEST_F(CompressorE2ETest, KilledMidJobRestartsWithTheJobFailedAndNoPartialAdapter) {
  const auto t0 = Clock::now();
  // A slow job (sleeps after each layer) so the kill lands mid-fit.
  StartCompressor({"--layer-delay-ms", "400"});
  eora::v1::CalibrationSetInfo info;
  ASSERT_TRUE(Upload("tinystories", text_, &info).ok());
  eora::v1::Job job;
  ASSERT_TRUE(Create(JobReq(info.id(), "killed", 8), &job).ok());
  const auto msgs = Watch(job.id(), [](const eora::v1::Job& j) {
    return j.progress().stage() == "fitting" && j.progress().layer() >= 1;
  });
  ASSERT_FALSE(msgs.empty());
  ASSERT_EQ(msgs.back().state(), eora::v1::JOB_STATE_RUNNING);
  compressor_->Signal(SIGKILL);
  EXPECT_EQ(compressor_->Wait(10), -1);
  EXPECT_FALSE(fs::exists(store_ + "/killed"));

  // Restart on the same database and store, now publishing to a server that is down.
  StartCompressor(
      {"--publish-to", "127.0.0.1:" + std::to_string(UnusedPort()), "--publish-timeout-s", "2"});
  eora::v1::Job failed = Get(job.id());
  EXPECT_EQ(failed.state(), eora::v1::JOB_STATE_FAILED);
  EXPECT_NE(failed.error().find("interrupted"), std::string::npos) << failed.error();
  EXPECT_NE(failed.error().find("fitting"), std::string::npos) << failed.error();
  EXPECT_EQ(StoreEntries(), std::vector<std::string>{".eora-compressor"});  // nothing half-written
  // A second job (same target id) succeeds; the down server is a warning only.
  auto req = JobReq(info.id(), "killed", 8);
  req.set_publish(true);
  eora::v1::Job second;
  ASSERT_TRUE(Create(req, &second).ok());
  const auto done = Watch(second.id()).back();
  ASSERT_EQ(done.state(), eora::v1::JOB_STATE_SUCCEEDED) << done.error();
  ASSERT_EQ(done.warnings_size(), 1);
  EXPECT_NE(done.warnings(0).find("publish to"), std::string::npos) << done.warnings(0);
  EXPECT_EQ(done.published_to_size(), 0);
  auto loaded =
      LoadAdapterDir(store_ + "/killed", eora::server::testing::Stories().weights->config, "k");
  EXPECT_TRUE(loaded.ok()) << loaded.status();
  const std::string metrics = Metrics(compressor_->http_port());
  EXPECT_NE(metrics.find("eora_compressor_jobs{state=\"failed\"} 1"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("eora_compressor_jobs{state=\"succeeded\"} 1"), std::string::npos)
      << metrics;
  std::printf("[timing] kill-and-restart test: %.2fs\n", Since(t0));
}

TEST_F(CompressorE2ETest, ConcurrentClientsUploadAndCreateJobs) {
  const auto t0 = Clock::now();
  StartCompressor({"--workers", "2", "--max-queue", "3"});
  constexpr int kClients = 6;
  struct Result {
    grpc::Status upload, create;
    eora::v1::CalibrationSetInfo info;
    eora::v1::Job job, done;
  };
  std::vector<Result> res(kClients);
  std::vector<std::thread> ts;
  for (int i = 0; i < kClients; ++i)
    ts.emplace_back([&, i] {
      // Clients 0 and 1 upload the same slice at the same time.
      const int slice = i == 1 ? 0 : i;
      const std::string text = text_.substr(static_cast<size_t>(slice) * 15000, 30000);
      auto ch = grpc::CreateChannel(compressor_->grpc_target(), grpc::InsecureChannelCredentials());
      auto stub = eora::v1::CompressionService::NewStub(ch);
      {
        grpc::ClientContext ctx;
        auto w = stub->UploadCalibrationSet(&ctx, &res[i].info);
        for (size_t p = 0; p < text.size(); p += 8192) {
          eora::v1::UploadCalibrationChunk c;
          if (p == 0) c.set_name("client-" + std::to_string(i));
          c.set_text(text.substr(p, 8192));
          if (!w->Write(c)) break;
        }
        w->WritesDone();
        res[i].upload = w->Finish();
      }
      if (!res[i].upload.ok()) return;
      grpc::ClientContext ctx;
      res[i].create = stub->CreateAdapterJob(
          &ctx, JobReq(res[i].info.id(), "client-" + std::to_string(i), 4, 16, 4), &res[i].job);
      if (!res[i].create.ok()) return;
      grpc::ClientContext wctx;
      eora::v1::WatchJobRequest wr;
      wr.set_id(res[i].job.id());
      auto reader = stub->WatchJob(&wctx, wr);
      eora::v1::Job j;
      while (reader->Read(&j)) res[i].done = j;
      (void)reader->Finish();
    });
  for (auto& t : ts) t.join();
  int accepted = 0, refused = 0;
  std::set<std::string> ids;
  for (int i = 0; i < kClients; ++i) {
    ASSERT_TRUE(res[i].upload.ok()) << i << ": " << res[i].upload.error_message();
    ids.insert(res[i].info.id());
    if (res[i].create.ok()) {
      ++accepted;
      EXPECT_EQ(res[i].done.state(), eora::v1::JOB_STATE_SUCCEEDED)
          << i << ": " << res[i].done.error();
      EXPECT_TRUE(fs::exists(store_ + "/client-" + std::to_string(i) + "/adapter_config.json"));
    } else {
      ++refused;  // the bounded queue said no, with a reason
      EXPECT_EQ(res[i].create.error_code(), grpc::RESOURCE_EXHAUSTED)
          << res[i].create.error_message();
      EXPECT_NE(res[i].create.error_message().find("queue full"), std::string::npos);
      EXPECT_FALSE(fs::exists(store_ + "/client-" + std::to_string(i)));
    }
  }
  EXPECT_EQ(res[0].info.id(), res[1].info.id());
  EXPECT_EQ(ids.size(), static_cast<size_t>(kClients - 1));
  EXPECT_GE(accepted, 5);  // 2 running + 3 queued fit at once
  // Nothing lost: the store lists exactly the accepted jobs and the distinct sets.
  grpc::ClientContext ctx;
  eora::v1::ListJobsResponse jobs;
  ASSERT_TRUE(stub_->ListJobs(&ctx, eora::v1::ListJobsRequest(), &jobs).ok());
  EXPECT_EQ(jobs.jobs_size(), accepted);
  grpc::ClientContext ctx2;
  eora::v1::ListCalibrationSetsResponse sets;
  ASSERT_TRUE(
      stub_->ListCalibrationSets(&ctx2, eora::v1::ListCalibrationSetsRequest(), &sets).ok());
  EXPECT_EQ(sets.sets_size(), kClients - 1);
  std::printf("[timing] %d concurrent clients (%d jobs run, %d refused): %.2fs\n", kClients,
              accepted, refused, Since(t0));
}

TEST_F(CompressorE2ETest, EveryErrorCaseHasItsCodeAndStoresNothing) {
  StartCompressor(
      {"--max-upload-mb", "1", "--workers", "1", "--max-queue", "1", "--layer-delay-ms", "300"});
  auto code = [](const grpc::Status& s) { return s.error_code(); };
  eora::v1::CalibrationSetInfo info;
  // Uploads.
  EXPECT_EQ(code(Upload("big", std::string(1536 << 10, 'a'), &info, 256 << 10)),
            grpc::RESOURCE_EXHAUSTED);
  EXPECT_EQ(code(Upload("", "some text", &info)), grpc::INVALID_ARGUMENT);
  {
    grpc::ClientContext ctx;
    auto w = stub_->UploadCalibrationSet(&ctx, &info);
    eora::v1::UploadCalibrationChunk c;
    c.set_name("mixed");
    c.set_text("hello");
    w->Write(c);
    eora::v1::UploadCalibrationChunk t;
    t.mutable_token_ids()->add_ids(5);
    w->Write(t);
    w->WritesDone();
    EXPECT_EQ(code(w->Finish()), grpc::INVALID_ARGUMENT);
  }
  {
    grpc::ClientContext ctx;
    auto w = stub_->UploadCalibrationSet(&ctx, &info);
    eora::v1::UploadCalibrationChunk t;
    t.set_name("bad ids");
    t.mutable_token_ids()->add_ids(5);
    t.mutable_token_ids()->add_ids(100000);  // stories260K has 512 tokens
    w->Write(t);
    w->WritesDone();
    grpc::Status s = w->Finish();
    EXPECT_EQ(code(s), grpc::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("token"), std::string::npos) << s.error_message();
  }
  {
    grpc::ClientContext ctx;
    auto w = stub_->UploadCalibrationSet(&ctx, &info);
    w->WritesDone();
    EXPECT_EQ(code(w->Finish()), grpc::INVALID_ARGUMENT);  // empty
  }
  {
    grpc::ClientContext ctx;
    eora::v1::ListCalibrationSetsResponse sets;
    ASSERT_TRUE(stub_->ListCalibrationSets(&ctx, {}, &sets).ok());
    EXPECT_EQ(sets.sets_size(), 0);
  }
  eora::v1::CalibrationSetInfo small;
  ASSERT_TRUE(Upload("small", text_.substr(0, 20000), &small).ok());
  // Jobs: each bad field names itself.
  auto expect = [&](eora::v1::CreateAdapterJobRequest r, grpc::StatusCode c,
                    const std::string& field) {
    eora::v1::Job j;
    grpc::Status s = Create(r, &j);
    EXPECT_EQ(s.error_code(), c) << field << ": " << s.error_message();
    EXPECT_NE(s.error_message().find(field), std::string::npos) << s.error_message();
  };
  auto r = JobReq(small.id(), "x", 4, 8, 2);
  r.set_base_model("llama-70b");
  expect(r, grpc::NOT_FOUND, "base_model");
  r = JobReq(small.id(), "x", 0, 8, 2);
  expect(r, grpc::INVALID_ARGUMENT, "max_rank");
  r = JobReq(small.id(), "x", 4096, 8, 2);
  expect(r, grpc::INVALID_ARGUMENT, "max_rank");
  r = JobReq(small.id(), "x", 4, 8, 2);
  r.set_adapter_bits(7);
  expect(r, grpc::INVALID_ARGUMENT, "adapter_bits");
  r = JobReq(small.id(), "x", 4, 8, 2);
  r.mutable_compression()->set_method("gptq");
  r.mutable_compression()->set_bits(9);
  expect(r, grpc::INVALID_ARGUMENT, "compression.bits");
  r = JobReq(small.id(), "x", 4, 8, 2);
  r.set_compensation_method("pca");
  expect(r, grpc::INVALID_ARGUMENT, "compensation_method");
  r = JobReq(small.id(), "../../etc", 4, 8, 2);
  expect(r, grpc::INVALID_ARGUMENT, "target_adapter_id");
  r = JobReq("cs-0000", "x", 4, 8, 2);
  expect(r, grpc::NOT_FOUND, "calibration_set_ids");
  r = JobReq(small.id(), "x", 4, 400, 2);  // 20 kB of text: far fewer than 400 x 128 tokens
  expect(r, grpc::FAILED_PRECONDITION, "calibration_set_ids");
  r = JobReq(small.id(), "x", 4, 8, 2);
  r.set_compressed_base_path(dir_ + "/nowhere");
  expect(r, grpc::NOT_FOUND, "compressed_base_path");
  {
    grpc::ClientContext ctx;
    eora::v1::ListJobsResponse jobs;
    ASSERT_TRUE(stub_->ListJobs(&ctx, {}, &jobs).ok());
    EXPECT_EQ(jobs.jobs_size(), 0);  // nothing stored by the refusals
  }
  // Queue bound: one running (slow), one queued, the third is refused.
  eora::v1::Job a, b, c;
  ASSERT_TRUE(Create(JobReq(small.id(), "a", 4, 8, 2), &a).ok());
  Watch(a.id(), [](const eora::v1::Job& j) { return j.state() == eora::v1::JOB_STATE_RUNNING; });
  ASSERT_TRUE(Create(JobReq(small.id(), "b", 4, 8, 2), &b).ok());
  grpc::Status full = Create(JobReq(small.id(), "c", 4, 8, 2), &c);
  EXPECT_EQ(full.error_code(), grpc::RESOURCE_EXHAUSTED);
  EXPECT_NE(full.error_message().find("--max-queue 1"), std::string::npos) << full.error_message();
  // The same target as an active job.
  expect(JobReq(small.id(), "b", 4, 8, 2), grpc::ALREADY_EXISTS, "target_adapter_id");
  // The set is in use: it cannot be deleted.
  {
    grpc::ClientContext ctx;
    eora::v1::DeleteCalibrationSetRequest d;
    d.set_id(small.id());
    eora::v1::DeleteCalibrationSetResponse dr;
    grpc::Status s = stub_->DeleteCalibrationSet(&ctx, d, &dr);
    EXPECT_EQ(s.error_code(), grpc::FAILED_PRECONDITION);
    EXPECT_NE(s.error_message().find(a.id()), std::string::npos) << s.error_message();
  }
  // Cancel both; cancelling again is FAILED_PRECONDITION; unknown jobs NOT_FOUND.
  for (const auto* j : {&b, &a}) {
    grpc::ClientContext ctx;
    eora::v1::CancelJobRequest cr;
    cr.set_id(j->id());
    eora::v1::Job out;
    ASSERT_TRUE(stub_->CancelJob(&ctx, cr, &out).ok());
  }
  EXPECT_EQ(Get(b.id()).state(), eora::v1::JOB_STATE_CANCELLED);
  const auto end = Watch(a.id()).back();
  EXPECT_EQ(end.state(), eora::v1::JOB_STATE_CANCELLED) << end.error();
  EXPECT_FALSE(fs::exists(store_ + "/a"));
  {
    grpc::ClientContext ctx;
    eora::v1::CancelJobRequest cr;
    cr.set_id(a.id());
    eora::v1::Job out;
    EXPECT_EQ(stub_->CancelJob(&ctx, cr, &out).error_code(), grpc::FAILED_PRECONDITION);
  }
  {
    grpc::ClientContext ctx;
    eora::v1::GetJobRequest g;
    g.set_id("job-999");
    eora::v1::Job out;
    EXPECT_EQ(stub_->GetJob(&ctx, g, &out).error_code(), grpc::NOT_FOUND);
  }
  // Now the set can go; a second delete is NOT_FOUND.
  for (grpc::StatusCode want : {grpc::OK, grpc::NOT_FOUND}) {
    grpc::ClientContext ctx;
    eora::v1::DeleteCalibrationSetRequest d;
    d.set_id(small.id());
    eora::v1::DeleteCalibrationSetResponse dr;
    EXPECT_EQ(stub_->DeleteCalibrationSet(&ctx, d, &dr).error_code(), want);
  }
  std::string out;
  EXPECT_EQ(RunCommand(std::string(EORA_CLI_BIN) + " list-jobs --state cancelled --target " +
                           compressor_->grpc_target(),
                       &out),
            0);
  EXPECT_NE(out.find(a.id()), std::string::npos) << out;
}

}  // namespace
}  // namespace eora::compress::service
