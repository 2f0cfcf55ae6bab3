// RandomWeightSource: every tensor a model of `config` needs, filled with deterministic
// pseudo-random values (pp/kernels/random-weights.h) instead of read from a file. Serves
// `--random-weights SEED`: benchmarks at real sizes (a Qwen3-8B shape) without a download, and
// CPU-versus-GPU checks at any shape, since the GPU fills its weights with the same numbers.
//
// Values are bf16-exact: linear weights uniform in +-sqrt(3 / in_features) (unit variance out
// for unit variance in), norms in [0.9, 1.1), biases in +-0.02, embeddings in +-1.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pp/model/config.h"
#include "pp/model/weights.h"

namespace pp::model {

struct RandomRange {
  float lo = 0.0f, hi = 0.0f;
};

// The range of a tensor by its Hugging Face name and shape.
RandomRange random_weight_range(const std::string& name, const std::vector<int64_t>& shape);
// The key of a tensor's value stream for a seed (kernels::random_weight_key).
uint64_t random_weight_key_for(uint64_t seed, const std::string& name);

// kInvalidArgument for an invalid config.
Result<std::unique_ptr<WeightSource>> random_weights(const ModelConfig& config, uint64_t seed);

}  // namespace pp::model
