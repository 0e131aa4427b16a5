// CPU compute kernels of the weight formats, one table of function pointers per
// instruction set, chosen once at runtime (CPUID, overridable downwards with the
// environment variable EORA_ISA=generic|avx2|avx512|amx).
//
// The kernels take plain views (raw pointers and sizes, no std containers): the
// ISA-specific translation units (kernels_avx2.cc, kernels_avx512.cc) are compiled
// with -mavx2/-mavx512*, and must not instantiate inline functions or templates
// that portable code shares (the linker could pick the ISA-specific copy).
// Storage layouts are documented in docs/formats.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace eora::cpu {

// Int8 activations (see eora::QuantizedActivations), plus per-group sums of the
// block sums for the group size of the matrix being multiplied.
struct QActView {
  const int8_t* q = nullptr;  // [n][padded_cols]
  const float* d = nullptr;   // [n][nb]: x ~= d * q per 32-block
  const float* s = nullptr;   // [n][nb]: d * sum(q) per block
  const float* gsum = nullptr;  // [n][groups]: sum of s over the blocks of each group
  int n = 0;
  int padded_cols = 0;
  int nb = 0;      // blocks per activation row
  int groups = 0;  // groups per row of gsum
  int span = 1;    // aligned runs of `span` blocks share one d
};

// A packed group-wise quantized matrix (MatrixFormat::kQuant), or the kept values
// of a 2:4 sparse quantized one (then "columns" are kept values).
struct QuantView {
  const uint8_t* codes = nullptr;   // [rows][row_bytes], 32-code blocks
  const uint16_t* scale = nullptr;  // F16 [rows][groups]
  const uint16_t* min = nullptr;    // F16 [rows][groups]
  int rows = 0;
  int cols = 0;        // logical columns (kept values for sparse)
  int blocks = 0;      // 32-blocks per row
  int groups = 0;      // groups per row
  int bpg = 1;         // blocks per group (the last group may have fewer)
  int bits = 4;
  size_t row_bytes = 0;  // blocks * QuantBlockBytes(bits)
  // Panel layout (quant_pack.h): codes in panels of 16 rows (16 * row_bytes bytes
  // each), scale and min as F16 [ceil(rows / 16)][groups][16] (0 past the last
  // row). Only quant_panel_gemm takes such a view.
  bool panels = false;
};

// Rank-interleaved copy of a group-wise quantized matrix W [rows][cols], for the
// int8 B side of low-rank products (y += u W, docs/formats.md): per block of 16
// columns, the codes in the panel layout's groups (quant_pack.h) with W's rows as
// the reduction axis: vector k4 holds byte 4c + e = code of row 4k4 + e, column c
// of the block, and a unit of PanelGroupBytes(bits) bytes holds
// PanelGroupVectors(bits) vectors (4-bit: 8 rows in 64 bytes; 3-bit: 16 rows in
// 96; 2-bit: 16 rows in 64), so the copy reads as many bits per code as W.
struct QuantAccTView {
  const uint8_t* il = nullptr;     // [col_blocks][units][unit bytes]; zero past rows / cols
  const uint16_t* scale_t = nullptr;  // F16 [groups][units * rows per unit]: scale of row j in group g (0 past rows)
  const uint16_t* min_t = nullptr;    // F16 [groups][units * rows per unit]
  int rows = 0;
  int cols = 0;
  int bits = 4;
  int units = 0;       // units per column block: ceil(rows / (4 * PanelGroupVectors(bits)))
  int col_blocks = 0;  // ceil(cols / 16)
  int groups = 1;
  int group_cols = 0;  // columns per group (a multiple of 32), or cols when groups == 1
};

// 2:4 sparse with F16 kept values (MatrixFormat::kSparse24).
struct Sparse24View {
  const uint16_t* values = nullptr;  // F16 [rows][kept_blocks * 32]
  const uint8_t* meta = nullptr;     // [rows][kept_blocks * 8], 2-bit positions
  int rows = 0;
  int cols = 0;         // logical columns
  int kept_blocks = 0;  // blocks of 32 kept values (= 64 columns) per row
};

// 2:4 sparse with quantized kept values (MatrixFormat::kSparse24Quant).
struct Sparse24QuantView {
  QuantView q;                    // kept values; q.blocks == kept blocks per row
  const uint8_t* meta = nullptr;  // [rows][q.blocks * 8]
  int cols = 0;                   // logical columns
};

// Dense element types, index of the dense_* tables.
enum DenseType { kDenseF32 = 0, kDenseF16 = 1, kDenseBF16 = 2 };

struct KernelTable {
  const char* name = "generic";

  // One activation row: q[padded_cols], d[padded_cols/32], s[padded_cols/32]; aligned
  // runs of `span` blocks share one scale d = amax(run) / 127.
  void (*quantize_row)(const float* x, int cols, int padded_cols, int span, int8_t* q, float* d,
                       float* s) = nullptr;

  // y[t*ldy + r] = sum_k W[r][k] x[t*ldx + k], rows [r0, r1). W is [rows][cols].
  void (*dense_gemm[3])(const void* w, int cols, int r0, int r1, const float* x, int n, int ldx,
                        float* y, int ldy) = {};
  // y[t*ldy + c] += sum_{j<r} u[t*ldu + j] W[j][c], columns [c0, c1).
  void (*dense_acc_t[3])(const void* w, int cols, const float* u, int ldu, int n, int r, float* y,
                         int ldy, int c0, int c1) = {};

  // Indexed by bits (2, 3, 4); other entries null.
  void (*quant_gemm[5])(const QuantView& w, const QActView& x, float* y, int ldy, int r0,
                        int r1) = {};
  // The same product on a view in panel layout (QuantView::panels).
  void (*quant_panel_gemm[5])(const QuantView& w, const QActView& x, float* y, int ldy, int r0,
                              int r1) = {};
  // Whether matrices created while this table is active take the panel layout
  // (where its quant_panel_gemm is the fast kernel).
  bool prefers_quant_panels = false;
  void (*quant_acc_t[5])(const QuantView& w, const float* u, int ldu, int n, int r, float* y,
                         int ldy, int c0, int c1) = {};
  void (*quant_dequant_row[5])(const QuantView& w, int r, float* out) = {};
  // The B side in int8 (any bits <= 4), on the rank-interleaved copy: per
  // activation row and weight group, v_j = u_j * scale_j is quantized to int8
  // (one scale max|v| / 127 per row and group), the codes are multiplied with
  // vpdpbusd, and the min term sum_j u_j * min_j is added in F32. Null where the
  // ISA has no such kernel (the float quant_acc_t runs).
  void (*quant_acc_t_i8)(const QuantAccTView& w, const float* u, int ldu, int n, int r, float* y,
                         int ldy, int c0, int c1) = nullptr;

  void (*sparse24_gemm)(const Sparse24View& w, const float* x, int n, int ldx, float* y, int ldy,
                        int r0, int r1) = nullptr;
  void (*sparse24q_gemm[5])(const Sparse24QuantView& w, const QActView& x, float* y, int ldy,
                            int r0, int r1) = {};
};

// The active table (chosen on first use).
const KernelTable& Kernels();
// Name of the active table ("amx", "avx512", "avx2", "generic").
const char* ActiveIsaName();
// Table for an ISA name, or nullptr if unknown or not supported by this CPU.
const KernelTable* KernelsFor(std::string_view isa);
// Switches the active table (tests). Returns false (and changes nothing) if the ISA
// is unknown or unsupported. Not to be called while products run on other threads.
bool SetActiveIsa(std::string_view isa);

// Thread-local float scratch of at least n elements, 64-byte aligned, one buffer per
// slot (0..3; valid until the next call on the same thread and slot). Defined in portable code.
// Kernels use slot 0 (and slot 3 for a second buffer: the F16/BF16 tiles' converted
// weights); the matrix classes use slot 1 for QActView::gsum and slot 2 for row
// scratch.
float* ScratchFloats(size_t n, int slot = 0);

// Fill functions of the ISA translation units: override entries of `t`, which
// starts as a copy of the next lower table.
void FillGenericKernels(KernelTable* t);
void FillAvx2Kernels(KernelTable* t);
void FillAvx512Kernels(KernelTable* t);
void FillAmxKernels(KernelTable* t);

// ---- Block packing (shared definitions, see docs/formats.md) -----------------
// Bytes of one packed block of 32 codes.
constexpr int QuantBlockBytes(int bits) { return bits == 4 ? 16 : bits == 3 ? 12 : 8; }

}  // namespace eora::cpu
