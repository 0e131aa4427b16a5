// Reading small JSON files (configs, metadata) with errors that name the file
// and the key. Shared by the model loader, compressed model and adapter readers.
#ifndef EORA_ENGINE_JSON_FILE_H_
#define EORA_ENGINE_JSON_FILE_H_

#include <optional>
#include <string>
#include <type_traits>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace eora {

// Reads `path` and parses it as one JSON object. NOT_FOUND when the file cannot be
// opened, INVALID_ARGUMENT when it is larger than 64 MiB, not JSON or not an object.
absl::StatusOr<nlohmann::json> ReadJsonObjectFile(const std::string& path);

// The field `key` of object `j` as T (int, int64_t, float, double, bool or
// std::string), with INVALID_ARGUMENT naming `file` and `key` when it is missing
// (and no default is given) or has another JSON type. A null value counts as missing.
template <typename T>
absl::StatusOr<T> JsonField(const nlohmann::json& j, const std::string& key, const std::string& file,
                            std::optional<T> def = std::nullopt) {
  auto error = [&](const char* what) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": field \"", key, "\" ", what));
  };
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (def) return *def;
    return error("is missing");
  }
  if constexpr (std::is_same_v<T, bool>) {
    if (!it->is_boolean()) return error("must be a boolean");
  } else if constexpr (std::is_integral_v<T>) {
    if (!it->is_number_integer()) return error("must be an integer");
  } else if constexpr (std::is_floating_point_v<T>) {
    if (!it->is_number()) return error("must be a number");
  } else if constexpr (std::is_same_v<T, std::string>) {
    if (!it->is_string()) return error("must be a string");
  }
  try {
    return it->get<T>();
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": field \"", key, "\": ", e.what()));
  }
}

}  // namespace eora

#endif  // EORA_ENGINE_JSON_FILE_H_
