// eora fit-adapter: FP model + compressed base + calibration text -> PEFT adapter.
#include <cstdio>
#include <sstream>

#include "compressor/calibration.h"
#include "compressor/pipeline.h"
#include "engine/adapter_io.h"
#include "engine/compressed_model.h"
#include "engine/dir_writer.h"
#include "engine/model_loader.h"
#include "tools/cli_args.h"
#include "tools/cli_common.h"
#include "tools/commands.h"

namespace eora::cli {

int RunFitAdapter(int argc, char** argv) {
  const std::string cmd = "eora fit-adapter";
  Args args(cmd,
            "Fits low-rank factors B A so that the compressed base plus B A approximates the\n"
            "full-precision model, layer by layer on the calibration text (layer i+1 sees\n"
            "the outputs of the compensated layer i), and writes a PEFT LoRA adapter\n"
            "directory (lora_alpha = r) with our metadata: method, calibration hash and the\n"
            "rank -> quality profile (held-out loss at ranks 1, 2, 4, ..., R with the stored\n"
            "factors truncated, on calibration sequences kept out of the fit).\n"
            "Methods: eora (eigenspace projection of the input statistics), svd (plain SVD\n"
            "of the error, ZeroQuant-V2), act-s (SVD scaled by mean |x|), slim (SLiM's\n"
            "saliency-scaled SVD).");
  args.Flag("model", "PATH", "", "full-precision model: .gguf file or Hugging Face directory (required)");
  args.Flag("compressed", "DIR", "", "compressed base model directory from 'eora compress' (required)");
  args.Flag("method", "NAME", "eora", "eora | svd | act-s | slim");
  args.Flag("rank", "R", "", "adapter rank (required)");
  args.Flag("adapter-bits", "B", "16", "factor storage: 16 (F16), 32 (F32), 4 or 3 (quantized in groups of 64 along each rank component)");
  args.Flag("calib", "FILE", "",
            "calibration text (documents split on <|endoftext|>) or a .tokens file of ids (required)");
  args.Flag("calib-seqs", "N", "128", "calibration sequences used for the fit");
  args.Flag("heldout-seqs", "N", "16", "further sequences kept out of the fit for the profile");
  args.Flag("seq-len", "L", "256", "tokens per calibration sequence, BOS included");
  args.Flag("profile-ranks", "LIST", "", "comma-separated ranks for the profile (default 1,2,4,...,R)");
  LayerwiseOutputFlags(args,
                       "adapter directory to write (required; must not exist unless --overwrite)");
  int rc = 0;
  if (!ParseOrExit(args, argc, argv, &rc)) return rc;
  for (const char* f : {"model", "compressed", "rank", "calib", "out"})
    if (!args.Has(f)) return UsageError(cmd, std::string("--") + f + " is required");
  compress::FitOptions o;
  if (!compress::ParseAdapterMethod(args.Str("method"), &o.method))
    return UsageError(cmd, "--method must be eora, svd, act-s or slim, got '" + args.Str("method") + "'");
  std::string err;
  int64_t rank, bits, seqs, heldout, seq_len, threads;
  if (!args.Int("rank", &rank, &err) || !args.Int("adapter-bits", &bits, &err) ||
      !args.Int("calib-seqs", &seqs, &err) || !args.Int("heldout-seqs", &heldout, &err) ||
      !args.Int("seq-len", &seq_len, &err) || !args.Int("threads", &threads, &err))
    return UsageError(cmd, err);
  if (rank < 1) return UsageError(cmd, "--rank must be >= 1");
  if (bits != 32 && bits != 16 && bits != 4 && bits != 3)
    return UsageError(cmd, "--adapter-bits must be 16, 32, 4 or 3");
  if (seqs < 1) return UsageError(cmd, "--calib-seqs must be >= 1");
  if (heldout < 0) return UsageError(cmd, "--heldout-seqs must be >= 0");
  if (seq_len < 2) return UsageError(cmd, "--seq-len must be >= 2");
  if (threads < 1) return UsageError(cmd, "--threads must be >= 1");
  if (args.Has("profile-ranks")) {
    std::stringstream ss(args.Str("profile-ranks"));
    std::string item;
    while (std::getline(ss, item, ',')) {
      char* end = nullptr;
      const long v = std::strtol(item.c_str(), &end, 10);
      if (item.empty() || *end != '\0' || v < 1 || v > rank)
        return UsageError(cmd, "--profile-ranks: '" + item + "' is not a rank in 1.." + std::to_string(rank));
      o.profile_ranks.push_back(static_cast<int>(v));
    }
  }
  o.rank = static_cast<int>(rank);
  o.factor_bits = static_cast<int>(bits);
  o.sequential_groups = !args.Has("one-pass");

  auto fp = LoadModel(args.Str("model"));
  if (!fp.ok()) return Fail(cmd, fp.status());
  CompressedModelInfo info;
  auto cw = LoadCompressedModel(args.Str("compressed"), &info);
  if (!cw.ok()) return Fail(cmd, cw.status());
  if (ArchitectureFingerprint(fp->config) != ArchitectureFingerprint(cw->config))
    return Fail(cmd, absl::FailedPreconditionError(
                         args.Str("compressed") + " is not a compression of " + args.Str("model") +
                         " (" + ArchitectureFingerprint(cw->config) + " vs " +
                         ArchitectureFingerprint(fp->config) + ")"));
  const Tokenizer* tok = fp->tokenizer ? fp->tokenizer.get() : cw->tokenizer.get();
  if (!tok) return Fail(cmd, absl::FailedPreconditionError(args.Str("model") + " has no tokenizer"));
  compress::CalibrationOptions co;
  co.num_seqs = static_cast<int>(seqs);
  co.heldout_seqs = static_cast<int>(heldout);
  co.seq_len = static_cast<int>(std::min<int64_t>(seq_len, fp->config.max_seq_len));
  auto calib = compress::LoadCalibration(args.Str("calib"), *tok, co);
  if (!calib.ok()) return Fail(cmd, calib.status());
  o.base_model = args.Str("model");
  o.compressed_base = info.content_sha256;

  ThreadPool pool(static_cast<int>(threads));
  std::fprintf(stderr, "fit-adapter: %s rank %d (%s factors), %zu calibration sequences of %d tokens, %zu held out\n",
               args.Str("method").c_str(), o.rank,
               bits >= 16 ? (bits == 16 ? "F16" : "F32") : (std::to_string(bits) + "-bit").c_str(),
               calib->fit.size(), calib->seq_len, calib->heldout.size());
  auto res = compress::FitAdapter(
      *fp, *cw, *calib, o, &pool, [](int layer, int n, double elapsed, double eta) {
        std::fprintf(stderr, "fit-adapter: layer %d of %d, %.1fs elapsed, ETA %.1fs\n", layer, n,
                     elapsed, eta);
      });
  if (!res.ok()) return Fail(cmd, res.status());
  res->meta.extra["compressed_dir"] = args.Str("compressed");
  if (auto it = info.metadata.find("method"); it != info.metadata.end())
    res->meta.extra["compressed_method"] = it->second;
  res->meta.extra["profile_seconds"] = std::to_string(res->profile_seconds);
  const std::string out = args.Str("out");
  if (absl::Status s = WriteAdapterDir(out, *res->adapter, res->meta, args.Has("overwrite")); !s.ok())
    return Fail(cmd, s);
  auto bytes = DirectoryBytes(out);
  if (args.Has("json")) {
    std::string profile = "[";
    for (size_t i = 0; i < res->meta.profile.size(); ++i) {
      const RankQuality& q = res->meta.profile[i];
      profile += (i ? ", " : "") + std::string("{\"rank\": ") + std::to_string(q.rank) +
                 ", \"nll\": " + std::to_string(q.nll) + ", \"ppl\": " + std::to_string(q.ppl) + "}";
    }
    profile += "]";
    std::printf("{\"out\": \"%s\", \"method\": \"%s\", \"rank\": %d, \"adapter_bits\": %lld, "
                "\"fit_seconds\": %.3f, \"profile_seconds\": %.3f, \"bytes\": %llu, "
                "\"factor_bytes\": %zu, \"profile\": %s}\n",
                out.c_str(), res->meta.method.c_str(), o.rank, static_cast<long long>(bits),
                res->fit_seconds, res->profile_seconds,
                static_cast<unsigned long long>(bytes.ok() ? *bytes : 0), res->adapter->bytes(),
                profile.c_str());
  } else {
    std::printf("wrote %s: %s rank %d, fitted in %.2fs (profile %.2fs)\n", out.c_str(),
                res->meta.method.c_str(), o.rank, res->fit_seconds, res->profile_seconds);
    for (const RankQuality& q : res->meta.profile)
      std::printf("  rank %3d: held-out nll %.5f, ppl %.4f\n", q.rank, q.nll, q.ppl);
  }
  return 0;
}

}  // namespace eora::cli
