// Thread count of the CPU backend. One process-wide value drives every OpenMP region of the
// kernels (through a num_threads clause, so it holds whichever thread calls a kernel) and
// OpenBLAS. The kernels split work so that no result depends on this number.
#include <cblas.h>
#include <omp.h>

#include <atomic>

#include "cpu-common.h"
#include "pp/kernels/cpu.h"

namespace pp::kernels::cpu {
namespace {
std::atomic<int> g_threads{0};  // 0: not set yet, use OpenMP's default
}  // namespace

void set_num_threads(int n) {
  if (n <= 0) n = omp_get_num_procs();
  g_threads.store(n, std::memory_order_relaxed);
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int num_threads() { return detail::pool_size(); }

namespace detail {
int pool_size() {
  const int n = g_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : omp_get_max_threads();
}
}  // namespace detail

}  // namespace pp::kernels::cpu
