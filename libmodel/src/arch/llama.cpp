// Llama (LlamaForCausalLM): Llama 2 and 3, TinyLlama, SmolLM2. The plain pre-norm decoder;
// attention_bias is a config switch (false in every released checkpoint), mlp_bias we refuse.
// RoPE scaling ("linear", "llama3") is read by the common config code.
#include <nlohmann/json.hpp>

#include "arch/arch.h"
#include "arch/decoder-layer.h"
#include "json-field.h"
#include "pp/model/gguf.h"

namespace pp::model {
namespace {

Status read_hf(const nlohmann::json& j, ModelConfig& c) {
  PP_ASSIGN_OR_RETURN(std::optional<bool> bias, json_field::get_bool(j, "attention_bias"));
  c.attention_bias = bias.value_or(false);
  PP_ASSIGN_OR_RETURN(std::optional<bool> mlp_bias, json_field::get_bool(j, "mlp_bias"));
  if (mlp_bias.value_or(false)) return unimplemented("'mlp_bias': true is not supported");
  return ok_status();
}

Status read_gguf(const GgufFile& f, ModelConfig& c) {
  c.attention_bias = gguf_has_qkv_bias(f);
  return ok_status();
}

void write_hf(const ModelConfig& c, nlohmann::json& j) {
  j["attention_bias"] = c.attention_bias;
  j["mlp_bias"] = false;
}

}  // namespace

const ArchSpec& llama_arch() {
  static const ArchSpec kSpec = {
      .arch = Arch::kLlama,
      .hf_class = "LlamaForCausalLM",
      .model_type = "llama",
      .gguf_name = "llama",
      .default_max_position = 2048,
      .read_hf = read_hf,
      .read_gguf = read_gguf,
      .write_hf = write_hf,
  };
  return kSpec;
}

}  // namespace pp::model
