// Device memory: RAII buffers and a bump-allocating pool over one cudaMalloc.
//
// DeviceBuffer owns one cudaMalloc allocation (never managed memory) and frees it
// in its destructor; it is move-only. DevicePool reserves one large allocation up
// front (weights, KV cache blocks, adapters: sized once at startup, so the serving
// loop never calls cudaMalloc) and hands out 256-byte aligned sub-ranges; ranges
// are released all together with Reset() (scratch arenas) or live as long as the
// pool (weights). The pool does not own what is stored in it.
//
// Threading contract: neither type is thread-safe; each belongs to the thread that
// drives its stream. Freeing waits for nothing: callers synchronise the streams
// that use a buffer before destroying it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"

namespace eora::cuda {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // Allocates `bytes` (0 gives an empty buffer). RESOURCE_EXHAUSTED when the device
  // is out of memory, UNAVAILABLE without a usable device.
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  void* data() const { return ptr_; }
  template <typename T>
  T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }

  // Synchronous copies (host memory may be pageable). `bytes` <= this->bytes().
  absl::Status CopyFromHost(const void* src, size_t bytes, size_t offset = 0);
  absl::Status CopyToHost(void* dst, size_t bytes, size_t offset = 0) const;
  absl::Status Zero();

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

class DevicePool {
 public:
  static constexpr size_t kAlignment = 256;
  // Reserves `capacity` bytes of device memory.
  static absl::StatusOr<DevicePool> Create(size_t capacity);
  DevicePool() = default;
  DevicePool(DevicePool&&) noexcept = default;
  DevicePool& operator=(DevicePool&&) noexcept = default;

  // A kAlignment-aligned range of `bytes`, or RESOURCE_EXHAUSTED (naming the sizes)
  // when the pool is full. Valid until Reset() or the pool's destruction.
  absl::StatusOr<void*> Allocate(size_t bytes);
  // Releases every range handed out (their contents become undefined).
  void Reset() { used_ = 0; }

  size_t capacity() const { return buffer_.bytes(); }
  size_t used() const { return used_; }

 private:
  DeviceBuffer buffer_;
  size_t used_ = 0;
};

}  // namespace eora::cuda
