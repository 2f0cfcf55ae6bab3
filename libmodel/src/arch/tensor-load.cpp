// Shape-checked tensor reads.
#include "arch/tensor-load.h"

#include <vector>

#include <fmt/ranges.h>

#include "pp/assert.h"

namespace pp::model {

Status load_tensor(const WeightSource& w, const std::string& name,
                   std::initializer_list<int64_t> shape, std::span<float> dst) {
  const TensorInfo* info = w.find(name);
  if (!info) return not_found("tensor '{}' not found in '{}'", name, w.describe());
  std::vector<int64_t> want(shape);
  if (info->shape != want) {
    return data_loss("tensor '{}' in '{}' has shape [{}], expected [{}]", name, w.describe(),
                     fmt::join(info->shape, ", "), fmt::join(want, ", "));
  }
  PP_ASSERT(int64_t(dst.size()) == info->numel());
  Status s = w.read_f32(name, dst);
  if (!s.ok()) return s.with_context(fmt::format("reading tensor '{}'", name));
  return ok_status();
}

}  // namespace pp::model
