#include "engine/backend/cuda/device_buffer.h"

#include <utility>

#include "engine/backend/cuda/cuda_status.h"

namespace eora::cuda {

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  DeviceBuffer b;
  if (bytes == 0) return b;
  void* p = nullptr;
  absl::Status s = CudaStatus(cudaMalloc(&p, bytes), "cudaMalloc");
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat(s.message(), " (", bytes, " bytes)"));
  b.ptr_ = p;
  b.bytes_ = bytes;
  return b;
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

absl::Status DeviceBuffer::CopyFromHost(const void* src, size_t bytes, size_t offset) {
  if (offset + bytes > bytes_)
    return absl::OutOfRangeError(absl::StrCat("copy of ", bytes, " bytes at ", offset,
                                              " into a device buffer of ", bytes_));
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpy(static_cast<char*>(ptr_) + offset, src, bytes,
                               cudaMemcpyHostToDevice),
                    "cudaMemcpy(host->device)");
}

absl::Status DeviceBuffer::CopyToHost(void* dst, size_t bytes, size_t offset) const {
  if (offset + bytes > bytes_)
    return absl::OutOfRangeError(absl::StrCat("copy of ", bytes, " bytes at ", offset,
                                              " from a device buffer of ", bytes_));
  if (bytes == 0) return absl::OkStatus();
  return CudaStatus(cudaMemcpy(dst, static_cast<const char*>(ptr_) + offset, bytes,
                               cudaMemcpyDeviceToHost),
                    "cudaMemcpy(device->host)");
}

absl::Status DeviceBuffer::Zero() {
  if (bytes_ == 0) return absl::OkStatus();
  return CudaStatus(cudaMemset(ptr_, 0, bytes_), "cudaMemset");
}

absl::StatusOr<DevicePool> DevicePool::Create(size_t capacity) {
  DevicePool p;
  absl::StatusOr<DeviceBuffer> b = DeviceBuffer::Allocate(capacity);
  if (!b.ok()) return b.status();
  p.buffer_ = std::move(*b);
  return p;
}

absl::StatusOr<void*> DevicePool::Allocate(size_t bytes) {
  const size_t start = (used_ + kAlignment - 1) / kAlignment * kAlignment;
  if (start + bytes > buffer_.bytes())
    return absl::ResourceExhaustedError(absl::StrCat("device pool: ", bytes, " bytes requested, ",
                                                     buffer_.bytes() - used_, " of ",
                                                     buffer_.bytes(), " left"));
  used_ = start + bytes;
  return static_cast<void*>(static_cast<char*>(buffer_.data()) + start);
}

}  // namespace eora::cuda
