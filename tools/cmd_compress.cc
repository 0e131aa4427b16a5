// eora compress: model -> compressed base model directory.
#include <cstdio>
#include <filesystem>

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

namespace {

compress::ProgressFn LayerProgress(const char* what) {
  return [what](int layer, int n, double elapsed, double eta) {
    std::fprintf(stderr, "%s: layer %d of %d, %.1fs elapsed, ETA %.1fs\n", what, layer, n, elapsed,
                 eta);
  };
}

}  // namespace

int RunCompress(int argc, char** argv) {
  const std::string cmd = "eora compress";
  Args args(cmd,
            "Compresses a model layer by layer and writes a compressed model directory\n"
            "(eora_model.json + weights.safetensors; docs/formats.md) that 'eora perplexity',\n"
            "'eora generate' and the server load with --compressed.\n"
            "Methods: rtn (round to nearest), gptq, sparsegpt and wanda (2:4 pruning, with\n"
            "--bits also quantized), slim-quant (one symmetric scale per tensor), caldera\n"
            "(Q + L R, all quantized; L, R are written as an adapter directory next to the\n"
            "output). gptq, sparsegpt, wanda and caldera calibrate on --calib: layer i+1\n"
            "sees the outputs of the already compressed layer i.");
  args.Flag("model", "PATH", "", "model: a .gguf file or a Hugging Face checkpoint directory (required)");
  args.Flag("method", "NAME", "", "rtn | gptq | sparsegpt | wanda | slim-quant | caldera (required)");
  args.Flag("bits", "B", "",
            "bits per weight, 2..4 (default: 4; sparsegpt/wanda: none, i.e. 2:4 with F16 values; "
            "caldera: 2, the bits of Q)");
  args.Flag("group-size", "G", "0", "quantization group size (multiple of 32); 0 = per output channel");
  args.Flag("sparsity", "2:4", "", "structured sparsity; only 2:4, implied by sparsegpt and wanda");
  args.Switch("symmetric", "symmetric quantization (default asymmetric)");
  args.Switch("act-order", "GPTQ: process columns by decreasing Hessian diagonal");
  args.Flag("damp", "F", "0.01", "GPTQ/SparseGPT damping, fraction of mean(diag H)");
  args.Flag("embedding-bits", "B", "0",
            "also quantize the token embedding (and a tied output) to B = 2..4 bits (RTN); 0 = keep");
  args.Flag("embedding-group-size", "G", "32", "group size of the embedding quantization");
  args.Flag("calib", "FILE", "",
            "calibration text (documents split on <|endoftext|>) or a .tokens file of ids "
            "(required by gptq, sparsegpt, wanda, caldera)");
  args.Flag("calib-seqs", "N", "128", "calibration sequences");
  args.Flag("seq-len", "L", "256", "tokens per calibration sequence, BOS included");
  args.Flag("caldera-rank", "K", "16", "CALDERA: rank of L R");
  args.Flag("caldera-bits", "B", "4", "CALDERA: bits of L and R");
  args.Flag("caldera-iters", "N", "20", "CALDERA: outer iterations");
  args.Flag("adapter-out", "DIR", "", "CALDERA: where L, R go (default: OUT-lr)");
  LayerwiseOutputFlags(args, "output directory (required; must not exist unless --overwrite)");
  int rc = 0;
  if (!ParseOrExit(args, argc, argv, &rc)) return rc;
  std::string err;
  if (!args.Has("model")) return UsageError(cmd, "--model is required");
  if (!args.Has("method")) return UsageError(cmd, "--method is required");
  if (!args.Has("out")) return UsageError(cmd, "--out is required");
  compress::CompressOptions o;
  if (!compress::ParseBaseMethod(args.Str("method"), &o.method))
    return UsageError(cmd, "--method must be rtn, gptq, sparsegpt, wanda, slim-quant or caldera, got '" +
                               args.Str("method") + "'");
  const bool sparse = o.method == compress::BaseMethod::kSparseGpt ||
                      o.method == compress::BaseMethod::kWanda;
  int64_t bits = sparse ? 0 : (o.method == compress::BaseMethod::kCaldera ? 2 : 4);
  int64_t group, emb_bits, emb_group, seqs, seq_len, threads, crank, cbits, citers;
  double damp;
  if ((args.Has("bits") && !args.Int("bits", &bits, &err)) || !args.Int("group-size", &group, &err) ||
      !args.Int("embedding-bits", &emb_bits, &err) ||
      !args.Int("embedding-group-size", &emb_group, &err) || !args.Int("calib-seqs", &seqs, &err) ||
      !args.Int("seq-len", &seq_len, &err) || !args.Int("threads", &threads, &err) ||
      !args.Int("caldera-rank", &crank, &err) || !args.Int("caldera-bits", &cbits, &err) ||
      !args.Int("caldera-iters", &citers, &err) || !args.Float("damp", &damp, &err))
    return UsageError(cmd, err);
  if (sparse ? (bits != 0 && (bits < 2 || bits > 4)) : (bits < 2 || bits > 4))
    return UsageError(cmd, std::string("--bits must be ") + (sparse ? "2, 3 or 4 (or omitted)" : "2, 3 or 4"));
  if (group < 0 || group % 32 != 0) return UsageError(cmd, "--group-size must be 0 or a multiple of 32");
  if (emb_bits != 0 && (emb_bits < 2 || emb_bits > 4))
    return UsageError(cmd, "--embedding-bits must be 0, 2, 3 or 4");
  if (emb_group < 0 || emb_group % 32 != 0)
    return UsageError(cmd, "--embedding-group-size must be 0 or a multiple of 32");
  if (args.Has("sparsity")) {
    if (args.Str("sparsity") != "2:4") return UsageError(cmd, "--sparsity: only 2:4 is supported");
    if (!sparse) return UsageError(cmd, "--sparsity 2:4 needs --method sparsegpt or wanda");
  }
  if (seqs < 1) return UsageError(cmd, "--calib-seqs must be >= 1");
  if (seq_len < 2) return UsageError(cmd, "--seq-len must be >= 2");
  if (threads < 1) return UsageError(cmd, "--threads must be >= 1");
  if (damp < 0) return UsageError(cmd, "--damp must be >= 0");
  if (crank < 1 || cbits < 2 || cbits > 4 || citers < 1)
    return UsageError(cmd, "--caldera-rank must be >= 1, --caldera-bits 2..4, --caldera-iters >= 1");
  o.bits = static_cast<int>(bits);
  o.group_size = static_cast<int>(group);
  o.symmetric = args.Has("symmetric");
  o.sequential_groups = !args.Has("one-pass");
  o.act_order = args.Has("act-order");
  o.damp = damp;
  o.embedding_bits = static_cast<int>(emb_bits);
  o.embedding_group_size = static_cast<int>(emb_group);
  o.caldera_rank = static_cast<int>(crank);
  o.caldera_bits_lr = static_cast<int>(cbits);
  o.caldera_outer_iters = static_cast<int>(citers);
  const std::string out = args.Str("out");
  const bool caldera = o.method == compress::BaseMethod::kCaldera;
  std::string adapter_out = args.Str("adapter-out");
  if (caldera && adapter_out.empty()) {
    std::filesystem::path p(out);
    if (!p.has_filename()) p = p.parent_path();
    adapter_out = p.string() + "-lr";
  }
  if (!caldera && args.Has("adapter-out"))
    return UsageError(cmd, "--adapter-out is only for --method caldera");
  const bool needs_calib = o.method != compress::BaseMethod::kRtn &&
                           o.method != compress::BaseMethod::kSlimQuant;
  if (needs_calib && !args.Has("calib"))
    return UsageError(cmd, "--method " + args.Str("method") + " needs --calib FILE");

  auto weights = LoadModel(args.Str("model"));
  if (!weights.ok()) return Fail(cmd, weights.status());
  const ModelWeights& fp = *weights;
  std::optional<compress::CalibrationSet> calib;
  if (needs_calib) {
    if (!fp.tokenizer && args.Str("calib").find(".tokens") == std::string::npos)
      return Fail(cmd, absl::FailedPreconditionError(args.Str("model") +
                                                     " has no tokenizer; pass a .tokens file"));
    compress::CalibrationOptions co;
    co.num_seqs = static_cast<int>(seqs);
    co.seq_len = static_cast<int>(std::min<int64_t>(seq_len, fp.config.max_seq_len));
    co.heldout_seqs = 0;
    auto c = compress::LoadCalibration(args.Str("calib"), *fp.tokenizer, co);
    if (!c.ok()) return Fail(cmd, c.status());
    calib = std::move(*c);
  }
  ThreadPool pool(static_cast<int>(threads));
  std::fprintf(stderr, "compress: %s, %d layers, %s%s\n", args.Str("method").c_str(),
               fp.config.n_layers,
               calib ? (std::to_string(calib->fit.size()) + " calibration sequences of " +
                        std::to_string(calib->seq_len) + " tokens")
                           .c_str()
                     : "no calibration",
               "");
  auto res = compress::CompressModel(fp, calib ? &*calib : nullptr, o, &pool,
                                     LayerProgress("compress"));
  if (!res.ok()) return Fail(cmd, res.status());
  res->metadata["seconds"] = std::to_string(res->seconds);
  if (absl::Status s = WriteCompressedModel(out, *res->weights, res->metadata, args.Has("overwrite"));
      !s.ok())
    return Fail(cmd, s);
  CompressedModelInfo info;
  auto again = LoadCompressedModel(out, &info);
  if (!again.ok()) return Fail(cmd, again.status());
  uint64_t adapter_bytes = 0;
  if (caldera) {
    AdapterMetadata meta;
    meta.method = "caldera";
    meta.rank = res->caldera_adapter->max_rank();
    meta.factor_bits = o.caldera_bits_lr;
    meta.base_model = args.Str("model");
    meta.base_fingerprint = ArchitectureFingerprint(fp.config);
    meta.compressed_base = info.content_sha256;
    meta.calibration_hash = calib->hash;
    meta.calibration_seqs = static_cast<int>(calib->fit.size());
    meta.calibration_seq_len = calib->seq_len;
    meta.fit_seconds = res->seconds;
    meta.extra["note"] = "CALDERA L, R: fitted jointly with the compressed base in " + out;
    if (absl::Status s = WriteAdapterDir(adapter_out, *res->caldera_adapter, meta, args.Has("overwrite"));
        !s.ok())
      return Fail(cmd, s);
    auto b = DirectoryBytes(adapter_out);
    adapter_bytes = b.ok() ? *b : 0;
  }
  const double bpw = compress::LinearBitsPerWeight(*res->weights, res->caldera_adapter.get(),
                                                   res->caldera_adapter ? res->caldera_adapter->max_rank() : 0);
  if (args.Has("json")) {
    std::printf("{\"out\": \"%s\", \"method\": \"%s\", \"seconds\": %.3f, \"bytes\": %llu, "
                "\"linear_bits_per_weight\": %.4f, \"content_sha256\": \"%s\", "
                "\"adapter_out\": \"%s\", \"adapter_bytes\": %llu}\n",
                out.c_str(), args.Str("method").c_str(), res->seconds,
                static_cast<unsigned long long>(info.bytes), bpw, info.content_sha256.c_str(),
                caldera ? adapter_out.c_str() : "", static_cast<unsigned long long>(adapter_bytes));
  } else {
    std::printf("wrote %s (%llu bytes, %.3f bits per linear weight%s) in %.1fs\n", out.c_str(),
                static_cast<unsigned long long>(info.bytes), bpw,
                caldera ? (" incl. L, R; L, R in " + adapter_out).c_str() : "", res->seconds);
  }
  return 0;
}

}  // namespace eora::cli
