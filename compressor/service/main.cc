// eora-compressor: the compression worker service (eora.v1.CompressionService).
//
// main parses flags into options, opens the job store, wires the core, the gRPC
// and HTTP servers, and owns shutdown: SIGTERM/SIGINT are blocked in every thread
// and taken with sigwait() on the main thread, which drains (no new jobs, running
// jobs get --grace-period-s, then stop at a layer boundary and are failed with a
// reason; queued jobs stay queued for the next start) and stops the servers.
// Exit status 0 after a drain, 1 on startup failure, 2 on usage errors.
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_split.h"
#include "compressor/service/compressor_core.h"
#include "compressor/service/grpc_service.h"
#include "compressor/service/metrics.h"
#include "compressor/service/publisher.h"
#include "compressor/service/sqlite_job_store.h"
#include "daemon/daemon.h"
#include "daemon/http_server.h"
#include "tools/cli_args.h"

namespace {

using eora::cli::Args;
namespace svc = eora::compress::service;

void Log(const std::string& msg) {
  std::fprintf(stderr, "eora-compressor: %s\n", msg.c_str());
  std::fflush(stderr);
}

int Usage(const std::string& msg) {
  std::fprintf(stderr, "eora-compressor: %s\nRun 'eora-compressor --help' for the flags.\n",
               msg.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  Args args("eora-compressor",
            "The compression worker: turns uploaded calibration sets into EoRA adapters in the\n"
            "adapter store and tells the serving daemons (eora.v1.CompressionService,\n"
            "grpc.health.v1, reflection; Prometheus /metrics, /healthz, /readyz over HTTP).\n"
            "Jobs are kept in a SQLite database; a job that was running when the process died\n"
            "is failed with a reason at the next start, queued jobs are resumed.\n"
            "SIGTERM drains (running jobs get --grace-period-s, then stop) and exits 0.");
  args.Flag(
      "store", "DIR", "",
      "adapter store (the servers' --adapter-store): adapters are written to DIR/<id>/ (required)");
  args.Flag("db", "PATH", "", "SQLite job database file, created if missing (required)");
  args.Flag("models", "NAME=PATH[,...]", "",
            "base models jobs may use: a .gguf file or Hugging Face directory each; the first is "
            "the default tokenizer of uploads (required)");
  args.Flag("data-dir", "DIR", "",
            "calibration sets and compressed bases (default: DIR/.eora-compressor of --store)");
  args.Flag("listen", "HOST:PORT", "0.0.0.0:50052",
            "gRPC address; port 0 picks a free port (logged)");
  args.Flag("http-listen", "HOST:PORT", "0.0.0.0:8081",
            "HTTP address for /metrics, /healthz, /readyz; port 0 picks one");
  args.Flag("publish-to", "HOST:PORT[,...]", "",
            "eora-servers told to load each finished adapter (AdapterService.LoadAdapter)");
  args.Flag("workers", "N", "1", "jobs that run at once");
  args.Flag("max-queue", "N", "16",
            "queued jobs before CreateAdapterJob returns RESOURCE_EXHAUSTED");
  args.Flag("threads", "N", std::to_string(hw), "compute threads of each running job");
  args.Flag("max-upload-mb", "MB", "256",
            "largest calibration upload, MiB (RESOURCE_EXHAUSTED above)");
  args.Flag("publish-timeout-s", "S", "30", "deadline of each LoadAdapter call");
  args.Flag("grace-period-s", "S", "30",
            "on SIGTERM, how long running jobs may take before they are stopped");
  args.Flag("layer-delay-ms", "MS", "0", "testing: sleep this long after every layer of a job");

  std::string err;
  if (!args.Parse(argc, argv, 1, &err)) return Usage(err);
  if (args.help_requested()) {
    std::fputs(args.Help().c_str(), stdout);
    return 0;
  }
  for (const char* f : {"store", "db", "models"})
    if (!args.Has(f)) return Usage(std::string("--") + f + " is required");
  int64_t workers, max_queue, threads, upload_mb, delay_ms;
  double publish_timeout, grace;
  if (!args.Int("workers", &workers, &err) || !args.Int("max-queue", &max_queue, &err) ||
      !args.Int("threads", &threads, &err) || !args.Int("max-upload-mb", &upload_mb, &err) ||
      !args.Int("layer-delay-ms", &delay_ms, &err) ||
      !args.Float("publish-timeout-s", &publish_timeout, &err) ||
      !args.Float("grace-period-s", &grace, &err))
    return Usage(err);
  if (workers < 1 || max_queue < 0 || threads < 1 || upload_mb < 1 || delay_ms < 0 ||
      publish_timeout <= 0 || grace < 0)
    return Usage("a numeric flag is out of range (see --help)");
  auto listen = eora::daemon::ParseListenFlags(args.Str("listen"), args.Str("http-listen"));
  if (!listen.ok()) return Usage(std::string(listen.status().message()));

  svc::CoreOptions opt;
  opt.adapter_store = args.Str("store");
  opt.data_dir = args.Has("data-dir")
                     ? args.Str("data-dir")
                     : (std::filesystem::path(opt.adapter_store) / ".eora-compressor").string();
  std::error_code ec;
  for (const auto& item : absl::StrSplit(args.Str("models"), ',', absl::SkipEmpty())) {
    const std::string entry(item);
    const size_t eq = entry.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == entry.size())
      return Usage("--models: expected NAME=PATH, got '" + entry + "'");
    const std::string name = entry.substr(0, eq), path = entry.substr(eq + 1);
    if (auto s = svc::ValidateStoreName(name, "--models name"); !s.ok())
      return Usage(std::string(s.message()));
    for (const auto& [n, p] : opt.models)
      if (n == name) return Usage("--models: '" + name + "' is given twice");
    if (!std::filesystem::exists(path, ec))
      return Usage("--models: " + name + ": '" + path + "' does not exist");
    opt.models.emplace_back(name, path);
  }
  if (opt.models.empty()) return Usage("--models: at least one NAME=PATH is required");
  for (const auto& t : absl::StrSplit(args.Str("publish-to"), ',', absl::SkipEmpty())) {
    std::string h;
    int p;
    if (auto s = eora::daemon::ParseHostPort(std::string(t), "publish-to", &h, &p);
        !s.ok() || p == 0)
      return Usage("--publish-to: expected HOST:PORT with a non-zero port, got '" + std::string(t) +
                   "'");
    opt.publish_to.emplace_back(t);
  }
  opt.workers = static_cast<int>(workers);
  opt.max_queue = static_cast<int>(max_queue);
  opt.threads_per_job = static_cast<int>(threads);
  opt.max_upload_bytes = static_cast<uint64_t>(upload_mb) << 20;
  opt.layer_delay_ms = static_cast<int>(delay_ms);
  opt.log = Log;

  // Block the shutdown signals before any thread starts; main takes them with sigwait.
  eora::daemon::BlockShutdownSignals();

  auto store = svc::SqliteJobStore::Open(args.Str("db"));
  if (!store.ok()) {
    Log("cannot open the job store: " + store.status().ToString());
    return 1;
  }
  auto prom = std::make_shared<prometheus::Registry>();
  svc::CompressorMetrics metrics(prom);
  const absl::Duration pub_timeout = absl::Seconds(publish_timeout);
  svc::CompressorCore core(
      opt, store->get(),
      [pub_timeout](const std::string& target, const std::string& id) {
        return svc::PublishToServer(target, id, pub_timeout);
      },
      &metrics);
  if (absl::Status s = core.Start(); !s.ok()) {
    Log("cannot start: " + s.ToString());
    return 1;
  }

  svc::CompressionServiceImpl service(&core, &metrics);
  int bound_grpc = 0;
  auto server = eora::daemon::StartGrpcServer(listen->grpc_host, listen->grpc_port, {&service},
                                                   &bound_grpc);
  if (!server.ok()) {
    Log(std::string(server.status().message()));
    core.Drain(absl::ZeroDuration());
    return 1;
  }
  std::atomic<bool> ready{true};
  eora::daemon::HttpServer http(prom, [&] { return ready.load(); });
  auto http_bound = http.Start(listen->http_host, listen->http_port);
  if (!http_bound.ok()) {
    Log(http_bound.status().ToString());
    (*server)->Shutdown();
    core.Drain(absl::ZeroDuration());
    return 1;
  }
  std::string models;
  for (const auto& [n, p] : opt.models) models += (models.empty() ? "" : ", ") + n + "=" + p;
  Log("job store " + args.Str("db") + " (schema v" + std::to_string((*store)->schema_version()) +
      "); adapter store " + opt.adapter_store + "; data " + opt.data_dir + "; models " + models +
      "; " + std::to_string(workers) + " worker(s), queue " + std::to_string(max_queue) + ", " +
      std::to_string(threads) + " thread(s) per job" +
      (opt.publish_to.empty() ? "" : "; publishing to " + args.Str("publish-to")));
  eora::daemon::LogListening(Log, *listen, bound_grpc, *http_bound);

  eora::daemon::WaitAndDrain(Log, args.Str("grace-period-s"), &ready, server->get(), &http,
                             [&] { core.Drain(absl::Seconds(grace)); });
  return 0;
}
