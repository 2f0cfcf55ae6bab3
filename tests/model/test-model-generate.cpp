// Generator: batched requests give the same tokens as each alone (tiny model and the default
// model), seeds reproduce, stop conditions (eos, stop token ids, stop strings across token
// boundaries, max_tokens) end generation where they should, the streamed pieces add up to the
// text, and bad requests fail clearly. Also prints the CPU decode speed at batch 1 and 16.
#include <gtest/gtest.h>

#include <chrono>

#include "pp/kernels/cpu.h"
#include "pp/model/generate.h"
#include "pp/model/model-source.h"
#include "pp/model/stage-model.h"
#include "pp/model/tokenizer.h"
#include "test-model-util.h"
#include "test-util.h"

namespace pp::test {
namespace {

using model::GenerationRequest;
using model::GenerationResult;
using model::Generator;
using model::StageModel;

std::vector<int32_t> random_ids(int64_t n, int64_t n_vocab) {
  std::uniform_int_distribution<int32_t> d(3, int32_t(n_vocab) - 1);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int32_t& x : v) x = d(rng());
  return v;
}

std::vector<GenerationResult> run(Generator& g, const std::vector<GenerationRequest>& reqs) {
  auto out = g.generate(reqs);
  EXPECT_TRUE(out.ok()) << out.status().message();
  return out.ok() ? std::move(out).value() : std::vector<GenerationResult>{};
}

// A random-weight Qwen3 (no tokenizer).
struct TinyModel {
  model::ModelConfig c = tiny_config(model::Arch::kQwen3);
  MemoryWeights w = random_weights(c);
  std::unique_ptr<StageModel> m = std::move(StageModel::load(c, w, 0, c.n_layer)).value();
};

// 16 requests of different lengths, half greedy, half sampled with their own seeds.
std::vector<GenerationRequest> mixed_requests(int64_t n_vocab, int n, int64_t max_tokens) {
  std::vector<GenerationRequest> reqs(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    reqs[i].prompt_ids = random_ids(1 + (i * 7) % 23, n_vocab);
    reqs[i].params.max_tokens = max_tokens;
    reqs[i].params.ignore_eos = true;
    if (i % 2) {
      reqs[i].params.temperature = 0.9f;
      reqs[i].params.top_p = 0.95f;
      reqs[i].params.top_k = 40;
      reqs[i].params.seed = 1000 + i;
      reqs[i].params.logprobs = true;
      reqs[i].params.top_logprobs = 3;
    } else {
      reqs[i].params.temperature = 0.0f;
      if (i % 4 == 0) reqs[i].params.repetition_penalty = 1.3f;
    }
  }
  return reqs;
}

TEST(Generator, BatchedEqualsAlone) {
  TinyModel t;
  // A small token budget forces prompts to be chunked and packed with others.
  Generator g(*t.m, nullptr, {.max_batch_tokens = 7, .block_size = 4});
  const auto reqs = mixed_requests(t.c.n_vocab, 16, 12);
  const auto together = run(g, reqs);
  ASSERT_EQ(together.size(), reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto alone = run(g, {reqs[i]});
    ASSERT_EQ(alone.size(), 1u);
    EXPECT_EQ(alone[0].token_ids, together[i].token_ids) << "request " << i;
    EXPECT_EQ(alone[0].logprobs, together[i].logprobs) << "request " << i;
    EXPECT_EQ(together[i].token_ids.size(), 12u);
    EXPECT_EQ(together[i].finish_reason, model::FinishReason::kLength);
    if (reqs[i].params.logprobs) {
      ASSERT_EQ(together[i].top_logprobs.size(), 12u);
      EXPECT_EQ(together[i].top_logprobs[0].size(), 3u);
    }
  }
  // And with a big budget (one prefill forward for all).
  Generator big(*t.m, nullptr, {.max_batch_tokens = 4096, .block_size = 16});
  const auto one_pass = run(big, reqs);
  for (size_t i = 0; i < reqs.size(); ++i) EXPECT_EQ(one_pass[i].token_ids, together[i].token_ids);
}

TEST(Generator, SeedsReproduce) {
  TinyModel t;
  Generator g(*t.m, nullptr);
  GenerationRequest r;
  r.prompt_ids = random_ids(5, t.c.n_vocab);
  r.params.temperature = 1.5f;
  r.params.max_tokens = 16;
  r.params.ignore_eos = true;
  r.params.seed = 7;
  const auto a = run(g, {r, r});
  EXPECT_EQ(a[0].token_ids, a[1].token_ids);
  r.params.seed = 8;
  const auto b = run(g, {r});
  EXPECT_NE(a[0].token_ids, b[0].token_ids);
}

TEST(Generator, StopTokenIdsAndLimits) {
  TinyModel t;
  Generator g(*t.m, nullptr);
  GenerationRequest r;
  r.prompt_ids = random_ids(6, t.c.n_vocab);
  r.params.temperature = 0.0f;
  r.params.max_tokens = 10;
  r.params.ignore_eos = true;
  const auto full = run(g, {r});
  ASSERT_EQ(full[0].token_ids.size(), 10u);
  EXPECT_EQ(full[0].finish_reason, model::FinishReason::kLength);

  // Stop on the 4th token's id (first occurrence).
  const int32_t stop_id = full[0].token_ids[3];
  const size_t first =
      size_t(std::find(full[0].token_ids.begin(), full[0].token_ids.end(), stop_id) -
             full[0].token_ids.begin());
  r.params.stop_token_ids = {stop_id};
  const auto stopped = run(g, {r});
  EXPECT_EQ(stopped[0].finish_reason, model::FinishReason::kStop);
  EXPECT_EQ(stopped[0].token_ids,
            std::vector<int32_t>(full[0].token_ids.begin(), full[0].token_ids.begin() + first + 1));

  // The model's eos ends generation unless ignore_eos.
  r.params.stop_token_ids.clear();
  t.c.eos_token_ids = {stop_id};
  auto m2 = std::move(StageModel::load(t.c, t.w, 0, t.c.n_layer)).value();
  Generator g2(*m2, nullptr);
  r.params.ignore_eos = false;
  EXPECT_EQ(run(g2, {r})[0].token_ids, stopped[0].token_ids);

  // The context length caps max_tokens.
  r.params.max_tokens = 0;
  r.params.ignore_eos = true;
  r.prompt_ids = random_ids(t.c.max_context() - 3, t.c.n_vocab);
  const auto capped = run(g, {r});
  EXPECT_EQ(capped[0].token_ids.size(), 3u);
  EXPECT_EQ(capped[0].finish_reason, model::FinishReason::kLength);
}

TEST(Generator, BadRequests) {
  TinyModel t;
  Generator g(*t.m, nullptr);
  GenerationRequest r;
  auto status_of = [&](const GenerationRequest& req) {
    return g.generate(std::span(&req, 1)).status();
  };
  EXPECT_EQ(status_of(r).code(), StatusCode::kInvalidArgument);  // empty prompt
  r.prompt_ids = {1, 2, int32_t(t.c.n_vocab)};
  EXPECT_EQ(status_of(r).code(), StatusCode::kOutOfRange);
  r.prompt_ids = {1, 2, 3};
  r.params.top_p = 0.0f;
  EXPECT_EQ(status_of(r).code(), StatusCode::kInvalidArgument);
  r.params.top_p = 1.0f;
  r.params.stop = {"x"};  // no tokenizer
  EXPECT_FALSE(status_of(r).ok());
  r.params.stop.clear();
  r.prompt_ids = random_ids(t.c.max_context(), t.c.n_vocab);
  Status s = status_of(r);
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
  EXPECT_NE(s.message().find("context"), std::string::npos) << s.message();
}

// The default model with its tokenizer.
struct DefaultModel {
  model::ModelSource src;
  std::unique_ptr<model::Tokenizer> tok;
  std::unique_ptr<StageModel> m;
  bool load() {
    if (!std::filesystem::exists(default_model_path())) return false;
    auto s = model::open_model(default_model_path());
    if (!s.ok()) return false;
    src = std::move(s).value();
    auto t = model::Tokenizer::from_gguf(*src.gguf);
    auto l = StageModel::load(src.config, *src.weights, 0, src.config.n_layer);
    EXPECT_TRUE(t.ok() && l.ok());
    if (!t.ok() || !l.ok()) return false;
    tok = std::move(t).value();
    m = std::move(l).value();
    return true;
  }
};

TEST(GeneratorDefaultModel, StopStringsAndStreaming) {
  DefaultModel d;
  if (!d.load()) GTEST_SKIP() << "no default model";
  Generator g(*d.m, d.tok.get());
  GenerationRequest r;
  r.prompt_ids = d.tok->encode("The capital of France is", true);
  r.params.temperature = 0.0f;
  r.params.max_tokens = 16;
  r.params.ignore_eos = true;
  std::string streamed;
  r.on_text = [&](std::string_view piece) { streamed += piece; };
  const auto full = run(g, {r});
  ASSERT_EQ(full[0].token_ids.size(), 16u);
  const std::string text = full[0].text;
  EXPECT_EQ(streamed, text);
  EXPECT_EQ(text, d.tok->decode(full[0].token_ids, true));

  // A stop string straddling the boundary between the 5th and 6th tokens.
  const size_t boundary = d.tok->decode(std::span(full[0].token_ids).first(5), true).size();
  ASSERT_GE(boundary, 2u);
  ASSERT_GE(text.size(), boundary + 2);
  const std::string stop = text.substr(boundary - 2, 4);
  streamed.clear();
  r.params.stop = {"never-appears", stop};
  const auto stopped = run(g, {r});
  EXPECT_EQ(stopped[0].finish_reason, model::FinishReason::kStop);
  EXPECT_EQ(stopped[0].stop_string, stop);
  EXPECT_EQ(stopped[0].text, text.substr(0, text.find(stop)));
  EXPECT_EQ(streamed, stopped[0].text);
  EXPECT_LE(stopped[0].token_ids.size(), 7u);

  // The chat answer ends with the model's eos (<|im_end|>), which is not in the text.
  GenerationRequest chat;
  chat.prompt_ids = d.tok->encode(
      "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", false);
  chat.params.temperature = 0.0f;
  chat.params.max_tokens = 64;
  const auto answer = run(g, {chat});
  EXPECT_EQ(answer[0].finish_reason, model::FinishReason::kStop);
  EXPECT_EQ(answer[0].token_ids.back(), d.src.config.eos_token_ids[0]);
  EXPECT_NE(answer[0].text.find("Paris"), std::string::npos) << answer[0].text;
  EXPECT_EQ(answer[0].text.find("<|im_end|>"), std::string::npos);
}

// Batch 16 against batch 1 on the default model; prints the decode speed of each.
TEST(GeneratorDefaultModel, BatchedEqualsAloneAndDecodeSpeed) {
  DefaultModel d;
  if (!d.load()) GTEST_SKIP() << "no default model";
  Generator g(*d.m, d.tok.get());
  const int64_t n_tokens = 32;
  auto reqs = mixed_requests(d.src.config.n_vocab, 16, n_tokens);
  const auto together = run(g, reqs);
  const double tps16 = g.stats().decode_tokens_per_second();
  double tps1 = 0;
  // Two alone (each costs a full generation): the first, and one drawn afresh.
  for (size_t i : {size_t(0), size_t(test::random_int(1, int64_t(reqs.size()) - 1))}) {
    const auto alone = run(g, {reqs[i]});
    if (i == 0) tps1 = g.stats().decode_tokens_per_second();
    EXPECT_EQ(alone[0].token_ids, together[i].token_ids) << "request " << i;
  }
  std::printf("[decode] default model, %d threads: batch 1 %.1f tok/s, batch 16 %.1f tok/s\n",
              kernels::cpu::num_threads(), tps1, tps16);
}

}  // namespace
}  // namespace pp::test
