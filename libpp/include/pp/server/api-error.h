// ApiError: the one error shape of pp-serve's HTTP API, OpenAI's envelope
//   {"error": {"message": "...", "type": "...", "param": "temperature" | null, "code": ... | null}}
// with the HTTP status that goes with it. Every route answers its errors in this shape, also the
// SGLang-native one, and a stream that fails midway sends it as its last data frame.
#pragma once

#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "pp/status.h"

namespace pp::server {

struct ApiError {
  int http_status = 400;
  std::string message;
  std::string type = "invalid_request_error";  // OpenAI's error types
  std::string param;                           // the offending request field; empty: null
  std::string code;                            // a machine-readable code; empty: null

  nlohmann::json to_json() const;  // the envelope {"error": {...}}
};

// 400 invalid_request_error naming `param`.
ApiError bad_request(std::string message, std::string param = "", std::string code = "");
// The API error for a Status from the engine (kInvalidArgument / kOutOfRange -> 400,
// kResourceExhausted -> 400 (the request can never fit), kUnavailable -> 503, else 500).
ApiError api_error_from_status(const Status& s, std::string param = "");

// At most `max_bytes` of `s` (cut at a UTF-8 boundary, "..." appended when cut): what an error
// message may echo of the client's input.
std::string excerpt(std::string_view s, size_t max_bytes = 48);

// JSON text with invalid UTF-8 replaced by U+FFFD (never throws on text a model produced).
std::string dump_json(const nlohmann::json& j);

}  // namespace pp::server
