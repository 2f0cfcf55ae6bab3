// Reading the tensors of the table (arch-tensors.h) from a weight source, with each tensor's
// shape checked first, so a wrong or truncated checkpoint fails with the tensor's name instead
// of producing garbage. Both stage models go through find_tensor; the CPU one loads f32 slots.
#pragma once

#include <span>

#include "pp/kernels/host-weight.h"
#include "pp/model/arch-tensors.h"
#include "pp/model/quantization.h"
#include "pp/model/weights.h"
#include "pp/status.h"

namespace pp::model {

// The source's entry for `t`. kNotFound when absent (for the lm_head, naming both tensors it
// could have read), kDataLoss when its shape is not the table's.
Result<const TensorInfo*> find_tensor(const WeightSource& w, const TensorSpec& t);

// Reads `t` as f32 into `dst` (exactly t.numel() floats), after find_tensor's checks.
Status load_tensor(const WeightSource& w, const TensorSpec& t, std::span<float> dst);

// Allocates every slot `tensors` fill as a zeroed f32 weight of the slot's shape (slots_of), then
// reads each tensor into its rows of its slot.
Status load_f32_slots(const WeightSource& w, std::span<const TensorSpec> tensors,
                      SlotMap<kernels::HostWeight>& slots);

// As load_f32_slots, except with CpuDtype::kAuto a slot whose tensors are all of one GGUF block
// type the CPU's linear takes (block_weight_format) keeps that format: its tensors' stored rows,
// concatenated. Every other slot is f32.
Status load_cpu_slots(const WeightSource& w, std::span<const TensorSpec> tensors,
                      SlotMap<kernels::HostWeight>& slots, CpuDtype cpu_dtype);

}  // namespace pp::model
