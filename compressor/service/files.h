// Durable file operations of eora-compressor's data directory.
//
//   WriteFileAtomic: temporary sibling (".<name>.tmp.<pid>.<n>"), write, fsync,
//   rename over the name, fsync the directory: a reader (or a restart after a
//   crash) sees the old file or the whole new one, never a part.
//
// Threading contract: functions are reentrant.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace eora::compress::service {

absl::Status WriteFileAtomic(const std::string& path, std::string_view contents);
absl::StatusOr<std::string> ReadWholeFile(const std::string& path);
// Removes `.<prefix>.tmp.*` entries (files or directories) left in `dir` by a
// process that died while writing; prefix "" removes every `.*.tmp.*` entry.
// Returns how many were removed.
int RemoveStaleTemporaries(const std::string& dir, const std::string& prefix);
// Total bytes of the regular files under `dir`, recursively (0 if absent).
uint64_t TreeBytes(const std::string& dir);

}  // namespace eora::compress::service
