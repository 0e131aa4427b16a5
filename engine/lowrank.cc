#include "engine/lowrank.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/thread_pool.h"

namespace eora {

absl::StatusOr<std::shared_ptr<const LowRankAdapter>> LowRankAdapter::Create(
    std::string name, const ModelConfig& config,
    std::vector<std::array<LowRankFactors, kNumModules>> layers) {
  if (static_cast<int>(layers.size()) != config.n_layers)
    return absl::InvalidArgumentError(absl::StrCat("adapter '", name, "' has ", layers.size(),
                                                   " layers, the model has ", config.n_layers));
  const int in_dims[kNumModules] = {config.dim, config.dim,     config.dim,    config.q_dim(),
                                    config.dim, config.dim,     config.ffn_dim};
  const int out_dims[kNumModules] = {config.q_dim(), config.kv_dim(), config.kv_dim(), config.dim,
                                     config.ffn_dim, config.ffn_dim,  config.dim};
  auto adapter = std::shared_ptr<LowRankAdapter>(new LowRankAdapter());
  adapter->name_ = std::move(name);
  int rank = -1;
  for (size_t l = 0; l < layers.size(); ++l) {
    for (int m = 0; m < kNumModules; ++m) {
      const LowRankFactors& f = layers[l][m];
      const std::string where =
          absl::StrCat("adapter '", adapter->name_, "' layers.", l, ".",
                       ModuleParent(static_cast<Module>(m)), ".", ModuleName(static_cast<Module>(m)));
      if (!f.a && !f.bt) continue;
      if (!f.a || !f.bt)
        return absl::InvalidArgumentError(absl::StrCat(where, ": has only one of A and B"));
      if (f.a->rows() != f.bt->rows())
        return absl::InvalidArgumentError(absl::StrCat(where, ": A has rank ", f.a->rows(),
                                                       " but B has rank ", f.bt->rows()));
      if (f.a->cols() != in_dims[m] || f.bt->cols() != out_dims[m])
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": factors are A [", f.a->rows(), ", ", f.a->cols(), "], B [",
                         f.bt->cols(), ", ", f.bt->rows(), "]; the module is [", out_dims[m], ", ",
                         in_dims[m], "]"));
      if (f.a->rows() <= 0)
        return absl::InvalidArgumentError(absl::StrCat(where, ": rank must be positive"));
      if (rank >= 0 && f.a->rows() != rank)
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": rank ", f.a->rows(), " differs from the adapter's rank ", rank));
      rank = f.a->rows();
    }
  }
  if (rank < 0)
    return absl::InvalidArgumentError(
        absl::StrCat("adapter '", adapter->name_, "' adapts no module"));
  adapter->max_rank_ = rank;
  // Kernel-side copies (the int8 B side's rank-interleaved codes) are built here,
  // off the serving loop, rather than by the first request that uses the adapter.
  for (const auto& l : layers)
    for (const LowRankFactors& f : l)
      if (f.bt) f.bt->PrepareAccumulateTransposed();
  adapter->layers_ = std::move(layers);
  return std::shared_ptr<const LowRankAdapter>(std::move(adapter));
}

size_t LowRankAdapter::bytes() const {
  size_t b = 0;
  for (const auto& l : layers_)
    for (const auto& f : l)
      if (f.a) b += f.a->StorageBytes() + f.bt->StorageBytes();
  return b;
}

size_t LowRankAdapter::resident_bytes() const {
  size_t b = 0;
  for (const auto& l : layers_)
    for (const auto& f : l)
      if (f.a)
        b += f.a->StorageBytes() + f.a->AuxiliaryBytes() + f.bt->StorageBytes() + f.bt->AuxiliaryBytes();
  return b;
}

size_t LowRankAdapter::BytesPerToken(int r) const {
  if (max_rank_ == 0) return 0;
  r = std::clamp(r, 0, max_rank_);
  size_t read = 0;
  for (const auto& l : layers_)
    for (const auto& f : l)
      if (f.a) {
        const size_t copy = f.bt->AuxiliaryBytes();
        read += f.a->StorageBytes() + (copy > 0 ? copy : f.bt->StorageBytes());
      }
  return read * static_cast<size_t>(r) / max_rank_;
}

namespace {

// One run of rows [begin, end) through factors f at rank r.
struct LowRankRun {
  int begin, end;
  const LowRankFactors* f;
  int r;
};

void ApplyRuns(const std::vector<LowRankRun>& runs, const float* x, int ldx, float* y, int ldy,
               ThreadPool* pool, LowRankScratch* scratch) {
  if (runs.empty()) return;
  std::vector<size_t> u_off;
  size_t u_size = 0;
  for (const auto& a : runs) {
    u_off.push_back(u_size);
    u_size += static_cast<size_t>(a.end - a.begin) * a.r;
  }
  scratch->u.resize(u_size);
  float* u = scratch->u.data();

  // u_s [rows_s][r_s] = x_s A[:r]^T. Work items: (run, rank row) pairs, split over
  // threads; each run's rank rows padded to the A matrices' row alignment (16-row
  // panels), so that no two chunks compute the same panel. Each run's input rows
  // are quantized once, here, for all chunks.
  if (scratch->qx.size() < runs.size()) scratch->qx.resize(runs.size());
  std::vector<int64_t> starts;
  int64_t total = 0;
  int align = 1;
  for (const auto& a : runs) align = std::max(align, a.f->a->RowAlignment());
  for (size_t i = 0; i < runs.size(); ++i) {
    const LowRankRun& a = runs[i];
    starts.push_back(total);
    total += (a.r + align - 1) / align * align;
    if (a.f->a->WantsQuantizedInput())
      scratch->qx[i].Quantize(x + static_cast<size_t>(a.begin) * ldx, a.end - a.begin, a.f->a->cols(), ldx);
  }
  auto run_a = [&](int, int64_t b, int64_t e) {
    for (size_t i = 0; i < runs.size(); ++i) {
      const int64_t lo = std::max<int64_t>(b, starts[i]);
      const int64_t hi = std::min<int64_t>(e, starts[i] + runs[i].r);
      if (lo >= hi) continue;
      const LowRankRun& a = runs[i];
      MatMulInput in;
      in.x = x + static_cast<size_t>(a.begin) * ldx;
      in.n = a.end - a.begin;
      in.ldx = ldx;
      if (a.f->a->WantsQuantizedInput()) in.qx = &scratch->qx[i];
      a.f->a->MatMulRows(in, u + u_off[i], a.r, static_cast<int>(lo - starts[i]),
                         static_cast<int>(hi - starts[i]));
    }
  };
  int64_t work_a = 0, work_b = 0;
  for (const auto& a : runs) {
    work_a += static_cast<int64_t>(a.end - a.begin) * a.r * a.f->a->cols();
    work_b += static_cast<int64_t>(a.end - a.begin) * a.r * a.f->bt->cols();
  }
  if (pool) pool->ParallelFor(total, align, work_a, run_a); else run_a(0, 0, total);

  // y_s += u_s Bt[:r]: split output columns over threads.
  const int out = runs[0].f->bt->cols();
  auto run_b = [&](int, int64_t c0, int64_t c1) {
    for (size_t i = 0; i < runs.size(); ++i) {
      const LowRankRun& a = runs[i];
      a.f->bt->AccumulateTransposed(u + u_off[i], a.r, a.end - a.begin, a.r,
                                    y + static_cast<size_t>(a.begin) * ldy, ldy,
                                    static_cast<int>(c0), static_cast<int>(c1));
    }
  };
  if (pool) pool->ParallelFor(out, 16, work_b, run_b); else run_b(0, 0, out);
}

}  // namespace

void ApplyLowRank(const std::vector<LowRankSegment>& segments, int layer, Module module,
                  const float* x, int ldx, float* y, int ldy, ThreadPool* pool,
                  LowRankScratch* scratch) {
  std::vector<LowRankRun> runs;
  for (const auto& s : segments) {
    if (s.adapter == nullptr || s.rank <= 0 || s.end <= s.begin) continue;
    const LowRankFactors& f = s.adapter->factors(layer, module);
    if (!f.a) continue;
    runs.push_back({s.begin, s.end, &f, std::min(s.rank, f.rank())});
  }
  ApplyRuns(runs, x, ldx, y, ldy, pool, scratch);
}

void ApplyLowRankFactors(const LowRankFactors& f, int rank, int rows, const float* x, int ldx,
                         float* y, int ldy, ThreadPool* pool, LowRankScratch* scratch) {
  if (!f.a || rank <= 0 || rows <= 0) return;
  ApplyRuns({{0, rows, &f, std::min(rank, f.rank())}}, x, ldx, y, ldy, pool, scratch);
}

}  // namespace eora
