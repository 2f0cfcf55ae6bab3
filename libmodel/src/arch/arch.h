// ArchSpec: what one decoder architecture adds to the shared code. Every family we serve is the
// same pre-norm decoder (decoder-layer.h); a family differs only in names, defaults and a few
// switches on ModelConfig (q/k/v bias, q/k norm, sliding window). Each family lives in its own
// file (llama.cpp, mistral.cpp, qwen2.cpp, qwen3.cpp, qwen3-moe.cpp, mixtral.cpp) and fills one
// of these, pointing at the table of its layer's tensors (arch-tensors.h): the dense families
// share the dense decoder's; an MoE family's table swaps the MLP for a router and experts
// (moe_layer_tensors), which the same layer runs.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "pp/model/arch-tensors.h"
#include "pp/model/config.h"
#include "pp/status.h"

namespace pp::model {

class GgufFile;

// The tensors of layer `il` of the dense pre-norm decoder (decoder-layer.cpp) that every family
// we serve shares: the default table of an ArchSpec.
std::vector<TensorSpec> dense_layer_tensors(const ModelConfig& c, int64_t il);

// What an MoE family calls its router and experts, under the layer prefix. `expert_*` are
// format strings of the expert index: "mlp.experts.{}.gate_proj.weight".
struct MoeTensorNames {
  const char* router;       // "mlp.gate.weight" [n_expert, n_embd]
  const char* expert_gate;  // [n_ff_expert, n_embd]
  const char* expert_up;    // [n_ff_expert, n_embd]
  const char* expert_down;  // [n_embd, n_ff_expert]
};
// Layer `il` with an MoE MLP: the dense decoder's attention and norms, then the router and each
// expert's gate, up and down (slots kRouter, kExpertGateUp, kExpertDown; arch-tensors.h).
std::vector<TensorSpec> moe_layer_tensors(const ModelConfig& c, int64_t il,
                                          const MoeTensorNames& names);
// The MoE families' GGUF reader: refuses the file (GGUF experts are not supported yet).
Status read_moe_gguf(const GgufFile& f, ModelConfig& c);

struct ArchSpec {
  Arch arch = Arch::kLlama;
  const char* hf_class = "";            // "LlamaForCausalLM"
  const char* model_type = "";          // "llama" (config.json's model_type)
  const char* gguf_name = "";           // "llama" (GGUF general.architecture)
  int64_t default_max_position = 2048;  // transformers' default max_position_embeddings
  float default_rope_theta = 10000.0f;  // transformers' default rope_theta
  // Reads the family's own config.json fields into `c`, after the common ones.
  Status (*read_hf)(const nlohmann::json& j, ModelConfig& c) = nullptr;
  // Reads the family's own GGUF metadata (and tensor presence) into `c`.
  Status (*read_gguf)(const GgufFile& f, ModelConfig& c) = nullptr;
  // Writes the family's own fields back into a config.json object.
  void (*write_hf)(const ModelConfig& c, nlohmann::json& j) = nullptr;
  // The tensors of layer `il` (names under layer_prefix(il)), in load order: the dense
  // decoder's unless the family (an MoE one, say) has its own.
  std::vector<TensorSpec> (*layer_tensors)(const ModelConfig& c, int64_t il) = dense_layer_tensors;
};

// "model.layers.<il>.": the prefix of every layer tensor's name, in every family we serve.
constexpr std::string_view kLayerPrefix = "model.layers.";
std::string layer_prefix(int64_t il);

const ArchSpec& llama_arch();
const ArchSpec& mistral_arch();
const ArchSpec& qwen2_arch();
const ArchSpec& qwen3_arch();
const ArchSpec& qwen3_moe_arch();
const ArchSpec& mixtral_arch();

// Every supported family, and lookups by the names the files use. nullptr when unknown.
std::span<const ArchSpec* const> all_archs();
const ArchSpec& arch_spec(Arch arch);
const ArchSpec* find_arch_by_hf_class(std::string_view hf_class);
const ArchSpec* find_arch_by_model_type(std::string_view model_type);
const ArchSpec* find_arch_by_gguf_name(std::string_view gguf_name);

// Helpers the family files share.
// True when the GGUF file has a bias tensor for layer 0's q projection.
bool gguf_has_qkv_bias(const GgufFile& f);
// Qwen2/Qwen3's window: sliding_window counts only when use_sliding_window is true.
Status read_qwen_sliding_window(const nlohmann::json& j, ModelConfig& c);
void write_qwen_sliding_window(const ModelConfig& c, nlohmann::json& j);

}  // namespace pp::model
