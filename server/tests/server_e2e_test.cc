// End to end: the real eora-server binary on 127.0.0.1 (port 0) with the bundled
// stories260K model and an adapter store in a temporary directory, called with
// a C++ gRPC client.
#include <signal.h>

#include <atomic>
#include <filesystem>
#include <mutex>
#include <thread>

#include "eora/v1/adapter.grpc.pb.h"
#include "eora/v1/inference.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/tests/server_test_util.h"
#include "tests/test_util.h"

namespace eora::server {
namespace {

namespace fs = std::filesystem;
using testing::OfflineGreedy;
using testing::ServerProcess;

std::vector<int> Tokens(const eora::v1::GenerateResponse& r) {
  return std::vector<int>(r.token_ids().begin(), r.token_ids().end());
}

class ServerE2ETest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = eora::testing::MakeTempDir("eora-e2e");
    store_ = dir_ + "/store";
    fs::create_directories(store_);
    testing::WriteRandomAdapter(store_ + "/r8", 8, 21);
    testing::WriteRandomAdapter(store_ + "/r16", 16, 22);
    testing::WriteRandomAdapter(store_ + "/r4", 4, 23);
    testing::WriteForeignAdapter(store_ + "/foreign");
  }
  void TearDown() override {
    server_.reset();
    fs::remove_all(dir_);
  }
  void StartServer(const std::vector<std::string>& flags = {}) {
    server_ = std::make_unique<ServerProcess>();
    ASSERT_TRUE(server_->Start(store_, flags)) << server_->Log();
    channel_ = grpc::CreateChannel(server_->grpc_target(), grpc::InsecureChannelCredentials());
    inference_ = eora::v1::InferenceService::NewStub(channel_);
    adapters_ = eora::v1::AdapterService::NewStub(channel_);
  }
  grpc::Status Generate(const eora::v1::GenerateRequest& req, eora::v1::GenerateResponse* resp,
                        int timeout_s = 60) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(timeout_s));
    return inference_->Generate(&ctx, req, resp);
  }
  eora::v1::GenerateRequest Req(const std::string& prompt, const std::string& adapter, int rank,
                                int max_new) {
    eora::v1::GenerateRequest r;
    r.set_prompt(prompt);
    r.set_adapter_id(adapter);
    r.set_rank(rank);
    r.set_max_new_tokens(max_new);
    return r;
  }

  std::string dir_, store_;
  std::unique_ptr<ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<eora::v1::InferenceService::Stub> inference_;
  std::unique_ptr<eora::v1::AdapterService::Stub> adapters_;
};

TEST_F(ServerE2ETest, GreedyTokensEqualTheOfflineEngineAlsoUnderConcurrency) {
  StartServer();
  // One at a time, unary and streaming.
  eora::v1::GenerateResponse r;
  ASSERT_TRUE(Generate(Req("Once upon a time", "r8", 3, 24), &r).ok());
  EXPECT_EQ(Tokens(r), OfflineGreedy("Once upon a time", store_ + "/r8", 3, 24));
  EXPECT_EQ(r.rank_used(), 3u);
  EXPECT_EQ(r.adapter_id(), "r8");
  EXPECT_GT(r.adapter_version(), 0u);
  EXPECT_FALSE(r.finish_reason().empty());
  {
    grpc::ClientContext ctx;
    auto reader = inference_->GenerateStream(&ctx, Req("The cat", "r16", 0, 16));
    eora::v1::GenerateResponse m;
    std::vector<int> toks;
    std::string text, finish;
    int messages = 0;
    while (reader->Read(&m)) {
      ++messages;
      toks.insert(toks.end(), m.token_ids().begin(), m.token_ids().end());
      text += m.text();
      if (!m.finish_reason().empty()) {
        finish = m.finish_reason();
        EXPECT_EQ(m.rank_used(), 16u);
        EXPECT_EQ(m.generated_tokens(), toks.size());
      }
    }
    ASSERT_TRUE(reader->Finish().ok());
    EXPECT_EQ(toks, OfflineGreedy("The cat", store_ + "/r16", 0, 16));
    EXPECT_GE(messages, 1);  // deltas may be coalesced when the client is slower than the engine
    EXPECT_FALSE(finish.empty());
  }
  // 16 concurrent requests with different adapters and ranks share batches.
  struct Case {
    std::string adapter;
    int rank;
    std::string prompt;
  };
  const std::pair<const char*, int> mix[] = {{"", 0},   {"r8", 8}, {"r8", 2},  {"r16", 16},
                                             {"r16", 5}, {"r4", 4}, {"r4", 1}, {"r16", 0}};
  const char* prompts[] = {"Once upon a time", "The dog ran", "Lily and Tom", "One day"};
  std::vector<Case> cases;
  for (int i = 0; i < 16; ++i) cases.push_back({mix[i % 8].first, mix[i % 8].second, prompts[i % 3]});
  std::vector<eora::v1::GenerateResponse> out(16);
  std::vector<grpc::Status> st(16);
  std::vector<std::thread> ts;
  for (int i = 0; i < 16; ++i)
    ts.emplace_back([&, i] {
      auto req = Req(cases[i].prompt, cases[i].adapter, cases[i].rank, 24);
      req.set_ignore_eos(true);
      st[i] = Generate(req, &out[i]);
    });
  for (auto& t : ts) t.join();
  for (int i = 0; i < 16; ++i) {
    ASSERT_TRUE(st[i].ok()) << i << ": " << st[i].error_message();
    const auto& c = cases[i];
    EXPECT_EQ(Tokens(out[i]),
              OfflineGreedy(c.prompt, c.adapter.empty() ? "" : store_ + "/" + c.adapter, c.rank, 24))
        << "case " << i;
  }
  // They did share steps: the server ran fewer steps than the tokens it made.
  std::string metrics;
  ASSERT_EQ(testing::RunCommand("curl -sf http://127.0.0.1:" + std::to_string(server_->http_port()) +
                                    "/metrics",
                                &metrics),
            0);
  EXPECT_NE(metrics.find("eora_iteration_tokens_count"), std::string::npos);
}

TEST_F(ServerE2ETest, EachErrorCase) {
  StartServer({"--max-running", "1", "--max-queue", "1"});
  eora::v1::GenerateResponse r;
  EXPECT_EQ(Generate(Req("x", "no-such-adapter", 0, 4), &r).error_code(), grpc::NOT_FOUND);
  auto s = Generate(Req("x", "../etc", 0, 4), &r);
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("adapter_id"), std::string::npos);
  s = Generate(Req("x", "r8", 9, 4), &r);
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("rank"), std::string::npos);
  auto bad = Req("x", "", 0, 4);
  bad.set_top_p(2);
  s = Generate(bad, &r);
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("top_p"), std::string::npos);
  auto longp = Req("", "", 0, 4);
  for (int i = 0; i < 2100; ++i) longp.add_prompt_token_ids(5);
  s = Generate(longp, &r);
  EXPECT_EQ(s.error_code(), grpc::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("context"), std::string::npos);
  EXPECT_EQ(Generate(Req("x", "foreign", 0, 4), &r).error_code(), grpc::FAILED_PRECONDITION);
  {
    grpc::ClientContext ctx;
    eora::v1::GetAdapterRequest g;
    g.set_adapter_id("nope");
    eora::v1::AdapterInfo info;
    EXPECT_EQ(adapters_->GetAdapter(&ctx, g, &info).error_code(), grpc::NOT_FOUND);
  }
  // Deadline: a long request with a short deadline (its 2000 tokens take ~60 ms
  // at 35k tokens/s on a fast core, so 3 ms expires mid-generation; an earlier
  // expiry, before the server sees the request, is reported with the same code).
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(3));
    auto req = Req("Once", "", 0, 2000);
    req.set_ignore_eos(true);
    eora::v1::GenerateResponse resp;
    EXPECT_EQ(inference_->Generate(&ctx, req, &resp).error_code(), grpc::DEADLINE_EXCEEDED);
  }
  // Queue full (--max-running 1 --max-queue 1): of 4 long requests sent at once
  // at most 2 are admitted; the others are refused with a reason.
  {
    std::vector<std::thread> ts;
    std::vector<std::unique_ptr<grpc::ClientContext>> ctxs;
    std::vector<grpc::Status> sts(4);
    for (int i = 0; i < 4; ++i) ctxs.push_back(std::make_unique<grpc::ClientContext>());
    for (int i = 0; i < 4; ++i)
      ts.emplace_back([&, i] {
        auto req = Req("Once", "", 0, 1900);
        req.set_ignore_eos(true);
        eora::v1::GenerateResponse resp;
        sts[i] = inference_->Generate(ctxs[i].get(), req, &resp);
      });
    // Cancel the admitted ones once the refusals are in.
    for (int wait = 0; wait < 500; ++wait) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      std::string m;
      testing::RunCommand("curl -sf http://127.0.0.1:" + std::to_string(server_->http_port()) +
                              "/metrics | grep '^eora_request_rejected_total'",
                          &m);
      if (m.find("queue_full\"} 2") != std::string::npos ||
          m.find("queue_full\"} 3") != std::string::npos)
        break;
    }
    for (auto& c : ctxs) c->TryCancel();
    for (auto& t : ts) t.join();
    int refused = 0;
    for (const auto& st : sts)
      if (st.error_code() == grpc::RESOURCE_EXHAUSTED) {
        ++refused;
        EXPECT_NE(st.error_message().find("queue"), std::string::npos) << st.error_message();
      }
    EXPECT_GE(refused, 2);  // 3 when one arrives before the first left the queue
  }
  // Shutting down: UNAVAILABLE while draining; the in-flight stream finishes.
  auto req = Req("Once", "", 0, 2000);
  req.set_ignore_eos(true);
  // (Retried while the cancelled requests above still hold the slot and queue.)
  std::unique_ptr<grpc::ClientContext> long_ctx;
  std::unique_ptr<grpc::ClientReader<eora::v1::GenerateResponse>> reader;
  eora::v1::GenerateResponse msg;
  for (int tries = 0; tries < 100; ++tries) {
    long_ctx = std::make_unique<grpc::ClientContext>();
    reader = inference_->GenerateStream(long_ctx.get(), req);
    if (reader->Read(&msg)) break;
    grpc::Status st = reader->Finish();
    ASSERT_EQ(st.error_code(), grpc::RESOURCE_EXHAUSTED) << st.error_message();
    reader.reset();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(reader);  // it is running
  server_->SendSigterm();
  for (int i = 0; i < 500 && server_->Log().find("draining") == std::string::npos; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  grpc::Status during = Generate(Req("x", "", 0, 2), &r, 5);
  EXPECT_EQ(during.error_code(), grpc::UNAVAILABLE) << during.error_message();
  int tokens = msg.token_ids_size();
  while (reader->Read(&msg)) tokens += msg.token_ids_size();
  grpc::Status long_status = reader->Finish();
  EXPECT_TRUE(long_status.ok()) << "in-flight work finishes within the grace period: "
                                << long_status.error_message();
  EXPECT_EQ(tokens, 2000);
  EXPECT_EQ(server_->Wait(60), 0) << server_->Log();
}

TEST_F(ServerE2ETest, HotSwapUnderLoadNeverFailsAndUsesOneVersion) {
  // Two versions of adapter "swap": the store's directory is rewritten between
  // them while requests run, and LoadAdapter(replace) / UnloadAdapter cycle.
  const std::string v1 = dir_ + "/v1", v2 = dir_ + "/v2";
  testing::WriteRandomAdapter(v1, 8, 101);
  testing::WriteRandomAdapter(v2, 8, 202);
  const std::string prompt = "Once upon a time";
  const auto ref1 = OfflineGreedy(prompt, v1, 0, 16);
  const auto ref2 = OfflineGreedy(prompt, v2, 0, 16);
  ASSERT_NE(ref1, ref2);
  testing::WriteRandomAdapter(store_ + "/swap", 8, 101);
  // Two step loops: a swap must hold in each of them.
  StartServer({"--threads", "2", "--lanes", "2"});
  ASSERT_NE(server_->Log().find("in 2 lanes of 1 thread"), std::string::npos) << server_->Log();

  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0}, matched1{0}, matched2{0}, inconsistent{0};
  std::mutex mu;
  std::string first_error;
  std::vector<std::thread> clients;
  for (int c = 0; c < 6; ++c)
    clients.emplace_back([&] {
      while (!stop) {
        auto req = Req(prompt, "swap", 0, 16);
        req.set_ignore_eos(true);
        eora::v1::GenerateResponse resp;
        grpc::Status s = Generate(req, &resp);
        if (!s.ok()) {
          ++failed;
          std::lock_guard<std::mutex> lock(mu);
          if (first_error.empty()) first_error = s.error_message();
          continue;
        }
        ++ok;
        const auto t = Tokens(resp);
        if (t == ref1) ++matched1;
        else if (t == ref2) ++matched2;
        else ++inconsistent;
      }
    });
  int swaps = 0;
  for (int round = 0; round < 12; ++round) {
    std::this_thread::sleep_for(std::chrono::milliseconds(60));
    testing::WriteRandomAdapter(store_ + "/swap", 8, round % 2 == 0 ? 202 : 101);
    grpc::ClientContext ctx;
    eora::v1::LoadAdapterRequest lr;
    lr.set_adapter_id("swap");
    lr.set_replace(true);
    eora::v1::LoadAdapterResponse resp;
    ASSERT_TRUE(adapters_->LoadAdapter(&ctx, lr, &resp).ok());
    ++swaps;
    if (round % 3 == 2) {
      grpc::ClientContext uctx;
      eora::v1::UnloadAdapterRequest ur;
      ur.set_adapter_id("swap");
      eora::v1::UnloadAdapterResponse uresp;
      EXPECT_TRUE(adapters_->UnloadAdapter(&uctx, ur, &uresp).ok());
    }
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  stop = true;
  for (auto& t : clients) t.join();
  EXPECT_EQ(failed, 0) << first_error;
  EXPECT_EQ(inconsistent, 0);
  EXPECT_GT(ok, 20);
  EXPECT_GT(matched1, 0);
  EXPECT_GT(matched2, 0);
  EXPECT_EQ(swaps, 12);
  {
    grpc::ClientContext ctx;
    eora::v1::ListAdaptersRequest lr;
    lr.set_include_store(true);
    eora::v1::ListAdaptersResponse resp;
    ASSERT_TRUE(adapters_->ListAdapters(&ctx, lr, &resp).ok());
    std::set<std::string> ids;
    for (const auto& a : resp.adapters()) ids.insert(a.adapter_id());
    EXPECT_TRUE(ids.count("swap") && ids.count("r8") && ids.count("foreign"));
  }
  EXPECT_EQ(server_->Terminate(), 0);
}

TEST_F(ServerE2ETest, MetricsPassPromtoolAndHealthEndpoints) {
  StartServer();
  eora::v1::GenerateResponse r;
  ASSERT_TRUE(Generate(Req("Once", "r8", 4, 8), &r).ok());
  ASSERT_TRUE(Generate(Req("Once", "", 0, 8), &r).ok());
  EXPECT_EQ(Generate(Req("x", "missing", 0, 4), &r).error_code(), grpc::NOT_FOUND);
  const std::string base = "http://127.0.0.1:" + std::to_string(server_->http_port());
  std::string out;
  ASSERT_EQ(testing::RunCommand("curl -sf " + base + "/metrics", &out), 0);
  for (const char* name :
       {"eora_grpc_requests_total{code=\"OK\",method=\"Generate\"} 2",
        "eora_grpc_requests_total{code=\"NOT_FOUND\",method=\"Generate\"} 1",
        "eora_time_to_first_token_seconds_bucket", "eora_time_per_output_token_seconds_count",
        "eora_e2e_request_latency_seconds_sum", "eora_request_queue_time_seconds_count",
        "eora_prompt_tokens_total", "eora_generation_tokens_total 16", "eora_num_requests_running",
        "eora_num_requests_waiting", "eora_kv_cache_usage_perc", "eora_adapter_loads_total{result=\"ok\"} 1",
        "eora_adapter_load_seconds_count 1", "eora_adapter_cache_misses_total{tier=\"device\"} 1",
        "eora_adapter_bytes{tier=\"device\"}", "eora_adapter_evictions_total{tier=\"host\"}",
        "eora_lora_requests_info{max_lora=\"32\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"}"})
    EXPECT_NE(out.find(name), std::string::npos) << name;
  std::string promtool;
  if (testing::RunCommand("command -v promtool", &promtool) == 0) {
    std::string lint;
    const int rc = testing::RunCommand(
        "curl -sf " + base + "/metrics | promtool check metrics 2>&1", &lint);
    EXPECT_EQ(rc, 0) << lint;
    EXPECT_EQ(lint, "") << lint;
  } else {
    std::fprintf(stderr, "promtool not installed: skipping the lint part\n");
  }
  ASSERT_EQ(testing::RunCommand("curl -s -o /dev/null -w '%{http_code}' " + base + "/healthz", &out), 0);
  EXPECT_EQ(out, "200");
  testing::RunCommand("curl -s -o /dev/null -w '%{http_code}' " + base + "/readyz", &out);
  EXPECT_EQ(out, "200");
  // Tokenize and ModelInfo.
  {
    grpc::ClientContext ctx;
    eora::v1::TokenizeRequest t;
    t.set_text("Once upon a time");
    eora::v1::TokenizeResponse resp;
    ASSERT_TRUE(inference_->Tokenize(&ctx, t, &resp).ok());
    EXPECT_EQ(resp.token_ids_size(), resp.pieces_size());
    EXPECT_GT(resp.token_ids_size(), 1);
    grpc::ClientContext ctx2;
    eora::v1::ModelInfoResponse info;
    ASSERT_TRUE(inference_->ModelInfo(&ctx2, {}, &info).ok());
    EXPECT_EQ(info.vocab_size(), 512u);
    EXPECT_EQ(info.num_layers(), 5u);
  }
  EXPECT_EQ(server_->Terminate(), 0);
}

TEST_F(ServerE2ETest, LogSaysWhereItListensAndHelpIsTruthful) {
  StartServer();
  EXPECT_NE(server_->Log().find("gRPC listening on 127.0.0.1:" + std::to_string(
                                    std::stoi(server_->grpc_target().substr(10)))),
            std::string::npos);
  EXPECT_EQ(server_->Terminate(), 0);
  std::string help;
  ASSERT_EQ(testing::RunCommand(std::string(EORA_SERVER_BIN) + " --help", &help), 0);
  for (const char* flag : {"--model", "--compressed", "--adapter-store", "--listen", "--http-listen",
                           "--threads", "--lanes", "--max-queue", "--grace-period-s", "--kv-dtype"})
    EXPECT_NE(help.find(flag), std::string::npos) << flag;
  std::string err;
  EXPECT_EQ(testing::RunCommand(std::string(EORA_SERVER_BIN) + " --adapter-store /tmp 2>&1", &err), 2);
  EXPECT_NE(err.find("--model"), std::string::npos);
  EXPECT_EQ(testing::RunCommand(std::string(EORA_SERVER_BIN) + " --model " +
                                    eora::testing::Stories260kPath() + " --adapter-store " + store_ +
                                    " --threads 2 --lanes 3 2>&1",
                                &err),
            2);
  EXPECT_NE(err.find("--lanes must be between 0 (automatic) and --threads"), std::string::npos) << err;
  EXPECT_EQ(testing::RunCommand(std::string(EORA_SERVER_BIN) + " --model " +
                                    eora::testing::Stories260kPath() + " --adapter-store " + store_ +
                                    " --kv-dtype bf16 2>&1",
                                &err),
            2);
  EXPECT_NE(err.find("--kv-dtype: KV cache type \"bf16\": expected f32 or f16"), std::string::npos) << err;
}

TEST_F(ServerE2ETest, F16KvCacheServesTheOfflineEnginesTokens) {
  StartServer({"--kv-dtype", "f16", "--kv-cache-tokens", "4096"});
  EXPECT_NE(server_->Log().find("KV cache: 4096 positions, f16"), std::string::npos) << server_->Log();
  eora::v1::GenerateResponse r;
  ASSERT_TRUE(Generate(Req("Once upon a time", "r8", 3, 32), &r).ok());
  EXPECT_EQ(Tokens(r), OfflineGreedy("Once upon a time", store_ + "/r8", 3, 32, KvDType::kF16));
}

TEST_F(ServerE2ETest, ServesACompressedBaseModel) {
  const std::string cli = EORA_CLI_BIN;
  const std::string out = dir_ + "/rtn4";
  std::string log;
  const int rc = testing::RunCommand(cli + " compress --model " + eora::testing::Stories260kPath() +
                                         " --method rtn --bits 4 --group-size 32 --out " + out +
                                         " 2>&1",
                                     &log);
  if (rc != 0 && log.find("unknown command") != std::string::npos)
    GTEST_SKIP() << "eora was built without the compressor";
  ASSERT_EQ(rc, 0) << log;
  StartServer({"--compressed", out});
  EXPECT_NE(server_->Log().find("loading compressed model"), std::string::npos);
  grpc::ClientContext ctx;
  eora::v1::ModelInfoResponse info;
  ASSERT_TRUE(inference_->ModelInfo(&ctx, {}, &info).ok());
  EXPECT_EQ(info.compressed_path(), out);
  eora::v1::GenerateResponse r;
  ASSERT_TRUE(Generate(Req("Once upon a time", "", 0, 24), &r).ok());
  // The offline CLI on the same compressed model prints the same text.
  std::string text;
  ASSERT_EQ(testing::RunCommand(cli + " generate --model " + eora::testing::Stories260kPath() +
                                    " --compressed " + out +
                                    " --prompt 'Once upon a time' --max-tokens 24 --threads 1",
                                &text),
            0);
  if (!text.empty() && text.back() == '\n') text.pop_back();
  EXPECT_EQ(r.text(), text);
  EXPECT_EQ(server_->Terminate(), 0);
}

// `eora bench --lanes` measures the engine the way the server's lanes run it:
// independent models side by side, each with its share of the sequences.
TEST_F(ServerE2ETest, EngineBenchRunsLanesLikeTheServer) {
  const std::string bench = std::string(EORA_CLI_BIN) + " bench --model " +
                            eora::testing::Stories260kPath() +
                            " --prompt-tokens 4 --gen-tokens 8 --reps 1 --json --threads 2";
  std::string out;
  ASSERT_EQ(testing::RunCommand(bench + " --lanes 2 --batch 5", &out), 0) << out;
  EXPECT_NE(out.find("\"lanes\": 2"), std::string::npos) << out;
  EXPECT_NE(out.find("\"batch\": 5"), std::string::npos) << out;
  EXPECT_EQ(out.find("\"decode_tok_s\": 0.00"), std::string::npos) << out;
  std::string err;
  EXPECT_EQ(testing::RunCommand(bench + " --lanes 3 --batch 5 2>&1", &err), 2);
  EXPECT_NE(err.find("--lanes must be between 1 and both --threads and --batch"), std::string::npos)
      << err;
}

}  // namespace
}  // namespace eora::server
