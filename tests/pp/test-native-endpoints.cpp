// The SGLang / vLLM-shaped routes' bodies (native-endpoints) and the server's load line
// (load-log), without a server: the fields SGLang's clients read, tokenize / detokenize
// round trips and their errors, the route table behind 405, and the load arithmetic.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "pp/server/load-log.h"
#include "pp/server/native-endpoints.h"
#include "test-util.h"

namespace pp::server {
namespace {

using nlohmann::json;

std::unique_ptr<model::Tokenizer> llama3_tokenizer() {
  auto tok =
      model::Tokenizer::from_hf_file(test::fixture_dir() / "tokenizers/llama3/tokenizer.json");
  EXPECT_TRUE(tok.ok()) << tok.status().message();
  return tok.ok() ? std::move(*tok) : nullptr;
}

json ok_body(const std::variant<json, ApiError>& r) {
  if (auto* e = std::get_if<ApiError>(&r)) {
    ADD_FAILURE() << e->to_json().dump();
    return json();
  }
  return std::get<json>(r);
}

ApiError error_of(const std::variant<json, ApiError>& r) {
  if (auto* e = std::get_if<ApiError>(&r)) return *e;
  ADD_FAILURE() << "expected an error, got " << std::get<json>(r).dump();
  return ApiError();
}

TEST(NativeEndpoints, RouteTableKnowsMethods) {
  EXPECT_EQ(route_methods("/generate"), "POST");
  EXPECT_EQ(route_methods("/get_server_info"), "GET");
  EXPECT_EQ(route_methods("/v1/tokenize"), "POST");
  EXPECT_EQ(route_methods("/v1/models/some-model"), "GET");
  EXPECT_EQ(route_methods("/v1/models/"), "");
  EXPECT_EQ(route_methods("/nope"), "");
}

TEST(NativeEndpoints, ModelInfoHasSglangFields) {
  json j = model_info_body(
      {.model_path = "/m/x.gguf", .model_type = "llama", .architecture = "LlamaForCausalLM"});
  for (const char* k : {"model_path", "tokenizer_path", "is_generation",
                        "preferred_sampling_params", "weight_version", "has_image_understanding",
                        "has_audio_understanding", "model_type", "architectures"}) {
    EXPECT_TRUE(j.contains(k)) << k;
  }
  EXPECT_EQ(j["model_path"], "/m/x.gguf");
  EXPECT_TRUE(j["tokenizer_path"].is_null());
  EXPECT_EQ(j["is_generation"], true);
  EXPECT_EQ(j["architectures"], json::array({"LlamaForCausalLM"}));
}

TEST(NativeEndpoints, ServerInfoKeepsArgsAndAddsStates) {
  ServerState s;
  s.n_running = 3;
  s.max_total_tokens = 4096;
  s.max_context = 2048;
  json j = server_info_body({{"model_path", "m"}, {"pp_size", 2}}, s);
  EXPECT_EQ(j["model_path"], "m");
  EXPECT_EQ(j["pp_size"], 2);
  EXPECT_EQ(j["max_total_num_tokens"], 4096);
  EXPECT_EQ(j["max_req_input_len"], 2047);
  ASSERT_TRUE(j["internal_states"].is_array());
  ASSERT_EQ(j["internal_states"].size(), 1u);
  // bench_serving reads internal_states[0].get("avg_spec_accept_length"): absent is None.
  EXPECT_FALSE(j["internal_states"][0].contains("avg_spec_accept_length"));
  EXPECT_EQ(j["internal_states"][0]["num_running_reqs"], 3);
  EXPECT_TRUE(j["version"].is_string());
  EXPECT_EQ(version_body()["version"], j["version"]);
}

TEST(NativeEndpoints, TokenizeAndDetokenizeRoundTrip) {
  auto tok = llama3_tokenizer();
  ASSERT_NE(tok, nullptr);
  const std::string text = "Hello, world! Grüße";
  json one = ok_body(tokenize_body(json{{"prompt", text}}.dump(), tok.get(), 512));
  EXPECT_EQ(one["tokens"].get<std::vector<int32_t>>(), tok->encode(text, true));
  EXPECT_EQ(one["count"], one["tokens"].size());
  EXPECT_EQ(one["max_model_len"], 512);
  json plain = ok_body(
      tokenize_body(json{{"prompt", text}, {"add_special_tokens", false}}.dump(), tok.get(), 512));
  EXPECT_EQ(plain["tokens"].get<std::vector<int32_t>>(), tok->encode(text, false));

  json many = ok_body(tokenize_body(json{{"prompt", {"a b", "c"}}}.dump(), tok.get(), 512));
  ASSERT_EQ(many["tokens"].size(), 2u);
  EXPECT_EQ(many["count"][1], many["tokens"][1].size());

  json back = ok_body(detokenize_body(json{{"tokens", plain["tokens"]}}.dump(), tok.get()));
  EXPECT_EQ(back["text"], text);
  // Special tokens are skipped unless asked for.
  json with_bos = ok_body(detokenize_body(
      json{{"tokens", one["tokens"]}, {"skip_special_tokens", false}}.dump(), tok.get()));
  EXPECT_NE(with_bos["text"], text);
  json nested = ok_body(detokenize_body(
      json{{"tokens", json::array({plain["tokens"], plain["tokens"]})}}.dump(), tok.get()));
  EXPECT_EQ(nested["text"], json::array({text, text}));
}

TEST(NativeEndpoints, BadInputIsA400NamingTheField) {
  auto tok = llama3_tokenizer();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(error_of(tokenize_body("", tok.get(), 8)).http_status, 400);
  EXPECT_EQ(error_of(tokenize_body("{", tok.get(), 8)).http_status, 400);
  EXPECT_EQ(error_of(tokenize_body("{}", tok.get(), 8)).param, "prompt");
  EXPECT_EQ(error_of(tokenize_body(R"({"prompt": 3})", tok.get(), 8)).param, "prompt");
  EXPECT_EQ(
      error_of(tokenize_body(R"({"prompt": "a", "add_special_tokens": 1})", tok.get(), 8)).param,
      "add_special_tokens");
  EXPECT_EQ(error_of(tokenize_body(R"({"prompt": "a"})", nullptr, 8)).http_status, 400);
  EXPECT_EQ(error_of(detokenize_body(R"({"tokens": [-1]})", tok.get())).param, "tokens");
  EXPECT_EQ(error_of(detokenize_body(R"({"tokens": [1e9]})", tok.get())).param, "tokens");
  EXPECT_EQ(error_of(detokenize_body(R"({"tokens": "abc"})", tok.get())).param, "tokens");
  EXPECT_EQ(error_of(detokenize_body(R"({"tokens": [[1], 2]})", tok.get())).param, "tokens");
  ApiError nf = model_not_found("other", "served");
  EXPECT_EQ(nf.http_status, 404);
  EXPECT_EQ(nf.code, "model_not_found");
}

pipeline::EngineStats stats(double t, int64_t prefill, int64_t gen, std::vector<double> busy,
                            int64_t running, int64_t waiting) {
  pipeline::EngineStats s;
  s.uptime_s = t;
  s.scheduler.n_prefill_tokens = prefill;
  s.scheduler.n_generated_tokens = gen;
  s.scheduler.n_running = running;
  s.scheduler.n_waiting = waiting;
  s.scheduler.kv_blocks_used = 10;
  s.scheduler.kv_blocks_total = 40;
  s.scheduler.kv_usage = 0.25;
  for (size_t k = 0; k < busy.size(); ++k) {
    pipeline::StageBusy b;
    b.stage = int32_t(k);
    b.compute_s = busy[k];
    s.stages.push_back(b);
  }
  return s;
}

TEST(LoadLog, RatesAndBusyOverTheInterval) {
  const LoadReport r =
      load_report(stats(10, 100, 50, {1.0, 2.0}, 0, 0), stats(14, 500, 250, {3.0, 6.0}, 4, 2));
  EXPECT_DOUBLE_EQ(r.prefill_tok_s, 100.0);
  EXPECT_DOUBLE_EQ(r.gen_tok_s, 50.0);
  ASSERT_EQ(r.stage_busy.size(), 2u);
  EXPECT_DOUBLE_EQ(r.stage_busy[0], 0.5);
  EXPECT_DOUBLE_EQ(r.stage_busy[1], 1.0);
  EXPECT_TRUE(r.busy);
  EXPECT_EQ(format_load_line(r),
            "load: running 4, queued 2, prefill 100.0 tok/s, gen 50.0 tok/s, kv 25.0% (10/40 "
            "blocks), stage busy 0.50 1.00");
  // Nothing ran and nothing waits: not worth a line.
  EXPECT_FALSE(
      load_report(stats(14, 500, 250, {3, 6}, 0, 0), stats(19, 500, 250, {3, 6}, 0, 0)).busy);

  LoadMeter m;
  EXPECT_FALSE(m.sample(stats(0, 0, 0, {0}, 0, 0)).has_value());
  auto second = m.sample(stats(2, 0, 30, {1}, 1, 0));
  ASSERT_TRUE(second.has_value());
  EXPECT_DOUBLE_EQ(m.last_gen_tok_s(), 15.0);
}

}  // namespace
}  // namespace pp::server
