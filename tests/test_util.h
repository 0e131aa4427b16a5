// Shared helpers for tests: locating bundled and shared data.
#pragma once

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
void WriteFileOrDie(const std::string& path, const std::string& data);

}  // namespace eora::testing
