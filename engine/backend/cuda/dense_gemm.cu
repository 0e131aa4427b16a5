#include "engine/backend/cuda/convert.cuh"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/dense_gemm.cuh"

namespace eora::cuda {

size_t DenseGemmScratchBytes(int dtype, int n, int cols) {
  return dtype == 0 ? 0 : static_cast<size_t>(n) * cols * 2;
}

absl::Status LaunchDenseGemm(cublasHandle_t handle, int dtype, const void* w, int rows, int cols,
                             const float* x, int n, int ldx, float* y, int ldy, void* scratch,
                             cudaStream_t stream) {
  if (rows == 0 || n == 0) return absl::OkStatus();
  EORA_CUBLAS_RETURN_IF_ERROR(cublasSetStream(handle, stream));
  cudaDataType_t type = CUDA_R_32F;
  const void* b = x;
  int ldb = ldx;
  if (dtype == 1 || dtype == 2) {
    type = dtype == 1 ? CUDA_R_16F : CUDA_R_16BF;
    absl::Status s = LaunchConvertF32(x, n, cols, ldx, dtype, scratch, stream);
    if (!s.ok()) return s;
    b = scratch;
    ldb = cols;
  } else if (dtype != 0) {
    return absl::InvalidArgumentError(absl::StrCat("dense gemm: dtype ", dtype));
  }
  // Column-major view: W row-major [rows][cols] is W^T col-major (lda = cols);
  // x [n][ldx] is col-major [cols x n]; y [n][ldy] is col-major [rows x n].
  // y_cm = (W^T)^T x_cm: m = rows, n = n, k = cols, op(A) = T.
  const float alpha = 1.f, beta = 0.f;
  EORA_CUBLAS_RETURN_IF_ERROR(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, rows, n, cols, &alpha,
                                           w, type, cols, b, type, ldb, &beta, y, CUDA_R_32F, ldy,
                                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  return absl::OkStatus();
}

}  // namespace eora::cuda
