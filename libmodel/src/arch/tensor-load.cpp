// Shape-checked tensor reads, by the table's entries.
#include "arch/tensor-load.h"

#include <vector>

#include <fmt/ranges.h>

#include "pp/assert.h"

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

}  // namespace pp::model
