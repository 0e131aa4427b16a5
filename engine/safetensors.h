// Reader and writer for safetensors files, and the sharded checkpoint form
// (model.safetensors.index.json) used by Hugging Face.
//
// File layout: u64 little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [r, c], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value", ...}}   (metadata optional, string values)
// then the data section; offsets are relative to its start (byte 8 + N).
//
// SafetensorsFile::Open maps the file read-only and validates every entry (dtype
// known, shape non-negative, end - begin == product(shape) * element size without
// overflow, range within the file). Tensors of any safetensors dtype are listed;
// only F32/F16/BF16 map to an engine DType (others are reported by TensorDType).
// Overlapping data ranges are accepted (they are only bounds-checked).
//
// Threading contract: SafetensorsFile and SafetensorsCheckpoint are immutable after
// Open; const methods may be called concurrently. The writers are free functions
// that share no state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/dtype.h"
#include "engine/mapped_file.h"

namespace eora {

// "F32", "F16", "BF16" (the safetensors spelling of a DType).
const char* SafetensorsDTypeName(DType t);

struct SafetensorsTensor {
  std::string name;
  std::string dtype_name;      // as in the file: "F32", "BF16", "I64", ...
  std::optional<DType> dtype;  // set for F32 / F16 / BF16
  std::vector<int64_t> shape;
  uint64_t n_elements = 0;
  const uint8_t* data = nullptr;  // into the mapping (unaligned); byte_size bytes
  uint64_t byte_size = 0;

  std::string ShapeString() const;  // "[r, c]"
};

class SafetensorsFile {
 public:
  // Maps and validates `path`. Errors name the file (and tensor).
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // Tensors sorted by data offset.
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const SafetensorsTensor* FindTensor(std::string_view name) const;  // nullptr if absent
  absl::StatusOr<const SafetensorsTensor*> GetTensor(std::string_view name) const;  // NOT_FOUND
  // The tensor's engine dtype; UNIMPLEMENTED naming the file, tensor and dtype otherwise.
  absl::StatusOr<DType> TensorDType(const SafetensorsTensor& t) const;

 private:
  SafetensorsFile() = default;
  absl::Status Parse();

  std::string path_;
  MappedFile file_;
  std::vector<SafetensorsTensor> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A Hugging Face checkpoint's weights: model.safetensors, or the shards listed in
// model.safetensors.index.json ("weight_map": tensor name -> shard file name, relative
// to the directory). Every tensor listed in the index must be present in its shard.
class SafetensorsCheckpoint {
 public:
  // `dir` holds model.safetensors.index.json (preferred when present) or model.safetensors.
  static absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  // A tensor and the file it lives in; NOT_FOUND naming the checkpoint if absent.
  struct Entry {
    const SafetensorsFile* file = nullptr;
    const SafetensorsTensor* tensor = nullptr;
  };
  std::optional<Entry> Find(std::string_view name) const;
  absl::StatusOr<Entry> Get(std::string_view name) const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::string dir_;
  std::string description_;  // index or single file path, for messages
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::unordered_map<std::string, Entry> entries_;
};

// Parses model.safetensors.index.json: the weight map (tensor -> shard file name).
// Shard names must be relative paths without "..".
absl::StatusOr<std::map<std::string, std::string>> ReadSafetensorsIndex(
    const std::string& index_path);

// A tensor to write: `data` holds product(shape) elements of `dtype` (not owned).
struct SafetensorsWriteTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t byte_size = 0;
};

// Writes a safetensors file atomically (temporary file in the same directory, fsync,
// rename, fsync of the directory). Tensors are laid out in the given order; the
// header is padded with spaces to a multiple of 8 bytes.
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<SafetensorsWriteTensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Writes model.safetensors.index.json contents: {"metadata": {"total_size": N},
// "weight_map": {...}} (atomically).
absl::Status WriteSafetensorsIndex(const std::string& path,
                                   const std::map<std::string, std::string>& weight_map,
                                   uint64_t total_size);

// Writes `contents` to `path` atomically (temporary name in the same directory,
// fsync, rename, fsync of the directory).
absl::Status WriteFileAtomic(const std::string& path, std::string_view contents);

}  // namespace eora
