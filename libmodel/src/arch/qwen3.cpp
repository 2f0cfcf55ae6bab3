// Qwen3 (Qwen3ForCausalLM, dense): the Llama decoder with a per-head RMSNorm on q and k
// (q_norm / k_norm, weights [head_dim]) before RoPE, an explicit head_dim, and attention_bias
// as a config switch (usually false).
#include <nlohmann/json.hpp>

#include "arch/arch.h"
#include "arch/decoder-layer.h"
#include "json-field.h"
#include "pp/model/gguf.h"

namespace pp::model {
namespace {

Status read_hf(const nlohmann::json& j, ModelConfig& c) {
  c.qk_norm = true;
  // Qwen3Config's head_dim defaults to 128, not hidden_size / num_attention_heads.
  PP_ASSIGN_OR_RETURN(std::optional<int64_t> head_dim, json_field::get_int(j, "head_dim"));
  if (!head_dim) c.head_dim = 128;
  PP_ASSIGN_OR_RETURN(std::optional<bool> bias, json_field::get_bool(j, "attention_bias"));
  c.attention_bias = bias.value_or(false);
  return read_qwen_sliding_window(j, c);
}

Status read_gguf(const GgufFile& f, ModelConfig& c) {
  c.qk_norm = true;
  c.attention_bias = gguf_has_qkv_bias(f);
  return ok_status();
}

void write_hf(const ModelConfig& c, nlohmann::json& j) {
  j["attention_bias"] = c.attention_bias;
  write_qwen_sliding_window(c, j);
}

}  // namespace

const ArchSpec& qwen3_arch() {
  static const ArchSpec kSpec = {
      .arch = Arch::kQwen3,
      .hf_class = "Qwen3ForCausalLM",
      .model_type = "qwen3",
      .gguf_name = "qwen3",
      .default_max_position = 32768,
      .read_hf = read_hf,
      .read_gguf = read_gguf,
      .write_hf = write_hf,
  };
  return kSpec;
}

}  // namespace pp::model
