// cpu::linear: the typed-weight face of the linear layer. It dispatches on the weight's format:
// f32 runs the batch-invariant matmul, the GGUF block formats the quantized linear
// (quant-linear.cpp); anything else is a bug of the loader (linear_supports says what it may
// hand over) that aborts with the format's name.
#include <fmt/format.h>

#include "cpu-common.h"
#include "pp/assert.h"
#include "pp/kernels/cpu.h"

namespace pp::kernels::cpu {

bool linear_supports(WeightFormat f, ScaleKind s) {
  if (s != ScaleKind::kNone) return false;
  return f == WeightFormat::kF32 || is_block_format(f);
}

void linear(const LinearParams& p) {
  const WeightView& w = p.w;
  switch (w.format) {
    case WeightFormat::kF32:
      if (w.scale_kind == ScaleKind::kNone) {
        matmul({.x = p.x,
                .w = w.as<float>(),
                .bias = p.bias,
                .out = p.out,
                .m = p.m,
                .n = w.rows,
                .k = w.cols});
        return;
      }
      break;
    case WeightFormat::kBF16:
    case WeightFormat::kF16:
    case WeightFormat::kFp8E4M3:
      break;
    default:
      if (linear_supports(w.format, w.scale_kind)) {
        detail::quant_linear(p);
        return;
      }
      break;
  }
  const std::string msg = fmt::format(
      "cpu::linear: weights in {} with {} scales are not supported (the CPU backend "
      "takes f32 and GGUF blocks; load them dequantized)",
      weight_format_name(w.format), scale_kind_name(w.scale_kind));
  PP_ASSERT_MSG(false, msg.c_str());
}

}  // namespace pp::kernels::cpu
