// CUDA device discovery. Part of the optional CUDA backend (EORA_HAVE_CUDA).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace eora::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int compute_major = 0, compute_minor = 0;
  size_t total_memory = 0;  // bytes
  int multiprocessors = 0;
};

// Lists visible devices. With no driver or no GPU this returns UNAVAILABLE with
// the CUDA runtime's message (callers and tests skip on it).
absl::StatusOr<std::vector<DeviceInfo>> ListDevices();

}  // namespace eora::cuda
