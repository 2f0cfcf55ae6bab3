// StageModel: logits against a plain double-precision decoder for every family (random
// weights), bitwise equality of a model split at every layer with the whole model, of chunked
// with one-shot prefill and of a sequence alone with the same sequence batched among others;
// loading only a stage's own tensors; and clear errors for bad inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "pp/model/model-source.h"
#include "pp/model/stage-model.h"
#include "test-model-util.h"
#include "test-util.h"

namespace pp::test {
namespace {

using model::Arch;
using model::Batch;
using model::ModelConfig;
using model::StageModel;

constexpr int64_t kBlockSize = 4;

std::vector<int32_t> random_ids(int64_t n, int64_t n_vocab) {
  std::uniform_int_distribution<int32_t> d(0, int32_t(n_vocab) - 1);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int32_t& x : v) x = d(rng());
  return v;
}

std::unique_ptr<StageModel> load_stage(const ModelConfig& c, const model::WeightSource& w,
                                       int64_t begin, int64_t end, int64_t n_blocks = 64) {
  auto m = StageModel::load(c, w, begin, end);
  EXPECT_TRUE(m.ok()) << m.status().message();
  if (!m.ok()) return nullptr;
  EXPECT_TRUE((*m)->allocate_kv(n_blocks, kBlockSize).ok());
  return std::move(m).value();
}

// Runs one batch through a chain of stages covering every layer; returns the logits.
std::vector<float> run_chain(const std::vector<StageModel*>& stages, const Batch& batch) {
  std::vector<float> in, out;
  for (StageModel* s : stages) {
    Status st = s->forward(batch, in, out);
    EXPECT_TRUE(st.ok()) << st.message();
    std::swap(in, out);
  }
  return in;
}

// Logits at every position of `ids`, run as one sequence in chunks of `chunk` tokens, with the
// blocks of `table`.
std::vector<float> run_prompt(const std::vector<StageModel*>& stages,
                              const std::vector<int32_t>& ids, int64_t chunk,
                              const std::vector<int32_t>& table) {
  std::vector<float> all;
  for (int64_t b = 0; b < int64_t(ids.size()); b += chunk) {
    const int64_t len = std::min<int64_t>(chunk, int64_t(ids.size()) - b);
    Batch batch;
    batch.add_sequence(std::span(ids).subspan(size_t(b), size_t(len)), int32_t(b), table, false);
    batch.logit_rows.resize(size_t(len));
    std::iota(batch.logit_rows.begin(), batch.logit_rows.end(), 0);
    std::vector<float> l = run_chain(stages, batch);
    all.insert(all.end(), l.begin(), l.end());
  }
  return all;
}

std::vector<int32_t> iota_table(int64_t n, int32_t first = 0) {
  std::vector<int32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), first);
  return t;
}

bool bitwise_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

class StageModelFamily : public ::testing::TestWithParam<Arch> {};

TEST_P(StageModelFamily, MatchesPlainDecoder) {
  const ModelConfig c = tiny_config(GetParam());
  ASSERT_TRUE(c.validate().ok());
  const MemoryWeights w = random_weights(c);
  auto m = load_stage(c, w, 0, c.n_layer);
  ASSERT_TRUE(m);
  // Long enough that positions pass llama3's original context (32) and several blocks.
  const std::vector<int32_t> ids = random_ids(41, c.n_vocab);
  const std::vector<float> got = run_prompt({m.get()}, ids, 64, iota_table(16));
  const std::vector<double> ref = reference_logits(c, w, ids);
  ASSERT_EQ(got.size(), ref.size());
  double max_err = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(got[i] - ref[i]);
    max_err = std::max(max_err, err);
    ASSERT_LE(err, 1e-4 + 1e-4 * std::abs(ref[i]))
        << "at " << i << " of " << model::arch_name(c.arch);
  }
  RecordProperty("max_abs_error", std::to_string(max_err));
}

TEST_P(StageModelFamily, SplitAtEveryLayerIsBitwiseIdentical) {
  ModelConfig c = tiny_config(GetParam());
  c.n_layer = 4;
  const MemoryWeights w = random_weights(c);
  const std::vector<int32_t> ids = random_ids(13, c.n_vocab);
  const std::vector<int32_t> table = iota_table(8, 3);
  auto whole = load_stage(c, w, 0, c.n_layer);
  const std::vector<float> ref = run_prompt({whole.get()}, ids, 5, table);
  for (int64_t k = 1; k < c.n_layer; ++k) {
    auto a = load_stage(c, w, 0, k);
    auto b = load_stage(c, w, k, c.n_layer);
    EXPECT_FALSE(a->has_lm_head());
    EXPECT_FALSE(b->has_embedding());
    EXPECT_TRUE(bitwise_equal(run_prompt({a.get(), b.get()}, ids, 5, table), ref))
        << "split at " << k;
  }
  // Every layer its own stage.
  std::vector<std::unique_ptr<StageModel>> owned;
  std::vector<StageModel*> chain;
  for (int64_t k = 0; k < c.n_layer; ++k) {
    owned.push_back(load_stage(c, w, k, k + 1));
    chain.push_back(owned.back().get());
  }
  EXPECT_TRUE(bitwise_equal(run_prompt(chain, ids, 5, table), ref));
}

TEST_P(StageModelFamily, ChunkedPrefillIsBitwiseIdentical) {
  const ModelConfig c = tiny_config(GetParam());
  const MemoryWeights w = random_weights(c);
  auto m = load_stage(c, w, 0, c.n_layer);
  const std::vector<int32_t> ids = random_ids(23, c.n_vocab);
  const std::vector<float> ref = run_prompt({m.get()}, ids, 23, iota_table(6));
  for (int64_t chunk : {1, 2, 3, 4, 7, 16}) {
    // Other blocks each time: where the KV lives must not matter either.
    std::vector<int32_t> table = iota_table(6, int32_t(chunk));
    std::shuffle(table.begin(), table.end(), rng());
    EXPECT_TRUE(bitwise_equal(run_prompt({m.get()}, ids, chunk, table), ref)) << "chunk " << chunk;
  }
}

TEST_P(StageModelFamily, BatchInvariance) {
  const ModelConfig c = tiny_config(GetParam());
  const MemoryWeights w = random_weights(c);
  auto m = load_stage(c, w, 0, c.n_layer, 128);
  // The target: a 9-token prompt prefilled in one piece, then one decode token.
  const std::vector<int32_t> ids = random_ids(10, c.n_vocab);
  const std::vector<int32_t> table = {7, 3, 11};
  auto target_logits = [&](const std::vector<std::vector<int32_t>>& others, bool target_first) {
    // The others prefill their prompts in the same batch, then decode one token with the
    // target's decode token.
    std::vector<std::vector<int32_t>> tables;
    for (size_t o = 0; o < others.size(); ++o) tables.push_back(iota_table(8, int32_t(20 + 8 * o)));
    Batch b;
    auto add_target = [&] { b.add_sequence(std::span(ids).first(9), 0, table, true); };
    if (target_first) add_target();
    for (size_t o = 0; o < others.size(); ++o) {
      b.add_sequence(others[o], 0, tables[o], o % 2 == 0);
    }
    if (!target_first) add_target();
    std::vector<float> logits = run_chain({m.get()}, b);
    const int64_t V = c.n_vocab;
    // The target's row among the logit rows.
    const int32_t target_row = target_first ? 8 : b.seq_start[b.n_seq() - 1] + 8;
    const auto at =
        std::find(b.logit_rows.begin(), b.logit_rows.end(), target_row) - b.logit_rows.begin();
    std::vector<float> prefill(logits.begin() + at * V, logits.begin() + (at + 1) * V);
    // Decode step: target's 10th token with the others' next tokens.
    Batch d;
    for (size_t o = 0; o < others.size(); ++o) {
      const int32_t pos = int32_t(others[o].size());
      d.add_sequence(std::span(others[o]).first(1), pos, tables[o], true);
    }
    d.add_sequence(std::span(ids).subspan(9, 1), 9, table, true);
    std::vector<float> dl = run_chain({m.get()}, d);
    prefill.insert(prefill.end(), dl.end() - V, dl.end());
    return prefill;
  };
  const std::vector<float> alone = target_logits({}, true);
  for (int trial = 0; trial < 3; ++trial) {
    std::vector<std::vector<int32_t>> others;
    for (int o = 0; o < 1 + trial * 3; ++o)
      others.push_back(random_ids(1 + int64_t(rng()() % 12), c.n_vocab));
    EXPECT_TRUE(bitwise_equal(target_logits(others, trial % 2 == 0), alone)) << "trial " << trial;
  }
}

INSTANTIATE_TEST_SUITE_P(Families, StageModelFamily,
                         ::testing::Values(Arch::kLlama, Arch::kMistral, Arch::kQwen2, Arch::kQwen3,
                                           Arch::kQwen3Moe, Arch::kMixtral),
                         [](const auto& info) {
                           return std::string(model::arch_name(info.param));
                         });

// The fixture models (Hugging Face folders) and the default model, split at every layer.
std::vector<std::filesystem::path> split_models() {
  std::vector<std::filesystem::path> v;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(fixture_dir() / "models", ec)) {
    if (std::filesystem::exists(e.path() / "config.json")) v.push_back(e.path());
  }
  std::sort(v.begin(), v.end());
  if (std::filesystem::exists(default_model_path())) v.push_back(default_model_path());
  return v;
}

TEST(StageModelSplit, RealModelsSplitAtEveryLayerAreBitwiseIdentical) {
  const auto models = split_models();
  if (models.empty()) GTEST_SKIP() << "no fixture models";
  for (const auto& path : models) {
    SCOPED_TRACE(path.string());
    auto src = model::open_model(path);
    ASSERT_TRUE(src.ok()) << src.status().message();
    const ModelConfig& c = src->config;
    const MemoryWeights weights = cache_weights(*src->weights);
    // Two chunks: the second attends to KV the first wrote, on every stage.
    const std::vector<int32_t> ids = random_ids(5, c.n_vocab);
    const std::vector<int32_t> table = iota_table(2);
    auto whole = load_stage(c, weights, 0, c.n_layer, 8);
    const std::vector<float> ref = run_prompt({whole.get()}, ids, 3, table);
    whole.reset();
    // Every split of the fixture models; of a real-size model (each load repacks its weights,
    // seconds apiece) the first, the last and two drawn afresh.
    std::vector<int64_t> splits;
    for (int64_t k = 1; k < c.n_layer; ++k) splits.push_back(k);
    if (c.n_layer > 8) {
      std::shuffle(splits.begin() + 1, splits.end() - 1, rng());
      splits = {splits.front(), splits.back(), splits[1], splits[2]};
    }
    for (int64_t k : splits) {
      auto a = load_stage(c, weights, 0, k, 8);
      auto b = load_stage(c, weights, k, c.n_layer, 8);
      ASSERT_TRUE(a && b);
      EXPECT_TRUE(bitwise_equal(run_prompt({a.get(), b.get()}, ids, 3, table), ref))
          << "split at " << k;
    }
  }
}

TEST(StageModelLoad, ReadsOnlyItsOwnTensors) {
  ModelConfig c = tiny_config(Arch::kQwen2);  // tied embeddings
  c.n_layer = 4;
  MemoryWeights full = random_weights(c);
  {
    RecordingWeights rec(full);
    auto m = StageModel::load(c, rec, 1, 3);
    ASSERT_TRUE(m.ok()) << m.status().message();
    for (const std::string& n : rec.read()) {
      EXPECT_TRUE(n.starts_with("model.layers.1.") || n.starts_with("model.layers.2.")) << n;
    }
    EXPECT_EQ(rec.read().size(), 2u * 12u);  // 12 tensors per Qwen2 layer
  }
  {
    // A shard with only the last stage's tensors (the tied lm_head is embed_tokens).
    MemoryWeights shard = random_weights(c);
    for (const std::string& n : shard.names()) {
      if (n.starts_with("model.layers.0.") || n.starts_with("model.layers.1.") ||
          n.starts_with("model.layers.2.")) {
        shard.remove(n);
      }
    }
    RecordingWeights rec(shard);
    auto m = StageModel::load(c, rec, 3, 4);
    ASSERT_TRUE(m.ok()) << m.status().message();
    EXPECT_TRUE(rec.read().count("model.embed_tokens.weight"));
    EXPECT_TRUE(rec.read().count("model.norm.weight"));
  }
}

TEST(StageModelLoad, ClearErrors) {
  const ModelConfig c = tiny_config(Arch::kLlama);
  MemoryWeights w = random_weights(c);
  auto bad_range = StageModel::load(c, w, 2, 2);
  ASSERT_FALSE(bad_range.ok());
  EXPECT_EQ(bad_range.status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(StageModel::load(c, w, 0, c.n_layer + 1).ok());

  MemoryWeights missing = random_weights(c);
  missing.remove("model.layers.1.mlp.up_proj.weight");
  auto m = StageModel::load(c, missing, 0, c.n_layer);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), StatusCode::kNotFound);
  EXPECT_NE(m.status().message().find("'model.layers.1.mlp.up_proj.weight'"), std::string::npos)
      << m.status().message();
  // The missing tensor does not matter to a stage that does not hold layer 1.
  EXPECT_TRUE(StageModel::load(c, missing, 2, c.n_layer).ok());

  MemoryWeights misshapen = random_weights(c);
  misshapen.add("model.norm.weight", {c.n_embd + 1}, random_floats(size_t(c.n_embd + 1)));
  auto s = StageModel::load(c, misshapen, 0, c.n_layer);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(s.status().message().find("model.norm.weight"), std::string::npos);
}

TEST(StageModelForward, RejectsBadBatches) {
  const ModelConfig c = tiny_config(Arch::kQwen3);
  const MemoryWeights w = random_weights(c);
  auto loaded = StageModel::load(c, w, 0, c.n_layer);
  ASSERT_TRUE(loaded.ok());
  StageModel& m = **loaded;
  std::vector<float> out;
  Batch b;
  b.add_sequence(random_ids(5, c.n_vocab), 0, iota_table(2), true);
  Status st = m.forward(b, {}, out);
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.message();

  ASSERT_TRUE(m.allocate_kv(4, kBlockSize).ok());
  EXPECT_TRUE(m.forward(b, {}, out).ok());
  EXPECT_EQ(out.size(), size_t(c.n_vocab));

  Batch bad_id = b;
  bad_id.token_ids[2] = int32_t(c.n_vocab);
  EXPECT_EQ(m.forward(bad_id, {}, out).code(), StatusCode::kOutOfRange);

  Batch bad_block;
  bad_block.add_sequence(random_ids(3, c.n_vocab), 0, std::vector<int32_t>{4}, true);  // pool has 4
  EXPECT_EQ(m.forward(bad_block, {}, out).code(), StatusCode::kInvalidArgument);

  Batch short_table;
  short_table.add_sequence(random_ids(3, c.n_vocab), 3, std::vector<int32_t>{0}, true);  // pos 5
  EXPECT_EQ(m.forward(short_table, {}, out).code(), StatusCode::kInvalidArgument);

  auto middle = load_stage(c, w, 1, 2, 4);
  std::vector<float> wrong(size_t(4 * c.n_embd));
  EXPECT_EQ(middle->forward(b, wrong, out).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pp::test
