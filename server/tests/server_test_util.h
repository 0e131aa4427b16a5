// Helpers shared by the server tests: the bundled model, random adapters written
// as adapter directories, offline (in-process engine) reference generations,
// and a real eora-server child process.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/generator.h"
#include "engine/lowrank.h"
#include "engine/model.h"
#include "engine/model_weights.h"
#include "engine/thread_pool.h"
#include "tests/daemon_process.h"

namespace eora::server::testing {

// stories260K loaded once per process (with its own 1-thread pool). Its Model
// is for one user at a time (a Scheduler); OfflineGreedy uses another.
struct TestModel {
  std::shared_ptr<ModelWeights> weights;
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<Model> model;
};
TestModel& Stories();

// Writes a random rank-`rank` adapter for stories260K (factor scale 0.1, large
// enough to change greedy output) to `dir`; overwrites.
void WriteRandomAdapter(const std::string& dir, int rank, uint64_t seed);
// Writes an adapter made for another architecture (stories110m shapes).
void WriteForeignAdapter(const std::string& dir);

// Greedy tokens of the offline engine (one sequence alone), adapter from `dir`
// ("" = base) at `rank` (0 = stored rank), with a KV cache of type `kv_dtype`.
std::vector<int> OfflineGreedy(const std::string& prompt, const std::string& adapter_dir, int rank,
                               int max_new_tokens, KvDType kv_dtype = KvDType::kF32);

// A running eora-server child (tests/daemon_process.h). Start() waits for the
// "gRPC listening on" log line.
class ServerProcess {
 public:
  // Extra flags are appended to --model/--adapter-store/--listen/--http-listen.
  bool Start(const std::string& store, const std::vector<std::string>& extra_flags = {});
  // SIGTERM and wait; returns the exit status (or -1 if killed by a signal).
  int Terminate(int timeout_s = 60);
  void SendSigterm();
  int Wait(int timeout_s) { return process_.Wait(timeout_s); }
  std::string grpc_target() const { return process_.grpc_target(); }
  int http_port() const { return process_.http_port(); }
  std::string Log() const { return process_.Log(); }

 private:
  eora::testing::DaemonProcess process_;
};

// Runs a shell command, returns its exit status and stdout.
int RunCommand(const std::string& cmd, std::string* out);

}  // namespace eora::server::testing
