// A daemon child process for end-to-end tests (eora-server, eora-compressor):
// started with its flags, stderr to a log file, ready once the log says
// "gRPC listening on HOST:PORT" and "HTTP listening on HOST:PORT" (the ports it
// actually bound when given port 0).
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace eora::testing {

class DaemonProcess {
 public:
  ~DaemonProcess();  // SIGKILL if still running
  // argv[0] is the binary. Waits up to timeout_s for both log lines; false if
  // the process exited or never logged them.
  bool Start(const std::vector<std::string>& argv, const std::string& log_path, int timeout_s = 30);
  void Signal(int sig);
  // Waits for the exit; returns the exit status, -1 if killed by a signal, -2
  // if still running after timeout_s.
  int Wait(int timeout_s);
  bool running() const { return pid_ > 0; }
  int grpc_port() const { return grpc_port_; }
  int http_port() const { return http_port_; }
  std::string grpc_target() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  std::string Log() const;

 private:
  pid_t pid_ = -1;
  int grpc_port_ = 0, http_port_ = 0;
  std::string log_path_;
};

}  // namespace eora::testing
