#include "server/http_server.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "httplib.h"

namespace eora::server {

absl::Status ParseHostPort(const std::string& s, const char* flag, std::string* host, int* port) {
  const size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon + 1 >= s.size())
    return absl::InvalidArgumentError(absl::StrCat("--", flag, ": expected HOST:PORT, got '", s, "'"));
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

HttpServer::HttpServer(ServerMetrics* metrics, std::function<bool()> ready)
    : metrics_(metrics), ready_(std::move(ready)), server_(std::make_unique<httplib::Server>()) {
  server_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_->Serialize(), "text/plain; version=0.0.4; charset=utf-8");
  });
  server_->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  server_->Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
    if (ready_ && ready_()) {
      res.set_content("ready\n", "text/plain");
    } else {
      res.status = 503;
      res.set_content("not ready\n", "text/plain");
    }
  });
}

HttpServer::~HttpServer() { Stop(); }

absl::StatusOr<int> HttpServer::Start(const std::string& host, int port) {
  int bound = -1;
  if (port == 0) {
    bound = server_->bind_to_any_port(host.c_str());
  } else if (server_->bind_to_port(host.c_str(), port)) {
    bound = port;
  }
  if (bound <= 0)
    return absl::UnavailableError(absl::StrCat("cannot bind HTTP to ", host, ":", port));
  thread_ = std::thread([this] { server_->listen_after_bind(); });
  return bound;
}

void HttpServer::Stop() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace eora::server
