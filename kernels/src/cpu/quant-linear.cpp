// The linear layer on GGUF block weights: out = x @ w^T (+ bias) with w kept quantized.
//
// Each row of x is quantized to 8-bit blocks (quant-dot.h), then every output element is one
// integer dot of a weight row and an activation row, taken in the fixed order quant-dot.h gives,
// then + bias. Row blocking (up to 4 rows of x share each unpacked weight block), the split of
// columns among threads and the variant chosen (scalar, AVX2, AVX-VNNI, AVX-512 VNNI: they agree
// bitwise) change which element is computed when, never how: a row's result is the same for any
// m, any position in the batch and any thread count.
#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "cpu-common.h"
#include "pp/assert.h"
#include "pp/kernels/cpu.h"
#include "quant-dot.h"

namespace pp::kernels::cpu {
namespace {

constexpr int64_t kL2Bytes = 256 * 1024;  // weight bytes a thread keeps hot while rows stream

bool cpu_has_avxvnni() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  return (a >> 4) & 1;  // CPUID.(EAX=7, ECX=1):EAX[4]
}

QuantIsa best_isa() {
  if (quant_isa_supported(QuantIsa::kAvx512Vnni)) return QuantIsa::kAvx512Vnni;
  if (quant_isa_supported(QuantIsa::kAvxVnni)) return QuantIsa::kAvxVnni;
  if (quant_isa_supported(QuantIsa::kAvx2)) return QuantIsa::kAvx2;
  return QuantIsa::kScalar;
}

std::atomic<int> g_isa{-1};  // -1: not chosen yet

quant::DotFn dot_fn(QuantIsa isa, WeightFormat f) {
  switch (isa) {
    case QuantIsa::kScalar:
      return quant::scalar_dot(f);
    case QuantIsa::kAvx2:
      return quant::avx2_dot(f);
    case QuantIsa::kAvxVnni:
      return quant::avxvnni_dot(f);
    case QuantIsa::kAvx512Vnni:
      return quant::avx512vnni_dot(f);
  }
  return nullptr;
}

}  // namespace

const char* quant_isa_name(QuantIsa isa) {
  switch (isa) {
    case QuantIsa::kScalar:
      return "scalar";
    case QuantIsa::kAvx2:
      return "avx2";
    case QuantIsa::kAvxVnni:
      return "avx-vnni";
    case QuantIsa::kAvx512Vnni:
      return "avx512-vnni";
  }
  return "?";
}

bool quant_isa_supported(QuantIsa isa) {
  __builtin_cpu_init();
  switch (isa) {
    case QuantIsa::kScalar:
      return true;
    case QuantIsa::kAvx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case QuantIsa::kAvxVnni:
      return quant_isa_supported(QuantIsa::kAvx2) && cpu_has_avxvnni();
    case QuantIsa::kAvx512Vnni:
      return quant_isa_supported(QuantIsa::kAvx2) && __builtin_cpu_supports("avx512vnni") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw");
  }
  return false;
}

QuantIsa quant_isa() {
  int v = g_isa.load(std::memory_order_relaxed);
  if (v < 0) {
    v = int(best_isa());
    g_isa.store(v, std::memory_order_relaxed);
  }
  return QuantIsa(v);
}

void set_quant_isa(QuantIsa isa) {
  PP_ASSERT_MSG(quant_isa_supported(isa), "set_quant_isa: this CPU lacks the instructions");
  g_isa.store(int(isa), std::memory_order_relaxed);
}

namespace detail {

void quant_linear(const LinearParams& p) {
  const WeightView& w = p.w;
  const int64_t m = p.m, n = w.rows, k = w.cols;
  PP_ASSERT(p.x && p.out && w.data && n > 0 && k > 0 && k % quant::kQ == 0);
  if (m <= 0) return;
  const quant::DotFn fn = dot_fn(quant_isa(), w.format);
  PP_ASSERT(fn != nullptr);
  const int64_t nb = k / quant::kQ;
  // The caller's thread keeps its activation blocks between calls: no allocation once warm.
  thread_local std::vector<quant::Q8Block> xq;
  if (int64_t(xq.size()) < m * nb) xq.resize(size_t(m * nb));
  quant::Q8Block* xb = xq.data();
  const int n_threads = detail::pool_size();
#pragma omp parallel for schedule(static) num_threads(n_threads) if (m * k >= (1 << 16))
  for (int64_t r = 0; r < m; ++r) quant::quantize_row(p.x + r * k, k, xb + r * nb);

  const int64_t row_bytes = weight_row_bytes(w.format, k);
  const auto* wb = static_cast<const uint8_t*>(w.data);
  // Columns in chunks whose weights stay in L2 while every row of x passes them, at least a few
  // chunks per thread so that a decode step (m = 1) keeps every thread busy.
  int64_t chunk = std::max<int64_t>(1, kL2Bytes / row_bytes);
  chunk = std::min(chunk, (n + 4 * n_threads - 1) / (4 * n_threads));
  const int64_t n_chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) num_threads(n_threads) if (n_chunks > 1)
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    const int64_t c0 = ch * chunk, c1 = std::min(n, c0 + chunk);
    for (int64_t r = 0; r < m; r += quant::kMaxRows) {
      const int rows = int(std::min<int64_t>(quant::kMaxRows, m - r));
      for (int64_t c = c0; c < c1; ++c) {
        // Profiled: decode stalls on the first touch of each weight row; ask for the next row
        // while this one computes.
        if (c + 1 < c1) {
          const uint8_t* next = wb + (c + 1) * row_bytes;
          for (int64_t off = 0; off < row_bytes; off += 64) {
            _mm_prefetch(reinterpret_cast<const char*>(next + off), _MM_HINT_T0);
          }
        }
        float* o = p.out + r * n + c;
        fn(wb + c * row_bytes, xb + r * nb, nb, nb, rows, o, n);
        if (p.bias) {
          for (int i = 0; i < rows; ++i) o[i * n] += p.bias[c];
        }
      }
    }
  }
}

}  // namespace detail
}  // namespace pp::kernels::cpu
