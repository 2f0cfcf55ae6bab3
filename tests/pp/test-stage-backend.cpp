// The stage backend seam (stage-backend.h) and the model source resolver (model-resolver.h),
// driven directly, without a coordinator: the CPU backend's tokens for a plan equal the CPU
// StageModel's greedy tokens for the same batch, whole or split over two backends linked by the
// CPU activation transport; a backend refuses what it cannot run with a clear error; and the
// resolver opens each kind of source and refuses stage ranges that do not fit.
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <vector>

#include <gtest/gtest.h>

#include "pp/kernels/device.h"
#include "pp/model/quantization.h"
#include "pp/model/random-weights.h"
#include "pp/model/stage-model.h"
#include "pp/partition/model-resolver.h"
#include "pp/pipeline/stage-backend.h"
#include "test-util.h"

namespace pp::pipeline {
namespace {

namespace fs = std::filesystem;

// A tiny Llama-family config with random sizes, written where the resolver reads it.
fs::path write_tiny_config(const fs::path& dir, std::mt19937_64& g) {
  fs::create_directories(dir);
  const int head_dim = 16, n_head_kv = 2;
  const int n_head = n_head_kv * std::uniform_int_distribution<int>(1, 3)(g);
  const int n_layer = std::uniform_int_distribution<int>(2, 4)(g);
  std::ofstream f(dir / "config.json");
  f << "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", "
    << "\"hidden_size\": " << n_head * head_dim << ", \"intermediate_size\": 96, "
    << "\"num_hidden_layers\": " << n_layer << ", \"num_attention_heads\": " << n_head
    << ", \"num_key_value_heads\": " << n_head_kv << ", \"vocab_size\": 320, "
    << "\"max_position_embeddings\": 256, \"rms_norm_eps\": 1e-5, \"rope_theta\": 10000, "
    << "\"tie_word_embeddings\": " << (g() & 1 ? "true" : "false") << "}";
  return dir / "config.json";
}

struct Collected {
  std::mutex mu;
  std::vector<transport::Tokens> tokens;
  std::vector<transport::StageTiming> timings;
};

StageEnv env_for(Collected* c, transport::ActivationReceiver* receiver = nullptr) {
  StageEnv env;
  env.post = [c](transport::Message m) {
    std::lock_guard lock(c->mu);
    if (auto* t = std::get_if<transport::Tokens>(&m)) c->tokens.push_back(*t);
    if (auto* t = std::get_if<transport::StageTiming>(&m)) c->timings.push_back(*t);
  };
  env.check = [](uint64_t) { return ok_status(); };
  env.receiver = receiver;
  return env;
}

// Random prompts as one prefill batch: each sequence its own blocks, every one sampled.
struct Prefill {
  std::vector<std::vector<int32_t>> prompts, tables;
  transport::Plan plan;
  model::Batch batch;
  std::vector<SampleRow> rows;
};

Prefill make_prefill(int64_t n_vocab, int32_t block_size, std::mt19937_64& g) {
  Prefill p;
  const int n_seq = std::uniform_int_distribution<int>(1, 4)(g);
  int32_t next_block = 0;
  p.plan.seq = 0;
  for (int s = 0; s < n_seq; ++s) {
    std::vector<int32_t> prompt(size_t(std::uniform_int_distribution<int>(1, 40)(g)));
    for (int32_t& t : prompt)
      t = std::uniform_int_distribution<int32_t>(0, int32_t(n_vocab) - 1)(g);
    std::vector<int32_t> table;
    for (size_t i = 0; i < prompt.size(); i += size_t(block_size)) table.push_back(next_block++);
    p.prompts.push_back(prompt);
    p.tables.push_back(table);
  }
  for (int s = 0; s < n_seq; ++s) {
    p.batch.add_sequence(p.prompts[size_t(s)], 0, p.tables[size_t(s)], true);
    SampleRow row;
    row.request_id = uint64_t(s + 1);
    row.sampling.temperature = 0.0f;  // greedy
    p.rows.push_back(row);
  }
  return p;
}

std::vector<int32_t> greedy(const std::vector<float>& logits, int64_t n_vocab) {
  std::vector<int32_t> out;
  for (size_t r = 0; r * size_t(n_vocab) < logits.size(); ++r) {
    const float* row = logits.data() + r * size_t(n_vocab);
    out.push_back(int32_t(std::max_element(row, row + n_vocab) - row));
  }
  return out;
}

StageSpec spec_for(const partition::ResolvedModel& m, int32_t k, int32_t n,
                   partition::LayerRange layers) {
  StageSpec spec;
  spec.stage = k;
  spec.n_stages = n;
  spec.devices = {"cpu"};
  auto w = m.open_stage(k, n, layers);
  EXPECT_TRUE(w.ok()) << w.status().message();
  if (w.ok()) spec.weights = *w;
  spec.kv_memory = 64 << 20;
  return spec;
}

TEST(StageBackend, CpuTokensEqualTheStageModelWholeAndSplit) {
  std::mt19937_64& g = test::rng();
  test::TempDir tmp;
  const uint64_t seed = g();
  auto m =
      partition::resolve_model(write_tiny_config(tmp.path() / "m", g), {.random_weights = seed});
  ASSERT_TRUE(m.ok()) << m.status().message();
  const model::ModelConfig& c = m->config();
  EXPECT_EQ(m->kind(), partition::SourceKind::kRandomWeights);
  const int32_t bs = 16;
  Prefill p = make_prefill(c.n_vocab, bs, g);

  // The reference: the CPU StageModel over the same random weights.
  auto w = model::random_weights(c, seed);
  ASSERT_TRUE(w.ok());
  auto ref = model::StageModel::load(c, **w, 0, c.n_layer);
  ASSERT_TRUE(ref.ok()) << ref.status().message();
  ASSERT_TRUE((*ref)->allocate_kv(64, bs).ok());
  std::vector<float> logits;
  ASSERT_TRUE((*ref)->forward(p.batch, {}, logits).ok());
  const std::vector<int32_t> want = greedy(logits, c.n_vocab);

  auto tokens_of = [](const transport::Tokens& t) {
    std::vector<int32_t> out;
    for (const transport::SampledToken& s : t.tokens) out.push_back(s.token);
    return out;
  };
  {  // One stage.
    Collected got;
    auto b = make_stage_backend(spec_for(*m, 0, 1, {0, c.n_layer}), env_for(&got));
    ASSERT_TRUE(b.ok()) << b.status().message();
    EXPECT_GT((*b)->kv_bytes_per_block(bs), 0);
    EXPECT_EQ((*b)->kv_blocks(), 0);
    ASSERT_TRUE((*b)->allocate_kv(64, bs).ok());
    EXPECT_EQ((*b)->kv_blocks(), 64);
    ASSERT_TRUE((*b)->run(p.plan, p.batch, p.rows, 0).ok());
    EXPECT_TRUE((*b)->drain(std::chrono::milliseconds(1000)));
    ASSERT_EQ(got.tokens.size(), 1u);
    EXPECT_EQ(tokens_of(got.tokens[0]), want);
    ASSERT_EQ(got.timings.size(), 1u);
    EXPECT_EQ(got.timings[0].n_tokens, p.batch.n_tokens());
  }
  {  // Two stages, the first one's activations over the CPU transport to the second.
    const int64_t cut = std::uniform_int_distribution<int64_t>(1, c.n_layer - 1)(g);
    auto receiver = transport::ActivationReceiver::bind("ipc://" + (tmp.path() / "s1").string());
    ASSERT_TRUE(receiver.ok()) << receiver.status().message();
    Collected got0, got1;
    StageSpec s0 = spec_for(*m, 0, 2, {0, cut});
    s0.links.next_data_endpoint = receiver->endpoint();
    auto b0 = make_stage_backend(s0, env_for(&got0));
    auto b1 = make_stage_backend(spec_for(*m, 1, 2, {cut, c.n_layer}), env_for(&got1, &*receiver));
    ASSERT_TRUE(b0.ok()) << b0.status().message();
    ASSERT_TRUE(b1.ok()) << b1.status().message();
    ASSERT_TRUE((*b0)->allocate_kv(64, bs).ok());
    ASSERT_TRUE((*b1)->allocate_kv(64, bs).ok());
    model::Batch later = p.batch;
    later.token_ids.clear();  // a later stage's batch carries no ids
    ASSERT_TRUE((*b0)->run(p.plan, p.batch, {}, 0).ok());
    ASSERT_TRUE((*b1)->run(p.plan, later, p.rows, 0).ok());
    EXPECT_TRUE(got0.tokens.empty());
    ASSERT_EQ(got1.tokens.size(), 1u);
    EXPECT_EQ(tokens_of(got1.tokens[0]), want);
  }
}

TEST(StageBackend, RefusesWhatItCannotRun) {
  std::mt19937_64& g = test::rng();
  test::TempDir tmp;
  auto m = partition::resolve_model(write_tiny_config(tmp.path() / "m", g), {.random_weights = 1});
  ASSERT_TRUE(m.ok()) << m.status().message();
  Collected got;
  StageSpec spec = spec_for(*m, 0, 1, {0, m->config().n_layer});
  spec.devices = {"cpu", "cpu"};  // a tensor-parallel rank without its group's channel
  auto two = make_stage_backend(spec, env_for(&got));
  ASSERT_FALSE(two.ok());
  EXPECT_EQ(two.status().code(), StatusCode::kInvalidArgument) << two.status().message();
  EXPECT_NE(two.status().message().find("collective"), std::string::npos) << two.status().message();
  spec.devices = {"cpu", "cuda:0"};
  auto mixed = make_stage_backend(spec, env_for(&got));
  ASSERT_FALSE(mixed.ok());
  EXPECT_NE(mixed.status().message().find("mixes CPU and GPU"), std::string::npos)
      << mixed.status().message();
  spec.devices = {"tpu:0"};
  auto bad = make_stage_backend(spec, env_for(&got));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("tpu:0"), std::string::npos) << bad.status().message();
  spec.devices = {"cpu"};
  spec.rank = 1;
  EXPECT_FALSE(make_stage_backend(spec, env_for(&got)).ok());
  if (kernels::cuda_devices().empty()) {
    spec.rank = 0;
    spec.devices = {"cuda:0"};
    auto gpu = make_stage_backend(spec, env_for(&got));
    ASSERT_FALSE(gpu.ok());
    EXPECT_NE(gpu.status().message().find("cuda:0"), std::string::npos) << gpu.status().message();
  }
  EXPECT_EQ(*parse_device("cpu"), -1);
  EXPECT_EQ(*parse_device("cuda"), 0);
  EXPECT_EQ(*parse_device("cuda:3"), 3);
  EXPECT_FALSE(parse_device("cuda:").ok());
  EXPECT_FALSE(parse_device("cuda:x").ok());
}

TEST(ModelResolver, EachKindOfSourceAndStageRanges) {
  std::mt19937_64& g = test::rng();
  test::TempDir tmp;
  auto missing = partition::resolve_model(tmp.path() / "nothing-here");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(partition::resolve_model("").ok());

  // A config alone needs random weights: without them it is not a model.
  const fs::path cfg = write_tiny_config(tmp.path() / "cfg", g);
  EXPECT_FALSE(partition::resolve_model(cfg.parent_path()).ok());
  auto r = partition::resolve_model(cfg, {.random_weights = 5});
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_TRUE(r->fixed_layers().empty());
  EXPECT_EQ(r->partition(), nullptr);
  EXPECT_FALSE(r->has_tokenizer());
  EXPECT_FALSE(r->load_tokenizer().ok());
  const int64_t L = r->config().n_layer;
  auto whole = r->open_stage(0, 1, {0, L});
  ASSERT_TRUE(whole.ok()) << whole.status().message();
  EXPECT_EQ(whole->weights, nullptr);  // random weights: each backend makes them
  EXPECT_EQ(whole->random_seed, 5u);
  // A stage's range must fit its place in the pipeline.
  EXPECT_FALSE(r->open_stage(1, 2, {0, L}).ok());      // stage 1 cannot start at layer 0
  EXPECT_FALSE(r->open_stage(0, 2, {0, L}).ok());      // stage 0 of 2 cannot hold the head
  EXPECT_FALSE(r->open_stage(0, 1, {0, L + 1}).ok());  // past the model
  EXPECT_FALSE(r->open_stage(2, 2, {0, L}).ok());      // no stage 2 of 2

  // The default model's GGUF: its own tokenizer and chat template.
  const fs::path gguf = test::default_model_path();
  if (fs::exists(gguf)) {
    auto d = partition::resolve_model(gguf);
    ASSERT_TRUE(d.ok()) << d.status().message();
    EXPECT_EQ(d->kind(), partition::SourceKind::kGguf);
    EXPECT_TRUE(d->has_tokenizer());
    EXPECT_TRUE(d->load_tokenizer().ok());
    EXPECT_FALSE(d->chat_template().empty());
    auto s = d->open_stage(1, 2, {13, d->config().n_layer});
    ASSERT_TRUE(s.ok()) << s.status().message();
    EXPECT_NE(s->weights, nullptr);
  }
}

// --quantization fp8 reaches every stage the same way: a source's layer linears read as fp8 per
// channel (and only those), the planner sizes fp8, and a CPU stage over random weights computes
// exactly the quantized model (StageModel over quantize_on_load(random_weights)) whole and split.
TEST(ModelResolver, QuantizationOnLoadReachesEveryStage) {
  std::mt19937_64& g = test::rng();
  test::TempDir tmp;
  const uint64_t seed = g();
  const fs::path cfg = write_tiny_config(tmp.path() / "m", g);
  auto m = partition::resolve_model(
      cfg, {.random_weights = seed, .quantization = model::Quantization::kFp8});
  ASSERT_TRUE(m.ok()) << m.status().message();
  EXPECT_EQ(m->quantization(), model::Quantization::kFp8);
  EXPECT_EQ(m->plan_dtype(), model::DType::kF8E4M3);
  const model::ModelConfig& c = m->config();
  auto whole = m->open_stage(0, 1, {0, c.n_layer});
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(whole->quantization, model::Quantization::kFp8);

  // The quantized model on the CPU, and the same without quantization: they differ.
  auto rw = model::random_weights(c, seed);
  ASSERT_TRUE(rw.ok());
  std::shared_ptr<const model::WeightSource> plain = std::move(*rw);
  auto q = model::quantize_on_load(plain, c, model::Quantization::kFp8);
  const std::string q_name = "model.layers.0.self_attn.q_proj.weight";
  ASSERT_NE(q->find(q_name), nullptr);
  EXPECT_EQ(q->find(q_name)->dtype, model::DType::kF8E4M3);
  EXPECT_EQ(q->find(q_name)->scale_kind, kernels::ScaleKind::kPerChannel);
  EXPECT_EQ(q->find("model.embed_tokens.weight")->dtype,
            plain->find("model.embed_tokens.weight")->dtype);
  const int32_t bs = 16;
  Prefill p = make_prefill(c.n_vocab, bs, g);
  auto logits_of = [&](const model::WeightSource& w) {
    auto sm = model::StageModel::load(c, w, 0, c.n_layer);
    EXPECT_TRUE(sm.ok()) << sm.status().message();
    EXPECT_TRUE((*sm)->allocate_kv(64, bs).ok());
    std::vector<float> out;
    EXPECT_TRUE((*sm)->forward(p.batch, {}, out).ok());
    return out;
  };
  const std::vector<float> ref_q = logits_of(*q), ref_plain = logits_of(*plain);
  EXPECT_NE(ref_q, ref_plain);
  const std::vector<int32_t> want = greedy(ref_q, c.n_vocab);

  Collected got;
  auto b = make_stage_backend(spec_for(*m, 0, 1, {0, c.n_layer}), env_for(&got));
  ASSERT_TRUE(b.ok()) << b.status().message();
  ASSERT_TRUE((*b)->allocate_kv(64, bs).ok());
  ASSERT_TRUE((*b)->run(p.plan, p.batch, p.rows, 0).ok());
  EXPECT_TRUE((*b)->drain(std::chrono::milliseconds(1000)));
  ASSERT_EQ(got.tokens.size(), 1u);
  std::vector<int32_t> tokens;
  for (const transport::SampledToken& t : got.tokens[0].tokens) tokens.push_back(t.token);
  EXPECT_EQ(tokens, want);

  // A model that is not random: the resolver wraps the stage's weights.
  const fs::path gguf = test::default_model_path();
  if (fs::exists(gguf)) {
    auto d = partition::resolve_model(
        gguf, {.random_weights = std::nullopt, .quantization = model::Quantization::kFp8});
    ASSERT_TRUE(d.ok()) << d.status().message();
    auto s = d->open_stage(1, 2, {13, d->config().n_layer});
    ASSERT_TRUE(s.ok()) << s.status().message();
    const model::TensorInfo* t = s->weights->find("model.layers.20.mlp.down_proj.weight");
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->dtype, model::DType::kF8E4M3);
    EXPECT_NE(s->weights->find("model.norm.weight")->dtype, model::DType::kF8E4M3);
  }
  EXPECT_FALSE(model::parse_quantization("int4").ok());
}

}  // namespace
}  // namespace pp::pipeline
