// eora: the command-line front end of the EoRA Serve engine.
//
//   eora generate    generate text from a model
//   eora perplexity  perplexity of a model on a text file
//   eora bench       prefill / decode speed of a model or a synthetic model
//   eora compress    model -> compressed base model directory
//   eora fit-adapter FP model + compressed base -> low-rank adapter (EoRA, SVD, ...)
//   eora bench-serve load generator for eora-server (when built with gRPC)
//   eora upload-calib / create-job / watch-job / list-jobs / cancel-job
//                    clients of eora-compressor (when built with gRPC)
#include <cstdio>
#include <cstring>
#include <string>

#include "tools/commands.h"

namespace {

void Usage(FILE* out) {
  std::fprintf(out,
               "usage: eora <command> [flags]\n\n"
               "commands:\n"
               "  generate    generate text from a model (GGUF file or Hugging Face directory)\n"
               "  perplexity  perplexity of a model on a text file\n"
               "  bench       measure prefill and decode speed\n"
#ifdef EORA_HAVE_COMPRESSOR
               "  compress    compress a model (RTN, GPTQ, 2:4 SparseGPT/Wanda, SLiM-Quant, CALDERA)\n"
               "  fit-adapter fit a low-rank adapter (EoRA, SVD, Act-S, SLiM) to a compressed model\n"
#endif
#ifdef EORA_HAVE_BENCH_SERVE
               "  bench-serve load-test an eora-server (throughput, TTFT/TPOT percentiles)\n"
#endif
#ifdef EORA_HAVE_COMPRESSOR_CLIENT
               "  upload-calib  upload a calibration set to eora-compressor\n"
               "  create-job    create an adapter job on eora-compressor (--watch to follow it)\n"
               "  watch-job     follow an eora-compressor job to the end\n"
               "  list-jobs     list eora-compressor jobs\n"
               "  cancel-job    cancel an eora-compressor job\n"
#endif
               "\n"
               "Run 'eora <command> --help' for the flags of a command.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    Usage(stderr);
    return 2;
  }
  const std::string cmd = argv[1];
  if (cmd == "--help" || cmd == "-h" || cmd == "help") {
    Usage(stdout);
    return 0;
  }
  if (cmd == "generate") return eora::cli::RunGenerate(argc, argv);
  if (cmd == "perplexity") return eora::cli::RunPerplexity(argc, argv);
  if (cmd == "bench") return eora::cli::RunBench(argc, argv);
#ifdef EORA_HAVE_COMPRESSOR
  if (cmd == "compress") return eora::cli::RunCompress(argc, argv);
  if (cmd == "fit-adapter") return eora::cli::RunFitAdapter(argc, argv);
#endif
#ifdef EORA_HAVE_BENCH_SERVE
  if (cmd == "bench-serve") return eora::cli::RunBenchServe(argc, argv);
#endif
#ifdef EORA_HAVE_COMPRESSOR_CLIENT
  if (cmd == "upload-calib") return eora::cli::RunUploadCalib(argc, argv);
  if (cmd == "create-job") return eora::cli::RunCreateJob(argc, argv);
  if (cmd == "watch-job") return eora::cli::RunWatchJob(argc, argv);
  if (cmd == "list-jobs") return eora::cli::RunListJobs(argc, argv);
  if (cmd == "cancel-job") return eora::cli::RunCancelJob(argc, argv);
#endif
  std::fprintf(stderr, "eora: unknown command '%s'\n\n", cmd.c_str());
  Usage(stderr);
  return 2;
}
