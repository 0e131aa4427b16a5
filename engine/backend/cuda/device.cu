#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/device.h"

namespace eora::cuda {

absl::StatusOr<std::vector<DeviceInfo>> ListDevices() {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error
    return absl::UnavailableError(
        absl::StrCat("no usable CUDA device: ", cudaGetErrorString(err)));
  }
  std::vector<DeviceInfo> out;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp p;
    err = cudaGetDeviceProperties(&p, i);
    if (err != cudaSuccess)
      return absl::InternalError(
          absl::StrCat("cudaGetDeviceProperties(", i, "): ", cudaGetErrorString(err)));
    DeviceInfo d;
    d.index = i;
    d.name = p.name;
    d.compute_major = p.major;
    d.compute_minor = p.minor;
    d.total_memory = p.totalGlobalMem;
    d.multiprocessors = p.multiProcessorCount;
    out.push_back(std::move(d));
  }
  return out;
}

}  // namespace eora::cuda
