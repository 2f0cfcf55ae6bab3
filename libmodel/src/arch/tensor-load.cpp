// Shape-checked tensor reads, by the table's entries.
#include "arch/tensor-load.h"

#include <map>
#include <optional>
#include <vector>

#include <fmt/ranges.h>

#include "pp/assert.h"
#include "pp/model/gguf.h"

namespace pp::model {

Result<const TensorInfo*> find_tensor(const WeightSource& w, const TensorSpec& t) {
  const TensorInfo* info = w.find(t.name);
  if (!info && t.slot == WeightSlot::kLmHead) {
    // The head reads lm_head.weight when the source has it, so here the embedding is missing too.
    return not_found("neither 'lm_head.weight' nor 'model.embed_tokens.weight' in '{}'",
                     w.describe());
  }
  if (!info) return not_found("tensor '{}' not found in '{}'", t.name, w.describe());
  if (info->shape != t.shape) {
    return data_loss("tensor '{}' in '{}' has shape [{}], expected [{}]", t.name, w.describe(),
                     fmt::join(info->shape, ", "), fmt::join(t.shape, ", "));
  }
  return info;
}

Status load_tensor(const WeightSource& w, const TensorSpec& t, std::span<float> dst) {
  PP_ASSIGN_OR_RETURN(const TensorInfo* info, find_tensor(w, t));
  PP_ASSERT(int64_t(dst.size()) == info->numel());
  Status s = w.read_f32(t.name, dst);
  if (!s.ok()) return s.with_context(fmt::format("reading tensor '{}'", t.name));
  return ok_status();
}

Status load_f32_slots(const WeightSource& w, std::span<const TensorSpec> tensors,
                      SlotMap<kernels::HostWeight>& slots) {
  const std::vector<SlotSpec> shapes = slots_of(tensors);
  for (const SlotSpec& s : shapes) {
    PP_ASSERT_MSG(s.layer == shapes.front().layer, "one layer's slots (or the edges') at a time");
    slots[s.slot] = kernels::HostWeight::f32(s.rows, s.cols);
  }
  for (const TensorSpec& t : tensors) {
    PP_RETURN_IF_ERROR(load_tensor(w, t, slots[t.slot].f32_rows(t.row_offset, t.rows())));
  }
  return ok_status();
}

Status load_cpu_slots(const WeightSource& w, std::span<const TensorSpec> tensors,
                      SlotMap<kernels::HostWeight>& slots, CpuDtype cpu_dtype) {
  if (cpu_dtype == CpuDtype::kF32) return load_f32_slots(w, tensors, slots);
  // Each slot's block format when every tensor of it shares one the CPU takes.
  std::map<WeightSlot, std::optional<kernels::WeightFormat>> format;
  for (const TensorSpec& t : tensors) {
    PP_ASSIGN_OR_RETURN(const TensorInfo* info, find_tensor(w, t));
    std::optional<kernels::WeightFormat> f = block_weight_format(info->dtype);
    if (f && (!t.is_matrix() || t.cols() % kernels::weight_format_block_elems(*f) != 0)) {
      f.reset();
    }
    auto [it, fresh] = format.emplace(t.slot, f);
    if (!fresh && it->second != f) it->second.reset();
  }
  std::vector<TensorSpec> as_f32;
  for (const TensorSpec& t : tensors) {
    if (!format[t.slot]) as_f32.push_back(t);
  }
  if (!as_f32.empty()) PP_RETURN_IF_ERROR(load_f32_slots(w, as_f32, slots));
  for (const SlotSpec& s : slots_of(tensors)) {
    if (format[s.slot]) slots[s.slot] = kernels::HostWeight::zeros(*format[s.slot], s.rows, s.cols);
  }
  for (const TensorSpec& t : tensors) {
    if (!format[t.slot]) continue;
    Result<kernels::HostWeight> r = w.read_weight(t.name);
    if (!r.ok()) return r.status().with_context(fmt::format("reading tensor '{}'", t.name));
    if (r->format() != *format[t.slot] || r->rows() != t.rows() || r->cols() != t.cols()) {
      return data_loss("tensor '{}' in '{}' reads as {} [{}, {}], expected {} [{}, {}]", t.name,
                       w.describe(), kernels::weight_format_name(r->format()), r->rows(), r->cols(),
                       kernels::weight_format_name(*format[t.slot]), t.rows(), t.cols());
    }
    const std::span<const std::byte> src = r->bytes();
    const std::span<std::byte> dst = slots[t.slot].row_bytes(t.row_offset, t.rows());
    PP_ASSERT(src.size() == dst.size());
    std::copy(src.begin(), src.end(), dst.begin());
  }
  return ok_status();
}

}  // namespace pp::model
