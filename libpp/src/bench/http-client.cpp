// One benchmark request over HTTP with cpp-httplib (see http-client.h): the body is sent, the
// response read as it arrives, and each Server-Sent Event timed when its bytes are received.
#include "pp/bench/http-client.h"

#include <httplib.h>

namespace pp::bench {

double steady_now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct HttpClient::Impl {
  BaseUrl base;
  RequestOptions options;
  httplib::Client client;

  Impl(BaseUrl b, RequestOptions o)
      : base(std::move(b)), options(std::move(o)), client(base.scheme_host_port) {
    const auto t = options.timeout;
    client.set_connection_timeout(t);
    client.set_read_timeout(t);
    client.set_write_timeout(t);
    client.set_keep_alive(true);
    // Headers and body leave in separate writes: with Nagle's algorithm the body of a request
    // on a kept-alive connection would wait for the server's delayed ACK (~40 ms), inflating
    // every TTFT after the first.
    client.set_tcp_nodelay(true);
  }

  httplib::Headers headers() const {
    httplib::Headers h;
    if (!options.api_key.empty()) h.emplace("Authorization", "Bearer " + options.api_key);
    return h;
  }
};

HttpClient::HttpClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpClient::~HttpClient() = default;

Result<std::unique_ptr<HttpClient>> HttpClient::connect(std::string_view base_url,
                                                        const RequestOptions& options) {
  PP_ASSIGN_OR_RETURN(BaseUrl base, parse_base_url(base_url));
  auto impl = std::make_unique<Impl>(std::move(base), options);
  if (!impl->client.is_valid()) return invalid_argument("bad base url '{}'", base_url);
  return std::unique_ptr<HttpClient>(new HttpClient(std::move(impl)));
}

Result<std::string> HttpClient::first_model_id() {
  const std::string path = impl_->base.path_prefix + "/v1/models";
  auto res = impl_->client.Get(path, impl_->headers());
  if (!res) {
    return Status(StatusCode::kUnavailable,
                  fmt::format("cannot reach '{}{}': {}", impl_->base.scheme_host_port, path,
                              httplib::to_string(res.error())));
  }
  if (res->status != 200) {
    return Status(StatusCode::kUnavailable,
                  fmt::format("'{}' answered HTTP {}", path, res->status));
  }
  nlohmann::json j = nlohmann::json::parse(res->body, nullptr, false);
  if (j.is_discarded() || !j.contains("data") || !j["data"].is_array() || j["data"].empty() ||
      !j["data"][0].contains("id") || !j["data"][0]["id"].is_string()) {
    return not_found("'{}' names no model; give --model", path);
  }
  return j["data"][0]["id"].get<std::string>();
}

Result<std::string> HttpClient::tokenizer_path() {
  const std::string path = impl_->base.path_prefix + "/get_model_info";
  auto res = impl_->client.Get(path, impl_->headers());
  if (!res) {
    return Status(StatusCode::kUnavailable,
                  fmt::format("cannot reach '{}{}': {}", impl_->base.scheme_host_port, path,
                              httplib::to_string(res.error())));
  }
  if (res->status != 200) return not_found("'{}' answered HTTP {}", path, res->status);
  nlohmann::json j = nlohmann::json::parse(res->body, nullptr, false);
  for (const char* key : {"tokenizer_path", "model_path"}) {
    if (j.is_object() && j.contains(key) && (*j.find(key)).is_string() &&
        !(*j.find(key)).get<std::string>().empty()) {
      return (*j.find(key)).get<std::string>();
    }
  }
  return not_found("'{}' names no tokenizer", path);
}

namespace {

// The state of one response as its chunks arrive.
struct StreamState {
  Backend backend;
  ChunkTimer timer;
  std::string text;
  int64_t last_tokens = 0;  // the last cumulative completion_tokens seen
  std::optional<int64_t> server_tokens;
  std::string error;

  void on_payload(std::string_view payload, double now) {
    if (!error.empty()) return;
    auto c = parse_chunk(backend, payload);
    if (!c.ok()) {
      error = c.status().message();
      return;
    }
    if (!c->error.empty()) {
      error = "server error: " + c->error;
      return;
    }
    if (c->done) return;
    int64_t n_new = -1;
    if (c->completion_tokens) {
      n_new = std::max<int64_t>(*c->completion_tokens - last_tokens, 0);
      server_tokens = *c->completion_tokens;
    }
    if (c->has_content) {
      timer.on_content(now, n_new);
      if (backend == Backend::kSglang) {
        text = c->text;  // the whole text so far
      } else {
        text += c->text;
      }
    }
    if (c->completion_tokens) last_tokens = *c->completion_tokens;
  }
};

}  // namespace

RequestResult HttpClient::send(const BenchRequest& r, double t0_s,
                               const model::Tokenizer* tokenizer) {
  const RequestOptions& o = impl_->options;
  RequestResult out;
  out.prompt_len = r.prompt_len;

  httplib::Request req;
  req.method = "POST";
  req.path = impl_->base.path_prefix + backend_path(o.backend);
  req.headers = impl_->headers();
  req.set_header("Content-Type", "application/json");
  req.body = request_body(r, o).dump();

  int status = 0;
  std::string raw;  // a non-streamed body, or an error body
  SseParser sse;
  const double start = steady_now_s();
  StreamState st{o.backend, ChunkTimer(start), {}, 0, std::nullopt, {}};
  double last_recv = start;
  req.response_handler = [&](const httplib::Response& res) {
    status = res.status;
    return true;
  };
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    const double now = steady_now_s();
    last_recv = now;
    if (status != 200 || !o.stream) {
      raw.append(data, n);
      return true;
    }
    for (const std::string& p : sse.feed(std::string_view(data, n))) st.on_payload(p, now);
    return true;
  };
  out.start_s = start - t0_s;
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  const bool sent = impl_->client.send(req, res, err);
  const double end = steady_now_s();
  if (!sent) {
    out.error = fmt::format("request failed: {}", httplib::to_string(err));
    out.latency_s = end - start;
    return out;
  }
  if (status != 200) {
    out.error = fmt::format("HTTP {}: {}", status, raw.substr(0, 300));
    out.latency_s = end - start;
    return out;
  }
  if (o.stream) {
    for (const std::string& p : sse.finish()) st.on_payload(p, last_recv);
  } else {
    st.on_payload(raw, last_recv);
  }
  if (!st.error.empty()) {
    out.error = st.error;
    out.latency_s = last_recv - start;
    return out;
  }
  out.success = true;
  out.latency_s = last_recv - start;
  // Not streaming, or a stream that never carried text: the first token is the whole response.
  out.ttft_s = o.stream && st.timer.has_first() ? st.timer.ttft_s() : out.latency_s;
  out.itl_s = st.timer.take_itl();
  out.generated_text = std::move(st.text);
  if (tokenizer) out.output_len_retokenized = int64_t(tokenizer->encode(out.generated_text).size());
  if (st.server_tokens) {
    out.output_len = *st.server_tokens;
  } else if (out.output_len_retokenized >= 0) {
    out.output_len = out.output_len_retokenized;
  } else {
    out.output_len = r.output_len;
  }
  return out;
}

}  // namespace pp::bench
