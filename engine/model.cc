#include "engine/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <immintrin.h>

#include "absl/strings/str_cat.h"
#include "engine/backend/cpu/kernels.h"
#include "engine/status_macros.h"

namespace eora {
namespace {

// Sum of squares in double precision, 8 elements per step in two 4-wide chains.
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void RmsNorm(const float* x, const float* w, int dim, float eps, float* out) {
  typedef float F4 __attribute__((vector_size(16)));
  typedef double D4 __attribute__((vector_size(32)));
  D4 a0 = {}, a1 = {};
  int i = 0;
  for (; i + 8 <= dim; i += 8) {
    F4 lo, hi;
    std::memcpy(&lo, x + i, sizeof(F4));
    std::memcpy(&hi, x + i + 4, sizeof(F4));
    const D4 dl = __builtin_convertvector(lo, D4), dh = __builtin_convertvector(hi, D4);
    a0 += dl * dl;
    a1 += dh * dh;
  }
  const D4 a = a0 + a1;
  double ss = (a[0] + a[1]) + (a[2] + a[3]);
  for (; i < dim; ++i) ss += static_cast<double>(x[i]) * x[i];
  const float inv = 1.0f / std::sqrt(static_cast<float>(ss / dim) + eps);
  for (int i = 0; i < dim; ++i) out[i] = x[i] * inv * w[i];
}

// Rotates one head vector in place. cos/sin hold head_dim/2 values for the position.
void Rope(float* v, int head_dim, RopeStyle style, const float* cs, const float* sn) {
  const int half = head_dim / 2;
  if (style == RopeStyle::kInterleaved) {
    for (int i = 0; i < half; ++i) {
      const float a = v[2 * i], b = v[2 * i + 1];
      v[2 * i] = a * cs[i] - b * sn[i];
      v[2 * i + 1] = a * sn[i] + b * cs[i];
    }
  } else {
    for (int i = 0; i < half; ++i) {
      const float a = v[i], b = v[i + half];
      v[i] = a * cs[i] - b * sn[i];
      v[i + half] = a * sn[i] + b * cs[i];
    }
  }
}

// Exp of x clamped to [-87, 88] (where it is a normal float): Cephes-style range
// reduction and degree-6 polynomial, about 1 ulp. Plain arithmetic and bit casts so
// that the SiLU loop below vectorizes.
inline float ExpApprox(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);
  const float fn = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round(x / ln 2)
  const float r = (x - fn * 0.693359375f) - fn * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(fn) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

typedef float V8 __attribute__((vector_size(32)));

// The 8-wide helpers below are internal and inlined into the target_clones
// functions; GCC's note that a 32-byte vector return would change the ABI of the
// non-AVX clone does not apply to anything callable from outside this file.
#pragma GCC diagnostic ignored "-Wpsabi"

inline V8 LoadV8(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

typedef int32_t I8 __attribute__((vector_size(32)));
typedef float V4 __attribute__((vector_size(16)));

inline float Hsum8(V8 a) { return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7])); }
inline float Hmax8(V8 a) {
  float m = a[0];
  for (int i = 1; i < 8; ++i) m = std::max(m, a[i]);
  return m;
}

// Lane j of the result is Hsum8(a[j]) for 8 vectors, with the same summation order
// (so a score does not depend on which path computed it).
__attribute__((always_inline)) inline V4 PairSums(V4 a, V4 b) {
  return __builtin_shufflevector(a, b, 0, 2, 4, 6) + __builtin_shufflevector(a, b, 1, 3, 5, 7);
}
__attribute__((always_inline)) inline V8 Hsum8x8(const V8* a) {
  V4 h[8];
  for (int j = 0; j < 8; ++j)
    h[j] = __builtin_shufflevector(a[j], a[j], 0, 1, 2, 3) +
           __builtin_shufflevector(a[j], a[j], 4, 5, 6, 7);  // (x0+x4, x1+x5, x2+x6, x3+x7)
  const V4 lo = PairSums(PairSums(h[0], h[1]), PairSums(h[2], h[3]));
  const V4 hi = PairSums(PairSums(h[4], h[5]), PairSums(h[6], h[7]));
  return __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7);
}

// e^x for x <= 0 (8 lanes): Cody-Waite reduction, degree-6 polynomial (the Cephes
// expf one, about 1 ulp); lanes below -87.3 give 0.
// V: a float vector type, I: the int32 vector of the same width.
template <class V, class I>
__attribute__((always_inline)) inline V ExpNegV(V x) {
  const V lo = V{} - 87.33f;
  const I under = x < lo;
  x = x < lo ? lo : x;
  const V magic = V{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  V n = x * 1.44269504088896341f + magic;
  const I ni = (I)n - (I)magic;
  n = n - magic;
  V r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  I bits = (I)p + (ni << 23);
  bits = under ? I{} : bits;
  return (V)bits;
}
__attribute__((always_inline)) inline V8 ExpNeg8(V8 x) { return ExpNegV<V8, I8>(x); }

// ExpApprox on 8 lanes, with the same operations in the same order.
__attribute__((always_inline)) inline V8 ExpApprox8(V8 x) {
  const V8 lo = V8{} - 87.0f, hi = V8{} + 88.0f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const V8 fn = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const V8 r = (x - fn * 0.693359375f) - fn * -2.12194440e-4f;
  V8 p = V8{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const I8 bits = (__builtin_convertvector(fn, I8) + 127) << 23;
  return p * (V8)bits;
}

// g[i] = SiLU(g[i]) * u[i], 8 at a time (GCC does not vectorize the scalar form
// for x86-64-v3: "control flow in loop").
__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void SiluMul(float* __restrict g, const float* __restrict u, int n) {
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    const V8 gv = LoadV8(g + i);
    const V8 o = gv / (1.0f + ExpApprox8(-gv)) * LoadV8(u + i);
    std::memcpy(g + i, &o, sizeof(V8));
  }
  for (; i < n; ++i) g[i] = g[i] / (1.0f + ExpApprox(-g[i])) * u[i];
}

// The scalar path of AttendHeads: one head, any head_dim.
void AttendHeadScalar(const float* q, int hd, const float* const* kb, const float* const* vb,
                      size_t off, int n, float scale, float* scores, float* out) {
  constexpr int B = KvCache::kBlockTokens;
  const int nblocks = (n + B - 1) / B;
  float mx = -INFINITY;
  for (int blk = 0; blk < nblocks; ++blk) {
    const float* base = kb[blk] + off;
    const int cnt = std::min(B, n - blk * B);
    float* sc = scores + blk * B;
    for (int i = 0; i < cnt; ++i) {
      float s = 0.f;
      for (int d = 0; d < hd; ++d) s += q[d] * base[static_cast<size_t>(d) * B + i];
      sc[i] = s * scale;
      mx = std::max(mx, sc[i]);
    }
  }
  float sum = 0.f;
  for (int p = 0; p < n; ++p) {
    scores[p] = std::exp(scores[p] - mx);
    sum += scores[p];
  }
  const float inv = 1.0f / sum;
  for (int d = 0; d < hd; ++d) out[d] = 0.f;
  for (int blk = 0; blk < nblocks; ++blk) {
    const float* base = vb[blk] + off;
    const int cnt = std::min(B, n - blk * B);
    const float* sc = scores + blk * B;
    for (int i = 0; i < cnt; ++i) {
      const float w = sc[i] * inv;
      for (int d = 0; d < hd; ++d) out[d] += w * base[static_cast<size_t>(d) * B + i];
    }
  }
}

// The vector path of AttendHeads for head_dim = 8 * kNv and kG query heads per
// KV head (see below).
template <int kNv, int kG>
__attribute__((always_inline)) inline void AttendVec(const float* q, const float* const* kb,
                                                     const float* const* vb, size_t off, int n,
                                                     float scale, float* scores, float* out) {
  constexpr int B = KvCache::kBlockTokens;
  static_assert(B == 16 && 8 % kG == 0);
  constexpr int kHd = 8 * kNv;
  const int nblocks = (n + B - 1) / B;
  const size_t stride = static_cast<size_t>(nblocks) * B;  // scores of one head
  const int last = n - (nblocks - 1) * B;  // positions in the last block, 1..16
  const I8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
  const I8 lo_live = lane < last, hi_live = lane + 8 < last;
  const V8 ninf = V8{} - INFINITY;
  // Scores of a block's 16 keys for the kG heads at once (each key row is loaded
  // once for all heads); slots past the sequence get -inf (exp gives 0).
  V8 mxv[kG];
  for (int g = 0; g < kG; ++g) mxv[g] = ninf;
  for (int blk = 0; blk < nblocks; ++blk) {
    const float* kt = kb[blk] + off;
    V8 slo[kG], shi[kG];
    if constexpr (kG == 1) {
      // Two chains per half block.
      V8 lo0 = V8{}, lo1 = V8{}, hi0 = V8{}, hi1 = V8{};
      for (int d = 0; d < kHd; d += 2) {
        const float* r0 = kt + static_cast<size_t>(d) * B;
        lo0 += q[d] * LoadV8(r0);
        hi0 += q[d] * LoadV8(r0 + 8);
        lo1 += q[d + 1] * LoadV8(r0 + B);
        hi1 += q[d + 1] * LoadV8(r0 + B + 8);
      }
      slo[0] = lo0 + lo1;
      shi[0] = hi0 + hi1;
    } else {
      for (int g = 0; g < kG; ++g) slo[g] = shi[g] = V8{};
      for (int d = 0; d < kHd; ++d) {
        const V8 klo = LoadV8(kt + static_cast<size_t>(d) * B);
        const V8 khi = LoadV8(kt + static_cast<size_t>(d) * B + 8);
        for (int g = 0; g < kG; ++g) {
          slo[g] += q[g * kHd + d] * klo;
          shi[g] += q[g * kHd + d] * khi;
        }
      }
    }
    for (int g = 0; g < kG; ++g) {
      V8 lo = slo[g] * scale, hi = shi[g] * scale;
      if (blk == nblocks - 1) {
        lo = lo_live ? lo : ninf;
        hi = hi_live ? hi : ninf;
      }
      mxv[g] = mxv[g] > lo ? mxv[g] : lo;
      mxv[g] = mxv[g] > hi ? mxv[g] : hi;
      std::memcpy(scores + g * stride + blk * B, &lo, sizeof(V8));
      std::memcpy(scores + g * stride + blk * B + 8, &hi, sizeof(V8));
    }
  }
  float inv[kG];
  for (int g = 0; g < kG; ++g) {
    const float mx = Hmax8(mxv[g]);
    float* sc = scores + g * stride;
    V8 sumv = V8{};
    for (size_t p = 0; p < stride; p += 8) {
      const V8 e = ExpNeg8(LoadV8(sc + p) - mx);
      sumv += e;
      std::memcpy(sc + p, &e, sizeof(V8));
    }
    inv[g] = 1.0f / Hsum8(sumv);
  }
  // out[g][d] = sum_i p_g[i] v_i[d]: kD dims of the kG heads at a time (8
  // accumulators, one per (head, dim), over the blocks' 16 slots), then a
  // transposed reduction. Slots past the sequence hold stale data: their (zero)
  // weights are not multiplied with it.
  constexpr int kD = 8 / kG;
  for (int d0 = 0; d0 < kHd; d0 += kD) {
    V8 acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = V8{};
    for (int blk = 0; blk < nblocks; ++blk) {
      const float* vt = vb[blk] + off + static_cast<size_t>(d0) * B;
      const bool full = blk < nblocks - 1;
      for (int j = 0; j < kD; ++j) {
        V8 vlo = LoadV8(vt + j * B), vhi = LoadV8(vt + j * B + 8);
        if (!full) {
          vlo = lo_live ? vlo : V8{};
          vhi = hi_live ? vhi : V8{};
        }
        for (int g = 0; g < kG; ++g) {
          const float* p = scores + g * stride + blk * B;
          acc[g * kD + j] += LoadV8(p) * vlo + LoadV8(p + 8) * vhi;
        }
      }
    }
    const V8 o = Hsum8x8(acc);  // lane g * kD + j: head g, dim d0 + j
    for (int g = 0; g < kG; ++g)
      for (int j = 0; j < kD; ++j) out[g * kHd + d0 + j] = o[g * kD + j] * inv[g];
  }
}

// ---- 16-wide attention (AVX-512): one KV block of 16 positions per vector.

typedef float V16 __attribute__((vector_size(64)));
typedef int32_t I16 __attribute__((vector_size(64)));

__attribute__((always_inline)) inline V16 LoadV16(const float* p) {
  V16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
// 16 F16 values (an F16 KV cache) as floats.
__attribute__((target("arch=x86-64-v4"), always_inline)) inline V16 LoadV16(const uint16_t* p) {
  return reinterpret_cast<V16>(
      _mm512_maskz_cvtph_ps(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
}

// ExpNeg8 on 16 lanes (same operations).
__attribute__((always_inline)) inline V16 ExpNeg16(V16 x) { return ExpNegV<V16, I16>(x); }

__attribute__((always_inline)) inline V8 Lo8(V16 a) { return __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7); }
__attribute__((always_inline)) inline V8 Hi8(V16 a) { return __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15); }

// Lane j of the result is the sum of the lanes of a[j], for 16 vectors (a
// transposing tree: 15 adds instead of 16 separate reductions).
__attribute__((always_inline)) inline V16 Hsum16x16(const V16* a) {
  V16 b[8], c[4], d[2];
  for (int i = 0; i < 8; ++i)
    b[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           __builtin_shufflevector(a[2 * i], a[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int i = 0; i < 4; ++i)
    c[i] = __builtin_shufflevector(b[2 * i], b[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
           __builtin_shufflevector(b[2 * i], b[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
  for (int i = 0; i < 2; ++i)
    d[i] = __builtin_shufflevector(c[2 * i], c[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
           __builtin_shufflevector(c[2 * i], c[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
  return __builtin_shufflevector(d[0], d[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(d[0], d[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}

// Attention of kH KV heads with kG query heads each (kQ = kH * kG heads), a whole
// 16-position block per vector: scores of a block for all kQ heads (each key row
// loaded once for its kG heads), a 16-wide exp, and the weighted values with 16
// accumulators per pass reduced by one transposing tree. The kQ heads are
// independent dependency chains interleaved in every phase: with one head of a
// small head_dim, each phase was a short serial chain (score FMAs, max, exp
// polynomial, sum, values) and the core waited on latencies rather than
// throughput. The chunk's first KV head in block blk starts at kb[blk] + off
// (vb[blk] + off); the next one kHd * 16 floats further. `scores` has room for kQ times
// n rounded up to 16.
// KvT: float, or uint16_t for an F16 cache (converted as loaded).
template <int kHd, int kG, int kH, typename KvT>
__attribute__((target("arch=x86-64-v4"), always_inline)) inline void AttendVec16(
    const float* q, const KvT* const* kb, const KvT* const* vb, size_t off, int n, float scale, float* scores,
    float* out) {
  constexpr int B = KvCache::kBlockTokens;
  constexpr int kQ = kG * kH;
  constexpr size_t kHs = static_cast<size_t>(kHd) * B;  // one KV head in a block
  static_assert(B == 16 && kQ <= 8);
  const int nblocks = (n + B - 1) / B;
  const size_t stride = static_cast<size_t>(nblocks) * B;
  const int last = n - (nblocks - 1) * B;
  const I16 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  const I16 live = lane < last;
  const V16 ninf = V16{} - INFINITY;
  // Scores, one KV head at a time: the kG query heads that share it go together,
  // so each key row is loaded once for all of them. Per head the arithmetic is
  // fixed (even and odd dims in two sums, then the scale); blocks are independent
  // chains, and two running maxima (even and odd blocks) halve the loop-carried
  // max chain. The query values are broadcast once into registers when they fit
  // (the compiler cannot hoist the loads itself: the score stores might alias q).
  constexpr bool kQInRegs = kG * kHd <= 16;
  V16 mxv[kQ];
  for (int hk = 0; hk < kH; ++hk) {
    const size_t koff = off + static_cast<size_t>(hk) * kHs;
    const float* qk = q + hk * kG * kHd;
    V16 qv[kQInRegs ? kG : 1][kQInRegs ? kHd : 1];
    if constexpr (kQInRegs)
      for (int g = 0; g < kG; ++g)
        for (int d = 0; d < kHd; ++d) qv[g][d] = V16{} + qk[g * kHd + d];
    V16 m0[kG], m1[kG];
    for (int g = 0; g < kG; ++g) m0[g] = m1[g] = ninf;
    for (int blk = 0; blk < nblocks; ++blk) {
      const KvT* kt = kb[blk] + koff;
      V16 s0[kG], s1[kG];
      for (int g = 0; g < kG; ++g) s0[g] = s1[g] = V16{};
      for (int d = 0; d < kHd; d += 2) {
        const V16 k0 = LoadV16(kt + static_cast<size_t>(d) * B);
        const V16 k1 = LoadV16(kt + static_cast<size_t>(d + 1) * B);
        for (int g = 0; g < kG; ++g) {
          if constexpr (kQInRegs) {
            s0[g] += qv[g][d] * k0;
            s1[g] += qv[g][d + 1] * k1;
          } else {
            s0[g] += qk[g * kHd + d] * k0;
            s1[g] += qk[g * kHd + d + 1] * k1;
          }
        }
      }
      for (int g = 0; g < kG; ++g) {
        V16 v = (s0[g] + s1[g]) * scale;
        if (blk == nblocks - 1) v = live ? v : ninf;
        if (blk % 2 == 0) m0[g] = m0[g] > v ? m0[g] : v;
        else m1[g] = m1[g] > v ? m1[g] : v;
        std::memcpy(scores + (hk * kG + g) * stride + blk * B, &v, sizeof(V16));
      }
    }
    for (int g = 0; g < kG; ++g) mxv[hk * kG + g] = m0[g] > m1[g] ? m0[g] : m1[g];
  }
  V16 mx[kQ], sumv[kQ];
  for (int h = 0; h < kQ; ++h) {
    const V8 m8 = Lo8(mxv[h]) > Hi8(mxv[h]) ? Lo8(mxv[h]) : Hi8(mxv[h]);
    mx[h] = V16{} + Hmax8(m8);
    sumv[h] = V16{};
  }
  // Values: kP heads x kD dims per pass, 16 accumulators over a block's slots.
  // Slots past the sequence hold stale data: their (zero) weights are not
  // multiplied with it.
  constexpr int kD = kHd < 16 ? kHd : 16;
  constexpr int kP = 16 / kD < kQ ? 16 / kD : kQ;
  static_assert(kQ % kP == 0);
  constexpr bool kShareV = kG % kP == 0;  // a pass's heads read one KV head
  // Head dims up to 16 take one value pass per head: the exponentials are
  // computed there (same values, same summation order) instead of in a pass of
  // their own that stores them and reads them back.
  constexpr bool kFuseExp = kD == kHd;
  float inv[kQ];
  if constexpr (!kFuseExp) {
    for (size_t p = 0; p < stride; p += B) {
      for (int h = 0; h < kQ; ++h) {
        float* sc = scores + h * stride + p;
        const V16 e = ExpNeg16(LoadV16(sc) - mx[h]);
        sumv[h] += e;
        std::memcpy(sc, &e, sizeof(V16));
      }
    }
    for (int h = 0; h < kQ; ++h) inv[h] = 1.0f / Hsum8(Lo8(sumv[h]) + Hi8(sumv[h]));
  }
  for (int h0 = 0; h0 < kQ; h0 += kP) {
    for (int d0 = 0; d0 < kHd; d0 += kD) {
      V16 acc[16];
      for (int j = 0; j < 16; ++j) acc[j] = V16{};
      for (int blk = 0; blk < nblocks; ++blk) {
        const bool full = blk < nblocks - 1;
        V16 pw[kP];
        for (int p = 0; p < kP; ++p) {
          pw[p] = LoadV16(scores + (h0 + p) * stride + blk * B);
          if constexpr (kFuseExp) {
            pw[p] = ExpNeg16(pw[p] - mx[h0 + p]);
            sumv[h0 + p] += pw[p];
          }
        }
        // One base pointer per block: the rows of a pass sit at compile-time
        // offsets from it (GCC otherwise keeps one offset per row, spilled).
        const KvT* vrow = vb[blk] + off + static_cast<size_t>(d0) * B;
        for (int j = 0; j < kD; ++j) {
          if constexpr (kShareV) {
            V16 v = LoadV16(vrow + (h0 / kG) * kHs + static_cast<size_t>(j) * B);
            if (!full) v = live ? v : V16{};
            for (int p = 0; p < kP; ++p) acc[p * kD + j] += pw[p] * v;
          } else {
            for (int p = 0; p < kP; ++p) {
              V16 v = LoadV16(vrow + ((h0 + p) / kG) * kHs + static_cast<size_t>(j) * B);
              if (!full) v = live ? v : V16{};
              acc[p * kD + j] += pw[p] * v;
            }
          }
        }
      }
      if constexpr (kFuseExp)
        for (int p = 0; p < kP; ++p) inv[h0 + p] = 1.0f / Hsum8(Lo8(sumv[h0 + p]) + Hi8(sumv[h0 + p]));
      const V16 o = Hsum16x16(acc);  // lane p * kD + j: head h0 + p, dim d0 + j
      if constexpr (kD == kHd) {
        // The pass's kP heads are contiguous in out: one vector scale, one store.
        V16 iv = V16{} + inv[h0];
        for (int p = 1; p < kP; ++p) iv = lane >= p * kD ? V16{} + inv[h0 + p] : iv;
        const V16 r = o * iv;
        if constexpr (kP * kD == 16) {
          std::memcpy(out + h0 * kHd, &r, sizeof(V16));
        } else {
          for (int l = 0; l < kP * kD; ++l) out[h0 * kHd + l] = r[l];
        }
      } else {
        for (int p = 0; p < kP; ++p)
          for (int j = 0; j < kD; ++j) out[(h0 + p) * kHd + d0 + j] = o[p * kD + j] * inv[h0 + p];
      }
    }
  }
}

// The 16-wide paths, compiled for AVX-512 only: `heads` KV heads (1, 2, 4 or 8,
// with heads * group <= 8). Returns false for shapes it does not cover (the
// caller then takes the 8-wide paths one KV head at a time).
template <typename KvT>
__attribute__((target("arch=x86-64-v4"))) bool AttendHeads16(const float* q, int hd, int group,
                                                            int heads, const KvT* const* kb,
                                                            const KvT* const* vb, size_t off, int n,
                                                            float scale, float* scores, float* out) {
#define EORA_ATTEND16_H(HD, G, H) \
  case H: AttendVec16<HD, G, H, KvT>(q, kb, vb, off, n, scale, scores, out); return true;
#define EORA_ATTEND16_G(HD)                                                               \
  switch (group) {                                                                        \
    case 1: switch (heads) { EORA_ATTEND16_H(HD, 1, 1) EORA_ATTEND16_H(HD, 1, 2)          \
                             EORA_ATTEND16_H(HD, 1, 4) EORA_ATTEND16_H(HD, 1, 8)          \
                             default: return false; }                                     \
    case 2: switch (heads) { EORA_ATTEND16_H(HD, 2, 1) EORA_ATTEND16_H(HD, 2, 2)          \
                             EORA_ATTEND16_H(HD, 2, 4) default: return false; }           \
    case 4: switch (heads) { EORA_ATTEND16_H(HD, 4, 1) EORA_ATTEND16_H(HD, 4, 2)          \
                             default: return false; }                                     \
    default: return false;                                                                \
  }
  switch (hd) {
    case 8: EORA_ATTEND16_G(8)
    case 16: EORA_ATTEND16_G(16)
    case 32: EORA_ATTEND16_G(32)
    case 64: EORA_ATTEND16_G(64)
    case 128: EORA_ATTEND16_G(128)
    default: return false;
  }
#undef EORA_ATTEND16_G
#undef EORA_ATTEND16_H
}

const bool kHaveAvx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");

// Attention of KV heads [first, first + heads) with `group` query heads each,
// over n cached positions. q / out: those query heads' head_dim vectors back to
// back. kb[i] / vb[i] point at the keys / values of block i, stored dim-major:
// element d of KV head h's key (value) of slot s at
// kb[i][(h * hd + d) * kBlockTokens + s]. `scores` has room for heads * group times n
// rounded up to a multiple of kBlockTokens.
// Compiled for several ISAs; the loader picks one at startup (GCC target_clones).
// With `wide` (AVX-512 and an AVX-512 kernel table active, see WideAttention),
// head dims of 8 to 128 take AttendVec16 (all heads of the call interleaved).
// Otherwise one KV head at a time: head dims of 8, 16, 32, 64, 128
// use 8-wide vectors over a block's positions (scores of 16 keys at once, each
// key and value row loaded once for the group, a vectorised exp, the weighted
// values as 8 partial sums per dim); others take the scalar loop one head at a
// time.
// The 16-wide attention runs where the CPU has AVX-512 and the active kernel
// table is an AVX-512 one (EORA_ISA=avx2 or cpu::SetActiveIsa("avx2") select the
// 8-wide paths, so that tests and benchmarks reach them on any machine).
bool WideAttention() {
  if (!kHaveAvx512) return false;
  const std::string_view isa = cpu::ActiveIsaName();
  return isa == "avx512" || isa == "amx";
}

__attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
void AttendHeads(bool wide, const float* q, int hd, int group, int first, int heads,
                 const float* const* kb, const float* const* vb, int n, float scale, float* scores,
                 float* out) {
  const size_t off0 = static_cast<size_t>(first) * hd * KvCache::kBlockTokens;
  if (wide && AttendHeads16(q, hd, group, heads, kb, vb, off0, n, scale, scores, out)) return;
  for (int kv = 0; kv < heads; ++kv) {
    const size_t off = off0 + static_cast<size_t>(kv) * hd * KvCache::kBlockTokens;
    const float* qh = q + static_cast<size_t>(kv) * group * hd;
    float* oh = out + static_cast<size_t>(kv) * group * hd;
#define EORA_ATTEND_G(NV)                                                                   \
  switch (group) {                                                                         \
    case 1: AttendVec<NV, 1>(qh, kb, vb, off, n, scale, scores, oh); continue;             \
    case 2: AttendVec<NV, 2>(qh, kb, vb, off, n, scale, scores, oh); continue;             \
    case 4: AttendVec<NV, 4>(qh, kb, vb, off, n, scale, scores, oh); continue;             \
    default:                                                                               \
      for (int g = 0; g < group; ++g)                                                      \
        AttendVec<NV, 1>(qh + g * hd, kb, vb, off, n, scale, scores, oh + g * hd);         \
      continue;                                                                            \
  }
    switch (hd) {
      case 8: EORA_ATTEND_G(1)
      case 16: EORA_ATTEND_G(2)
      case 32: EORA_ATTEND_G(4)
      case 64: EORA_ATTEND_G(8)
      case 128: EORA_ATTEND_G(16)
      default: break;
    }
#undef EORA_ATTEND_G
    for (int g = 0; g < group; ++g)
      AttendHeadScalar(qh + g * hd, hd, kb, vb, off, n, scale, scores, oh + g * hd);
  }
}

}  // namespace

double LogProb(const float* logits, int vocab, int target) {
  float mx = logits[0];
  for (int i = 1; i < vocab; ++i) mx = std::max(mx, logits[i]);
  double sum = 0;
  for (int i = 0; i < vocab; ++i) sum += std::exp(static_cast<double>(logits[i]) - mx);
  return static_cast<double>(logits[target]) - mx - std::log(sum);
}

Model::Model(std::shared_ptr<const ModelWeights> weights, ThreadPool* pool)
    : weights_(std::move(weights)), pool_(pool) {}

absl::Status Model::Prepare(std::span<const SequenceChunk> batch, KvCache* cache) {
  const ModelConfig& c = weights_->config;
  // ---- Validate everything before touching the cache.
  int T = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceChunk& ch = batch[i];
    if (ch.kv == nullptr)
      return absl::InvalidArgumentError(absl::StrCat("batch entry ", i, " has no KV sequence"));
    for (int tok : ch.tokens)
      if (tok < 0 || tok >= c.vocab_size)
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", tok, " is outside the vocabulary [0, ", c.vocab_size, ")"));
    if (ch.kv->length() + static_cast<int>(ch.tokens.size()) > c.max_seq_len)
      return absl::OutOfRangeError(absl::StrCat(
          "sequence would reach ", ch.kv->length() + ch.tokens.size(),
          " tokens, over the model's context of ", c.max_seq_len));
    if (ch.adapter != nullptr) {
      if (ch.rank < 0 || ch.rank > ch.adapter->max_rank())
        return absl::InvalidArgumentError(absl::StrCat("rank ", ch.rank, " is outside [0, ",
                                                       ch.adapter->max_rank(), "] of adapter '",
                                                       ch.adapter->name(), "'"));
      if (ch.adapter->num_layers() != c.n_layers)
        return absl::FailedPreconditionError(
            absl::StrCat("adapter '", ch.adapter->name(), "' does not match the model"));
    }
    T += static_cast<int>(ch.tokens.size());
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    absl::Status s = cache->Reserve(batch[i].kv, static_cast<int>(batch[i].tokens.size()));
    if (!s.ok()) {
      for (size_t j = 0; j < i; ++j) cache->Truncate(batch[j].kv, batch[j].kv->length());
      return s;
    }
  }

  T_ = T;
  const int dim = c.dim, hd = c.head_dim, qd = c.q_dim(), kvd = c.kv_dim(), ffn = c.ffn_dim;
  const int half = hd / 2;
  x_.resize(static_cast<size_t>(T) * dim);
  xn_.resize(static_cast<size_t>(T) * dim);
  q_.resize(static_cast<size_t>(T) * qd);
  k_.resize(static_cast<size_t>(T) * kvd);
  v_.resize(static_cast<size_t>(T) * kvd);
  att_.resize(static_cast<size_t>(T) * qd);
  tmp_.resize(static_cast<size_t>(T) * dim);
  gate_.resize(static_cast<size_t>(T) * ffn);
  up_.resize(static_cast<size_t>(T) * ffn);
  pos_.resize(T);
  chunk_of_.resize(T);
  rope_cos_.resize(static_cast<size_t>(T) * half);
  rope_sin_.resize(static_cast<size_t>(T) * half);

  // Token -> (chunk, position); segments of rows sharing an adapter and rank.
  segments_.clear();
  int t = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceChunk& ch = batch[i];
    const int n = static_cast<int>(ch.tokens.size());
    if (ch.adapter != nullptr && ch.rank > 0) {
      if (!segments_.empty() && segments_.back().end == t &&
          segments_.back().adapter == ch.adapter && segments_.back().rank == ch.rank)
        segments_.back().end = t + n;
      else
        segments_.push_back({t, t + n, ch.adapter, ch.rank});
    }
    for (int j = 0; j < n; ++j, ++t) {
      chunk_of_[t] = static_cast<int>(i);
      pos_[t] = ch.kv->length() + j;
    }
  }
  // cos/sin per position come from a table that grows to the largest position
  // seen (a decode step would otherwise spend pow, cos and sin per token).
  int max_pos = -1;
  for (int tt = 0; tt < T; ++tt) max_pos = std::max(max_pos, pos_[tt]);
  const int have = static_cast<int>(rope_table_cos_.size() / std::max(half, 1));
  if (half > 0 && max_pos >= have) {
    const int want = std::min(c.max_seq_len, std::max(max_pos + 1, 2 * have));
    rope_table_cos_.resize(static_cast<size_t>(want) * half);
    rope_table_sin_.resize(static_cast<size_t>(want) * half);
    for (int p = have; p < want; ++p)
      for (int i = 0; i < half; ++i) {
        const double freq = std::pow(static_cast<double>(c.rope_theta), -2.0 * i / hd);
        const double ang = p * freq;
        rope_table_cos_[static_cast<size_t>(p) * half + i] = static_cast<float>(std::cos(ang));
        rope_table_sin_[static_cast<size_t>(p) * half + i] = static_cast<float>(std::sin(ang));
      }
  }
  for (int tt = 0; tt < T; ++tt) {
    std::copy_n(rope_table_cos_.data() + static_cast<size_t>(pos_[tt]) * half, half,
                rope_cos_.data() + static_cast<size_t>(tt) * half);
    std::copy_n(rope_table_sin_.data() + static_cast<size_t>(pos_[tt]) * half, half,
                rope_sin_.data() + static_cast<size_t>(tt) * half);
  }
  return absl::OkStatus();
}

// Largest A-side work (tokens x rank x input width, summed over a module group)
// that RunLayer lets every thread repeat to keep a low-rank product in one
// parallel region: ~5 us of int8 products, about what a region's wake-up and join
// cost on the 2-core VM of docs/performance.md (rank 64 on stories110M shapes:
// q/k/v 147K, down 131K multiply-adds per decoded token).
constexpr int64_t kFusedLowRankMaxAMacs = int64_t{1} << 18;

void Model::RunLayer(int l, const LayerWeights& L, const LayerFactors* override_factors,
                     int cache_layer, std::span<const SequenceChunk> batch, KvCache* cache,
                     LinearObserver* observer) {
  const ModelConfig& c = weights_->config;
  const int T = T_;
  const int dim = c.dim, hd = c.head_dim, qd = c.q_dim(), kvd = c.kv_dim(), ffn = c.ffn_dim;
  const int half = hd / 2;
  const int group = c.n_heads / c.n_kv_heads;

  // Low-rank adapters. When every row uses the same factors at the same rank (one
  // adapter in the batch, or calibration overrides), the A products join the
  // parallel region of the base products that share their input and the B
  // products of modules that share an output region run together: no extra pass
  // over the input, and few parallel regions. Mixed batches take ApplyLowRank.
  const bool any_lr = override_factors != nullptr || !segments_.empty();
  const bool uniform_lr =
      override_factors != nullptr ||
      (segments_.size() == 1 && segments_[0].begin == 0 && segments_[0].end == T);
  struct Lr {
    const LowRankFactors* f = nullptr;
    int r = 0;
    float* u = nullptr;  // [T][r]
  };
  std::array<Lr, kNumModules> lr{};
  if (uniform_lr) {
    size_t need = 0;
    for (int m = 0; m < kNumModules; ++m) {
      const LowRankFactors* f = override_factors != nullptr
                                    ? &(*override_factors)[m]
                                    : &segments_[0].adapter->factors(l, static_cast<Module>(m));
      if (!f->a) continue;
      const int r = override_factors != nullptr ? f->rank() : std::min(segments_[0].rank, f->rank());
      if (r <= 0) continue;
      lr[m] = {f, r, nullptr};
      need += static_cast<size_t>(T) * r;
    }
    lr_u_.resize(need);
    size_t off = 0;
    for (int m = 0; m < kNumModules; ++m)
      if (lr[m].f) {
        lr[m].u = lr_u_.data() + off;
        off += static_cast<size_t>(T) * lr[m].r;
      }
  }
  // Adds the A products of `mods` to `outs` (uniform adapters only).
  auto with_a = [&](std::vector<MatMulOutput> outs, std::initializer_list<Module> mods) {
    for (Module m : mods) {
      const Lr& a = lr[static_cast<int>(m)];
      if (a.f) outs.push_back({a.f->a.get(), a.u, a.r, a.r});
    }
    return outs;
  };
  // y_m += u_m Bt_m[:r] for the modules in `jobs`, in one region over their columns.
  struct BJob {
    Module m;
    float* y;
    int ldy;
  };
  auto apply_b = [&](std::initializer_list<BJob> jobs) {
    std::vector<BJob> js;
    std::vector<int64_t> starts;
    int64_t total = 0, work = 0;
    for (const BJob& j : jobs) {
      const Lr& a = lr[static_cast<int>(j.m)];
      if (!a.f) continue;
      js.push_back(j);
      starts.push_back(total);
      const int cols = a.f->bt->cols();
      total += (cols + 31) / 32 * 32;
      work += static_cast<int64_t>(T) * a.r * cols;
    }
    if (js.empty()) return;
    pool_->ParallelFor(total, 32, work, [&](int, int64_t b, int64_t e) {
      for (size_t i = 0; i < js.size(); ++i) {
        const Lr& a = lr[static_cast<int>(js[i].m)];
        const int64_t lo = std::max<int64_t>(b, starts[i]);
        const int64_t hi = std::min<int64_t>(e, starts[i] + a.f->bt->cols());
        if (lo < hi)
          a.f->bt->AccumulateTransposed(a.u, a.r, T, a.r, js[i].y, js[i].ldy,
                                        static_cast<int>(lo - starts[i]),
                                        static_cast<int>(hi - starts[i]));
      }
    });
  };
  // Small steps (decode): the A products join the base products' region, the
  // threads sharing them out in pieces, and the B products follow in the same
  // region over the rows each thread computed (MatMulSharedLowRank): one parallel
  // region per module group instead of two. Worth it while the A products are
  // small enough that a thread waiting for them costs less than a region's
  // wake-up and join.
  auto a_macs = [&](std::initializer_list<Module> mods) {
    int64_t macs = 0;
    for (Module m : mods) {
      const Lr& a = lr[static_cast<int>(m)];
      if (a.f) macs += static_cast<int64_t>(T) * a.r * a.f->a->cols();
    }
    return macs;
  };
  auto fuse_lr = [&](std::initializer_list<Module> mods) {
    return uniform_lr && a_macs(mods) <= kFusedLowRankMaxAMacs;
  };
  auto terms = [&](std::initializer_list<Module> mods) {
    std::vector<LowRankTerm> t;
    for (Module m : mods) {
      const Lr& a = lr[static_cast<int>(m)];
      t.push_back(a.f ? LowRankTerm{a.f->a.get(), a.f->bt.get(), a.r} : LowRankTerm{});
    }
    return t;
  };
  // Mixed batches: one module at a time.
  auto lowrank_mixed = [&](Module m, const float* in, int ldin, float* out, int ldout) {
    if (any_lr && !uniform_lr) ApplyLowRank(segments_, l, m, in, ldin, out, ldout, pool_, &lr_);
  };
  auto norm_rows = [&](const std::vector<float>& w) {
    pool_->ParallelFor(T, 1, static_cast<int64_t>(T) * dim * 4, [&](int, int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t)
        RmsNorm(x_.data() + t * dim, w.data(), dim, c.norm_eps, xn_.data() + t * dim);
    });
  };
  auto add_residual = [&]() {
    for (size_t i = 0; i < static_cast<size_t>(T) * dim; ++i) x_[i] += tmp_[i];
  };
  const float att_scale = 1.0f / std::sqrt(static_cast<float>(hd));

  // ---- Attention block.
  norm_rows(L.attn_norm);
  if (observer) observer->OnLinearInput(l, Module::kQ, xn_.data(), T, dim);
  if (fuse_lr({Module::kQ, Module::kK, Module::kV})) {
    MatMulSharedLowRank({{&L.w(Module::kQ), q_.data(), qd},
                         {&L.w(Module::kK), k_.data(), kvd},
                         {&L.w(Module::kV), v_.data(), kvd}},
                        terms({Module::kQ, Module::kK, Module::kV}), xn_.data(), T, dim, pool_, &mm_);
  } else {
    MatMulShared(with_a({{&L.w(Module::kQ), q_.data(), qd},
                         {&L.w(Module::kK), k_.data(), kvd},
                         {&L.w(Module::kV), v_.data(), kvd}},
                        {Module::kQ, Module::kK, Module::kV}),
                 xn_.data(), T, dim, pool_, &mm_);
    apply_b({{Module::kQ, q_.data(), qd}, {Module::kK, k_.data(), kvd}, {Module::kV, v_.data(), kvd}});
  }
  lowrank_mixed(Module::kQ, xn_.data(), dim, q_.data(), qd);
  lowrank_mixed(Module::kK, xn_.data(), dim, k_.data(), kvd);
  lowrank_mixed(Module::kV, xn_.data(), dim, v_.data(), kvd);
  // RoPE, then store k/v in the cache.
  pool_->ParallelFor(T, 1, static_cast<int64_t>(T) * (qd + 2 * kvd) * 2,
                     [&](int, int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* cs = rope_cos_.data() + t * half;
      const float* sn = rope_sin_.data() + t * half;
      for (int h = 0; h < c.n_heads; ++h) Rope(q_.data() + t * qd + h * hd, hd, c.rope_style, cs, sn);
      for (int h = 0; h < c.n_kv_heads; ++h)
        Rope(k_.data() + t * kvd + h * hd, hd, c.rope_style, cs, sn);
      const KvSequence& seq = *batch[chunk_of_[t]].kv;
      cache->Store(seq, cache_layer, pos_[t], k_.data() + t * kvd, v_.data() + t * kvd);
    }
  });
  // Causal attention: token t attends to positions [0, pos_t] of its sequence.
  int64_t att_work = 0;
  for (int t = 0; t < T; ++t) att_work += static_cast<int64_t>(pos_[t] + 1) * qd * 2;
  // Work items of up to `piece` KV heads of one token (AttendHeads interleaves
  // them, at most 8 query heads per call). With few items (decode of a few
  // sequences), as many per token as make the item count a multiple of the
  // threads, with equal heads each: 12 KV heads on 2 threads in pieces of 8 and 4
  // left one thread twice the other's work.
  const bool wide = WideAttention();
  const int threads = pool_->num_threads();
  int piece_max = 1;
  while (piece_max * 2 <= c.n_kv_heads && piece_max * 2 * group <= 8) piece_max *= 2;
  int per_token = (c.n_kv_heads + piece_max - 1) / piece_max;
  if (static_cast<int64_t>(T) * per_token < 4 * threads) {
    int want = std::max(per_token, (threads + T - 1) / T);
    while (want < c.n_kv_heads && (static_cast<int64_t>(T) * want) % threads != 0) ++want;
    per_token = std::min(want, c.n_kv_heads);
  }
  const int piece = (c.n_kv_heads + per_token - 1) / per_token;
  const int pieces = (c.n_kv_heads + piece - 1) / piece;
  const bool f16_kv = cache->dtype() == KvDType::kF16;
  pool_->ParallelFor(static_cast<int64_t>(T) * pieces, 1, att_work, [&](int, int64_t b, int64_t e) {
    std::vector<float> scores;
    std::vector<const float*> kb, vb;
    std::vector<const uint16_t*> kh, vh;  // an F16 cache's blocks
    std::vector<float> kv_f32;            // ... converted, where the 16-wide path does not apply
    for (int64_t item = b; item < e; ++item) {
      const int t = static_cast<int>(item / pieces);
      const int kv0 = static_cast<int>(item % pieces) * piece;
      const int kv_end = std::min(c.n_kv_heads, kv0 + piece);
      const KvSequence& seq = *batch[chunk_of_[t]].kv;
      const int n = pos_[t] + 1;
      const int nblocks = (n + KvCache::kBlockTokens - 1) / KvCache::kBlockTokens;
      scores.resize(static_cast<size_t>(piece) * group * nblocks * KvCache::kBlockTokens);
      bool have_f32 = false;  // kb / vb set for this item
      auto f32_blocks = [&] {
        if (have_f32) return;
        have_f32 = true;
        kb.resize(nblocks);
        vb.resize(nblocks);
        if (!f16_kv) {
          for (int blk = 0; blk < nblocks; ++blk) {
            kb[blk] = cache->BlockKeys(seq, cache_layer, blk);
            vb[blk] = cache->BlockValues(seq, cache_layer, blk);
          }
          return;
        }
        // Only this item's KV heads are converted.
        const size_t bf = cache->BlockFloats();
        if (kv_f32.size() < 2 * nblocks * bf) kv_f32.resize(2 * nblocks * bf);
        const size_t begin = static_cast<size_t>(kv0) * hd * KvCache::kBlockTokens;
        const size_t count = static_cast<size_t>(kv_end - kv0) * hd * KvCache::kBlockTokens;
        for (int blk = 0; blk < nblocks; ++blk) {
          kb[blk] = cache->BlockKeys(seq, cache_layer, blk, kv_f32.data() + 2 * blk * bf, begin, count);
          vb[blk] = cache->BlockValues(seq, cache_layer, blk, kv_f32.data() + (2 * blk + 1) * bf, begin, count);
        }
      };
      if (f16_kv && wide) {
        kh.resize(nblocks);
        vh.resize(nblocks);
        for (int blk = 0; blk < nblocks; ++blk) {
          kh[blk] = cache->BlockKeysF16(seq, cache_layer, blk);
          vh[blk] = cache->BlockValuesF16(seq, cache_layer, blk);
        }
      }
      // The piece's heads in power-of-two runs (AttendHeads16 takes 1, 2, 4, 8).
      for (int kv = kv0; kv < kv_end;) {
        int run = 1;
        while (run * 2 <= kv_end - kv) run *= 2;
        const size_t off = static_cast<size_t>(t) * qd + static_cast<size_t>(kv) * group * hd;
        // An F16 cache on the 16-wide path converts as it loads.
        if (!(f16_kv && wide &&
              AttendHeads16<uint16_t>(q_.data() + off, hd, group, run, kh.data(), vh.data(),
                                      static_cast<size_t>(kv) * hd * KvCache::kBlockTokens, n, att_scale,
                                      scores.data(), att_.data() + off))) {
          f32_blocks();
          AttendHeads(wide, q_.data() + off, hd, group, kv, run, kb.data(), vb.data(), n, att_scale,
                      scores.data(), att_.data() + off);
        }
        kv += run;
      }
    }
  });
  if (observer) observer->OnLinearInput(l, Module::kO, att_.data(), T, qd);
  if (fuse_lr({Module::kO})) {
    MatMulSharedLowRank({{&L.w(Module::kO), tmp_.data(), dim}}, terms({Module::kO}), att_.data(), T, qd,
                        pool_, &mm_);
  } else {
    MatMulShared(with_a({{&L.w(Module::kO), tmp_.data(), dim}}, {Module::kO}), att_.data(), T, qd,
                 pool_, &mm_);
    apply_b({{Module::kO, tmp_.data(), dim}});
  }
  lowrank_mixed(Module::kO, att_.data(), qd, tmp_.data(), dim);
  add_residual();

  // ---- Feed-forward block (SwiGLU).
  norm_rows(L.ffn_norm);
  if (observer) observer->OnLinearInput(l, Module::kGate, xn_.data(), T, dim);
  const Matrix& wg = L.w(Module::kGate);
  const Matrix& wu = L.w(Module::kUp);
  const bool gate_up_lr = lr[static_cast<int>(Module::kGate)].f || lr[static_cast<int>(Module::kUp)].f;
  const bool gate_up_fused = gate_up_lr && fuse_lr({Module::kGate, Module::kUp});
  if (!any_lr || (uniform_lr && !gate_up_lr) || gate_up_fused) {
    // gate, up and SiLU(gate) * up in one region: each range of rows of both
    // (with their low-rank terms, each thread computing u itself: see fuse_lr).
    MatMulInput in;
    in.x = xn_.data();
    in.n = T;
    in.ldx = dim;
    const std::vector<LowRankTerm> gu =
        gate_up_fused ? terms({Module::kGate, Module::kUp}) : std::vector<LowRankTerm>{};
    bool want_q = wg.WantsQuantizedInput() || wu.WantsQuantizedInput();
    for (const LowRankTerm& t : gu)
      if (t.a != nullptr) want_q |= t.a->WantsQuantizedInput();
    if (want_q) {
      mm_.qx.Quantize(xn_.data(), T, dim, dim);
      in.qx = &mm_.qx;
    }
    if (gate_up_fused) PrepareLowRankU(gu, T, pool_->num_threads(), &mm_);
    const int align = std::max(wg.RowAlignment(), wu.RowAlignment());
    // One chunk per thread with a low-rank term, or for a decode-size step (see
    // MatMulSharedImpl).
    pool_->ParallelFor(ffn, align, static_cast<int64_t>(T) * ffn * dim * 2,
                       [&](int, int64_t b, int64_t e) {
      if (gate_up_fused) ClaimLowRankU(gu, in, &mm_);
      wg.MatMulRows(in, gate_.data(), ffn, static_cast<int>(b), static_cast<int>(e));
      wu.MatMulRows(in, up_.data(), ffn, static_cast<int>(b), static_cast<int>(e));
      if (gate_up_fused) {
        const float* u = LowRankU(gu, in, &mm_);
        float* ys[2] = {gate_.data(), up_.data()};
        for (int i = 0; i < 2; ++i) {
          if (gu[i].a == nullptr) continue;
          gu[i].bt->AccumulateTransposed(u, gu[i].r, T, gu[i].r, ys[i], ffn, static_cast<int>(b),
                                         static_cast<int>(e));
          u += static_cast<size_t>(T) * gu[i].r;
        }
      }
      for (int t = 0; t < T; ++t)
        SiluMul(gate_.data() + static_cast<size_t>(t) * ffn + b,
                up_.data() + static_cast<size_t>(t) * ffn + b, static_cast<int>(e - b));
    }, gate_up_fused ? 1
       : T <= kStreamRows ? DecodeChunksPerThread(wg.StorageBytes() + wu.StorageBytes())
                          : ThreadPool::kChunksPerThread);
  } else {
    MatMulShared(with_a({{&wg, gate_.data(), ffn}, {&wu, up_.data(), ffn}},
                        {Module::kGate, Module::kUp}),
                 xn_.data(), T, dim, pool_, &mm_);
    lowrank_mixed(Module::kGate, xn_.data(), dim, gate_.data(), ffn);
    lowrank_mixed(Module::kUp, xn_.data(), dim, up_.data(), ffn);
    // B products of gate and up, then SiLU(gate) * up, per range of columns.
    const Lr& ag = lr[static_cast<int>(Module::kGate)];
    const Lr& au = lr[static_cast<int>(Module::kUp)];
    pool_->ParallelFor(ffn, 32, static_cast<int64_t>(T) * ffn * (ag.r + au.r + 8),
                       [&](int, int64_t b, int64_t e) {
      if (ag.f)
        ag.f->bt->AccumulateTransposed(ag.u, ag.r, T, ag.r, gate_.data(), ffn, static_cast<int>(b),
                                       static_cast<int>(e));
      if (au.f)
        au.f->bt->AccumulateTransposed(au.u, au.r, T, au.r, up_.data(), ffn, static_cast<int>(b),
                                       static_cast<int>(e));
      for (int t = 0; t < T; ++t)
        SiluMul(gate_.data() + static_cast<size_t>(t) * ffn + b,
                up_.data() + static_cast<size_t>(t) * ffn + b, static_cast<int>(e - b));
    });
  }
  if (observer) observer->OnLinearInput(l, Module::kDown, gate_.data(), T, ffn);
  if (fuse_lr({Module::kDown})) {
    MatMulSharedLowRank({{&L.w(Module::kDown), tmp_.data(), dim}}, terms({Module::kDown}), gate_.data(), T,
                        ffn, pool_, &mm_);
  } else {
    MatMulShared(with_a({{&L.w(Module::kDown), tmp_.data(), dim}}, {Module::kDown}), gate_.data(), T,
                 ffn, pool_, &mm_);
    apply_b({{Module::kDown, tmp_.data(), dim}});
  }
  lowrank_mixed(Module::kDown, gate_.data(), ffn, tmp_.data(), dim);
  add_residual();
}


// Steps whose multiply-adds per layer (tokens x linear weights of one layer) are
// below this are split by sequence when the pool has several threads: their
// per-operation parallel regions would last a few microseconds each, about what
// waking and joining the workers costs.
constexpr int64_t kShardMaxLayerWork = int64_t{1} << 22;

// Multiply-adds of one decoder layer's linear modules per token.
static int64_t LayerLinearMacs(const ModelConfig& c) {
  return static_cast<int64_t>(c.dim) * (c.q_dim() + 2 * c.kv_dim()) +
         static_cast<int64_t>(c.q_dim()) * c.dim + 3 * static_cast<int64_t>(c.dim) * c.ffn_dim;
}

bool SmallStep(const ModelConfig& c, int64_t tokens) {
  return tokens * LayerLinearMacs(c) < kShardMaxLayerWork;
}

int Model::ShardCount(std::span<const SequenceChunk> batch) const {
  if (pool_ == nullptr || pool_->num_threads() < 2 || batch.size() < 2) return 1;
  int64_t tokens = 0;
  for (const SequenceChunk& ch : batch) tokens += static_cast<int64_t>(ch.tokens.size());
  if (!SmallStep(weights_->config, tokens)) return 1;
  return static_cast<int>(std::min<size_t>(batch.size(), static_cast<size_t>(pool_->num_threads())));
}

absl::Status Model::Forward(std::span<const SequenceChunk> batch, KvCache* cache,
                            std::vector<float>* logits) {
  logits->clear();
  const int shards = ShardCount(batch);
  if (shards > 1) return ForwardSharded(batch, shards, cache, logits);
  RETURN_IF_ERROR(Prepare(batch, cache));
  Compute(batch, cache, logits);
  for (const SequenceChunk& ch : batch) cache->Advance(ch.kv, static_cast<int>(ch.tokens.size()));
  return absl::OkStatus();
}

absl::Status Model::ForwardSharded(std::span<const SequenceChunk> batch, int shards,
                                   KvCache* cache, std::vector<float>* logits) {
  while (static_cast<int>(shards_.size()) < shards) {
    Shard s;
    s.pool = std::make_unique<ThreadPool>(1);
    s.model = std::make_unique<Model>(weights_, s.pool.get());
    shards_.push_back(std::move(s));
  }
  // Contiguous runs of chunks with about equal cost: the linear layers per token
  // plus attention over the cached positions (sequences of a decode batch sit at
  // different lengths).
  const ModelConfig& c = weights_->config;
  const int64_t layer_macs = LayerLinearMacs(c);
  std::vector<int64_t> cost(batch.size());
  int64_t total = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t n = static_cast<int64_t>(batch[i].tokens.size());
    const int64_t ctx = batch[i].kv->length() + (n + 1) / 2;  // mean attended positions
    cost[i] = n * (layer_macs + ctx * 2 * c.q_dim());
    total += cost[i];
  }
  size_t next = 0;
  int64_t done = 0;
  for (int i = 0; i < shards; ++i) {
    Shard& s = shards_[i];
    s.begin = next;
    const int64_t target = total * (i + 1) / shards;
    const size_t must_leave = static_cast<size_t>(shards - 1 - i);  // one chunk per later shard
    // Take chunks while that brings the total closer to the target.
    while (next < batch.size() - must_leave &&
           (next == s.begin || done + cost[next] / 2 <= target))
      done += cost[next++];
    if (i == shards - 1) next = batch.size();
    s.end = next;
  }
  // Prepare (validate, reserve KV space) one shard after the other; on failure
  // give back what the earlier shards reserved.
  for (int i = 0; i < shards; ++i) {
    const Shard& s = shards_[i];
    absl::Status st = s.model->Prepare(batch.subspan(s.begin, s.end - s.begin), cache);
    if (!st.ok()) {
      for (size_t j = 0; j < s.begin; ++j) cache->Truncate(batch[j].kv, batch[j].kv->length());
      return st;
    }
  }
  // Shards write disjoint KV blocks and their own buffers.
  pool_->ParallelFor(shards, 1, [&](int, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      Shard& s = shards_[i];
      s.model->Compute(batch.subspan(s.begin, s.end - s.begin), cache, &s.logits);
    }
  });
  for (int i = 0; i < shards; ++i) logits->insert(logits->end(), shards_[i].logits.begin(), shards_[i].logits.end());
  for (const SequenceChunk& ch : batch) cache->Advance(ch.kv, static_cast<int>(ch.tokens.size()));
  return absl::OkStatus();
}

void Model::Compute(std::span<const SequenceChunk> batch, KvCache* cache,
                    std::vector<float>* logits) {
  const ModelConfig& c = weights_->config;
  logits->clear();
  const int T = T_;
  if (T == 0) return;
  const int dim = c.dim;
  {
    int t = 0;
    for (const SequenceChunk& ch : batch)
      for (int tok : ch.tokens)
        weights_->token_embedding->DequantizeRow(tok, x_.data() + static_cast<size_t>(t++) * dim);
  }
  for (int l = 0; l < c.n_layers; ++l)
    RunLayer(l, weights_->layers[l], nullptr, l, batch, cache, nullptr);

  // ---- Logits for the rows that want them.
  std::vector<int> rows;
  {
    int t = 0;
    for (const SequenceChunk& ch : batch) {
      const int n = static_cast<int>(ch.tokens.size());
      if (ch.logits == LogitsMode::kAll)
        for (int j = 0; j < n; ++j) rows.push_back(t + j);
      else if (ch.logits == LogitsMode::kLast && n > 0)
        rows.push_back(t + n - 1);
      t += n;
    }
  }
  if (rows.empty()) return;
  const int R = static_cast<int>(rows.size());
  last_.resize(static_cast<size_t>(R) * dim);
  for (int i = 0; i < R; ++i)
    RmsNorm(x_.data() + static_cast<size_t>(rows[i]) * dim, weights_->output_norm.data(), dim,
            c.norm_eps, last_.data() + static_cast<size_t>(i) * dim);
  logits->resize(static_cast<size_t>(R) * c.vocab_size);
  MatMul(*weights_->output, last_.data(), R, dim, logits->data(), c.vocab_size, pool_, &mm_);
}

absl::Status Model::Embed(std::span<const int> tokens, float* hidden) const {
  const ModelConfig& c = weights_->config;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size)
      return absl::InvalidArgumentError(absl::StrCat("token id ", tokens[i],
                                                     " is outside the vocabulary"));
    weights_->token_embedding->DequantizeRow(tokens[i], hidden + i * c.dim);
  }
  return absl::OkStatus();
}

absl::Status Model::ForwardLayer(int l, const LayerWeights* layer_weights,
                                 const LayerFactors* factors, std::span<const int> seq_lengths,
                                 float* hidden, LinearObserver* observer, KvDType kv_dtype) {
  const ModelConfig& c = weights_->config;
  if (l < 0 || l >= c.n_layers)
    return absl::InvalidArgumentError(absl::StrCat("layer ", l, " out of range"));
  ModelConfig one = c;
  one.n_layers = 1;
  int64_t total = 0;
  for (int n : seq_lengths) {
    if (n <= 0 || n > c.max_seq_len)
      return absl::InvalidArgumentError(absl::StrCat("sequence length ", n, " out of range"));
    total += n + KvCache::kBlockTokens;
  }
  KvCache cache(one, total, kv_dtype);
  std::vector<KvSequence> seqs;
  seqs.reserve(seq_lengths.size());
  std::vector<int> zeros(c.max_seq_len, 0);
  std::vector<SequenceChunk> chunks;
  for (int n : seq_lengths) {
    seqs.push_back(cache.NewSequence());
    chunks.push_back({&seqs.back(), std::span<const int>(zeros.data(), n), nullptr, 0,
                      LogitsMode::kNone});
  }
  RETURN_IF_ERROR(Prepare(chunks, &cache));
  std::copy_n(hidden, static_cast<size_t>(T_) * c.dim, x_.data());
  RunLayer(l, layer_weights ? *layer_weights : weights_->layers[l], factors, 0, chunks, &cache,
           observer);
  std::copy_n(x_.data(), static_cast<size_t>(T_) * c.dim, hidden);
  return absl::OkStatus();
}

void Model::Logits(const float* hidden, int rows, float* logits) {
  const ModelConfig& c = weights_->config;
  last_.resize(static_cast<size_t>(rows) * c.dim);
  pool_->ParallelFor(rows, 1, static_cast<int64_t>(rows) * c.dim * 4, [&](int, int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      RmsNorm(hidden + i * c.dim, weights_->output_norm.data(), c.dim, c.norm_eps,
              last_.data() + i * c.dim);
  });
  MatMul(*weights_->output, last_.data(), rows, c.dim, logits, c.vocab_size, pool_, &mm_);
}

}  // namespace eora
