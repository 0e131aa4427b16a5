#include "tools/model_flags.h"

#include <cstdio>
#include <filesystem>

#include "engine/compressed_model.h"
#include "engine/dir_writer.h"
#include "engine/model_loader.h"
#include "tools/cli_common.h"

namespace eora::cli {
namespace fs = std::filesystem;

void DeclareModelFlags(Args& args) {
  args.Flag("model", "PATH",  "",
            "model: a .gguf file or a Hugging Face checkpoint directory (required unless "
            "--compressed is given; with --compressed it only checks the architecture)");
  args.Flag("compressed", "DIR", "",
            "compressed model directory written by 'eora compress' (used instead of --model's "
            "weights)");
  args.Flag("adapter", "DIR", "", "low-rank adapter directory (PEFT LoRA, e.g. from 'eora fit-adapter')");
  args.Flag("rank", "R", "", "adapter rank to use, 1..stored rank (default: the adapter's stored rank)");
}

int LoadModelFromFlags(const Args& args, const std::string& cmd, LoadedModel* out) {
  if (!args.Has("model") && !args.Has("compressed"))
    return UsageError(cmd, "--model or --compressed is required");
  if (args.Has("rank") && !args.Has("adapter"))
    return UsageError(cmd, "--rank needs --adapter");
  int64_t rank = 0;
  std::string err;
  if (args.Has("rank")) {
    if (!args.Int("rank", &rank, &err)) return UsageError(cmd, err);
    if (rank < 1) return UsageError(cmd, "--rank must be >= 1");
  }
  std::error_code ec;
  CompressedModelInfo info;
  if (args.Has("compressed")) {
    const std::string dir = args.Str("compressed");
    auto w = LoadCompressedModel(dir, &info);
    if (!w.ok()) return Fail(cmd, w.status());
    if (args.Has("model")) {
      auto ref = LoadModel(args.Str("model"));
      if (!ref.ok()) return Fail(cmd, ref.status());
      const std::string a = ArchitectureFingerprint(ref->config), b = ArchitectureFingerprint(w->config);
      if (a != b)
        return Fail(cmd, absl::FailedPreconditionError(
                             args.Str("model") + " has architecture \"" + a + "\" but " + dir +
                             " was compressed from \"" + b + "\""));
    }
    out->weights = std::make_shared<ModelWeights>(std::move(*w));
    out->model_bytes = info.bytes;
    out->description = dir;
  } else {
    auto w = LoadModel(args.Str("model"));
    if (!w.ok()) return Fail(cmd, w.status());
    out->weights = std::make_shared<ModelWeights>(std::move(*w));
    const std::string p = args.Str("model");
    if (fs::is_directory(p, ec)) {
      auto b = DirectoryBytes(p);
      out->model_bytes = b.ok() ? *b : 0;
    } else {
      out->model_bytes = fs::file_size(p, ec);
    }
    out->description = p;
  }
  if (args.Has("adapter")) {
    const std::string dir = args.Str("adapter");
    const std::string name = fs::path(dir).filename().string();
    auto a = LoadAdapterDir(dir, out->weights->config, name.empty() ? dir : name, &out->adapter_meta);
    if (!a.ok()) return Fail(cmd, a.status());
    out->adapter = *a;
    const int max_rank = out->adapter->max_rank();
    if (rank > max_rank)
      return UsageError(cmd, "--rank " + std::to_string(rank) + " exceeds the adapter's stored rank " +
                                 std::to_string(max_rank));
    out->rank = rank > 0 ? static_cast<int>(rank) : max_rank;
    auto b = DirectoryBytes(dir);
    out->adapter_bytes = b.ok() ? *b : 0;
    if (args.Has("compressed") && !out->adapter_meta.compressed_base.empty()) {
      if (info.content_sha256 != out->adapter_meta.compressed_base)
        std::fprintf(stderr,
                     "%s: warning: %s was fitted to compressed base %s, not to %s (%s)\n",
                     cmd.c_str(), dir.c_str(), out->adapter_meta.compressed_base.c_str(),
                     args.Str("compressed").c_str(), info.content_sha256.c_str());
    }
    out->description += " + adapter " + dir + " at rank " + std::to_string(out->rank);
  }
  return 0;
}

}  // namespace eora::cli
