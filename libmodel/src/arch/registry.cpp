// The table of supported architectures and the lookups by Hugging Face class, model_type and
// GGUF architecture name.
#include <array>
#include <optional>

#include <nlohmann/json.hpp>

#include "arch/arch.h"
#include "json-field.h"
#include "pp/assert.h"
#include "pp/model/gguf.h"

namespace pp::model {

std::span<const ArchSpec* const> all_archs() {
  static const std::array<const ArchSpec*, 6> kArchs = {&llama_arch(),     &mistral_arch(),
                                                        &qwen2_arch(),     &qwen3_arch(),
                                                        &qwen3_moe_arch(), &mixtral_arch()};
  return kArchs;
}

const ArchSpec& arch_spec(Arch arch) {
  for (const ArchSpec* a : all_archs()) {
    if (a->arch == arch) return *a;
  }
  PP_ASSERT_MSG(false, "architecture missing from the registry");
}

const ArchSpec* find_arch_by_hf_class(std::string_view hf_class) {
  for (const ArchSpec* a : all_archs()) {
    if (hf_class == a->hf_class) return a;
  }
  return nullptr;
}

const ArchSpec* find_arch_by_model_type(std::string_view model_type) {
  for (const ArchSpec* a : all_archs()) {
    if (model_type == a->model_type) return a;
  }
  return nullptr;
}

const ArchSpec* find_arch_by_gguf_name(std::string_view gguf_name) {
  for (const ArchSpec* a : all_archs()) {
    if (!gguf_name.empty() && gguf_name == a->gguf_name) return a;
  }
  return nullptr;
}

bool gguf_has_qkv_bias(const GgufFile& f) { return f.find_tensor("blk.0.attn_q.bias") != nullptr; }

Status read_qwen_sliding_window(const nlohmann::json& j, ModelConfig& c) {
  PP_ASSIGN_OR_RETURN(std::optional<bool> use_window,
                      json_field::get_bool(j, "use_sliding_window"));
  if (use_window.value_or(false)) {
    PP_ASSIGN_OR_RETURN(std::optional<int64_t> window, json_field::get_int(j, "sliding_window"));
    c.sliding_window = window.value_or(0);
  }
  return ok_status();
}

void write_qwen_sliding_window(const ModelConfig& c, nlohmann::json& j) {
  j["use_sliding_window"] = c.sliding_window > 0;
  j["sliding_window"] = c.sliding_window > 0 ? nlohmann::json(c.sliding_window) : nullptr;
}

Status read_moe_gguf(const GgufFile&, ModelConfig&) {
  return unimplemented("mixture-of-experts GGUF files are not supported yet");
}

const char* arch_name(Arch arch) { return arch_spec(arch).hf_class; }

}  // namespace pp::model
