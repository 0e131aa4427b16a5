// A read-only memory mapping of a whole file: what the weight file readers
// (GgufFile, SafetensorsFile) open, so their tensor data pointers point into it.
//
// Threading contract: immutable after Open; data() and size() may be called
// concurrently. Move-only; the mapping is released by the destructor.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace eora {

class MappedFile {
 public:
  // Maps the regular file `path` (PROT_READ, MAP_PRIVATE). NOT_FOUND if it does
  // not exist; INVALID_ARGUMENT if it cannot be opened, is not a regular file, or
  // is shorter than `min_size` ("<path>: truncated <kind> file: N bytes, shorter
  // than the <header>"); INTERNAL if mmap fails. Messages start with the path.
  static absl::StatusOr<MappedFile> Open(const std::string& path, uint64_t min_size,
                                         const char* kind, const char* header);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

}  // namespace eora
