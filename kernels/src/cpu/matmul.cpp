// The linear layer out = x @ w^T (+ bias), with w in Hugging Face [n, k] layout.
//
// Batch invariance by construction: every output element is one dot product of a row of x and
// a row of w, taken in the fixed order of cpu-common.h (8 lanes of FMAs over k in order, masked
// tail, fixed horizontal sum), then + bias. Register blocking (kRows rows x kCols columns per
// micro-kernel, with smaller blocks at the edges) and the split of columns among threads only
// change which element is computed when, never how, so row i's result is bitwise the same for
// any m, any position in the batch and any thread count.
//
// Why not OpenBLAS: measured (OpenBLAS 0.3.21, Haswell kernels) sgemm's result for a row
// depends on m, on the row's position within the call (tiles of 16 rows and more) and on the
// OpenBLAS thread count, since each selects a different micro-kernel. Fixed tiles of <= 8 rows
// with single-threaded calls were invariant on this machine but no faster, and that property
// depends on the kernel OpenBLAS picks for the CPU; this kernel guarantees it everywhere.
#include <algorithm>

#include "cpu-common.h"
#include "pp/assert.h"
#include "pp/kernels/cpu.h"

namespace pp::kernels::cpu {
namespace {

constexpr int kRows = 3;  // micro-kernel rows of x: 12 accumulators + 3 x vectors fit 16 ymm
constexpr int kCols = 4;  // micro-kernel rows of w (output columns)
constexpr int64_t kL2Bytes = 512 * 1024;  // weight bytes a thread keeps hot while rows stream

// out[r, c] for r < R, c < C: R rows of x (stride k) against C rows of w (stride k).
template <int R, int C>
inline void micro_kernel(const float* x, const float* w, int64_t k, const float* bias, float* out,
                         int64_t ldo) {
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  const int64_t k8 = k & ~int64_t(7);
  for (int64_t i = 0; i < k8; i += 8) {
    __m256 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm256_loadu_ps(x + r * k + i);
    for (int c = 0; c < C; ++c) {
      const __m256 wv = _mm256_loadu_ps(w + c * k + i);
      for (int r = 0; r < R; ++r) acc[r][c] = _mm256_fmadd_ps(xv[r], wv, acc[r][c]);
    }
  }
  if (k8 < k) {
    const __m256i m = detail::tail_mask(k);
    __m256 xv[R];
    for (int r = 0; r < R; ++r) xv[r] = _mm256_maskload_ps(x + r * k + k8, m);
    for (int c = 0; c < C; ++c) {
      const __m256 wv = _mm256_maskload_ps(w + c * k + k8, m);
      for (int r = 0; r < R; ++r) acc[r][c] = _mm256_fmadd_ps(xv[r], wv, acc[r][c]);
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < C; ++c) {
      const float v = detail::hsum(acc[r][c]);
      out[r * ldo + c] = bias ? v + bias[c] : v;
    }
  }
}

// R rows of x against output columns [c0, c1).
template <int R>
void row_block(const float* x, const float* w, const float* bias, int64_t k, int64_t c0, int64_t c1,
               float* out, int64_t ldo) {
  int64_t c = c0;
  for (; c + kCols <= c1; c += kCols) {
    micro_kernel<R, kCols>(x, w + c * k, k, bias ? bias + c : nullptr, out + c, ldo);
  }
  for (; c < c1; ++c) micro_kernel<R, 1>(x, w + c * k, k, bias ? bias + c : nullptr, out + c, ldo);
}

}  // namespace

void matmul(const MatmulParams& p) {
  PP_ASSERT(p.x && p.w && p.out && p.k > 0 && p.n > 0);
  const int64_t m = p.m, n = p.n, k = p.k;
  if (m <= 0) return;
  // Columns are split into chunks whose weights stay in L2 while every row of x passes them.
  int64_t chunk = std::max<int64_t>(kCols, kL2Bytes / (k * int64_t(sizeof(float))));
  // At least a few chunks per thread, so that a decode step (m = 1) keeps every thread busy.
  const int64_t n_threads = detail::pool_size();
  chunk = std::min(chunk, (n + 4 * n_threads - 1) / (4 * n_threads));
  chunk = (chunk + kCols - 1) / kCols * kCols;
  const int64_t n_chunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) num_threads(detail::pool_size()) if (n_chunks > 1)
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    const int64_t c0 = ch * chunk, c1 = std::min(n, c0 + chunk);
    int64_t r = 0;
    for (; r + kRows <= m; r += kRows) {
      row_block<kRows>(p.x + r * k, p.w, p.bias, k, c0, c1, p.out + r * n, n);
    }
    static_assert(kRows == 3, "the remainder below handles up to 2 rows");
    if (m - r == 2) row_block<2>(p.x + r * k, p.w, p.bias, k, c0, c1, p.out + r * n, n);
    if (m - r == 1) row_block<1>(p.x + r * k, p.w, p.bias, k, c0, c1, p.out + r * n, n);
  }
}

}  // namespace pp::kernels::cpu
