// The bodies of pp-serve's informational and tokenizer routes, in SGLang's (and vLLM's) shapes,
// as functions of their inputs so that they are tested without a server:
//
//   GET  /get_model_info, /model_info    model_info_body: model_path, tokenizer_path,
//                                        is_generation, preferred_sampling_params, weight_version,
//                                        has_image_understanding, has_audio_understanding,
//                                        model_type, architectures
//   GET  /get_server_info, /server_info  server_info_body: the server's arguments under SGLang's
//                                        names, the scheduler's sizes, "internal_states" (one
//                                        entry: pp has one scheduler) and "version"
//   POST /tokenize, /v1/tokenize         tokenize_body: {"prompt": str | [str],
//                                        "add_special_tokens": bool} -> {"tokens", "count",
//                                        "max_model_len"} (a list of prompts: lists of each)
//   POST /detokenize, /v1/detokenize     detokenize_body: {"tokens": [int] | [[int]],
//                                        "skip_special_tokens": bool} -> {"text": str | [str]}
//   GET  /version                        version_body: {"version": "..."} (vLLM's shape)
//   GET  /v1/models/{id}                 model_card, or model_not_found (404)
//
// route_methods() is the table of every route and its methods, which the server uses to answer
// a known path asked with the wrong method: 405 with an Allow header, not 404.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

#include <nlohmann/json.hpp>

#include "pp/model/tokenizer.h"
#include "pp/server/api-error.h"

namespace pp::server {

// The methods a route takes, as an Allow header lists them ("GET", "POST", "GET, POST"); empty
// for a path that is no route. /v1/models/{id} counts as a route.
std::string route_methods(std::string_view path);

struct ModelInfo {
  std::string model_path;      // what --model named
  std::string tokenizer_path;  // where the tokenizer came from; empty: none
  std::string model_type;      // config.json's model_type ("llama")
  std::string architecture;    // "LlamaForCausalLM"
};
nlohmann::json model_info_body(const ModelInfo& m);

// What the scheduler reports now, for internal_states.
struct ServerState {
  int64_t n_running = 0;
  int64_t n_waiting = 0;
  double kv_usage = 0;           // 0..1
  double gen_throughput = 0;     // generated tokens per second, over the last interval
  int64_t max_total_tokens = 0;  // KV pool size in tokens
  int64_t max_context = 0;       // the context served
  int32_t n_stages = 1;
};
// `server_args`: the arguments under SGLang's names (an object; copied to the top level).
nlohmann::json server_info_body(const nlohmann::json& server_args, const ServerState& s);

// A JSON body parsed, or the error to answer (400 naming the field). `tok` null: 400 "no
// tokenizer".
std::variant<nlohmann::json, ApiError> tokenize_body(std::string_view body,
                                                     const model::Tokenizer* tok,
                                                     int64_t max_model_len);
std::variant<nlohmann::json, ApiError> detokenize_body(std::string_view body,
                                                       const model::Tokenizer* tok);

nlohmann::json version_body();

// One model object of /v1/models.
nlohmann::json model_card(const std::string& id, int64_t created, int64_t max_model_len);
// 404 model_not_found for a model id this server does not serve.
ApiError model_not_found(std::string_view id, const std::string& served);

}  // namespace pp::server
