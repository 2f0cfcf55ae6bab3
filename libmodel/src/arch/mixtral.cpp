// Mixtral (MixtralForCausalLM: Mixtral-8x7B, 8x22B): Mistral's attention (no biases, optional
// sliding window) with a mixture-of-experts MLP in every layer: a router
// (block_sparse_moe.gate) over num_local_experts SwiGLU experts of intermediate_size (w1 the
// gate, w3 the up, w2 the down), num_experts_per_tok of them per token. Mixtral weighs the
// chosen experts by a softmax over their router logits alone, which is the softmax over all
// experts renormalised over the top k: expert_norm_topk is always on.
#include <nlohmann/json.hpp>

#include "arch/arch.h"
#include "arch/decoder-layer.h"
#include "json-field.h"
#include "pp/model/gguf.h"

namespace pp::model {
namespace {

namespace jf = json_field;

constexpr MoeTensorNames kNames = {
    .router = "block_sparse_moe.gate.weight",
    .expert_gate = "block_sparse_moe.experts.{}.w1.weight",
    .expert_up = "block_sparse_moe.experts.{}.w3.weight",
    .expert_down = "block_sparse_moe.experts.{}.w2.weight",
};

Status read_hf(const nlohmann::json& j, ModelConfig& c) {
  c.attention_bias = false;
  PP_ASSIGN_OR_RETURN(std::optional<int64_t> window, jf::get_int(j, "sliding_window"));
  if (window && *window < 0) return invalid_argument("field 'sliding_window' must be >= 0");
  c.sliding_window = window.value_or(0);
  PP_ASSIGN_OR_RETURN(std::optional<int64_t> n_expert, jf::get_int(j, "num_local_experts"));
  c.n_expert = n_expert.value_or(8);
  PP_ASSIGN_OR_RETURN(std::optional<int64_t> used, jf::get_int(j, "num_experts_per_tok"));
  c.n_expert_used = used.value_or(2);
  c.n_ff_expert = c.n_ff;
  c.expert_norm_topk = true;
  c.moe_sparse_step = 1;
  c.moe_dense_layers.clear();
  return ok_status();
}

void write_hf(const ModelConfig& c, nlohmann::json& j) {
  j["sliding_window"] = c.sliding_window > 0 ? nlohmann::json(c.sliding_window) : nullptr;
  j["num_local_experts"] = c.n_expert;
  j["num_experts_per_tok"] = c.n_expert_used;
}

std::vector<TensorSpec> family_layer_tensors(const ModelConfig& c, int64_t il) {
  return moe_layer_tensors(c, il, kNames);
}

}  // namespace

const ArchSpec& mixtral_arch() {
  static const ArchSpec kSpec = {
      .arch = Arch::kMixtral,
      .hf_class = "MixtralForCausalLM",
      .model_type = "mixtral",
      // llama.cpp writes Mixtral as a "llama" GGUF with experts (refused when the config is
      // read), so no GGUF architecture name maps here.
      .gguf_name = "",
      .default_max_position = 4096 * 32,
      .default_rope_theta = 1e6f,
      .read_hf = read_hf,
      .read_gguf = read_moe_gguf,
      .write_hf = write_hf,
      .layer_tensors = family_layer_tensors,
  };
  return kSpec;
}

}  // namespace pp::model
