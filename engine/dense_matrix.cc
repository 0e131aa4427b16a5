// Dense F32 / F16 / BF16 matrices. Kernels: engine/backend/cpu (SIMD, dispatched).
#include <algorithm>
#include <cstring>

#include "absl/strings/ascii.h"
#include "engine/backend/cpu/kernels.h"
#include "engine/huge_pages.h"
#include "engine/matrix.h"

namespace eora {
namespace {

class DenseMatrix final : public Matrix {
 public:
  DenseMatrix(DType dtype, int rows, int cols, const void* data)
      : Matrix(rows, cols), dtype_(dtype) {
    const size_t bytes = static_cast<size_t>(rows) * cols * DTypeSize(dtype);
    data_.resize(bytes);
    if (bytes > 0) std::memcpy(data_.data(), data, bytes);
  }

  MatrixFormat format() const override {
    switch (dtype_) {
      case DType::kF32: return MatrixFormat::kF32;
      case DType::kF16: return MatrixFormat::kF16;
      case DType::kBF16: return MatrixFormat::kBF16;
    }
    return MatrixFormat::kF32;
  }
  std::string Describe() const override { return absl::AsciiStrToLower(DTypeName(dtype_)); }
  size_t StorageBytes() const override { return data_.size(); }
  const void* DenseElements() const override { return data_.data(); }

  void MatMulRows(const MatMulInput& in, float* y, int ldy, int r0, int r1) const override {
    if (r0 >= r1 || in.n <= 0) return;
    cpu::Kernels().dense_gemm[KernelType()](data_.data(), cols(), r0, r1, in.x, in.n, in.ldx, y, ldy);
  }

  void AccumulateTransposed(const float* u, int ldu, int n, int r, float* y, int ldy, int c0,
                            int c1) const override {
    c0 = std::max(c0, 0);
    c1 = std::min(c1, cols());
    r = std::min(r, rows());
    if (n <= 0 || r <= 0 || c0 >= c1) return;
    cpu::Kernels().dense_acc_t[KernelType()](data_.data(), cols(), u, ldu, n, r, y, ldy, c0, c1);
  }

  void DequantizeRow(int r, float* out) const override {
    const size_t off = static_cast<size_t>(r) * cols() * DTypeSize(dtype_);
    ConvertToF32(dtype_, data_.data() + off, out, cols());
  }

 private:
  int KernelType() const {
    return dtype_ == DType::kF32 ? cpu::kDenseF32 : dtype_ == DType::kF16 ? cpu::kDenseF16 : cpu::kDenseBF16;
  }

  const DType dtype_;
  WeightVector<uint8_t> data_;
};

}  // namespace

std::unique_ptr<Matrix> MakeDenseMatrix(DType dtype, int rows, int cols, const void* data) {
  return std::make_unique<DenseMatrix>(dtype, rows, cols, data);
}

std::unique_ptr<Matrix> MakeDenseMatrixFromF32(DType dtype, int rows, int cols, const float* w) {
  const size_t n = static_cast<size_t>(rows) * cols;
  if (dtype == DType::kF32) return MakeDenseMatrix(dtype, rows, cols, w);
  std::vector<uint16_t> tmp(n);
  for (size_t i = 0; i < n; ++i) tmp[i] = dtype == DType::kF16 ? F32ToF16(w[i]) : F32ToBF16(w[i]);
  return MakeDenseMatrix(dtype, rows, cols, tmp.data());
}

const char* KernelIsaName() { return cpu::ActiveIsaName(); }

}  // namespace eora
