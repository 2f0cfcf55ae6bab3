// Qwen3-MoE (Qwen3MoeForCausalLM: Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention (q/k norm,
// explicit head_dim) with a mixture-of-experts MLP: a router over num_experts SwiGLU experts of
// moe_intermediate_size, num_experts_per_tok of them per token, their probabilities renormalised
// when norm_topk_prob. Layers in mlp_only_layers, or off the decoder_sparse_step grid, keep a
// dense MLP of intermediate_size. The expert count is num_experts in the published configs and
// num_local_experts in the transformers-5 form; both are read.
#include <nlohmann/json.hpp>

#include "arch/arch.h"
#include "arch/decoder-layer.h"
#include "json-field.h"
#include "pp/model/gguf.h"

namespace pp::model {
namespace {

namespace jf = json_field;

constexpr MoeTensorNames kNames = {
    .router = "mlp.gate.weight",
    .expert_gate = "mlp.experts.{}.gate_proj.weight",
    .expert_up = "mlp.experts.{}.up_proj.weight",
    .expert_down = "mlp.experts.{}.down_proj.weight",
};

Status read_hf(const nlohmann::json& j, ModelConfig& c) {
  c.qk_norm = true;
  PP_ASSIGN_OR_RETURN(std::optional<int64_t> head_dim, jf::get_int(j, "head_dim"));
  if (!head_dim) c.head_dim = 128;  // Qwen3MoeConfig's default, as Qwen3's
  PP_ASSIGN_OR_RETURN(std::optional<bool> bias, jf::get_bool(j, "attention_bias"));
  c.attention_bias = bias.value_or(false);

  PP_ASSIGN_OR_RETURN(std::optional<int64_t> n_expert, jf::get_int(j, "num_experts"));
  if (!n_expert) {
    PP_ASSIGN_OR_RETURN(n_expert, jf::get_int(j, "num_local_experts"));
  }
  c.n_expert = n_expert.value_or(128);
  PP_ASSIGN_OR_RETURN(std::optional<int64_t> used, jf::get_int(j, "num_experts_per_tok"));
  c.n_expert_used = used.value_or(8);
  PP_ASSIGN_OR_RETURN(std::optional<int64_t> ff, jf::get_int(j, "moe_intermediate_size"));
  c.n_ff_expert = ff.value_or(768);
  PP_ASSIGN_OR_RETURN(std::optional<bool> norm, jf::get_bool(j, "norm_topk_prob"));
  c.expert_norm_topk = norm.value_or(false);
  PP_ASSIGN_OR_RETURN(std::optional<int64_t> step, jf::get_int(j, "decoder_sparse_step"));
  c.moe_sparse_step = step.value_or(1);
  c.moe_dense_layers.clear();
  if (const nlohmann::json* dense = jf::find(j, "mlp_only_layers")) {
    if (!dense->is_array()) return invalid_argument("field 'mlp_only_layers' must be a list");
    for (const nlohmann::json& il : *dense) {
      if (!il.is_number_integer()) {
        return invalid_argument("field 'mlp_only_layers' must hold layer indices, got {}",
                                il.dump());
      }
      c.moe_dense_layers.push_back(il.get<int64_t>());
    }
  }
  return read_qwen_sliding_window(j, c);
}

void write_hf(const ModelConfig& c, nlohmann::json& j) {
  j["attention_bias"] = c.attention_bias;
  j["num_experts"] = c.n_expert;
  j["num_experts_per_tok"] = c.n_expert_used;
  j["moe_intermediate_size"] = c.n_ff_expert;
  j["norm_topk_prob"] = c.expert_norm_topk;
  j["decoder_sparse_step"] = c.moe_sparse_step;
  j["mlp_only_layers"] = c.moe_dense_layers;
  write_qwen_sliding_window(c, j);
}

std::vector<TensorSpec> family_layer_tensors(const ModelConfig& c, int64_t il) {
  return c.layer_is_moe(il) ? moe_layer_tensors(c, il, kNames) : dense_layer_tensors(c, il);
}

}  // namespace

const ArchSpec& qwen3_moe_arch() {
  static const ArchSpec kSpec = {
      .arch = Arch::kQwen3Moe,
      .hf_class = "Qwen3MoeForCausalLM",
      .model_type = "qwen3_moe",
      .gguf_name = "qwen3moe",
      .default_max_position = 32768,
      .read_hf = read_hf,
      .read_gguf = read_moe_gguf,
      .write_hf = write_hf,
      .layer_tensors = family_layer_tensors,
  };
  return kSpec;
}

}  // namespace pp::model
