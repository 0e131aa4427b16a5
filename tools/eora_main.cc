// eora: the command-line front end of the EoRA Serve engine.
//
//   eora generate    generate text from a model
//   eora perplexity  perplexity of a model on a text file
//   eora bench       prefill / decode speed of a model or a synthetic model
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
               "  bench       measure prefill and decode speed\n\n"
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
  std::fprintf(stderr, "eora: unknown command '%s'\n\n", cmd.c_str());
  Usage(stderr);
  return 2;
}
