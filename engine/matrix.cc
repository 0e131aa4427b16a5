#include "engine/matrix.h"

#include <algorithm>
#include <cmath>
#include <thread>

#include "engine/backend/cpu/kernels.h"
#include "engine/thread_pool.h"

namespace eora {

void QuantizedActivations::Quantize(const float* x, int rows, int c, int ldx) {
  n = rows;
  cols = c;
  padded_cols = (c + kQBlock - 1) / kQBlock * kQBlock;
  const int nb = padded_cols / kQBlock;
  // resize (not assign): every element is written by the kernel.
  q.resize(static_cast<size_t>(n) * padded_cols);
  scale.resize(static_cast<size_t>(n) * nb);
  sum.resize(static_cast<size_t>(n) * nb);
  span = kQSpan;
  const auto quantize_row = cpu::Kernels().quantize_row;
  for (int t = 0; t < n; ++t) {
    quantize_row(x + static_cast<size_t>(t) * ldx, c, padded_cols, span,
                 q.data() + static_cast<size_t>(t) * padded_cols, scale.data() + static_cast<size_t>(t) * nb,
                 sum.data() + static_cast<size_t>(t) * nb);
  }
}

void Matrix::AccumulateTransposed(const float* u, int ldu, int n, int r, float* y, int ldy, int c0,
                                  int c1) const {
  std::vector<float> row(cols());
  for (int j = 0; j < r; ++j) {
    DequantizeRow(j, row.data());
    for (int t = 0; t < n; ++t) {
      const float uj = u[static_cast<size_t>(t) * ldu + j];
      float* yt = y + static_cast<size_t>(t) * ldy;
      for (int c = c0; c < c1; ++c) yt[c] += uj * row[c];
    }
  }
}

std::vector<float> Matrix::Dequantize() const {
  std::vector<float> out(static_cast<size_t>(rows()) * cols());
  for (int r = 0; r < rows(); ++r) DequantizeRow(r, out.data() + static_cast<size_t>(r) * cols());
  return out;
}

void MatMul(const Matrix& w, const float* x, int n, int ldx, float* y, int ldy, ThreadPool* pool,
            MatMulScratch* scratch) {
  MatMulShared({{&w, y, ldy}}, x, n, ldx, pool, scratch);
}

int DecodeChunksPerThread(size_t weight_bytes) {
  return weight_bytes <= kOneChunkMaxBytes ? 1 : ThreadPool::kChunksPerThread;
}

namespace {

// Shared by MatMulShared and MatMulSharedLowRank (lr empty or one term per output).
void MatMulSharedImpl(const std::vector<MatMulOutput>& outs, const std::vector<LowRankTerm>& lr,
                      const float* x, int n, int ldx, ThreadPool* pool, MatMulScratch* scratch) {
  if (outs.empty() || n == 0) return;
  MatMulInput in;
  in.x = x;
  in.n = n;
  in.ldx = ldx;
  bool want_q = false;
  int align = 1;
  for (const auto& o : outs) {
    want_q |= o.w->WantsQuantizedInput();
    align = std::max(align, o.w->RowAlignment());
  }
  for (const LowRankTerm& t : lr)
    if (t.a != nullptr) want_q |= t.a->WantsQuantizedInput();
  if (want_q) {
    scratch->qx.Quantize(x, n, outs[0].w->cols(), ldx);
    in.qx = &scratch->qx;
  }
  // Concatenate the row spaces of all outputs, each padded to the alignment.
  std::vector<int64_t> starts, rows;
  int64_t total = 0, work = 0;
  for (const auto& o : outs) {
    const int r = o.rows >= 0 ? std::min(o.rows, o.w->rows()) : o.w->rows();
    starts.push_back(total);
    rows.push_back(r);
    total += (r + align - 1) / align * align;
    work += static_cast<int64_t>(r) * o.w->cols() * n;  // multiply-adds
  }
  const bool any_lr = std::any_of(lr.begin(), lr.end(), [](const LowRankTerm& t) { return t.a != nullptr; });
  if (any_lr) PrepareLowRankU(lr, n, pool == nullptr ? 1 : pool->num_threads(), scratch);
  // With low-rank terms: take A pieces first (so a late thread finds them done),
  // then the base rows, then wait for u and add the B products to those rows.
  auto run = [&](int, int64_t b, int64_t e) {
    if (any_lr) ClaimLowRankU(lr, in, scratch);
    for (size_t i = 0; i < outs.size(); ++i) {
      const int64_t s = starts[i];
      const int64_t lo = std::max<int64_t>(b, s);
      const int64_t hi = std::min<int64_t>(e, s + rows[i]);
      if (lo < hi)
        outs[i].w->MatMulRows(in, outs[i].y, outs[i].ldy, static_cast<int>(lo - s), static_cast<int>(hi - s));
    }
    if (!any_lr) return;
    const float* u = LowRankU(lr, in, scratch);
    for (size_t i = 0; i < outs.size(); ++i) {
      if (lr[i].a == nullptr) continue;
      const int64_t s = starts[i];
      const int64_t lo = std::max<int64_t>(b, s);
      const int64_t hi = std::min<int64_t>(e, s + rows[i]);
      if (lo < hi)
        lr[i].bt->AccumulateTransposed(u, lr[i].r, n, lr[i].r, outs[i].y, outs[i].ldy, static_cast<int>(lo - s),
                                       static_cast<int>(hi - s));
      u += static_cast<size_t>(n) * lr[i].r;
    }
  };
  if (pool == nullptr) {
    run(0, 0, total);
  } else {
    // One chunk per thread (still claimed dynamically, so a late thread's chunk
    // runs on the caller) where chunks have a fixed cost: with low-rank terms every
    // chunk pays a B call per term it touches (each quantizing its v to int8) and a
    // wait for u; and a decode-size product (n <= kStreamRows) of at most
    // kOneChunkMaxBytes streams its weights, where every chunk boundary restarts a
    // stream.
    int cpt = ThreadPool::kChunksPerThread;
    if (any_lr) {
      cpt = 1;
    } else if (n <= kStreamRows) {
      size_t bytes = 0;
      for (const auto& o : outs) bytes += o.w->StorageBytes();
      cpt = DecodeChunksPerThread(bytes);
    }
    pool->ParallelFor(total, align, work, run, cpt);
  }
}

}  // namespace

void MatMulShared(const std::vector<MatMulOutput>& outs, const float* x, int n, int ldx,
                  ThreadPool* pool, MatMulScratch* scratch) {
  MatMulSharedImpl(outs, {}, x, n, ldx, pool, scratch);
}

void MatMulSharedLowRank(const std::vector<MatMulOutput>& outs, const std::vector<LowRankTerm>& lr,
                         const float* x, int n, int ldx, ThreadPool* pool, MatMulScratch* scratch) {
  MatMulSharedImpl(outs, lr, x, n, ldx, pool, scratch);
}

void PrepareLowRankU(const std::vector<LowRankTerm>& lr, int n, int threads, MatMulScratch* scratch) {
  LowRankShare& s = *scratch->lr;
  s.pieces.clear();
  size_t off = 0;
  for (size_t i = 0; i < lr.size(); ++i) {
    const LowRankTerm& t = lr[i];
    if (t.a == nullptr) continue;
    const int align = std::max(1, t.a->RowAlignment());
    const int per = std::max(1, threads);
    const int chunk = ((t.r + per - 1) / per + align - 1) / align * align;
    for (int r0 = 0; r0 < t.r; r0 += chunk)
      s.pieces.push_back({static_cast<int>(i), r0, std::min(t.r, r0 + chunk), off});
    off += static_cast<size_t>(n) * t.r;
  }
  if (s.u.size() < off) s.u.resize(off);
  s.next.store(0, std::memory_order_relaxed);
  s.done.store(0, std::memory_order_relaxed);
}

void ClaimLowRankU(const std::vector<LowRankTerm>& lr, const MatMulInput& in, MatMulScratch* scratch) {
  LowRankShare& s = *scratch->lr;
  const int total = static_cast<int>(s.pieces.size());
  // A plain load first: once the pieces are gone (every later chunk of the region
  // comes here), no read-modify-write bounces the line between cores.
  if (s.next.load(std::memory_order_relaxed) >= total) return;
  for (int i; (i = s.next.fetch_add(1, std::memory_order_relaxed)) < total;) {
    const LowRankShare::Piece& p = s.pieces[i];
    const LowRankTerm& t = lr[p.term];
    t.a->MatMulRows(in, s.u.data() + p.off, t.r, p.r0, p.r1);
    s.done.fetch_add(1, std::memory_order_release);
  }
}

const float* LowRankU(const std::vector<LowRankTerm>& lr, const MatMulInput& in, MatMulScratch* scratch) {
  ClaimLowRankU(lr, in, scratch);
  LowRankShare& s = *scratch->lr;
  const int total = static_cast<int>(s.pieces.size());
  // The pieces left are being computed by threads that are running.
  for (int spins = 0; s.done.load(std::memory_order_acquire) < total; ++spins) {
    if (spins < 4096) {
#if defined(__x86_64__)
      __builtin_ia32_pause();
#endif
    } else {
      std::this_thread::yield();
    }
  }
  return s.u.data();
}

}  // namespace eora
