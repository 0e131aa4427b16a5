#include "engine/json_file.h"

#include <filesystem>
#include <fstream>
#include <sstream>

namespace eora {

absl::StatusOr<nlohmann::json> ReadJsonObjectFile(const std::string& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat(path, ": cannot read: ", ec.message()));
  if (size > (64u << 20))
    return absl::InvalidArgumentError(absl::StrCat(path, ": file is too large (", size, " bytes)"));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  try {
    nlohmann::json j = nlohmann::json::parse(ss.str());
    if (!j.is_object())
      return absl::InvalidArgumentError(absl::StrCat(path, ": top level is not a JSON object"));
    return j;
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": invalid JSON: ", e.what()));
  }
}

}  // namespace eora
