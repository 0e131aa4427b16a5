// Concrete group-wise quantized and 2:4 sparse matrices, with access to their
// packed storage for file writers and a factory from already-packed bytes for
// loaders. Layouts: docs/formats.md ("version 1").
#pragma once

#include <cstdint>
#include <memory>
#include <atomic>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/cpu/kernels.h"
#include "engine/huge_pages.h"
#include "engine/matrix.h"

namespace eora {

// Version of the packed layouts below (docs/formats.md). Versions 2 and 3 changed
// only the 3-bit blocks (2: high-bit order and the plane order of odd blocks; 3:
// the two blocks of a pair share interleaved planes); files of versions 1 and 2
// are still read (UpgradePacked).
inline constexpr int kPackedFormatVersion = 3;

// Bytes of one packed block of 32 codes: 16 (4-bit), 12 (3-bit), 8 (2-bit).
int QuantBlockBytes(int bits);
// Packs 32 codes (each < 2^bits) into QuantBlockBytes(bits) bytes, and back;
// `block` is the block's index in a row of `row_blocks` blocks, and out/in point
// at the block's own bytes. 3-bit blocks 2j and 2j + 1 share their bytes (an odd
// block reads and writes the 12 bytes before it too); pack both.
void PackQuantBlock(int bits, const uint8_t* codes32, uint8_t* out, int block, int row_blocks);
void UnpackQuantBlock(int bits, const uint8_t* in, uint8_t* codes32, int block, int row_blocks);

// Validates a QuantSpec and a shape (bits in {2,3,4}, group_size >= 0 and a
// multiple of 32, rows, cols >= 1).
absl::Status ValidateQuantSpec(int rows, int cols, const QuantSpec& spec);

// Int8 activations as a kernel view, with per-group block sums for groups of
// `bpg` blocks (`groups` per row) computed into thread-local scratch (slot 1).
cpu::QActView MakeQActView(const QuantizedActivations& qx, int bpg, int groups);

// The packed storage of a group-wise quantized matrix:
//   packed:   [rows][blocks * QuantBlockBytes(bits)], blocks = ceil(cols / 32)
//   scale/min: F16 bits, [rows][groups]
struct PackedQuant {
  int rows = 0, cols = 0;
  QuantSpec spec;
  WeightVector<uint8_t> packed;  // huge-page backed when large (engine/huge_pages.h)
  std::vector<uint16_t> scale_f16;
  std::vector<uint16_t> min_f16;
};

// Rewrites packed storage read from a file of format version `from_version` into
// the current layout (a no-op unless the codes are 3-bit and the version older).
void UpgradePacked(PackedQuant* p, int from_version);

// How a QuantMatrix keeps its codes in memory. kRows: the file layout above
// (PackedQuant). kPanels: panels of 16 rows with the codes of 16 rows interleaved
// per vector (docs/formats.md, "Panels of 16 rows"), for kernels that compute 16
// rows per instruction; needs every pair of blocks inside one weight group (group
// size a multiple of 64, or one group per row), else the rows stay in kRows.
// kBest: kPanels where the active kernel table prefers it and the padding of the
// last panel adds at most 1/16 to the codes, else kRows.
enum class QuantLayout { kBest, kRows, kPanels };

// MatrixFormat::kQuant.
class QuantMatrix final : public Matrix {
 public:
  // Validates the unpacked form (sizes, codes < 2^bits, finite scales/mins) and packs.
  static absl::StatusOr<std::unique_ptr<QuantMatrix>> Create(const QuantizedWeights& w,
                                                             QuantLayout layout = QuantLayout::kBest);
  // Takes already-packed storage (e.g. read from a file); validates sizes only.
  static absl::StatusOr<std::unique_ptr<QuantMatrix>> FromPacked(PackedQuant p,
                                                                 QuantLayout layout = QuantLayout::kBest);

  MatrixFormat format() const override { return MatrixFormat::kQuant; }
  std::string Describe() const override;
  size_t StorageBytes() const override;
  bool WantsQuantizedInput() const override { return true; }
  void MatMulRows(const MatMulInput& in, float* y, int ldy, int r0, int r1) const override;
  void AccumulateTransposed(const float* u, int ldu, int n, int r, float* y, int ldy, int c0,
                            int c1) const override;
  void PrepareAccumulateTransposed() const override;
  void DequantizeRow(int r, float* out) const override;
  // Bytes of the rank-interleaved copy, once built (0 before).
  size_t TransposedCopyBytes() const;
  size_t AuxiliaryBytes() const override { return TransposedCopyBytes(); }

  const QuantSpec& spec() const { return p_.spec; }
  int bits() const { return p_.spec.bits; }
  int blocks_per_row() const { return blocks_; }
  int groups() const { return groups_; }
  int group_size_effective() const { return bpg_ * 32; }
  // Bytes of a row in the file layout (PackedQuant).
  size_t row_bytes() const { return row_bytes_; }
  // Whether the codes are kept in panels of 16 rows (QuantLayout::kPanels).
  bool panels() const { return panels_; }
  // The packed storage in the file layout (PackedQuant; a copy, converted from the
  // panels when the matrix keeps them).
  PackedQuant packed() const;
  // Unpacked codes of row r (cols() values).
  void RowCodes(int r, uint8_t* out) const;
  // The unpacked form: codes and the (F16-rounded) scales and mins as floats.
  QuantizedWeights Unpack() const;
  // Kernel view of the storage.
  cpu::QuantView view() const;

 private:
  // p in the file layout; rearranged into panels where `layout` (QuantLayout) says so.
  QuantMatrix(PackedQuant p, QuantLayout layout);
  // Index of row r's group g in the scale and min vectors of p_.
  size_t ScaleIndex(int r, int g) const;
  // The rank-interleaved copy for the int8 B side (cpu::QuantAccTView), built once.
  const cpu::QuantAccTView& TransposedCopy() const;

  PackedQuant p_;  // in the layout of panels_ (packed codes, scales and mins)
  bool panels_ = false;
  int blocks_ = 0, groups_ = 0, bpg_ = 1;
  size_t row_bytes_ = 0;
  mutable std::once_flag tc_once_;
  mutable WeightVector<uint8_t> tc_il_;
  mutable std::vector<uint16_t> tc_scale_t_, tc_min_t_;  // F16, as the matrix's own
  mutable cpu::QuantAccTView tc_view_;
  mutable std::atomic<bool> tc_built_{false};
};

}  // namespace eora
