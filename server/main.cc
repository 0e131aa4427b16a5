// eora-server: serves one base model and many EoRA adapters over gRPC.
//
// main parses flags into options, wires the parts together, and owns shutdown:
// SIGTERM/SIGINT are blocked in every thread and taken with sigwait() on the
// main thread, which then drains (stop accepting, let in-flight requests finish
// within --grace-period-s, cancel the rest) and stops the gRPC and HTTP servers
// from a normal thread. Exit status 0 after a drain, 1 on startup failure, 2 on
// usage errors.
#include <atomic>
#include <csignal>
#include <filesystem>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "absl/strings/str_split.h"
#include "engine/adapter_io.h"
#include "engine/compressed_model.h"
#include "engine/model.h"
#include "engine/model_loader.h"
#include "engine/thread_pool.h"
#include "daemon/daemon.h"
#include "daemon/http_server.h"
#include "grpcpp/grpcpp.h"
#include "server/adapter_registry.h"
#include "server/grpc_services.h"
#include "server/metrics.h"
#include "server/scheduler.h"
#include "server/serving_core.h"
#include "tools/cli_args.h"
#include "tools/kv_dtype_flag.h"

namespace {

using eora::cli::Args;

void Log(const std::string& msg) {
  std::fprintf(stderr, "eora-server: %s\n", msg.c_str());
  std::fflush(stderr);
}

int Usage(const std::string& msg) {
  std::fprintf(stderr, "eora-server: %s\nRun 'eora-server --help' for the flags.\n", msg.c_str());
  return 2;
}

std::string DefaultThreads() {
  const unsigned n = std::thread::hardware_concurrency();
  return std::to_string(n == 0 ? 1 : n);
}

}  // namespace

int main(int argc, char** argv) {
  Args args("eora-server",
            "Serves a (compressed) base model and per-task EoRA adapters over gRPC\n"
            "(eora.v1.InferenceService, eora.v1.AdapterService, grpc.health.v1, reflection),\n"
            "with Prometheus /metrics, /healthz and /readyz over HTTP. SIGTERM drains and exits 0.");
  args.Flag("model", "PATH", "", "base model: a .gguf file or a Hugging Face checkpoint directory (required)");
  args.Flag("compressed", "DIR", "", "serve this compressed base model directory (eora compress); --model must have the same architecture");
  args.Flag("adapter-store", "DIR", "", "adapter store: one PEFT adapter directory per id, DIR/<id>/ (required)");
  args.Flag("listen", "HOST:PORT", "0.0.0.0:50051", "gRPC address; port 0 picks a free port (logged)");
  args.Flag("http-listen", "HOST:PORT", "0.0.0.0:8080", "HTTP address for /metrics, /healthz, /readyz; port 0 picks one");
  args.Flag("threads", "N", DefaultThreads(),
            "engine threads: a step's products are split across them, or, with several --lanes, "
            "each lane gets threads / lanes of them");
  args.Flag("lanes", "N", "0",
            "independent step loops, each with its own share of --max-running and of the KV cache "
            "and its own threads; new requests go to the lane with the fewest sequences. 0 = one per "
            "thread for a model as small as stories260K (a step's products too small to split), "
            "else 1");
  args.Flag("max-running", "N", "32", "sequences in one engine step (batch size); with several lanes, in all lanes together");
  args.Flag("max-queue", "N", "256", "requests waiting to join the batch before RESOURCE_EXHAUSTED");
  args.Flag("max-step-tokens", "N", "512", "token budget of one step (decode + prefill chunks)");
  args.Flag("kv-cache-tokens", "N", "0",
            "KV cache positions in total, divided among the lanes (a request must fit one lane's share); "
            "0 = max-running x context");
  eora::cli::DeclareKvDTypeFlag(args);
  args.Flag("default-max-new-tokens", "N", "128", "max_new_tokens when a request leaves it 0");
  args.Flag("stream-interval", "N", "1", "GenerateStream: one message per N tokens (the first token at once), like vLLM's --stream-interval");
  args.Flag("device-cache-mb", "MB", "256", "byte budget of the DEVICE adapter tier (RAM on CPU), MiB");
  args.Flag("host-cache-mb", "MB", "1024", "byte budget of the HOST adapter tier, MiB");
  args.Flag("adapter-load-timeout-s", "S", "30", "how long a request waits for its adapter to load");
  args.Flag("preload", "IDS", "", "comma-separated adapter ids to load from the store at startup");
  args.Flag("grace-period-s", "S", "30", "on SIGTERM, how long in-flight requests may take before they are cancelled");
  args.Switch("no-adapter-paths", "refuse LoadAdapter requests that name a directory path");

  std::string err;
  if (!args.Parse(argc, argv, 1, &err)) return Usage(err);
  if (args.help_requested()) {
    std::fputs(args.Help().c_str(), stdout);
    return 0;
  }
  int64_t threads, lanes, max_running, max_queue, step_tokens, kv_tokens, def_new, dev_mb, host_mb,
      stream_interval;
  double load_timeout, grace;
  if (!args.Int("threads", &threads, &err) || !args.Int("lanes", &lanes, &err) ||
      !args.Int("max-running", &max_running, &err) ||
      !args.Int("max-queue", &max_queue, &err) || !args.Int("max-step-tokens", &step_tokens, &err) ||
      !args.Int("kv-cache-tokens", &kv_tokens, &err) ||
      !args.Int("default-max-new-tokens", &def_new, &err) ||
      !args.Int("stream-interval", &stream_interval, &err) ||
      !args.Int("device-cache-mb", &dev_mb, &err) || !args.Int("host-cache-mb", &host_mb, &err) ||
      !args.Float("adapter-load-timeout-s", &load_timeout, &err) ||
      !args.Float("grace-period-s", &grace, &err))
    return Usage(err);
  if (!args.Has("model")) return Usage("--model is required");
  if (!args.Has("adapter-store")) return Usage("--adapter-store is required");
  const absl::StatusOr<eora::KvDType> kv_dtype = eora::cli::KvDTypeFlag(args);
  if (!kv_dtype.ok()) return Usage(std::string(kv_dtype.status().message()));
  if (threads < 1) return Usage("--threads must be >= 1");
  if (lanes < 0 || lanes > threads) return Usage("--lanes must be between 0 (automatic) and --threads");
  if (max_running < 1 || max_queue < 0 || step_tokens < 1 || kv_tokens < 0 || def_new < 1 ||
      dev_mb < 1 || host_mb < 0 || load_timeout <= 0 || grace < 0 || stream_interval < 1 ||
      stream_interval > 4096)
    return Usage("a numeric flag is out of range (see --help)");
  auto listen = eora::daemon::ParseListenFlags(args.Str("listen"), args.Str("http-listen"));
  if (!listen.ok()) return Usage(std::string(listen.status().message()));
  std::error_code ec;
  const std::string store = args.Str("adapter-store");
  if (!std::filesystem::is_directory(store, ec))
    return Usage("--adapter-store: '" + store + "' is not a directory");

  // Block the shutdown signals before any thread starts; main takes them with sigwait.
  eora::daemon::BlockShutdownSignals();

  Log("loading model " + args.Str("model"));
  auto weights = eora::LoadModel(args.Str("model"));
  if (!weights.ok()) {
    Log("cannot load model: " + weights.status().ToString());
    return 1;
  }
  if (args.Has("compressed")) {
    Log("loading compressed model " + args.Str("compressed"));
    auto compressed = eora::LoadCompressedModel(args.Str("compressed"));
    if (!compressed.ok()) {
      Log("cannot load compressed model: " + compressed.status().ToString());
      return 1;
    }
    if (eora::ArchitectureFingerprint(compressed->config) !=
        eora::ArchitectureFingerprint(weights->config)) {
      Log("--compressed " + args.Str("compressed") + " is not a compression of --model " +
          args.Str("model") + " (architectures differ)");
      return 1;
    }
    weights = std::move(compressed);
  }
  auto shared = std::make_shared<eora::ModelWeights>(std::move(*weights));
  if (lanes == 0)
    lanes = eora::server::DefaultLanes(shared->config, static_cast<int>(threads),
                                       static_cast<int>(max_running));
  if (lanes > max_running) lanes = max_running;
  // With several lanes each has its own pool and model (the scheduler makes
  // them); this one only describes the model.
  eora::ThreadPool pool(lanes > 1 ? 1 : static_cast<int>(threads));
  eora::Model model(shared, &pool);
  const eora::Tokenizer* tokenizer = shared->tokenizer.get();

  auto prom = std::make_shared<prometheus::Registry>();
  eora::server::ServerMetrics metrics(prom);

  eora::server::AdapterRegistryOptions ropt;
  ropt.store_dir = store;
  ropt.device_budget_bytes = static_cast<size_t>(dev_mb) << 20;
  ropt.host_budget_bytes = static_cast<size_t>(host_mb) << 20;
  ropt.load_wait = absl::Seconds(load_timeout);
  ropt.allow_paths = !args.Has("no-adapter-paths");
  eora::server::AdapterRegistry registry(ropt, eora::server::MakeDirectoryLoader(model.config()),
                                         &metrics);

  eora::server::SchedulerOptions sopt;
  sopt.max_running = static_cast<int>(max_running);
  sopt.max_queue = static_cast<int>(max_queue);
  sopt.max_step_tokens = static_cast<int>(step_tokens);
  sopt.kv_cache_tokens = kv_tokens;
  sopt.kv_dtype = *kv_dtype;
  sopt.lanes = static_cast<int>(lanes);
  sopt.lane_threads = static_cast<int>(threads / lanes);
  eora::server::Scheduler scheduler(&model, tokenizer, sopt,
                                    eora::server::MakeSchedulingPolicy("fcfs"), &metrics);

  eora::server::ServingCoreOptions copt;
  copt.default_max_new_tokens = static_cast<int>(def_new);
  copt.model_path = args.Str("model");
  copt.compressed_path = args.Str("compressed");
  copt.stream_interval = static_cast<int>(stream_interval);
  eora::server::ServingCore core(&model, tokenizer, &registry, &scheduler, copt);

  for (const auto& id : absl::StrSplit(args.Str("preload"), ',', absl::SkipEmpty())) {
    auto r = registry.Load(std::string(id), std::nullopt, false);
    if (!r.ok()) {
      Log("cannot preload adapter '" + std::string(id) + "': " + r.status().ToString());
      return 1;
    }
    Log("preloaded adapter '" + std::string(id) + "'");
  }

  eora::server::InferenceServiceImpl inference(&core, &metrics);
  eora::server::AdapterServiceImpl adapters(&registry, &metrics);
  int bound_grpc = 0;
  auto started = eora::daemon::StartGrpcServer(listen->grpc_host, listen->grpc_port,
                                               {&inference, &adapters}, &bound_grpc);
  if (!started.ok()) {
    Log(std::string(started.status().message()));
    return 1;
  }
  std::unique_ptr<grpc::Server> server = std::move(*started);

  std::atomic<bool> ready{true};
  eora::daemon::HttpServer http(prom, [&] { return ready.load(); });
  auto http_bound = http.Start(listen->http_host, listen->http_port);
  if (!http_bound.ok()) {
    Log(http_bound.status().ToString());
    server->Shutdown();
    return 1;
  }
  Log("model " + args.Str("model") + ": " + std::to_string(model.config().n_layers) + " layers, dim " +
      std::to_string(model.config().dim) + ", context " + std::to_string(model.config().max_seq_len) +
      "; adapter store " + store + "; " + std::to_string(threads) + " threads, batch " +
      std::to_string(max_running) +
      (lanes > 1 ? " in " + std::to_string(lanes) + " lanes of " + std::to_string(threads / lanes) +
                       " thread" + (threads / lanes > 1 ? "s" : "")
                 : std::string()));
  const int64_t kv_positions = kv_tokens > 0 ? kv_tokens : max_running * model.config().max_seq_len;
  const size_t kv_bytes = static_cast<size_t>(kv_positions) *
                          eora::KvCache::BytesPerToken(model.config().n_layers, model.config().kv_dim(), *kv_dtype);
  Log("KV cache: " + std::to_string(kv_positions) + " positions, " + eora::KvDTypeName(*kv_dtype) + ", " +
      std::to_string((kv_bytes + (1 << 20) - 1) >> 20) + " MiB");
  eora::daemon::LogListening(Log, *listen, bound_grpc, *http_bound);

  eora::daemon::WaitAndDrain(Log, args.Str("grace-period-s"), &ready, server.get(), &http,
                             [&] { scheduler.Drain(absl::Seconds(grace)); });
  return 0;
}
