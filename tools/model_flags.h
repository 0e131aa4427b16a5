// The flags that choose what a command runs: a model file (--model), a compressed
// model directory (--compressed), a low-rank adapter (--adapter) and its rank
// (--rank), shared by `eora perplexity` and `eora generate`.
#pragma once

#include <memory>
#include <string>

#include "engine/adapter_io.h"
#include "engine/lowrank.h"
#include "engine/model_weights.h"
#include "tools/cli_args.h"

namespace eora::cli {

// Declares --model, --compressed, --adapter and --rank.
void DeclareModelFlags(Args& args);

struct LoadedModel {
  std::shared_ptr<ModelWeights> weights;
  std::shared_ptr<const LowRankAdapter> adapter;  // null without --adapter
  AdapterMetadata adapter_meta;
  int rank = 0;                 // rank to run the adapter at (0 without one)
  std::string description;      // what was loaded, for messages
  uint64_t model_bytes = 0;     // bytes of the files the model came from
  uint64_t adapter_bytes = 0;   // bytes of the adapter directory's files
};

// Loads what the flags name. With --model and --compressed both given, the
// compressed directory's weights are used and --model only checks that the
// architectures match. Returns 0, or the exit status after printing the error
// (2 usage, 1 failure).
int LoadModelFromFlags(const Args& args, const std::string& cmd, LoadedModel* out);

}  // namespace eora::cli
