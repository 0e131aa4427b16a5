#include "tests/daemon_process.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

namespace eora::testing {

DaemonProcess::~DaemonProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
}

bool DaemonProcess::Start(const std::vector<std::string>& argv_in, const std::string& log_path,
                          int timeout_s) {
  log_path_ = log_path;
  std::vector<std::string> args = argv_in;
  pid_ = fork();
  if (pid_ < 0) return false;
  if (pid_ == 0) {
    FILE* f = std::freopen(log_path_.c_str(), "w", stderr);
    (void)f;
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  const std::regex grpc_re("gRPC listening on [^ ]*:([0-9]+)");
  const std::regex http_re("HTTP listening on [^ ]*:([0-9]+)");
  for (int i = 0; i < timeout_s * 20; ++i) {
    std::string log = Log();
    std::smatch g, h;
    if (std::regex_search(log, g, grpc_re) && std::regex_search(log, h, http_re)) {
      grpc_port_ = std::stoi(g[1]);
      http_port_ = std::stoi(h[1]);
      return true;
    }
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

std::string DaemonProcess::Log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void DaemonProcess::Signal(int sig) {
  if (pid_ > 0) kill(pid_, sig);
}

int DaemonProcess::Wait(int timeout_s) {
  if (pid_ <= 0) return -1;
  for (int i = 0; i < timeout_s * 50; ++i) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -2;  // still running
}

}  // namespace eora::testing
