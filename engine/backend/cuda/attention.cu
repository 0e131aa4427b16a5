#include "engine/backend/cuda/attention.cuh"
#include "engine/backend/cuda/cuda_status.h"

namespace eora::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kPerLane = kMaxHeadDim / 32;

__global__ void __launch_bounds__(kWarps * 32) AttentionKernel(AttentionArgs a) {
  __shared__ float sm[kWarps], sl[kWarps];
  __shared__ float sacc[kWarps][kMaxHeadDim];
  const int t = blockIdx.x / a.n_heads;
  const int h = blockIdx.x % a.n_heads;
  const int kvh = h / (a.n_heads / a.n_kv_heads);
  const int hd = a.head_dim, kvd = a.n_kv_heads * hd, qd = a.n_heads * hd;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const float* q = a.q + static_cast<size_t>(t) * qd + static_cast<size_t>(h) * hd;
  float qr[kPerLane], acc[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int d = lane + 32 * j;
    qr[j] = d < hd ? q[d] : 0.f;
    acc[j] = 0.f;
  }
  const int n = a.pos[t] + 1;
  const int* table = a.block_tables + a.tok_table[t];
  float m = -INFINITY, l = 0.f;
  for (int p = warp; p < n; p += kWarps) {
    const int block = table[p / kKvBlockTokens];
    const size_t base = ((static_cast<size_t>(block) * a.n_layers + a.layer) * 2) * kKvBlockTokens;
    const float* kp = a.pool + (base + p % kKvBlockTokens) * kvd + static_cast<size_t>(kvh) * hd;
    const float* vp = kp + static_cast<size_t>(kKvBlockTokens) * kvd;
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int d = lane + 32 * j;
      if (d < hd) s = fmaf(qr[j], kp[d], s);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    s *= a.scale;
    const float mn = fmaxf(m, s);
    const float corr = expf(m - mn);  // 0 on the first position (m = -inf)
    const float e = expf(s - mn);
    l = l * corr + e;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int d = lane + 32 * j;
      acc[j] = acc[j] * corr + (d < hd ? e * vp[d] : 0.f);
    }
    m = mn;
  }
  if (lane == 0) {
    sm[warp] = m;
    sl[warp] = l;
  }
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int d = lane + 32 * j;
    if (d < hd) sacc[warp][d] = acc[j];
  }
  __syncthreads();
  float M = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w)
    if (sl[w] > 0.f) M = fmaxf(M, sm[w]);
  float L = 0.f;
  float wgt[kWarps];
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    wgt[w] = sl[w] > 0.f ? expf(sm[w] - M) : 0.f;
    L += sl[w] * wgt[w];
  }
  const float inv = 1.f / L;
  float* out = a.out + static_cast<size_t>(t) * qd + static_cast<size_t>(h) * hd;
  for (int d = threadIdx.x; d < hd; d += kWarps * 32) {
    float o = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) o += sacc[w][d] * wgt[w];
    out[d] = o * inv;
  }
}

}  // namespace

absl::Status LaunchAttention(const AttentionArgs& a, cudaStream_t stream) {
  if (a.head_dim > kMaxHeadDim || a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads != 0)
    return absl::InvalidArgumentError(absl::StrCat("attention: head_dim ", a.head_dim, ", heads ",
                                                   a.n_heads, "/", a.n_kv_heads));
  if (a.tokens == 0) return absl::OkStatus();
  AttentionKernel<<<a.tokens * a.n_heads, kWarps * 32, 0, stream>>>(a);
  return LaunchStatus("AttentionKernel");
}

}  // namespace eora::cuda
