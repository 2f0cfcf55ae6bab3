// Mistral (MistralForCausalLM, dense): the Llama decoder without biases, with an optional
// sliding window. We run full attention and cap the context at the window
// (ModelConfig::max_context), where the two are the same.
#include <nlohmann/json.hpp>

#include "arch/arch.h"
#include "arch/decoder-layer.h"
#include "json-field.h"
#include "pp/model/gguf.h"

namespace pp::model {
namespace {

Status read_hf(const nlohmann::json& j, ModelConfig& c) {
  c.attention_bias = false;
  PP_ASSIGN_OR_RETURN(std::optional<int64_t> window, json_field::get_int(j, "sliding_window"));
  if (window && *window < 0) return invalid_argument("field 'sliding_window' must be >= 0");
  c.sliding_window = window.value_or(0);
  return ok_status();
}

Status read_gguf(const GgufFile& f, ModelConfig& c) {
  c.attention_bias = false;
  if (f.find("mistral.attention.sliding_window")) {
    PP_ASSIGN_OR_RETURN(c.sliding_window, f.get_int("mistral.attention.sliding_window"));
  }
  return ok_status();
}

void write_hf(const ModelConfig& c, nlohmann::json& j) {
  j["sliding_window"] = c.sliding_window > 0 ? nlohmann::json(c.sliding_window) : nullptr;
}

}  // namespace

const ArchSpec& mistral_arch() {
  static const ArchSpec kSpec = {
      .arch = Arch::kMistral,
      .hf_class = "MistralForCausalLM",
      .model_type = "mistral",
      .gguf_name = "mistral",
      .default_max_position = 4096 * 32,
      .read_hf = read_hf,
      .read_gguf = read_gguf,
      .write_hf = write_hf,
  };
  return kSpec;
}

}  // namespace pp::model
