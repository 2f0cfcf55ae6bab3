// config.json's quantization_config: the two FP8 forms pp serves, read into WeightQuantConfig and
// written back; every other scheme is one line naming it and saying what pp supports.
//
//   "fp8" (transformers' FineGrainedFP8, DeepSeek-V3, Qwen3-FP8):
//     {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
//      "weight_block_size": [128, 128], "modules_to_not_convert": ["lm_head"]}
//   "compressed-tensors" (llm-compressor's FP8, FP8-dynamic, FP8-block):
//     {"quant_method": "compressed-tensors", "format": "float-quantized",
//      "config_groups": {"group_0": {"targets": ["Linear"],
//        "weights": {"num_bits": 8, "type": "float", "strategy": "channel", ...},
//        "input_activations": {"num_bits": 8, "type": "float", "dynamic": true, ...}}},
//      "ignore": ["lm_head"]}
#include <nlohmann/json.hpp>

#include "json-field.h"
#include "pp/model/config.h"

namespace pp::model {
namespace {

namespace jf = json_field;
using Method = WeightQuantConfig::Method;
using Strategy = WeightQuantConfig::Strategy;

constexpr const char* kSupported =
    "pp supports fp8 (e4m3, block 128x128) and compressed-tensors fp8";

Status unsupported(std::string_view what) {
  return unimplemented("quantization_config: {} is not supported ({})", what, kSupported);
}

// A list of strings (modules_to_not_convert, ignore); null or absent is empty.
Result<std::vector<std::string>> string_list(const nlohmann::json& j, const char* key) {
  std::vector<std::string> out;
  const nlohmann::json* v = jf::find(j, key);
  if (!v) return out;
  if (!v->is_array()) return invalid_argument("quantization_config: '{}' must be a list", key);
  for (const nlohmann::json& s : *v) {
    if (!s.is_string()) {
      return invalid_argument("quantization_config: '{}' must hold strings, got {}", key, s.dump());
    }
    out.push_back(s.get<std::string>());
  }
  return out;
}

// [128, 128] (weight_block_size, block_structure); anything else is unsupported.
Status check_block(const nlohmann::json& b, const char* key) {
  if (b.is_array() && b.size() == 2 && b[0].is_number_integer() && b[1].is_number_integer() &&
      b[0].get<int64_t>() == 128 && b[1].get<int64_t>() == 128) {
    return ok_status();
  }
  return unsupported(fmt::format("{} {}", key, b.dump()));
}

Result<WeightQuantConfig> parse_fp8(const nlohmann::json& j) {
  WeightQuantConfig q;
  q.method = Method::kFp8;
  PP_ASSIGN_OR_RETURN(std::optional<std::string> fmt, jf::get_string(j, "fmt"));
  if (fmt && *fmt != "e4m3") return unsupported(fmt::format("fp8 format '{}'", *fmt));
  PP_ASSIGN_OR_RETURN(std::optional<std::string> act, jf::get_string(j, "activation_scheme"));
  if (act && *act != "dynamic" && *act != "static") {
    return invalid_argument("quantization_config: activation_scheme '{}' (dynamic or static)",
                            *act);
  }
  q.static_activations = act == "static";
  if (const nlohmann::json* b = jf::find(j, "weight_block_size")) {
    PP_RETURN_IF_ERROR(check_block(*b, "weight_block_size"));
    q.strategy = Strategy::kBlock;
  } else {
    q.strategy = Strategy::kTensor;
  }
  PP_ASSIGN_OR_RETURN(q.not_converted, string_list(j, "modules_to_not_convert"));
  if (q.not_converted.empty()) {
    PP_ASSIGN_OR_RETURN(q.not_converted, string_list(j, "ignored_layers"));  // vLLM's name
  }
  return q;
}

// One scheme's "weights" or "input_activations": 8-bit float, or the scheme is unsupported.
Status check_fp8_args(const nlohmann::json& a, const char* key) {
  if (!a.is_object()) return invalid_argument("quantization_config: '{}' must be an object", key);
  PP_ASSIGN_OR_RETURN(std::optional<int64_t> bits, jf::get_int(a, "num_bits"));
  PP_ASSIGN_OR_RETURN(std::optional<std::string> type, jf::get_string(a, "type"));
  if (bits.value_or(0) != 8 || type.value_or("") != "float") {
    return unsupported(fmt::format("compressed-tensors {} of {} bits, type '{}'", key,
                                   bits.value_or(0), type.value_or("?")));
  }
  return ok_status();
}

Result<WeightQuantConfig> parse_compressed_tensors(const nlohmann::json& j) {
  WeightQuantConfig q;
  q.method = Method::kCompressedTensors;
  PP_ASSIGN_OR_RETURN(std::optional<std::string> format, jf::get_string(j, "format"));
  if (format && *format != "float-quantized" && *format != "naive-quantized") {
    return unsupported(fmt::format("compressed-tensors format '{}'", *format));
  }
  if (jf::find(j, "kv_cache_scheme")) return unsupported("compressed-tensors kv_cache_scheme");
  const nlohmann::json* groups = jf::find(j, "config_groups");
  if (!groups || !groups->is_object() || groups->empty()) {
    return invalid_argument("quantization_config: compressed-tensors without 'config_groups'");
  }
  std::optional<Strategy> strategy;
  for (const auto& [name, g] : groups->items()) {
    const nlohmann::json* w = jf::find(g, "weights");
    if (!w) return unsupported(fmt::format("compressed-tensors group '{}' without weights", name));
    PP_RETURN_IF_ERROR(check_fp8_args(*w, "weights"));
    if (const nlohmann::json* a = jf::find(g, "input_activations")) {
      PP_RETURN_IF_ERROR(check_fp8_args(*a, "input_activations"));
      PP_ASSIGN_OR_RETURN(std::optional<bool> dynamic, jf::get_bool(*a, "dynamic"));
      if (dynamic == false) q.static_activations = true;
    }
    PP_ASSIGN_OR_RETURN(std::optional<std::string> s, jf::get_string(*w, "strategy"));
    Strategy st;
    if (s == "tensor") {
      st = Strategy::kTensor;
    } else if (s == "channel") {
      st = Strategy::kChannel;
    } else if (s == "block") {
      const nlohmann::json* b = jf::find(*w, "block_structure");
      if (!b)
        return invalid_argument("quantization_config: block strategy without block_structure");
      PP_RETURN_IF_ERROR(check_block(*b, "block_structure"));
      st = Strategy::kBlock;
    } else {
      return unsupported(fmt::format("compressed-tensors weight strategy '{}'", s.value_or("")));
    }
    if (strategy && *strategy != st) {
      return unsupported("compressed-tensors groups of different weight strategies");
    }
    strategy = st;
  }
  q.strategy = *strategy;
  PP_ASSIGN_OR_RETURN(q.not_converted, string_list(j, "ignore"));
  return q;
}

}  // namespace

const char* weight_quant_method_name(Method m) {
  switch (m) {
    case Method::kNone:
      return "none";
    case Method::kFp8:
      return "fp8";
    case Method::kCompressedTensors:
      return "compressed-tensors";
  }
  return "?";
}

const char* weight_quant_strategy_name(Strategy s) {
  switch (s) {
    case Strategy::kTensor:
      return "tensor";
    case Strategy::kChannel:
      return "channel";
    case Strategy::kBlock:
      return "block";
  }
  return "?";
}

Result<WeightQuantConfig> parse_quantization_config(const nlohmann::json& j) {
  if (j.is_null()) return WeightQuantConfig{};
  if (!j.is_object()) return invalid_argument("quantization_config must be an object");
  PP_ASSIGN_OR_RETURN(std::optional<std::string> method, jf::get_string(j, "quant_method"));
  if (!method) return invalid_argument("quantization_config has no 'quant_method'");
  if (*method == "fp8") return parse_fp8(j);
  if (*method == "compressed-tensors") return parse_compressed_tensors(j);
  return unsupported(fmt::format("quant_method '{}'", *method));
}

nlohmann::json quantization_config_to_json(const WeightQuantConfig& q) {
  using nlohmann::json;
  if (q.method == Method::kFp8) {
    json j = {{"quant_method", "fp8"},
              {"fmt", "e4m3"},
              {"activation_scheme", q.static_activations ? "static" : "dynamic"},
              {"modules_to_not_convert", q.not_converted}};
    if (q.strategy == Strategy::kBlock) j["weight_block_size"] = {128, 128};
    return j;
  }
  if (q.method == Method::kCompressedTensors) {
    json weights = {{"num_bits", 8},
                    {"type", "float"},
                    {"symmetric", true},
                    {"dynamic", false},
                    {"strategy", weight_quant_strategy_name(q.strategy)}};
    if (q.strategy == Strategy::kBlock) weights["block_structure"] = {128, 128};
    json group = {{"targets", {"Linear"}},
                  {"weights", weights},
                  {"input_activations",
                   {{"num_bits", 8},
                    {"type", "float"},
                    {"symmetric", true},
                    {"dynamic", !q.static_activations},
                    {"strategy", q.static_activations ? "tensor" : "token"}}}};
    return {{"quant_method", "compressed-tensors"},
            {"format", "float-quantized"},
            {"quantization_status", "compressed"},
            {"config_groups", {{"group_0", group}}},
            {"ignore", q.not_converted}};
  }
  return nullptr;
}

}  // namespace pp::model
