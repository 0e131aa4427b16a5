// What the gRPC daemons (eora-server, eora-compressor) share besides HTTP:
// listen-address flags, the gRPC server with health (grpc.health.v1) and
// reflection, the shutdown signals, and a status mapping.
//
// Shutdown: BlockShutdownSignals() before any thread starts (threads inherit
// the mask), then WaitForShutdownSignal() on the main thread (sigwait, never a
// signal handler), then drain and stop the servers from that normal thread.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"

namespace eora::daemon {

class HttpServer;

// Splits "HOST:PORT" ("[::1]:80" for IPv6; empty host = 0.0.0.0); INVALID_ARGUMENT
// naming `flag`.
absl::Status ParseHostPort(const std::string& s, const char* flag, std::string* host, int* port);
// The two addresses of a daemon: --listen (gRPC) and --http-listen.
struct ListenAddresses {
  std::string grpc_host;
  int grpc_port = 0;
  std::string http_host;
  int http_port = 0;
};
absl::StatusOr<ListenAddresses> ParseListenFlags(const std::string& listen,
                                                 const std::string& http_listen);
// "host:port", with brackets around IPv6 hosts.
std::string JoinHostPort(const std::string& host, int port);

// absl::Status -> grpc::Status (same code numbers) and gRPC code names ("OK",
// "NOT_FOUND", ...) for metrics labels.
grpc::Status ToGrpcStatus(const absl::Status& s);
const char* GrpcCodeName(grpc::StatusCode code);

// Builds and starts a gRPC server on host:port (0 = any free port) with the
// given services, the default health service (SERVING) and reflection.
// *bound_port receives the actual port.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    const std::string& host, int port, const std::vector<grpc::Service*>& services,
    int* bound_port);

// Blocks SIGTERM and SIGINT in the calling thread (and the threads it starts).
void BlockShutdownSignals();
// Waits for SIGTERM or SIGINT; returns its name.
const char* WaitForShutdownSignal();

// Writes one line of the daemon's log ("<daemon>: <msg>" on stderr).
using LogFn = std::function<void(const std::string&)>;
// Logs where the started servers listen: "gRPC listening on HOST:PORT" and
// "HTTP listening on HOST:PORT (/metrics /healthz /readyz)" (tests read these).
void LogListening(const LogFn& log, const ListenAddresses& listen, int grpc_port, int http_port);
// The shutdown of a started daemon, on the main thread: waits for SIGTERM or
// SIGINT, logs "received SIG, draining (grace <grace> s)", marks the daemon not
// ready (*ready, read by /readyz, and the gRPC health service), runs `drain` (the
// daemon's own: in-flight work within its grace period), stops the gRPC server
// (2 s for what is left) and the HTTP server, and logs "drained; exiting".
void WaitAndDrain(const LogFn& log, const std::string& grace, std::atomic<bool>* ready,
                  grpc::Server* server, HttpServer* http, const std::function<void()>& drain);

}  // namespace eora::daemon
