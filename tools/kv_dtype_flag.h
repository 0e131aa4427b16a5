// The --kv-dtype flag, shared by the eora subcommands and eora-server.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/kv_cache.h"
#include "tools/cli_args.h"

namespace eora::cli {

inline void DeclareKvDTypeFlag(Args& args) {
  args.Flag("kv-dtype", "f32|f16", "f32",
            "element type of the KV cache: f32, or f16 (half the bytes per position; keys and values "
            "rounded to F16, attention still computes in F32)");
}

// The parsed flag; INVALID_ARGUMENT "--kv-dtype: ..." for other values.
inline absl::StatusOr<KvDType> KvDTypeFlag(const Args& args) {
  absl::StatusOr<KvDType> t = ParseKvDType(args.Str("kv-dtype"));
  if (!t.ok()) return absl::InvalidArgumentError("--kv-dtype: " + std::string(t.status().message()));
  return t;
}

}  // namespace eora::cli
