// Shared helpers for tests: locating bundled and shared data.
#pragma once

#include <cstddef>
#include <string>

namespace eora::testing {

// Absolute path of a file in the source tree, e.g. SourcePath("models/stories260K/stories260K.gguf").
std::string SourcePath(const std::string& rel);
// The bundled stories260K GGUF (always present in the repository).
std::string Stories260kPath();
// ../shared/data/<rel> next to the repository, or "" when it is absent.
std::string SharedDataPath(const std::string& rel);
// A fresh empty temporary directory (removed by the OS; tests may remove it).
std::string MakeTempDir(const std::string& prefix);
std::string ReadFileOrDie(const std::string& path);
// Runs a shell command line; stdout (stderr dropped) and the exit status (-1 when
// it did not exit normally).
struct ShResult {
  int rc = -1;
  std::string out;
};
ShResult Sh(const std::string& cmd);
// build/bin/eora, or "" when it is not built.
std::string EoraCliPath();
void WriteFileOrDie(const std::string& path, const std::string& data);

// Rewrites `rows` rows of current-layout 3-bit blocks (row_bytes = 12 * blocks)
// in place into the layout of packed format version 1 or 2 (docs/formats.md), as
// files written by those versions hold them; for loader tests.
void RewriteQ3RowsAsVersion(int version, char* data, size_t rows, size_t row_bytes);

}  // namespace eora::testing
