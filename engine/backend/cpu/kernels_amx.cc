// AMX (Advanced Matrix Extensions, int8) kernel for the group-wise quantized
// product of many activation rows (prefill, large batches): the tile unit
// multiplies 16 weight rows by 16 activation rows over 64 columns (one pair of
// 32-blocks) per instruction, with exact int32 sums; the vector unit only unpacks
// the codes and applies the scales. Fewer rows, and layouts whose blocks do not
// pair, use the AVX-512 VNNI kernels. Compiled with the AVX-512 and AMX flags (see
// engine/CMakeLists.txt); reached only through the "amx" table, on CPUs and
// kernels that allow AMX (CpuHasAmx in kernels.cc). Internal linkage, raw pointers
// only (see kernels.h).
//
// Tile use (palette 1): for 16 weight rows [r, r + 16) and 16 activation rows,
// per pair p of blocks:
//   A = codes,       16 rows x 64 bytes (unsigned), from an unpacked row panel;
//   B = activations, 16 rows x 64 bytes: B[k/4][4m + k%4] = q[m][64p + k] (signed);
//   C = A.B,         16 x 16 int32 (weight row x activation row).
// Then y[m][r + i] += float(C[i][m]) * d[m][p] * scale[i][group(p)], and at the end
// the min term sum_g min[i][g] * gsum[m][g]. The activation scale d is shared by
// the two blocks of a pair (x.span even), the weight group too (bpg even, or one
// group per row).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "engine/backend/cpu/avx512_common.h"
#include "engine/backend/cpu/kernels.h"

namespace eora::cpu {
namespace {

// The 64-byte LDTILECFG operand.
struct alignas(64) TileConfig {
  uint8_t palette_id = 0;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64);

// Tiles 0-2 and 3-5: (A, B, C) of two pairs in flight; all 16 x 64 bytes.
TileConfig MakeConfig() {
  TileConfig c;
  c.palette_id = 1;
  for (int t = 0; t < 6; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = 16;
  }
  return c;
}

// Fewer activation rows than this go to the VNNI kernels (a tile of 16 activation
// rows would be mostly padding: on stories110M shapes, 4-bit decode of 8 sequences
// ran 8% slower on the tiles than with VNNI, 12 sequences 18% faster; measured on
// 2026-12-02 against the per-row VNNI kernel, before the weight-panel kernel of
// kernels_avx512.cc, which gives the same bits as the tiles, took products of 8 or
// more rows, not yet re-measured on a CPU with AMX).
constexpr int kAmxMinRows = 10;

void (*g_vnni_quant[5])(const QuantView&, const QActView&, float*, int, int, int) = {};

// Activations of 16 rows starting at t0 in B-tile layout, one 1 KiB tile per pair:
// dst[p][k4][m][j] = q[t0 + m][64p + 4k4 + j] (zero past the last row or block).
void PackActivationTiles(const QActView& x, int t0, int np, uint8_t* dst) {
  const int rows = x.n - t0 < 16 ? x.n - t0 : 16;
  for (int p = 0; p < np; ++p) {
    const int valid = x.nb - 2 * p >= 2 ? 64 : 32;  // bytes of this pair in a row
    const __mmask64 m = valid == 64 ? ~__mmask64{0} : (__mmask64{1} << 32) - 1;
    __m512 r[16];
    for (int i = 0; i < 16; ++i) {
      r[i] = i < rows ? _mm512_castsi512_ps(_mm512_maskz_loadu_epi8(
                            m, x.q + static_cast<size_t>(t0 + i) * x.padded_cols + 64 * static_cast<size_t>(p)))
                      : _mm512_setzero_ps();
    }
    Transpose16(r);  // dword k4 of row m -> lane m of r[k4]
    for (int k4 = 0; k4 < 16; ++k4) _mm512_store_ps(reinterpret_cast<float*>(dst + 1024 * static_cast<size_t>(p) + 64 * k4), r[k4]);
  }
}

// Codes of weight rows [r, r + nrows), nrows <= 16, in A-tile layout: dst[p][i][0..63]
// = codes of blocks 2p, 2p + 1 of row r + i (a missing second block, and rows past
// nrows, read as zero codes).
template <int kBits>
void UnpackPanel(const QuantView& w, int r, int nrows, int np, uint8_t* dst) {
  constexpr int kBB = QuantBlockBytes(kBits);
  const int full = w.blocks / 2;
  for (int i = nrows; i < 16; ++i)
    for (int p = 0; p < np; ++p) _mm512_store_si512(dst + 1024 * static_cast<size_t>(p) + 64 * i, _mm512_setzero_si512());
  for (int i = 0; i < nrows; ++i) {
    const uint8_t* row = w.codes + static_cast<size_t>(r + i) * w.row_bytes;
    for (int p = 0; p < full; ++p) {
      const __m512i v = UnpackPair<kBits>(row + 2 * static_cast<size_t>(p) * kBB);
      _mm512_store_si512(dst + 1024 * static_cast<size_t>(p) + 64 * i, v);
    }
    if (full < np) {
      const __m256i v = UnpackOne<kBits>(row + 2 * static_cast<size_t>(full) * kBB);
      _mm512_store_si512(dst + 1024 * static_cast<size_t>(full) + 64 * i, _mm512_zextsi256_si512(v));
    }
  }
}

// One pair's epilogue: acc[i] += float(C[i][.]) * d[.] * s[i].
inline void ApplyPair(const int32_t* c, __m512 dv, const float* s, __m512 acc[16]) {
  for (int i = 0; i < 16; ++i) {
    const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(c + 16 * i)), dv);
    acc[i] = _mm512_fmadd_ps(v, _mm512_set1_ps(s[i]), acc[i]);
  }
}

template <int kBits>
void QuantGemmAmx(const QuantView& w, const QActView& x, float* y, int ldy, int r0, int r1) {
  // Every row of a product takes the same path whatever range [r0, r1) it is
  // computed in (results must not depend on how rows are split across threads): a
  // last panel of fewer than 16 rows runs on the tiles too.
  if (x.n < kAmxMinRows || x.span % 2 != 0 || (w.groups > 1 && w.bpg % 2 != 0))
    return g_vnni_quant[kBits](w, x, y, ldy, r0, r1);
  const int np = (w.blocks + 1) / 2;
  const int mtiles = (x.n + 15) / 16;
  // One scratch buffer (slot 0, 64-byte aligned; slot 1 holds x.gsum): activation
  // tiles, the code panel, then per-pair d and per-group sums of the activation rows
  // (16 lanes each), per-pair scales, mins, and two C tiles. Every part is a multiple
  // of 64 bytes.
  const size_t act_bytes = static_cast<size_t>(mtiles) * np * 1024, panel_bytes = static_cast<size_t>(np) * 1024;
  const size_t floats = 16 * (static_cast<size_t>(mtiles) * (np + w.groups) + np + w.groups) + 512;
  uint8_t* act = reinterpret_cast<uint8_t*>(ScratchFloats((act_bytes + panel_bytes) / 4 + floats, 0));
  uint8_t* panel = act + act_bytes;
  float* dpair = reinterpret_cast<float*>(panel + panel_bytes);       // [mtiles][np][16]
  float* gsum = dpair + static_cast<size_t>(mtiles) * np * 16;          // [mtiles][groups][16]
  float* spair = gsum + static_cast<size_t>(mtiles) * w.groups * 16;   // [np][16 rows]
  float* mins = spair + static_cast<size_t>(np) * 16;                  // [groups][16 rows]
  int32_t* ctile = reinterpret_cast<int32_t*>(mins + static_cast<size_t>(w.groups) * 16);  // 2 x 256

  for (int mt = 0; mt < mtiles; ++mt) {
    PackActivationTiles(x, 16 * mt, np, act + static_cast<size_t>(mt) * np * 1024);
    for (int m = 0; m < 16; ++m) {
      const int t = 16 * mt + m;
      for (int p = 0; p < np; ++p)
        dpair[(static_cast<size_t>(mt) * np + p) * 16 + m] = t < x.n ? x.d[static_cast<size_t>(t) * x.nb + 2 * p] : 0.f;
      for (int g = 0; g < w.groups; ++g)
        gsum[(static_cast<size_t>(mt) * w.groups + g) * 16 + m] = t < x.n ? x.gsum[static_cast<size_t>(t) * x.groups + g] : 0.f;
    }
  }

  static const TileConfig config = MakeConfig();
  _tile_loadconfig(&config);
  for (int r = r0; r < r1; r += 16) {
    const int nrows = r1 - r < 16 ? r1 - r : 16;
    const __mmask16 store_mask = static_cast<__mmask16>(nrows == 16 ? 0xFFFFu : (1u << nrows) - 1u);
    UnpackPanel<kBits>(w, r, nrows, np, panel);
    for (int i = 0; i < 16; ++i) {
      if (i >= nrows) {
        for (int p = 0; p < np; ++p) spair[p * 16 + i] = 0.f;
        for (int g = 0; g < w.groups; ++g) mins[g * 16 + i] = 0.f;
        continue;
      }
      const uint16_t* sc = w.scale + static_cast<size_t>(r + i) * w.groups;
      const uint16_t* mn = w.min + static_cast<size_t>(r + i) * w.groups;
      for (int p = 0; p < np; ++p) spair[p * 16 + i] = HalfToFloat(sc[w.groups == 1 ? 0 : 2 * p / w.bpg]);
      for (int g = 0; g < w.groups; ++g) mins[g * 16 + i] = HalfToFloat(mn[g]);
    }
    for (int mt = 0; mt < mtiles; ++mt) {
      const uint8_t* at = act + static_cast<size_t>(mt) * np * 1024;
      const float* dp = dpair + static_cast<size_t>(mt) * np * 16;
      __m512 acc[16];
      for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
      int p = 0;
      for (; p + 2 <= np; p += 2) {
        _tile_loadd(0, panel + 1024 * static_cast<size_t>(p), 64);
        _tile_loadd(1, at + 1024 * static_cast<size_t>(p), 64);
        _tile_zero(2);
        _tile_loadd(3, panel + 1024 * static_cast<size_t>(p + 1), 64);
        _tile_loadd(4, at + 1024 * static_cast<size_t>(p + 1), 64);
        _tile_zero(5);
        _tile_dpbusd(2, 0, 1);
        _tile_dpbusd(5, 3, 4);
        _tile_stored(2, ctile, 64);
        _tile_stored(5, ctile + 256, 64);
        ApplyPair(ctile, _mm512_load_ps(dp + 16 * p), spair + 16 * p, acc);
        ApplyPair(ctile + 256, _mm512_load_ps(dp + 16 * (p + 1)), spair + 16 * (p + 1), acc);
      }
      if (p < np) {
        _tile_loadd(0, panel + 1024 * static_cast<size_t>(p), 64);
        _tile_loadd(1, at + 1024 * static_cast<size_t>(p), 64);
        _tile_zero(2);
        _tile_dpbusd(2, 0, 1);
        _tile_stored(2, ctile, 64);
        ApplyPair(ctile, _mm512_load_ps(dp + 16 * p), spair + 16 * p, acc);
      }
      const float* gs = gsum + static_cast<size_t>(mt) * w.groups * 16;
      for (int g = 0; g < w.groups; ++g) {
        const __m512 gv = _mm512_load_ps(gs + 16 * g);
        for (int i = 0; i < 16; ++i) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(mins[g * 16 + i]), gv, acc[i]);
      }
      Transpose16(acc);  // acc[m]: the 16 rows of activation row 16 mt + m
      const int rows = x.n - 16 * mt < 16 ? x.n - 16 * mt : 16;
      for (int m = 0; m < rows; ++m)
        _mm512_mask_storeu_ps(y + static_cast<size_t>(16 * mt + m) * ldy + r, store_mask, acc[m]);
    }
  }
  _tile_release();
}

}  // namespace

void FillAmxKernels(KernelTable* t) {
  for (int b = 2; b <= 4; ++b) g_vnni_quant[b] = t->quant_gemm[b];
  t->quant_gemm[2] = QuantGemmAmx<2>;
  t->quant_gemm[3] = QuantGemmAmx<3>;
  t->quant_gemm[4] = QuantGemmAmx<4>;
}

}  // namespace eora::cpu
