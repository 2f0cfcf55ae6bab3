// cpu::linear: the typed-weight face of the linear layer. It dispatches on the weight's format;
// the CPU backend holds f32 weights only (every loader dequantizes to f32), so f32 runs the
// batch-invariant matmul and anything else is a bug that aborts with the format's name.
#include <fmt/format.h>

#include "pp/assert.h"
#include "pp/kernels/cpu.h"

namespace pp::kernels::cpu {

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
  }
  const std::string msg = fmt::format(
      "cpu::linear: weights in {} with {} scales are not supported (the CPU backend "
      "is f32; load them dequantized)",
      weight_format_name(w.format), scale_kind_name(w.scale_kind));
  PP_ASSERT_MSG(false, msg.c_str());
}

}  // namespace pp::kernels::cpu
