// kernel-bench: times the CUDA kernels at Qwen3-8B sizes against the ceilings measured in the
// same run (device-to-device copy bandwidth, cuBLAS bf16 GEMM rate), for docs/perf.md.
//
// Memory-bound kernels report bytes moved (each input read once, each output written once)
// over time, as a fraction of the copy bandwidth (cudaMemcpy D2D of 1 GiB, read + write);
// decode attention reports KV bytes read over time; prefill attention reports causal FLOP/s
// (4 * heads * head_dim * sum of keys per query). Each number is the median of 9 timings of
// a batch of launches between CUDA events, after warm-up. Inputs are random, never zeros.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <numeric>
#include <random>
#include <vector>

#include "pp/kernels/cpu.h"
#include "pp/kernels/cuda/attention.h"
#include "pp/kernels/cuda/fp8.h"
#include "pp/kernels/cuda/gemv.h"
#include "pp/kernels/cuda/linear.h"
#include "pp/kernels/cuda/rms-norm.h"
#include "pp/kernels/cuda/rope.h"
#include "pp/kernels/cuda/sampling.h"
#include "pp/kernels/cuda/swiglu.h"

namespace {

namespace ck = pp::kernels::cuda;
using bf16 = __nv_bfloat16;

#define CHECK(expr)                                                                               \
  do {                                                                                            \
    cudaError_t e_ = (expr);                                                                      \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                               \
    }                                                                                             \
  } while (0)

template <typename T>
T* alloc(size_t n) {
  T* p = nullptr;
  CHECK(cudaMalloc(&p, n * sizeof(T)));
  return p;
}

__global__ void fill_random(bf16* p, size_t n, uint32_t seed, float lo, float hi) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = __float2bfloat16(lo + (hi - lo) * float(h & 0xffffff) / 16777216.0f);
  }
}
__global__ void fill_random_f32(float* p, size_t n, uint32_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = scale * (float(h & 0xffffff) / 16777216.0f - 0.5f);
  }
}
bf16* random_bf16(size_t n, float lo = -1.0f, float hi = 1.0f) {
  static uint32_t seed = 1;
  bf16* p = alloc<bf16>(n);
  fill_random<<<1024, 256>>>(p, n, seed++ * 7919u, lo, hi);
  CHECK(cudaGetLastError());
  return p;
}

// Median milliseconds per call of fn, timed over batches of `reps` calls.
double time_ms(const std::function<void()>& fn, int reps) {
  for (int i = 0; i < 3; ++i) fn();
  CHECK(cudaDeviceSynchronize());
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  std::vector<double> t;
  for (int i = 0; i < 9; ++i) {
    CHECK(cudaEventRecord(a));
    for (int r = 0; r < reps; ++r) fn();
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(double(ms) / reps);
  }
  CHECK(cudaGetLastError());
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

double g_copy_gbs = 0;

void report_bw(const char* name, const char* shape, double ms, double bytes) {
  const double gbs = bytes / (ms * 1e-3) / 1e9;
  std::printf("| %-26s | %-34s | %9.1f | %8.0f | %5.1f%% |\n", name, shape, ms * 1e3, gbs,
              100.0 * gbs / g_copy_gbs);
}

}  // namespace

int main() {
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MiB\n\n", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize >> 20);

  // Ceiling 1: device-to-device copy of 1 GiB (read + write counted).
  {
    const size_t n = size_t(1) << 30;
    char* a = alloc<char>(n);
    char* b = alloc<char>(n);
    CHECK(cudaMemset(a, 1, n));
    const double ms =
        time_ms([&] { CHECK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice)); }, 5);
    g_copy_gbs = 2.0 * double(n) / (ms * 1e-3) / 1e9;
    std::printf("copy bandwidth (cudaMemcpy D2D 1 GiB, read+write): %.0f GB/s\n\n", g_copy_gbs);
    CHECK(cudaFree(a));
    CHECK(cudaFree(b));
  }

  const int64_t hidden = 4096, n_head = 32, n_kv = 8, dim = 128, n_ff = 12288;
  std::printf("| kernel | shape | us | GB/s | of copy |\n|---|---|---|---|---|\n");
  for (int64_t tokens : {int64_t(64), int64_t(4096)}) {
    char shape[96];
    // RMSNorm fused with the residual add: reads x and residual, writes residual and out.
    {
      bf16* x = random_bf16(size_t(tokens * hidden));
      bf16* res = random_bf16(size_t(tokens * hidden));
      bf16* w = random_bf16(size_t(hidden), 0.5f, 1.5f);
      bf16* out = alloc<bf16>(size_t(tokens * hidden));
      ck::RmsNormParams p{x, res, w, out, tokens, hidden, 1e-6f};
      const double ms = time_ms([&] { CHECK(ck::rms_norm(p, nullptr)); }, 20);
      std::snprintf(shape, sizeof shape, "%lld x %lld, residual", (long long)tokens,
                    (long long)hidden);
      report_bw("rms_norm", shape, ms, 4.0 * tokens * hidden * 2);
      CHECK(cudaFree(x));
      CHECK(cudaFree(res));
      CHECK(cudaFree(w));
      CHECK(cudaFree(out));
    }
    // RoPE + q/k norm + KV write: reads qkv, writes q (separate buffer), k and v slots.
    {
      const int64_t width = (n_head + 2 * n_kv) * dim;
      bf16* qkv = random_bf16(size_t(tokens * width));
      bf16* q = alloc<bf16>(size_t(tokens * n_head * dim));
      bf16* qn = random_bf16(size_t(dim), 0.5f, 1.5f);
      bf16* kn = random_bf16(size_t(dim), 0.5f, 1.5f);
      const int64_t bs = 16, n_blocks = (tokens + bs - 1) / bs * 4;
      bf16* ck_ = alloc<bf16>(size_t(n_blocks * bs * n_kv * dim));
      bf16* cv_ = alloc<bf16>(size_t(n_blocks * bs * n_kv * dim));
      std::vector<int32_t> pos(static_cast<size_t>(tokens));
      std::vector<int64_t> slots(static_cast<size_t>(tokens));
      std::vector<int64_t> perm(static_cast<size_t>(n_blocks * bs));
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), std::mt19937_64(5));
      for (int64_t t = 0; t < tokens; ++t) {
        pos[size_t(t)] = int32_t(1000 + t);
        slots[size_t(t)] = perm[size_t(t)];
      }
      int32_t* d_pos = alloc<int32_t>(pos.size());
      int64_t* d_slots = alloc<int64_t>(slots.size());
      CHECK(cudaMemcpy(d_pos, pos.data(), pos.size() * 4, cudaMemcpyHostToDevice));
      CHECK(cudaMemcpy(d_slots, slots.data(), slots.size() * 8, cudaMemcpyHostToDevice));
      pp::kernels::cpu::RopeFreqParams fp;
      fp.rot_dim = dim;
      fp.theta = 1000000.0f;
      const auto inv = pp::kernels::cpu::rope_inv_freq(fp);
      float* d_inv = alloc<float>(inv.size());
      CHECK(cudaMemcpy(d_inv, inv.data(), inv.size() * 4, cudaMemcpyHostToDevice));
      ck::RopeKvParams p;
      p.qkv = qkv;
      p.q_out = q;
      p.pos = d_pos;
      p.slots = d_slots;
      p.inv_freq = d_inv;
      p.q_norm = qn;
      p.k_norm = kn;
      p.kv = {ck_, cv_, n_blocks, bs, n_kv, dim};
      p.n_tokens = tokens;
      p.n_head = n_head;
      p.rot_dim = dim;
      const double ms = time_ms([&] { CHECK(ck::rope_kv_write(p, nullptr)); }, 20);
      std::snprintf(shape, sizeof shape, "%lld tok, 32/8 heads, qk-norm", (long long)tokens);
      report_bw("rope + kv write", shape, ms, 2.0 * tokens * width * 2);
      for (void* ptr : {(void*)qkv, (void*)q, (void*)qn, (void*)kn, (void*)ck_, (void*)cv_,
                        (void*)d_pos, (void*)d_slots, (void*)d_inv}) {
        CHECK(cudaFree(ptr));
      }
    }
    // SwiGLU: reads gate|up, writes out.
    {
      bf16* gu = random_bf16(size_t(tokens * 2 * n_ff), -4, 4);
      bf16* out = alloc<bf16>(size_t(tokens * n_ff));
      ck::SwigluParams p{gu, out, tokens, n_ff};
      const double ms = time_ms([&] { CHECK(ck::swiglu(p, nullptr)); }, 20);
      std::snprintf(shape, sizeof shape, "%lld x %lld", (long long)tokens, (long long)n_ff);
      report_bw("swiglu", shape, ms, 3.0 * tokens * n_ff * 2);
      CHECK(cudaFree(gu));
      CHECK(cudaFree(out));
    }
  }

  // Decode attention: batch 64, context 4096, scattered blocks.
  auto attention_setup = [&](int64_t n_seq, int64_t ctx, int64_t q_len, ck::AttentionParams& p,
                             std::vector<void*>& owned) {
    const int64_t bs = 16, per_seq = ctx / bs, n_blocks = n_seq * per_seq;
    bf16* k = random_bf16(size_t(n_blocks * bs * n_kv * dim));
    bf16* v = random_bf16(size_t(n_blocks * bs * n_kv * dim));
    std::vector<int32_t> ids(static_cast<size_t>(n_blocks));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), std::mt19937_64(7));
    std::vector<int32_t> start{0}, qpos;
    for (int64_t s = 0; s < n_seq; ++s) {
      start.push_back(int32_t(start.back() + q_len));
      for (int64_t j = 0; j < q_len; ++j) qpos.push_back(int32_t(ctx - q_len + j));
    }
    const int64_t n_tokens = n_seq * q_len;
    bf16* q = random_bf16(size_t(n_tokens * n_head * dim), -2, 2);
    bf16* out = alloc<bf16>(size_t(n_tokens * n_head * dim));
    int32_t* d_tables = alloc<int32_t>(ids.size());
    int32_t* d_start = alloc<int32_t>(start.size());
    int32_t* d_pos = alloc<int32_t>(qpos.size());
    CHECK(cudaMemcpy(d_tables, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d_start, start.data(), start.size() * 4, cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d_pos, qpos.data(), qpos.size() * 4, cudaMemcpyHostToDevice));
    p.q = q;
    p.out = out;
    p.kv = {k, v, n_blocks, bs, n_kv, dim};
    p.seq_start = d_start;
    p.q_pos = d_pos;
    p.block_tables = d_tables;
    p.n_tokens = n_tokens;
    p.n_seq = n_seq;
    p.n_head = n_head;
    p.max_blocks = per_seq;
    p.scale = 1.0f / std::sqrt(float(dim));
    p.max_q_len = q_len;
    p.max_kv_len = ctx;
    p.workspace_bytes = ck::attention_workspace_bytes(p);
    p.workspace = p.workspace_bytes ? alloc<char>(p.workspace_bytes) : nullptr;
    owned = {k, v, q, out, d_tables, d_start, d_pos, p.workspace};
  };
  {
    ck::AttentionParams p;
    std::vector<void*> owned;
    attention_setup(64, 4096, 1, p, owned);
    const double ms = time_ms([&] { CHECK(ck::attention(p, nullptr)); }, 10);
    report_bw("decode attention", "64 seq x 4096 ctx, 32/8 heads, d128", ms,
              2.0 * 64 * 4096 * n_kv * dim * 2);
    for (void* ptr : owned) CHECK(cudaFree(ptr));
  }
  std::printf("\n| kernel | shape | us | TFLOP/s |\n|---|---|---|---|\n");
  {
    ck::AttentionParams p;
    std::vector<void*> owned;
    attention_setup(1, 4096, 4096, p, owned);
    const double ms = time_ms([&] { CHECK(ck::attention(p, nullptr)); }, 5);
    const double flops = 4.0 * n_head * dim * (4096.0 * 4097.0 / 2.0);
    std::printf("| %-26s | %-34s | %9.1f | %7.1f |\n", "prefill attention",
                "4096 tok causal, 32/8 heads, d128", ms * 1e3, flops / (ms * 1e-3) / 1e12);
    for (void* ptr : owned) CHECK(cudaFree(ptr));
  }
  {
    auto blas = ck::Blas::create();
    if (!blas.ok()) {
      std::fprintf(stderr, "%s\n", blas.status().message().c_str());
      return 1;
    }
    for (auto [m, n, k] : {std::tuple<int64_t, int64_t, int64_t>{4096, 12288, 4096},
                           {4096, 4096, 12288},
                           {64, 12288, 4096}}) {
      bf16* x = random_bf16(size_t(m * k));
      bf16* w = random_bf16(size_t(n * k));
      bf16* y = alloc<bf16>(size_t(m * n));
      ck::LinearParams lp;
      lp.x = x;
      lp.w = w;
      lp.out = y;
      lp.m = m;
      lp.n = n;
      lp.k = k;
      const double ms = time_ms(
          [&] {
            auto st = (*blas)->linear(lp, nullptr);
            if (!st.ok()) {
              std::fprintf(stderr, "%s\n", st.message().c_str());
              std::exit(1);
            }
          },
          10);
      char shape[96];
      std::snprintf(shape, sizeof shape, "m=%lld n=%lld k=%lld", (long long)m, (long long)n,
                    (long long)k);
      const double tf = 2.0 * m * n * k / (ms * 1e-3) / 1e12;
      const double gbs = double(n * k + m * k + m * n) * 2 / (ms * 1e-3) / 1e9;
      std::printf("| %-26s | %-34s | %9.1f | %7.1f | (%.0f GB/s)\n", "cublasLt linear bf16", shape,
                  ms * 1e3, tf, gbs);
      CHECK(cudaFree(x));
      CHECK(cudaFree(w));
      CHECK(cudaFree(y));
    }
  }

  // Prefill linears with fp8 weights in 128x128 blocks (Qwen3-8B-FP8's layout), gate|up shape:
  // row counts that are and are not multiples of 16 (cuBLASLt takes only the former; the others
  // run padded through the bf16 epilogue), against per-channel scales.
  {
    auto blas = ck::Blas::create();
    if (!blas.ok() || !(*blas)->reserve_fp8({.max_m = 4096, .max_n = 24576, .max_k = 4096}).ok()) {
      std::fprintf(stderr, "fp8 scratch\n");
      return 1;
    }
    const int64_t n = 24576, k = 4096;
    auto* w8 = reinterpret_cast<uint8_t*>(random_bf16(size_t(n * k / 2), -0.01f, 0.01f));
    float* scales = alloc<float>(size_t(n * (k / 128)));
    fill_random_f32<<<1024, 256>>>(scales, size_t(n * (k / 128)), 7, 0.01f);
    CHECK(cudaGetLastError());
    bf16* x = random_bf16(size_t(4096 * k));
    bf16* y = alloc<bf16>(size_t(4096 * n));
    for (auto kind : {pp::kernels::ScaleKind::kBlock128x128, pp::kernels::ScaleKind::kPerChannel}) {
      for (int64_t m : {4096, 4000, 1000, 33}) {
        ck::LinearParams lp{.x = x,
                            .w = w8,
                            .out = y,
                            .m = m,
                            .n = n,
                            .k = k,
                            .format = pp::kernels::WeightFormat::kFp8E4M3,
                            .scale_kind = kind,
                            .scales = scales};
        auto path = (*blas)->path_for(lp);
        const double ms = time_ms(
            [&] {
              if (auto st = (*blas)->linear(lp, nullptr); !st.ok()) {
                std::fprintf(stderr, "%s\n", st.message().c_str());
                std::exit(1);
              }
            },
            5);
        char shape[96];
        std::snprintf(shape, sizeof shape, "m=%lld n=%lld k=%lld %s", (long long)m, (long long)n,
                      (long long)k, pp::kernels::scale_kind_name(kind));
        std::printf("| fp8 linear (%s) | %s | %.1f | %.1f TFLOP/s |\n",
                    path.ok() ? pp::kernels::gpu::linear_path_name(*path) : "?", shape, ms * 1e3,
                    2.0 * m * n * k / (ms * 1e-3) / 1e12);
      }
    }
    for (void* p : std::initializer_list<void*>{w8, scales, x, y}) CHECK(cudaFree(p));
  }

  // Decode linears at Qwen3-8B shapes (qkv, o, gate|up, down): the fp8 GEMV (per-channel
  // scales) next to the bf16 one (Blas::linear takes the GEMV up to 8 rows), as bytes moved
  // (weight, x, y, scales) over time; then the lm_head into f32 logits.
  std::printf("\n| kernel | shape | us | GB/s | of copy |\n|---|---|---|---|---|\n");
  // A blocking stream: it orders with the legacy stream time_ms records its events on.
  cudaStream_t bench_stream = nullptr;
  CHECK(cudaStreamCreate(&bench_stream));
  {
    auto blas = ck::Blas::create();
    if (!blas.ok()) {
      std::fprintf(stderr, "%s\n", blas.status().message().c_str());
      return 1;
    }
    for (auto [n, k] :
         {std::pair<int64_t, int64_t>{6144, 4096}, {4096, 4096}, {24576, 4096}, {4096, 12288}}) {
      // fp8 bytes: random bf16 bits reinterpreted (a few NaN codes time the same).
      auto* w8 = reinterpret_cast<uint8_t*>(random_bf16(size_t(n * k / 2)));
      bf16* w16 = random_bf16(size_t(n * k));
      float* scales = alloc<float>(size_t(n));
      fill_random_f32<<<1024, 256>>>(scales, size_t(n), 5, 0.01f);
      CHECK(cudaGetLastError());
      bf16* x = random_bf16(size_t(8 * k));
      bf16* y = alloc<bf16>(size_t(8 * n));
      for (int64_t m : {1, 4, 8}) {
        char shape[96];
        std::snprintf(shape, sizeof shape, "m=%lld n=%lld k=%lld", (long long)m, (long long)n,
                      (long long)k);
        ck::GemvParams gp;
        gp.x = x;
        gp.w = w8;
        gp.format = pp::kernels::WeightFormat::kFp8E4M3;
        gp.scale_kind = pp::kernels::ScaleKind::kPerChannel;
        gp.scales = scales;
        gp.out = y;
        gp.m = m;
        gp.n = n;
        gp.k = k;
        const double fp8_bytes = double(n * k + m * k * 2 + m * n * 2 + n * 4);
        const double ms8 = time_ms([&] { CHECK(ck::gemv(gp, nullptr)); }, 20);
        report_bw("fp8 gemv (per-channel)", shape, ms8, fp8_bytes);
        // Back to back as programmatic dependents: each launch overlaps the one before (on a
        // stream of its own: the legacy default stream is no place for them).
        gp.programmatic = true;
        report_bw("fp8 gemv, programmatic", shape,
                  time_ms([&] { CHECK(ck::gemv(gp, bench_stream)); }, 20), fp8_bytes);
        gp.programmatic = false;
        if (m == 1) {
          for (auto [rows, loads] : {std::pair{1, 8}, {2, 8}, {4, 4}}) {
            const int r = rows, u = loads;  // lambdas cannot capture structured bindings (C++17)
            char name[64];
            std::snprintf(name, sizeof name, "fp8 gemv R=%d U=%d", r, u);
            report_bw(name, shape, time_ms([&] { CHECK(ck::gemv_variant(gp, r, u, nullptr)); }, 20),
                      fp8_bytes);
            ck::GemvParams gb = gp;
            gb.w = w16;
            gb.format = pp::kernels::WeightFormat::kBF16;
            gb.scale_kind = pp::kernels::ScaleKind::kNone;
            gb.scales = nullptr;
            std::snprintf(name, sizeof name, "bf16 gemv R=%d U=%d", r, u);
            report_bw(name, shape, time_ms([&] { CHECK(ck::gemv_variant(gb, r, u, nullptr)); }, 20),
                      double(n * k * 2 + m * k * 2 + m * n * 2));
          }
        }
        ck::LinearParams lp;
        lp.x = x;
        lp.w = w16;
        lp.out = y;
        lp.m = m;
        lp.n = n;
        lp.k = k;
        const double ms16 = time_ms(
            [&] {
              auto st = (*blas)->linear(lp, nullptr);
              if (!st.ok()) {
                std::fprintf(stderr, "%s\n", st.message().c_str());
                std::exit(1);
              }
            },
            20);
        report_bw("bf16 gemv (Blas::linear)", shape, ms16,
                  double(n * k * 2 + m * k * 2 + m * n * 2));
      }
      CHECK(cudaFree(w8));
      CHECK(cudaFree(w16));
      CHECK(cudaFree(scales));
      CHECK(cudaFree(x));
      CHECK(cudaFree(y));
    }
  }

  // One decode layer's qkv and FFN-up half, fp8 (per channel), Qwen3-8B shape: rms_norm + GEMV
  // + swiglu as separate kernels against SwiGLU fused into the GEMV, each timed as a chain of
  // ordinary launches and as programmatic ones (what a decode step's graph replays).
  std::printf("\n| decode chain (fp8) | shape | us |\n|---|---|---|\n");
  {
    const int64_t E = 4096, F = 12288, QKV = 6144;
    auto* w_gu = reinterpret_cast<uint8_t*>(random_bf16(size_t(2 * F * E / 2)));
    auto* w_qkv = reinterpret_cast<uint8_t*>(random_bf16(size_t(QKV * E / 2)));
    float* scales = alloc<float>(size_t(2 * F));
    fill_random_f32<<<1024, 256>>>(scales, size_t(2 * F), 6, 0.01f);
    CHECK(cudaGetLastError());
    bf16* h = random_bf16(size_t(8 * E));
    bf16* norm_w = random_bf16(size_t(E));
    bf16* x = alloc<bf16>(size_t(8 * E));
    bf16* gu = alloc<bf16>(size_t(8 * 2 * F));
    bf16* act = alloc<bf16>(size_t(8 * F));
    bf16* qkv = alloc<bf16>(size_t(8 * QKV));
    for (int64_t m : {1, 8}) {
      for (bool pdl : {false, true}) {
        ck::GemvParams g;
        g.format = pp::kernels::WeightFormat::kFp8E4M3;
        g.scale_kind = pp::kernels::ScaleKind::kPerChannel;
        g.scales = scales;
        g.m = m;
        g.k = E;
        g.programmatic = pdl;
        ck::RmsNormParams rn{.x = h, .weight = norm_w, .out = x, .n_rows = m, .n = E};
        cudaStream_t st = bench_stream;
        auto separate = [&] {
          CHECK(ck::rms_norm(rn, st));
          ck::GemvParams a = g;
          a.x = x, a.w = w_qkv, a.out = qkv, a.n = QKV;
          CHECK(ck::gemv(a, st));
          CHECK(ck::rms_norm(rn, st));
          a.w = w_gu, a.out = gu, a.n = 2 * F;
          CHECK(ck::gemv(a, st));
          CHECK(ck::swiglu({.gate_up = gu, .out = act, .n_tokens = m, .n_ff = F}, st));
        };
        auto fused = [&] {
          CHECK(ck::rms_norm(rn, st));
          ck::GemvParams a = g;
          a.x = x, a.w = w_qkv, a.out = qkv, a.n = QKV;
          CHECK(ck::gemv(a, st));
          CHECK(ck::rms_norm(rn, st));
          a.w = w_gu, a.out = act, a.n = F, a.swiglu = true;
          CHECK(ck::gemv(a, st));
        };
        char shape[96];
        std::snprintf(shape, sizeof shape, "m=%lld%s", (long long)m, pdl ? " programmatic" : "");
        std::printf("| norm+qkv, norm+gate_up+swiglu | %s | %.1f |\n", shape,
                    time_ms(separate, 20) * 1e3);
        std::printf("| the same, SwiGLU fused | %s | %.1f |\n", shape, time_ms(fused, 20) * 1e3);
      }
    }
    for (void* p : std::initializer_list<void*>{w_gu, w_qkv, scales, h, norm_w, x, gu, act, qkv}) {
      CHECK(cudaFree(p));
    }
  }

  // The lm_head at batch 1..8: bf16 [151936, 4096] into f32 logits (the GEMV; cuBLASLt before).
  {
    auto blas = ck::Blas::create();
    if (!blas.ok()) {
      std::fprintf(stderr, "%s\n", blas.status().message().c_str());
      return 1;
    }
    const int64_t n = 151936, k = 4096;
    bf16* w16 = random_bf16(size_t(n * k));
    bf16* x = random_bf16(size_t(8 * k));
    float* y = alloc<float>(size_t(8 * n));
    for (int64_t m : {1, 8}) {
      char shape[96];
      std::snprintf(shape, sizeof shape, "m=%lld n=%lld k=%lld f32", (long long)m, (long long)n,
                    (long long)k);
      ck::LinearParams lp;
      lp.x = x;
      lp.w = w16;
      lp.out_f32 = y;
      lp.m = m;
      lp.n = n;
      lp.k = k;
      const double ms = time_ms(
          [&] {
            if (auto st = (*blas)->linear(lp, nullptr); !st.ok()) {
              std::fprintf(stderr, "%s\n", st.message().c_str());
              std::exit(1);
            }
          },
          20);
      report_bw("lm_head bf16 gemv", shape, ms, double(n * k * 2 + m * k * 2 + m * n * 4));
    }
    CHECK(cudaFree(w16));
    CHECK(cudaFree(x));
    CHECK(cudaFree(y));
  }

  // Sampling: 256 rows of a 151936 vocabulary, f32 logits.
  std::printf("\n| sampler | rows x vocab | us |\n|---|---|---|\n");
  {
    const int64_t rows = 256, vocab = 151936;
    float* logits = alloc<float>(size_t(rows * vocab));
    fill_random_f32<<<1024, 256>>>(logits, size_t(rows * vocab), 99, 12.0f);
    CHECK(cudaGetLastError());
    std::vector<ck::SampleRowParams> rp(static_cast<size_t>(rows));
    ck::SampleRowParams* d_rp = alloc<ck::SampleRowParams>(rp.size());
    int32_t* tokens = alloc<int32_t>(size_t(rows));
    float* lps = alloc<float>(size_t(rows));
    int32_t* top_ids = alloc<int32_t>(size_t(rows * 5));
    float* top_lps = alloc<float>(size_t(rows * 5));
    struct Mode {
      const char* name;
      float temperature;
      int32_t top_k;
      float top_p;
      int32_t n_top;
    };
    for (const Mode& m :
         {Mode{"greedy", 0.0f, 0, 1.0f, 0}, Mode{"greedy + top-5 logprobs", 0.0f, 0, 1.0f, 5},
          Mode{"T=0.7", 0.7f, 0, 1.0f, 0}, Mode{"T=0.7 top-p 0.9", 0.7f, 0, 0.9f, 0},
          Mode{"T=0.7 top-k 50 top-p 0.9", 0.7f, 50, 0.9f, 0}}) {
      for (int64_t r = 0; r < rows; ++r) {
        rp[size_t(r)] = {m.temperature, m.top_k, m.top_p, 0.0f, uint64_t(r), 17};
      }
      CHECK(cudaMemcpy(d_rp, rp.data(), rp.size() * sizeof(rp[0]), cudaMemcpyHostToDevice));
      ck::SampleParams sp;
      sp.logits = logits;
      sp.n_rows = rows;
      sp.n_vocab = vocab;
      sp.rows = d_rp;
      sp.n_top_logprobs = m.n_top;
      sp.tokens = tokens;
      sp.logprobs = lps;
      sp.top_ids = top_ids;
      sp.top_logprobs = top_lps;
      const double ms = time_ms([&] { CHECK(ck::sample(sp, nullptr)); }, 5);
      std::printf("| %-26s | 256 x 151936 f32 | %9.1f |\n", m.name, ms * 1e3);
    }
  }
  return 0;
}
