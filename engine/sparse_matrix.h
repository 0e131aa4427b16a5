// 2:4 structured sparse matrices (MatrixFormat::kSparse24 and kSparse24Quant),
// with access to their packed storage. Layouts: docs/formats.md ("version 1").
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/huge_pages.h"
#include "engine/matrix.h"
#include "engine/quant_matrix.h"

namespace eora {

// Each row keeps 2 values per aligned group of 4 columns (cols padded to a
// multiple of 4 with zeros): kept = 2 * ceil(cols / 4) slots, padded with zero
// slots to kept_blocks * 32 (kept_blocks = ceil(kept / 32); one kept block covers
// 64 columns). Kept slot i of a row lies in column 4 * (i / 2) + pos[i], pos in
// 0..3, with pos[2m] < pos[2m+1].
// Metadata: [rows][kept_blocks * 8] bytes; per 32 kept slots, the 32 positions
// packed like 2-bit codes (PackQuantBlock(2, ...)).
int Sparse24KeptBlocks(int cols);

// Splits a dense row-major [rows][cols] matrix into kept slots
// ([rows][kept_blocks * 32], zero in padding) and packed positions; fails with
// InvalidArgument if an aligned group of 4 has more than 2 non-zeros.
absl::Status Sparse24Compress(int rows, int cols, const float* w, std::vector<float>* kept,
                              std::vector<uint8_t>* meta);

// Checks metadata: size, and positions strictly increasing inside each group.
absl::Status ValidateSparse24Meta(int rows, int cols, const std::vector<uint8_t>& meta);

// kSparse24: kept values stored as F16 [rows][kept_blocks * 32].
class Sparse24Matrix final : public Matrix {
 public:
  static absl::StatusOr<std::unique_ptr<Sparse24Matrix>> Create(int rows, int cols, const float* w);
  // From packed storage (e.g. read from a file); validates sizes and metadata.
  static absl::StatusOr<std::unique_ptr<Sparse24Matrix>> FromPacked(int rows, int cols,
                                                                    std::vector<uint16_t> values_f16,
                                                                    std::vector<uint8_t> meta);

  MatrixFormat format() const override { return MatrixFormat::kSparse24; }
  std::string Describe() const override { return "2:4 f16"; }
  size_t StorageBytes() const override;
  void MatMulRows(const MatMulInput& in, float* y, int ldy, int r0, int r1) const override;
  void DequantizeRow(int r, float* out) const override;

  int kept_blocks() const { return kept_blocks_; }
  const WeightVector<uint16_t>& values_f16() const { return values_; }
  const std::vector<uint8_t>& meta() const { return meta_; }

 private:
  Sparse24Matrix(int rows, int cols, std::vector<uint16_t> values, std::vector<uint8_t> meta);
  int kept_blocks_;
  WeightVector<uint16_t> values_;
  std::vector<uint8_t> meta_;
};

// kSparse24Quant: kept slots stored as a QuantMatrix of [rows][kept_blocks * 32]
// (groups count kept slots; group_size 0 = one group per row).
class Sparse24QuantMatrix final : public Matrix {
 public:
  // Quantizes the kept values with RTN (asymmetric min/max per group of kept slots).
  static absl::StatusOr<std::unique_ptr<Sparse24QuantMatrix>> Create(int rows, int cols,
                                                                     const float* w, QuantSpec spec);
  // From the codes of the kept slots (kept.cols == kept_blocks * 32) and positions.
  static absl::StatusOr<std::unique_ptr<Sparse24QuantMatrix>> FromKept(int cols,
                                                                       const QuantizedWeights& kept,
                                                                       std::vector<uint8_t> meta);
  // From packed storage (kept.cols == kept_blocks * 32).
  static absl::StatusOr<std::unique_ptr<Sparse24QuantMatrix>> FromPacked(int cols, PackedQuant kept,
                                                                         std::vector<uint8_t> meta);

  MatrixFormat format() const override { return MatrixFormat::kSparse24Quant; }
  std::string Describe() const override;
  size_t StorageBytes() const override;
  bool WantsQuantizedInput() const override { return true; }
  void MatMulRows(const MatMulInput& in, float* y, int ldy, int r0, int r1) const override;
  void DequantizeRow(int r, float* out) const override;

  int kept_blocks() const { return kept_->blocks_per_row(); }
  const QuantMatrix& kept() const { return *kept_; }
  const std::vector<uint8_t>& meta() const { return meta_; }

 private:
  Sparse24QuantMatrix(int cols, std::unique_ptr<QuantMatrix> kept, std::vector<uint8_t> meta);
  std::unique_ptr<QuantMatrix> kept_;
  std::vector<uint8_t> meta_;
};

}  // namespace eora
