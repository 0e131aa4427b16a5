#include "compressor/pipeline.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/kv_cache.h"
#include "engine/quant_matrix.h"
#include "engine/status_macros.h"

namespace eora::compress {
namespace {

using Clock = std::chrono::steady_clock;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The four groups of modules of a layer, in forward order, with the module under
// which the engine reports their (shared) input and its width.
struct Group {
  Module input;
  std::vector<Module> modules;
  int width;
};
std::vector<Group> LayerGroups(const ModelConfig& c) {
  return {{Module::kQ, {Module::kQ, Module::kK, Module::kV}, c.dim},
          {Module::kO, {Module::kO}, c.q_dim()},
          {Module::kGate, {Module::kGate, Module::kUp}, c.dim},
          {Module::kDown, {Module::kDown}, c.ffn_dim}};
}

// Accumulates the input statistics of the module kinds it is given.
class StatsObserver final : public LinearObserver {
 public:
  void Want(Module m, CalibStats* stats) { stats_[static_cast<int>(m)] = stats; }
  void OnLinearInput(int, Module m, const float* x, int rows, int cols) override {
    if (CalibStats* s = stats_[static_cast<int>(m)]) s->Accumulate(x, rows, cols);
  }

 private:
  std::array<CalibStats*, kNumModules> stats_{};
};

// Collects the inputs of the layer's groups: all four in one pass up front
// (sequential = false), or group `gi` alone just before it is processed.
absl::Status CollectStats(Model& model, int l, const LayerWeights& lw, const LayerFactors* lf,
                          const std::vector<int>& lengths, const std::vector<float>& hidden,
                          const std::vector<Group>& groups, int gi, bool sequential,
                          std::vector<CalibStats>* stats, std::vector<float>* work) {
  if (!sequential && gi > 0) return absl::OkStatus();
  StatsObserver obs;
  for (size_t g = 0; g < groups.size(); ++g) {
    if (sequential && static_cast<int>(g) != gi) continue;
    (*stats)[g] = CalibStats(groups[g].width);
    obs.Want(groups[g].input, &(*stats)[g]);
  }
  *work = hidden;
  return model.ForwardLayer(l, &lw, lf, lengths, work->data(), &obs);
}

std::string Where(int layer, Module m) {
  return absl::StrCat("layers.", layer, ".", ModuleParent(m), ".", ModuleName(m));
}

absl::Status Annotate(const absl::Status& s, const std::string& where) {
  return absl::Status(s.code(), absl::StrCat(where, ": ", s.message()));
}

// CANCELLED when the caller asked to stop; checked at layer boundaries.
absl::Status CheckCancel(const std::atomic<bool>* cancel, int layer, int n_layers) {
  if (cancel != nullptr && cancel->load(std::memory_order_relaxed))
    return absl::CancelledError(
        absl::StrCat("cancelled after ", layer, " of ", n_layers, " layers"));
  return absl::OkStatus();
}

class ProgressClock {
 public:
  ProgressClock(int n, const ProgressFn& fn) : n_(n), fn_(fn), t0_(Clock::now()) {}
  void LayerDone(int done) {
    if (!fn_) return;
    const double el = Since(t0_);
    fn_(done, n_, el, done > 0 ? el * (n_ - done) / done : 0.0);
  }

 private:
  int n_;
  ProgressFn fn_;
  Clock::time_point t0_;
};

absl::StatusOr<CompressedLinear> CompressOne(const CompressOptions& o, const float* w, int m, int n,
                                             const CalibStats* s) {
  QuantConfig q;
  q.bits = o.bits;
  q.group_size = o.group_size;
  q.symmetric = o.symmetric;
  q.act_order = o.act_order;
  q.damp = o.damp;
  std::optional<QuantConfig> sparse_quant;
  if (o.bits > 0) sparse_quant = q;
  switch (o.method) {
    case BaseMethod::kRtn: return CompressRtn(w, m, n, q);
    case BaseMethod::kGptq: return CompressGptq(w, m, n, *s, q);
    case BaseMethod::kSparseGpt: return CompressSparseGpt24(w, m, n, *s, sparse_quant);
    case BaseMethod::kWanda: return CompressWanda24(w, m, n, *s, sparse_quant);
    case BaseMethod::kSlimQuant: return CompressSlimQuant(w, m, n, o.bits);
    case BaseMethod::kCaldera: break;
  }
  return absl::InternalError("CompressOne: unexpected method");
}

bool NeedsCalibration(BaseMethod m) {
  return m != BaseMethod::kRtn && m != BaseMethod::kSlimQuant;
}

// Factors as engine matrices: F32 / F16 dense, or quantized.
absl::StatusOr<LowRankFactors> MakeFactors(const LowRank& lr, int bits, const CalibStats* s) {
  LowRankFactors f;
  if (bits == 32 || bits == 16) {
    const DType dt = bits == 32 ? DType::kF32 : DType::kF16;
    std::vector<float> bt(static_cast<size_t>(lr.r) * lr.m);
    for (int i = 0; i < lr.m; ++i)
      for (int j = 0; j < lr.r; ++j)
        bt[static_cast<size_t>(j) * lr.m + i] = lr.b[static_cast<size_t>(i) * lr.r + j];
    f.a = MakeDenseMatrixFromF32(dt, lr.r, lr.n, lr.a.data());
    f.bt = MakeDenseMatrixFromF32(dt, lr.r, lr.m, bt.data());
    return f;
  }
  ASSIGN_OR_RETURN(QuantizedFactors q, QuantizeFactors(lr, bits, s));
  f.a = q.a;
  f.bt = q.bt;
  return f;
}

std::vector<float> Difference(const Matrix& a, const Matrix& b) {
  std::vector<float> x = a.Dequantize();
  const std::vector<float> y = b.Dequantize();
  for (size_t i = 0; i < x.size(); ++i) x[i] -= y[i];
  return x;
}

absl::Status CheckSameArchitecture(const ModelWeights& a, const ModelWeights& b) {
  const std::string fa = ArchitectureFingerprint(a.config), fb = ArchitectureFingerprint(b.config);
  if (fa != fb)
    return absl::FailedPreconditionError(absl::StrCat("the compressed model (", fb,
                                                      ") is not a compression of the model (",
                                                      fa, ")"));
  return absl::OkStatus();
}

}  // namespace

const char* BaseMethodName(BaseMethod m) {
  switch (m) {
    case BaseMethod::kRtn: return "rtn";
    case BaseMethod::kGptq: return "gptq";
    case BaseMethod::kSparseGpt: return "sparsegpt";
    case BaseMethod::kWanda: return "wanda";
    case BaseMethod::kSlimQuant: return "slim-quant";
    case BaseMethod::kCaldera: return "caldera";
  }
  return "?";
}

bool ParseBaseMethod(const std::string& name, BaseMethod* out) {
  for (BaseMethod m : {BaseMethod::kRtn, BaseMethod::kGptq, BaseMethod::kSparseGpt,
                       BaseMethod::kWanda, BaseMethod::kSlimQuant, BaseMethod::kCaldera})
    if (name == BaseMethodName(m)) {
      *out = m;
      return true;
    }
  return false;
}

const char* AdapterMethodName(AdapterMethod m) {
  switch (m) {
    case AdapterMethod::kEora: return "eora";
    case AdapterMethod::kSvd: return "svd";
    case AdapterMethod::kActS: return "act-s";
    case AdapterMethod::kSlim: return "slim";
  }
  return "?";
}

bool ParseAdapterMethod(const std::string& name, AdapterMethod* out) {
  for (AdapterMethod m : {AdapterMethod::kEora, AdapterMethod::kSvd, AdapterMethod::kActS,
                          AdapterMethod::kSlim})
    if (name == AdapterMethodName(m)) {
      *out = m;
      return true;
    }
  return false;
}

std::vector<int> DefaultProfileRanks(int r) {
  std::vector<int> v;
  for (int k = 1; k < r; k *= 2) v.push_back(k);
  if (r > 0) v.push_back(r);
  return v;
}

double LinearBitsPerWeight(const ModelWeights& w, const LowRankAdapter* adapter, int rank) {
  double bytes = 0, weights = 0;
  for (const LayerWeights& L : w.layers)
    for (const auto& m : L.linear) {
      bytes += static_cast<double>(m->StorageBytes());
      weights += static_cast<double>(m->rows()) * m->cols();
    }
  if (adapter) bytes += static_cast<double>(adapter->BytesPerToken(rank));
  return weights > 0 ? 8.0 * bytes / weights : 0.0;
}

// ---- Compression -----------------------------------------------------------------

absl::StatusOr<CompressResult> CompressModel(const ModelWeights& fp, const CalibrationSet* calib,
                                             const CompressOptions& o, ThreadPool* pool,
                                             const ProgressFn& progress) {
  const auto t0 = Clock::now();
  RETURN_IF_ERROR(fp.Validate());
  const ModelConfig& c = fp.config;
  const bool sparse = o.method == BaseMethod::kSparseGpt || o.method == BaseMethod::kWanda;
  if (sparse ? (o.bits != 0 && (o.bits < 2 || o.bits > 4)) : (o.bits < 2 || o.bits > 4))
    return absl::InvalidArgumentError(absl::StrCat(BaseMethodName(o.method), ": bits must be ",
                                                   sparse ? "0 (none), " : "", "2, 3 or 4, got ",
                                                   o.bits));
  if (o.group_size < 0 || o.group_size % 32 != 0)
    return absl::InvalidArgumentError(
        absl::StrCat("group size must be 0 (per channel) or a multiple of 32, got ", o.group_size));
  if (o.embedding_bits != 0 && (o.embedding_bits < 2 || o.embedding_bits > 4))
    return absl::InvalidArgumentError(
        absl::StrCat("embedding bits must be 0 (keep), 2, 3 or 4, got ", o.embedding_bits));
  const bool need_calib = NeedsCalibration(o.method);
  if (need_calib && (calib == nullptr || calib->fit.empty()))
    return absl::InvalidArgumentError(
        absl::StrCat(BaseMethodName(o.method), " needs calibration data"));

  auto out = std::make_shared<ModelWeights>(fp);
  CompressResult result;
  result.metadata = {{"method", BaseMethodName(o.method)},
                     {"bits", std::to_string(o.bits)},
                     {"group_size", std::to_string(o.group_size)},
                     {"sparsity", sparse ? "2:4" : "none"},
                     {"symmetric", o.symmetric ? "true" : "false"},
                     {"act_order", o.act_order ? "true" : "false"},
                     {"damp", absl::StrCat(o.damp)},
                     {"embedding_bits", std::to_string(o.embedding_bits)},
                     {"source_model", fp.source}};
  if (o.embedding_bits > 0) {
    const Matrix& e = *fp.token_embedding;
    const std::vector<float> f = e.Dequantize();
    auto q = MakeQuantizedMatrix(
        QuantizeRtn(f.data(), e.rows(), e.cols(), {o.embedding_bits, o.embedding_group_size}));
    if (!q.ok()) return Annotate(q.status(), "token embedding");
    const bool tied = fp.output.get() == fp.token_embedding.get();
    out->token_embedding = std::shared_ptr<const Matrix>(std::move(*q));
    if (tied) out->output = out->token_embedding;
    result.metadata["embedding_group_size"] = std::to_string(o.embedding_group_size);
  }
  if (calib) {
    result.metadata["calibration_hash"] = calib->hash;
    result.metadata["calibration_seqs"] = std::to_string(calib->fit.size());
    result.metadata["calibration_seq_len"] = std::to_string(calib->seq_len);
    result.metadata["calibration_source"] = calib->source;
  }
  CalderaConfig cc;
  if (o.method == BaseMethod::kCaldera) {
    cc.rank = o.caldera_rank;
    cc.bits_q = o.bits;
    cc.bits_lr = o.caldera_bits_lr;
    cc.outer_iters = o.caldera_outer_iters;
    cc.inner_iters = o.caldera_inner_iters;
    cc.group_size = o.group_size;
    result.metadata["caldera_rank"] = std::to_string(cc.rank);
    result.metadata["caldera_bits_lr"] = std::to_string(cc.bits_lr);
    result.metadata["caldera_outer_iters"] = std::to_string(cc.outer_iters);
  }
  std::vector<LayerFactors> caldera_factors(o.method == BaseMethod::kCaldera ? c.n_layers : 0);

  ProgressClock clock(c.n_layers, progress);
  if (!need_calib) {
    for (int l = 0; l < c.n_layers; ++l) {
      RETURN_IF_ERROR(CheckCancel(o.cancel, l, c.n_layers));
      for (int m = 0; m < kNumModules; ++m) {
        const Matrix& w = *fp.layers[l].linear[m];
        const std::vector<float> f = w.Dequantize();
        auto cl = CompressOne(o, f.data(), w.rows(), w.cols(), nullptr);
        if (!cl.ok()) return Annotate(cl.status(), Where(l, static_cast<Module>(m)));
        out->layers[l].linear[m] = cl->matrix;
      }
      clock.LayerDone(l + 1);
    }
  } else {
    Model model(out, pool);
    const std::vector<int> flat = calib->fit_flat();
    const std::vector<int> lengths = calib->fit_lengths();
    std::vector<float> hidden(flat.size() * static_cast<size_t>(c.dim)), work;
    RETURN_IF_ERROR(model.Embed(flat, hidden.data()));
    for (int l = 0; l < c.n_layers; ++l) {
      RETURN_IF_ERROR(CheckCancel(o.cancel, l, c.n_layers));
      LayerWeights lw = fp.layers[l];
      LayerFactors lf{};
      const LayerFactors* lfp = o.method == BaseMethod::kCaldera ? &lf : nullptr;
      const std::vector<Group> groups = LayerGroups(c);
      std::vector<CalibStats> all_stats(groups.size());
      for (size_t gi = 0; gi < groups.size(); ++gi) {
        const Group& g = groups[gi];
        RETURN_IF_ERROR(CollectStats(model, l, lw, lfp, lengths, hidden, groups, static_cast<int>(gi),
                                     o.sequential_groups, &all_stats, &work));
        const CalibStats& stats = all_stats[gi];
        for (Module m : g.modules) {
          const Matrix& w = *fp.layers[l].linear[static_cast<int>(m)];
          const std::vector<float> f = w.Dequantize();
          if (o.method == BaseMethod::kCaldera) {
            auto r = Caldera(f.data(), w.rows(), w.cols(), stats, cc);
            if (!r.ok()) return Annotate(r.status(), Where(l, m));
            lw.linear[static_cast<int>(m)] = r->q.matrix;
            lf[static_cast<int>(m)] = LowRankFactors{r->lr_quant.a, r->lr_quant.bt};
          } else {
            auto cl = CompressOne(o, f.data(), w.rows(), w.cols(), &stats);
            if (!cl.ok()) return Annotate(cl.status(), Where(l, m));
            lw.linear[static_cast<int>(m)] = cl->matrix;
          }
        }
        all_stats[gi] = CalibStats(0);  // one group's statistics at a time
      }
      // The compressed layer produces the next layer's inputs.
      RETURN_IF_ERROR(model.ForwardLayer(l, &lw, lfp, lengths, hidden.data(), nullptr));
      out->layers[l] = lw;
      if (lfp) caldera_factors[l] = lf;
      clock.LayerDone(l + 1);
    }
  }
  if (o.method == BaseMethod::kCaldera) {
    std::vector<std::array<LowRankFactors, kNumModules>> layers(caldera_factors.begin(),
                                                                caldera_factors.end());
    ASSIGN_OR_RETURN(result.caldera_adapter,
                     LowRankAdapter::Create("caldera", c, std::move(layers)));
  }
  RETURN_IF_ERROR(out->Validate());
  result.weights = std::move(out);
  result.seconds = Since(t0);
  return result;
}

// ---- Adapter fitting -------------------------------------------------------------

absl::StatusOr<FitResult> FitAdapter(const ModelWeights& fp, const ModelWeights& compressed,
                                     const CalibrationSet& calib, const FitOptions& o,
                                     ThreadPool* pool, const ProgressFn& progress) {
  const auto t0 = Clock::now();
  RETURN_IF_ERROR(fp.Validate());
  RETURN_IF_ERROR(compressed.Validate());
  RETURN_IF_ERROR(CheckSameArchitecture(fp, compressed));
  const ModelConfig& c = fp.config;
  if (o.rank < 1) return absl::InvalidArgumentError("rank must be >= 1");
  const int max_rank = std::min({c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim});
  if (o.rank > max_rank)
    return absl::InvalidArgumentError(absl::StrCat("rank ", o.rank,
                                                   " exceeds the smallest module dimension ",
                                                   max_rank));
  if (o.factor_bits != 32 && o.factor_bits != 16 && o.factor_bits != 4 && o.factor_bits != 3)
    return absl::InvalidArgumentError(
        absl::StrCat("adapter bits must be 32, 16, 4 or 3, got ", o.factor_bits));
  if (calib.fit.empty()) return absl::InvalidArgumentError("no calibration sequences");

  auto cw = std::make_shared<ModelWeights>(compressed);
  Model model(cw, pool);
  const std::vector<int> flat = calib.fit_flat();
  const std::vector<int> lengths = calib.fit_lengths();
  std::vector<float> hidden(flat.size() * static_cast<size_t>(c.dim)), work;
  // The served model embeds with the compressed base's embedding.
  RETURN_IF_ERROR(model.Embed(flat, hidden.data()));

  std::vector<std::array<LowRankFactors, kNumModules>> factors(c.n_layers);
  double solve_seconds = 0;
  ProgressClock clock(c.n_layers, progress);
  for (int l = 0; l < c.n_layers; ++l) {
    RETURN_IF_ERROR(CheckCancel(o.cancel, l, c.n_layers));
    // Not yet processed modules run at full precision; processed ones as W_c + B A.
    LayerWeights lw = fp.layers[l];
    lw.attn_norm = compressed.layers[l].attn_norm;
    lw.ffn_norm = compressed.layers[l].ffn_norm;
    LayerFactors lf{};
    const std::vector<Group> groups = LayerGroups(c);
    std::vector<CalibStats> all_stats(groups.size());
    for (size_t gi = 0; gi < groups.size(); ++gi) {
      const Group& g = groups[gi];
      RETURN_IF_ERROR(CollectStats(model, l, lw, &lf, lengths, hidden, groups, static_cast<int>(gi),
                                   o.sequential_groups, &all_stats, &work));
      const CalibStats& stats = all_stats[gi];
      const auto ts = Clock::now();
      std::optional<EoraBasis> basis;
      if (o.method == AdapterMethod::kEora) {
        auto b = ComputeEoraBasis(stats);
        if (!b.ok()) return Annotate(b.status(), absl::StrCat("layers.", l, " ", ModuleName(g.input), " inputs"));
        basis = std::move(*b);
      }
      for (Module m : g.modules) {
        const int mi = static_cast<int>(m);
        const Matrix& wfp = *fp.layers[l].linear[mi];
        const Matrix& wc = *compressed.layers[l].linear[mi];
        const std::vector<float> dw = Difference(wfp, wc);
        const int rows = wfp.rows(), cols = wfp.cols();
        absl::StatusOr<LowRank> lr;
        switch (o.method) {
          case AdapterMethod::kEora: lr = FitEora(dw.data(), rows, cols, *basis, o.rank); break;
          case AdapterMethod::kSvd: lr = FitSvd(dw.data(), rows, cols, o.rank); break;
          case AdapterMethod::kActS: lr = FitActS(dw.data(), rows, cols, stats, o.rank); break;
          case AdapterMethod::kSlim: lr = FitSlimLowRank(dw.data(), rows, cols, stats, o.rank); break;
        }
        if (!lr.ok()) return Annotate(lr.status(), Where(l, m));
        auto f = MakeFactors(*lr, o.factor_bits, &stats);
        if (!f.ok()) return Annotate(f.status(), Where(l, m));
        lw.linear[mi] = compressed.layers[l].linear[mi];
        lf[mi] = *f;
      }
      solve_seconds += Since(ts);
      all_stats[gi] = CalibStats(0);
    }
    RETURN_IF_ERROR(model.ForwardLayer(l, &lw, &lf, lengths, hidden.data(), nullptr));
    for (int m = 0; m < kNumModules; ++m) factors[l][m] = lf[m];
    clock.LayerDone(l + 1);
  }
  FitResult res;
  ASSIGN_OR_RETURN(res.adapter, LowRankAdapter::Create(AdapterMethodName(o.method), c, std::move(factors)));
  res.fit_seconds = Since(t0);
  res.solve_seconds = solve_seconds;

  // Rank -> quality profile on the held-out slice, plus the base and FP references.
  RETURN_IF_ERROR(CheckCancel(o.cancel, c.n_layers, c.n_layers));
  const auto t1 = Clock::now();
  AdapterMetadata& meta = res.meta;
  meta.method = AdapterMethodName(o.method);
  meta.rank = o.rank;
  meta.factor_bits = o.factor_bits >= 16 ? 16 : o.factor_bits;
  meta.base_model = o.base_model.empty() ? fp.source : o.base_model;
  meta.base_fingerprint = ArchitectureFingerprint(c);
  meta.compressed_base = o.compressed_base;
  meta.calibration_hash = calib.hash;
  meta.calibration_seqs = static_cast<int>(calib.fit.size());
  meta.calibration_seq_len = calib.seq_len;
  meta.fit_seconds = res.fit_seconds;
  meta.extra["calibration_source"] = calib.source;
  meta.extra["solve_seconds"] = absl::StrCat(res.solve_seconds);
  meta.extra["sequential_groups"] = o.sequential_groups ? "true" : "false";
  meta.extra["factor_storage"] = o.factor_bits == 32 ? "f32" : o.factor_bits == 16 ? "f16"
                                 : absl::StrCat("q", o.factor_bits);
  if (!calib.heldout.empty()) {
    std::vector<int> ranks = o.profile_ranks.empty() ? DefaultProfileRanks(o.rank) : o.profile_ranks;
    ASSIGN_OR_RETURN(meta.profile, RankProfile(cw, *res.adapter, calib.heldout, ranks, pool));
    ASSIGN_OR_RETURN(double base_nll, SequenceNll(cw, calib.heldout, nullptr, 0, pool));
    auto fpw = std::make_shared<ModelWeights>(fp);
    ASSIGN_OR_RETURN(double fp_nll, SequenceNll(fpw, calib.heldout, nullptr, 0, pool));
    meta.extra["heldout_nll_compressed"] = absl::StrFormat("%.17g", base_nll);
    meta.extra["heldout_nll_fp"] = absl::StrFormat("%.17g", fp_nll);
    meta.extra["heldout_seqs"] = std::to_string(calib.heldout.size());
  }
  res.profile_seconds = Since(t1);
  return res;
}

// ---- Evaluation ----------------------------------------------------------------------

absl::StatusOr<double> SequenceNll(std::shared_ptr<const ModelWeights> weights,
                                   const std::vector<std::vector<int>>& seqs,
                                   const LowRankAdapter* adapter, int rank, ThreadPool* pool) {
  const ModelConfig& c = weights->config;
  Model model(weights, pool);
  double nll = 0;
  int64_t count = 0;
  // Batches bounded by the logits they produce (about 64M floats).
  constexpr int64_t kMaxLogits = 64ll << 20;
  size_t i = 0;
  std::vector<float> logits;
  while (i < seqs.size()) {
    size_t j = i;
    int64_t rows = 0, cache_tokens = 0;
    while (j < seqs.size() &&
           (j == i || (rows + static_cast<int64_t>(seqs[j].size())) * c.vocab_size <= kMaxLogits)) {
      rows += static_cast<int64_t>(seqs[j].size());
      cache_tokens += static_cast<int64_t>(seqs[j].size()) + KvCache::kBlockTokens;
      ++j;
    }
    KvCache cache(c, cache_tokens);
    std::vector<KvSequence> kv;
    kv.reserve(j - i);
    std::vector<SequenceChunk> chunks;
    for (size_t k = i; k < j; ++k) {
      kv.push_back(cache.NewSequence());
      chunks.push_back({&kv.back(), seqs[k], adapter, adapter ? rank : 0, LogitsMode::kAll});
    }
    RETURN_IF_ERROR(model.Forward(chunks, &cache, &logits));
    size_t row = 0;
    for (size_t k = i; k < j; ++k) {
      const auto& s = seqs[k];
      for (size_t t = 0; t + 1 < s.size(); ++t) {
        nll -= LogProb(logits.data() + (row + t) * c.vocab_size, c.vocab_size, s[t + 1]);
        ++count;
      }
      row += s.size();
    }
    i = j;
  }
  if (count == 0) return absl::InvalidArgumentError("no tokens to score");
  return nll / static_cast<double>(count);
}

absl::StatusOr<std::vector<RankQuality>> RankProfile(std::shared_ptr<const ModelWeights> weights,
                                                     const LowRankAdapter& adapter,
                                                     const std::vector<std::vector<int>>& heldout,
                                                     std::vector<int> ranks, ThreadPool* pool) {
  std::sort(ranks.begin(), ranks.end());
  ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
  std::vector<RankQuality> out;
  for (int r : ranks) {
    if (r < 1 || r > adapter.max_rank())
      return absl::InvalidArgumentError(absl::StrCat("profile rank ", r, " outside 1..",
                                                     adapter.max_rank()));
    ASSIGN_OR_RETURN(double nll, SequenceNll(weights, heldout, &adapter, r, pool));
    out.push_back({r, nll, std::exp(nll)});
  }
  return out;
}

}  // namespace eora::compress
