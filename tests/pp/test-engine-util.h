// Helpers for the engine tests (tests/pp/test-engine*.cpp, tests/tools/test-pipeline*.cpp): a mix
// of requests, the single-process Generator's answers for them, a driver that submits them to an
// Engine over time and collects what streams back, and the check that the answers match.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "pp/model/generate.h"
#include "pp/model/model-source.h"
#include "pp/model/stage-model.h"
#include "pp/pipeline/engine.h"
#include "test-util.h"

namespace pp::test {

inline std::filesystem::path stage_binary() {
  return std::filesystem::path(PP_BUILD_DIR) / "tools" / "pp-stage";
}

struct EngineRequest {
  std::vector<int32_t> prompt;
  model::SamplingParams params;
  int delay_ms = 0;  // wait this long before submitting it
};

struct EngineOutput {
  std::vector<int32_t> tokens;
  pipeline::FinishReason reason = pipeline::FinishReason::kNone;
  std::string error;  // the final event's error, if any
  int64_t n_finals = 0;
  int32_t n_preemptions = 0;
};

// `n` requests: prompts of 1..max_prompt random ids, 1..max_new new tokens; mostly greedy, some
// sampled with a seed, some with penalties, some with a logit bias, some ignoring eos. Arrivals
// spread over time.
inline std::vector<EngineRequest> make_requests(int n, int64_t n_vocab, int max_prompt, int max_new,
                                                std::mt19937_64& g) {
  std::vector<EngineRequest> out(static_cast<size_t>(n));
  std::uniform_int_distribution<int32_t> id(3, int32_t(n_vocab) - 1);
  for (EngineRequest& r : out) {
    const int len = std::uniform_int_distribution<int>(1, max_prompt)(g);
    for (int i = 0; i < len; ++i) r.prompt.push_back(id(g));
    r.params.max_tokens = std::uniform_int_distribution<int>(1, max_new)(g);
    r.params.temperature = 0.0f;
    const int kind = std::uniform_int_distribution<int>(0, 9)(g);
    if (kind >= 6) {  // sampled, reproducible by its seed
      r.params.temperature = 0.9f;
      r.params.top_p = 0.95f;
      r.params.seed = g();
    }
    if (kind == 9) r.params.repetition_penalty = 1.3f, r.params.presence_penalty = 0.4f;
    if (kind == 5 || kind == 8) {  // logit bias: a few ids pushed up or down, sorted and distinct
      std::map<int32_t, float> bias;
      const int n_bias = std::uniform_int_distribution<int>(1, 3)(g);
      for (int k = 0; k < n_bias; ++k) {
        bias[id(g)] = std::uniform_real_distribution<float>(-100.0f, 100.0f)(g);
      }
      r.params.logit_bias.assign(bias.begin(), bias.end());
    }
    if (kind % 3 == 0) r.params.ignore_eos = true;
    r.delay_ms = std::uniform_int_distribution<int>(0, 4)(g);
  }
  return out;
}

// What the single-process Generator produces for the requests (token ids), with the weights held
// as `cpu_dtype` says.
inline std::vector<std::vector<int32_t>> reference_outputs(
    const std::filesystem::path& model, const std::vector<EngineRequest>& reqs,
    model::CpuDtype cpu_dtype = model::CpuDtype::kAuto) {
  auto src = model::open_model(model);
  EXPECT_TRUE(src.ok()) << src.status().message();
  if (!src.ok()) return {};
  auto m = model::StageModel::load(src->config, *src->weights, 0, src->config.n_layer, cpu_dtype);
  EXPECT_TRUE(m.ok()) << m.status().message();
  if (!m.ok()) return {};
  model::Generator gen(**m, nullptr, {.max_batch_tokens = 64, .block_size = 16});
  std::vector<model::GenerationRequest> g;
  for (const EngineRequest& r : reqs) g.push_back({r.prompt, r.params, {}});
  auto results = gen.generate(g);
  EXPECT_TRUE(results.ok()) << results.status().message();
  std::vector<std::vector<int32_t>> out;
  if (results.ok()) {
    for (const model::GenerationResult& r : *results) out.push_back(r.token_ids);
  }
  return out;
}

// Requests drawn for tests/fixtures/models/tiny-llama and the single-process Generator's tokens
// for them: what the engine must reproduce.
struct ReferenceRequests {
  std::filesystem::path model;            // tiny-llama
  std::vector<EngineRequest> reqs;        // drawn by `make(n_vocab, g)`
  std::vector<std::vector<int32_t>> ref;  // the Generator's tokens, one list per request
};

// Fills `out` (fatal failure when the model does not open; wrap in ASSERT_NO_FATAL_FAILURE).
template <typename Make>
void make_reference_requests(Make make, ReferenceRequests* out) {
  out->model = fixture_dir() / "models" / "tiny-llama";
  auto src = model::open_model(out->model);
  ASSERT_TRUE(src.ok()) << src.status().message();
  out->reqs = make(src->config.n_vocab, rng());
  out->ref = reference_outputs(out->model, out->reqs);
}

// Each request ended once, without error, with the Generator's tokens (fatal failure otherwise;
// wrap in ASSERT_NO_FATAL_FAILURE).
inline void expect_reference_tokens(const std::vector<EngineOutput>& out,
                                    const ReferenceRequests& r) {
  ASSERT_EQ(out.size(), r.reqs.size());
  ASSERT_EQ(r.ref.size(), r.reqs.size());
  for (size_t i = 0; i < r.reqs.size(); ++i) {
    ASSERT_EQ(out[i].n_finals, 1) << "request " << i;
    ASSERT_EQ(out[i].error, "") << "request " << i;
    EXPECT_EQ(out[i].tokens, r.ref[i])
        << "request " << i << " (" << r.reqs[i].prompt.size() << " prompt tokens)";
  }
}

inline pipeline::EngineOptions engine_options(const std::filesystem::path& model, int32_t P,
                                              int32_t D) {
  pipeline::EngineOptions o;
  o.model_path = model.string();
  o.n_stages = P;
  o.async_depth = D;
  o.stage_binary = stage_binary();
  o.threads_per_stage = 1;
  o.max_batch_tokens = 64;
  o.register_timeout = std::chrono::milliseconds(60000);
  return o;
}

// Submits the requests (each after its delay) and collects their events until every one has its
// final event, or `timeout` passes (then the missing ones have n_finals == 0).
inline std::vector<EngineOutput> run_requests(
    pipeline::Engine& engine, const std::vector<EngineRequest>& reqs,
    std::chrono::milliseconds timeout = std::chrono::milliseconds(120000)) {
  pipeline::EventQueue q;
  std::map<uint64_t, size_t> index;
  std::vector<EngineOutput> out(reqs.size());
  size_t n_final = 0;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto drain = [&](std::chrono::milliseconds wait) {
    while (auto ev = q.pop(wait)) {
      wait = std::chrono::milliseconds(0);
      auto it = index.find(ev->event.request_id);
      if (it == index.end()) {
        ADD_FAILURE() << "event for unknown request " << ev->event.request_id;
        continue;
      }
      EngineOutput& o = out[it->second];
      const pipeline::RequestEvent& e = ev->event;
      o.tokens.insert(o.tokens.end(), e.token_ids.begin(), e.token_ids.end());
      if (e.kind == pipeline::EventKind::kFinal) {
        ++o.n_finals;
        ++n_final;
        o.reason = e.finish_reason;
        o.n_preemptions = e.n_preemptions;
        if (!ev->error.ok()) o.error = ev->error.message();
      }
    }
  };
  for (size_t i = 0; i < reqs.size(); ++i) {
    const EngineRequest& r = reqs[i];
    if (r.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(r.delay_ms));
    auto id = engine.submit(r.prompt, r.params, q.sink());
    EXPECT_TRUE(id.ok()) << id.status().message();
    if (!id.ok()) {
      ++n_final;
      continue;
    }
    index[*id] = i;
    drain(std::chrono::milliseconds(0));
  }
  while (n_final < reqs.size() && std::chrono::steady_clock::now() < deadline) {
    drain(std::chrono::milliseconds(100));
  }
  return out;
}

}  // namespace pp::test
