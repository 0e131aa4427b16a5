// Portable C++ kernels: the reference implementation of every table entry, and
// the fallback on CPUs without AVX2.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "engine/backend/cpu/kernels.h"
#include "engine/backend/cpu/quant_pack.h"
#include "engine/dtype.h"

namespace eora::cpu {
namespace {

void QuantizeRow(const float* x, int cols, int padded_cols, int span, int8_t* q, float* d, float* s) {
  const int nb = padded_cols / 32;
  span = std::max(span, 1);
  for (int b0 = 0; b0 < nb; b0 += span) {
    const int b1 = std::min(nb, b0 + span);
    float amax = 0.f;
    for (int k = b0 * 32; k < std::min(cols, b1 * 32); ++k) amax = std::max(amax, std::fabs(x[k]));
    const float db = amax / 127.f;
    const float id = db > 0 ? 1.f / db : 0.f;
    for (int b = b0; b < b1; ++b) {
      const int k0 = b * 32;
      const int k1 = std::min(cols, k0 + 32);
      int sum = 0;
      for (int k = k0; k < k1; ++k) {
        const int v = static_cast<int>(std::nearbyint(x[k] * id));
        q[k] = static_cast<int8_t>(v);
        sum += v;
      }
      for (int k = std::max(k0, k1); k < k0 + 32; ++k) q[k] = 0;
      d[b] = db;
      s[b] = db * static_cast<float>(sum);
    }
  }
}

template <int kType>
inline float LoadW(const void* w, size_t i) {
  if constexpr (kType == kDenseF32) {
    return static_cast<const float*>(w)[i];
  } else if constexpr (kType == kDenseF16) {
    return F16ToF32(static_cast<const uint16_t*>(w)[i]);
  } else {
    return BF16ToF32(static_cast<const uint16_t*>(w)[i]);
  }
}

template <int kType>
void DenseGemm(const void* w, int cols, int r0, int r1, const float* x, int n, int ldx, float* y,
               int ldy) {
  float* row = ScratchFloats(static_cast<size_t>(cols));
  for (int r = r0; r < r1; ++r) {
    const size_t off = static_cast<size_t>(r) * cols;
    for (int k = 0; k < cols; ++k) row[k] = LoadW<kType>(w, off + k);
    for (int t = 0; t < n; ++t) {
      const float* xt = x + static_cast<size_t>(t) * ldx;
      float acc = 0.f;
      for (int k = 0; k < cols; ++k) acc += row[k] * xt[k];
      y[static_cast<size_t>(t) * ldy + r] = acc;
    }
  }
}

template <int kType>
void DenseAccT(const void* w, int cols, const float* u, int ldu, int n, int r, float* y, int ldy,
               int c0, int c1) {
  for (int j = 0; j < r; ++j) {
    const size_t off = static_cast<size_t>(j) * cols;
    for (int t = 0; t < n; ++t) {
      const float uj = u[static_cast<size_t>(t) * ldu + j];
      float* yt = y + static_cast<size_t>(t) * ldy;
      for (int c = c0; c < c1; ++c) yt[c] += uj * LoadW<kType>(w, off + c);
    }
  }
}

// Group g's scale and min of row r, in either layout.
inline size_t ScaleIndex(const QuantView& w, int r, int g) {
  return w.panels ? PanelScaleIndex(w.groups, r, g) : static_cast<size_t>(r) * w.groups + g;
}

template <int kBits, bool kPanels>
void QuantGemm(const QuantView& w, const QActView& x, float* y, int ldy, int r0, int r1) {
  uint8_t codes[32];
  for (int r = r0; r < r1; ++r) {
    const uint8_t* row = w.codes + static_cast<size_t>(r) * w.row_bytes;
    for (int t = 0; t < x.n; ++t) {
      const int8_t* q = x.q + static_cast<size_t>(t) * x.padded_cols;
      const float* d = x.d + static_cast<size_t>(t) * x.nb;
      const float* gs = x.gsum + static_cast<size_t>(t) * x.groups;
      float acc = 0.f;
      for (int g = 0; g < w.groups; ++g) {
        const int b1 = std::min(w.blocks, (g + 1) * w.bpg);
        float ga = 0.f;
        for (int b = g * w.bpg; b < b1; ++b) {
          if constexpr (kPanels) UnpackPanelBlock(kBits, w.codes, w.blocks, r, b, codes);
          else UnpackBlock(kBits, row + static_cast<size_t>(b) * QuantBlockBytes(kBits), codes, b, w.blocks);
          int dot = 0;
          for (int i = 0; i < 32; ++i) dot += codes[i] * q[b * 32 + i];
          ga += d[b] * static_cast<float>(dot);
        }
        const size_t si = ScaleIndex(w, r, g);
        acc += F16ToF32(w.scale[si]) * ga + F16ToF32(w.min[si]) * gs[g];
      }
      y[static_cast<size_t>(t) * ldy + r] = acc;
    }
  }
}

// Dequantizes columns [c0, c1) of row r into out[c0..c1).
template <int kBits>
void DequantRange(const QuantView& w, int r, int c0, int c1, float* out) {
  if (c0 >= c1) return;
  uint8_t codes[32];
  const uint8_t* row = w.codes + static_cast<size_t>(r) * w.row_bytes;
  const uint16_t* sc = w.scale + static_cast<size_t>(r) * w.groups;
  const uint16_t* mn = w.min + static_cast<size_t>(r) * w.groups;
  for (int b = c0 / 32; b * 32 < c1; ++b) {
    UnpackBlock(kBits, row + static_cast<size_t>(b) * QuantBlockBytes(kBits), codes, b, w.blocks);
    const int g = b / w.bpg;
    const float s = F16ToF32(sc[g]);
    const float m = F16ToF32(mn[g]);
    const int k0 = std::max(c0, b * 32);
    const int k1 = std::min(c1, b * 32 + 32);
    for (int k = k0; k < k1; ++k) out[k] = s * static_cast<float>(codes[k - b * 32]) + m;
  }
}

template <int kBits>
void QuantDequantRow(const QuantView& w, int r, float* out) {
  DequantRange<kBits>(w, r, 0, w.cols, out);
}

template <int kBits>
void QuantAccT(const QuantView& w, const float* u, int ldu, int n, int r, float* y, int ldy, int c0,
               int c1) {
  if (c0 >= c1) return;
  float* row = ScratchFloats(static_cast<size_t>(w.cols));
  for (int j = 0; j < r; ++j) {
    DequantRange<kBits>(w, j, c0, c1, row);
    for (int t = 0; t < n; ++t) {
      const float uj = u[static_cast<size_t>(t) * ldu + j];
      float* yt = y + static_cast<size_t>(t) * ldy;
      for (int c = c0; c < c1; ++c) yt[c] += uj * row[c];
    }
  }
}

// Column of kept value i (0..31) of kept block kb, from its 2-bit position.
inline int KeptColumn(int kb, int i, const uint8_t* pos32) { return kb * 64 + 4 * (i / 2) + pos32[i]; }

void Sparse24Gemm(const Sparse24View& w, const float* x, int n, int ldx, float* y, int ldy, int r0,
                  int r1) {
  uint8_t pos[32];
  for (int r = r0; r < r1; ++r) {
    const uint16_t* v = w.values + static_cast<size_t>(r) * w.kept_blocks * 32;
    const uint8_t* meta = w.meta + static_cast<size_t>(r) * w.kept_blocks * 8;
    for (int t = 0; t < n; ++t) {
      const float* xt = x + static_cast<size_t>(t) * ldx;
      float acc = 0.f;
      for (int kb = 0; kb < w.kept_blocks; ++kb) {
        UnpackPlane2(meta + kb * 8, pos);
        for (int i = 0; i < 32; ++i) {
          const int c = KeptColumn(kb, i, pos);
          if (c < w.cols) acc += F16ToF32(v[kb * 32 + i]) * xt[c];
        }
      }
      y[static_cast<size_t>(t) * ldy + r] = acc;
    }
  }
}

template <int kBits>
void Sparse24QGemm(const Sparse24QuantView& w, const QActView& x, float* y, int ldy, int r0, int r1) {
  uint8_t pos[32], codes[32];
  const QuantView& qv = w.q;
  for (int r = r0; r < r1; ++r) {
    const uint8_t* row = qv.codes + static_cast<size_t>(r) * qv.row_bytes;
    const uint8_t* meta = w.meta + static_cast<size_t>(r) * qv.blocks * 8;
    const uint16_t* sc = qv.scale + static_cast<size_t>(r) * qv.groups;
    const uint16_t* mn = qv.min + static_cast<size_t>(r) * qv.groups;
    for (int t = 0; t < x.n; ++t) {
      const int8_t* q = x.q + static_cast<size_t>(t) * x.padded_cols;
      const float* d = x.d + static_cast<size_t>(t) * x.nb;
      float acc = 0.f;
      for (int g = 0; g < qv.groups; ++g) {
        const int b1 = std::min(qv.blocks, (g + 1) * qv.bpg);
        float ga = 0.f, gm = 0.f;
        for (int b = g * qv.bpg; b < b1; ++b) {
          UnpackBlock(kBits, row + static_cast<size_t>(b) * QuantBlockBytes(kBits), codes, b, qv.blocks);
          UnpackPlane2(meta + b * 8, pos);
          // Kept values 0..15 lie in activation block 2b, 16..31 in block 2b+1.
          for (int h = 0; h < 2; ++h) {
            const int ab = 2 * b + h;
            if (ab >= x.nb) break;
            int dot = 0, qs = 0;
            for (int i = 16 * h; i < 16 * h + 16; ++i) {
              const int qv8 = q[KeptColumn(b, i, pos)];
              dot += codes[i] * qv8;
              qs += qv8;
            }
            ga += d[ab] * static_cast<float>(dot);
            gm += d[ab] * static_cast<float>(qs);
          }
        }
        acc += F16ToF32(sc[g]) * ga + F16ToF32(mn[g]) * gm;
      }
      y[static_cast<size_t>(t) * ldy + r] = acc;
    }
  }
}

}  // namespace

void FillGenericKernels(KernelTable* t) {
  t->quantize_row = QuantizeRow;
  t->dense_gemm[kDenseF32] = DenseGemm<kDenseF32>;
  t->dense_gemm[kDenseF16] = DenseGemm<kDenseF16>;
  t->dense_gemm[kDenseBF16] = DenseGemm<kDenseBF16>;
  t->dense_acc_t[kDenseF32] = DenseAccT<kDenseF32>;
  t->dense_acc_t[kDenseF16] = DenseAccT<kDenseF16>;
  t->dense_acc_t[kDenseBF16] = DenseAccT<kDenseBF16>;
  t->quant_gemm[2] = QuantGemm<2, false>;
  t->quant_gemm[3] = QuantGemm<3, false>;
  t->quant_gemm[4] = QuantGemm<4, false>;
  t->quant_panel_gemm[2] = QuantGemm<2, true>;
  t->quant_panel_gemm[3] = QuantGemm<3, true>;
  t->quant_panel_gemm[4] = QuantGemm<4, true>;
  t->quant_acc_t[2] = QuantAccT<2>;
  t->quant_acc_t[3] = QuantAccT<3>;
  t->quant_acc_t[4] = QuantAccT<4>;
  t->quant_dequant_row[2] = QuantDequantRow<2>;
  t->quant_dequant_row[3] = QuantDequantRow<3>;
  t->quant_dequant_row[4] = QuantDequantRow<4>;
  t->sparse24_gemm = Sparse24Gemm;
  t->sparse24q_gemm[2] = Sparse24QGemm<2>;
  t->sparse24q_gemm[3] = Sparse24QGemm<3>;
  t->sparse24q_gemm[4] = Sparse24QGemm<4>;
}

}  // namespace eora::cpu
