// Sampling on the GPU: one 512-thread block per row, no global workspace, no sort of the
// vocabulary.
//
// Pass 1 reads the row once for the argmax (lowest id on ties) and the log-softmax normaliser.
// Top-k, top-p and the top-N logprobs are thresholds found by radix selection over an
// order-preserving 32-bit key of the logit (12 + 10 + 10 bits: three sweeps with shared-memory
// histograms of counts, or of fixed-point masses for top-p); ties at a threshold are cut by id,
// lowest first, with a second selection over the ids. The kept set is then a predicate, never
// materialised. The draw sums the kept masses over 16 contiguous id ranges (one per warp), finds
// the range where the running sum passes u * total, and scans it in id order with warp scans.
// All sums are integers (masses in units of 2^-40) or fixed-order trees, so a row's result does
// not depend on thread timing or on the other rows.
#include <cmath>

#include "cuda-common.h"
#include "pp/kernels/cuda/sampling.h"

namespace pp::kernels::cuda {
namespace {

using u64 = unsigned long long;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxBins = 4096;
constexpr double kFixedOne = 1099511627776.0;  // 2^40: fixed-point unit of mass
constexpr int32_t kNoCut = 0x7fffffff;

struct Hist {
  uint32_t cnt[kMaxBins];
  u64 mass[kMaxBins];
};

// Philox4x32-10 exactly as cpu::philox4x32_10.
__device__ float philox_uniform(uint64_t seed, uint64_t step) {
  uint32_t c0 = uint32_t(step), c1 = uint32_t(step >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = uint64_t(0xD2511F53u) * c0;
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * c2;
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0, n1 = uint32_t(p1);
    const uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1, n3 = uint32_t(p0);
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
  }
  return float(c0 >> 8) * (1.0f / 16777216.0f);
}

// Larger logit -> larger key; -0 and +0 share a key (they compare equal on the CPU).
__device__ __forceinline__ uint32_t order_key(float x) {
  const uint32_t u = __float_as_uint(x == 0.0f ? 0.0f : x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

template <LogitsType kType>
__device__ __forceinline__ float load_logit(const void* row, int64_t i) {
  if constexpr (kType == LogitsType::kF32) {
    return static_cast<const float*>(row)[i];
  } else {
    return __bfloat162float(static_cast<const __nv_bfloat16*>(row)[i]);
  }
}

template <typename T>
__device__ __forceinline__ T warp_sum_t(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Block sum in a fixed tree (warp butterflies, then warp totals in order).
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  v = warp_sum_t(v);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < kWarps; ++w) total += scratch[w];
  return total;
}

struct Threshold {
  uint32_t key = 0;       // the selected key
  u64 above = 0;          // weight of the elements with a larger key
  uint32_t count_eq = 0;  // elements with exactly this key
  u64 mass_eq = 0;        // their mass (mass selections only)
};

// Radix selection of the key T with weight(key > T) < target <= weight(key >= T) among the
// elements for which elem(i, key, mass) returns true; weight is 1 per element, or its mass.
template <bool kByMass, typename Elem>
__device__ Threshold radix_select(int64_t n, Elem elem, u64 target, Hist& h) {
  __shared__ uint32_t s_bin;
  __shared__ u64 s_above;
  __shared__ u64 s_warp[kWarps];
  constexpr int kBits[3] = {12, 10, 10};
  constexpr int kShift[3] = {20, 10, 0};
  Threshold t;
  uint32_t prefix = 0;
  for (int pass = 0; pass < 3; ++pass) {
    const int bits = kBits[pass], shift = kShift[pass], nb = 1 << bits;
    for (int b = threadIdx.x; b < nb; b += kThreads) {
      h.cnt[b] = 0;
      h.mass[b] = 0;
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      uint32_t key;
      u64 mass;
      if (!elem(i, key, mass)) continue;
      if (pass > 0 && (key >> (shift + bits)) != prefix) continue;
      const uint32_t bin = (key >> shift) & uint32_t(nb - 1);
      atomicAdd(&h.cnt[bin], 1u);
      if constexpr (kByMass) atomicAdd(&h.mass[bin], mass);
    }
    __syncthreads();
    // Suffix sums over bins: thread k owns bins [k * per, (k + 1) * per).
    const int per = nb / kThreads;
    const int lo = threadIdx.x * per;
    u64 mine = 0;
    for (int b = lo; b < lo + per; ++b) mine += kByMass ? h.mass[b] : u64(h.cnt[b]);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    u64 suffix = mine;  // inclusive suffix within the warp (lanes >= this one)
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const u64 other = __shfl_down_sync(0xffffffffu, suffix, off);
      if (lane + off < 32) suffix += other;
    }
    if (lane == 0) s_warp[warp] = suffix;
    __syncthreads();
    u64 acc = suffix - mine;
    for (int w = warp + 1; w < kWarps; ++w) acc += s_warp[w];
    for (int b = lo + per - 1; b >= lo; --b) {
      const u64 wb = kByMass ? h.mass[b] : u64(h.cnt[b]);
      if (acc < target && acc + wb >= target) {
        s_bin = uint32_t(b);
        s_above = acc;
      }
      acc += wb;
    }
    __syncthreads();
    const uint32_t bin = s_bin;
    const u64 above = s_above;
    prefix = (prefix << bits) | bin;
    target -= above;
    t.above += above;
    t.count_eq = h.cnt[bin];
    t.mass_eq = h.mass[bin];
    __syncthreads();
  }
  t.key = prefix;
  return t;
}

// The id cut among the elements with key == t.key that keeps the `need` lowest ids.
template <typename Keep>
__device__ int32_t id_cut(int64_t n, Keep keep_eq, uint32_t need, uint32_t count_eq, Hist& h) {
  if (need >= count_eq) return kNoCut;
  const Threshold t = radix_select<false>(
      n,
      [&](int64_t i, uint32_t& key, u64& mass) {
        key = ~uint32_t(i);  // larger key = lower id
        mass = 0;
        return keep_eq(i);
      },
      need, h);
  return int32_t(~t.key);
}

template <LogitsType kType>
__global__ void __launch_bounds__(kThreads) sample_kernel(SampleParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  Hist& h = *reinterpret_cast<Hist*>(smem);
  __shared__ double s_double[kWarps];
  __shared__ u64 s_u64[kWarps];
  __shared__ float s_val[kWarps];
  __shared__ int32_t s_idx[kWarps];
  __shared__ int32_t s_top_ids[kMaxTopLogprobs];
  __shared__ float s_top_vals[kMaxTopLogprobs];
  __shared__ int s_top_n;
  __shared__ int32_t s_token;

  const int64_t row = blockIdx.x;
  const int64_t n = p.n_vocab;
  const void* logits = static_cast<const char*>(p.logits) + row *
                                                                (p.row_stride ? p.row_stride : n) *
                                                                (kType == LogitsType::kF32 ? 4 : 2);
  auto x_at = [&](int64_t i) { return load_logit<kType>(logits, i); };
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;

  // Pass 1: argmax (lowest id on ties), then the normaliser sum of exp(x - max).
  float best_v = -INFINITY, run_m = -INFINITY, run_s = 0.0f;
  int32_t best_i = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) {
    const float x = x_at(i);
    if (!(x > -INFINITY)) continue;  // -inf (a masked token) and NaN carry no mass
    if (x > best_v) {
      best_v = x;
      best_i = int32_t(i);
    }
    if (x > run_m) {
      run_s = run_s * expf(run_m - x) + 1.0f;
      run_m = x;
    } else {
      run_s += expf(x - run_m);
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best_v, off);
    const int32_t oi = __shfl_xor_sync(0xffffffffu, best_i, off);
    if (ov > best_v || (ov == best_v && oi < best_i)) {
      best_v = ov;
      best_i = oi;
    }
  }
  if (lane == 0) {
    s_val[warp] = best_v;
    s_idx[warp] = best_i;
  }
  __syncthreads();
  best_v = s_val[0];
  best_i = s_idx[0];
  for (int w = 1; w < kWarps; ++w) {
    if (s_val[w] > best_v || (s_val[w] == best_v && s_idx[w] < best_i)) {
      best_v = s_val[w];
      best_i = s_idx[w];
    }
  }
  const float l_max = best_v;
  const double part = run_s > 0.0f ? double(run_s) * exp(double(run_m) - double(l_max)) : 0.0;
  const double log_norm = double(l_max) + log(block_sum(part, s_double));

  // Top-N logprobs.
  const int top_n = int(p.n_top_logprobs < n ? int64_t(p.n_top_logprobs) : n);
  if (top_n > 0) {
    const Threshold t = radix_select<false>(
        n,
        [&](int64_t i, uint32_t& key, u64& mass) {
          key = order_key(x_at(i));
          mass = 0;
          return true;
        },
        u64(top_n), h);
    const int32_t cut = id_cut(
        n, [&](int64_t i) { return order_key(x_at(i)) == t.key; }, uint32_t(top_n - t.above),
        t.count_eq, h);
    if (threadIdx.x == 0) s_top_n = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const float x = x_at(i);
      const uint32_t key = order_key(x);
      if (key > t.key || (key == t.key && i <= cut)) {
        const int slot = atomicAdd(&s_top_n, 1);
        if (slot < kMaxTopLogprobs) {
          s_top_ids[slot] = int32_t(i);
          s_top_vals[slot] = x;
        }
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      const int m = min(s_top_n, top_n);
      for (int a = 1; a < m; ++a) {  // insertion sort: higher logit, then lower id
        const int32_t id = s_top_ids[a];
        const float v = s_top_vals[a];
        int b = a - 1;
        while (b >= 0 && (s_top_vals[b] < v || (s_top_vals[b] == v && s_top_ids[b] > id))) {
          s_top_ids[b + 1] = s_top_ids[b];
          s_top_vals[b + 1] = s_top_vals[b];
          --b;
        }
        s_top_ids[b + 1] = id;
        s_top_vals[b + 1] = v;
      }
      for (int j = 0; j < p.n_top_logprobs; ++j) {
        const bool ok = j < m;
        p.top_ids[row * p.n_top_logprobs + j] = ok ? s_top_ids[j] : -1;
        p.top_logprobs[row * p.n_top_logprobs + j] =
            ok ? float(double(s_top_vals[j]) - log_norm) : -INFINITY;
      }
    }
    __syncthreads();
  }

  const SampleRowParams rp = p.rows[row];
  const bool greedy = rp.temperature <= 0.0f || rp.top_k == 1;
  if (greedy) {
    if (threadIdx.x == 0) {
      p.tokens[row] = best_i;
      p.logprobs[row] = float(double(l_max) - log_norm);
    }
    return;
  }

  // w = exp(x / T - max / T) as the CPU computes it, and its fixed-point mass.
  const float temp = rp.temperature;
  const float s_max = __fdiv_rn(l_max, temp);
  auto weight = [&](float x) { return expf(__fdiv_rn(x, temp) - s_max); };
  auto fixed = [](float w) { return u64(double(w) * kFixedOne); };

  // Top-k: key > tk, or key == tk with id <= tk_cut.
  uint32_t tk = 0;
  int32_t tk_cut = kNoCut;
  const bool use_k = rp.top_k > 0 && rp.top_k < n;
  if (use_k) {
    const Threshold t = radix_select<false>(
        n,
        [&](int64_t i, uint32_t& key, u64& mass) {
          key = order_key(x_at(i));
          mass = 0;
          return true;
        },
        u64(rp.top_k), h);
    tk = t.key;
    tk_cut = id_cut(
        n, [&](int64_t i) { return order_key(x_at(i)) == tk; }, uint32_t(rp.top_k - t.above),
        t.count_eq, h);
  }
  auto kept_k = [&](int64_t i, uint32_t key) {
    return !use_k || key > tk || (key == tk && i <= tk_cut);
  };

  // Top-p over the top-k set: the shortest most-likely prefix with mass >= top_p * total.
  uint32_t tp = 0;
  int32_t tp_cut = kNoCut;
  const bool use_p = rp.top_p < 1.0f;
  if (use_p) {
    u64 mine = 0;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const float x = x_at(i);
      if (kept_k(i, order_key(x))) mine += fixed(weight(x));
    }
    const u64 total = block_sum(mine, s_u64);
    u64 thr = u64(ceil(double(rp.top_p) * double(total)));
    thr = thr < 1 ? 1 : (thr > total ? total : thr);
    const Threshold t = radix_select<true>(
        n,
        [&](int64_t i, uint32_t& key, u64& mass) {
          const float x = x_at(i);
          key = order_key(x);
          mass = fixed(weight(x));
          return kept_k(i, key);
        },
        thr, h);
    tp = t.key;
    const u64 w_eq = t.count_eq ? t.mass_eq / t.count_eq : 0;
    const u64 rest = thr - t.above;
    const u64 steps = w_eq ? (rest + w_eq - 1) / w_eq : u64(t.count_eq);
    const uint32_t need = uint32_t(steps < t.count_eq ? steps : u64(t.count_eq));
    tp_cut = id_cut(
        n,
        [&](int64_t i) {
          const uint32_t key = order_key(x_at(i));
          return key == tp && kept_k(i, key);
        },
        need < 1 ? 1 : need, t.count_eq, h);
  }
  const float min_p = rp.min_p;
  // The final kept set and its mass, per element.
  auto kept_mass = [&](int64_t i) -> u64 {
    const float x = x_at(i);
    const uint32_t key = order_key(x);
    if (!kept_k(i, key)) return 0;
    if (use_p && !(key > tp || (key == tp && i <= tp_cut))) return 0;
    const float w = weight(x);
    if (min_p > 0.0f && !(w >= min_p)) return 0;
    return fixed(w) | (u64(1) << 63);  // bit 63 marks "kept" (masses stay below 2^58)
  };
  constexpr u64 kMassMask = (u64(1) << 63) - 1;

  // Draw: each warp sums its contiguous id range; find the range, then scan it in id order.
  const int64_t span = ((n + kWarps - 1) / kWarps + 31) / 32 * 32;
  const int64_t lo = warp * span, hi = min(n, lo + span);
  u64 wsum = 0;
  int32_t last_kept = -1;
  for (int64_t i = lo + lane; i < hi; i += 32) {
    const u64 m = kept_mass(i);
    wsum += m & kMassMask;
    if (m) last_kept = int32_t(i);
  }
  wsum = warp_sum_t(wsum);
#pragma unroll
  for (int off = 16; off > 0; off >>= 1)
    last_kept = max(last_kept, __shfl_xor_sync(0xffffffffu, last_kept, off));
  __syncthreads();
  if (lane == 0) {
    s_u64[warp] = wsum;
    s_idx[warp] = last_kept;
  }
  if (threadIdx.x == 0) s_token = -1;
  __syncthreads();
  u64 total = 0;
  int32_t fallback = -1;
  for (int w = 0; w < kWarps; ++w) {
    total += s_u64[w];
    fallback = max(fallback, s_idx[w]);
  }
  const uint32_t u24 = uint32_t(philox_uniform(rp.seed, rp.step) * 16777216.0f);
  const u64 target = u64((unsigned __int128)(u24)*total >> 24);  // floor(u * total)
  u64 before = 0;
  int found = -1;
  for (int w = 0; w < kWarps; ++w) {
    if (before + s_u64[w] > target) {
      found = w;
      break;
    }
    before += s_u64[w];
  }
  if (warp == found) {
    u64 cum = before;
    for (int64_t base = lo; base < hi; base += 32) {
      const int64_t i = base + lane;
      u64 v = i < hi ? (kept_mass(i) & kMassMask) : 0;
#pragma unroll
      for (int off = 1; off < 32; off <<= 1) {  // inclusive prefix sum over the lanes
        const u64 other = __shfl_up_sync(0xffffffffu, v, off);
        if (lane >= off) v += other;
      }
      const unsigned hit = __ballot_sync(0xffffffffu, cum + v > target);
      if (hit) {
        if (lane == __ffs(hit) - 1) s_token = int32_t(i);
        break;
      }
      cum += __shfl_sync(0xffffffffu, v, 31);
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const int32_t token = s_token >= 0 ? s_token : (fallback >= 0 ? fallback : best_i);
    p.tokens[row] = token;
    p.logprobs[row] = float(double(x_at(token)) - log_norm);
  }
}

template <LogitsType kType>
cudaError_t launch(const SampleParams& p, cudaStream_t stream) {
  const size_t smem = sizeof(Hist);
  const cudaError_t attr = cudaFuncSetAttribute(
      sample_kernel<kType>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
  if (attr != cudaSuccess) return attr;
  sample_kernel<kType><<<unsigned(p.n_rows), kThreads, smem, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t sample(const SampleParams& p, cudaStream_t stream) {
  if (p.n_rows == 0) return cudaSuccess;
  if (!p.logits || !p.rows || !p.tokens || !p.logprobs || p.n_vocab <= 0 ||
      p.n_vocab > 0x7fffffff || p.n_top_logprobs < 0 || p.n_top_logprobs > kMaxTopLogprobs ||
      (p.n_top_logprobs > 0 && (!p.top_ids || !p.top_logprobs))) {
    return cudaErrorInvalidValue;
  }
  return p.type == LogitsType::kF32 ? launch<LogitsType::kF32>(p, stream)
                                    : launch<LogitsType::kBf16>(p, stream);
}

}  // namespace pp::kernels::cuda
