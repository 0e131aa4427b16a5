// eora_server_test_helper: test fixtures for server/tests/python_client_test.py.
//   make-adapter DIR RANK SEED         writes a random stories260K adapter to DIR
//   make-foreign-adapter DIR           writes an adapter for another architecture
//   offline PROMPT ADAPTER_DIR RANK N  prints the offline engine's greedy token ids
//                                      (ADAPTER_DIR "-" = base model)
#include <cstdio>
#include <string>

#include "server/tests/server_test_util.h"

int main(int argc, char** argv) {
  using namespace eora::server::testing;
  const std::string cmd = argc > 1 ? argv[1] : "";
  try {
    if (cmd == "make-adapter" && argc == 5) {
      WriteRandomAdapter(argv[2], std::stoi(argv[3]), std::stoull(argv[4]));
      return 0;
    }
    if (cmd == "make-foreign-adapter" && argc == 3) {
      WriteForeignAdapter(argv[2]);
      return 0;
    }
    if (cmd == "offline" && argc == 6) {
      const std::string dir = argv[3];
      auto toks = OfflineGreedy(argv[2], dir == "-" ? "" : dir, std::stoi(argv[4]), std::stoi(argv[5]));
      for (size_t i = 0; i < toks.size(); ++i) std::printf(i ? " %d" : "%d", toks[i]);
      std::printf("\n");
      return 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "usage: see the header of test_helper_main.cc\n");
  return 2;
}
