// Reading one weight tensor into f32 memory with its shape checked first, so a wrong or
// truncated checkpoint fails with the tensor's name instead of producing garbage.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>

#include "pp/model/weights.h"
#include "pp/status.h"

namespace pp::model {

// Reads `name` (expected Hugging Face shape `shape`) into `dst` (exactly numel floats).
// kNotFound when absent, kDataLoss when its shape differs.
Status load_tensor(const WeightSource& w, const std::string& name,
                   std::initializer_list<int64_t> shape, std::span<float> dst);

}  // namespace pp::model
