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

}  // namespace pp::model
