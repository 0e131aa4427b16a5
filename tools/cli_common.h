// Helpers shared by the `eora` subcommands.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "tools/cli_args.h"

namespace eora::cli {

// Hardware threads, as a string default for --threads.
std::string DefaultThreadsString();
// Declares the last flags of the commands that write a directory layer by layer
// (compress, fit-adapter): --out (help: out_help), --one-pass, --overwrite,
// --threads and --json.
void LayerwiseOutputFlags(Args& args, const std::string& out_help);
// Parses flags; on --help prints help to stdout and sets *rc = 0; on error prints
// the error and usage hint to stderr and sets *rc = 2. Returns true to continue.
bool ParseOrExit(Args& args, int argc, char** argv, int* rc);
// Prints "<cmd>: <message>" to stderr and returns 2.
int UsageError(const std::string& cmd, const std::string& message);
// Prints "<cmd>: <status>" to stderr and returns 1.
int Fail(const std::string& cmd, const absl::Status& status);
// Reads at most max_bytes (0: all) of a file.
absl::Status ReadFilePrefix(const std::string& path, size_t max_bytes, std::string* out);

}  // namespace eora::cli
