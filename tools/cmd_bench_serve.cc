// eora bench-serve: a load generator for eora-server (gRPC GenerateStream).
//
// Closed loop (--streams N): N client streams, each sends its next request when
// the previous one finished. Open loop (--rate R): requests arrive as a Poisson
// process of R per second, whatever the server's speed. Requests cycle through
// the --adapters x --ranks mix. Reports throughput, TTFT / TPOT / end-to-end
// percentiles (measured at the client) and errors by gRPC code.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "eora/v1/inference.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "tools/cli_args.h"
#include "tools/cli_common.h"
#include "tools/commands.h"

namespace eora::cli {
namespace {

using Clock = std::chrono::steady_clock;

struct Sample {
  bool ok = false;
  std::string code;
  double ttft_s = -1, tpot_s = -1, e2e_s = 0;
  int tokens = 0;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const double idx = p / 100.0 * (v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(idx)), hi = static_cast<size_t>(std::ceil(idx));
  return v[lo] + (v[hi] - v[lo]) * (idx - lo);
}

const char* CodeName(grpc::StatusCode c) {
  switch (c) {
    case grpc::OK: return "OK";
    case grpc::CANCELLED: return "CANCELLED";
    case grpc::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::NOT_FOUND: return "NOT_FOUND";
    case grpc::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::INTERNAL: return "INTERNAL";
    case grpc::UNAVAILABLE: return "UNAVAILABLE";
    default: return "OTHER";
  }
}

const char* const kPrompts[] = {
    "Once upon a time",          "One day, a little girl named Lily",
    "The cat sat on the mat",    "Tom and his dog went to the park",
    "There was a big red ball",  "The sun was shining and the birds",
    "A little boy found a box",  "Mom said it was time for bed",
};

}  // namespace

int RunBenchServe(int argc, char** argv) {
  Args args("eora bench-serve",
            "Load generator for eora-server. Closed loop with --streams N (each stream sends\n"
            "its next request when the previous finished) or open loop with --rate R\n"
            "(Poisson arrivals, R requests/s). Requests cycle through --adapters x --ranks\n"
            "and use GenerateStream (TTFT, TPOT and end-to-end latency measured at the\n"
            "client) or, with --unary, Generate (TTFT/TPOT as reported by the server).\n"
            "Prints throughput, p50/p90/p99 latencies and errors by gRPC code; exits 1 if\n"
            "any request failed.");
  args.Flag("target", "HOST:PORT", "", "eora-server gRPC address (required)");
  args.Flag("streams", "N", "1", "closed loop: concurrent streams");
  args.Flag("rate", "R", "", "open loop: Poisson arrival rate, requests/s (overrides --streams)");
  args.Flag("requests", "N", "64", "requests to send in total");
  args.Flag("adapters", "IDS", "", "comma-separated adapter ids to cycle through; '-' = base model; empty = base model only");
  args.Flag("ranks", "R,R", "0", "comma-separated ranks to cycle through (0 = the adapter's default)");
  args.Flag("max-new-tokens", "N", "64", "max_new_tokens of every request");
  args.Flag("prompt", "TEXT", "", "prompt of every request (default: cycle 8 short story openings)");
  args.Flag("temperature", "T", "0", "sampling temperature (0 = greedy)");
  args.Flag("timeout-s", "S", "120", "per-request deadline, seconds");
  args.Switch("ignore-eos", "generate exactly --max-new-tokens (sets ignore_eos)");
  args.Switch("unary", "unary Generate instead of GenerateStream (TTFT/TPOT: server timings)");
  args.Switch("json", "print the results as one JSON object");
  int rc = 0;
  if (!ParseOrExit(args, argc, argv, &rc)) return rc;
  const std::string cmd = "eora bench-serve";
  std::string err;
  int64_t streams, requests, max_new;
  double temperature, timeout_s, rate = 0;
  if (!args.Int("streams", &streams, &err) || !args.Int("requests", &requests, &err) ||
      !args.Int("max-new-tokens", &max_new, &err) || !args.Float("temperature", &temperature, &err) ||
      !args.Float("timeout-s", &timeout_s, &err) ||
      (args.Has("rate") && !args.Float("rate", &rate, &err)))
    return UsageError(cmd, err);
  if (!args.Has("target")) return UsageError(cmd, "--target is required");
  if (streams < 1) return UsageError(cmd, "--streams must be >= 1");
  if (requests < 1) return UsageError(cmd, "--requests must be >= 1");
  if (args.Has("rate") && !(rate > 0)) return UsageError(cmd, "--rate must be > 0");
  if (max_new < 1) return UsageError(cmd, "--max-new-tokens must be >= 1");
  std::vector<std::string> adapters;
  for (auto a : absl::StrSplit(args.Str("adapters"), ',', absl::SkipEmpty()))
    adapters.push_back(a == "-" ? "" : std::string(a));
  if (adapters.empty()) adapters.push_back("");
  std::vector<int> ranks;
  for (auto r : absl::StrSplit(args.Str("ranks"), ',', absl::SkipEmpty())) {
    int v = 0;
    try {
      v = std::stoi(std::string(r));
    } catch (...) {
      return UsageError(cmd, "--ranks: not a number: " + std::string(r));
    }
    if (v < 0) return UsageError(cmd, "--ranks: must be >= 0");
    ranks.push_back(v);
  }
  if (ranks.empty()) ranks.push_back(0);

  auto channel = grpc::CreateChannel(args.Str("target"), grpc::InsecureChannelCredentials());
  if (!channel->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10)))
    return Fail(cmd, absl::UnavailableError("cannot connect to " + args.Str("target")));
  auto stub = eora::v1::InferenceService::NewStub(channel);

  auto make_request = [&](int64_t i) {
    eora::v1::GenerateRequest req;
    const size_t a = static_cast<size_t>(i) % adapters.size();
    const size_t r = static_cast<size_t>(i / adapters.size()) % ranks.size();
    req.set_adapter_id(adapters[a]);
    if (!adapters[a].empty()) req.set_rank(ranks[r]);
    req.set_prompt(args.Has("prompt") ? args.Str("prompt")
                                      : kPrompts[i % (sizeof(kPrompts) / sizeof(kPrompts[0]))]);
    req.set_max_new_tokens(static_cast<uint32_t>(max_new));
    req.set_temperature(static_cast<float>(temperature));
    req.set_seed(static_cast<uint64_t>(i));
    req.set_ignore_eos(args.Has("ignore-eos"));
    return req;
  };
  auto run_one = [&](int64_t i) {
    Sample s;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1e3)));
    const auto t0 = Clock::now();
    if (args.Has("unary")) {
      eora::v1::GenerateResponse resp;
      grpc::Status st = stub->Generate(&ctx, make_request(i), &resp);
      s.ok = st.ok();
      s.code = CodeName(st.error_code());
      s.e2e_s = std::chrono::duration<double>(Clock::now() - t0).count();
      s.tokens = resp.token_ids_size();
      if (s.tokens > 0) s.ttft_s = resp.timings().ttft_ms() / 1e3;
      if (s.tokens > 1) s.tpot_s = resp.timings().tpot_ms() / 1e3;
      return s;
    }
    auto reader = stub->GenerateStream(&ctx, make_request(i));
    eora::v1::GenerateResponse msg;
    Clock::time_point first, last;
    while (reader->Read(&msg)) {
      if (msg.token_ids_size() > 0) {
        last = Clock::now();
        if (s.tokens == 0) first = last;
        s.tokens += msg.token_ids_size();
      }
    }
    grpc::Status st = reader->Finish();
    const auto t1 = Clock::now();
    s.ok = st.ok();
    s.code = CodeName(st.error_code());
    s.e2e_s = std::chrono::duration<double>(t1 - t0).count();
    if (s.tokens > 0) s.ttft_s = std::chrono::duration<double>(first - t0).count();
    if (s.tokens > 1) s.tpot_s = std::chrono::duration<double>(last - first).count() / (s.tokens - 1);
    return s;
  };

  std::vector<Sample> samples(static_cast<size_t>(requests));
  const auto start = Clock::now();
  if (args.Has("rate")) {
    std::mt19937_64 rng(12345);
    std::exponential_distribution<double> gap(rate);
    std::vector<std::thread> threads;
    auto next = start;
    for (int64_t i = 0; i < requests; ++i) {
      std::this_thread::sleep_until(next);
      threads.emplace_back([&, i] { samples[static_cast<size_t>(i)] = run_one(i); });
      next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
    }
    for (auto& t : threads) t.join();
  } else {
    std::atomic<int64_t> counter{0};
    std::vector<std::thread> threads;
    for (int64_t w = 0; w < streams; ++w)
      threads.emplace_back([&] {
        for (int64_t i; (i = counter.fetch_add(1)) < requests;)
          samples[static_cast<size_t>(i)] = run_one(i);
      });
    for (auto& t : threads) t.join();
  }
  const double duration = std::chrono::duration<double>(Clock::now() - start).count();

  std::vector<double> ttft, tpot, e2e;
  std::map<std::string, int> errors;
  int64_t ok = 0, tokens = 0;
  for (const auto& s : samples) {
    if (!s.ok) {
      ++errors[s.code];
      continue;
    }
    ++ok;
    tokens += s.tokens;
    if (s.ttft_s >= 0) ttft.push_back(s.ttft_s * 1e3);
    if (s.tpot_s >= 0) tpot.push_back(s.tpot_s * 1e3);
    e2e.push_back(s.e2e_s * 1e3);
  }
  const double tok_s = tokens / duration, req_s = ok / duration;
  if (args.Has("json")) {
    nlohmann::json j;
    j["target"] = args.Str("target");
    j["mode"] = args.Has("rate") ? "open" : "closed";
    j["rpc"] = args.Has("unary") ? "Generate" : "GenerateStream";
    if (args.Has("rate")) j["rate"] = rate;
    else j["streams"] = streams;
    j["requests"] = requests;
    j["ok"] = ok;
    j["errors"] = errors;
    j["duration_s"] = duration;
    j["requests_per_s"] = req_s;
    j["output_tokens"] = tokens;
    j["output_tokens_per_s"] = tok_s;
    for (auto [name, v] : {std::pair<const char*, std::vector<double>*>{"ttft_ms", &ttft},
                           {"tpot_ms", &tpot},
                           {"e2e_ms", &e2e}})
      j[name] = {{"p50", Percentile(*v, 50)}, {"p90", Percentile(*v, 90)}, {"p99", Percentile(*v, 99)}};
    std::printf("%s\n", j.dump(2).c_str());
  } else {
    std::printf("target %s, %s, %lld requests, max_new_tokens %lld\n", args.Str("target").c_str(),
                args.Has("rate") ? ("open loop " + std::to_string(rate) + " req/s").c_str()
                                 : ("closed loop " + std::to_string(streams) + " streams").c_str(),
                static_cast<long long>(requests), static_cast<long long>(max_new));
    std::printf("ok %lld, errors %lld", static_cast<long long>(ok),
                static_cast<long long>(requests - ok));
    for (const auto& [code, n] : errors) std::printf(" %s=%d", code.c_str(), n);
    std::printf("\nduration %.2f s, %.2f req/s, %lld output tokens, %.1f output tokens/s\n", duration,
                req_s, static_cast<long long>(tokens), tok_s);
    for (auto [name, v] : {std::pair<const char*, std::vector<double>*>{"TTFT ms", &ttft},
                           {"TPOT ms", &tpot},
                           {"E2E  ms", &e2e}})
      std::printf("%s  p50 %8.2f  p90 %8.2f  p99 %8.2f\n", name, Percentile(*v, 50),
                  Percentile(*v, 90), Percentile(*v, 99));
  }
  return errors.empty() ? 0 : 1;
}

}  // namespace eora::cli
