// Subcommands of the `eora` CLI. Each parses its own flags (argv[2..]) and
// returns the process exit status: 0 success, 1 runtime failure, 2 usage error.
#pragma once

namespace eora::cli {

int RunGenerate(int argc, char** argv);
int RunPerplexity(int argc, char** argv);
int RunBench(int argc, char** argv);
int RunCompress(int argc, char** argv);    // built with the compressor (EORA_HAVE_COMPRESSOR)
int RunFitAdapter(int argc, char** argv);  // built with the compressor (EORA_HAVE_COMPRESSOR)
int RunBenchServe(int argc, char** argv);  // built when gRPC is found (EORA_HAVE_BENCH_SERVE)
// eora-compressor clients, built when gRPC is found (EORA_HAVE_COMPRESSOR_CLIENT).
int RunUploadCalib(int argc, char** argv);
int RunCreateJob(int argc, char** argv);
int RunWatchJob(int argc, char** argv);
int RunListJobs(int argc, char** argv);
int RunCancelJob(int argc, char** argv);

}  // namespace eora::cli
