// Reference tests against Hugging Face transformers (fp32): for every
// tests/fixtures/reference/<name>.json, the prompt's logits at the stored positions within
// 1e-3 relative, the same logits whether the prompt runs in one batch or in chunks (bitwise),
// and the same greedy tokens (32, or 16 for the FP8 checkpoints, which load through the same
// path: their fp8 weights are dequantized with their scales), all with the weights in f32
// (`--cpu-dtype f32`, the exact reference). With GGUF blocks kept quantized (the default
// `--cpu-dtype auto`: 8-bit activations), the logits stay within the tolerance below, chunked
// prefill is still bitwise the one batch, and the reference's top token stays among the top 5.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "pp/model/generate.h"
#include "pp/model/model-source.h"
#include "pp/model/stage-model.h"
#include "test-util.h"

namespace pp::test {
namespace {

struct Reference {
  std::string name;
  nlohmann::json j;
};

std::vector<Reference> references() {
  std::vector<Reference> v;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(fixture_dir() / "reference", ec)) {
    if (e.path().extension() != ".json") continue;
    std::ifstream in(e.path());
    v.push_back({e.path().stem().string(), nlohmann::json::parse(in)});
  }
  std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return v;
}

class ReferenceTest : public ::testing::TestWithParam<Reference> {};

TEST_P(ReferenceTest, LogitsAndGreedyTokensMatchTransformers) {
  const nlohmann::json& j = GetParam().j;
  const std::string model_field = j.at("model").get<std::string>();
  const std::filesystem::path path =
      model_field == "default" ? default_model_path() : fixture_dir() / model_field;
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "model not found: " << path;

  auto src = model::open_model(path);
  ASSERT_TRUE(src.ok()) << src.status().message();
  const int64_t V = j.at("vocab").get<int64_t>();
  ASSERT_EQ(src->config.n_vocab, V);
  auto loaded = model::StageModel::load(src->config, *src->weights, 0, src->config.n_layer,
                                        model::CpuDtype::kF32);
  ASSERT_TRUE(loaded.ok()) << loaded.status().message();
  model::StageModel& m = **loaded;
  model::Generator gen(m, nullptr);

  const auto prompt = j.at("prompt_ids").get<std::vector<int32_t>>();
  const auto positions = j.at("logit_positions").get<std::vector<int32_t>>();
  auto whole = gen.prompt_logits(prompt, positions, int64_t(prompt.size()));
  ASSERT_TRUE(whole.ok()) << whole.status().message();
  for (int64_t chunk : {3, 7}) {
    auto chunked = gen.prompt_logits(prompt, positions, chunk);
    ASSERT_TRUE(chunked.ok()) << chunked.status().message();
    EXPECT_EQ(std::memcmp(chunked->data(), whole->data(), whole->size() * sizeof(float)), 0)
        << "chunks of " << chunk << " differ from one batch";
  }

  const std::vector<uint8_t> bytes =
      read_file_bytes(fixture_dir() / "reference" / j.at("logits_file").get<std::string>());
  ASSERT_EQ(bytes.size(), positions.size() * size_t(V) * sizeof(float));
  std::vector<float> ref(positions.size() * size_t(V));
  std::memcpy(ref.data(), bytes.data(), bytes.size());
  double max_err = 0, max_rel = 0;
  int64_t n_bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::abs(double((*whole)[i]) - ref[i]);
    const double rel = err / std::max(1.0, std::abs(double(ref[i])));
    max_err = std::max(max_err, err);
    max_rel = std::max(max_rel, rel);
    if (rel > 1e-3) ++n_bad;
  }
  std::printf("[reference] %s: %zu positions x %lld, max |err| %.3g, max relative %.3g\n",
              GetParam().name.c_str(), positions.size(), (long long)V, max_err, max_rel);
  EXPECT_EQ(n_bad, 0) << "max relative error " << max_rel;
  RecordProperty("max_abs_error", std::to_string(max_err));

  const auto greedy = j.at("greedy").get<std::vector<int32_t>>();
  model::GenerationRequest req;
  req.prompt_ids = prompt;
  req.params.temperature = 0.0f;
  req.params.max_tokens = int64_t(greedy.size());
  req.params.ignore_eos = true;
  auto out = gen.generate(std::span(&req, 1));
  ASSERT_TRUE(out.ok()) << out.status().message();
  EXPECT_EQ((*out)[0].token_ids, greedy);
}

// What 8-bit activations cost (measured on SmolLM2-135M Q4_1: max |err| 0.98 over 2 x 49152
// logits whose magnitudes reach 20 and more): each logit within kQuantAbsTol of transformers on the
// dequantized weights. A model without block weights loads as f32 and is checked above.
constexpr double kQuantAbsTol = 1.5;

TEST_P(ReferenceTest, QuantizedLogitsWithinTolerance) {
  const nlohmann::json& j = GetParam().j;
  const std::string model_field = j.at("model").get<std::string>();
  const std::filesystem::path path =
      model_field == "default" ? default_model_path() : fixture_dir() / model_field;
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "model not found: " << path;
  auto src = model::open_model(path);
  ASSERT_TRUE(src.ok()) << src.status().message();
  const int64_t V = j.at("vocab").get<int64_t>();
  auto loaded = model::StageModel::load(src->config, *src->weights, 0, src->config.n_layer);
  ASSERT_TRUE(loaded.ok()) << loaded.status().message();
  model::Generator gen(**loaded, nullptr);
  const auto prompt = j.at("prompt_ids").get<std::vector<int32_t>>();
  const auto positions = j.at("logit_positions").get<std::vector<int32_t>>();
  auto whole = gen.prompt_logits(prompt, positions, int64_t(prompt.size()));
  ASSERT_TRUE(whole.ok()) << whole.status().message();
  auto chunked = gen.prompt_logits(prompt, positions, 5);
  ASSERT_TRUE(chunked.ok()) << chunked.status().message();
  EXPECT_EQ(std::memcmp(chunked->data(), whole->data(), whole->size() * sizeof(float)), 0);

  const std::vector<uint8_t> bytes =
      read_file_bytes(fixture_dir() / "reference" / j.at("logits_file").get<std::string>());
  std::vector<float> ref(positions.size() * size_t(V));
  ASSERT_EQ(bytes.size(), ref.size() * sizeof(float));
  std::memcpy(ref.data(), bytes.data(), bytes.size());
  double max_err = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_err = std::max(max_err, std::abs(double((*whole)[i]) - ref[i]));
  }
  std::printf("[reference, quantized] %s: max |err| %.3g\n", GetParam().name.c_str(), max_err);
  EXPECT_LE(max_err, kQuantAbsTol);
  for (size_t p = 0; p < positions.size(); ++p) {
    const float* r = ref.data() + p * size_t(V);
    const float* g = whole->data() + p * size_t(V);
    const int64_t top = std::max_element(r, r + V) - r;
    int64_t above = 0;
    for (int64_t t = 0; t < V; ++t) above += g[t] > g[top];
    EXPECT_LT(above, 5) << "position " << positions[p];
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ReferenceTest, ::testing::ValuesIn(references()),
                         [](const auto& info) {
                           std::string n = info.param.name;
                           for (char& ch : n) {
                             if (!std::isalnum(uint8_t(ch))) ch = '_';
                           }
                           return n;
                         });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(ReferenceTest);

}  // namespace
}  // namespace pp::test
