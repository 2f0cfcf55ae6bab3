// pp-serve's model beyond the engine (see served-model.h): the model source resolver's tokenizer
// and chat template, or those that --tokenizer-path and --chat-template name, and the context
// served. Everything is checked here, before any stage starts.
#include "served-model.h"

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "pp/model/chat-template.h"
#include "pp/partition/model-resolver.h"

namespace pp::serve {

using namespace pp::model;

namespace {

Result<std::string> read_text_file(const std::filesystem::path& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found("cannot open {} '{}'", what, path.string());
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// A special token of tokenizer_config.json: "bos_token": "<s>" or {"content": "<s>", ...}.
std::string config_token(const nlohmann::json& tc, const char* key) {
  const auto it = tc.find(key);
  if (it == tc.end()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return std::string();
}

// --tokenizer-path: a tokenizer.json (or a folder holding one, with tokenizer_config.json for
// BOS, EOS and the chat template), or anything --model takes (a GGUF file, a Hugging Face or
// partition folder), whose tokenizer and chat template are used.
Status use_tokenizer_path(const std::filesystem::path& path, ServedModel* s) {
  namespace fs = std::filesystem;
  fs::path json_file;
  if (fs::is_regular_file(path) && path.extension() == ".json") {
    json_file = path;
  } else if (fs::is_directory(path) && fs::exists(path / "tokenizer.json") &&
             !fs::exists(path / "config.json")) {
    json_file = path / "tokenizer.json";
  }
  if (json_file.empty()) {
    Result<partition::ResolvedModel> m = partition::resolve_model(path);
    if (!m.ok()) return m.status().with_context("--tokenizer-path");
    PP_ASSIGN_OR_RETURN(s->tokenizer, m->load_tokenizer());
    if (!m->chat_template().empty()) s->chat_template = m->chat_template();
    return ok_status();
  }
  PP_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, Tokenizer::from_hf_file(json_file));
  const fs::path config = json_file.parent_path() / "tokenizer_config.json";
  if (fs::exists(config)) {
    PP_ASSIGN_OR_RETURN(std::string text, read_text_file(config, "tokenizer config"));
    const nlohmann::json tc = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (tc.is_discarded() || !tc.is_object()) {
      return invalid_argument("'{}' is not a JSON object", config.string());
    }
    if (auto id = tok->token_to_id(config_token(tc, "bos_token"))) tok->set_bos_id(id);
    if (auto id = tok->token_to_id(config_token(tc, "eos_token"))) tok->set_eos_id(id);
    if (tc.contains("chat_template") && tc["chat_template"].is_string()) {
      s->chat_template = tc["chat_template"].get<std::string>();
    }
  }
  s->tokenizer = std::move(tok);
  return ok_status();
}

}  // namespace

Result<ServedModel> open_served_model(const ServedModelOptions& o) {
  PP_ASSIGN_OR_RETURN(partition::ResolvedModel m,
                      partition::resolve_model(o.model, {.random_weights = o.random_weights}));
  ServedModel s;
  s.chat_template = m.chat_template();
  s.model_type = m.config().model_type;
  s.architecture = arch_name(m.config().arch);
  s.context_length = m.config().max_context();
  if (o.context_length > 0) {
    if (o.context_length > s.context_length) {
      return invalid_argument("--context-length {} is longer than the model's context ({})",
                              o.context_length, s.context_length);
    }
    s.context_length = o.context_length;
  }
  if (!o.tokenizer_path.empty()) {
    s.tokenizer_path = o.tokenizer_path;
    PP_RETURN_IF_ERROR(use_tokenizer_path(o.tokenizer_path, &s));
    if (s.tokenizer->vocab_size() > m.config().n_vocab) {
      return invalid_argument(
          "--tokenizer-path '{}' has {} tokens, more than the model's vocabulary ({})",
          o.tokenizer_path, s.tokenizer->vocab_size(), m.config().n_vocab);
    }
  } else if (m.has_tokenizer()) {
    s.tokenizer_path = o.model;
    PP_ASSIGN_OR_RETURN(s.tokenizer, m.load_tokenizer());
  }
  if (!o.chat_template.empty()) {
    PP_ASSIGN_OR_RETURN(s.chat_template, read_text_file(o.chat_template, "chat template"));
    if (s.tokenizer) {
      auto token_text = [&](std::optional<int32_t> id) {
        return id ? s.tokenizer->id_to_token(*id) : std::string();
      };
      // Checked now: a template pp cannot run is an error at start, not at the first request.
      Result<ChatTemplate> t = ChatTemplate::from_jinja(
          s.chat_template, token_text(s.tokenizer->bos_id()), token_text(s.tokenizer->eos_id()));
      if (!t.ok()) return t.status().with_context("--chat-template '" + o.chat_template + "'");
    }
  }
  return s;
}

}  // namespace pp::serve
