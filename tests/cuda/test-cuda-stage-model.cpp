// The GPU stage model against the CPU reference, on random-weight models of every family (the
// same bf16-exact weights on both backends): logits within bf16 tolerance through prefill and
// decode, teacher-forced top-1 agreement at the default model's shape, bitwise-identical logits
// whatever the split into stages, graphs against eager, and the device penalties. With fp8
// weights (quantized on load): the same against the CPU on the dequantized weights (looser, the
// GPU quantizes prefill activations per token), load() of a quantizing source bitwise equal to
// random() quantized on the device, and fused slots whose parts disagree refused.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <fmt/format.h>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>

#include "cuda-test-util.h"
#include "pp/kernels/cpu.h"
#include "pp/kernels/gpu.h"
#include "pp/kernels/random-weights.h"
#include "pp/model/config.h"
#include "pp/model/gpu-stage-model.h"
#include "pp/model/quantization.h"
#include "pp/model/random-weights.h"
#include "pp/model/stage-model.h"
#include "pp/model/weights.h"
#include "test-util.h"

namespace pp::model {
namespace {

namespace gpu = kernels::gpu;
using test::have_gpu;

constexpr int64_t kBlock = 16;

ModelConfig family(const std::string& name, int64_t n_layer = 3) {
  nlohmann::json j = {
      {"hidden_size", 256},       {"intermediate_size", 512},        {"num_hidden_layers", n_layer},
      {"num_attention_heads", 4}, {"num_key_value_heads", 2},        {"head_dim", 64},
      {"vocab_size", 512},        {"max_position_embeddings", 4096}, {"rms_norm_eps", 1e-5},
      {"rope_theta", 10000.0},    {"tie_word_embeddings", false}};
  if (name == "llama") {
    j["architectures"] = {"LlamaForCausalLM"};
    j["model_type"] = "llama";
  } else if (name == "llama3") {
    j["architectures"] = {"LlamaForCausalLM"};
    j["model_type"] = "llama";
    j["tie_word_embeddings"] = true;
    j["rope_theta"] = 500000.0;
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", 8.0},
                         {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", 256}};
  } else if (name == "mistral") {
    j["architectures"] = {"MistralForCausalLM"};
    j["model_type"] = "mistral";
    j["num_attention_heads"] = 8;
    j["head_dim"] = 64;
  } else if (name == "qwen2") {
    j["architectures"] = {"Qwen2ForCausalLM"};
    j["model_type"] = "qwen2";
  } else if (name == "qwen3") {
    j["architectures"] = {"Qwen3ForCausalLM"};
    j["model_type"] = "qwen3";
    j["head_dim"] = 128;
  }
  auto c = config_from_hf_json(j);
  EXPECT_TRUE(c.ok()) << c.status().message();
  return *c;
}

// SmolLM2-135M's shape (the default model).
ModelConfig smollm2_shape() {
  nlohmann::json j = {{"architectures", {"LlamaForCausalLM"}},
                      {"model_type", "llama"},
                      {"hidden_size", 576},
                      {"intermediate_size", 1536},
                      {"num_hidden_layers", 30},
                      {"num_attention_heads", 9},
                      {"num_key_value_heads", 3},
                      {"vocab_size", 49152},
                      {"max_position_embeddings", 8192},
                      {"rms_norm_eps", 1e-5},
                      {"rope_theta", 100000.0},
                      {"tie_word_embeddings", true}};
  return *config_from_hf_json(j);
}

// Sequences with their token histories and block tables (disjoint blocks).
struct Seqs {
  std::vector<std::vector<int32_t>> tokens;
  std::vector<std::vector<int32_t>> tables;
  std::vector<int32_t> cached;  // tokens already in the KV cache
};

Seqs make_seqs(const std::vector<int64_t>& prompt_lens, int64_t n_vocab, int64_t blocks_each) {
  Seqs s;
  std::uniform_int_distribution<int32_t> tok(0, int32_t(n_vocab) - 1);
  for (size_t i = 0; i < prompt_lens.size(); ++i) {
    std::vector<int32_t> t(static_cast<size_t>(prompt_lens[i]));
    for (auto& x : t) x = tok(test::rng());
    s.tokens.push_back(t);
    std::vector<int32_t> table(static_cast<size_t>(blocks_each));
    std::iota(table.begin(), table.end(), int32_t(i * blocks_each));
    s.tables.push_back(table);
    s.cached.push_back(0);
  }
  return s;
}

// The batch of everything not yet cached; all rows' logits when `all_rows`, else the last's.
Batch next_batch(const Seqs& s, bool all_rows) {
  Batch b;
  for (size_t i = 0; i < s.tokens.size(); ++i) {
    std::span<const int32_t> ids(s.tokens[i]);
    ids = ids.subspan(size_t(s.cached[i]));
    const int32_t start = int32_t(b.n_tokens());
    b.add_sequence(ids, s.cached[i], s.tables[i], true);
    if (all_rows) {
      b.logit_rows.pop_back();
      for (int32_t t = 0; t < int32_t(ids.size()); ++t) b.logit_rows.push_back(start + t);
    }
  }
  return b;
}

std::vector<float> gpu_logits(GpuStageModel& m, int64_t rows) {
  EXPECT_TRUE(m.stream().synchronize().ok());
  std::vector<float> out(size_t(rows * m.config().n_vocab));
  EXPECT_EQ(cudaMemcpy(out.data(), m.logits(), out.size() * 4, cudaMemcpyDeviceToHost),
            cudaSuccess);
  return out;
}

int32_t argmax(const float* row, int64_t n) {
  return int32_t(std::max_element(row, row + n) - row);
}

struct Compare {
  double max_err = 0;  // max |gpu - cpu| / max(1, max |cpu|) over rows
  int64_t agree = 0, rows = 0;
  std::string worst;  // the worst row's first logits, GPU and CPU (for a failure's message)
};

void compare(const std::vector<float>& g, const std::vector<float>& c, int64_t V, Compare& out) {
  const int64_t R = int64_t(c.size()) / V;
  for (int64_t r = 0; r < R; ++r) {
    double scale = 1, err = 0;
    for (int64_t v = 0; v < V; ++v) scale = std::max(scale, double(std::fabs(c[r * V + v])));
    for (int64_t v = 0; v < V; ++v)
      err = std::max(err, double(std::fabs(g[r * V + v] - c[r * V + v])));
    if (err / scale > out.max_err || out.worst.empty()) {
      out.worst =
          fmt::format("row {}: gpu {:.4f} {:.4f} {:.4f} {:.4f}, cpu {:.4f} {:.4f} {:.4f} {:.4f}", r,
                      g[r * V], g[r * V + 1], g[r * V + 2], g[r * V + 3], c[r * V], c[r * V + 1],
                      c[r * V + 2], c[r * V + 3]);
    }
    out.max_err = std::max(out.max_err, err / scale);
    out.agree += argmax(&g[r * V], V) == argmax(&c[r * V], V);
    ++out.rows;
  }
}

// Prefill (all rows' logits), then greedy decode steps fed with the CPU's tokens. The weights:
// `checkpoint` when given (both models load it), else random from `seed`, quantized as `q` says.
Compare run_against_cpu(const ModelConfig& c, uint64_t seed, const std::vector<int64_t>& lens,
                        int steps, bool graphs, Quantization q = Quantization::kNone,
                        std::shared_ptr<const WeightSource> checkpoint = nullptr,
                        bool fp8_activations = true) {
  std::shared_ptr<const WeightSource> source = checkpoint;
  if (!source) {
    auto weights = random_weights(c, seed);
    EXPECT_TRUE(weights.ok());
    source = quantize_on_load(std::shared_ptr<const WeightSource>(std::move(*weights)), c, q);
  }
  auto cpu = StageModel::load(c, *source, 0, c.n_layer);
  EXPECT_TRUE(cpu.ok()) << cpu.status().message();
  GpuStageOptions o;
  o.max_tokens = 1024;
  o.max_seqs = 32;
  o.max_logit_rows = 1024;
  o.cuda_graphs = graphs;
  o.quantization = q;
  o.fp8_activations = fp8_activations;
  auto g = checkpoint ? GpuStageModel::load(c, *checkpoint, 0, c.n_layer, o)
                      : GpuStageModel::random(c, seed, 0, c.n_layer, o);
  EXPECT_TRUE(g.ok()) << g.status().message();
  if (!g.ok() || !cpu.ok()) return {};
  // Tables no wider than the model's context (the GPU refuses wider ones, as the engine never
  // builds them).
  const int64_t blocks_each = std::min<int64_t>(64, c.max_context() / kBlock);
  const int64_t n_blocks = blocks_each * int64_t(lens.size());
  EXPECT_TRUE((*cpu)->allocate_kv(n_blocks, kBlock).ok());
  EXPECT_TRUE((*g)->allocate_kv(n_blocks, kBlock).ok());
  Seqs s = make_seqs(lens, c.n_vocab, blocks_each);
  Compare cmp;
  std::vector<float> cpu_out;
  for (int step = 0; step <= steps; ++step) {
    Batch b = next_batch(s, step == 0);
    EXPECT_TRUE((*cpu)->forward(b, {}, cpu_out).ok());
    Status st = (*g)->forward(b, nullptr, nullptr);
    EXPECT_TRUE(st.ok()) << st.message();
    compare(gpu_logits(**g, b.n_logit_rows()), cpu_out, c.n_vocab, cmp);
    // Next tokens: the CPU's greedy choice for each sequence (its last logit row).
    int64_t row = 0;
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      const int64_t n_new = int64_t(s.tokens[i].size()) - s.cached[i];
      row += step == 0 ? n_new : 1;
      s.cached[i] = int32_t(s.tokens[i].size());
      s.tokens[i].push_back(argmax(&cpu_out[size_t((row - 1) * c.n_vocab)], c.n_vocab));
    }
  }
  if (graphs) {
    EXPECT_GT((*g)->graph_replays(), 0);
  }
  return cmp;
}

class GpuStageModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_gpu()) GTEST_SKIP() << "no GPU";
  }
};

TEST_F(GpuStageModelTest, RandomFillMatchesHost) {
  auto stream = gpu::Stream::create();
  ASSERT_TRUE(stream.ok());
  const size_t n = 100003;
  const uint64_t key = test::rng()();
  auto buf = gpu::DeviceBuffer::allocate(n * 2);
  ASSERT_TRUE(buf.ok());
  ASSERT_TRUE(gpu::fill_random(buf->as<gpu::Bf16>(), n, key, -0.3f, 0.7f, *stream).ok());
  ASSERT_TRUE(stream->synchronize().ok());
  std::vector<uint16_t> got(n);
  ASSERT_EQ(cudaMemcpy(got.data(), buf->data(), n * 2, cudaMemcpyDeviceToHost), cudaSuccess);
  for (size_t i = 0; i < n; ++i) {
    const float want = kernels::random_weight_value(key, i, -0.3f, 0.7f);
    uint32_t bits = uint32_t(got[i]) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    ASSERT_EQ(f, want) << "at " << i;
  }
}

TEST_F(GpuStageModelTest, EveryFamilyMatchesCpu) {
  for (const char* name : {"llama", "llama3", "mistral", "qwen2", "qwen3"}) {
    SCOPED_TRACE(name);
    const ModelConfig c = family(name);
    std::uniform_int_distribution<int64_t> len(1, 150);
    const Compare r = run_against_cpu(c, test::rng()(), {len(test::rng()), len(test::rng()), 77, 1},
                                      12, /*graphs=*/false);
    EXPECT_LT(r.max_err, 0.03) << name;
    EXPECT_GE(double(r.agree) / double(r.rows), 0.97) << name << ": " << r.agree << "/" << r.rows;
  }
}

TEST_F(GpuStageModelTest, DecodeGraphsMatchEager) {
  const ModelConfig c = family("qwen3");
  const uint64_t seed = test::rng()();
  const Compare eager = run_against_cpu(c, seed, {5, 40, 133}, 20, false);
  const Compare graphs = run_against_cpu(c, seed, {5, 40, 133}, 20, true);
  EXPECT_LT(graphs.max_err, 0.03);
  // Near-ties of a random model flip under bf16 rounding (0.966 seen once on an H100).
  EXPECT_GE(double(graphs.agree) / double(graphs.rows), 0.95);
  EXPECT_NEAR(graphs.max_err, eager.max_err, 0.02);
}

// Splitting the layers over stages passes h between them unchanged: bitwise the same logits.
TEST_F(GpuStageModelTest, SplitsGiveIdenticalLogits) {
  const ModelConfig c = family("llama", 4);
  const uint64_t seed = test::rng()();
  GpuStageOptions o;
  o.max_tokens = 512;
  o.max_seqs = 16;
  o.max_logit_rows = 512;
  Seqs s = make_seqs({31, 90, 7}, c.n_vocab, 16);
  Batch b = next_batch(s, true);
  auto act = gpu::DeviceBuffer::allocate(size_t(b.n_tokens() * c.n_embd) * 2 * 2);
  ASSERT_TRUE(act.ok());
  std::vector<std::vector<float>> results;
  for (const std::vector<int64_t>& cuts :
       std::vector<std::vector<int64_t>>{{0, 4}, {0, 2, 4}, {0, 1, 3, 4}, {0, 1, 2, 3, 4}}) {
    std::vector<std::unique_ptr<GpuStageModel>> stages;
    for (size_t k = 0; k + 1 < cuts.size(); ++k) {
      auto m = GpuStageModel::random(c, seed, cuts[k], cuts[k + 1], o);
      ASSERT_TRUE(m.ok()) << m.status().message();
      ASSERT_TRUE((*m)->allocate_kv(48, kBlock).ok());
      stages.push_back(std::move(*m));
    }
    gpu::Bf16* bufs[2] = {act->as<gpu::Bf16>(), act->as<gpu::Bf16>() + b.n_tokens() * c.n_embd};
    for (size_t k = 0; k < stages.size(); ++k) {
      const gpu::Bf16* in = k == 0 ? nullptr : bufs[(k + 1) % 2];
      gpu::Bf16* out = k + 1 == stages.size() ? nullptr : bufs[k % 2];
      ASSERT_TRUE(stages[k]->forward(b, in, out).ok());
      ASSERT_TRUE(stages[k]->stream().synchronize().ok());
    }
    results.push_back(gpu_logits(*stages.back(), b.n_logit_rows()));
  }
  for (size_t i = 1; i < results.size(); ++i) {
    EXPECT_EQ(test::first_mismatch(results[i], results[0], 0, 0), -1) << "split " << i;
  }
}

// The default model's shape, 512 teacher-forced positions: top-1 agreement with the CPU. Random
// weights make near-ties common, so the positions where the CPU's best two logits are closer
// than the bf16 error bound are reported but not counted.
TEST_F(GpuStageModelTest, Smollm2ShapeTeacherForcedTop1) {
  const ModelConfig c = smollm2_shape();
  const uint64_t seed = test::rng()();
  auto weights = random_weights(c, seed);
  ASSERT_TRUE(weights.ok());
  auto cpu = StageModel::load(c, **weights, 0, c.n_layer);
  ASSERT_TRUE(cpu.ok());
  GpuStageOptions o;
  o.max_tokens = 512;
  o.max_seqs = 8;
  o.max_logit_rows = 512;
  auto g = GpuStageModel::random(c, seed, 0, c.n_layer, o);
  ASSERT_TRUE(g.ok()) << g.status().message();
  ASSERT_TRUE((*cpu)->allocate_kv(64, kBlock).ok());
  ASSERT_TRUE((*g)->allocate_kv(64, kBlock).ok());
  Seqs s = make_seqs({512}, c.n_vocab, 64);
  Batch b = next_batch(s, true);
  std::vector<float> ref;
  ASSERT_TRUE((*cpu)->forward(b, {}, ref).ok());
  ASSERT_TRUE((*g)->forward(b, nullptr, nullptr).ok());
  const std::vector<float> got = gpu_logits(**g, 512);
  const int64_t V = c.n_vocab;
  int64_t agree = 0, counted = 0, all_agree = 0;
  double max_err = 0;
  for (int64_t r = 0; r < 512; ++r) {
    const float* cr = &ref[size_t(r * V)];
    const float* gr = &got[size_t(r * V)];
    std::vector<float> sorted(cr, cr + V);
    std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<>());
    double err = 0;
    for (int64_t v = 0; v < V; ++v) err = std::max(err, double(std::fabs(gr[v] - cr[v])));
    max_err = std::max(max_err, err);
    const bool same = argmax(gr, V) == argmax(cr, V);
    all_agree += same;
    if (sorted[0] - sorted[1] > 2 * err) {
      ++counted;
      agree += same;
    }
  }
  std::printf(
      "smollm2 shape: top-1 agreement %lld/512 overall, %lld/%lld clear of the error bound; "
      "max |logit err| %.4f\n",
      (long long)all_agree, (long long)agree, (long long)counted, max_err);
  EXPECT_GE(counted, 256);
  EXPECT_EQ(agree, counted);
  EXPECT_GE(all_agree, 0.9 * 512);
}

// fp8 weights quantized on load, per channel: the GPU (GEMV for decode, per-token fp8
// activations and cuBLASLt for prefill) against the CPU computing in f32 on the dequantized
// weights. Prefill's activation quantization costs accuracy the bf16 comparison does not have,
// hence looser bounds; the measured ones are printed.
// fp8 against the CPU, which computes with the dequantized weights and f32 activations. With
// bf16 activations (W8A16) the GPU does the CPU's arithmetic and must match as closely as bf16
// does. With fp8 activations (W8A8, the default beyond 8 rows) each activation is rounded to 3
// mantissa bits first; the kernels are checked against exactly that in CudaFp8Linear, and here
// the model only has to stay near: measured on an H100, max error 0.08-0.18 of the largest
// logit and top-1 agreement 86-89 % on these random models (flat next-token distributions),
// KL 0.016 nats on the Qwen3-8B shape.
struct Fp8Tolerance {
  double max_err, min_agree;
};
// W8A16's top-1 bound is loose for the same reason as W8A8's: near-ties. One H100 run
// measured 156/164 (0.951) on qwen3 with a max error of 0.0136 of the largest logit.
constexpr Fp8Tolerance kW8A16{0.03, 0.9}, kW8A8{0.25, 0.8};
// The checkpoint fixtures (vocabulary 256, hidden 128, peakier logits): measured on an H100,
// W8A16 max error 0.020-0.034 and top-1 94-99 %, W8A8 0.02-0.30 and 82-99 %.
constexpr Fp8Tolerance kFixtureW8A16{0.05, 0.9}, kFixtureW8A8{0.4, 0.75};

TEST_F(GpuStageModelTest, Fp8EveryFamilyMatchesCpu) {
  for (const char* name : {"llama", "llama3", "qwen2", "qwen3"}) {
    for (bool act : {false, true}) {
      for (bool graphs : {false, true}) {
        SCOPED_TRACE(fmt::format("{} {} graphs {}", name, act ? "W8A8" : "W8A16", graphs));
        const ModelConfig c = family(name);
        std::uniform_int_distribution<int64_t> len(1, 150);
        const Compare r = run_against_cpu(c, test::rng()(), {len(test::rng()), 77, 1, 5}, 12,
                                          graphs, Quantization::kFp8, nullptr, act);
        std::printf("fp8 %s %s (graphs %d): max err %.4f, top-1 agreement %lld/%lld\n", name,
                    act ? "W8A8" : "W8A16", int(graphs), r.max_err, (long long)r.agree,
                    (long long)r.rows);
        const Fp8Tolerance tol = act ? kW8A8 : kW8A16;
        EXPECT_LT(r.max_err, tol.max_err) << r.worst;
        EXPECT_GE(double(r.agree) / double(r.rows), tol.min_agree) << r.agree << "/" << r.rows;
      }
    }
  }
}

// Random weights in the FP8 fixtures' shapes (head_dim 64 with hidden 128 and 4 heads: q is wider
// than the hidden state, which the families above never are), bf16 and fp8 with bf16 activations.
TEST_F(GpuStageModelTest, WideHeadShapesMatchCpu) {
  for (const char* name : {"tiny-llama-fp8-block", "tiny-qwen3-fp8-block"}) {
    auto c = config_from_hf_dir(test::fixture_dir() / "models" / name);
    ASSERT_TRUE(c.ok()) << c.status().message();
    c->quant = {};
    for (Quantization q : {Quantization::kNone, Quantization::kFp8}) {
      SCOPED_TRACE(fmt::format("{} {}", name, q == Quantization::kFp8 ? "fp8 W8A16" : "bf16"));
      std::uniform_int_distribution<int64_t> len(1, 100);
      const Compare r = run_against_cpu(*c, test::rng()(), {len(test::rng()), 40, 1, 9}, 8, false,
                                        q, nullptr, /*fp8_activations=*/false);
      EXPECT_LT(r.max_err, kFixtureW8A16.max_err) << r.worst;
      EXPECT_GE(double(r.agree) / double(r.rows), kFixtureW8A16.min_agree)
          << r.agree << "/" << r.rows;
    }
  }
}

// The FP8 checkpoints of the reference fixtures (block-scaled `weight_scale_inv` and
// compressed-tensors per-channel and per-tensor `weight_scale`), loaded by the GPU as stored
// (fp8 bytes and the checkpoint's scales) against the CPU reference on their dequantized values.
TEST_F(GpuStageModelTest, Fp8CheckpointsMatchCpu) {
  for (const char* name :
       {"tiny-llama-fp8-block", "tiny-llama-fp8-ct", "tiny-qwen3-fp8-block", "tiny-qwen3-fp8-ct"}) {
    SCOPED_TRACE(name);
    const std::filesystem::path dir = test::fixture_dir() / "models" / name;
    auto c = config_from_hf_dir(dir);
    ASSERT_TRUE(c.ok()) << c.status().message();
    ASSERT_TRUE(c->quant.quantized());
    auto w = open_safetensors(dir);
    ASSERT_TRUE(w.ok()) << w.status().message();
    const std::shared_ptr<const WeightSource> source(std::move(*w));
    std::uniform_int_distribution<int64_t> len(1, 100);
    for (bool act : {false, true}) {
      for (bool graphs : {false, true}) {
        SCOPED_TRACE(fmt::format("{} graphs {}", act ? "W8A8" : "W8A16", graphs));
        const Compare r = run_against_cpu(*c, 0, {len(test::rng()), 40, 1, 9}, 8, graphs,
                                          Quantization::kNone, source, act);
        std::printf("%s %s (graphs %d): max err %.4f, top-1 agreement %lld/%lld\n", name,
                    act ? "W8A8" : "W8A16", int(graphs), r.max_err, (long long)r.agree,
                    (long long)r.rows);
        const Fp8Tolerance tol = act ? kFixtureW8A8 : kFixtureW8A16;
        EXPECT_LT(r.max_err, tol.max_err) << r.worst;
        EXPECT_GE(double(r.agree) / double(std::max<int64_t>(r.rows, 1)), tol.min_agree);
      }
    }
  }
}

// Runs a prefill of `lens` and `steps` greedy decode steps (tokens from the first model's
// logits) on every model; returns each model's logits, step after step.
std::vector<std::vector<float>> run_models(std::span<GpuStageModel* const> models,
                                           const std::vector<int64_t>& lens, int steps) {
  const ModelConfig& c = models[0]->config();
  for (GpuStageModel* m : models)
    EXPECT_TRUE(m->allocate_kv(48 * int64_t(lens.size()), kBlock).ok());
  Seqs s = make_seqs(lens, c.n_vocab, 48);
  std::vector<std::vector<float>> out(models.size());
  for (int step = 0; step <= steps; ++step) {
    Batch b = next_batch(s, step == 0);
    std::vector<float> first;
    for (size_t i = 0; i < models.size(); ++i) {
      const Status st = models[i]->forward(b, nullptr, nullptr);
      EXPECT_TRUE(st.ok()) << st.message();
      std::vector<float> l = gpu_logits(*models[i], b.n_logit_rows());
      if (i == 0) first = l;
      out[i].insert(out[i].end(), l.begin(), l.end());
    }
    int64_t row = 0;
    for (size_t q = 0; q < s.tokens.size(); ++q) {
      row += step == 0 ? int64_t(s.tokens[q].size()) - s.cached[q] : 1;
      s.cached[q] = int32_t(s.tokens[q].size());
      s.tokens[q].push_back(argmax(&first[size_t((row - 1) * c.n_vocab)], c.n_vocab));
    }
  }
  return out;
}

// load() of quantize_on_load(random_weights) uploads the host quantizer's bytes; random() with
// quantization kFp8 quantizes the same values on the device: the same weights, so bitwise the
// same logits, eager and replayed. The fp8 weights take about half the bf16 ones' bytes.
TEST_F(GpuStageModelTest, Fp8LoadEqualsRandomBitwise) {
  for (const char* name : {"qwen2", "qwen3"}) {
    SCOPED_TRACE(name);
    const ModelConfig c = family(name);
    const uint64_t seed = test::rng()();
    auto weights = random_weights(c, seed);
    ASSERT_TRUE(weights.ok());
    const auto source = quantize_on_load(std::shared_ptr<const WeightSource>(std::move(*weights)),
                                         c, Quantization::kFp8);
    GpuStageOptions o;
    o.max_tokens = 512;
    o.max_seqs = 16;
    o.max_logit_rows = 512;
    o.quantization = Quantization::kFp8;
    auto loaded = GpuStageModel::load(c, *source, 0, c.n_layer, o);
    ASSERT_TRUE(loaded.ok()) << loaded.status().message();
    auto random = GpuStageModel::random(c, seed, 0, c.n_layer, o);
    ASSERT_TRUE(random.ok()) << random.status().message();
    o.quantization = Quantization::kNone;
    auto bf16 = GpuStageModel::random(c, seed, 0, c.n_layer, o);
    ASSERT_TRUE(bf16.ok()) << bf16.status().message();
    EXPECT_EQ((*loaded)->weight_bytes(), (*random)->weight_bytes());
    EXPECT_LT((*random)->weight_bytes(), (*bf16)->weight_bytes());
    std::printf("%s: weights %lld bytes fp8, %lld bf16\n", name,
                (long long)(*random)->weight_bytes(), (long long)(*bf16)->weight_bytes());
    GpuStageModel* models[] = {loaded->get(), random->get()};
    const auto logits = run_models(models, {31, 90, 7}, 4);
    EXPECT_EQ(test::first_mismatch(logits[1], logits[0], 0, 0), -1);
  }
}

// A source whose k_proj weights are not quantized while q and v are: the fused q|k|v slot
// cannot hold both formats.
class PartlyQuantized final : public WeightSource {
 public:
  PartlyQuantized(std::shared_ptr<const WeightSource> plain,
                  std::shared_ptr<const WeightSource> quantized)
      : plain_(std::move(plain)), quantized_(std::move(quantized)) {}
  std::vector<std::string> names() const override { return plain_->names(); }
  const TensorInfo* find(std::string_view name) const override { return pick(name).find(name); }
  Status read_f32(std::string_view name, std::span<float> out) const override {
    return pick(name).read_f32(name, out);
  }
  using WeightSource::read_f32;
  Result<kernels::HostWeight> read_weight(std::string_view name) const override {
    return pick(name).read_weight(name);
  }
  std::string describe() const override { return "partly quantized"; }

 private:
  const WeightSource& pick(std::string_view name) const {
    return name.find("k_proj") != std::string_view::npos ? *plain_ : *quantized_;
  }
  std::shared_ptr<const WeightSource> plain_, quantized_;
};

TEST_F(GpuStageModelTest, Fp8FusedPartsMustAgree) {
  const ModelConfig c = family("qwen3", 1);
  auto weights = random_weights(c, 7);
  ASSERT_TRUE(weights.ok());
  const std::shared_ptr<const WeightSource> plain(std::move(*weights));
  const PartlyQuantized source(plain, quantize_on_load(plain, c, Quantization::kFp8));
  GpuStageOptions o;
  o.max_tokens = 64;
  o.max_seqs = 4;
  auto m = GpuStageModel::load(c, source, 0, c.n_layer, o);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kInvalidArgument) << m.status().message();
  std::printf("refused: %s\n", m.status().message().c_str());
}

// Device penalties against cpu::apply_penalties on random rows and ids.
TEST_F(GpuStageModelTest, PenaltiesMatchCpu) {
  const int64_t V = 1000, R = 5;
  std::vector<float> logits = test::random_floats(size_t(R * V), -5, 5);
  std::vector<float> want = logits;
  std::vector<gpu::PenaltyEntry> entries;
  std::vector<gpu::PenaltyRow> rows;
  std::uniform_int_distribution<int32_t> id(0, int32_t(V) - 1);
  for (int64_t r = 0; r < R; ++r) {
    std::vector<int32_t> prompt(20), output(30);
    for (auto& x : prompt) x = id(test::rng());
    for (auto& x : output) x = id(test::rng()) % 50;  // repeats
    const gpu::PenaltyRow pr{1.0f + 0.3f * float(r), 0.1f * float(r), 0.05f * float(r % 3)};
    rows.push_back(pr);
    kernels::cpu::apply_penalties({.logits = &want[size_t(r * V)],
                                   .n_vocab = V,
                                   .prompt_ids = prompt.data(),
                                   .n_prompt = int64_t(prompt.size()),
                                   .output_ids = output.data(),
                                   .n_output = int64_t(output.size()),
                                   .repetition = pr.repetition,
                                   .presence = pr.presence,
                                   .frequency = pr.frequency});
    std::map<int32_t, gpu::PenaltyEntry> m;
    for (int32_t x : prompt) m[x] = {int32_t(r), x, 1, 0};
    for (int32_t x : output) {
      auto& e = m[x];
      e.row = int32_t(r);
      e.id = x;
      e.seen = 1;
      ++e.output_count;
    }
    for (auto& [k, e] : m) entries.push_back(e);
  }
  auto stream = gpu::Stream::create();
  ASSERT_TRUE(stream.ok());
  test::DeviceBuffer<float> d_logits(logits);
  test::DeviceBuffer<gpu::PenaltyEntry> d_entries(entries);
  test::DeviceBuffer<gpu::PenaltyRow> d_rows(rows);
  ASSERT_TRUE(gpu::apply_penalties(d_logits.get(), V, V, d_entries.get(), int64_t(entries.size()),
                                   d_rows.get(), *stream)
                  .ok());
  ASSERT_TRUE(stream->synchronize().ok());
  EXPECT_EQ(test::first_mismatch(d_logits.download(), want, 0, 0), -1);
}

// Device logit bias and allowed-token masks against cpu::apply_logit_constraints: random rows,
// some masked, random biases (distinct ids per row).
TEST_F(GpuStageModelTest, LogitConstraintsMatchCpu) {
  const int64_t V = 1000 + test::random_int(0, 63), R = 6, W = (V + 31) / 32;
  std::vector<float> logits = test::random_floats(size_t(R * V), -5, 5);
  std::vector<float> want = logits;
  std::vector<gpu::LogitBias> bias;
  std::vector<uint32_t> masks;
  std::vector<int32_t> mask_rows;
  for (int64_t r = 0; r < R; ++r) {
    std::vector<int32_t> ids(size_t(test::random_int(0, 40)));
    for (auto& x : ids) x = int32_t(test::random_int(0, V - 1));
    std::sort(ids.begin(), ids.end());
    ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
    std::vector<float> values = test::random_floats(ids.size(), -100, 100);
    for (size_t i = 0; i < ids.size(); ++i) bias.push_back({int32_t(r), ids[i], values[i]});
    std::vector<uint32_t> mask;
    if (r % 2 == 0) {
      for (int64_t w = 0; w < W; ++w) mask.push_back(uint32_t(test::rng()()));
      masks.insert(masks.end(), mask.begin(), mask.end());
      mask_rows.push_back(int32_t(r));
    }
    kernels::cpu::apply_logit_constraints(&want[size_t(r * V)], V,
                                          {.bias_ids = ids.data(),
                                           .bias_values = values.data(),
                                           .n_bias = int64_t(ids.size()),
                                           .allowed = mask.empty() ? nullptr : mask.data()});
  }
  auto stream = gpu::Stream::create();
  ASSERT_TRUE(stream.ok());
  test::DeviceBuffer<float> d_logits(logits);
  test::DeviceBuffer<gpu::LogitBias> d_bias(bias);
  test::DeviceBuffer<uint32_t> d_masks(masks);
  test::DeviceBuffer<int32_t> d_rows(mask_rows);
  ASSERT_TRUE(gpu::apply_logit_constraints(d_logits.get(), V, V, d_bias.get(), int64_t(bias.size()),
                                           d_masks.get(), d_rows.get(), int64_t(mask_rows.size()),
                                           *stream)
                  .ok());
  ASSERT_TRUE(stream->synchronize().ok());
  EXPECT_EQ(test::first_mismatch(d_logits.download(), want, 0, 0), -1);
}

}  // namespace
}  // namespace pp::model
