#include <chrono>
#include <cstdio>

#include "engine/model_loader.h"
#include "engine/perplexity.h"
#include "tools/cli_args.h"
#include "tools/cli_common.h"
#include "tools/kv_dtype_flag.h"
#include "tools/commands.h"
#include "tools/model_flags.h"

namespace eora::cli {

int RunPerplexity(int argc, char** argv) {
  Args args("eora perplexity",
            "Perplexity of a model on a text file.\n"
            "Protocol 'full': the text is tokenized once (no BOS) and cut into consecutive\n"
            "non-overlapping windows of ctx-1 tokens (the last may be shorter); each window\n"
            "is prefixed with BOS and every token after BOS is scored.\n"
            "Protocol 'llama-cpp': [BOS]+text is cut into ctx-token chunks (a partial last\n"
            "chunk is dropped), each chunk's first token is replaced by BOS and only the\n"
            "second half of each chunk is scored, as llama.cpp's llama-perplexity does.\n"
            "The model is --model, or the compressed directory --compressed; --adapter adds\n"
            "a low-rank adapter, run at --rank (default: its stored rank).");
  DeclareModelFlags(args);
  args.Flag("text", "FILE", "", "text file to score (required)");
  args.Flag("ctx", "N", "256", "context (window) length in tokens");
  args.Flag("max-bytes", "N", "0", "read only this many bytes of the file; 0 = all");
  args.Flag("protocol", "full|llama-cpp", "full", "windowing protocol");
  args.Flag("batch", "N", "16", "windows evaluated together per forward step");
  args.Flag("threads", "N", DefaultThreadsString(), "worker threads");
  DeclareKvDTypeFlag(args);
  args.Switch("json", "print one JSON object (tokens, nll, ppl, ...) instead of text");
  int rc = 0;
  if (!ParseOrExit(args, argc, argv, &rc)) return rc;
  const std::string cmd = "eora perplexity";
  std::string err;
  int64_t ctx, max_bytes, threads, batch;
  if (!args.Int("ctx", &ctx, &err) || !args.Int("max-bytes", &max_bytes, &err) ||
      !args.Int("threads", &threads, &err) || !args.Int("batch", &batch, &err))
    return UsageError(cmd, err);
  if (!args.Has("text")) return UsageError(cmd, "--text is required");
  if (ctx < 2) return UsageError(cmd, "--ctx must be >= 2");
  if (max_bytes < 0) return UsageError(cmd, "--max-bytes must be >= 0");
  if (threads < 1) return UsageError(cmd, "--threads must be >= 1");
  if (batch < 1) return UsageError(cmd, "--batch must be >= 1");
  const absl::StatusOr<KvDType> kv_dtype = KvDTypeFlag(args);
  if (!kv_dtype.ok()) return UsageError(cmd, std::string(kv_dtype.status().message()));
  PerplexityOptions opt;
  opt.kv_dtype = *kv_dtype;
  opt.ctx = static_cast<int>(ctx);
  opt.max_batch_windows = static_cast<int>(batch);
  const std::string proto = args.Str("protocol");
  if (proto == "full") {
    opt.protocol = PerplexityProtocol::kFull;
  } else if (proto == "llama-cpp") {
    opt.protocol = PerplexityProtocol::kLlamaCpp;
  } else {
    return UsageError(cmd, "--protocol must be 'full' or 'llama-cpp', got '" + proto + "'");
  }

  std::string text;
  if (absl::Status s = ReadFilePrefix(args.Str("text"), static_cast<size_t>(max_bytes), &text);
      !s.ok())
    return Fail(cmd, s);
  LoadedModel lm;
  if (int lrc = LoadModelFromFlags(args, cmd, &lm); lrc != 0) return lrc;
  std::shared_ptr<ModelWeights> shared = lm.weights;
  if (!shared->tokenizer)
    return Fail(cmd, absl::FailedPreconditionError(lm.description + " has no tokenizer"));
  opt.adapter = lm.adapter.get();
  opt.rank = lm.rank;
  const std::vector<int> tokens = shared->tokenizer->Encode(text, /*add_bos=*/false);
  ThreadPool pool(static_cast<int>(threads));
  Model model(shared, &pool);
  const auto t0 = std::chrono::steady_clock::now();
  opt.progress = [&](int done, int total) {
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::fprintf(stderr, "\rperplexity: window %d of %d, %.1fs elapsed, ETA %.1fs", done, total, el,
                 done > 0 ? el * (total - done) / done : 0.0);
    if (done == total) std::fputc('\n', stderr);
  };
  auto res = ComputePerplexity(model, tokens, shared->tokenizer->bos_id(), opt);
  if (!res.ok()) return Fail(cmd, res.status());
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (args.Has("json")) {
    std::printf(
        "{\"tokens\": %lld, \"nll\": %.8f, \"ppl\": %.6f, \"windows\": %d, \"ctx\": %d, "
        "\"protocol\": \"%s\", \"text_bytes\": %zu, \"text_tokens\": %zu, \"seconds\": %.3f, "
        "\"rank\": %d, \"model_bytes\": %llu, \"adapter_bytes\": %llu, \"kv_dtype\": \"%s\"}\n",
        static_cast<long long>(res->tokens), res->nll, res->ppl, res->windows, opt.ctx,
        proto.c_str(), text.size(), tokens.size(), secs, lm.rank,
        static_cast<unsigned long long>(lm.model_bytes),
        static_cast<unsigned long long>(lm.adapter_bytes), KvDTypeName(opt.kv_dtype));
  } else {
    std::printf("perplexity %.4f (nll %.6f nats) over %lld tokens in %d windows of ctx %d (%s)%s\n",
                res->ppl, res->nll, static_cast<long long>(res->tokens), res->windows, opt.ctx,
                proto.c_str(),
                lm.adapter ? (", adapter rank " + std::to_string(lm.rank)).c_str() : "");
  }
  return 0;
}

}  // namespace eora::cli
