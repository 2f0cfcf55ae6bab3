// The random weight source: the tensors of a config's table (model_tensors), and values from the
// shared generator.
#include "pp/model/random-weights.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "pp/kernels/random-weights.h"
#include "pp/model/arch-tensors.h"

namespace pp::model {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

class RandomSource final : public WeightSource {
 public:
  // Every tensor of a checkpoint of `c` (the table; a tied model has no lm_head.weight).
  RandomSource(const ModelConfig& c, uint64_t seed) : seed_(seed) {
    for (TensorSpec& t : model_tensors(c)) {
      if (!t.optional) add(std::move(t.name), std::move(t.shape));
    }
  }

  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    out.reserve(tensors_.size());
    for (const auto& [name, info] : tensors_) out.push_back(name);
    return out;  // std::map: sorted
  }
  const TensorInfo* find(std::string_view name) const override {
    auto it = tensors_.find(std::string(name));
    return it == tensors_.end() ? nullptr : &it->second;
  }
  Status read_f32(std::string_view name, std::span<float> out) const override {
    const TensorInfo* t = find(name);
    if (!t) return not_found("no tensor '{}' in {}", name, describe());
    if (int64_t(out.size()) != t->numel()) {
      return invalid_argument("tensor '{}' has {} values, the buffer {}", name, t->numel(),
                              out.size());
    }
    const RandomRange r = random_weight_range(t->name, t->shape);
    const uint64_t key = random_weight_key_for(seed_, t->name);
    for (size_t i = 0; i < out.size(); ++i) {
      out[i] = kernels::random_weight_value(key, i, r.lo, r.hi);
    }
    return ok_status();
  }
  std::string describe() const override { return fmt::format("random weights (seed {})", seed_); }

 private:
  void add(std::string name, std::vector<int64_t> shape) {
    TensorInfo t;
    t.name = name;
    t.dtype = DType::kBF16;
    t.shape = std::move(shape);
    t.nbytes = uint64_t(t.numel()) * 2;
    tensors_.emplace(std::move(name), std::move(t));
  }
  uint64_t seed_;
  std::map<std::string, TensorInfo> tensors_;
};

}  // namespace

RandomRange random_weight_range(const std::string& name, const std::vector<int64_t>& shape) {
  if (ends_with(name, "norm.weight")) return {0.9f, 1.1f};
  if (ends_with(name, ".bias")) return {-0.02f, 0.02f};
  if (name == "model.embed_tokens.weight") return {-1.0f, 1.0f};
  const float in = shape.size() == 2 ? float(shape[1]) : 1.0f;
  const float a = std::sqrt(3.0f / in);
  return {-a, a};
}

uint64_t random_weight_key_for(uint64_t seed, const std::string& name) {
  return kernels::random_weight_key(seed, name);
}

Result<std::unique_ptr<WeightSource>> random_weights(const ModelConfig& config, uint64_t seed) {
  PP_RETURN_IF_ERROR(config.validate());
  return std::unique_ptr<WeightSource>(std::make_unique<RandomSource>(config, seed));
}

}  // namespace pp::model
