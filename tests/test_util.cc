#include "tests/test_util.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace eora::testing {

std::string SourcePath(const std::string& rel) { return std::string(EORA_SOURCE_DIR) + "/" + rel; }

std::string Stories260kPath() { return SourcePath("models/stories260K/stories260K.gguf"); }

std::string SharedDataPath(const std::string& rel) {
  const char* env = std::getenv("EORA_SHARED_DIR");
  std::string base = env ? std::string(env) : std::string(EORA_SOURCE_DIR) + "/../shared";
  std::string p = base + "/data/" + rel;
  return std::filesystem::exists(p) ? p : "";
}

std::string MakeTempDir(const std::string& prefix) {
  std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
  if (mkdtemp(tmpl.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
  return tmpl;
}

std::string ReadFileOrDie(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteFileOrDie(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
  if (!out) throw std::runtime_error("cannot write " + path);
}

}  // namespace eora::testing
