// ModelConfig: the normalized shape of a decoder-only transformer, whatever it was read from
// (a Hugging Face config.json in its older or transformers-5 form, or GGUF metadata).
// Everything downstream (planner, stage model, KV cache, server) reads only this struct.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "pp/status.h"

namespace pp::model {

enum class Arch : uint8_t {
  kLlama,     // LlamaForCausalLM: Llama 2/3, SmolLM2, TinyLlama
  kMistral,   // MistralForCausalLM (dense)
  kQwen2,     // Qwen2ForCausalLM: q/k/v bias
  kQwen3,     // Qwen3ForCausalLM: q/k RMSNorm per head
  kQwen3Moe,  // Qwen3MoeForCausalLM: Qwen3 attention, mixture-of-experts MLPs
  kMixtral,   // MixtralForCausalLM: Mistral attention, mixture-of-experts MLPs
};

const char* arch_name(Arch arch);  // the Hugging Face class name, "LlamaForCausalLM"

enum class RopeScaling : uint8_t { kNone, kLinear, kLlama3 };

struct RopeConfig {
  float theta = 10000.0f;  // base frequency
  RopeScaling scaling = RopeScaling::kNone;
  float factor = 1.0f;                   // linear and llama3
  float low_freq_factor = 1.0f;          // llama3
  float high_freq_factor = 4.0f;         // llama3
  int64_t original_max_position = 8192;  // llama3: original_max_position_embeddings
};

// How a checkpoint's weights are quantized: config.json's `quantization_config`. The loaders go
// by the tensors themselves (an F8_E4M3 tensor and its scale, see safetensors.h); this says what
// the checkpoint declares, so that a partition can write back what it stored, and an unsupported
// scheme (AWQ, GPTQ, int8, fp4, ...) is refused when the config is read. Activations are always
// quantized dynamically, per token, whatever the checkpoint's activation scheme.
struct WeightQuantConfig {
  enum class Method : uint8_t {
    kNone,               // no quantization_config: weights as their dtype says
    kFp8,                // quant_method "fp8" (DeepSeek-V3, Qwen3-FP8): e4m3, `weight_scale_inv`
    kCompressedTensors,  // quant_method "compressed-tensors" with fp8 e4m3 weights
  };
  // How the weights' scales are grouped.
  enum class Strategy : uint8_t {
    kTensor,   // one scale per tensor ("fp8" without weight_block_size)
    kChannel,  // one per output channel (row)
    kBlock,    // one per 128 x 128 tile (weight_block_size / block_structure [128, 128])
  };
  Method method = Method::kNone;
  Strategy strategy = Strategy::kBlock;
  bool static_activations = false;  // the checkpoint ships static input scales (pp ignores them)
  // Modules kept in their precision: "fp8"'s modules_to_not_convert, compressed-tensors' ignore
  // (names or "re:" patterns, as the checkpoint writes them).
  std::vector<std::string> not_converted;

  bool quantized() const { return method != Method::kNone; }
  bool operator==(const WeightQuantConfig&) const = default;
};

const char* weight_quant_method_name(WeightQuantConfig::Method m);      // "none", "fp8", ...
const char* weight_quant_strategy_name(WeightQuantConfig::Strategy s);  // "tensor", ...

struct ModelConfig {
  Arch arch = Arch::kLlama;
  std::string model_type;    // "llama", "qwen3", ...
  int64_t n_vocab = 0;       // vocab_size
  int64_t n_embd = 0;        // hidden_size
  int64_t n_ff = 0;          // intermediate_size
  int64_t n_layer = 0;       // num_hidden_layers
  int64_t n_head = 0;        // num_attention_heads
  int64_t n_head_kv = 0;     // num_key_value_heads (== n_head without GQA)
  int64_t head_dim = 0;      // head_dim, or n_embd / n_head when absent
  int64_t max_position = 0;  // max_position_embeddings (the context length)
  float rms_norm_eps = 1e-6f;
  RopeConfig rope;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v projections carry a bias (Qwen2; config attention_bias)
  bool qk_norm = false;         // per-head RMSNorm on q and k before RoPE (Qwen3)
  int64_t sliding_window = 0;   // 0 = none; Mistral's sliding window (we refuse > context use)
  std::string torch_dtype = "float32";  // dtype the weights were published in
  std::vector<int32_t> bos_token_ids;   // usually one
  std::vector<int32_t> eos_token_ids;   // config + generation_config, deduplicated
  WeightQuantConfig quant;              // quantization_config; method kNone when absent

  // Mixture of experts (Qwen3-MoE, Mixtral); n_expert == 0 for a dense model. An MoE layer's MLP
  // is n_expert SwiGLU experts of n_ff_expert, of which a router picks n_expert_used per token.
  int64_t n_expert = 0;  // num_experts (Qwen3-MoE) / num_local_experts (Mixtral, transformers 5)
  int64_t n_expert_used = 0;      // num_experts_per_tok: the top k
  int64_t n_ff_expert = 0;        // moe_intermediate_size (Qwen3-MoE); intermediate_size (Mixtral)
  bool expert_norm_topk = false;  // renormalise the top k's probabilities to sum to 1
  // Which layers are MoE (Qwen3-MoE): those with (il + 1) % moe_sparse_step == 0 and not in
  // moe_dense_layers (mlp_only_layers); the others are dense MLPs of n_ff.
  int64_t moe_sparse_step = 1;            // decoder_sparse_step
  std::vector<int64_t> moe_dense_layers;  // mlp_only_layers

  bool is_moe() const { return n_expert > 0; }
  bool layer_is_moe(int64_t il) const;

  // The longest context we serve: max_position, capped by a sliding window (full attention
  // equals sliding-window attention while the context fits in the window).
  int64_t max_context() const {
    return sliding_window > 0 && sliding_window < max_position ? sliding_window : max_position;
  }
  int64_t q_dim() const { return n_head * head_dim; }
  int64_t kv_dim() const { return n_head_kv * head_dim; }
  // Bytes of K and V for one token in one layer at `bytes_per_elem` precision.
  int64_t kv_bytes_per_token_layer(int64_t bytes_per_elem) const {
    return 2 * kv_dim() * bytes_per_elem;
  }

  // A clear error when the shape is inconsistent (n_head % n_head_kv != 0, zero sizes, ...).
  Status validate() const;
};

// Parses a Hugging Face config.json (both the older `rope_theta`/`rope_scaling`/`torch_dtype`
// form and the transformers-5 `rope_parameters`/`dtype` form). An unknown architecture is an
// error naming it; so is a quantization_config other than fp8 e4m3 (quant_method "fp8", block
// 128 x 128 or per tensor) or compressed-tensors with 8-bit float weights (tensor, channel or
// 128 x 128 block strategy).
Result<ModelConfig> config_from_hf_json(const nlohmann::json& j);
// Reads DIR/config.json and, when present, DIR/generation_config.json (for eos ids).
Result<ModelConfig> config_from_hf_dir(const std::filesystem::path& dir);
// A config.json file, or a folder holding config.json (and maybe generation_config.json).
Result<ModelConfig> config_from_path(const std::filesystem::path& path);
// Writes the normalized config back in the older Hugging Face form (what pp-partition stores),
// with a quantization_config when the weights are quantized.
nlohmann::json config_to_hf_json(const ModelConfig& c);
// The quantization_config object alone (parse_quantization_config reads what it writes), and
// its parser; a missing or null object is method kNone.
nlohmann::json quantization_config_to_json(const WeightQuantConfig& q);
Result<WeightQuantConfig> parse_quantization_config(const nlohmann::json& j);

}  // namespace pp::model
