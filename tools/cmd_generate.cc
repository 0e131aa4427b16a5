#include <cstdio>
#include <thread>

#include "engine/generator.h"
#include "engine/model_loader.h"
#include "tools/cli_args.h"
#include "tools/cli_common.h"
#include "tools/kv_dtype_flag.h"
#include "tools/commands.h"
#include "tools/model_flags.h"

namespace eora::cli {

int RunGenerate(int argc, char** argv) {
  Args args("eora generate",
            "Generates text from a model and prints only the generated text to stdout.\n"
            "With no --prompt, generation starts from BOS. Temperature 0 is greedy.\n"
            "The model is --model, or the compressed directory --compressed; --adapter adds\n"
            "a low-rank adapter, run at --rank (default: its stored rank).");
  DeclareModelFlags(args);
  args.Flag("prompt", "TEXT", "", "prompt text (BOS is prepended)");
  args.Flag("max-tokens", "N", "256", "maximum number of tokens to generate");
  args.Flag("temperature", "T", "0", "sampling temperature; 0 = greedy");
  args.Flag("top-k", "K", "0", "keep only the K most likely tokens; 0 = off");
  args.Flag("top-p", "P", "1", "nucleus sampling probability mass in (0, 1]; 1 = off");
  args.Flag("seed", "S", "0", "random seed for sampling");
  args.Flag("threads", "N", DefaultThreadsString(), "worker threads");
  DeclareKvDTypeFlag(args);
  int rc = 0;
  if (!ParseOrExit(args, argc, argv, &rc)) return rc;
  std::string err;
  int64_t max_tokens, top_k, seed, threads;
  double temperature, top_p;
  if (!args.Int("max-tokens", &max_tokens, &err) || !args.Int("top-k", &top_k, &err) ||
      !args.Int("seed", &seed, &err) || !args.Int("threads", &threads, &err) ||
      !args.Float("temperature", &temperature, &err) || !args.Float("top-p", &top_p, &err))
    return UsageError("eora generate", err);
  if (max_tokens < 0) return UsageError("eora generate", "--max-tokens must be >= 0");
  if (threads < 1) return UsageError("eora generate", "--threads must be >= 1");
  const absl::StatusOr<KvDType> kv_dtype = KvDTypeFlag(args);
  if (!kv_dtype.ok()) return UsageError("eora generate", std::string(kv_dtype.status().message()));

  GenerationRequest req;
  req.sampling.temperature = static_cast<float>(temperature);
  req.sampling.top_k = static_cast<int>(top_k);
  req.sampling.top_p = static_cast<float>(top_p);
  req.sampling.seed = static_cast<uint64_t>(seed);
  if (absl::Status s = req.sampling.Validate(); !s.ok())
    return UsageError("eora generate", std::string(s.message()));
  req.max_new_tokens = static_cast<int>(max_tokens);

  LoadedModel lm;
  if (int lrc = LoadModelFromFlags(args, "eora generate", &lm); lrc != 0) return lrc;
  std::shared_ptr<ModelWeights> shared = lm.weights;
  if (!shared->tokenizer)
    return Fail("eora generate",
                absl::FailedPreconditionError(lm.description + " has no tokenizer"));
  req.adapter = lm.adapter;
  req.rank = lm.rank;
  const Tokenizer& tok = *shared->tokenizer;
  req.prompt = tok.Encode(args.Str("prompt"), /*add_bos=*/true);
  ThreadPool pool(static_cast<int>(threads));
  Model model(shared, &pool);
  int prev = req.prompt.back();
  GeneratorOptions opt;
  opt.max_running = 1;
  opt.kv_dtype = *kv_dtype;
  auto res = GenerateAll(&model, {req}, opt, [&](int, int t) {
    const std::string piece = tok.DecodeToken(prev, t);
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
    prev = t;
  });
  std::fputc('\n', stdout);
  if (!res.ok()) return Fail("eora generate", res.status());
  return 0;
}

}  // namespace eora::cli
