// The HTTP side of the daemon (cpp-httplib, not prometheus-cpp's civetweb
// exposer; see docs/TOOLCHAIN.md): GET /metrics (Prometheus text format),
// /healthz (200 while the process serves), /readyz (200 when ready for traffic,
// 503 while starting or draining).
//
// Threading contract: Start/Stop from one thread; the readiness callback and
// the metrics are called from httplib's worker threads.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "server/metrics.h"

namespace httplib {
class Server;
}

namespace eora::server {

class HttpServer {
 public:
  // `metrics` not owned. `ready` says whether /readyz is 200.
  HttpServer(ServerMetrics* metrics, std::function<bool()> ready);
  ~HttpServer();

  // Binds host:port (port 0 = any) and serves on a thread. Returns the bound port.
  absl::StatusOr<int> Start(const std::string& host, int port);
  void Stop();

 private:
  ServerMetrics* metrics_;
  std::function<bool()> ready_;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

// Splits "HOST:PORT" ("[::1]:80" for IPv6); INVALID_ARGUMENT naming `flag`.
absl::Status ParseHostPort(const std::string& s, const char* flag, std::string* host, int* port);

}  // namespace eora::server
