// The avxvnni variant of the quantized dot products (quant-dot-simd.h); kernels/CMakeLists.txt
// gives this file its ISA flags, and quant-linear.cpp calls it only when the CPU has them.
#include "quant-dot-simd.h"

namespace pp::kernels::cpu::quant {

DotFn avxvnni_dot(WeightFormat f) { return dot_table<Isa::kAvxVnni>(f); }

}  // namespace pp::kernels::cpu::quant
