// The avx2 variant of the quantized dot products (quant-dot-simd.h); kernels/CMakeLists.txt gives
// this file its ISA flags, and quant-linear.cpp calls it only when the CPU has them.
#include "quant-dot-simd.h"

namespace pp::kernels::cpu::quant {

DotFn avx2_dot(WeightFormat f) { return dot_table<Isa::kAvx2>(f); }

}  // namespace pp::kernels::cpu::quant
