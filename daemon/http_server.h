// The HTTP side of the daemons (eora-server, eora-compressor), on cpp-httplib,
// not prometheus-cpp's civetweb exposer (see docs/TOOLCHAIN.md): GET /metrics
// (Prometheus text format of a prometheus-cpp registry), /healthz (200 while the
// process serves), /readyz (200 when ready for traffic, 503 while starting or
// draining).
//
// Threading contract: Start/Stop from one thread; the readiness callback and
// the registry are used from httplib's worker threads.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "prometheus/registry.h"

namespace httplib {
class Server;
}

namespace eora::daemon {

// Prometheus text exposition format of everything in `registry`.
std::string SerializeMetrics(const prometheus::Registry& registry);

class HttpServer {
 public:
  // `registry` is shared; `ready` says whether /readyz is 200.
  HttpServer(std::shared_ptr<prometheus::Registry> registry, std::function<bool()> ready);
  ~HttpServer();

  // Binds host:port (port 0 = any) and serves on a thread. Returns the bound port.
  absl::StatusOr<int> Start(const std::string& host, int port);
  void Stop();

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  std::function<bool()> ready_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

}  // namespace eora::daemon
