// Dense products through cuBLAS (cublasGemmEx): y[t][r] = sum_k W[r][k] x[t][k]
// for W row-major [rows][cols] in F32, F16 or BF16 (the CPU dense layouts). F32
// activations are converted to W's type first (into `scratch`), accumulation and
// output are F32 (CUBLAS_COMPUTE_32F).
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "absl/status/status.h"

namespace eora::cuda {

// Bytes of `scratch` LaunchDenseGemm needs.
size_t DenseGemmScratchBytes(int dtype, int n, int cols);

// dtype: 0 F32, 1 F16, 2 BF16. The handle must be bound to `stream` by the caller
// (cublasSetStream) or this call binds it.
absl::Status LaunchDenseGemm(cublasHandle_t handle, int dtype, const void* w, int rows, int cols,
                             const float* x, int n, int ldx, float* y, int ldy, void* scratch,
                             cudaStream_t stream);

}  // namespace eora::cuda
