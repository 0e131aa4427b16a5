// What the gRPC daemons (eora-server, eora-compressor) share besides HTTP:
// listen-address flags, the gRPC server with health (grpc.health.v1) and
// reflection, the shutdown signals, and a status mapping.
//
// Shutdown: BlockShutdownSignals() before any thread starts (threads inherit
// the mask), then WaitForShutdownSignal() on the main thread (sigwait, never a
// signal handler), then drain and stop the servers from that normal thread.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/grpcpp.h"

namespace eora::daemon {

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

}  // namespace eora::daemon
