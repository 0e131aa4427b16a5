// Atomic writes of whole directories (adapters, compressed models) and a
// safetensors writer for tensors of any safetensors dtype (U8 packed codes, F16
// scales, ...), which the engine's DType-only writer cannot express.
//
// A DirWriter writes every file into a temporary sibling directory
// (".<name>.tmp.<pid>.<n>"), fsyncs each file and the directory, then renames it
// into place in Commit(), so a reader never sees a half-written directory. With
// `overwrite`, an existing directory is swapped out atomically (renameat2
// RENAME_EXCHANGE) and then removed.
//
// Threading contract: one DirWriter is used from one thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace eora {

// A tensor to write: `data` holds `byte_size` bytes (not owned), laid out as
// product(shape) elements of `dtype` (a safetensors dtype name: "F32", "F16", "U8", ...).
// Instead of `data`, `produce` may make the bytes when the tensor's turn comes, so
// that a writer need not hold a converted copy of every tensor at once: it is
// called once, just before the tensor is written, and what it returns must stay
// valid until the next tensor's `produce` is called (or the write ends).
struct RawTensor {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t byte_size = 0;
  std::function<const void*()> produce;
};
// Called with each tensor's bytes as they are written (e.g. to hash them).
using TensorObserver = std::function<void(const RawTensor&, const void* data)>;

// Element size of a safetensors dtype name (0 if unknown).
int SafetensorsElementSize(std::string_view dtype);

class DirWriter {
 public:
  // Creates the temporary sibling of `dir` (and missing parent directories). Fails with
  // ALREADY_EXISTS if `dir` exists and !overwrite.
  static absl::StatusOr<std::unique_ptr<DirWriter>> Begin(const std::string& dir, bool overwrite);
  ~DirWriter();  // removes the temporary directory unless committed
  DirWriter(const DirWriter&) = delete;
  DirWriter& operator=(const DirWriter&) = delete;

  const std::string& dir() const { return dir_; }
  const std::string& temp_dir() const { return tmp_; }

  // Writes `name` (a plain file name) inside the temporary directory and fsyncs it.
  absl::Status WriteFile(const std::string& name, std::string_view contents);
  // Writes a safetensors file: header padded with spaces to a multiple of 8 bytes,
  // tensors back to back in the given order. Checks byte_size against shape x dtype.
  absl::Status WriteSafetensors(const std::string& name, const std::vector<RawTensor>& tensors,
                                const std::map<std::string, std::string>& metadata = {},
                                const TensorObserver& observe = {});
  // fsyncs the temporary directory, renames it to `dir` and fsyncs the parent.
  absl::Status Commit();

 private:
  DirWriter() = default;
  std::string dir_, tmp_, parent_;
  bool overwrite_ = false;
  bool committed_ = false;
};

// Sum of the sizes of the regular files directly inside `dir`.
absl::StatusOr<uint64_t> DirectoryBytes(const std::string& dir);

}  // namespace eora
