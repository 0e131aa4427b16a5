// CUDA runtime and cuBLAS errors as absl::Status. Internal to the CUDA backend:
// includes CUDA headers, so only .cu files and the backend's own .cc files use it
// (the public host API is engine/backend/cuda/cuda_ops.h, free of CUDA types).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace eora::cuda {

// OK for cudaSuccess; otherwise clears the (non-sticky) error and returns
// INTERNAL (UNAVAILABLE for "no device / no driver", RESOURCE_EXHAUSTED for
// out-of-memory) naming `what` and the runtime's message.
inline absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();
  const std::string msg =
      absl::StrCat(what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
  switch (err) {
    case cudaErrorMemoryAllocation:
      return absl::ResourceExhaustedError(msg);
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
      return absl::UnavailableError(msg);
    default:
      return absl::InternalError(msg);
  }
}

inline const char* CublasStatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}

inline absl::Status CublasStatus(cublasStatus_t s, const char* what) {
  if (s == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string msg = absl::StrCat(what, ": ", CublasStatusName(s));
  if (s == CUBLAS_STATUS_ALLOC_FAILED) return absl::ResourceExhaustedError(msg);
  if (s == CUBLAS_STATUS_NOT_SUPPORTED || s == CUBLAS_STATUS_INVALID_VALUE)
    return absl::InvalidArgumentError(msg);
  return absl::InternalError(msg);
}

// The status of the last kernel launch (launch-configuration errors; execution
// errors surface at the next synchronisation).
inline absl::Status LaunchStatus(const char* kernel) {
  return CudaStatus(cudaGetLastError(), kernel);
}

}  // namespace eora::cuda

#define EORA_CUDA_RETURN_IF_ERROR(expr)                                      \
  do {                                                                       \
    ::absl::Status eora_cuda_status_ = ::eora::cuda::CudaStatus((expr), #expr); \
    if (!eora_cuda_status_.ok()) return eora_cuda_status_;                   \
  } while (0)

#define EORA_CUBLAS_RETURN_IF_ERROR(expr)                                        \
  do {                                                                           \
    ::absl::Status eora_cuda_status_ = ::eora::cuda::CublasStatus((expr), #expr); \
    if (!eora_cuda_status_.ok()) return eora_cuda_status_;                       \
  } while (0)
