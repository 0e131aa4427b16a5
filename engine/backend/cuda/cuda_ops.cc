#include "engine/backend/cuda/cuda_ops.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/argmax.cuh"
#include "engine/backend/cuda/attention.cuh"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/dense_gemm.cuh"
#include "engine/backend/cuda/device_buffer.h"
#include "engine/backend/cuda/device_views.h"
#include "engine/backend/cuda/kv_store.cuh"
#include "engine/backend/cuda/lowrank_a.cuh"
#include "engine/backend/cuda/lowrank_b.cuh"
#include "engine/backend/cuda/quant_gemm.cuh"
#include "engine/backend/cuda/quant_gemv.cuh"
#include "engine/backend/cuda/rmsnorm.cuh"
#include "engine/backend/cuda/rope.cuh"
#include "engine/backend/cuda/sparse24_gemv.cuh"
#include "engine/backend/cuda/swiglu.cuh"
#include "engine/dtype.h"
#include "engine/quant_matrix.h"
#include "engine/sparse_matrix.h"

namespace eora::cuda {

#define EORA_ASSIGN_OR_RETURN_CUDA(lhs, expr) \
  auto lhs##_or = (expr);                     \
  if (!lhs##_or.ok()) return lhs##_or.status(); \
  auto lhs = std::move(*lhs##_or)

#define EORA_RETURN_IF_ERROR_CUDA(expr)   \
  do {                                    \
    ::absl::Status eora_st_ = (expr);           \
    if (!eora_st_.ok()) return eora_st_;            \
  } while (0)

namespace {

// Copies a host vector into a fresh device buffer.
template <typename T>
absl::StatusOr<DeviceBuffer> ToDevice(const T* data, size_t count) {
  EORA_ASSIGN_OR_RETURN_CUDA(b, DeviceBuffer::Allocate(count * sizeof(T)));
  EORA_RETURN_IF_ERROR_CUDA(b.CopyFromHost(data, count * sizeof(T)));
  return b;
}
template <typename T, typename A>
absl::StatusOr<DeviceBuffer> ToDevice(const std::vector<T, A>& v) {
  return ToDevice(v.data(), v.size());
}

struct PackedOnDevice {
  DeviceBuffer codes, scale, min;
  QuantDev view;
};

absl::StatusOr<PackedOnDevice> UploadPacked(const QuantMatrix& q) {
  PackedOnDevice d;
  // The device kernels read the file layout (the CPU copy may be in panels).
  const PackedQuant p = q.packed();
  EORA_ASSIGN_OR_RETURN_CUDA(codes, ToDevice(p.packed));
  EORA_ASSIGN_OR_RETURN_CUDA(scale, ToDevice(p.scale_f16));
  EORA_ASSIGN_OR_RETURN_CUDA(mins, ToDevice(p.min_f16));
  d.codes = std::move(codes);
  d.scale = std::move(scale);
  d.min = std::move(mins);
  QuantDev& v = d.view;
  v.codes = d.codes.as<const uint8_t>();
  v.scale = d.scale.as<const uint16_t>();
  v.min = d.min.as<const uint16_t>();
  v.rows = q.rows();
  v.cols = q.cols();
  v.blocks = q.blocks_per_row();
  v.groups = q.groups();
  v.bpg = q.group_size_effective() / 32;
  v.bits = q.bits();
  v.row_bytes = q.row_bytes();
  return d;
}

// Dense element bits of a matrix in `dtype` (exact: the values came from it).
std::vector<uint16_t> DenseBits16(const Matrix& m, bool bf16) {
  std::vector<uint16_t> out(static_cast<size_t>(m.rows()) * m.cols());
  std::vector<float> row(m.cols());
  for (int r = 0; r < m.rows(); ++r) {
    m.DequantizeRow(r, row.data());
    for (int c = 0; c < m.cols(); ++c)
      out[static_cast<size_t>(r) * m.cols() + c] = bf16 ? F32ToBF16(row[c]) : F32ToF16(row[c]);
  }
  return out;
}

}  // namespace

// ---- Device objects -------------------------------------------------------------

struct DeviceMatrix::Impl {
  MatrixFormat format = MatrixFormat::kF32;
  int rows = 0, cols = 0;
  PackedOnDevice packed;  // kQuant, kSparse24Quant (kept slots)
  DeviceBuffer dense;     // kF32/kF16/kBF16 elements, kSparse24 values
  DeviceBuffer meta;      // 2:4 positions
  Sparse24Dev sparse;
  int sparse_bits = 0;    // 0: F16 kept values
  int dense_type = 0;     // 0 F32, 1 F16, 2 BF16
  size_t bytes = 0;
};

DeviceMatrix::DeviceMatrix(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceMatrix::~DeviceMatrix() = default;
int DeviceMatrix::rows() const { return impl_->rows; }
int DeviceMatrix::cols() const { return impl_->cols; }
MatrixFormat DeviceMatrix::format() const { return impl_->format; }
size_t DeviceMatrix::device_bytes() const { return impl_->bytes; }

struct DeviceLowRank::Impl {
  PackedOnDevice qa, qbt;
  DeviceBuffer fa, fbt;
  LrFactorDev view;
};

DeviceLowRank::DeviceLowRank(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DeviceLowRank::~DeviceLowRank() = default;
int DeviceLowRank::rank() const { return impl_->view.a.rows; }
int DeviceLowRank::in() const { return impl_->view.a.cols; }
int DeviceLowRank::out() const { return impl_->view.bt.cols; }

// ---- Context --------------------------------------------------------------------

struct CudaContext::State {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
};

CudaContext::CudaContext(std::unique_ptr<State> s) : s_(std::move(s)) {}

CudaContext::~CudaContext() {
  if (s_->cublas != nullptr) cublasDestroy(s_->cublas);
  if (s_->stream != nullptr) cudaStreamDestroy(s_->stream);
}

absl::StatusOr<std::unique_ptr<CudaContext>> CudaContext::Create(int device) {
  auto s = std::make_unique<State>();
  s->device = device;
  EORA_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  EORA_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
  std::unique_ptr<CudaContext> ctx(new CudaContext(std::move(s)));
  EORA_CUBLAS_RETURN_IF_ERROR(cublasCreate(&ctx->s_->cublas));
  EORA_CUBLAS_RETURN_IF_ERROR(cublasSetStream(ctx->s_->cublas, ctx->s_->stream));
  return ctx;
}

absl::StatusOr<std::unique_ptr<DeviceMatrix>> CudaContext::Upload(const Matrix& m) {
  auto d = std::make_unique<DeviceMatrix::Impl>();
  d->format = m.format();
  d->rows = m.rows();
  d->cols = m.cols();
  switch (m.format()) {
    case MatrixFormat::kF32: {
      std::vector<float> all = m.Dequantize();
      EORA_ASSIGN_OR_RETURN_CUDA(b, ToDevice(all));
      d->dense = std::move(b);
      d->dense_type = 0;
      break;
    }
    case MatrixFormat::kF16:
    case MatrixFormat::kBF16: {
      const bool bf16 = m.format() == MatrixFormat::kBF16;
      EORA_ASSIGN_OR_RETURN_CUDA(b, ToDevice(DenseBits16(m, bf16)));
      d->dense = std::move(b);
      d->dense_type = bf16 ? 2 : 1;
      break;
    }
    case MatrixFormat::kQuant: {
      const auto* q = dynamic_cast<const QuantMatrix*>(&m);
      if (q == nullptr) return absl::InternalError("kQuant matrix is not a QuantMatrix");
      EORA_ASSIGN_OR_RETURN_CUDA(p, UploadPacked(*q));
      d->packed = std::move(p);
      break;
    }
    case MatrixFormat::kSparse24: {
      const auto* sm = dynamic_cast<const Sparse24Matrix*>(&m);
      if (sm == nullptr) return absl::InternalError("kSparse24 matrix is not a Sparse24Matrix");
      EORA_ASSIGN_OR_RETURN_CUDA(v, ToDevice(sm->values_f16()));
      EORA_ASSIGN_OR_RETURN_CUDA(meta, ToDevice(sm->meta()));
      d->dense = std::move(v);
      d->meta = std::move(meta);
      d->sparse.values = d->dense.as<const uint16_t>();
      d->sparse.kept_blocks = sm->kept_blocks();
      d->sparse_bits = 0;
      break;
    }
    case MatrixFormat::kSparse24Quant: {
      const auto* sm = dynamic_cast<const Sparse24QuantMatrix*>(&m);
      if (sm == nullptr)
        return absl::InternalError("kSparse24Quant matrix is not a Sparse24QuantMatrix");
      EORA_ASSIGN_OR_RETURN_CUDA(p, UploadPacked(sm->kept()));
      EORA_ASSIGN_OR_RETURN_CUDA(meta, ToDevice(sm->meta()));
      d->packed = std::move(p);
      d->meta = std::move(meta);
      d->sparse.q = d->packed.view;
      d->sparse.kept_blocks = sm->kept_blocks();
      d->sparse_bits = sm->kept().bits();
      break;
    }
  }
  if (m.format() == MatrixFormat::kSparse24 || m.format() == MatrixFormat::kSparse24Quant) {
    d->sparse.meta = d->meta.as<const uint8_t>();
    d->sparse.rows = m.rows();
    d->sparse.cols = m.cols();
  }
  d->bytes = d->packed.codes.bytes() + d->packed.scale.bytes() + d->packed.min.bytes() +
             d->dense.bytes() + d->meta.bytes();
  return std::make_unique<DeviceMatrix>(std::move(d));
}

absl::StatusOr<std::unique_ptr<DeviceLowRank>> CudaContext::Upload(const LowRankFactors& f) {
  if (!f.a || !f.bt || f.a->rows() != f.bt->rows())
    return absl::InvalidArgumentError("low-rank factors need A and Bt of the same rank");
  auto d = std::make_unique<DeviceLowRank::Impl>();
  auto one = [&](const Matrix& m, PackedOnDevice* q, DeviceBuffer* f16, LrMatDev* v) -> absl::Status {
    v->rows = m.rows();
    v->cols = m.cols();
    if (const auto* qm = dynamic_cast<const QuantMatrix*>(&m)) {
      EORA_ASSIGN_OR_RETURN_CUDA(p, UploadPacked(*qm));
      *q = std::move(p);
      v->bits = qm->bits();
      v->q = q->view;
      return absl::OkStatus();
    }
    if (m.format() == MatrixFormat::kSparse24 || m.format() == MatrixFormat::kSparse24Quant)
      return absl::UnimplementedError("2:4 sparse low-rank factors are not supported on CUDA");
    EORA_ASSIGN_OR_RETURN_CUDA(b, ToDevice(DenseBits16(m, /*bf16=*/false)));
    *f16 = std::move(b);
    v->bits = 16;
    v->f16 = f16->as<const uint16_t>();
    return absl::OkStatus();
  };
  EORA_RETURN_IF_ERROR_CUDA(one(*f.a, &d->qa, &d->fa, &d->view.a));
  EORA_RETURN_IF_ERROR_CUDA(one(*f.bt, &d->qbt, &d->fbt, &d->view.bt));
  return std::make_unique<DeviceLowRank>(std::move(d));
}

namespace {

// Device copies of the gather tables of one low-rank step.
struct LowRankStep {
  DeviceBuffer factors, tok_factor, tok_rank, tok_uoff, u_tok, u;
  LowRankTables tables;
};

absl::StatusOr<LowRankStep> BuildLowRank(std::span<const DeviceLowRankSegment> segments, int n,
                                         int in, int out) {
  std::vector<LrFactorDev> factors;
  std::vector<int> tok_factor(n, -1), tok_rank(n, 0), tok_uoff(n, 0), u_tok;
  for (const DeviceLowRankSegment& s : segments) {
    if (s.factors == nullptr || s.rank <= 0 || s.end <= s.begin) continue;
    if (s.begin < 0 || s.end > n)
      return absl::InvalidArgumentError(
          absl::StrCat("segment [", s.begin, ", ", s.end, ") outside ", n, " rows"));
    if (s.factors->in() != in || s.factors->out() != out)
      return absl::InvalidArgumentError(absl::StrCat("adapter is [", s.factors->in(), " -> ",
                                                     s.factors->out(), "], the product [", in,
                                                     " -> ", out, "]"));
    const int f = static_cast<int>(factors.size());
    factors.push_back(s.factors->impl().view);
    for (int t = s.begin; t < s.end; ++t) {
      if (tok_factor[t] >= 0) return absl::InvalidArgumentError("overlapping low-rank segments");
      tok_factor[t] = f;
      tok_rank[t] = std::min(s.rank, s.factors->rank());
    }
  }
  for (int t = 0; t < n; ++t) {
    tok_uoff[t] = static_cast<int>(u_tok.size());
    for (int j = 0; j < tok_rank[t]; ++j) u_tok.push_back(t);
  }
  LowRankStep st;
  if (u_tok.empty()) return st;  // tables.factors stays null: no low-rank term
  EORA_ASSIGN_OR_RETURN_CUDA(fb, ToDevice(factors));
  EORA_ASSIGN_OR_RETURN_CUDA(tf, ToDevice(tok_factor));
  EORA_ASSIGN_OR_RETURN_CUDA(tr, ToDevice(tok_rank));
  EORA_ASSIGN_OR_RETURN_CUDA(to, ToDevice(tok_uoff));
  EORA_ASSIGN_OR_RETURN_CUDA(ut, ToDevice(u_tok));
  EORA_ASSIGN_OR_RETURN_CUDA(u, DeviceBuffer::Allocate(u_tok.size() * sizeof(float)));
  st.factors = std::move(fb);
  st.tok_factor = std::move(tf);
  st.tok_rank = std::move(tr);
  st.tok_uoff = std::move(to);
  st.u_tok = std::move(ut);
  st.u = std::move(u);
  st.tables.factors = st.factors.as<const LrFactorDev>();
  st.tables.tok_factor = st.tok_factor.as<const int>();
  st.tables.tok_rank = st.tok_rank.as<const int>();
  st.tables.tok_uoff = st.tok_uoff.as<const int>();
  st.tables.u_tok = st.u_tok.as<const int>();
  st.tables.total_u = static_cast<int>(u_tok.size());
  return st;
}

// y = W x (+ epilogue where the format has one; returns false in *fused_done when not).
absl::Status Product(const DeviceMatrix::Impl& w, cublasHandle_t cublas, const float* x, int n,
                     float* y, const LowRankEpilogue& epi, bool* fused_done,
                     cudaStream_t stream) {
  *fused_done = false;
  switch (w.format) {
    case MatrixFormat::kQuant:
      *fused_done = true;
      if (n <= kMaxGemvBatch) {
        if (n == 0) return absl::OkStatus();
        return LaunchQuantGemv(w.packed.view, x, w.cols, n, y, w.rows, epi, 0, stream);
      }
      return LaunchQuantGemm(w.packed.view, x, w.cols, n, y, w.rows, epi, 0, stream);
    case MatrixFormat::kSparse24:
    case MatrixFormat::kSparse24Quant:
      *fused_done = true;
      return LaunchSparse24Gemv(w.sparse, w.sparse_bits, x, w.cols, n, y, w.rows, epi, 0, stream);
    default: {
      EORA_ASSIGN_OR_RETURN_CUDA(
          scratch, DeviceBuffer::Allocate(DenseGemmScratchBytes(w.dense_type, n, w.cols)));
      EORA_RETURN_IF_ERROR_CUDA(LaunchDenseGemm(cublas, w.dense_type, w.dense.data(), w.rows,
                                                w.cols, x, n, w.cols, y, w.rows, scratch.data(),
                                                stream));
      // The scratch buffer is freed on return: finish using it first.
      return CudaStatus(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    }
  }
}

}  // namespace

absl::Status CudaContext::MatMul(const DeviceMatrix& w, const float* x, int n, float* y) {
  return MatMulLowRank(w, {}, x, n, y, /*fused=*/true);
}

absl::Status CudaContext::MatMulLowRank(const DeviceMatrix& w,
                                        std::span<const DeviceLowRankSegment> segments,
                                        const float* x, int n, float* y, bool fused) {
  const DeviceMatrix::Impl& m = w.impl();
  cudaStream_t st = s_->stream;
  EORA_ASSIGN_OR_RETURN_CUDA(dx, ToDevice(x, static_cast<size_t>(n) * m.cols));
  EORA_ASSIGN_OR_RETURN_CUDA(dy, DeviceBuffer::Allocate(static_cast<size_t>(n) * m.rows * 4));
  EORA_ASSIGN_OR_RETURN_CUDA(lr, BuildLowRank(segments, n, m.cols, m.rows));
  LowRankEpilogue epi;
  const bool has_lr = lr.tables.factors != nullptr;
  if (has_lr) {
    EORA_RETURN_IF_ERROR_CUDA(LaunchLowRankA(lr.tables, dx.as<float>(), m.cols, lr.u.as<float>(), st));
    if (fused) {
      epi.tables = lr.tables;
      epi.u = lr.u.as<const float>();
    }
  }
  bool fused_done = false;
  EORA_RETURN_IF_ERROR_CUDA(Product(m, s_->cublas, dx.as<float>(), n, dy.as<float>(), epi,
                                    &fused_done, st));
  if (has_lr && !(fused && fused_done))
    EORA_RETURN_IF_ERROR_CUDA(
        LaunchLowRankB(lr.tables, lr.u.as<const float>(), n, m.rows, dy.as<float>(), m.rows, st));
  EORA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
  return dy.CopyToHost(y, static_cast<size_t>(n) * m.rows * 4);
}

absl::Status CudaContext::LowRank(std::span<const DeviceLowRankSegment> segments, const float* x,
                                  int n, int in, int out, float* y) {
  cudaStream_t st = s_->stream;
  EORA_ASSIGN_OR_RETURN_CUDA(lr, BuildLowRank(segments, n, in, out));
  if (lr.tables.factors == nullptr) return absl::OkStatus();
  EORA_ASSIGN_OR_RETURN_CUDA(dx, ToDevice(x, static_cast<size_t>(n) * in));
  EORA_ASSIGN_OR_RETURN_CUDA(dy, ToDevice(y, static_cast<size_t>(n) * out));
  EORA_RETURN_IF_ERROR_CUDA(LaunchLowRankA(lr.tables, dx.as<float>(), in, lr.u.as<float>(), st));
  EORA_RETURN_IF_ERROR_CUDA(
      LaunchLowRankB(lr.tables, lr.u.as<const float>(), n, out, dy.as<float>(), out, st));
  EORA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(st));
  return dy.CopyToHost(y, static_cast<size_t>(n) * out * 4);
}

absl::Status CudaContext::RmsNorm(const float* x, const float* w, int rows, int dim, float eps,
                                  float* out) {
  const size_t count = static_cast<size_t>(rows) * dim;
  EORA_ASSIGN_OR_RETURN_CUDA(dx, ToDevice(x, count));
  EORA_ASSIGN_OR_RETURN_CUDA(dw, ToDevice(w, static_cast<size_t>(dim)));
  EORA_RETURN_IF_ERROR_CUDA(
      LaunchRmsNorm(dx.as<float>(), dw.as<float>(), rows, dim, eps, dx.as<float>(), s_->stream));
  EORA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s_->stream));
  return dx.CopyToHost(out, count * 4);
}

absl::Status CudaContext::Rope(float* v, int rows, int n_heads, int head_dim, const int* pos,
                               float theta, RopeStyle style) {
  const size_t count = static_cast<size_t>(rows) * n_heads * head_dim;
  EORA_ASSIGN_OR_RETURN_CUDA(dv, ToDevice(v, count));
  EORA_ASSIGN_OR_RETURN_CUDA(dp, ToDevice(pos, static_cast<size_t>(rows)));
  EORA_RETURN_IF_ERROR_CUDA(LaunchRope(dv.as<float>(), rows, n_heads * head_dim, n_heads, head_dim,
                                       dp.as<const int>(), theta,
                                       style == RopeStyle::kInterleaved, s_->stream));
  EORA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s_->stream));
  return dv.CopyToHost(v, count * 4);
}

absl::Status CudaContext::SwiGlu(const float* gate, const float* up, size_t n, float* out) {
  EORA_ASSIGN_OR_RETURN_CUDA(dg, ToDevice(gate, n));
  EORA_ASSIGN_OR_RETURN_CUDA(du, ToDevice(up, n));
  EORA_RETURN_IF_ERROR_CUDA(
      LaunchSwiGlu(dg.as<float>(), du.as<float>(), n, dg.as<float>(), s_->stream));
  EORA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s_->stream));
  return dg.CopyToHost(out, n * 4);
}

absl::Status CudaContext::Argmax(const float* logits, int rows, int vocab, int* ids) {
  EORA_ASSIGN_OR_RETURN_CUDA(dl, ToDevice(logits, static_cast<size_t>(rows) * vocab));
  EORA_ASSIGN_OR_RETURN_CUDA(di, DeviceBuffer::Allocate(static_cast<size_t>(rows) * sizeof(int)));
  EORA_RETURN_IF_ERROR_CUDA(
      LaunchArgmax(dl.as<float>(), rows, vocab, vocab, di.as<int>(), s_->stream));
  EORA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s_->stream));
  return di.CopyToHost(ids, static_cast<size_t>(rows) * sizeof(int));
}

namespace {

struct PagedTables {
  DeviceBuffer pos, tok_table, blocks;
};

absl::StatusOr<PagedTables> UploadPaged(const PagedAttentionInput& in) {
  std::vector<int> starts, flat, tok_table(in.tokens);
  for (const auto& t : in.block_tables) {
    starts.push_back(static_cast<int>(flat.size()));
    flat.insert(flat.end(), t.begin(), t.end());
  }
  for (int t = 0; t < in.tokens; ++t) {
    const int s = in.seq_of_token[t];
    if (s < 0 || s >= static_cast<int>(starts.size()))
      return absl::InvalidArgumentError(absl::StrCat("token ", t, ": no sequence ", s));
    if (in.pos[t] / kKvBlockTokens >= static_cast<int>(in.block_tables[s].size()))
      return absl::InvalidArgumentError(absl::StrCat("token ", t, ": position ", in.pos[t],
                                                     " beyond its block table"));
    tok_table[t] = starts[s];
  }
  if (flat.empty()) flat.push_back(0);
  PagedTables p;
  EORA_ASSIGN_OR_RETURN_CUDA(dp, ToDevice(in.pos, static_cast<size_t>(in.tokens)));
  EORA_ASSIGN_OR_RETURN_CUDA(dt, ToDevice(tok_table));
  EORA_ASSIGN_OR_RETURN_CUDA(db, ToDevice(flat));
  p.pos = std::move(dp);
  p.tok_table = std::move(dt);
  p.blocks = std::move(db);
  return p;
}

}  // namespace

absl::Status CudaContext::PagedAttention(const PagedAttentionInput& in, float* out) {
  if (in.tokens == 0) return absl::OkStatus();
  const size_t qcount = static_cast<size_t>(in.tokens) * in.n_heads * in.head_dim;
  EORA_ASSIGN_OR_RETURN_CUDA(tb, UploadPaged(in));
  EORA_ASSIGN_OR_RETURN_CUDA(dq, ToDevice(in.q, qcount));
  EORA_ASSIGN_OR_RETURN_CUDA(dpool, ToDevice(in.pool, in.pool_floats));
  EORA_ASSIGN_OR_RETURN_CUDA(dout, DeviceBuffer::Allocate(qcount * 4));
  AttentionArgs a;
  a.q = dq.as<const float>();
  a.out = dout.as<float>();
  a.tokens = in.tokens;
  a.pos = tb.pos.as<const int>();
  a.tok_table = tb.tok_table.as<const int>();
  a.block_tables = tb.blocks.as<const int>();
  a.pool = dpool.as<const float>();
  a.n_layers = in.n_layers;
  a.layer = in.layer;
  a.n_heads = in.n_heads;
  a.n_kv_heads = in.n_kv_heads;
  a.head_dim = in.head_dim;
  a.scale = in.scale;
  EORA_RETURN_IF_ERROR_CUDA(LaunchAttention(a, s_->stream));
  EORA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s_->stream));
  return dout.CopyToHost(out, qcount * 4);
}

absl::Status CudaContext::KvStore(const PagedAttentionInput& layout, const float* k, const float* v,
                                  float* pool) {
  if (layout.tokens == 0) return absl::OkStatus();
  const int kvd = layout.n_kv_heads * layout.head_dim;
  const size_t count = static_cast<size_t>(layout.tokens) * kvd;
  EORA_ASSIGN_OR_RETURN_CUDA(tb, UploadPaged(layout));
  EORA_ASSIGN_OR_RETURN_CUDA(dk, ToDevice(k, count));
  EORA_ASSIGN_OR_RETURN_CUDA(dv, ToDevice(v, count));
  EORA_ASSIGN_OR_RETURN_CUDA(dpool, ToDevice(pool, layout.pool_floats));
  EORA_RETURN_IF_ERROR_CUDA(LaunchKvStore(dk.as<const float>(), dv.as<const float>(), layout.tokens,
                                          kvd, tb.pos.as<const int>(), tb.tok_table.as<const int>(),
                                          tb.blocks.as<const int>(), dpool.as<float>(),
                                          layout.n_layers, layout.layer, s_->stream));
  EORA_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s_->stream));
  return dpool.CopyToHost(pool, layout.pool_floats * 4);
}

}  // namespace eora::cuda
