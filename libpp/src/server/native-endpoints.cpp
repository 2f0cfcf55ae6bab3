// The informational and tokenizer routes' bodies (see native-endpoints.h). Field names follow
// SGLang 0.5.9 (http_server.py's model_info and server_info, protocol.py's TokenizeRequest /
// DetokenizeRequest) so that its clients read them unchanged.
#include "pp/server/native-endpoints.h"

#include <optional>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "pp/version.h"

namespace pp::server {

namespace {

using nlohmann::json;

struct Route {
  std::string_view path;
  std::string_view methods;
};

// Every route of HttpServer, with its methods (the server registers these, and no others).
constexpr Route kRoutes[] = {
    {"/health", "GET"},          {"/health_generate", "GET"},
    {"/metrics", "GET"},         {"/version", "GET"},
    {"/v1/models", "GET"},       {"/get_model_info", "GET"},
    {"/model_info", "GET"},      {"/get_server_info", "GET"},
    {"/server_info", "GET"},     {"/flush_cache", "GET, POST"},
    {"/v1/completions", "POST"}, {"/v1/chat/completions", "POST"},
    {"/generate", "POST"},       {"/tokenize", "POST"},
    {"/v1/tokenize", "POST"},    {"/detokenize", "POST"},
    {"/v1/detokenize", "POST"},
};

// The body as a JSON object, or a 400 saying why not.
std::variant<json, ApiError> parse_object(std::string_view body) {
  if (body.empty()) return bad_request("the request has no body: send a JSON object");
  json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return bad_request("the body is not valid JSON");
  if (!j.is_object()) return bad_request("the body must be a JSON object");
  return j;
}

// An optional boolean field; false when it is present and not a boolean.
bool read_bool(const json& j, const char* key, bool fallback, bool* out) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    *out = fallback;
    return true;
  }
  if (!it->is_boolean()) return false;
  *out = it->get<bool>();
  return true;
}

}  // namespace

std::string route_methods(std::string_view path) {
  for (const Route& r : kRoutes) {
    if (r.path == path) return std::string(r.methods);
  }
  if (path.rfind("/v1/models/", 0) == 0 && path.size() > 11) return "GET";
  return std::string();
}

json model_info_body(const ModelInfo& m) {
  return {{"model_path", m.model_path},
          {"tokenizer_path", m.tokenizer_path.empty() ? json() : json(m.tokenizer_path)},
          {"is_generation", true},
          {"preferred_sampling_params", nullptr},
          {"weight_version", "default"},
          {"has_image_understanding", false},
          {"has_audio_understanding", false},
          {"model_type", m.model_type.empty() ? json() : json(m.model_type)},
          {"architectures", m.architecture.empty() ? json() : json::array({json(m.architecture)})}};
}

json server_info_body(const json& server_args, const ServerState& s) {
  json j = server_args.is_object() ? server_args : json::object();
  // SGLang's scheduler_info.
  j["max_total_num_tokens"] = s.max_total_tokens;
  j["max_req_input_len"] = s.max_context > 0 ? s.max_context - 1 : 0;
  j["internal_states"] = json::array({json{
      {"last_gen_throughput", s.gen_throughput},
      {"num_running_reqs", s.n_running},
      {"num_queue_reqs", s.n_waiting},
      {"token_usage", s.kv_usage},
      {"pp_size", s.n_stages},
  }});
  j["version"] = version_string();
  return j;
}

std::variant<json, ApiError> tokenize_body(std::string_view body, const model::Tokenizer* tok,
                                           int64_t max_model_len) {
  auto parsed = parse_object(body);
  if (auto* e = std::get_if<ApiError>(&parsed)) return *e;
  const json& j = std::get<json>(parsed);
  if (!tok) return bad_request("this model has no tokenizer");
  bool add_special = true;
  if (!read_bool(j, "add_special_tokens", true, &add_special)) {
    return bad_request("add_special_tokens must be a boolean", "add_special_tokens");
  }
  const auto it = j.find("prompt");
  if (it == j.end()) return bad_request("prompt is required", "prompt");
  if (it->is_string()) {
    std::vector<int32_t> ids = tok->encode(it->get<std::string>(), add_special);
    const int64_t n = int64_t(ids.size());
    return json{{"tokens", std::move(ids)}, {"count", n}, {"max_model_len", max_model_len}};
  }
  if (!it->is_array() || it->empty()) {
    return bad_request("prompt must be a string or a non-empty list of strings", "prompt");
  }
  json tokens = json::array(), counts = json::array();
  for (const json& p : *it) {
    if (!p.is_string())
      return bad_request("prompt must be a string or a list of strings", "prompt");
    std::vector<int32_t> ids = tok->encode(p.get<std::string>(), add_special);
    counts.push_back(int64_t(ids.size()));
    tokens.push_back(std::move(ids));
  }
  return json{{"tokens", std::move(tokens)},
              {"count", std::move(counts)},
              {"max_model_len", max_model_len}};
}

std::variant<json, ApiError> detokenize_body(std::string_view body, const model::Tokenizer* tok) {
  auto parsed = parse_object(body);
  if (auto* e = std::get_if<ApiError>(&parsed)) return *e;
  const json& j = std::get<json>(parsed);
  if (!tok) return bad_request("this model has no tokenizer");
  bool skip_special = true;
  if (!read_bool(j, "skip_special_tokens", true, &skip_special)) {
    return bad_request("skip_special_tokens must be a boolean", "skip_special_tokens");
  }
  const auto it = j.find("tokens");
  if (it == j.end()) return bad_request("tokens is required", "tokens");
  const int64_t n_vocab = tok->vocab_size();
  // One list of ids as text; an id that is not a token of the vocabulary is an error.
  auto decode = [&](const json& list, std::string* out) -> std::optional<ApiError> {
    std::vector<int32_t> ids;
    ids.reserve(list.size());
    for (const json& v : list) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= n_vocab) {
        return bad_request(
            fmt::format("tokens must be ids in [0, {}), not {}", n_vocab, excerpt(v.dump())),
            "tokens");
      }
      ids.push_back(v.get<int32_t>());
    }
    *out = tok->decode(ids, skip_special);
    return std::nullopt;
  };
  if (!it->is_array()) return bad_request("tokens must be a list of ids", "tokens");
  const bool nested = !it->empty() && (*it)[0].is_array();
  if (!nested) {
    std::string text;
    if (auto e = decode(*it, &text)) return *e;
    return json{{"text", std::move(text)}};
  }
  json texts = json::array();
  for (const json& list : *it) {
    if (!list.is_array()) return bad_request("tokens must be a list of lists of ids", "tokens");
    std::string text;
    if (auto e = decode(list, &text)) return *e;
    texts.push_back(std::move(text));
  }
  return json{{"text", std::move(texts)}};
}

json version_body() { return {{"version", version_string()}}; }

json model_card(const std::string& id, int64_t created, int64_t max_model_len) {
  return {{"id", id},
          {"object", "model"},
          {"created", created},
          {"owned_by", "pp"},
          {"root", id},
          {"parent", nullptr},
          {"max_model_len", max_model_len}};
}

ApiError model_not_found(std::string_view id, const std::string& served) {
  ApiError e;
  e.http_status = 404;
  e.message =
      fmt::format("the model '{}' does not exist; this server serves '{}'", excerpt(id), served);
  e.param = "model";
  e.code = "model_not_found";
  return e;
}

}  // namespace pp::server
