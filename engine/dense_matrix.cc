// Dense F32 / F16 / BF16 matrices. (Portable baseline; SIMD paths live in
// engine/backend/cpu.)
#include <cstring>

#include "absl/strings/ascii.h"
#include "engine/matrix.h"

namespace eora {
namespace {

class DenseMatrix final : public Matrix {
 public:
  DenseMatrix(DType dtype, int rows, int cols, const void* data)
      : Matrix(rows, cols), dtype_(dtype) {
    const size_t bytes = static_cast<size_t>(rows) * cols * DTypeSize(dtype);
    data_.resize(bytes);
    std::memcpy(data_.data(), data, bytes);
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

  void MatMulRows(const MatMulInput& in, float* y, int ldy, int r0, int r1) const override {
    std::vector<float> row(cols());
    for (int r = r0; r < r1; ++r) {
      DequantizeRow(r, row.data());
      for (int t = 0; t < in.n; ++t) {
        const float* x = in.x + static_cast<size_t>(t) * in.ldx;
        float acc = 0.f;
        for (int k = 0; k < cols(); ++k) acc += row[k] * x[k];
        y[static_cast<size_t>(t) * ldy + r] = acc;
      }
    }
  }

  void DequantizeRow(int r, float* out) const override {
    const size_t off = static_cast<size_t>(r) * cols() * DTypeSize(dtype_);
    ConvertToF32(dtype_, data_.data() + off, out, cols());
  }

 private:
  const DType dtype_;
  std::vector<uint8_t> data_;
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

const char* KernelIsaName() { return "generic"; }

}  // namespace eora
