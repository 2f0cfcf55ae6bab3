// Qwen2 (Qwen2ForCausalLM): the Llama decoder with a bias on the q, k and v projections (always;
// the config has no switch for it). Its sliding window is off unless use_sliding_window is set.
#include <nlohmann/json.hpp>

#include "arch/arch.h"
#include "arch/decoder-layer.h"
#include "pp/model/gguf.h"

namespace pp::model {
namespace {

Status read_hf(const nlohmann::json& j, ModelConfig& c) {
  c.attention_bias = true;
  return read_qwen_sliding_window(j, c);
}

Status read_gguf(const GgufFile& f, ModelConfig& c) {
  c.attention_bias = true;
  return ok_status();
}

void write_hf(const ModelConfig& c, nlohmann::json& j) { write_qwen_sliding_window(c, j); }

}  // namespace

const ArchSpec& qwen2_arch() {
  static const ArchSpec kSpec = {
      .arch = Arch::kQwen2,
      .hf_class = "Qwen2ForCausalLM",
      .model_type = "qwen2",
      .gguf_name = "qwen2",
      .default_max_position = 32768,
      .read_hf = read_hf,
      .read_gguf = read_gguf,
      .write_hf = write_hf,
  };
  return kSpec;
}

}  // namespace pp::model
