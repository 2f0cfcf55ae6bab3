// WeightSource's allocating read, shared by every weight reader.
#include "pp/model/weights.h"

namespace pp::model {

Result<std::vector<float>> WeightSource::read_f32(std::string_view name) const {
  const TensorInfo* t = find(name);
  if (t == nullptr) return not_found("no tensor '{}' in '{}'", name, describe());
  std::vector<float> out(size_t(t->numel()));
  PP_RETURN_IF_ERROR(read_f32(name, out));
  return out;
}

Result<kernels::HostWeight> WeightSource::read_weight(std::string_view name) const {
  const TensorInfo* t = find(name);
  if (t == nullptr) return not_found("no tensor '{}' in '{}'", name, describe());
  const int64_t rows = t->shape.empty() ? 1 : t->shape[0];
  kernels::HostWeight w = kernels::HostWeight::f32(rows, rows == 0 ? 0 : t->numel() / rows);
  PP_RETURN_IF_ERROR(read_f32(name, w.f32_rows(0, rows)));
  return w;
}

}  // namespace pp::model
