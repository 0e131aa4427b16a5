// Scheduler and ServingCore on the real stories260K model, in process, no sockets.
#include "server/scheduler.h"

#include <filesystem>
#include <thread>

#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "server/metrics.h"
#include "server/serving_core.h"
#include "server/tests/server_test_util.h"
#include "tests/test_util.h"

namespace eora::server {
namespace {

namespace fs = std::filesystem;
using testing::OfflineGreedy;
using testing::Stories;

// Collects a request's output until it finishes.
GenerateUpdate Collect(const std::shared_ptr<RequestState>& st, absl::Duration limit = absl::Seconds(60)) {
  GenerateUpdate all, u;
  const absl::Time until = absl::Now() + limit;
  while (absl::Now() < until) {
    if (!st->Poll(absl::Milliseconds(50), &u)) continue;
    all.text += u.text;
    all.tokens.insert(all.tokens.end(), u.tokens.begin(), u.tokens.end());
    if (u.finished) {
      std::string text = std::move(all.text);
      std::vector<int> toks = std::move(all.tokens);
      all = std::move(u);
      all.text = std::move(text);
      all.tokens = std::move(toks);
      return all;
    }
  }
  ADD_FAILURE() << "request did not finish";
  return all;
}

// Every test runs with one step loop and with two (lanes), unless it sets lanes
// itself (or max_running 1, which leaves one lane).
class SchedulerTest : public ::testing::TestWithParam<int> {
 protected:
  static void SetUpTestSuite() {
    store_ = new std::string(eora::testing::MakeTempDir("eora-sched-store"));
    testing::WriteRandomAdapter(*store_ + "/r8a", 8, 11);
    testing::WriteRandomAdapter(*store_ + "/r8b", 8, 12);
    testing::WriteRandomAdapter(*store_ + "/r16", 16, 13);
    testing::WriteForeignAdapter(*store_ + "/foreign");
  }
  static void TearDownTestSuite() {
    fs::remove_all(*store_);
    delete store_;
  }
  void Make(SchedulerOptions so = {}, ServingCoreOptions co = {}) {
    if (so.lanes == 1) so.lanes = GetParam();
    prom_ = std::make_shared<prometheus::Registry>();
    metrics_ = std::make_unique<ServerMetrics>(prom_);
    AdapterRegistryOptions ro;
    ro.store_dir = *store_;
    registry_ = std::make_unique<AdapterRegistry>(
        ro, MakeDirectoryLoader(Stories().model->config()), metrics_.get());
    scheduler_ = std::make_unique<Scheduler>(Stories().model.get(), Stories().weights->tokenizer.get(),
                                             so, MakeSchedulingPolicy("fcfs"), metrics_.get());
    core_ = std::make_unique<ServingCore>(Stories().model.get(), Stories().weights->tokenizer.get(),
                                          registry_.get(), scheduler_.get(), co);
  }
  void TearDown() override {
    if (scheduler_) scheduler_->Drain(absl::Seconds(10));
  }
  // 16 concurrent greedy requests with different adapters and ranks; each must
  // give the offline engine's tokens.
  void RunSixteenMixed();
  std::shared_ptr<RequestState> Start(const GenerateParams& p) {
    auto st = core_->StartGenerate(p, absl::InfiniteFuture());
    EXPECT_TRUE(st.ok()) << st.status();
    return st.ok() ? *st : nullptr;
  }

  static std::string* store_;
  std::shared_ptr<prometheus::Registry> prom_;
  std::unique_ptr<ServerMetrics> metrics_;
  std::unique_ptr<AdapterRegistry> registry_;
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<ServingCore> core_;
};
std::string* SchedulerTest::store_ = nullptr;

TEST_P(SchedulerTest, GreedyTokensMatchTheOfflineEngine) {
  Make();
  GenerateParams p;
  p.prompt = "Once upon a time";
  p.max_new_tokens = 24;
  GenerateUpdate base = Collect(Start(p));
  ASSERT_TRUE(base.status.ok()) << base.status;
  EXPECT_EQ(base.tokens, OfflineGreedy(p.prompt, "", 0, 24));
  EXPECT_EQ(base.text, Stories().weights->tokenizer->Decode(base.tokens));
  EXPECT_EQ(base.rank_used, 0);
  p.adapter_id = "r16";
  p.rank = 4;
  GenerateUpdate ad = Collect(Start(p));
  ASSERT_TRUE(ad.status.ok()) << ad.status;
  EXPECT_EQ(ad.tokens, OfflineGreedy(p.prompt, *store_ + "/r16", 4, 24));
  EXPECT_EQ(ad.rank_used, 4);
  EXPECT_EQ(ad.adapter_id, "r16");
  EXPECT_NE(ad.tokens, base.tokens) << "the test adapter must change the output";
}

// An F16 KV cache: the tokens of the offline engine with an F16 cache.
TEST_P(SchedulerTest, F16KvCacheGivesTheOfflineEnginesTokens) {
  SchedulerOptions so;
  so.kv_dtype = KvDType::kF16;
  Make(so);
  GenerateParams p;
  p.prompt = "Once upon a time";
  p.max_new_tokens = 40;
  GenerateUpdate base = Collect(Start(p));
  ASSERT_TRUE(base.status.ok()) << base.status;
  EXPECT_EQ(base.tokens, OfflineGreedy(p.prompt, "", 0, 40, KvDType::kF16));
  p.adapter_id = "r16";
  p.rank = 8;
  GenerateUpdate ad = Collect(Start(p));
  ASSERT_TRUE(ad.status.ok()) << ad.status;
  EXPECT_EQ(ad.tokens, OfflineGreedy(p.prompt, *store_ + "/r16", 8, 40, KvDType::kF16));
}

TEST_P(SchedulerTest, SixteenConcurrentRequestsWithMixedAdaptersAndRanks) {
  Make();
  RunSixteenMixed();
  EXPECT_GT(scheduler_->Stats().steps, 0);
}

// Two step loops (lanes), each with its own model copy and KV cache share:
// the same tokens, and both loops take part.
TEST_P(SchedulerTest, LanesGiveTheSameTokensAndShareTheWork) {
  SchedulerOptions so;
  so.lanes = 2;
  so.max_running = 16;  // 8 per lane
  Make(so);
  RunSixteenMixed();
  // Both lanes run: 16 long requests can all start (a first token each) only
  // when each lane holds 8 of them. (Which lane served the short ones above
  // depends on the machine: one lane may finish 8 before the other first runs.)
  GenerateParams p;
  p.prompt = "Once";
  p.max_new_tokens = 1500;
  p.ignore_eos = true;
  std::vector<std::shared_ptr<RequestState>> started;
  for (int i = 0; i < 16; ++i) started.push_back(Start(p));
  const absl::Time until = absl::Now() + absl::Seconds(60);
  for (auto& r : started) {
    GenerateUpdate u;
    while (!r->Poll(absl::Milliseconds(50), &u) && absl::Now() < until) {}
    ASSERT_FALSE(u.tokens.empty()) << "a request did not start";
  }
  SchedulerStats st = scheduler_->Stats();
  ASSERT_EQ(st.lane_steps.size(), 2u);
  EXPECT_GT(st.lane_steps[0], 0);
  EXPECT_GT(st.lane_steps[1], 0);
  EXPECT_EQ(st.steps, st.lane_steps[0] + st.lane_steps[1]);
  EXPECT_GT(st.kv_cache_usage, 0);
  for (auto& r : started) r->Cancel();
  for (auto& r : started) EXPECT_EQ(Collect(r).finish_reason, "cancelled");
  st = scheduler_->Stats();
  EXPECT_EQ(st.running, 0);
  EXPECT_EQ(st.kv_cache_usage, 0);
}

// A request that fits the whole cache but not one lane's share is refused with
// a message that says so.
TEST_P(SchedulerTest, LanesSplitTheKvCache) {
  SchedulerOptions so;
  so.lanes = 2;
  so.kv_cache_tokens = 256;  // 128 positions per lane
  Make(so);
  GenerateParams p;
  p.prompt = "Once upon a time";
  p.max_new_tokens = 200;
  auto st = core_->StartGenerate(p, absl::InfiniteFuture());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(st.status().message().find("per step loop"), std::string::npos) << st.status();
  p.max_new_tokens = 64;
  GenerateUpdate u = Collect(Start(p));
  EXPECT_TRUE(u.status.ok()) << u.status;
  EXPECT_EQ(u.tokens, OfflineGreedy(p.prompt, "", 0, 64));
}

void SchedulerTest::RunSixteenMixed() {
  struct Case {
    std::string adapter;
    int rank;
    std::string prompt;
  };
  std::vector<Case> cases;
  const char* prompts[] = {"Once upon a time", "The cat", "Tom had a red ball", "One day"};
  const std::pair<const char*, int> mix[] = {{"", 0},    {"r8a", 8}, {"r8a", 2}, {"r8b", 8},
                                             {"r8b", 4}, {"r16", 16}, {"r16", 1}, {"r16", 0}};
  for (int i = 0; i < 16; ++i) cases.push_back({mix[i % 8].first, mix[i % 8].second, prompts[i % 3]});
  std::vector<std::shared_ptr<RequestState>> states;
  for (const auto& c : cases) {
    GenerateParams p;
    p.prompt = c.prompt;
    p.adapter_id = c.adapter;
    p.rank = c.rank;
    p.max_new_tokens = 20;
    p.ignore_eos = true;
    states.push_back(Start(p));
  }
  std::set<std::vector<int>> distinct;
  for (size_t i = 0; i < cases.size(); ++i) {
    GenerateUpdate u = Collect(states[i]);
    ASSERT_TRUE(u.status.ok()) << u.status;
    EXPECT_EQ(u.finish_reason, "length");
    const auto& c = cases[i];
    std::vector<int> ref = OfflineGreedy(c.prompt, c.adapter.empty() ? "" : *store_ + "/" + c.adapter,
                                         c.rank, 20);
    EXPECT_EQ(u.tokens, ref) << "case " << i << " adapter '" << c.adapter << "' rank " << c.rank;
    distinct.insert(u.tokens);
  }
  EXPECT_GE(distinct.size(), 12u) << "adapters/ranks should give different outputs";
}

TEST_P(SchedulerTest, ErrorsNameTheField) {
  ServingCoreOptions co;
  co.max_new_tokens_limit = 1000;
  Make({}, co);
  auto code = [&](GenerateParams p) { return core_->StartGenerate(p, absl::InfiniteFuture()).status(); };
  GenerateParams p;
  p.adapter_id = "nope";
  EXPECT_EQ(code(p).code(), absl::StatusCode::kNotFound);
  p.adapter_id = "foreign";
  EXPECT_EQ(code(p).code(), absl::StatusCode::kFailedPrecondition) << code(p);
  p = {};
  p.adapter_id = "r8a";
  p.rank = 9;
  auto s = code(p);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("rank"), std::string::npos) << s;
  p = {};
  p.rank = 2;
  EXPECT_NE(code(p).message().find("rank"), std::string::npos);
  p = {};
  p.temperature = -1;
  EXPECT_NE(code(p).message().find("temperature"), std::string::npos);
  p = {};
  p.top_p = 1.5;
  EXPECT_NE(code(p).message().find("top_p"), std::string::npos);
  p = {};
  p.max_new_tokens = 5000;
  EXPECT_NE(code(p).message().find("max_new_tokens"), std::string::npos);
  p = {};
  p.prompt_ids = {1, 99999};
  EXPECT_NE(code(p).message().find("prompt_token_ids"), std::string::npos);
  p = {};
  p.prompt_ids.assign(Stories().model->config().max_seq_len, 5);
  s = code(p);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("prompt"), std::string::npos);
  EXPECT_NE(s.message().find("context"), std::string::npos);
  p = {};
  p.adapter_id = "a/../../etc";
  EXPECT_NE(code(p).message().find("adapter_id"), std::string::npos);
}

TEST_P(SchedulerTest, FullQueueIsResourceExhaustedWithAReason) {
  SchedulerOptions so;
  so.max_running = 1;
  so.max_queue = 2;
  Make(so);
  GenerateParams p;
  p.prompt = "Once";
  p.max_new_tokens = 400;
  p.ignore_eos = true;
  std::vector<std::shared_ptr<RequestState>> ok;
  absl::Status refused;
  for (int i = 0; i < 8 && refused.ok(); ++i) {
    auto st = core_->StartGenerate(p, absl::InfiniteFuture());
    if (st.ok()) ok.push_back(*st);
    else refused = st.status();
  }
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.message().find("queue"), std::string::npos) << refused;
  EXPECT_LE(ok.size(), 3u);
  for (auto& s : ok) s->Cancel();
  for (auto& s : ok) Collect(s);
  EXPECT_NE(metrics_->Serialize().find("eora_request_rejected_total{reason=\"queue_full\"} 1"),
            std::string::npos);
}

TEST_P(SchedulerTest, CancellationAndDeadlinesFreeTheKvCache) {
  Make();
  GenerateParams p;
  p.prompt = "Once upon a time";
  p.max_new_tokens = 1000;
  p.ignore_eos = true;
  auto st = Start(p);
  GenerateUpdate u;
  while (!st->Poll(absl::Milliseconds(50), &u)) {}
  EXPECT_GT(scheduler_->Stats().kv_cache_usage, 0);
  st->Cancel();
  GenerateUpdate done = Collect(st);
  EXPECT_EQ(done.finish_reason, "cancelled");
  EXPECT_EQ(done.status.code(), absl::StatusCode::kCancelled);
  EXPECT_LT(done.generated_tokens, 1000);
  EXPECT_EQ(scheduler_->Stats().kv_cache_usage, 0);
  EXPECT_EQ(scheduler_->Stats().running, 0);

  auto late = core_->StartGenerate(p, absl::Now() + absl::Milliseconds(30));
  ASSERT_TRUE(late.ok());
  GenerateUpdate d = Collect(*late);
  EXPECT_EQ(d.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(scheduler_->Stats().kv_cache_usage, 0);
}

TEST_P(SchedulerTest, HigherPriorityJoinsFirst) {
  SchedulerOptions so;
  so.max_running = 1;
  Make(so);
  GenerateParams p;
  p.prompt = "Once";
  // Long enough (near the 2048-token context) to still hold the slot while the others
  // queue, even on a fast engine; 450 tokens took only ~20 ms and raced the queueing.
  p.max_new_tokens = 2000;
  p.ignore_eos = true;
  auto first = Start(p);  // occupies the only slot
  p.max_new_tokens = 2;
  std::vector<std::shared_ptr<RequestState>> low;
  for (int i = 0; i < 3; ++i) low.push_back(Start(p));
  p.priority = 5;
  auto high = Start(p);
  GenerateUpdate h = Collect(high);
  ASSERT_TRUE(h.status.ok()) << h.status;
  // No low request produced a token before the high one had finished. (The low
  // ones arrived earlier, so their time to first token, measured from their own
  // arrival, exceeds the high one's end-to-end time exactly when that holds; no
  // check of "not finished yet" that a slow test thread could race.)
  for (auto& l : low) {
    GenerateUpdate u = Collect(l);
    ASSERT_TRUE(u.status.ok()) << u.status;
    EXPECT_GT(u.timings.ttft_ms, h.timings.e2e_ms);
    EXPECT_GT(u.timings.queue_ms, h.timings.queue_ms);
  }
  Collect(first);
}

TEST_P(SchedulerTest, StopStringsAndStopTokens) {
  Make();
  GenerateParams p;
  p.prompt = "Once upon a time";
  p.max_new_tokens = 60;
  GenerateUpdate full = Collect(Start(p));
  const size_t pos = full.text.find("Lily");
  ASSERT_NE(pos, std::string::npos) << full.text;
  p.stop = {"Lily"};
  GenerateUpdate cut = Collect(Start(p));
  EXPECT_EQ(cut.finish_reason, "stop");
  EXPECT_EQ(cut.text, full.text.substr(0, pos));
  p.stop.clear();
  p.stop_token_ids = {full.tokens[3]};
  GenerateUpdate st = Collect(Start(p));
  EXPECT_EQ(st.finish_reason, "stop");
  EXPECT_EQ(st.tokens, std::vector<int>(full.tokens.begin(), full.tokens.begin() + 3));
}

TEST_P(SchedulerTest, QualityFloorPicksTheSmallestRankThatMeetsIt) {
  Make();
  GenerateParams p;
  p.prompt = "Once";
  p.max_new_tokens = 2;
  p.adapter_id = "r16";  // profile: rank r has ppl exp(1 + 1/r) (server_test_util.cc)
  p.slo_max_perplexity = std::exp(1.0 + 1.0 / 8) + 1e-9;
  EXPECT_EQ(Collect(Start(p)).rank_used, 8);
  p.slo_max_perplexity = 1.0;  // nothing meets it: the stored rank
  EXPECT_EQ(Collect(Start(p)).rank_used, 16);
}

TEST_P(SchedulerTest, DrainFinishesInFlightAndRefusesNewWork) {
  Make();
  GenerateParams p;
  p.prompt = "Once upon a time";
  p.max_new_tokens = 30;
  p.ignore_eos = true;
  auto st = Start(p);
  std::thread drainer([&] { scheduler_->Drain(absl::Seconds(30)); });
  while (!scheduler_->draining()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(core_->StartGenerate(p, absl::InfiniteFuture()).status().code(),
            absl::StatusCode::kUnavailable);
  GenerateUpdate u = Collect(st);
  drainer.join();
  EXPECT_TRUE(u.status.ok());
  EXPECT_EQ(u.generated_tokens, 30);
}

TEST_P(SchedulerTest, DrainCancelsWhatOutlivesTheGracePeriod) {
  Make();
  GenerateParams p;
  p.prompt = "Once upon a time";
  p.max_new_tokens = 2000;
  p.ignore_eos = true;
  auto st = Start(p);
  scheduler_->Drain(absl::Milliseconds(100));
  GenerateUpdate u = Collect(st);
  EXPECT_EQ(u.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_LT(u.generated_tokens, 2000);
}

INSTANTIATE_TEST_SUITE_P(Lanes, SchedulerTest, ::testing::Values(1, 2),
                         [](const ::testing::TestParamInfo<int>& i) {
                           return std::to_string(i.param) + "lane" + (i.param > 1 ? "s" : "");
                         });

TEST(Utf8Test, CompletePrefixAndSanitize) {
  const std::string s = "a\xC3\xA9\xE2\x82";  // a, é, start of €
  EXPECT_EQ(Utf8CompletePrefix(s, s.size()), 3u);
  EXPECT_EQ(Utf8CompletePrefix(s, 2), 1u);
  EXPECT_EQ(Utf8CompletePrefix("abc", 3), 3u);
  EXPECT_EQ(SanitizeUtf8(s), "a\xC3\xA9\xEF\xBF\xBD\xEF\xBF\xBD");
}

}  // namespace
}  // namespace eora::server
