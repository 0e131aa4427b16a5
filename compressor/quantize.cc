// Base compression: RTN, GPTQ, SparseGPT 2:4, Wanda 2:4, SLiM-Quant (docs/compressor.md).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "compressor/algorithms.h"
#include "compressor/internal.h"
#include "compressor/linalg.h"
#include "engine/dtype.h"
#include "engine/quant_matrix.h"
#include "engine/sparse_matrix.h"

namespace eora::compress {
namespace {

using internal::GroupParams;
using internal::ObsPrep;

CompressedLinear Finish(std::unique_ptr<Matrix> mat) {
  CompressedLinear out;
  out.w_c = mat->Dequantize();
  out.matrix = std::shared_ptr<const Matrix>(std::move(mat));
  return out;
}

absl::StatusOr<CompressedLinear> FromQuantized(const QuantizedWeights& qw) {
  auto mat = MakeQuantizedMatrix(qw);
  if (!mat.ok()) return mat.status();
  return Finish(std::move(*mat));
}

// 2:4 + quantization: kept slots of every aligned group of 4 columns (the two columns
// not pruned, ascending) with their codes, grouped by `gs` kept slots (0 = per row);
// column group j of the quantizer (2 * gs columns) is kept-slot group j.
absl::StatusOr<CompressedLinear> BuildSparseQuant(int m, int n, int bits, int gs,
                                                  const std::vector<uint8_t>& pruned,
                                                  const internal::RowGroupQuantizer& qz) {
  const int kb = Sparse24KeptBlocks(n);
  const int slots = kb * 32;
  const int maxq = (1 << bits) - 1;
  QuantizedWeights kept;
  kept.rows = m;
  kept.cols = slots;
  kept.spec.bits = bits;
  kept.spec.group_size = gs;
  const int eg = kept.groups();
  kept.codes.assign(static_cast<size_t>(m) * slots, 0);
  kept.scale.assign(static_cast<size_t>(m) * eg, 1.f);
  kept.min.assign(static_cast<size_t>(m) * eg, 0.f);
  std::vector<uint8_t> meta(static_cast<size_t>(m) * kb * 8, 0);
  std::vector<uint8_t> pos(slots);
  const int cg = qz.groups();
  for (int r = 0; r < m; ++r) {
    auto params_of_slot = [&](int s) -> const GroupParams& {
      const int j = gs > 0 ? std::min(s / gs, cg - 1) : 0;
      return qz.params()[static_cast<size_t>(r) * cg + j];
    };
    for (int g = 0; g < eg; ++g) {
      const GroupParams& gp = params_of_slot(g * (gs > 0 ? gs : slots));
      kept.scale[static_cast<size_t>(r) * eg + g] = gp.scale;
      kept.min[static_cast<size_t>(r) * eg + g] = gp.min;
    }
    uint8_t* codes = kept.codes.data() + static_cast<size_t>(r) * slots;
    for (int s = 0; s < slots; ++s) {  // default: positions 0/1 and the code nearest 0
      pos[s] = static_cast<uint8_t>(s & 1);
      codes[s] = internal::QuantizeCode(0.0, params_of_slot(s), maxq);
    }
    for (int g4 = 0; g4 < (n + 3) / 4; ++g4) {
      int kp[4], nk = 0;
      for (int p = 0; p < 4; ++p) {
        const int c = 4 * g4 + p;
        if (c < n && !pruned[static_cast<size_t>(r) * n + c]) kp[nk++] = p;
      }
      if (nk > 2) return absl::InternalError("2:4 mask keeps more than 2 of 4");
      for (int p = 0; p < 4 && nk < 2; ++p)
        if (std::find(kp, kp + nk, p) == kp + nk) kp[nk++] = p;
      std::sort(kp, kp + 2);
      for (int h = 0; h < 2; ++h) {
        const int s = 2 * g4 + h;
        const int c = 4 * g4 + kp[h];
        pos[s] = static_cast<uint8_t>(kp[h]);
        if (c < n && !pruned[static_cast<size_t>(r) * n + c])
          codes[s] = qz.codes()[static_cast<size_t>(r) * n + c];
      }
    }
    for (int b = 0; b < kb; ++b)
      PackQuantBlock(2, pos.data() + b * 32, meta.data() + (static_cast<size_t>(r) * kb + b) * 8, b, kb);
  }
  auto mat = Sparse24QuantMatrix::FromKept(n, kept, std::move(meta));
  if (!mat.ok()) return mat.status();
  return Finish(std::unique_ptr<Matrix>(std::move(*mat)));
}

absl::StatusOr<CompressedLinear> BuildSparseF16(int m, int n, const std::vector<double>& w) {
  std::vector<float> f(w.begin(), w.end());
  auto mat = MakeSparse24Matrix(m, n, f.data());
  if (!mat.ok()) return mat.status();
  return Finish(std::move(*mat));
}

inline double RoundF16(double v) { return F16ToF32(F32ToF16(static_cast<float>(v))); }

// Prunes the columns of the aligned group of 4 starting at c0 with the smallest
// scores (score[0..3] for columns c0..c0+3), keeping min(2, valid columns).
void Prune24(const double* score, int c0, int n, uint8_t* pruned_row) {
  const int nv = std::min(4, n - c0);
  int idx[4] = {0, 1, 2, 3};
  // Insertion sort by ascending score (ties: the later column first).
  auto less = [&](int a, int b) { return score[a] < score[b] || (score[a] == score[b] && a > b); };
  for (int i = 1; i < nv; ++i)
    for (int j = i; j > 0 && less(idx[j], idx[j - 1]); --j) std::swap(idx[j], idx[j - 1]);
  for (int k = 0; k < nv - std::min(nv, 2); ++k) pruned_row[c0 + idx[k]] = 1;
}

absl::Status CheckCommon(const char* what, const float* w, int m, int n) {
  if (absl::Status st = internal::ValidateShape(what, m, n); !st.ok()) return st;
  return internal::ValidateFinite(what, w, static_cast<size_t>(m) * n);
}

}  // namespace

absl::StatusOr<CompressedLinear> CompressRtn(const float* w, int m, int n, const QuantConfig& q) {
  if (absl::Status st = CheckCommon("CompressRtn", w, m, n); !st.ok()) return st;
  if (absl::Status st = internal::ValidateQuant("CompressRtn", q); !st.ok()) return st;
  const std::vector<double> wd = internal::ToDouble(w, static_cast<size_t>(m) * n);
  return FromQuantized(internal::GptqRows(wd.data(), m, n, nullptr, q.bits, q.group_size, q.symmetric,
                                          q.block_size, nullptr));
}

absl::StatusOr<CompressedLinear> CompressGptq(const float* w, int m, int n, const CalibStats& s,
                                              const QuantConfig& q) {
  if (absl::Status st = CheckCommon("CompressGptq", w, m, n); !st.ok()) return st;
  if (absl::Status st = internal::ValidateQuant("CompressGptq", q); !st.ok()) return st;
  if (absl::Status st = internal::ValidateStats("CompressGptq", s, n); !st.ok()) return st;
  auto prep = internal::PrepareObs(internal::GptqHessian(s), n, q.damp, q.act_order);
  if (!prep.ok()) return prep.status();
  const std::vector<double> wd = internal::ToDouble(w, static_cast<size_t>(m) * n);
  return FromQuantized(internal::GptqRows(wd.data(), m, n, &*prep, q.bits, q.group_size, q.symmetric,
                                          q.block_size, nullptr));
}

absl::StatusOr<CompressedLinear> CompressSparseGpt24(const float* w, int m, int n,
                                                     const CalibStats& s,
                                                     const std::optional<QuantConfig>& quant) {
  if (absl::Status st = CheckCommon("CompressSparseGpt24", w, m, n); !st.ok()) return st;
  if (absl::Status st = internal::ValidateStats("CompressSparseGpt24", s, n); !st.ok()) return st;
  double damp = 0.01;
  int block = 128;
  if (quant) {
    if (absl::Status st = internal::ValidateQuant("CompressSparseGpt24", *quant); !st.ok()) return st;
    if (quant->act_order)
      return absl::InvalidArgumentError(
          "CompressSparseGpt24: act_order is not supported with 2:4 (the pattern is tied to the "
          "original column order)");
    damp = quant->damp;
    block = quant->block_size;
  }
  if (block % 4 != 0)
    return absl::InvalidArgumentError(
        absl::StrCat("CompressSparseGpt24: block_size must be a multiple of 4, got ", block));
  auto prep = internal::PrepareObs(internal::GptqHessian(s), n, damp, /*act_order=*/false);
  if (!prep.ok()) return prep.status();
  const double* u = prep->u.data();
  std::vector<double> work(static_cast<size_t>(m) * n);
  for (int r = 0; r < m; ++r)
    for (int c = 0; c < n; ++c)
      work[static_cast<size_t>(r) * n + c] = prep->dead[c] ? 0.0 : w[static_cast<size_t>(r) * n + c];
  std::vector<uint8_t> pruned(static_cast<size_t>(m) * n, 0);
  const int gs = quant ? quant->group_size : 0;
  std::unique_ptr<internal::RowGroupQuantizer> qz;
  if (quant)
    qz = std::make_unique<internal::RowGroupQuantizer>(m, n, gs > 0 ? 2 * gs : 0, quant->bits,
                                                       quant->symmetric, nullptr, pruned.data());
  internal::ObsSweep(work.data(), m, n, &*prep, block, [&](int p, const double* cur, double* q) {
    if (p % 4 == 0) {
      // Mask for the 4 columns p..p+3: prune the 2 with the smallest w^2 / [H^-1]_cc^2
      // (the OBS saliency; the diagonal of U is sqrt of the current inverse's diagonal).
      const int nv = std::min(4, n - p);
      double score[4];
      for (int r = 0; r < m; ++r) {
        for (int k = 0; k < nv; ++k) {
          const double d = u[static_cast<size_t>(p + k) * n + p + k];
          const double x = cur[static_cast<size_t>(r) * n + p + k];
          score[k] = x * x / (d * d);
        }
        Prune24(score, p, n, pruned.data() + static_cast<size_t>(r) * n);
      }
    }
    if (qz) {
      qz->Column(p, p, cur, q);
    } else {
      for (int r = 0; r < m; ++r) {
        const size_t idx = static_cast<size_t>(r) * n + p;
        q[r] = pruned[idx] ? 0.0 : RoundF16(cur[idx]);
      }
    }
  });
  if (quant) return BuildSparseQuant(m, n, quant->bits, gs, pruned, *qz);
  return BuildSparseF16(m, n, work);
}

absl::StatusOr<CompressedLinear> CompressWanda24(const float* w, int m, int n, const CalibStats& s,
                                                 const std::optional<QuantConfig>& quant) {
  if (absl::Status st = CheckCommon("CompressWanda24", w, m, n); !st.ok()) return st;
  if (absl::Status st = internal::ValidateStats("CompressWanda24", s, n); !st.ok()) return st;
  if (quant) {
    if (absl::Status st = internal::ValidateQuant("CompressWanda24", *quant); !st.ok()) return st;
  }
  // Score |W_ij| * ||X_j||_2; keep the 2 largest of every aligned group of 4.
  std::vector<double> norm(n);
  for (int j = 0; j < n; ++j) norm[j] = std::sqrt(std::max(0.0, s.sum_sq[j]));
  std::vector<uint8_t> pruned(static_cast<size_t>(m) * n, 0);
  std::vector<double> work(static_cast<size_t>(m) * n);
  std::vector<double> score(n);
  for (int r = 0; r < m; ++r) {
    const float* wr = w + static_cast<size_t>(r) * n;
    for (int j = 0; j < n; ++j) score[j] = std::fabs(static_cast<double>(wr[j])) * norm[j];
    uint8_t* pr = pruned.data() + static_cast<size_t>(r) * n;
    for (int c0 = 0; c0 < n; c0 += 4) Prune24(score.data() + c0, c0, n, pr);
    for (int j = 0; j < n; ++j) work[static_cast<size_t>(r) * n + j] = pr[j] ? 0.0 : wr[j];
  }
  if (!quant) {
    for (double& v : work) v = RoundF16(v);
    return BuildSparseF16(m, n, work);
  }
  // Kept values quantized GPTQ-style with the mask fixed (pruned entries stay 0 and
  // their update residue is fed back to the remaining columns like quantization error).
  auto prep = internal::PrepareObs(internal::GptqHessian(s), n, quant->damp, quant->act_order);
  if (!prep.ok()) return prep.status();
  const int gs = quant->group_size;
  std::vector<double> wp(static_cast<size_t>(m) * n);
  for (int r = 0; r < m; ++r)
    for (int p = 0; p < n; ++p) {
      const int c = prep->perm[p];
      wp[static_cast<size_t>(r) * n + p] = prep->dead[c] ? 0.0 : work[static_cast<size_t>(r) * n + c];
    }
  internal::RowGroupQuantizer qz(m, n, gs > 0 ? 2 * gs : 0, quant->bits, quant->symmetric,
                                 &prep->inv_perm, pruned.data());
  internal::ObsSweep(wp.data(), m, n, &*prep, quant->block_size,
                     [&](int p, const double* cur, double* q) { qz.Column(p, prep->perm[p], cur, q); });
  return BuildSparseQuant(m, n, quant->bits, gs, pruned, qz);
}

absl::StatusOr<CompressedLinear> CompressSlimQuant(const float* w, int m, int n, int bits) {
  if (absl::Status st = CheckCommon("CompressSlimQuant", w, m, n); !st.ok()) return st;
  if (bits < 2 || bits > 4)
    return absl::InvalidArgumentError(absl::StrCat("CompressSlimQuant: bits must be 2, 3 or 4, got ", bits));
  const size_t numel = static_cast<size_t>(m) * n;
  double absmax = 0;
  for (size_t i = 0; i < numel; ++i) absmax = std::max(absmax, std::fabs(static_cast<double>(w[i])));
  const int qs = (1 << (bits - 1)) - 1;  // symmetric levels -qs..qs
  double alpha = absmax > 0 ? absmax : 1.0;
  if (absmax > 0) {
    const int nb = static_cast<int>(std::max<size_t>(512, std::min<size_t>(numel / 1000, 20000)));
    const double h = absmax / nb;
    std::vector<double> cnt(nb, 0.0);
    for (size_t i = 0; i < numel; ++i) {
      const int b = std::min(nb - 1, static_cast<int>(std::fabs(static_cast<double>(w[i])) / h));
      cnt[b] += 1;
    }
    // Candidate alpha = upper edge of bin k, step = alpha / qs. Expected error over the
    // histogram (bin centres c_i): rounding error (c - step * round(c / step))^2 for
    // c <= alpha, clipping error (c - alpha)^2 above.
    auto error = [&](int k) {
      const double a = (k + 1) * h;
      const double step = a / qs;
      double e = 0;
      for (int i = 0; i < nb; ++i) {
        if (cnt[i] == 0) continue;
        const double c = (i + 0.5) * h;
        const double qv = std::min(std::nearbyint(c / step), static_cast<double>(qs)) * step;
        e += cnt[i] * (c - qv) * (c - qv);
      }
      return e;
    };
    constexpr int kCoarse = 10;
    int cand[kCoarse];
    for (int j = 0; j < kCoarse; ++j)
      cand[j] = std::clamp(static_cast<int>(std::lround(static_cast<double>(j + 1) * nb / kCoarse)) - 1, 0, nb - 1);
    int best_j = 0;
    for (int j = 1; j < kCoarse; ++j)
      if (error(cand[j]) < error(cand[best_j])) best_j = j;
    const int lo = best_j > 0 ? cand[best_j - 1] : 0;
    const int hi = best_j + 1 < kCoarse ? cand[best_j + 1] : nb - 1;
    int best = cand[best_j];
    double best_err = error(best);
    for (int k = lo; k <= hi; ++k) {
      const double e = error(k);
      if (e < best_err) {
        best_err = e;
        best = k;
      }
    }
    alpha = (best + 1) * h;
  }
  // s = qs / alpha; stored scale = 1 / s (F16), code = clamp(round(w s), -qs, qs) + 2^(bits-1).
  const int zero = 1 << (bits - 1);
  const float scale = F16ToF32(F32ToF16(static_cast<float>(std::max(alpha / qs, 6.103515625e-05))));
  const float mn = F16ToF32(F32ToF16(-static_cast<float>(zero) * scale));
  QuantizedWeights qw;
  qw.rows = m;
  qw.cols = n;
  qw.spec.bits = bits;
  qw.spec.group_size = 0;
  qw.codes.resize(numel);
  for (size_t i = 0; i < numel; ++i) {
    const double c = std::clamp(std::nearbyint(static_cast<double>(w[i]) / scale), -static_cast<double>(qs),
                                static_cast<double>(qs));
    qw.codes[i] = static_cast<uint8_t>(static_cast<int>(c) + zero);
  }
  qw.scale.assign(static_cast<size_t>(m) * qw.groups(), scale);
  qw.min.assign(static_cast<size_t>(m) * qw.groups(), mn);
  return FromQuantized(qw);
}

}  // namespace eora::compress
