// Qwen2 (Qwen2ForCausalLM): the Llama decoder with a bias on the q, k and v projections (always;
// the config has no switch for it). Its sliding window is off unless use_sliding_window is set.
#include <nlohmann/json.hpp>

#include "arch/arch.h"
#include "json-field.h"
#include "pp/model/gguf.h"

namespace pp::model {
namespace {

Status read_hf(const nlohmann::json& j, ModelConfig& c) {
  c.attention_bias = true;
  PP_ASSIGN_OR_RETURN(std::optional<bool> use_window,
                      json_field::get_bool(j, "use_sliding_window"));
  if (use_window.value_or(false)) {
    PP_ASSIGN_OR_RETURN(std::optional<int64_t> window, json_field::get_int(j, "sliding_window"));
    c.sliding_window = window.value_or(0);
  }
  return ok_status();
}

Status read_gguf(const GgufFile& f, ModelConfig& c) {
  c.attention_bias = true;
  return ok_status();
}

void write_hf(const ModelConfig& c, nlohmann::json& j) {
  j["use_sliding_window"] = c.sliding_window > 0;
  j["sliding_window"] = c.sliding_window > 0 ? nlohmann::json(c.sliding_window) : nullptr;
}

}  // namespace

const ArchSpec& qwen2_arch() {
  static const ArchSpec kSpec = {
      .arch = Arch::kQwen2,
      .hf_class = "Qwen2ForCausalLM",
      .model_type = "qwen2",
      .gguf_name = "qwen2",
      .default_max_position = 32768,
      .default_rope_theta = 10000.0f,
      .read_hf = read_hf,
      .read_gguf = read_gguf,
      .write_hf = write_hf,
  };
  return kSpec;
}

}  // namespace pp::model
