// Paged causal attention with GQA on the tensor cores (FlashAttention-2 style, mma.sync).
//
// Rows: the query rows of one (sequence, KV head) are its tokens times the group's q heads,
// row = token_in_sequence * group + head_in_group. A warp owns 16 rows (one m16 tile); Q stays
// in registers as A fragments, each 64-key K/V tile is copied to shared memory (cp.async; prefill
// double-buffers, the next tile loading while this one is used, and decode grids smaller than
// the GPU keep four tiles in flight; rows padded by 16 bytes so fragment loads hit distinct
// banks), S = Q K^T and O += P V run as
// m16n8k16 bf16 MMAs with f32 accumulators, and the softmax is online in the log2 domain.
//
// Two CTA shapes (4 warps each):
//   prefill: 4 warps x 16 rows, each warp all head_dim columns; the K/V tile is shared by the
//            4 warps; one CTA walks the whole causal key range of its 64 rows.
//   decode:  1 x 16 rows (all q heads of a KV head for up to 16/group tokens); the 4 warps
//            compute the same S and each its quarter of the output columns, so every K/V tile
//            is read from memory once for the whole group. The key range is split over CTAs
//            in 512-key pieces (flash-decoding); partial (max, sum, O) go to the workspace and
//            a second kernel folds them.
// Determinism: every row is computed the same way in both shapes. Within a 512-key chunk the
// online softmax runs over the same tiles in the same order (extra fully-masked tiles, where a
// CTA's rows reach further, change nothing: p = 0 exactly, the max does not move); at each
// chunk end the chunk's state is folded into the running state with the same expression
// (explicit __fmul_rn / __fmaf_rn) that the split-merge kernel uses over the chunks in order.
#include <algorithm>
#include <cmath>

#include "cuda-common.h"
#include "pp/kernels/cuda/attention.h"

namespace pp::kernels::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int64_t kChunk = 512;      // fold granularity and decode split size, in keys
constexpr int64_t kMaxSplits = 256;  // beyond 131072 keys a decode split holds several chunks
constexpr int64_t kFewCtas = 128;    // decode grids smaller than this take the 4-tile ring
constexpr float kLog2e = 1.4426950408889634f;

template <int D>
struct Shape {
  static constexpr int kKeys = D <= 128 ? 64 : 32;  // keys per tile
  static constexpr int kStride = D + 8;             // bf16 per shared row (16 bytes of padding)
};

struct Args {
  AttentionParams p;
  int64_t group = 1;
  int64_t split_keys = 0;
  int n_splits = 1;
  float scale_log2 = 0.0f;
  float* ws_o = nullptr;   // [n_tokens, n_head, n_splits, head_dim] or nullptr (write out)
  float* ws_ml = nullptr;  // [n_tokens, n_head, n_splits, 2]: max (log2 domain), sum
};

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t s = uint32_t(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

// d += a * b: m16n8k16, A row-major bf16, B column-major bf16, f32 accumulators.
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem) {
  const uint32_t s = uint32_t(__cvta_generic_to_shared(smem));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(s));
}

__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

// One fold step (m, l, o) <- (m, l, o) then (mc, lc, oc): the single expression both the
// attention kernel and the merge kernel use, so their results agree bit for bit.
struct FoldWeights {
  float a, b;
  bool skip;
};
__device__ __forceinline__ FoldWeights fold_weights(float m, float mc) {
  const float mn = fmaxf(m, mc);
  if (mn == -INFINITY) return {0.0f, 0.0f, true};
  return {exp2f(m - mn), exp2f(mc - mn), false};
}
__device__ __forceinline__ float fold(float x, float a, float xc, float b) {
  return __fmaf_rn(xc, b, __fmul_rn(x, a));
}

// kStages K/V tile buffers in a ring: the next kStages - 1 tiles load while one is used.
template <int D, int kRowWarps, int kStages>
__global__ void __launch_bounds__(kThreads, kRowWarps == 4 ? 1 : 4) attention_kernel(Args args) {
  detail::launch_dependents();
  constexpr int kColWarps = 4 / kRowWarps;
  constexpr int kKeys = Shape<D>::kKeys;
  constexpr int kStride = Shape<D>::kStride;
  constexpr int kCols = D / kColWarps;  // output columns per warp
  constexpr int kNT = kCols / 8;        // n8 output tiles per warp
  constexpr int kKS = D / 16;           // k16 steps of Q K^T
  constexpr int kSN = kKeys / 8;        // n8 tiles of S
  static_assert(kNT % 2 == 0, "the V loads take two n8 tiles at a time");

  // The K/V tile buffers, then the folded O.
  extern __shared__ __align__(16) unsigned char smem[];
  __nv_bfloat16* const kv_tiles = reinterpret_cast<__nv_bfloat16*>(smem);
  float* om = reinterpret_cast<float*>(kv_tiles + kStages * 2 * kKeys * kStride);
  __shared__ int s_kv_end[4];

  const AttentionParams& p = args.p;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, tq = lane & 3;
  const int row_warp = warp / kColWarps, col_warp = warp % kColWarps;
  const int64_t n_kv = p.kv.n_head_kv;
  const int64_t seq = blockIdx.x / n_kv, kvh = blockIdx.x % n_kv;
  const int64_t tile = int64_t(gridDim.y) - 1 - blockIdx.y;  // longest causal ranges first
  const int split = blockIdx.z;
  const int64_t group = args.group;
  const int64_t q_begin = p.seq_start[seq];
  const int64_t n_rows = (p.seq_start[seq + 1] - q_begin) * group;
  const int64_t cta_row0 = tile * 16 * kRowWarps;
  if (cta_row0 >= n_rows) return;

  const int64_t r0 = cta_row0 + row_warp * 16 + g, r1 = r0 + 8;
  const bool v0 = r0 < n_rows, v1 = r1 < n_rows;
  const int64_t tok0 = q_begin + r0 / group, tok1 = q_begin + r1 / group;
  const int pos0 = v0 ? p.q_pos[tok0] : -1;
  const int pos1 = v1 ? p.q_pos[tok1] : -1;
  const int64_t head0 = kvh * group + r0 % group, head1 = kvh * group + r1 % group;

  // The CTA's causal key range: up to the furthest position among its rows.
  int end = max(pos0, pos1) + 1;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) end = max(end, __shfl_xor_sync(0xffffffffu, end, off));
  if (lane == 0) s_kv_end[warp] = end;
  __syncthreads();
  const int64_t kv_end = max(max(s_kv_end[0], s_kv_end[1]), max(s_kv_end[2], s_kv_end[3]));
  const int64_t range_begin = int64_t(split) * args.split_keys;
  const int64_t range_end = min(kv_end, range_begin + args.split_keys);

  // Q as A fragments: rows r0 (a0, a2) and r1 (a1, a3), columns 2tq and 2tq + 8 of each k16.
  uint32_t qf[kKS][4];
  {
    const __nv_bfloat16* q0 = p.q + (tok0 * p.n_head + head0) * D;
    const __nv_bfloat16* q1 = p.q + (tok1 * p.n_head + head1) * D;
#pragma unroll
    for (int k = 0; k < kKS; ++k) {
      const int c = k * 16 + 2 * tq;
      qf[k][0] = v0 ? *reinterpret_cast<const uint32_t*>(q0 + c) : 0u;
      qf[k][1] = v1 ? *reinterpret_cast<const uint32_t*>(q1 + c) : 0u;
      qf[k][2] = v0 ? *reinterpret_cast<const uint32_t*>(q0 + c + 8) : 0u;
      qf[k][3] = v1 ? *reinterpret_cast<const uint32_t*>(q1 + c + 8) : 0u;
    }
  }

  // Chunk state (m in the log2 domain, this thread's share of l, o) and the folded state.
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
  float o[kNT][4];
  float mf[2] = {-INFINITY, -INFINITY}, lf[2] = {0.0f, 0.0f};
  float* omw = om + warp * (kNT * 4 * 32) + lane;
#pragma unroll
  for (int n = 0; n < kNT; ++n) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      o[n][j] = 0.0f;
      omw[(n * 4 + j) * 32] = 0.0f;
    }
  }

  auto fold_chunk = [&]() {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float lc = quad_sum(l[r]);
      const FoldWeights w = fold_weights(mf[r], m[r]);
      if (!w.skip) {
        lf[r] = fold(lf[r], w.a, lc, w.b);
#pragma unroll
        for (int n = 0; n < kNT; ++n) {
#pragma unroll
          for (int j = 0; j < 2; ++j) {
            float* f = omw + (n * 4 + 2 * r + j) * 32;
            *f = fold(*f, w.a, o[n][2 * r + j], w.b);
          }
        }
        mf[r] = fmaxf(mf[r], m[r]);
      }
      m[r] = -INFINITY;
      l[r] = 0.0f;
#pragma unroll
      for (int n = 0; n < kNT; ++n) o[n][2 * r] = o[n][2 * r + 1] = 0.0f;
    }
  };

  const int32_t* table = p.block_tables + seq * p.max_blocks;
  const int32_t bs = int32_t(p.kv.block_size);
  // K and V tile starting at key k0 into buffer `buf`; keys past the range are zeros (never NaN
  // garbage: P is 0 there but 0 * NaN would poison O). The slots of a whole 512-key chunk are
  // looked up together, in parallel, when its first tile loads (a tile never straddles chunks:
  // ranges start on chunk boundaries), so a tile's copies issue without first waiting for
  // block-table reads. Every earlier tile's copies were issued before that, after a barrier.
  __shared__ int32_t s_slot[kChunk];
  auto load_tile = [&](int64_t k0, int buf) {
    if (k0 % kChunk == 0) {
      for (int i = threadIdx.x; i < kChunk; i += kThreads) {
        const int64_t kp = k0 + i;
        s_slot[i] = kp < range_end ? table[kp / bs] * bs + int32_t(kp % bs) : -1;
      }
      __syncthreads();
    }
    const int64_t in_chunk = k0 % kChunk;
    __nv_bfloat16* ks = kv_tiles + buf * 2 * kKeys * kStride;
    __nv_bfloat16* vs = ks + kKeys * kStride;
#pragma unroll
    for (int c = threadIdx.x; c < kKeys * (D / 8); c += kThreads) {
      const int key = c / (D / 8), part = c % (D / 8);
      const int32_t slot = s_slot[in_chunk + key];
      __nv_bfloat16* dk = ks + key * kStride + part * 8;
      __nv_bfloat16* dv = vs + key * kStride + part * 8;
      if (slot >= 0) {
        const int64_t off = (int64_t(slot) * n_kv + kvh) * D + part * 8;
        cp_async16(dk, p.kv.k + off);
        cp_async16(dv, p.kv.v + off);
      } else {
        *reinterpret_cast<uint4*>(dk) = make_uint4(0, 0, 0, 0);
        *reinterpret_cast<uint4*>(dv) = make_uint4(0, 0, 0, 0);
      }
    }
    cp_async_commit();
  };

  // Prefill CTAs double-buffer the tiles; decode CTAs keep one buffer so that more of them fit
  // on a multiprocessor (measured: faster for decode at batch 64), or, when there are fewer of
  // them than multiprocessors (small batches), four, so that a CTA waits for memory once per
  // three tiles instead of once per tile. The tiles are used in the same order either way.
  // Every step commits one cp.async group (empty past the range) so that waiting for all but
  // the newest kStages - 1 groups always means "this step's tile is in".
  if constexpr (kStages > 1) {
    for (int st = 0; st < kStages - 1; ++st) {
      const int64_t k = range_begin + int64_t(st) * kKeys;
      if (k < range_end) {
        load_tile(k, st);
      } else {
        cp_async_commit();
      }
    }
  }
  int64_t step = 0;
  for (int64_t k0 = range_begin; k0 < range_end; k0 += kKeys, ++step) {
    const int buf = int(step % kStages);
    if constexpr (kStages > 1) {
      // Into the buffer the previous step finished with.
      const int64_t kn = k0 + int64_t(kStages - 1) * kKeys;
      if (kn < range_end) {
        load_tile(kn, int((step + kStages - 1) % kStages));
      } else {
        cp_async_commit();
      }
      cp_async_wait<kStages - 1>();
    } else {
      load_tile(k0, 0);
      cp_async_wait<0>();
    }
    __syncthreads();
    if (k0 != range_begin && k0 % kChunk == 0) fold_chunk();
    const __nv_bfloat16* ks = kv_tiles + buf * 2 * kKeys * kStride;
    const __nv_bfloat16* vs = ks + kKeys * kStride;

    // S = Q K^T for 16 rows x kKeys keys.
    float s[kSN][4];
#pragma unroll
    for (int n = 0; n < kSN; ++n) {
      s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
      const __nv_bfloat16* krow = ks + (n * 8 + g) * kStride + 2 * tq;
#pragma unroll
      for (int k = 0; k < kKS; ++k) {
        const uint32_t b0 = *reinterpret_cast<const uint32_t*>(krow + k * 16);
        const uint32_t b1 = *reinterpret_cast<const uint32_t*>(krow + k * 16 + 8);
        mma_bf16(s[n], qf[k], b0, b1);
      }
    }

    // Scale, mask (causal and range), online softmax.
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int n = 0; n < kSN; ++n) {
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int64_t kp = k0 + n * 8 + 2 * tq + j;
        const bool in = kp < range_end;
        s[n][j] = (in && kp <= pos0) ? s[n][j] * args.scale_log2 : -INFINITY;
        s[n][2 + j] = (in && kp <= pos1) ? s[n][2 + j] * args.scale_log2 : -INFINITY;
        mx[0] = fmaxf(mx[0], s[n][j]);
        mx[1] = fmaxf(mx[1], s[n][2 + j]);
      }
    }
    float use[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float mn = fmaxf(m[r], quad_max(mx[r]));
      use[r] = mn == -INFINITY ? 0.0f : mn;
      const float corr = exp2f(m[r] - use[r]);
      m[r] = mn;
      l[r] *= corr;
#pragma unroll
      for (int n = 0; n < kNT; ++n) {
        o[n][2 * r] *= corr;
        o[n][2 * r + 1] *= corr;
      }
    }
    // P as bf16 A fragments; l sums the rounded values that the MMA multiplies.
    uint32_t pf[kKeys / 16][4];
#pragma unroll
    for (int n = 0; n < kSN; ++n) {
      const __nv_bfloat162 lo =
          __floats2bfloat162_rn(exp2f(s[n][0] - use[0]), exp2f(s[n][1] - use[0]));
      const __nv_bfloat162 hi =
          __floats2bfloat162_rn(exp2f(s[n][2] - use[1]), exp2f(s[n][3] - use[1]));
      l[0] += __low2float(lo) + __high2float(lo);
      l[1] += __low2float(hi) + __high2float(hi);
      pf[n / 2][(n % 2) * 2 + 0] = *reinterpret_cast<const uint32_t*>(&lo);
      pf[n / 2][(n % 2) * 2 + 1] = *reinterpret_cast<const uint32_t*>(&hi);
    }

    // O += P V over this warp's columns; B fragments of V by transposing 8x8 loads.
#pragma unroll
    for (int k = 0; k < kKeys / 16; ++k) {
#pragma unroll
      for (int n = 0; n < kNT; n += 2) {
        const int mat = lane >> 3, rr = lane & 7;
        const int key = k * 16 + rr + (mat & 1) * 8;
        const int col = col_warp * kCols + n * 8 + (mat >> 1) * 8;
        uint32_t b[4];
        ldmatrix_x4_trans(b, vs + key * kStride + col);
        mma_bf16(o[n], pf[k], b[0], b[1]);
        mma_bf16(o[n + 1], pf[k], b[2], b[3]);
      }
    }
    __syncthreads();
  }
  fold_chunk();

  // Rows r0 (j = 0, 1) and r1 (j = 2, 3), columns col_warp * kCols + n * 8 + 2tq + {0, 1}.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (!(r == 0 ? v0 : v1)) continue;
    const int64_t tok = r == 0 ? tok0 : tok1, head = r == 0 ? head0 : head1;
    if (args.ws_o == nullptr) {
      __nv_bfloat16* out = p.out + (tok * p.n_head + head) * D;
#pragma unroll
      for (int n = 0; n < kNT; ++n) {
        const int col = col_warp * kCols + n * 8 + 2 * tq;
        const float x0 = omw[(n * 4 + 2 * r) * 32], x1 = omw[(n * 4 + 2 * r + 1) * 32];
        const float y0 = lf[r] > 0.0f ? __fdiv_rn(x0, lf[r]) : 0.0f;
        const float y1 = lf[r] > 0.0f ? __fdiv_rn(x1, lf[r]) : 0.0f;
        *reinterpret_cast<__nv_bfloat162*>(out + col) = __floats2bfloat162_rn(y0, y1);
      }
    } else {
      const int64_t idx = (tok * p.n_head + head) * args.n_splits + split;
      float* wo = args.ws_o + idx * D;
#pragma unroll
      for (int n = 0; n < kNT; ++n) {
        const int col = col_warp * kCols + n * 8 + 2 * tq;
        wo[col] = omw[(n * 4 + 2 * r) * 32];
        wo[col + 1] = omw[(n * 4 + 2 * r + 1) * 32];
      }
      if (col_warp == 0 && tq == 0) {
        args.ws_ml[idx * 2] = mf[r];
        args.ws_ml[idx * 2 + 1] = lf[r];
      }
    }
  }
}

// Folds the split partials of each (token, head) in split order: one block per pair, one
// thread per column.
template <int D>
__global__ void merge_kernel(Args args) {
  detail::launch_dependents();
  const int64_t pair = blockIdx.x;
  const int d = threadIdx.x;
  const int64_t base = pair * args.n_splits;
  float m = -INFINITY, l = 0.0f, o = 0.0f;
  for (int i = 0; i < args.n_splits; ++i) {
    const float mi = args.ws_ml[(base + i) * 2], li = args.ws_ml[(base + i) * 2 + 1];
    const FoldWeights w = fold_weights(m, mi);
    if (w.skip) continue;
    l = fold(l, w.a, li, w.b);
    o = fold(o, w.a, args.ws_o[(base + i) * D + d], w.b);
    m = fmaxf(m, mi);
  }
  args.p.out[pair * D + d] = __float2bfloat16(l > 0.0f ? __fdiv_rn(o, l) : 0.0f);
}

struct Plan {
  bool decode = false;
  int n_splits = 1;
  int64_t split_keys = 0;
  int64_t kv_len = 0;
};

Plan make_plan(const AttentionParams& p) {
  Plan plan;
  const int64_t group = p.n_head / p.kv.n_head_kv;
  plan.kv_len = p.max_kv_len > 0 ? p.max_kv_len : p.max_blocks * p.kv.block_size;
  plan.decode = p.max_q_len * group <= 16;
  const int64_t chunks = std::max<int64_t>(1, (plan.kv_len + kChunk - 1) / kChunk);
  if (!plan.decode) {
    plan.split_keys = chunks * kChunk;
    return plan;
  }
  const int64_t per_split = (chunks + kMaxSplits - 1) / kMaxSplits;
  plan.split_keys = per_split * kChunk;
  plan.n_splits = int((chunks + per_split - 1) / per_split);
  return plan;
}

template <int D, int kRowWarps, int kStages>
size_t smem_bytes() {
  constexpr int kColWarps = 4 / kRowWarps;
  return size_t(kStages * 2 * Shape<D>::kKeys * Shape<D>::kStride) * sizeof(__nv_bfloat16) +
         size_t(4 * (D / kColWarps / 8) * 4 * 32) * sizeof(float);
}

template <int D, int kRowWarps, int kStages>
cudaError_t launch(const Args& args, const Plan& plan, cudaStream_t stream) {
  const size_t smem = smem_bytes<D, kRowWarps, kStages>();
  const cudaError_t attr =
      cudaFuncSetAttribute(attention_kernel<D, kRowWarps, kStages>,
                           cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (attr != cudaSuccess) return attr;
  const AttentionParams& p = args.p;
  const int64_t rows_per_cta = 16 * kRowWarps;
  const int64_t tiles = (p.max_q_len * args.group + rows_per_cta - 1) / rows_per_cta;
  const dim3 grid(unsigned(p.n_seq * p.kv.n_head_kv), unsigned(tiles), unsigned(plan.n_splits));
  attention_kernel<D, kRowWarps, kStages><<<grid, kThreads, smem, stream>>>(args);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || args.ws_o == nullptr) return err;
  merge_kernel<D><<<unsigned(p.n_tokens * p.n_head), D, 0, stream>>>(args);
  return cudaGetLastError();
}

bool valid(const AttentionParams& p) {
  return p.q && p.out && p.kv.k && p.kv.v && p.seq_start && p.q_pos && p.block_tables &&
         p.n_seq > 0 && p.n_head > 0 && p.kv.n_head_kv > 0 && p.n_head % p.kv.n_head_kv == 0 &&
         p.kv.block_size > 0 && p.max_blocks > 0 && p.max_q_len > 0 &&
         (p.kv.head_dim == 64 || p.kv.head_dim == 128 || p.kv.head_dim == 256);
}

size_t workspace_for(const AttentionParams& p, const Plan& plan) {
  if (!plan.decode || plan.n_splits == 1) return 0;
  const size_t per = size_t(p.n_tokens) * size_t(p.n_head) * size_t(plan.n_splits);
  return per * size_t(p.kv.head_dim + 2) * sizeof(float);
}

}  // namespace

size_t attention_workspace_bytes(const AttentionParams& p) {
  if (!valid(p)) return 0;
  return workspace_for(p, make_plan(p));
}

cudaError_t attention(const AttentionParams& p, cudaStream_t stream) {
  if (p.n_tokens == 0) return cudaSuccess;
  if (!valid(p)) return cudaErrorInvalidValue;
  const Plan plan = make_plan(p);
  Args args;
  args.p = p;
  args.group = p.n_head / p.kv.n_head_kv;
  args.split_keys = plan.split_keys;
  args.n_splits = plan.n_splits;
  args.scale_log2 = p.scale * kLog2e;
  const size_t ws = workspace_for(p, plan);
  if (ws > 0) {
    if (p.workspace == nullptr || p.workspace_bytes < ws ||
        reinterpret_cast<uintptr_t>(p.workspace) % 16 != 0) {
      return cudaErrorInvalidValue;
    }
    args.ws_o = static_cast<float*>(p.workspace);
    args.ws_ml = args.ws_o + size_t(p.n_tokens) * size_t(p.n_head) * size_t(plan.n_splits) *
                                 size_t(p.kv.head_dim);
  }
  return detail::dispatch_head_dim(p.kv.head_dim, [&](auto d) {
    constexpr int D = decltype(d)::value;
    if (!plan.decode) return launch<D, 4, 2>(args, plan, stream);
    // Fewer decode CTAs than a GPU has multiprocessors: the deep ring (see the kernel).
    const int64_t ctas = p.n_seq * p.kv.n_head_kv * plan.n_splits;
    return ctas < kFewCtas ? launch<D, 1, 4>(args, plan, stream)
                           : launch<D, 1, 1>(args, plan, stream);
  });
}

}  // namespace pp::kernels::cuda
