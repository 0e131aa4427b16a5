// Subcommands of the `eora` CLI. Each parses its own flags (argv[2..]) and
// returns the process exit status: 0 success, 1 runtime failure, 2 usage error.
#pragma once

namespace eora::cli {

int RunGenerate(int argc, char** argv);
int RunPerplexity(int argc, char** argv);
int RunBench(int argc, char** argv);

}  // namespace eora::cli
