// AdapterRegistry without sockets or files: an injected loader builds random
// adapters (and can be slowed down or made to fail).
#include "server/adapter_registry.h"

#include <atomic>
#include <chrono>
#include <filesystem>
#include <thread>

#include "engine/synthetic.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "server/metrics.h"
#include "tests/test_util.h"

namespace eora::server {
namespace {

namespace fs = std::filesystem;

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    config_ = *SyntheticConfig("stories260k");
    store_ = eora::testing::MakeTempDir("eora-registry");
    for (const char* id : {"a", "b", "c", "d", "slow", "bad", "foreign"})
      fs::create_directories(fs::path(store_) / id);
    WeightStorage fp32;
    fp32.bits = 32;
    adapter_bytes_ = (*MakeRandomAdapter("x", config_, 4, fp32, 1))->bytes();
  }
  void TearDown() override { fs::remove_all(store_); }

  AdapterLoader Loader() {
    return [this](const std::string& dir, const std::string& id) -> absl::StatusOr<LoadedAdapter> {
      ++loads_;
      if (id == "slow") std::this_thread::sleep_for(std::chrono::milliseconds(300));
      if (id == "bad") return absl::InvalidArgumentError(dir + ": broken");
      if (id == "foreign") return absl::FailedPreconditionError("made for another base model");
      WeightStorage fp32;
      fp32.bits = 32;
      auto a = MakeRandomAdapter(id, config_, 4, fp32, seed_.load());
      if (!a.ok()) return a.status();
      LoadedAdapter out;
      out.adapter = *a;
      out.metadata.rank = 4;
      out.metadata.profile = {{2, 1.5, 4.48}, {4, 1.2, 3.32}};
      return out;
    };
  }
  AdapterRegistryOptions Options(int device_adapters, int host_adapters) {
    AdapterRegistryOptions o;
    o.store_dir = store_;
    o.device_budget_bytes = adapter_bytes_ * device_adapters;
    o.host_budget_bytes = adapter_bytes_ * host_adapters;
    o.load_wait = absl::Seconds(5);
    return o;
  }

  ModelConfig config_;
  std::string store_;
  size_t adapter_bytes_ = 0;
  std::atomic<int> loads_{0};
  std::atomic<uint64_t> seed_{1};
};

TEST_F(RegistryTest, RejectsIdsThatAreNotPlainNames) {
  AdapterRegistry r(Options(4, 4), Loader());
  for (const std::string& bad : std::vector<std::string>{"", ".", "..", "../a", "a/b", "/etc", "a\\b", "sp ace",
                          std::string(129, 'x')}) {
    auto h = r.Acquire(bad);
    EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(h.status().message().find("adapter_id"), std::string::npos);
  }
  EXPECT_TRUE(r.ValidateId("task-1.v2_x").ok());
  EXPECT_TRUE(r.ValidateId(std::string(128, 'x')).ok());
  EXPECT_EQ(loads_, 0);
}

TEST_F(RegistryTest, LoadsOnFirstUseAndReportsErrors) {
  AdapterRegistry r(Options(4, 4), Loader());
  EXPECT_EQ(r.Acquire("missing").status().code(), absl::StatusCode::kNotFound);
  auto info = r.Get("a");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state, AdapterState::kOnDisk);
  {
    auto h = r.Acquire("a");
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(h->adapter()->max_rank(), 4);
    EXPECT_EQ(h->id(), "a");
    auto i = r.Get("a");
    EXPECT_EQ(i->state, AdapterState::kReady);
    EXPECT_EQ(i->tier, Tier::kDevice);
    EXPECT_EQ(i->active_sequences, 1);
    EXPECT_EQ(i->bytes, adapter_bytes_);
  }
  EXPECT_EQ(r.Get("a")->active_sequences, 0);
  EXPECT_TRUE(r.Acquire("a").ok());
  EXPECT_EQ(loads_, 1);  // the second use is a hit
  EXPECT_EQ(r.Acquire("bad").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(r.Get("bad")->state, AdapterState::kFailed);
  EXPECT_EQ(r.Acquire("foreign").status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(RegistryTest, ConcurrentRequestsWaitForOneLoad) {
  AdapterRegistry r(Options(4, 4), Loader());
  std::vector<std::thread> ts;
  std::atomic<int> ok{0};
  for (int i = 0; i < 8; ++i)
    ts.emplace_back([&] {
      auto h = r.Acquire("slow");
      if (h.ok() && h->adapter()) ++ok;
    });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(r.Get("slow")->state, AdapterState::kLoading);
  for (auto& t : ts) t.join();
  EXPECT_EQ(ok, 8);
  EXPECT_EQ(loads_, 1);
}

TEST_F(RegistryTest, WaitingForALoadIsBounded) {
  AdapterRegistryOptions o = Options(4, 4);
  o.load_wait = absl::Milliseconds(50);
  AdapterRegistry r(o, Loader());
  auto h = r.Acquire("slow");
  EXPECT_EQ(h.status().code(), absl::StatusCode::kUnavailable);
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_TRUE(r.Acquire("slow").ok());  // the load went on and finished
}

TEST_F(RegistryTest, LruEvictionAcrossTiersSkipsPinned) {
  auto prom = std::make_shared<prometheus::Registry>();
  ServerMetrics metrics(prom);
  AdapterRegistry r(Options(2, 1), Loader(), &metrics);
  auto pin_a = r.Acquire("a");
  ASSERT_TRUE(pin_a.ok());
  ASSERT_TRUE(r.Acquire("b").ok());
  ASSERT_TRUE(r.Acquire("c").ok());  // DEVICE holds 2: b (unpinned LRU) -> HOST
  EXPECT_EQ(r.Get("a")->tier, Tier::kDevice);  // pinned, though older
  EXPECT_EQ(r.Get("b")->tier, Tier::kHost);
  EXPECT_EQ(r.Get("c")->tier, Tier::kDevice);
  ASSERT_TRUE(r.Acquire("d").ok());  // c -> HOST, HOST over budget: b -> DISK
  EXPECT_EQ(r.Get("b")->state, AdapterState::kOnDisk);
  EXPECT_EQ(r.Get("c")->tier, Tier::kHost);
  RegistryStats s = r.Stats();
  EXPECT_LE(s.bytes[0], 2 * adapter_bytes_);
  EXPECT_LE(s.bytes[1], 1 * adapter_bytes_);
  const int loads_before = loads_;
  ASSERT_TRUE(r.Acquire("c").ok());  // HOST hit: promoted, no load
  EXPECT_EQ(loads_, loads_before);
  EXPECT_EQ(r.Get("c")->tier, Tier::kDevice);
  const std::string text = metrics.Serialize();
  EXPECT_NE(text.find("eora_adapter_evictions_total{tier=\"device\"} 3"), std::string::npos) << text;
  EXPECT_NE(text.find("eora_adapter_evictions_total{tier=\"host\"} 1"), std::string::npos);
  EXPECT_NE(text.find("eora_adapter_cache_hits_total{tier=\"host\"} 1"), std::string::npos);
  EXPECT_NE(text.find("eora_adapter_loads_total{result=\"ok\"} 4"), std::string::npos);
}

TEST_F(RegistryTest, DeviceFullOfPinnedAdaptersRefusesAfterWaiting) {
  AdapterRegistryOptions o = Options(1, 0);
  o.load_wait = absl::Milliseconds(200);
  AdapterRegistry r(o, Loader());
  auto a = r.Acquire("a");
  ASSERT_TRUE(a.ok());
  auto b = r.Acquire("b");
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted) << b.status();
  a->Reset();
  EXPECT_TRUE(r.Acquire("b").ok());
}

TEST_F(RegistryTest, ReplaceIsAtomicAndRunningSequencesKeepTheirVersion) {
  AdapterRegistry r(Options(4, 4), Loader());
  auto old = r.Acquire("a");
  ASSERT_TRUE(old.ok());
  const uint64_t v1 = old->version();
  const LowRankAdapter* a1 = old->adapter().get();
  seed_ = 2;
  auto loaded = r.Load("a", std::nullopt, /*replace=*/true);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_GT(loaded->first.version, v1);
  auto fresh = r.Acquire("a");
  ASSERT_TRUE(fresh.ok());
  EXPECT_EQ(fresh->version(), loaded->first.version);
  EXPECT_NE(fresh->adapter().get(), a1);
  EXPECT_EQ(old->adapter().get(), a1);  // still usable
  EXPECT_EQ(old->version(), v1);
  // The old version stays charged until released.
  EXPECT_EQ(r.Stats().bytes[0], 2 * adapter_bytes_);
  old->Reset();
  EXPECT_EQ(r.Stats().bytes[0], adapter_bytes_);
  // Load without replace of a resident id is a no-op.
  auto again = r.Load("a", std::nullopt, false);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->first.version, fresh->version());
  EXPECT_EQ(again->second, 0.0);
}

TEST_F(RegistryTest, UnloadWaitsForUsersAndLaterRequestsReload) {
  AdapterRegistry r(Options(4, 4), Loader());
  auto h = r.Acquire("a");
  ASSERT_TRUE(h.ok());
  const uint64_t v1 = h->version();
  // With a short deadline the unload reports DEADLINE_EXCEEDED while in use.
  auto quick = r.Unload("a", absl::Now() + absl::Milliseconds(50));
  EXPECT_EQ(quick.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(r.Get("a")->state, AdapterState::kUnloading);
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    h->Reset();
  });
  auto waited = r.Unload("a");
  releaser.join();
  ASSERT_TRUE(waited.ok()) << waited.status();
  EXPECT_GE(*waited, 100.0);
  EXPECT_EQ(r.Get("a")->state, AdapterState::kOnDisk);
  EXPECT_EQ(r.Stats().bytes[0], 0u);
  auto again = r.Acquire("a");  // still in the store: loads a new version
  ASSERT_TRUE(again.ok());
  EXPECT_GT(again->version(), v1);
  EXPECT_EQ(r.Unload("missing").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(RegistryTest, LoadFromPathAndListing) {
  AdapterRegistry r(Options(4, 4), Loader());
  const std::string elsewhere = eora::testing::MakeTempDir("eora-adapter-path");
  auto loaded = r.Load("custom", elsewhere, false);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->first.path, elsewhere);
  EXPECT_TRUE(r.Acquire("custom").ok());
  auto list = r.List(/*include_store=*/true);
  std::set<std::string> ids;
  for (const auto& i : list) ids.insert(i.id);
  EXPECT_TRUE(ids.count("custom") && ids.count("a") && ids.count("slow"));
  EXPECT_EQ(r.List(false).size(), 1u);
  ASSERT_TRUE(r.Unload("custom").ok());
  // Forgotten after unload: not in the store.
  EXPECT_EQ(r.Acquire("custom").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(r.Load("x", "/nonexistent/dir", false).status().code(), absl::StatusCode::kNotFound);
  AdapterRegistryOptions o = Options(4, 4);
  o.allow_paths = false;
  AdapterRegistry locked(o, Loader());
  EXPECT_EQ(locked.Load("custom", elsewhere, false).status().code(),
            absl::StatusCode::kPermissionDenied);
  fs::remove_all(elsewhere);
}

}  // namespace
}  // namespace eora::server
