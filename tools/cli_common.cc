#include "tools/cli_common.h"

#include <cstdio>
#include <fstream>
#include <thread>

namespace eora::cli {

std::string DefaultThreadsString() {
  const unsigned n = std::thread::hardware_concurrency();
  return std::to_string(n == 0 ? 1 : n);
}

void LayerwiseOutputFlags(Args& args, const std::string& out_help) {
  args.Flag("out", "DIR", "", out_help);
  args.Switch("one-pass",
              "collect a layer's inputs in one forward pass (faster; default: one pass per module "
              "group {q,k,v}, {o}, {gate,up}, {down}, each after the previous groups are processed)");
  args.Switch("overwrite", "replace an existing output directory");
  args.Flag("threads", "N", DefaultThreadsString(), "worker threads");
  args.Switch("json", "print a JSON summary on stdout");
}

bool ParseOrExit(Args& args, int argc, char** argv, int* rc) {
  std::string err;
  if (!args.Parse(argc, argv, 2, &err)) {
    std::fprintf(stderr, "%s\n", err.c_str());
    *rc = 2;
    return false;
  }
  if (args.help_requested()) {
    std::fputs(args.Help().c_str(), stdout);
    *rc = 0;
    return false;
  }
  return true;
}

int UsageError(const std::string& cmd, const std::string& message) {
  std::fprintf(stderr, "%s: %s\n", cmd.c_str(), message.c_str());
  return 2;
}

int Fail(const std::string& cmd, const absl::Status& status) {
  std::fprintf(stderr, "%s: %s\n", cmd.c_str(), status.ToString().c_str());
  return 1;
}

absl::Status ReadFilePrefix(const std::string& path, size_t max_bytes, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError("cannot open " + path);
  out->clear();
  char buf[1 << 16];
  while (in && (max_bytes == 0 || out->size() < max_bytes)) {
    size_t want = sizeof(buf);
    if (max_bytes) want = std::min(want, max_bytes - out->size());
    in.read(buf, static_cast<std::streamsize>(want));
    out->append(buf, static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) return absl::DataLossError("error reading " + path);
  return absl::OkStatus();
}

}  // namespace eora::cli
