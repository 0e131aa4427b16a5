// Internal building blocks shared by the compressor's algorithms (not a public API):
// the scalar group quantizer, the Hessian preparation and the OBS column sweep that
// GPTQ, SparseGPT, Wanda+quant, CALDERA and QuantizeFactors are built on.
#pragma once

#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "compressor/algorithms.h"
#include "engine/matrix.h"

namespace eora::compress::internal {

// value = scale * code + min, code in [0, 2^bits); scale and min already rounded to F16
// (what the engine stores), so quantizing with them gives exactly the served values.
struct GroupParams {
  float scale = 1.f;
  float min = 0.f;
};

// GPTQ's quantizer: range [min(x, 0), max(x, 0)] (symmetric: [-a, a], a = max|x|),
// all-zero -> [-1, 1]; scale = range / maxq; integer zero point zero = round(-xmin / scale)
// (symmetric: (maxq + 1) / 2); min = -scale * zero. Values v[i * stride], i < count.
GroupParams FindParams(const double* v, int count, int stride, int bits, bool symmetric);
// Same over an explicit value list, skipping entries with skip[i] != 0 (skip may be null).
GroupParams FindParamsMasked(const double* v, const uint8_t* skip, int count, int stride, int bits,
                             bool symmetric);

inline uint8_t QuantizeCode(double w, const GroupParams& p, int maxq) {
  const double c = std::nearbyint((w - static_cast<double>(p.min)) / static_cast<double>(p.scale));
  return static_cast<uint8_t>(c < 0 ? 0 : (c > maxq ? maxq : c));
}
inline double Dequant(uint8_t code, const GroupParams& p) {
  return static_cast<double>(p.scale) * code + static_cast<double>(p.min);
}

// The inverse-Hessian data of an OBS sweep over n columns.
struct ObsPrep {
  int n = 0;
  std::vector<int> perm;      // processing position -> original column
  std::vector<int> inv_perm;  // original column -> processing position
  std::vector<uint8_t> dead;  // [n] original order: H_dd == 0 (weights zeroed)
  std::vector<double> u;      // [n][n] upper Cholesky factor of (H + damp)^-1, permuted order
  double damp_used = 0;       // absolute damping added
};

// H [n][n] (symmetric). Dead columns (H_dd == 0) get H_dd = 1; optional act order
// (diag H descending, stable); H += damp * mean(diag H) * I; U = chol_upper(H^-1).
// If H is still not positive definite the damping is multiplied by 10 (up to 6 times).
absl::StatusOr<ObsPrep> PrepareObs(std::vector<double> h, int n, double damp, bool act_order);

// One column of the sweep: given processing position p and the current working matrix
// w ([m][n], permuted column order, columns < p already quantized), writes the value
// column p is replaced by into q[0..m).
using ColumnFn = std::function<void(int p, const double* w, double* q)>;

// The GPTQ/OBS sweep (blocks of `block` columns, lazy trailing update by dgemm):
// for each processing column p: q = fn(p); e = (w_p - q) / U_pp; w[:, p] = q;
// w[:, p+1:] -= e U[p, p+1:]. With prep == nullptr there is no error feedback (RTN).
void ObsSweep(double* w, int m, int n, const ObsPrep* prep, int block, const ColumnFn& fn);

// Row-wise grouped quantizer over original columns: group g of row r covers columns
// [g * cols_per_group, (g + 1) * cols_per_group). A group's parameters are found
// when the sweep first reaches one of its columns, from the current (updated) values
// of its columns that are not pruned. With identity order this is GPTQ's reference
// behaviour (per channel: parameters from the whole row before any update).
class RowGroupQuantizer {
 public:
  RowGroupQuantizer(int m, int n, int cols_per_group, int bits, bool symmetric,
                    const std::vector<int>* inv_perm, const uint8_t* pruned /*[m][n] orig or null*/);
  // Column at processing position p, original column c.
  void Column(int p, int c, const double* w, double* q);
  int groups() const { return groups_; }
  const std::vector<uint8_t>& codes() const { return codes_; }      // [m][n] original order
  const std::vector<GroupParams>& params() const { return params_; }  // [m][groups]

 private:
  int m_, n_, cpg_, bits_, maxq_, groups_;
  bool symmetric_;
  const std::vector<int>* inv_perm_;
  const uint8_t* pruned_;
  std::vector<uint8_t> ready_;
  std::vector<uint8_t> codes_;
  std::vector<GroupParams> params_;
  std::vector<double> buf_;
  std::vector<uint8_t> skip_;
};

// Packs codes [m][n] (original order) and per-row group parameters into the engine's
// unpacked QuantizedWeights (group_size = 0 or cols_per_group).
QuantizedWeights ToQuantizedWeights(int m, int n, int bits, int group_size,
                                    const std::vector<uint8_t>& codes,
                                    const std::vector<GroupParams>& params, int groups);

// GPTQ (prep != null) or RTN (prep == null) of w [m][n] (fp64, original order) with
// per-row groups of group_size columns (0 = per channel). Writes the dequantized
// result (original order) to *wq when non-null.
QuantizedWeights GptqRows(const double* w, int m, int n, const ObsPrep* prep, int bits,
                          int group_size, bool symmetric, int block, std::vector<double>* wq);

// GPTQ (prep != null) or RTN of w [m][n] where each column is quantized in groups
// of `group_rows` consecutive rows (<= 0 or >= m: the whole column is one group):
// used for B, whose storage is B^T with groups along its rows. Returns the
// quantized B^T [n][m]; *wq gets the dequantized B [m][n].
QuantizedWeights GptqColumns(const double* w, int m, int n, const ObsPrep* prep, int bits, int group_rows,
                             int block, std::vector<double>* wq);

// Helpers.
absl::Status ValidateShape(const char* what, int m, int n);
absl::Status ValidateStats(const char* what, const CalibStats& s, int n);
absl::Status ValidateFinite(const char* what, const float* x, size_t count);
absl::Status ValidateQuant(const char* what, const QuantConfig& q);
std::vector<double> ToDouble(const float* x, size_t count);
std::vector<float> ToFloat(const std::vector<double>& x);
// GPTQ Hessian 2/N * xtx.
std::vector<double> GptqHessian(const CalibStats& s);
// tr(D H D^T) for D [m][n], H [n][n].
double HessianNorm(const double* d, int m, int n, const double* h);

}  // namespace eora::compress::internal
