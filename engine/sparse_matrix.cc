#include "engine/sparse_matrix.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/backend/cpu/kernels.h"
#include "engine/backend/cpu/quant_pack.h"
#include "engine/dtype.h"

namespace eora {
namespace {

// Column of kept slot i of a row (from its position), i in [0, kept_blocks * 32).
inline int SlotColumn(int i, int pos) { return 4 * (i / 2) + pos; }

absl::Status CheckShape(int rows, int cols) {
  if (rows < 1 || cols < 1)
    return absl::InvalidArgumentError(absl::StrCat("2:4 sparse matrix: bad shape ", rows, "x", cols));
  return absl::OkStatus();
}

}  // namespace

int Sparse24KeptBlocks(int cols) { return (cols + 63) / 64; }

absl::Status Sparse24Compress(int rows, int cols, const float* w, std::vector<float>* kept,
                              std::vector<uint8_t>* meta) {
  if (absl::Status s = CheckShape(rows, cols); !s.ok()) return s;
  const int kb = Sparse24KeptBlocks(cols);
  const int slots = kb * 32;
  const int ngroups = (cols + 3) / 4;
  kept->assign(static_cast<size_t>(rows) * slots, 0.f);
  meta->assign(static_cast<size_t>(rows) * kb * 8, 0);
  std::vector<uint8_t> pos(slots);
  for (int r = 0; r < rows; ++r) {
    const float* wr = w + static_cast<size_t>(r) * cols;
    float* kr = kept->data() + static_cast<size_t>(r) * slots;
    for (int i = 0; i < slots; i += 2) {  // padding slots: positions 0 and 1, value 0
      pos[i] = 0;
      pos[i + 1] = 1;
    }
    for (int g = 0; g < ngroups; ++g) {
      int nz[4], nnz = 0;
      for (int p = 0; p < 4; ++p) {
        const int c = 4 * g + p;
        if (c < cols && !(wr[c] == 0.f)) nz[nnz++] = p;
        if (nnz > 2) {
          return absl::InvalidArgumentError(absl::StrCat(
              "2:4 sparse matrix: row ", r, " has more than 2 non-zeros in columns ", 4 * g, "..",
              4 * g + 3));
        }
      }
      // Fill with the lowest zero positions, keep ascending order.
      for (int p = 0; p < 4 && nnz < 2; ++p) {
        if (std::find(nz, nz + nnz, p) == nz + nnz) nz[nnz++] = p;
      }
      std::sort(nz, nz + 2);
      for (int h = 0; h < 2; ++h) {
        const int c = 4 * g + nz[h];
        pos[2 * g + h] = static_cast<uint8_t>(nz[h]);
        kr[2 * g + h] = c < cols ? wr[c] : 0.f;
      }
    }
    uint8_t* mr = meta->data() + static_cast<size_t>(r) * kb * 8;
    for (int b = 0; b < kb; ++b) cpu::PackPlane2(pos.data() + b * 32, mr + b * 8);
  }
  return absl::OkStatus();
}

absl::Status ValidateSparse24Meta(int rows, int cols, const std::vector<uint8_t>& meta) {
  if (absl::Status s = CheckShape(rows, cols); !s.ok()) return s;
  const int kb = Sparse24KeptBlocks(cols);
  if (meta.size() != static_cast<size_t>(rows) * kb * 8)
    return absl::InvalidArgumentError(absl::StrCat("2:4 sparse matrix: metadata has ", meta.size(),
                                                   " bytes, expected ",
                                                   static_cast<size_t>(rows) * kb * 8));
  uint8_t pos[32];
  for (size_t b = 0; b < meta.size() / 8; ++b) {
    cpu::UnpackPlane2(meta.data() + b * 8, pos);
    for (int i = 0; i < 32; i += 2) {
      if (pos[i] >= pos[i + 1])
        return absl::InvalidArgumentError(
            absl::StrCat("2:4 sparse matrix: positions not increasing in metadata block ", b));
    }
  }
  return absl::OkStatus();
}

// ---- Sparse24Matrix -----------------------------------------------------------------

Sparse24Matrix::Sparse24Matrix(int rows, int cols, std::vector<uint16_t> values, std::vector<uint8_t> meta)
    : Matrix(rows, cols), kept_blocks_(Sparse24KeptBlocks(cols)), values_(values.begin(), values.end()),
      meta_(std::move(meta)) {}

absl::StatusOr<std::unique_ptr<Sparse24Matrix>> Sparse24Matrix::Create(int rows, int cols, const float* w) {
  std::vector<float> kept;
  std::vector<uint8_t> meta;
  if (absl::Status s = Sparse24Compress(rows, cols, w, &kept, &meta); !s.ok()) return s;
  std::vector<uint16_t> values(kept.size());
  for (size_t i = 0; i < kept.size(); ++i) values[i] = F32ToF16(kept[i]);
  return std::unique_ptr<Sparse24Matrix>(new Sparse24Matrix(rows, cols, std::move(values), std::move(meta)));
}

absl::StatusOr<std::unique_ptr<Sparse24Matrix>> Sparse24Matrix::FromPacked(int rows, int cols,
                                                                           std::vector<uint16_t> values_f16,
                                                                           std::vector<uint8_t> meta) {
  if (absl::Status s = ValidateSparse24Meta(rows, cols, meta); !s.ok()) return s;
  const size_t expect = static_cast<size_t>(rows) * Sparse24KeptBlocks(cols) * 32;
  if (values_f16.size() != expect)
    return absl::InvalidArgumentError(
        absl::StrCat("2:4 sparse matrix: ", values_f16.size(), " values, expected ", expect));
  return std::unique_ptr<Sparse24Matrix>(
      new Sparse24Matrix(rows, cols, std::move(values_f16), std::move(meta)));
}

size_t Sparse24Matrix::StorageBytes() const { return values_.size() * 2 + meta_.size(); }

void Sparse24Matrix::MatMulRows(const MatMulInput& in, float* y, int ldy, int r0, int r1) const {
  if (r0 >= r1 || in.n <= 0) return;
  cpu::Sparse24View v;
  v.values = values_.data();
  v.meta = meta_.data();
  v.rows = rows();
  v.cols = cols();
  v.kept_blocks = kept_blocks_;
  cpu::Kernels().sparse24_gemm(v, in.x, in.n, in.ldx, y, ldy, r0, r1);
}

void Sparse24Matrix::DequantizeRow(int r, float* out) const {
  std::fill(out, out + cols(), 0.f);
  uint8_t pos[32];
  const uint16_t* v = values_.data() + static_cast<size_t>(r) * kept_blocks_ * 32;
  const uint8_t* m = meta_.data() + static_cast<size_t>(r) * kept_blocks_ * 8;
  for (int b = 0; b < kept_blocks_; ++b) {
    cpu::UnpackPlane2(m + b * 8, pos);
    for (int i = 0; i < 32; ++i) {
      const int c = SlotColumn(b * 32 + i, pos[i]);
      if (c < cols()) out[c] = F16ToF32(v[b * 32 + i]);
    }
  }
}

// ---- Sparse24QuantMatrix ------------------------------------------------------------

Sparse24QuantMatrix::Sparse24QuantMatrix(int cols, std::unique_ptr<QuantMatrix> kept, std::vector<uint8_t> meta)
    : Matrix(kept->rows(), cols), kept_(std::move(kept)), meta_(std::move(meta)) {}

absl::StatusOr<std::unique_ptr<Sparse24QuantMatrix>> Sparse24QuantMatrix::FromPacked(int cols, PackedQuant kept,
                                                                                     std::vector<uint8_t> meta) {
  if (absl::Status s = ValidateSparse24Meta(kept.rows, cols, meta); !s.ok()) return s;
  if (kept.cols != Sparse24KeptBlocks(cols) * 32)
    return absl::InvalidArgumentError(absl::StrCat("2:4 sparse quantized matrix: ", kept.cols,
                                                   " kept slots per row, expected ",
                                                   Sparse24KeptBlocks(cols) * 32));
  auto q = QuantMatrix::FromPacked(std::move(kept), QuantLayout::kRows);
  if (!q.ok()) return q.status();
  return std::unique_ptr<Sparse24QuantMatrix>(new Sparse24QuantMatrix(cols, std::move(*q), std::move(meta)));
}

absl::StatusOr<std::unique_ptr<Sparse24QuantMatrix>> Sparse24QuantMatrix::FromKept(int cols,
                                                                                   const QuantizedWeights& kept,
                                                                                   std::vector<uint8_t> meta) {
  if (absl::Status s = ValidateSparse24Meta(kept.rows, cols, meta); !s.ok()) return s;
  if (kept.cols != Sparse24KeptBlocks(cols) * 32)
    return absl::InvalidArgumentError(absl::StrCat("2:4 sparse quantized matrix: ", kept.cols,
                                                   " kept slots per row, expected ",
                                                   Sparse24KeptBlocks(cols) * 32));
  auto q = QuantMatrix::Create(kept, QuantLayout::kRows);
  if (!q.ok()) return q.status();
  return std::unique_ptr<Sparse24QuantMatrix>(new Sparse24QuantMatrix(cols, std::move(*q), std::move(meta)));
}

absl::StatusOr<std::unique_ptr<Sparse24QuantMatrix>> Sparse24QuantMatrix::Create(int rows, int cols,
                                                                                 const float* w, QuantSpec spec) {
  if (absl::Status s = ValidateQuantSpec(rows, cols, spec); !s.ok()) return s;
  std::vector<float> kept;
  std::vector<uint8_t> meta;
  if (absl::Status s = Sparse24Compress(rows, cols, w, &kept, &meta); !s.ok()) return s;
  const QuantizedWeights q = QuantizeRtn(kept.data(), rows, Sparse24KeptBlocks(cols) * 32, spec);
  return FromKept(cols, q, std::move(meta));
}

std::string Sparse24QuantMatrix::Describe() const { return absl::StrCat("2:4 ", kept_->Describe()); }

size_t Sparse24QuantMatrix::StorageBytes() const { return kept_->StorageBytes() + meta_.size(); }

void Sparse24QuantMatrix::MatMulRows(const MatMulInput& in, float* y, int ldy, int r0, int r1) const {
  if (r0 >= r1 || in.n <= 0) return;
  QuantizedActivations local;
  const QuantizedActivations* qx = in.qx;
  if (qx == nullptr || qx->cols != cols() || qx->n != in.n) {
    local.Quantize(in.x, in.n, cols(), in.ldx);
    qx = &local;
  }
  cpu::Sparse24QuantView v;
  v.q = kept_->view();
  v.meta = meta_.data();
  v.cols = cols();
  const cpu::QActView xv = MakeQActView(*qx, 1, 0);
  cpu::Kernels().sparse24q_gemm[kept_->bits()](v, xv, y, ldy, r0, r1);
}

void Sparse24QuantMatrix::DequantizeRow(int r, float* out) const {
  const int slots = kept_->cols();
  float* kv = cpu::ScratchFloats(static_cast<size_t>(slots), 2);
  kept_->DequantizeRow(r, kv);
  std::fill(out, out + cols(), 0.f);
  uint8_t pos[32];
  const uint8_t* m = meta_.data() + static_cast<size_t>(r) * kept_blocks() * 8;
  for (int b = 0; b < kept_blocks(); ++b) {
    cpu::UnpackPlane2(m + b * 8, pos);
    for (int i = 0; i < 32; ++i) {
      const int c = SlotColumn(b * 32 + i, pos[i]);
      if (c < cols()) out[c] = kv[b * 32 + i];
    }
  }
}

// ---- Public factories -------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Matrix>> MakeSparse24Matrix(int rows, int cols, const float* w) {
  auto m = Sparse24Matrix::Create(rows, cols, w);
  if (!m.ok()) return m.status();
  return std::unique_ptr<Matrix>(std::move(*m));
}

absl::StatusOr<std::unique_ptr<Matrix>> MakeSparse24QuantMatrix(int rows, int cols, const float* w,
                                                                QuantSpec spec) {
  auto m = Sparse24QuantMatrix::Create(rows, cols, w, spec);
  if (!m.ok()) return m.status();
  return std::unique_ptr<Matrix>(std::move(*m));
}

}  // namespace eora
