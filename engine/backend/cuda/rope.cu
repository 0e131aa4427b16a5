#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/rope.cuh"

namespace eora::cuda {
namespace {

constexpr int kThreads = 128;

// One thread per (token, head, pair).
__global__ void RopeKernel(float* v, int rows, int ld, int n_heads, int head_dim,
                           const int* __restrict__ pos, float theta, bool interleaved) {
  const int half = head_dim / 2;
  const size_t idx = static_cast<size_t>(blockIdx.x) * kThreads + threadIdx.x;
  const size_t per_row = static_cast<size_t>(n_heads) * half;
  if (idx >= per_row * rows) return;
  const int t = static_cast<int>(idx / per_row);
  const int h = static_cast<int>(idx % per_row) / half;
  const int i = static_cast<int>(idx % per_row) % half;
  const double freq = pow(static_cast<double>(theta), -2.0 * i / head_dim);
  const double ang = pos[t] * freq;
  const float cs = static_cast<float>(cos(ang)), sn = static_cast<float>(sin(ang));
  float* head = v + static_cast<size_t>(t) * ld + static_cast<size_t>(h) * head_dim;
  const int i0 = interleaved ? 2 * i : i;
  const int i1 = interleaved ? 2 * i + 1 : i + half;
  const float a = head[i0], b = head[i1];
  head[i0] = a * cs - b * sn;
  head[i1] = a * sn + b * cs;
}

}  // namespace

absl::Status LaunchRope(float* v, int rows, int ld, int n_heads, int head_dim, const int* pos,
                        float theta, bool interleaved, cudaStream_t stream) {
  if (head_dim % 2 != 0) return absl::InvalidArgumentError("rope: odd head_dim");
  const size_t total = static_cast<size_t>(rows) * n_heads * (head_dim / 2);
  if (total == 0) return absl::OkStatus();
  RopeKernel<<<static_cast<unsigned>((total + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      v, rows, ld, n_heads, head_dim, pos, theta, interleaved);
  return LaunchStatus("RopeKernel");
}

}  // namespace eora::cuda
