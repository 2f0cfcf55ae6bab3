// The HTTP side of `pp-bench serve`: one request to an OpenAI-compatible or SGLang-native server
// (pp-serve, SGLang, vLLM, llama.cpp), streamed or not, timed chunk by chunk.
//
//   openai       POST {base}/v1/completions: "prompt" is the token id list when the request
//                has ids and send_text is off (OpenAI completions accept one), else the text;
//                "stream_options" asks for usage (and vLLM's continuous_usage_stats, usage on every
//                chunk, which gives each chunk's token count)
//   openai-chat  POST {base}/v1/chat/completions: one user message with the prompt text
//   sglang       POST {base}/generate: "input_ids" when the request has ids and send_text is
//                off, else "text";
//                each streamed chunk carries the text so far and meta_info.completion_tokens
//
// Every request is greedy (temperature 0) with max_tokens = the request's output_len, as SGLang's
// bench_serving sends them. The output token count is the server's (usage.completion_tokens,
// meta_info.completion_tokens) when it says, else the generated text retokenized, else the
// tokens asked for. Streams are Server-Sent Events ("data: {...}" lines, "data: [DONE]").
//
// An HttpClient keeps its connection alive between requests and is used by one thread at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "pp/bench/dataset.h"
#include "pp/bench/metrics.h"
#include "pp/model/tokenizer.h"
#include "pp/status.h"

namespace pp::bench {

enum class Backend { kOpenAI, kOpenAIChat, kSglang };

const char* backend_name(Backend b);  // "openai", "openai-chat", "sglang"
// Also SGLang's bench_serving names: sglang-native, sglang-oai (vllm), sglang-oai-chat (vllm-chat).
std::optional<Backend> parse_backend(std::string_view name);
const char* backend_path(Backend b);  // "/v1/completions", "/v1/chat/completions", "/generate"

// A base URL split into what the HTTP client connects to and the path prefix of the API.
struct BaseUrl {
  std::string scheme_host_port;  // "http://127.0.0.1:30000"
  std::string path_prefix;       // "" or "/prefix" (no trailing slash)
};
// "http://host:port[/prefix]"; https is refused (this client speaks plain HTTP).
Result<BaseUrl> parse_base_url(std::string_view url);

struct RequestOptions {
  Backend backend = Backend::kOpenAI;
  std::string model;        // "model" field (OpenAI backends); may be empty
  bool stream = true;       // false: --disable-stream
  bool ignore_eos = false;  // "ignore_eos": keep generating past EOS (SGLang, vLLM, pp-serve)
  bool send_text = false;   // send the prompt text even when the request has ids (random text,
                            // sharegpt: the server tokenizes, as with SGLang)
  std::string api_key;      // sent as "Authorization: Bearer KEY" when not empty
  nlohmann::json extra_body = nlohmann::json::object();  // merged into every request body
  std::chrono::seconds timeout{3600};                    // per read and per connect
};

// The JSON body of a request.
nlohmann::json request_body(const BenchRequest& r, const RequestOptions& o);

// What one streamed chunk (or a whole non-streamed response) says.
struct ChunkInfo {
  bool done = false;  // "[DONE]"
  std::string text;   // openai: the new text; sglang: the whole text so far
  bool has_content = false;
  std::optional<int64_t> completion_tokens;  // cumulative output tokens, when the server says
  std::string error;                         // the server reported an error
};
// Parses the payload of one "data:" line (or a non-streamed body).
Result<ChunkInfo> parse_chunk(Backend b, std::string_view payload);

// Splits a byte stream into Server-Sent Events' data payloads, whatever the read boundaries.
// Each "data:" line is one payload (as SGLang's client reads them: every server here sends one
// JSON object per line); other fields and comments are skipped; "\r\n" is accepted.
class SseParser {
 public:
  // Appends bytes; returns the payloads of the data lines completed by them.
  std::vector<std::string> feed(std::string_view bytes);
  // The payload of a last line without a newline (call at the end of the stream).
  std::vector<std::string> finish();

 private:
  static void take_line(std::string_view line, std::vector<std::string>& out);
  std::string pending_;  // bytes of an unfinished line
};

class HttpClient {
 public:
  static Result<std::unique_ptr<HttpClient>> connect(std::string_view base_url,
                                                     const RequestOptions& options);
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // Sends one request and times it; `t0_s` is the benchmark's start on the steady clock
  // (seconds), for RequestResult::start_s. `tokenizer` (may be null) retokenizes the output.
  // Never fails as a call: a failed request is a RequestResult with success false.
  RequestResult send(const BenchRequest& r, double t0_s, const model::Tokenizer* tokenizer);

  // GET {base}/v1/models: the first model's id.
  Result<std::string> first_model_id();

  // GET {base}/get_model_info (SGLang's): the path the server loaded its tokenizer from
  // ("tokenizer_path", else "model_path"), a path on the server's machine. kNotFound when the
  // server has no such route or names no path.
  Result<std::string> tokenizer_path();

 private:
  struct Impl;
  explicit HttpClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Seconds on the steady clock (the time base of every benchmark timing).
double steady_now_s();

}  // namespace pp::bench
