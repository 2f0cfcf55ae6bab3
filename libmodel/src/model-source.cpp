// open_model: a Hugging Face folder or a GGUF file, opened (config, weight directory, where the
// tokenizer and chat template are) but not loaded; and ModelConfig from GGUF metadata.
#include "pp/model/model-source.h"

#include <algorithm>
#include <fstream>

#include <nlohmann/json.hpp>

#include "arch/arch.h"

namespace pp::model {
namespace {

namespace fs = std::filesystem;

// Reads an optional GGUF integer: `fallback` when absent, an error when of another type.
Result<int64_t> gguf_int_or(const GgufFile& f, const std::string& key, int64_t fallback) {
  if (!f.find(key)) return fallback;
  return f.get_int(key);
}

Result<int64_t> gguf_required_int(const GgufFile& f, const std::string& key) {
  if (!f.find(key)) return invalid_argument("missing metadata '{}'", key);
  return f.get_int(key);
}

Result<double> gguf_float_or(const GgufFile& f, const std::string& key, double fallback) {
  if (!f.find(key)) return fallback;
  return f.get_float(key);
}

const char* torch_dtype_of(DType t) {
  switch (t) {
    case DType::kF16:
      return "float16";
    case DType::kBF16:
      return "bfloat16";
    default:
      return "float32";  // f32, or quantized (which we dequantize to f32)
  }
}

// The chat template of a Hugging Face folder: chat_template.jinja (newer transformers), else
// tokenizer_config.json's "chat_template" (a string, or a list of named templates).
Result<std::string> hf_chat_template(const fs::path& dir) {
  std::error_code ec;
  fs::path jinja = dir / "chat_template.jinja";
  if (fs::exists(jinja, ec)) {
    std::ifstream in(jinja, std::ios::binary);
    if (!in) return not_found("cannot open '{}'", jinja.string());
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  fs::path tc = dir / "tokenizer_config.json";
  if (!fs::exists(tc, ec)) return std::string();
  std::ifstream in(tc);
  if (!in) return not_found("cannot open '{}'", tc.string());
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return invalid_argument("cannot parse '{}': not valid JSON", tc.string());
  auto it = j.find("chat_template");
  if (it == j.end() || it->is_null()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    std::string first;
    for (const nlohmann::json& t : *it) {
      if (!t.is_object() || !t.contains("template") || !t["template"].is_string()) continue;
      std::string name = t.value("name", "");
      if (name == "default") return t["template"].get<std::string>();
      if (first.empty()) first = t["template"].get<std::string>();
    }
    return first;
  }
  return invalid_argument("'{}': field 'chat_template' must be a string", tc.string());
}

Result<ModelSource> open_hf_dir(const fs::path& dir) {
  std::error_code ec;
  if (!fs::exists(dir / "config.json", ec)) {
    return not_found(
        "'{}' has no config.json (expected a Hugging Face model folder or a .gguf file)",
        dir.string());
  }
  ModelSource src;
  src.path = dir;
  src.kind = SourceKind::kHfDir;
  PP_ASSIGN_OR_RETURN(src.config, config_from_hf_dir(dir));
  PP_ASSIGN_OR_RETURN(std::unique_ptr<WeightSource> w, open_safetensors(dir));
  src.weights = std::move(w);
  if (fs::exists(dir / "tokenizer.json", ec)) src.tokenizer_json = dir / "tokenizer.json";
  PP_ASSIGN_OR_RETURN(src.chat_template, hf_chat_template(dir));
  return src;
}

Result<ModelSource> open_gguf(const fs::path& path) {
  ModelSource src;
  src.path = path;
  src.kind = SourceKind::kGguf;
  PP_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, GgufFile::open(path));
  src.gguf = std::move(file);
  Result<ModelConfig> config = config_from_gguf(*src.gguf);
  if (!config.ok()) return config.status().with_context(fmt::format("'{}'", path.string()));
  src.config = std::move(config).value();
  PP_ASSIGN_OR_RETURN(std::unique_ptr<WeightSource> w,
                      open_gguf_weights(src.gguf, src.config.n_head, src.config.n_head_kv));
  src.weights = std::move(w);
  if (src.gguf->find("tokenizer.chat_template")) {
    PP_ASSIGN_OR_RETURN(src.chat_template, src.gguf->get_string("tokenizer.chat_template"));
  }
  return src;
}

}  // namespace

Result<ModelConfig> config_from_gguf(const GgufFile& f) {
  if (!f.find("general.architecture"))
    return invalid_argument("missing metadata 'general.architecture'");
  PP_ASSIGN_OR_RETURN(std::string arch, f.get_string("general.architecture"));
  const ArchSpec* spec = find_arch_by_gguf_name(arch);
  if (!spec) return unimplemented("unsupported architecture '{}'", arch);
  const std::string p = arch + ".";

  ModelConfig c;
  c.arch = spec->arch;
  c.model_type = spec->model_type;
  PP_ASSIGN_OR_RETURN(c.n_layer, gguf_required_int(f, p + "block_count"));
  // Mixtral is a "llama" GGUF with experts (ffn_gate_inp, ffn_*_exps); not read yet.
  if (f.find(p + "expert_count")) {
    PP_ASSIGN_OR_RETURN(int64_t n_expert, f.get_int(p + "expert_count"));
    if (n_expert > 0) return unimplemented("mixture-of-experts GGUF files are not supported yet");
  }
  PP_ASSIGN_OR_RETURN(c.n_embd, gguf_required_int(f, p + "embedding_length"));
  PP_ASSIGN_OR_RETURN(c.n_ff, gguf_required_int(f, p + "feed_forward_length"));
  PP_ASSIGN_OR_RETURN(c.n_head, gguf_required_int(f, p + "attention.head_count"));
  PP_ASSIGN_OR_RETURN(c.n_head_kv, gguf_int_or(f, p + "attention.head_count_kv", c.n_head));
  if (c.n_head <= 0)
    return invalid_argument("metadata '{}attention.head_count' must be positive", p);
  PP_ASSIGN_OR_RETURN(c.head_dim, gguf_int_or(f, p + "attention.key_length", c.n_embd / c.n_head));
  PP_ASSIGN_OR_RETURN(int64_t v_dim, gguf_int_or(f, p + "attention.value_length", c.head_dim));
  if (v_dim != c.head_dim) {
    return unimplemented("value head size {} differs from key head size {}", v_dim, c.head_dim);
  }
  PP_ASSIGN_OR_RETURN(int64_t rot_dim, gguf_int_or(f, p + "rope.dimension_count", c.head_dim));
  if (rot_dim != c.head_dim) {
    return unimplemented("partial rotary embeddings ({} of {} dimensions) are not supported",
                         rot_dim, c.head_dim);
  }
  PP_ASSIGN_OR_RETURN(c.max_position, gguf_required_int(f, p + "context_length"));
  PP_ASSIGN_OR_RETURN(double eps, gguf_float_or(f, p + "attention.layer_norm_rms_epsilon", 1e-6));
  c.rms_norm_eps = float(eps);
  PP_ASSIGN_OR_RETURN(double theta,
                      gguf_float_or(f, p + "rope.freq_base", spec->default_rope_theta));
  c.rope.theta = float(theta);

  std::string scaling = "none";
  if (f.find(p + "rope.scaling.type")) {
    PP_ASSIGN_OR_RETURN(scaling, f.get_string(p + "rope.scaling.type"));
  }
  if (scaling == "linear") {
    c.rope.scaling = RopeScaling::kLinear;
    PP_ASSIGN_OR_RETURN(double factor, gguf_float_or(f, p + "rope.scaling.factor", 1.0));
    c.rope.factor = float(factor);
  } else if (scaling != "none") {
    return unimplemented("rope scaling type '{}' is not supported", scaling);
  }
  // llama.cpp stores Llama 3.1's rope scaling as per-frequency factors in a tensor.
  if (f.find_tensor("rope_freqs.weight")) {
    return unimplemented("rope frequency factors (rope_freqs.weight) are not supported");
  }

  if (f.find(p + "vocab_size")) {
    PP_ASSIGN_OR_RETURN(c.n_vocab, f.get_int(p + "vocab_size"));
  } else if (f.find("tokenizer.ggml.tokens")) {
    PP_ASSIGN_OR_RETURN(std::vector<std::string> tokens,
                        f.get_string_array("tokenizer.ggml.tokens"));
    c.n_vocab = int64_t(tokens.size());
  } else if (const GgufTensor* emb = f.find_tensor("token_embd.weight");
             emb && emb->ne.size() == 2) {
    c.n_vocab = emb->ne[1];
  } else {
    return invalid_argument("cannot tell the vocabulary size: no '{}vocab_size' nor tokenizer", p);
  }
  c.tie_word_embeddings = f.find_tensor("output.weight") == nullptr;
  if (const GgufTensor* emb = f.find_tensor("token_embd.weight"))
    c.torch_dtype = torch_dtype_of(emb->dtype);

  for (const char* key : {"tokenizer.ggml.bos_token_id"}) {
    if (f.find(key)) {
      PP_ASSIGN_OR_RETURN(int64_t id, f.get_int(key));
      c.bos_token_ids.push_back(int32_t(id));
    }
  }
  // End of generation: eos, and the end-of-turn / end-of-message tokens of chat models.
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id",
                          "tokenizer.ggml.eom_token_id"}) {
    if (f.find(key)) {
      PP_ASSIGN_OR_RETURN(int64_t id, f.get_int(key));
      if (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), int32_t(id)) ==
          c.eos_token_ids.end()) {
        c.eos_token_ids.push_back(int32_t(id));
      }
    }
  }

  PP_RETURN_IF_ERROR(spec->read_gguf(f, c));
  PP_RETURN_IF_ERROR(c.validate());
  return c;
}

Result<ModelSource> open_model(const fs::path& path) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st))
    return not_found("cannot open '{}': no such file or directory", path.string());
  if (fs::is_directory(st)) return open_hf_dir(path);
  if (path.extension() == ".safetensors") {
    return invalid_argument("'{}' is a bare safetensors file: give its folder (with config.json)",
                            path.string());
  }
  return open_gguf(path);
}

}  // namespace pp::model
