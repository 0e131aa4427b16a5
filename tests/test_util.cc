#include "tests/test_util.h"

#include <sys/wait.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "engine/quant_matrix.h"

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

ShResult Sh(const std::string& cmd) {
  ShResult r;
  FILE* p = popen((cmd + " 2>/dev/null").c_str(), "r");
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int st = pclose(p);
  r.rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

std::string EoraCliPath() {
#ifdef EORA_BINARY_DIR
  const std::string p = std::string(EORA_BINARY_DIR) + "/bin/eora";
  if (std::filesystem::exists(p)) return p;
#endif
  return "";
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

void RewriteQ3RowsAsVersion(int version, char* data, size_t rows, size_t row_bytes) {
  const int blocks = static_cast<int>(row_bytes / 12);
  std::vector<uint8_t> codes(32 * static_cast<size_t>(blocks));
  for (size_t r = 0; r < rows; ++r) {
    uint8_t* row = reinterpret_cast<uint8_t*>(data + r * row_bytes);
    for (int b = 0; b < blocks; ++b) UnpackQuantBlock(3, row + 12 * b, codes.data() + 32 * b, b, blocks);
    for (int b = 0; b < blocks; ++b) {
      // Both versions: a 2-bit low plane L (byte i, bits 2j..2j+1 = code i + 8j)
      // and a 32-bit high word H. Version 1: [L][H], code k's high bit at
      // 8 * (k % 4) + k / 4. Version 2: even blocks [L][H], odd [H][L], bit k.
      const uint8_t* c = codes.data() + 32 * b;
      uint8_t* p = row + 12 * b;
      const bool odd2 = version == 2 && b % 2 == 1;
      uint32_t h = 0;
      for (int k = 0; k < 32; ++k)
        h |= static_cast<uint32_t>((c[k] >> 2) & 1) << (version == 1 ? 8 * (k % 4) + k / 4 : k);
      for (int i = 0; i < 8; ++i)
        p[(odd2 ? 4 : 0) + i] =
            static_cast<uint8_t>((c[i] & 3) | (c[i + 8] & 3) << 2 | (c[i + 16] & 3) << 4 | (c[i + 24] & 3) << 6);
      std::memcpy(p + (odd2 ? 0 : 8), &h, 4);
    }
  }
}

}  // namespace eora::testing
