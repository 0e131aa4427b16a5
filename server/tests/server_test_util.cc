#include "server/tests/server_test_util.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <regex>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "engine/adapter_io.h"
#include "engine/model_loader.h"
#include "engine/synthetic.h"
#include "tests/test_util.h"

namespace eora::server::testing {

TestModel& Stories() {
  static TestModel* m = [] {
    auto* t = new TestModel;
    auto w = LoadModel(eora::testing::Stories260kPath());
    if (!w.ok()) throw std::runtime_error(w.status().ToString());
    t->weights = std::make_shared<ModelWeights>(std::move(*w));
    t->pool = std::make_unique<ThreadPool>(1);
    t->model = std::make_unique<Model>(t->weights, t->pool.get());
    return t;
  }();
  return *m;
}

static void WriteAdapter(const std::string& dir, const ModelConfig& c, int rank, uint64_t seed) {
  WeightStorage fp32;
  fp32.bits = 32;
  auto a = MakeRandomAdapter("test", c, rank, fp32, seed, 0.1f);
  if (!a.ok()) throw std::runtime_error(a.status().ToString());
  AdapterMetadata meta;
  meta.method = "random";
  meta.rank = rank;
  meta.factor_bits = 32;
  meta.base_model = "stories260K";
  meta.base_fingerprint = ArchitectureFingerprint(c);
  for (int r = rank / 4; r <= rank; r *= 2)
    if (r > 0) meta.profile.push_back({r, 1.0 + 1.0 / r, std::exp(1.0 + 1.0 / r)});
  meta.extra["seed"] = std::to_string(seed);
  absl::Status s = WriteAdapterDir(dir, **a, meta, /*overwrite=*/true);
  if (!s.ok()) throw std::runtime_error(s.ToString());
}

void WriteRandomAdapter(const std::string& dir, int rank, uint64_t seed) {
  WriteAdapter(dir, Stories().model->config(), rank, seed);
}

void WriteForeignAdapter(const std::string& dir) {
  ModelConfig c = Stories().model->config();
  c.dim = 96;  // another architecture
  c.n_heads = 12;
  c.n_kv_heads = 6;
  c.head_dim = 8;
  WeightStorage fp32;
  fp32.bits = 32;
  auto a = MakeRandomAdapter("foreign", c, 4, fp32, 1, 0.1f);
  if (!a.ok()) throw std::runtime_error(a.status().ToString());
  AdapterMetadata meta;
  meta.method = "random";
  meta.rank = 4;
  meta.factor_bits = 32;
  meta.base_model = "other";
  meta.base_fingerprint = ArchitectureFingerprint(c);
  absl::Status s = WriteAdapterDir(dir, **a, meta, true);
  if (!s.ok()) throw std::runtime_error(s.ToString());
}

std::vector<int> OfflineGreedy(const std::string& prompt, const std::string& adapter_dir, int rank,
                               int max_new_tokens, KvDType kv_dtype) {
  // A Model of its own (Forward is not reentrant; the one in Stories() may be
  // stepping in a Scheduler right now), sharing the weights.
  TestModel& m = Stories();
  static std::mutex mu;
  static ThreadPool pool(1);
  static Model ref(m.weights, &pool);
  std::lock_guard<std::mutex> lock(mu);
  GenerationRequest req;
  req.prompt = m.weights->tokenizer->Encode(prompt, true);
  req.max_new_tokens = max_new_tokens;
  if (!adapter_dir.empty()) {
    auto a = LoadAdapterDir(adapter_dir, m.model->config(), "ref");
    if (!a.ok()) throw std::runtime_error(a.status().ToString());
    req.adapter = *a;
    req.rank = rank;
  }
  GeneratorOptions opt;
  opt.max_running = 1;
  opt.kv_dtype = kv_dtype;
  auto res = GenerateAll(&ref, {req}, opt);
  if (!res.ok()) throw std::runtime_error(res.status().ToString());
  return (*res)[0].tokens;
}

bool ServerProcess::Start(const std::string& store, const std::vector<std::string>& extra) {
  std::vector<std::string> args = {EORA_SERVER_BIN,
                                   "--model",
                                   eora::testing::Stories260kPath(),
                                   "--adapter-store",
                                   store,
                                   "--listen",
                                   "127.0.0.1:0",
                                   "--http-listen",
                                   "127.0.0.1:0",
                                   "--threads",
                                   "1"};
  args.insert(args.end(), extra.begin(), extra.end());
  return process_.Start(args, store + "/../server.log");
}

void ServerProcess::SendSigterm() { process_.Signal(SIGTERM); }

int ServerProcess::Terminate(int timeout_s) {
  SendSigterm();
  return Wait(timeout_s);
}

int RunCommand(const std::string& cmd, std::string* out) {
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return -1;
  char buf[4096];
  size_t n;
  out->clear();
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out->append(buf, n);
  const int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

}  // namespace eora::server::testing
