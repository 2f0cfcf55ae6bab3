// ModelConfig from a Hugging Face config.json (older and transformers-5 forms) and back.
// The fields common to every decoder family are read here; each family's own fields (biases,
// q/k norm, sliding window) by its ArchSpec (arch/<family>.cpp).
#include "pp/model/config.h"

#include <algorithm>
#include <fstream>

#include <nlohmann/json.hpp>

#include "arch/arch.h"
#include "json-field.h"

namespace pp::model {
namespace {

namespace jf = json_field;

Result<RopeScaling> parse_rope_type(const std::string& type) {
  if (type == "default" || type == "none") return RopeScaling::kNone;
  if (type == "linear") return RopeScaling::kLinear;
  if (type == "llama3") return RopeScaling::kLlama3;
  return unimplemented("rope scaling type '{}' is not supported", type);
}

// Reads one rope-parameters object: the older `rope_scaling` or the transformers-5
// `rope_parameters` (which also carries rope_theta).
Status read_rope_object(const nlohmann::json& r, const char* field, RopeConfig& rope) {
  if (!r.is_object()) return invalid_argument("field '{}' must be an object", field);
  PP_ASSIGN_OR_RETURN(std::optional<std::string> type, jf::get_string(r, "rope_type"));
  if (!type) {
    PP_ASSIGN_OR_RETURN(type, jf::get_string(r, "type"));
  }
  PP_ASSIGN_OR_RETURN(rope.scaling, parse_rope_type(type.value_or("default")));
  PP_ASSIGN_OR_RETURN(std::optional<double> theta, jf::get_number(r, "rope_theta"));
  if (theta) rope.theta = float(*theta);
  if (rope.scaling == RopeScaling::kNone) return ok_status();

  PP_ASSIGN_OR_RETURN(std::optional<double> factor, jf::get_number(r, "factor"));
  if (!factor) return invalid_argument("field '{}' lacks 'factor'", field);
  rope.factor = float(*factor);
  if (rope.scaling == RopeScaling::kLlama3) {
    PP_ASSIGN_OR_RETURN(std::optional<double> low, jf::get_number(r, "low_freq_factor"));
    PP_ASSIGN_OR_RETURN(std::optional<double> high, jf::get_number(r, "high_freq_factor"));
    PP_ASSIGN_OR_RETURN(std::optional<int64_t> orig,
                        jf::get_int(r, "original_max_position_embeddings"));
    if (!low || !high || !orig) {
      return invalid_argument(
          "field '{}' of type 'llama3' needs 'low_freq_factor', 'high_freq_factor' and "
          "'original_max_position_embeddings'",
          field);
    }
    rope.low_freq_factor = float(*low);
    rope.high_freq_factor = float(*high);
    rope.original_max_position = *orig;
  }
  return ok_status();
}

// eos_token_id / bos_token_id: an integer, a list of integers, or null.
Status read_token_ids(const nlohmann::json& j, const char* key, std::vector<int32_t>& out) {
  const nlohmann::json* v = jf::find(j, key);
  if (!v) return ok_status();
  auto add = [&](const nlohmann::json& x) -> Status {
    if (!x.is_number_integer() || x.get<int64_t>() < 0 || x.get<int64_t>() > INT32_MAX) {
      return invalid_argument("field '{}' must hold non-negative token ids, got {}", key, x.dump());
    }
    int32_t id = x.get<int32_t>();
    if (std::find(out.begin(), out.end(), id) == out.end()) out.push_back(id);
    return ok_status();
  };
  if (v->is_array()) {
    for (const nlohmann::json& x : *v) PP_RETURN_IF_ERROR(add(x));
    return ok_status();
  }
  return add(*v);
}

Result<nlohmann::json> read_json_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  if (!in) return not_found("cannot open '{}'", path.string());
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return invalid_argument("cannot parse '{}': not valid JSON", path.string());
  return j;
}

}  // namespace

Result<ModelConfig> config_from_hf_json(const nlohmann::json& j) {
  if (!j.is_object()) return invalid_argument("config is not a JSON object");

  // The architecture: architectures[0], or model_type when the list is missing.
  const ArchSpec* spec = nullptr;
  if (const nlohmann::json* archs = jf::find(j, "architectures")) {
    if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
      return invalid_argument("field 'architectures' must be a non-empty list of class names");
    }
    std::string name = (*archs)[0].get<std::string>();
    spec = find_arch_by_hf_class(name);
    if (!spec) return unimplemented("unsupported architecture '{}'", name);
  } else {
    PP_ASSIGN_OR_RETURN(std::optional<std::string> type, jf::get_string(j, "model_type"));
    if (!type) return invalid_argument("missing field 'architectures' (and no 'model_type')");
    spec = find_arch_by_model_type(*type);
    if (!spec) return unimplemented("unsupported model_type '{}'", *type);
  }

  ModelConfig c;
  c.arch = spec->arch;
  c.model_type = spec->model_type;
  PP_ASSIGN_OR_RETURN(c.n_vocab, jf::require_positive(j, "vocab_size"));
  PP_ASSIGN_OR_RETURN(c.n_embd, jf::require_positive(j, "hidden_size"));
  PP_ASSIGN_OR_RETURN(c.n_ff, jf::require_positive(j, "intermediate_size"));
  PP_ASSIGN_OR_RETURN(c.n_layer, jf::require_positive(j, "num_hidden_layers"));
  PP_ASSIGN_OR_RETURN(c.n_head, jf::require_positive(j, "num_attention_heads"));
  PP_ASSIGN_OR_RETURN(std::optional<int64_t> n_head_kv, jf::get_int(j, "num_key_value_heads"));
  c.n_head_kv = n_head_kv.value_or(c.n_head);
  PP_ASSIGN_OR_RETURN(std::optional<int64_t> head_dim, jf::get_int(j, "head_dim"));
  c.head_dim = head_dim.value_or(c.n_embd / c.n_head);
  PP_ASSIGN_OR_RETURN(std::optional<int64_t> max_pos, jf::get_int(j, "max_position_embeddings"));
  c.max_position = max_pos.value_or(spec->default_max_position);
  PP_ASSIGN_OR_RETURN(std::optional<double> eps, jf::get_number(j, "rms_norm_eps"));
  c.rms_norm_eps = float(eps.value_or(1e-6));
  PP_ASSIGN_OR_RETURN(std::optional<bool> tied, jf::get_bool(j, "tie_word_embeddings"));
  c.tie_word_embeddings = tied.value_or(false);

  PP_ASSIGN_OR_RETURN(std::optional<std::string> act, jf::get_string(j, "hidden_act"));
  if (act && *act != "silu") return unimplemented("hidden_act '{}' is not supported", *act);

  PP_ASSIGN_OR_RETURN(std::optional<std::string> dtype, jf::get_string(j, "dtype"));
  if (!dtype) {
    PP_ASSIGN_OR_RETURN(dtype, jf::get_string(j, "torch_dtype"));
  }
  c.torch_dtype = dtype.value_or("float32");

  // RoPE: transformers 5 puts everything in rope_parameters; older configs have rope_theta
  // and an optional rope_scaling.
  c.rope.theta = spec->default_rope_theta;
  PP_ASSIGN_OR_RETURN(std::optional<double> theta, jf::get_number(j, "rope_theta"));
  if (theta) c.rope.theta = float(*theta);
  if (const nlohmann::json* r = jf::find(j, "rope_parameters")) {
    PP_RETURN_IF_ERROR(read_rope_object(*r, "rope_parameters", c.rope));
  } else if (const nlohmann::json* r = jf::find(j, "rope_scaling")) {
    PP_RETURN_IF_ERROR(read_rope_object(*r, "rope_scaling", c.rope));
  }
  if (const nlohmann::json* p = jf::find(j, "partial_rotary_factor")) {
    if (!p->is_number() || p->get<double>() != 1.0) {
      return unimplemented("partial_rotary_factor {} is not supported", p->dump());
    }
  }

  PP_RETURN_IF_ERROR(read_token_ids(j, "bos_token_id", c.bos_token_ids));
  PP_RETURN_IF_ERROR(read_token_ids(j, "eos_token_id", c.eos_token_ids));

  if (const nlohmann::json* q = jf::find(j, "quantization_config")) {
    PP_ASSIGN_OR_RETURN(c.quant, parse_quantization_config(*q));
  }

  PP_RETURN_IF_ERROR(spec->read_hf(j, c));
  PP_RETURN_IF_ERROR(c.validate());
  return c;
}

Result<ModelConfig> config_from_hf_dir(const std::filesystem::path& dir) {
  std::filesystem::path config_path = dir / "config.json";
  PP_ASSIGN_OR_RETURN(nlohmann::json j, read_json_file(config_path));
  Result<ModelConfig> c = config_from_hf_json(j);
  if (!c.ok()) return c.status().with_context(fmt::format("'{}'", config_path.string()));

  std::filesystem::path gen_path = dir / "generation_config.json";
  std::error_code ec;
  if (std::filesystem::exists(gen_path, ec)) {
    PP_ASSIGN_OR_RETURN(nlohmann::json g, read_json_file(gen_path));
    Status s = read_token_ids(g, "eos_token_id", c->eos_token_ids);
    if (s.ok()) s = read_token_ids(g, "bos_token_id", c->bos_token_ids);
    if (!s.ok()) return s.with_context(fmt::format("'{}'", gen_path.string()));
  }
  return c;
}

Result<ModelConfig> config_from_path(const std::filesystem::path& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return config_from_hf_dir(path);
  PP_ASSIGN_OR_RETURN(nlohmann::json j, read_json_file(path));
  Result<ModelConfig> c = config_from_hf_json(j);
  if (!c.ok()) return c.status().with_context(fmt::format("'{}'", path.string()));
  return c;
}

nlohmann::json config_to_hf_json(const ModelConfig& c) {
  const ArchSpec& spec = arch_spec(c.arch);
  nlohmann::json j;
  j["architectures"] = {spec.hf_class};
  j["model_type"] = spec.model_type;
  j["vocab_size"] = c.n_vocab;
  j["hidden_size"] = c.n_embd;
  j["intermediate_size"] = c.n_ff;
  j["num_hidden_layers"] = c.n_layer;
  j["num_attention_heads"] = c.n_head;
  j["num_key_value_heads"] = c.n_head_kv;
  j["head_dim"] = c.head_dim;
  j["max_position_embeddings"] = c.max_position;
  j["rms_norm_eps"] = c.rms_norm_eps;
  j["hidden_act"] = "silu";
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  j["torch_dtype"] = c.torch_dtype;
  j["rope_theta"] = c.rope.theta;
  switch (c.rope.scaling) {
    case RopeScaling::kNone:
      j["rope_scaling"] = nullptr;
      break;
    case RopeScaling::kLinear:
      j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", c.rope.factor}};
      break;
    case RopeScaling::kLlama3:
      j["rope_scaling"] = {{"rope_type", "llama3"},
                           {"factor", c.rope.factor},
                           {"low_freq_factor", c.rope.low_freq_factor},
                           {"high_freq_factor", c.rope.high_freq_factor},
                           {"original_max_position_embeddings", c.rope.original_max_position}};
      break;
  }
  auto ids = [](const std::vector<int32_t>& v) -> nlohmann::json {
    if (v.empty()) return nullptr;
    if (v.size() == 1) return v[0];
    return v;
  };
  j["bos_token_id"] = ids(c.bos_token_ids);
  j["eos_token_id"] = ids(c.eos_token_ids);
  if (c.quant.quantized()) j["quantization_config"] = quantization_config_to_json(c.quant);
  spec.write_hf(c, j);
  return j;
}

Status ModelConfig::validate() const {
  auto positive = [](int64_t v, const char* what) -> Status {
    if (v <= 0) return invalid_argument("{} must be positive, got {}", what, v);
    return ok_status();
  };
  PP_RETURN_IF_ERROR(positive(n_vocab, "vocab_size"));
  PP_RETURN_IF_ERROR(positive(n_embd, "hidden_size"));
  PP_RETURN_IF_ERROR(positive(n_ff, "intermediate_size"));
  PP_RETURN_IF_ERROR(positive(n_layer, "num_hidden_layers"));
  PP_RETURN_IF_ERROR(positive(n_head, "num_attention_heads"));
  PP_RETURN_IF_ERROR(positive(n_head_kv, "num_key_value_heads"));
  PP_RETURN_IF_ERROR(positive(head_dim, "head_dim"));
  PP_RETURN_IF_ERROR(positive(max_position, "max_position_embeddings"));
  if (n_head % n_head_kv != 0) {
    return invalid_argument(
        "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})", n_head,
        n_head_kv);
  }
  if (head_dim % 2 != 0)
    return invalid_argument("head_dim must be even for RoPE, got {}", head_dim);
  if (!(rms_norm_eps > 0.0f)) return invalid_argument("rms_norm_eps must be positive");
  if (!(rope.theta > 0.0f)) return invalid_argument("rope_theta must be positive");
  if (rope.scaling != RopeScaling::kNone && !(rope.factor > 0.0f)) {
    return invalid_argument("rope scaling factor must be positive");
  }
  if (rope.scaling == RopeScaling::kLlama3 &&
      (!(rope.high_freq_factor > rope.low_freq_factor) || rope.original_max_position <= 0)) {
    return invalid_argument("llama3 rope scaling needs high_freq_factor > low_freq_factor");
  }
  if (sliding_window < 0) return invalid_argument("sliding_window must be >= 0");
  if (n_expert < 0) return invalid_argument("the number of experts must be >= 0");
  if (is_moe()) {
    if (n_expert_used < 1 || n_expert_used > n_expert) {
      return invalid_argument("num_experts_per_tok must be in [1, {}], got {}", n_expert,
                              n_expert_used);
    }
    PP_RETURN_IF_ERROR(positive(n_ff_expert, "moe_intermediate_size"));
    PP_RETURN_IF_ERROR(positive(moe_sparse_step, "decoder_sparse_step"));
  }
  return ok_status();
}

bool ModelConfig::layer_is_moe(int64_t il) const {
  if (!is_moe() || moe_sparse_step <= 0 || (il + 1) % moe_sparse_step != 0) return false;
  return std::find(moe_dense_layers.begin(), moe_dense_layers.end(), il) == moe_dense_layers.end();
}

}  // namespace pp::model
