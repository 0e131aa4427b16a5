#include "engine/quant_matrix.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/backend/cpu/kernels.h"
#include "engine/backend/cpu/quant_pack.h"
#include "engine/dtype.h"

namespace eora {
namespace {

int PaddedCols(int cols) { return (cols + kQBlock - 1) / kQBlock * kQBlock; }

// Next F16 value towards +inf / -inf (finite inputs).
uint16_t F16Up(uint16_t h) {
  if (h == 0x8000) h = 0;
  if ((h & 0x8000) == 0) return static_cast<uint16_t>(h + 1);
  return static_cast<uint16_t>(h - 1);
}
uint16_t F16Down(uint16_t h) {
  if (h == 0) return 0x8001;
  if ((h & 0x8000) == 0) return static_cast<uint16_t>(h - 1);
  return static_cast<uint16_t>(h + 1);
}

bool F16Finite(uint16_t h) { return (h & 0x7c00) != 0x7c00; }

// EORA_QUANT_LAYOUT=rows keeps QuantLayout::kBest matrices in the file layout
// (A/B runs against the per-row kernels).
bool RowsForced() {
  static const bool forced = [] {
    const char* env = std::getenv("EORA_QUANT_LAYOUT");
    return env != nullptr && std::string_view(env) == "rows";
  }();
  return forced;
}

// f(pn0, pn1) over [0, panels) in disjoint ranges, on up to 16 threads when the
// matrix is large (the layout conversion of a 7B model's weights would otherwise
// take tens of seconds on one core).
template <typename F>
void ForPanelRanges(int panels, size_t codes, F&& f) {
  const unsigned hw = std::thread::hardware_concurrency();
  const int workers = codes < (size_t{1} << 22) || hw < 2 ? 1 : static_cast<int>(std::min(hw, 16u));
  if (workers == 1 || panels < 2 * workers) return f(0, panels);
  std::vector<std::thread> threads;
  const int per = (panels + workers - 1) / workers;
  for (int pn0 = per; pn0 < panels; pn0 += per) threads.emplace_back(f, pn0, std::min(panels, pn0 + per));
  f(0, per);
  for (std::thread& t : threads) t.join();
}

// The file layout of p (codes, scales, mins) rewritten in panels of 16 rows.
void RowsToPanels(PackedQuant* p, int blocks, int groups) {
  const int bits = p->spec.bits, bb = cpu::QuantBlockBytes(bits);
  const int panels = (p->rows + 15) / 16, np = (blocks + 1) / 2;
  const size_t row_bytes = static_cast<size_t>(blocks) * bb, pbytes = cpu::PanelBytes(bits, blocks);
  WeightVector<uint8_t> out(static_cast<size_t>(panels) * pbytes);
  ForPanelRanges(panels, static_cast<size_t>(p->rows) * p->cols, [&](int pn0, int pn1) {
    uint8_t vec[16 * 64], codes[64];
    for (int pn = pn0; pn < pn1; ++pn) {
      for (int j = 0; j < np; ++j) {
        const int nvec = 2 * j + 1 < blocks ? 16 : 8;
        std::memset(vec, 0, sizeof(vec));
        for (int i = 0; i < 16 && 16 * pn + i < p->rows; ++i) {
          const uint8_t* row = p->packed.data() + static_cast<size_t>(16 * pn + i) * row_bytes;
          cpu::UnpackBlock(bits, row + static_cast<size_t>(2 * j) * bb, codes, 2 * j, blocks);
          if (nvec == 16) cpu::UnpackBlock(bits, row + static_cast<size_t>(2 * j + 1) * bb, codes + 32, 2 * j + 1, blocks);
          for (int k = 0; k < 4 * nvec; ++k) vec[64 * (k / 4) + 4 * i + k % 4] = codes[k];
        }
        cpu::PackPanelUnit(bits, vec, nvec, out.data() + pn * pbytes + cpu::PanelPairOffset(bits, j));
      }
    }
  });
  std::vector<uint16_t> sc(static_cast<size_t>(panels) * groups * 16, 0), mn(sc.size(), 0);
  for (int r = 0; r < p->rows; ++r)
    for (int g = 0; g < groups; ++g) {
      const size_t to = cpu::PanelScaleIndex(groups, r, g);
      sc[to] = p->scale_f16[static_cast<size_t>(r) * groups + g];
      mn[to] = p->min_f16[static_cast<size_t>(r) * groups + g];
    }
  p->packed = std::move(out);
  p->scale_f16 = std::move(sc);
  p->min_f16 = std::move(mn);
}

// The inverse of RowsToPanels.
PackedQuant PanelsToRows(const PackedQuant& p, int blocks, int groups) {
  const int bits = p.spec.bits, bb = cpu::QuantBlockBytes(bits);
  const int np = (blocks + 1) / 2;
  const size_t row_bytes = static_cast<size_t>(blocks) * bb, pbytes = cpu::PanelBytes(bits, blocks);
  PackedQuant out;
  out.rows = p.rows;
  out.cols = p.cols;
  out.spec = p.spec;
  out.packed.assign(static_cast<size_t>(p.rows) * row_bytes, 0);
  out.scale_f16.resize(static_cast<size_t>(p.rows) * groups);
  out.min_f16.resize(out.scale_f16.size());
  ForPanelRanges((p.rows + 15) / 16, static_cast<size_t>(p.rows) * p.cols, [&](int pn0, int pn1) {
    uint8_t vec[16 * 64], codes[64];
    for (int pn = pn0; pn < pn1; ++pn) {
      for (int j = 0; j < np; ++j) {
        const int nvec = 2 * j + 1 < blocks ? 16 : 8;
        cpu::UnpackPanelUnit(bits, p.packed.data() + pn * pbytes + cpu::PanelPairOffset(bits, j), nvec, vec);
        for (int i = 0; i < 16 && 16 * pn + i < p.rows; ++i) {
          uint8_t* row = out.packed.data() + static_cast<size_t>(16 * pn + i) * row_bytes;
          for (int k = 0; k < 4 * nvec; ++k) codes[k] = vec[64 * (k / 4) + 4 * i + k % 4];
          // (a 3-bit pair shares its bytes: pack both blocks, the odd one second)
          cpu::PackBlock(bits, codes, row + static_cast<size_t>(2 * j) * bb, 2 * j, blocks);
          if (nvec == 16) cpu::PackBlock(bits, codes + 32, row + static_cast<size_t>(2 * j + 1) * bb, 2 * j + 1, blocks);
        }
      }
    }
  });
  for (int r = 0; r < p.rows; ++r)
    for (int g = 0; g < groups; ++g) {
      const size_t from = cpu::PanelScaleIndex(groups, r, g);
      out.scale_f16[static_cast<size_t>(r) * groups + g] = p.scale_f16[from];
      out.min_f16[static_cast<size_t>(r) * groups + g] = p.min_f16[from];
    }
  return out;
}

}  // namespace

int QuantizedWeights::group_size_effective() const {
  return spec.group_size > 0 ? spec.group_size : std::max(kQBlock, PaddedCols(cols));
}

int QuantizedWeights::groups() const {
  const int g = group_size_effective();
  return std::max(1, (PaddedCols(cols) + g - 1) / g);
}

int QuantBlockBytes(int bits) { return cpu::QuantBlockBytes(bits); }
void PackQuantBlock(int bits, const uint8_t* codes32, uint8_t* out, int block, int row_blocks) {
  cpu::PackBlock(bits, codes32, out, block, row_blocks);
}
void UnpackQuantBlock(int bits, const uint8_t* in, uint8_t* codes32, int block, int row_blocks) {
  cpu::UnpackBlock(bits, in, codes32, block, row_blocks);
}
void UpgradePacked(PackedQuant* p, int from_version) {
  if (p->spec.bits != 3 || from_version >= kPackedFormatVersion) return;  // 2- and 4-bit blocks never changed
  const int blocks = (p->cols + 31) / 32;
  if (p->packed.size() != static_cast<size_t>(p->rows) * blocks * 12) return;  // FromPacked reports it
  cpu::UpgradeQ3Rows(p->packed.data(), static_cast<size_t>(p->rows), blocks, from_version);
}

absl::Status ValidateQuantSpec(int rows, int cols, const QuantSpec& spec) {
  if (spec.bits < 2 || spec.bits > 4)
    return absl::InvalidArgumentError(absl::StrCat("quantized matrix: bits must be 2, 3 or 4, got ", spec.bits));
  if (spec.group_size < 0 || spec.group_size % kQBlock != 0)
    return absl::InvalidArgumentError(absl::StrCat(
        "quantized matrix: group_size must be 0 or a positive multiple of 32, got ", spec.group_size));
  if (rows < 1 || cols < 1)
    return absl::InvalidArgumentError(absl::StrCat("quantized matrix: bad shape ", rows, "x", cols));
  return absl::OkStatus();
}

cpu::QActView MakeQActView(const QuantizedActivations& qx, int bpg, int groups) {
  cpu::QActView v;
  v.q = qx.q.data();
  v.d = qx.scale.data();
  v.s = qx.sum.data();
  v.n = qx.n;
  v.padded_cols = qx.padded_cols;
  v.nb = qx.padded_cols / kQBlock;
  v.groups = groups;
  v.span = qx.span;
  float* gs = cpu::ScratchFloats(static_cast<size_t>(qx.n) * groups + 1, 1);
  for (int t = 0; t < qx.n; ++t) {
    const float* s = v.s + static_cast<size_t>(t) * v.nb;
    float* g = gs + static_cast<size_t>(t) * groups;
    for (int i = 0; i < groups; ++i) {
      const int b1 = std::min(v.nb, (i + 1) * bpg);
      float acc = 0.f;
      for (int b = i * bpg; b < b1; ++b) acc += s[b];
      g[i] = acc;
    }
  }
  v.gsum = gs;
  return v;
}

// ---- QuantMatrix -------------------------------------------------------------------

QuantMatrix::QuantMatrix(PackedQuant p, QuantLayout layout) : Matrix(p.rows, p.cols), p_(std::move(p)) {
  blocks_ = PaddedCols(p_.cols) / kQBlock;
  QuantizedWeights shape;
  shape.rows = p_.rows;
  shape.cols = p_.cols;
  shape.spec = p_.spec;
  groups_ = shape.groups();
  bpg_ = shape.group_size_effective() / kQBlock;
  row_bytes_ = static_cast<size_t>(blocks_) * QuantBlockBytes(p_.spec.bits);
  const bool pairs_in_groups = groups_ == 1 || bpg_ % 2 == 0;
  // kBest leaves small matrices whose last panel would be mostly padding (e.g. the
  // A factor of a rank-8 adapter) in rows: at most 1/16 more bytes.
  const int64_t padded = (static_cast<int64_t>(p_.rows) + 15) / 16 * 16;
  const bool little_padding = 16 * padded <= 17 * static_cast<int64_t>(p_.rows);
  panels_ = pairs_in_groups &&
            (layout == QuantLayout::kPanels ||
             (layout == QuantLayout::kBest && little_padding && cpu::Kernels().prefers_quant_panels &&
              !RowsForced()));
  if (panels_) RowsToPanels(&p_, blocks_, groups_);
}

size_t QuantMatrix::ScaleIndex(int r, int g) const {
  return panels_ ? cpu::PanelScaleIndex(groups_, r, g) : static_cast<size_t>(r) * groups_ + g;
}

PackedQuant QuantMatrix::packed() const { return panels_ ? PanelsToRows(p_, blocks_, groups_) : p_; }

absl::StatusOr<std::unique_ptr<QuantMatrix>> QuantMatrix::FromPacked(PackedQuant p, QuantLayout layout) {
  if (absl::Status s = ValidateQuantSpec(p.rows, p.cols, p.spec); !s.ok()) return s;
  QuantizedWeights shape;
  shape.rows = p.rows;
  shape.cols = p.cols;
  shape.spec = p.spec;
  const size_t groups = static_cast<size_t>(p.rows) * shape.groups();
  const size_t bytes = static_cast<size_t>(p.rows) * (PaddedCols(p.cols) / kQBlock) *
                       QuantBlockBytes(p.spec.bits);
  if (p.packed.size() != bytes)
    return absl::InvalidArgumentError(
        absl::StrCat("quantized matrix: packed codes have ", p.packed.size(), " bytes, expected ", bytes));
  if (p.scale_f16.size() != groups || p.min_f16.size() != groups)
    return absl::InvalidArgumentError(absl::StrCat("quantized matrix: expected ", groups,
                                                   " scales and mins, got ", p.scale_f16.size(), " and ",
                                                   p.min_f16.size()));
  for (size_t i = 0; i < groups; ++i) {
    if (!F16Finite(p.scale_f16[i]) || !F16Finite(p.min_f16[i]))
      return absl::InvalidArgumentError("quantized matrix: non-finite scale or min");
  }
  return std::unique_ptr<QuantMatrix>(new QuantMatrix(std::move(p), layout));
}

absl::StatusOr<std::unique_ptr<QuantMatrix>> QuantMatrix::Create(const QuantizedWeights& w, QuantLayout layout) {
  if (absl::Status s = ValidateQuantSpec(w.rows, w.cols, w.spec); !s.ok()) return s;
  const size_t n = static_cast<size_t>(w.rows) * w.cols;
  const size_t groups = static_cast<size_t>(w.rows) * w.groups();
  if (w.codes.size() != n)
    return absl::InvalidArgumentError(
        absl::StrCat("quantized matrix: ", w.codes.size(), " codes for a ", w.rows, "x", w.cols, " matrix"));
  if (w.scale.size() != groups || w.min.size() != groups)
    return absl::InvalidArgumentError(absl::StrCat("quantized matrix: expected ", groups,
                                                   " scales and mins, got ", w.scale.size(), " and ",
                                                   w.min.size()));
  const int qmax = (1 << w.spec.bits) - 1;
  for (size_t i = 0; i < n; ++i) {
    if (w.codes[i] > qmax)
      return absl::InvalidArgumentError(absl::StrCat("quantized matrix: code ", w.codes[i], " at ", i,
                                                     " does not fit in ", w.spec.bits, " bits"));
  }
  PackedQuant p;
  p.rows = w.rows;
  p.cols = w.cols;
  p.spec = w.spec;
  p.scale_f16.resize(groups);
  p.min_f16.resize(groups);
  for (size_t i = 0; i < groups; ++i) {
    if (!std::isfinite(w.scale[i]) || !std::isfinite(w.min[i]))
      return absl::InvalidArgumentError("quantized matrix: non-finite scale or min");
    p.scale_f16[i] = F32ToF16(w.scale[i]);
    p.min_f16[i] = F32ToF16(w.min[i]);
    if (!F16Finite(p.scale_f16[i]) || !F16Finite(p.min_f16[i]))
      return absl::InvalidArgumentError("quantized matrix: scale or min overflows F16");
  }
  const int blocks = PaddedCols(w.cols) / kQBlock;
  const int bb = QuantBlockBytes(w.spec.bits);
  p.packed.assign(static_cast<size_t>(w.rows) * blocks * bb, 0);
  uint8_t codes[32];
  for (int r = 0; r < w.rows; ++r) {
    const uint8_t* src = w.codes.data() + static_cast<size_t>(r) * w.cols;
    for (int b = 0; b < blocks; ++b) {
      const int k0 = b * kQBlock;
      const int k1 = std::min(w.cols, k0 + kQBlock);
      std::memset(codes, 0, sizeof(codes));
      std::memcpy(codes, src + k0, k1 - k0);
      cpu::PackBlock(w.spec.bits, codes, p.packed.data() + (static_cast<size_t>(r) * blocks + b) * bb, b, blocks);
    }
  }
  return std::unique_ptr<QuantMatrix>(new QuantMatrix(std::move(p), layout));
}

std::string QuantMatrix::Describe() const {
  if (p_.spec.group_size == 0) return absl::StrCat("q", p_.spec.bits, " per-channel");
  return absl::StrCat("q", p_.spec.bits, " g", p_.spec.group_size);
}

size_t QuantMatrix::StorageBytes() const {
  return p_.packed.size() + 2 * (p_.scale_f16.size() + p_.min_f16.size());
}

cpu::QuantView QuantMatrix::view() const {
  cpu::QuantView v;
  v.codes = p_.packed.data();
  v.scale = p_.scale_f16.data();
  v.min = p_.min_f16.data();
  v.rows = rows();
  v.cols = cols();
  v.blocks = blocks_;
  v.groups = groups_;
  v.bpg = bpg_;
  v.bits = p_.spec.bits;
  v.row_bytes = row_bytes_;
  v.panels = panels_;
  return v;
}

void QuantMatrix::MatMulRows(const MatMulInput& in, float* y, int ldy, int r0, int r1) const {
  if (r0 >= r1 || in.n <= 0) return;
  QuantizedActivations local;
  const QuantizedActivations* qx = in.qx;
  if (qx == nullptr || qx->cols != cols() || qx->n != in.n) {
    local.Quantize(in.x, in.n, cols(), in.ldx);
    qx = &local;
  }
  const cpu::QActView xv = MakeQActView(*qx, bpg_, groups_);
  const cpu::KernelTable& k = cpu::Kernels();
  (panels_ ? k.quant_panel_gemm : k.quant_gemm)[p_.spec.bits](view(), xv, y, ldy, r0, r1);
}

void QuantMatrix::AccumulateTransposed(const float* u, int ldu, int n, int r, float* y, int ldy, int c0,
                                       int c1) const {
  c0 = std::max(c0, 0);
  c1 = std::min(c1, cols());
  r = std::min(r, rows());
  if (n <= 0 || r <= 0 || c0 >= c1) return;
  const cpu::KernelTable& k = cpu::Kernels();
  if (k.quant_acc_t_i8 != nullptr) {
    k.quant_acc_t_i8(TransposedCopy(), u, ldu, n, r, y, ldy, c0, c1);
    return;
  }
  if (!panels_) return k.quant_acc_t[p_.spec.bits](view(), u, ldu, n, r, y, ldy, c0, c1);
  // Panels without the int8 kernel (a table chosen below the one that made them):
  // the generic row-by-row product on dequantized rows.
  Matrix::AccumulateTransposed(u, ldu, n, r, y, ldy, c0, c1);
}

void QuantMatrix::PrepareAccumulateTransposed() const {
  if (cpu::Kernels().quant_acc_t_i8 != nullptr) TransposedCopy();
}

size_t QuantMatrix::TransposedCopyBytes() const {
  if (!tc_built_.load(std::memory_order_acquire)) return 0;
  return tc_il_.size() + sizeof(uint16_t) * (tc_scale_t_.size() + tc_min_t_.size());
}

const cpu::QuantAccTView& QuantMatrix::TransposedCopy() const {
  std::call_once(tc_once_, [this] {
    const int R = rows(), C = cols(), bits = p_.spec.bits;
    const int gv = cpu::PanelGroupVectors(bits), gb = cpu::PanelGroupBytes(bits);
    const int unit_rows = 4 * gv, units = (R + unit_rows - 1) / unit_rows, cbs = (C + 15) / 16;
    std::vector<uint8_t> codes(static_cast<size_t>(R) * C);
    for (int j = 0; j < R; ++j) RowCodes(j, codes.data() + static_cast<size_t>(j) * C);
    tc_il_.assign(static_cast<size_t>(cbs) * units * gb, 0);
    std::vector<uint8_t> vec(static_cast<size_t>(gv) * 64);
    for (int cb = 0; cb < cbs; ++cb)
      for (int k = 0; k < units; ++k) {
        // Vector j of unit k: byte 4c + e = code of row 4 (gv k + j) + e, column 16 cb + c.
        std::fill(vec.begin(), vec.end(), 0);
        for (int j = 0; j < gv; ++j)
          for (int c = 0; c < 16 && 16 * cb + c < C; ++c)
            for (int e = 0; e < 4; ++e) {
              const int row = 4 * (gv * k + j) + e;
              if (row < R) vec[64 * j + 4 * c + e] = codes[static_cast<size_t>(row) * C + 16 * cb + c];
            }
        cpu::PackPanelUnit(bits, vec.data(), gv, tc_il_.data() + (static_cast<size_t>(cb) * units + k) * gb);
      }
    const size_t stride = static_cast<size_t>(units) * unit_rows;
    tc_scale_t_.assign(static_cast<size_t>(groups_) * stride, 0);  // F16 zero
    tc_min_t_.assign(static_cast<size_t>(groups_) * stride, 0);
    for (int j = 0; j < R; ++j)
      for (int g = 0; g < groups_; ++g) {
        tc_scale_t_[g * stride + j] = p_.scale_f16[ScaleIndex(j, g)];
        tc_min_t_[g * stride + j] = p_.min_f16[ScaleIndex(j, g)];
      }
    cpu::QuantAccTView v;
    v.il = tc_il_.data();
    v.scale_t = tc_scale_t_.data();
    v.min_t = tc_min_t_.data();
    v.rows = R;
    v.cols = C;
    v.bits = bits;
    v.units = units;
    v.col_blocks = cbs;
    v.groups = groups_;
    v.group_cols = groups_ == 1 ? C : bpg_ * kQBlock;
    tc_view_ = v;
    tc_built_.store(true, std::memory_order_release);
  });
  return tc_view_;
}

void QuantMatrix::DequantizeRow(int r, float* out) const {
  if (!panels_) return cpu::Kernels().quant_dequant_row[p_.spec.bits](view(), r, out);
  std::vector<uint8_t> codes(cols());
  RowCodes(r, codes.data());
  for (int c = 0; c < cols(); ++c) {
    const size_t si = ScaleIndex(r, c / (bpg_ * kQBlock));
    out[c] = F16ToF32(p_.scale_f16[si]) * static_cast<float>(codes[c]) + F16ToF32(p_.min_f16[si]);
  }
}

void QuantMatrix::RowCodes(int r, uint8_t* out) const {
  uint8_t codes[32];
  const int bb = QuantBlockBytes(p_.spec.bits);
  const uint8_t* row = p_.packed.data() + static_cast<size_t>(r) * row_bytes_;
  for (int b = 0; b < blocks_; ++b) {
    if (panels_) cpu::UnpackPanelBlock(p_.spec.bits, p_.packed.data(), blocks_, r, b, codes);
    else cpu::UnpackBlock(p_.spec.bits, row + static_cast<size_t>(b) * bb, codes, b, blocks_);
    const int k0 = b * kQBlock;
    const int k1 = std::min(cols(), k0 + kQBlock);
    std::memcpy(out + k0, codes, k1 - k0);
  }
}

QuantizedWeights QuantMatrix::Unpack() const {
  QuantizedWeights w;
  w.rows = rows();
  w.cols = cols();
  w.spec = p_.spec;
  w.codes.resize(static_cast<size_t>(rows()) * cols());
  for (int r = 0; r < rows(); ++r) RowCodes(r, w.codes.data() + static_cast<size_t>(r) * cols());
  w.scale.resize(static_cast<size_t>(rows()) * groups_);
  w.min.resize(w.scale.size());
  for (int r = 0; r < rows(); ++r)
    for (int g = 0; g < groups_; ++g) {
      w.scale[static_cast<size_t>(r) * groups_ + g] = F16ToF32(p_.scale_f16[ScaleIndex(r, g)]);
      w.min[static_cast<size_t>(r) * groups_ + g] = F16ToF32(p_.min_f16[ScaleIndex(r, g)]);
    }
  return w;
}

// ---- Public factories -----------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Matrix>> MakeQuantizedMatrix(const QuantizedWeights& w) {
  auto m = QuantMatrix::Create(w);
  if (!m.ok()) return m.status();
  return std::unique_ptr<Matrix>(std::move(*m));
}

QuantizedWeights QuantizeRtn(const float* w, int rows, int cols, QuantSpec spec) {
  QuantizedWeights q;
  q.rows = rows;
  q.cols = cols;
  q.spec = spec;
  const int groups = q.groups();
  const int gsize = q.group_size_effective();
  const int qmax = (1 << spec.bits) - 1;
  q.codes.assign(static_cast<size_t>(rows) * cols, 0);
  q.scale.assign(static_cast<size_t>(rows) * groups, 0.f);
  q.min.assign(static_cast<size_t>(rows) * groups, 0.f);
  for (int r = 0; r < rows; ++r) {
    const float* wr = w + static_cast<size_t>(r) * cols;
    uint8_t* cr = q.codes.data() + static_cast<size_t>(r) * cols;
    for (int g = 0; g < groups; ++g) {
      const int k0 = g * gsize;
      const int k1 = std::min(cols, k0 + gsize);
      if (k0 >= k1) continue;  // group entirely in padding
      float mn = wr[k0], mx = wr[k0];
      for (int k = k0; k < k1; ++k) {
        mn = std::min(mn, wr[k]);
        mx = std::max(mx, wr[k]);
      }
      // Round min down and scale up to F16 so that [min, min + qmax * scale] covers
      // [mn, mx] with the stored values: every element is then within scale / 2.
      uint16_t m16 = F32ToF16(mn);
      if (F16ToF32(m16) > mn) m16 = F16Down(m16);
      const float m = F16ToF32(m16);
      uint16_t s16 = F32ToF16((mx - m) / qmax);
      for (int it = 0; it < 64 && F16ToF32(s16) * qmax + m < mx; ++it) s16 = F16Up(s16);
      const float s = F16ToF32(s16);
      const float inv = s > 0 ? 1.f / s : 0.f;
      for (int k = k0; k < k1; ++k) {
        const float c = std::nearbyint((wr[k] - m) * inv);
        cr[k] = static_cast<uint8_t>(std::clamp(c, 0.f, static_cast<float>(qmax)));
      }
      q.scale[static_cast<size_t>(r) * groups + g] = s;
      q.min[static_cast<size_t>(r) * groups + g] = m;
    }
  }
  return q;
}

}  // namespace eora
