// RoPE + paged KV write on the GPU over the fused q|k|v rows. Full rotation of a head_dim of
// 64, 128 or 256 takes the vectorised per-token kernel below; anything else (partial rotation,
// other head sizes) the general kernel: one warp per (token, head).
//
// General kernel: lane j holds the pairs (i, i + rot_dim/2) for i in [j*kP, j*kP + kP), so each
// rotation pair lives in one lane and the warp reads each half of a head as one contiguous,
// coalesced run (4 bytes per lane for head_dim 128). A q head is optionally RMS-normalised (warp
// sum of squares), rotated and stored in place or to q_out; a k head likewise, stored into its
// cache slot; a v head is copied to its slot in 16-byte pieces. Dimensions past rot_dim pass
// through (normalised when a norm is given). Angles are float(pos) * inv_freq[i] with full-range
// sincosf, as the CPU reference computes them; products are rounded before the sums
// (__fmul_rn) as in PyTorch, so the rotation matches the reference to the last f32 bit before
// the bf16 store, up to sincosf's ulp.
#include "cuda-common.h"
#include "pp/kernels/cuda/rope.h"

namespace pp::kernels::cuda {
namespace {

constexpr int kThreads = 256;

template <int kP>
__device__ __forceinline__ void load_pairs(const __nv_bfloat16* p, int lane, int half, bool full,
                                           float (&x)[kP]) {
  if (full && kP % 2 == 0) {
#pragma unroll
    for (int j = 0; j < kP; j += 2) {
      const float2 f =
          __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p + lane * kP + j));
      x[j] = f.x;
      x[j + 1] = f.y;
    }
  } else {
#pragma unroll
    for (int j = 0; j < kP; ++j) {
      const int i = lane * kP + j;
      x[j] = i < half ? __bfloat162float(p[i]) : 0.0f;
    }
  }
}

template <int kP>
__device__ __forceinline__ void store_pairs(__nv_bfloat16* p, int lane, int half, bool full,
                                            const float (&x)[kP]) {
  if (full && kP % 2 == 0) {
#pragma unroll
    for (int j = 0; j < kP; j += 2) {
      *reinterpret_cast<__nv_bfloat162*>(p + lane * kP + j) = __floats2bfloat162_rn(x[j], x[j + 1]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < kP; ++j) {
      const int i = lane * kP + j;
      if (i < half) p[i] = __float2bfloat16(x[j]);
    }
  }
}

template <int kP>
__global__ void rope_kv_kernel(RopeKvParams p) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (int64_t(blockIdx.x) * kThreads + threadIdx.x) >> 5;
  const int64_t n_kv = p.kv.n_head_kv, dim = p.kv.head_dim;
  const int64_t heads = p.n_head + 2 * n_kv;
  if (warp >= p.n_tokens * heads) return;
  const int64_t t = warp / heads;
  const int64_t h = warp % heads;
  const __nv_bfloat16* src = p.qkv + warp * dim;
  const int64_t slot = p.slots[t];

  if (h >= p.n_head + n_kv) {  // v: a plain copy into the cache
    if (slot < 0) return;
    __nv_bfloat16* dst = p.kv.v + (slot * n_kv + (h - p.n_head - n_kv)) * dim;
    if (dim % 8 == 0) {
      for (int64_t i = lane; i < dim / 8; i += 32) {
        reinterpret_cast<detail::Bf16x8*>(dst)[i] = reinterpret_cast<const detail::Bf16x8*>(src)[i];
      }
    } else {
      for (int64_t i = lane; i < dim; i += 32) dst[i] = src[i];
    }
    return;
  }

  const bool is_q = h < p.n_head;
  __nv_bfloat16* dst;
  if (is_q) {
    dst = p.q_out ? p.q_out + (t * p.n_head + h) * dim : p.qkv + warp * dim;
  } else {
    if (slot < 0) return;
    dst = p.kv.k + (slot * n_kv + (h - p.n_head)) * dim;
  }
  const __nv_bfloat16* norm = is_q ? p.q_norm : p.k_norm;
  const int half = int(p.rot_dim / 2);
  const bool full = half == 32 * kP;

  float x1[kP], x2[kP];
  load_pairs<kP>(src, lane, half, full, x1);
  load_pairs<kP>(src + half, lane, half, full, x2);

  float inv = 1.0f;
  if (norm) {
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < kP; ++j) ss += x1[j] * x1[j] + x2[j] * x2[j];
    for (int64_t i = p.rot_dim + lane; i < dim; i += 32) {
      const float v = __bfloat162float(src[i]);
      ss += v * v;
    }
    ss = detail::warp_sum(ss);
    inv = rsqrtf(ss / float(dim) + p.norm_eps);
#pragma unroll
    for (int j = 0; j < kP; ++j) {
      const int i = lane * kP + j;
      if (i < half) {
        x1[j] = __bfloat162float(norm[i]) * (x1[j] * inv);
        x2[j] = __bfloat162float(norm[i + half]) * (x2[j] * inv);
      }
    }
  }

  const float pos = float(p.pos[t]);
#pragma unroll
  for (int j = 0; j < kP; ++j) {
    const int i = lane * kP + j;
    float s = 0.0f, c = 1.0f;
    if (i < half) sincosf(pos * p.inv_freq[i], &s, &c);
    const float a = __fmul_rn(x1[j], c), b = __fmul_rn(x2[j], s);
    const float d = __fmul_rn(x2[j], c), e = __fmul_rn(x1[j], s);
    x1[j] = a - b;
    x2[j] = d + e;
  }
  store_pairs<kP>(dst, lane, half, full, x1);
  store_pairs<kP>(dst + half, lane, half, full, x2);

  for (int64_t i = p.rot_dim + lane; i < dim; i += 32) {  // dimensions past rot_dim
    float v = __bfloat162float(src[i]);
    if (norm) v = __bfloat162float(norm[i]) * (v * inv);
    dst[i] = __float2bfloat16(v);
  }
}

template <int kP>
cudaError_t launch(const RopeKvParams& p, cudaStream_t stream) {
  const int64_t warps = p.n_tokens * (p.n_head + 2 * p.kv.n_head_kv);
  const int64_t blocks = (warps * 32 + kThreads - 1) / kThreads;
  rope_kv_kernel<kP><<<unsigned(blocks), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

// The fast path (rot_dim == head_dim, half a multiple of 8): one block per token. The block
// first tabulates cos and sin of the token's angles in shared memory (once, not once per head),
// then each warp takes 32 / kL heads at a time, kL lanes per head, each lane 8 consecutive
// elements of each half (16-byte loads and stores), the norm's sum of squares reduced over the
// head's kL lanes.
constexpr int kMaxHalf = 256;
constexpr int kVecThreads = 128;  // 4 warps: 16 heads of 128 per pass, 48 = 3 even passes

template <int kL>
__global__ void rope_kv_vec_kernel(RopeKvParams p) {
  __shared__ __align__(16) float s_cos[kMaxHalf];
  __shared__ __align__(16) float s_sin[kMaxHalf];
  constexpr int kHeadsPerWarp = 32 / kL;
  const int64_t t = blockIdx.x;
  const int half = int(p.rot_dim / 2);
  const float pos = float(p.pos[t]);
  for (int i = threadIdx.x; i < half; i += kVecThreads)
    sincosf(pos * p.inv_freq[i], &s_sin[i], &s_cos[i]);
  __syncthreads();

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int sub = lane / kL, j = lane % kL;
  const int64_t n_kv = p.kv.n_head_kv, dim = p.kv.head_dim;
  const int64_t heads = p.n_head + 2 * n_kv;
  const int64_t slot = p.slots[t];
  const int c0 = j * 8;  // this lane's first element in each half
  float cs[8], sn[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    cs[e] = s_cos[c0 + e];
    sn[e] = s_sin[c0 + e];
  }
  for (int64_t h0 = int64_t(warp) * kHeadsPerWarp; h0 < heads;
       h0 += int64_t(kVecThreads / 32) * kHeadsPerWarp) {
    const int64_t h = h0 + sub;
    const bool active = h < heads;
    const __nv_bfloat16* src = p.qkv + (t * heads + (active ? h : heads - 1)) * dim;
    float x1[8], x2[8];
    detail::load_f32x8(src + c0, x1);
    detail::load_f32x8(src + half + c0, x2);
    float ss = 0.0f;
#pragma unroll
    for (int e = 0; e < 8; ++e) ss += x1[e] * x1[e] + x2[e] * x2[e];
#pragma unroll
    for (int off = kL / 2; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    if (!active) continue;

    if (h >= p.n_head + n_kv) {  // v: copied to its slot
      if (slot < 0) continue;
      __nv_bfloat16* dst = p.kv.v + (slot * n_kv + (h - p.n_head - n_kv)) * dim;
      detail::store_f32x8(dst + c0, x1);
      detail::store_f32x8(dst + half + c0, x2);
      continue;
    }
    const bool is_q = h < p.n_head;
    __nv_bfloat16* dst;
    if (is_q) {
      dst = p.q_out ? p.q_out + (t * p.n_head + h) * dim : p.qkv + (t * heads + h) * dim;
    } else {
      if (slot < 0) continue;
      dst = p.kv.k + (slot * n_kv + (h - p.n_head)) * dim;
    }
    const __nv_bfloat16* norm = is_q ? p.q_norm : p.k_norm;
    if (norm) {
      const float inv = rsqrtf(ss / float(dim) + p.norm_eps);
      float w1[8], w2[8];
      detail::load_f32x8(norm + c0, w1);
      detail::load_f32x8(norm + half + c0, w2);
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        x1[e] = w1[e] * (x1[e] * inv);
        x2[e] = w2[e] * (x2[e] * inv);
      }
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float a = __fmul_rn(x1[e], cs[e]), b = __fmul_rn(x2[e], sn[e]);
      const float d = __fmul_rn(x2[e], cs[e]), f = __fmul_rn(x1[e], sn[e]);
      x1[e] = a - b;
      x2[e] = d + f;
    }
    detail::store_f32x8(dst + c0, x1);
    detail::store_f32x8(dst + half + c0, x2);
  }
}

template <int kL>
cudaError_t launch_vec(const RopeKvParams& p, cudaStream_t stream) {
  rope_kv_vec_kernel<kL><<<unsigned(p.n_tokens), kVecThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

}  // namespace

cudaError_t rope_kv_write(const RopeKvParams& p, cudaStream_t stream) {
  if (p.n_tokens == 0) return cudaSuccess;
  if (!p.qkv || !p.pos || !p.slots || !p.inv_freq || !p.kv.k || !p.kv.v) {
    return cudaErrorInvalidValue;
  }
  const int64_t dim = p.kv.head_dim;
  if (dim <= 0 || p.rot_dim <= 0 || p.rot_dim % 2 != 0 || p.rot_dim > dim || p.n_head <= 0 ||
      p.kv.n_head_kv <= 0) {
    return cudaErrorInvalidValue;
  }
  const int64_t half = p.rot_dim / 2;
  const bool vec = p.rot_dim == dim && half % 8 == 0 && aligned16(p.qkv) && aligned16(p.q_out) &&
                   aligned16(p.kv.k) && aligned16(p.kv.v) && aligned16(p.q_norm) &&
                   aligned16(p.k_norm);
  if (vec && half == 32) return launch_vec<4>(p, stream);
  if (vec && half == 64) return launch_vec<8>(p, stream);
  if (vec && half == 128) return launch_vec<16>(p, stream);
  if (half <= 32) return launch<1>(p, stream);
  if (half <= 64) return launch<2>(p, stream);
  if (half <= 128) return launch<4>(p, stream);
  if (half <= 256) return launch<8>(p, stream);
  return cudaErrorInvalidValue;
}

}  // namespace pp::kernels::cuda
