#include "daemon/daemon.h"

#include <chrono>
#include <csignal>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "daemon/http_server.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"

namespace eora::daemon {

absl::Status ParseHostPort(const std::string& s, const char* flag, std::string* host, int* port) {
  const size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon + 1 >= s.size())
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, ": expected HOST:PORT, got '", s, "'"));
  std::string h = s.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  int p = 0;
  if (!absl::SimpleAtoi(absl::string_view(s.data() + colon + 1, s.size() - colon - 1), &p) ||
      p < 0 || p > 65535)
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": bad port in '", s, "'"));
  *host = h.empty() ? "0.0.0.0" : h;
  *port = p;
  return absl::OkStatus();
}

absl::StatusOr<ListenAddresses> ParseListenFlags(const std::string& listen,
                                                 const std::string& http_listen) {
  ListenAddresses a;
  if (absl::Status s = ParseHostPort(listen, "listen", &a.grpc_host, &a.grpc_port); !s.ok())
    return s;
  if (absl::Status s = ParseHostPort(http_listen, "http-listen", &a.http_host, &a.http_port);
      !s.ok())
    return s;
  return a;
}

std::string JoinHostPort(const std::string& host, int port) {
  return (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" +
         std::to_string(port);
}

grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

const char* GrpcCodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::OK:
      return "OK";
    case grpc::CANCELLED:
      return "CANCELLED";
    case grpc::UNKNOWN:
      return "UNKNOWN";
    case grpc::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::ABORTED:
      return "ABORTED";
    case grpc::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::INTERNAL:
      return "INTERNAL";
    case grpc::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN";
  }
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartGrpcServer(
    const std::string& host, int port, const std::vector<grpc::Service*>& services,
    int* bound_port) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  *bound_port = 0;
  const std::string addr = JoinHostPort(host, port);
  builder.AddListeningPort(addr, grpc::InsecureServerCredentials(), bound_port);
  for (grpc::Service* s : services) builder.RegisterService(s);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || *bound_port == 0) return absl::UnavailableError("cannot listen on " + addr);
  server->GetHealthCheckService()->SetServingStatus(true);
  return server;
}

namespace {
sigset_t ShutdownSignals() {
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  return sigs;
}
}  // namespace

void BlockShutdownSignals() {
  const sigset_t sigs = ShutdownSignals();
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
}

const char* WaitForShutdownSignal() {
  const sigset_t sigs = ShutdownSignals();
  int sig = 0;
  sigwait(&sigs, &sig);
  return sig == SIGTERM ? "SIGTERM" : "SIGINT";
}

void LogListening(const LogFn& log, const ListenAddresses& listen, int grpc_port, int http_port) {
  log("gRPC listening on " + listen.grpc_host + ":" + std::to_string(grpc_port));
  log("HTTP listening on " + listen.http_host + ":" + std::to_string(http_port) +
      " (/metrics /healthz /readyz)");
}

void WaitAndDrain(const LogFn& log, const std::string& grace, std::atomic<bool>* ready,
                  grpc::Server* server, HttpServer* http, const std::function<void()>& drain) {
  const char* sig = WaitForShutdownSignal();
  log(std::string("received ") + sig + ", draining (grace " + grace + " s)");
  *ready = false;
  server->GetHealthCheckService()->SetServingStatus(false);
  drain();
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  http->Stop();
  log("drained; exiting");
}

}  // namespace eora::daemon
