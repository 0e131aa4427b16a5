// Reader for GGUF model files (versions 2 and 3), the single-file format of llama.cpp.
//
// Layout (little-endian): "GGUF" magic, u32 version, u64 tensor count, u64 metadata
// count, the metadata key/value pairs, the tensor infos (name, dims fastest-varying
// first, ggml type, offset), padding to `general.alignment` (default 32), then the
// tensor data. A 2-D llama.cpp tensor with dims (ne) = [cols, rows] is a row-major
// [rows][cols] matrix.
//
// GgufFile::Open maps the file read-only and validates the whole header up front:
// every count, string length, array length, dimension and tensor extent is checked
// against the file size, so a truncated or corrupt file gives an error Status that
// names the file (and the key or tensor) instead of undefined behaviour. Tensor
// data pointers point into the mapping and stay valid for the life of the GgufFile.
//
// Threading contract: a GgufFile is immutable after Open; all const methods may be
// called concurrently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/dtype.h"
#include "engine/mapped_file.h"

namespace eora {

// Metadata value types of the GGUF format (the on-disk ids).
enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};
// "uint8", ..., "array"; "unknown" for ids outside the enum.
const char* GgufTypeName(GgufType t);

// ggml tensor element types this reader knows the storage size of (on-disk ids).
inline constexpr uint32_t kGgmlTypeF32 = 0;
inline constexpr uint32_t kGgmlTypeF16 = 1;
inline constexpr uint32_t kGgmlTypeBF16 = 30;
// "F32", "Q4_K", ...; nullptr for ids this reader does not know.
const char* GgmlTypeName(uint32_t ggml_type);

// One metadata value. Scalars are held decoded; numeric arrays point into the file
// mapping (decode them with the GgufFile::Get*Array helpers); string arrays are copied.
struct GgufValue {
  GgufType type = GgufType::kUint8;
  // Scalars: integers (and bool) widened; signed types sign-extended into `i`, unsigned
  // types zero-extended into `u`.
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0.0;
  std::string str;  // kString
  // kArray: element type and count; numeric elements at `array_data` (unaligned,
  // little-endian), string elements in `strings`.
  GgufType elem_type = GgufType::kUint8;
  uint64_t count = 0;
  const uint8_t* array_data = nullptr;
  std::vector<std::string> strings;
};

// One tensor of the file.
struct GgufTensorInfo {
  std::string name;
  uint32_t ggml_type = 0;
  std::vector<uint64_t> dims;  // ne: fastest-varying first
  uint64_t offset = 0;         // relative to the start of the data section
  uint64_t n_elements = 0;
  uint64_t byte_size = 0;
  const uint8_t* data = nullptr;  // into the mapping; byte_size bytes

  // "[d0, d1, ...]" in file order (ne).
  std::string DimsString() const;
};

class GgufFile {
 public:
  // Maps and validates `path`. Errors name the file and what is wrong with it.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }  // absolute file offset of tensor data
  uint64_t file_size() const { return file_.size(); }

  // ---- Metadata ----
  // Keys in file order.
  const std::vector<std::string>& keys() const { return key_order_; }
  bool HasKey(std::string_view key) const;
  const GgufValue* FindKey(std::string_view key) const;  // nullptr if absent
  // Typed getters. NOT_FOUND if the key is absent; INVALID_ARGUMENT if it has the
  // wrong type (or an integer does not fit). Messages name the file and key.
  absl::StatusOr<std::string> GetString(std::string_view key) const;
  absl::StatusOr<int64_t> GetInt(std::string_view key) const;   // any integer type
  absl::StatusOr<double> GetFloat(std::string_view key) const;  // float32/64 or integer
  absl::StatusOr<bool> GetBool(std::string_view key) const;
  absl::StatusOr<std::vector<std::string>> GetStringArray(std::string_view key) const;
  absl::StatusOr<std::vector<float>> GetFloatArray(std::string_view key) const;  // float or int
  absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;  // integer/bool

  // ---- Tensors ----
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* FindTensor(std::string_view name) const;  // nullptr if absent
  // NOT_FOUND naming the file and tensor if absent.
  absl::StatusOr<const GgufTensorInfo*> GetTensor(std::string_view name) const;
  // The dense dtype of a tensor: F32, F16 or BF16; UNIMPLEMENTED (naming the file,
  // tensor and ggml type) for every other type.
  absl::StatusOr<DType> TensorDType(const GgufTensorInfo& t) const;

 private:
  GgufFile() = default;
  absl::Status Parse();
  absl::StatusOr<const GgufValue*> Lookup(std::string_view key, const char* wanted) const;

  std::string path_;
  MappedFile file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::string> key_order_;
  std::unordered_map<std::string, GgufValue> kv_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

}  // namespace eora
