// The table of tensors (arch-tensors.h), on fresh random configs of every family with and without
// q/k/v bias, q/k norm and tied embeddings: every tensor the table lists is in a random-weights
// source with its shape (and nothing else is); fused slots are tiled exactly by their parts;
// splitting the model into stages gives every tensor to exactly one stage (the tied head read by
// the last stage as its own copy, or shared when one stage holds both); names map back to their
// entries; and the CPU StageModel loads each stage from a source holding exactly that stage's
// tensors, reading each once, with the same logits as the whole model. The MoE families draw
// their expert count, top k, expert size and (Qwen3-MoE) which layers stay dense, so the
// stacked expert slots and mixed dense/MoE layers go through every check too.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <numeric>
#include <set>

#include <fmt/ranges.h>

#include "pp/model/arch-tensors.h"
#include "pp/model/random-weights.h"
#include "pp/model/stage-model.h"
#include "test-model-util.h"
#include "test-util.h"

namespace pp::test {
namespace {

using model::Arch;
using model::ModelConfig;
using model::StageParts;
using model::StageTensors;
using model::TensorOwner;
using model::TensorSpec;
using model::WeightSlot;

constexpr Arch kFamilies[] = {Arch::kLlama, Arch::kMistral,  Arch::kQwen2,
                              Arch::kQwen3, Arch::kQwen3Moe, Arch::kMixtral};

// A fresh random config of `arch` with the given switches (the table is switched by the config,
// whatever the family's config.json would say).
ModelConfig random_config(Arch arch, bool bias, bool qk_norm, bool tied) {
  ModelConfig c = tiny_config(arch);
  auto pick = [](int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(rng());
  };
  c.n_layer = pick(1, 5);
  c.n_head_kv = pick(1, 3);
  c.n_head = c.n_head_kv * pick(1, 3);
  c.head_dim = 2 * pick(2, 6);
  c.n_embd = 4 * pick(3, 12);
  c.n_ff = pick(8, 64);
  c.n_vocab = pick(16, 80);
  c.attention_bias = bias;
  c.qk_norm = qk_norm;
  c.tie_word_embeddings = tied;
  if (c.is_moe()) {
    c.n_expert = pick(1, 6);
    c.n_expert_used = pick(1, c.n_expert);
    c.n_ff_expert = arch == Arch::kMixtral ? c.n_ff : pick(4, 32);
    if (arch == Arch::kQwen3Moe) {
      c.moe_sparse_step = pick(1, 2);
      c.moe_dense_layers.clear();
      for (int64_t il = 0; il < c.n_layer; ++il) {
        if (pick(0, 3) == 0) c.moe_dense_layers.push_back(il);
      }
    }
  }
  EXPECT_TRUE(c.validate().ok());
  return c;
}

// Every family under every combination of the three switches.
std::vector<ModelConfig> all_configs() {
  std::vector<ModelConfig> out;
  for (Arch a : kFamilies) {
    for (int bits = 0; bits < 8; ++bits) {
      out.push_back(random_config(a, bits & 1, bits & 2, bits & 4));
    }
  }
  return out;
}

std::string describe(const ModelConfig& c) {
  return fmt::format(
      "{} bias={} qk_norm={} tied={} layers={} E={} H={}/{} D={} F={} V={} experts={}/{} Fe={} "
      "step={} dense={}",
      model::arch_name(c.arch), c.attention_bias, c.qk_norm, c.tie_word_embeddings, c.n_layer,
      c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff, c.n_vocab, c.n_expert_used, c.n_expert,
      c.n_ff_expert, c.moe_sparse_step, fmt::join(c.moe_dense_layers, ","));
}

// A random split of n_layer layers into 1..n_layer stages.
std::vector<StageParts> random_split(const ModelConfig& c) {
  std::vector<int64_t> cuts(size_t(c.n_layer - 1));
  std::iota(cuts.begin(), cuts.end(), 1);
  std::shuffle(cuts.begin(), cuts.end(), rng());
  cuts.resize(size_t(std::uniform_int_distribution<int64_t>(0, c.n_layer - 1)(rng())));
  cuts.push_back(0);
  cuts.push_back(c.n_layer);
  std::sort(cuts.begin(), cuts.end());
  std::vector<StageParts> out;
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    out.push_back(model::stage_parts(c, cuts[i], cuts[i + 1]));
  }
  return out;
}

TEST(ArchTensors, RandomWeightsHoldExactlyTheTable) {
  for (const ModelConfig& c : all_configs()) {
    SCOPED_TRACE(describe(c));
    auto source = model::random_weights(c, rng()());
    ASSERT_TRUE(source.ok()) << source.status().message();
    const std::vector<TensorSpec> table = model::model_tensors(c);
    size_t required = 0;
    for (const TensorSpec& t : table) {
      const model::TensorInfo* info = (*source)->find(t.name);
      if (t.optional) {
        // lm_head.weight, optional exactly when the embeddings are tied.
        EXPECT_EQ(t.name, "lm_head.weight");
        EXPECT_TRUE(c.tie_word_embeddings);
        EXPECT_EQ(info, nullptr);
        continue;
      }
      ++required;
      ASSERT_NE(info, nullptr) << t.name;
      EXPECT_EQ(info->shape, t.shape) << t.name;
    }
    EXPECT_EQ((*source)->names().size(), required);
    // Per layer: 9 tensors, 3 biases with attention_bias, 2 norms with qk_norm; an MoE layer
    // has a router and 3 tensors per expert instead of the dense MLP's 3.
    const size_t attention = 6 + (c.attention_bias ? 3 : 0) + (c.qk_norm ? 2 : 0);
    size_t layers = 0;
    for (int64_t il = 0; il < c.n_layer; ++il) {
      layers += attention + (c.layer_is_moe(il) ? 1 + 3 * size_t(c.n_expert) : 3);
    }
    EXPECT_EQ(required, layers + 2 + (c.tie_word_embeddings ? 0 : 1));
  }
}

TEST(ArchTensors, FusedSlotsAreTiledByTheirParts) {
  for (const ModelConfig& c : all_configs()) {
    SCOPED_TRACE(describe(c));
    const int64_t E = c.n_embd, Q = c.q_dim(), KV = c.kv_dim(), F = c.n_ff;
    const int64_t il = std::uniform_int_distribution<int64_t>(0, c.n_layer - 1)(rng());
    const std::vector<TensorSpec> layer = model::layer_tensors(c, il);
    std::map<WeightSlot, std::pair<int64_t, int64_t>> want = {
        {WeightSlot::kAttnNorm, {E, 1}},   {WeightSlot::kQkv, {Q + 2 * KV, E}},
        {WeightSlot::kO, {E, Q}},          {WeightSlot::kFfnNorm, {E, 1}},
        {WeightSlot::kGateUp, {2 * F, E}}, {WeightSlot::kDown, {E, F}}};
    if (c.layer_is_moe(il)) {
      // Expert e's gate at rows e 2Fe, its up at e 2Fe + Fe, its down at rows e E.
      const int64_t n = c.n_expert, Fe = c.n_ff_expert;
      want.erase(WeightSlot::kGateUp);
      want.erase(WeightSlot::kDown);
      want[WeightSlot::kRouter] = {n, E};
      want[WeightSlot::kExpertGateUp] = {n * 2 * Fe, E};
      want[WeightSlot::kExpertDown] = {n * E, Fe};
      for (const TensorSpec& t : layer) {
        for (int64_t e = 0; e < n; ++e) {
          const std::string expert = fmt::format(".experts.{}.", e);
          if (t.name.find(expert) == std::string::npos) continue;
          const bool gate = t.name.ends_with("gate_proj.weight") || t.name.ends_with("w1.weight");
          const bool up = t.name.ends_with("up_proj.weight") || t.name.ends_with("w3.weight");
          if (gate || up) {
            EXPECT_EQ(t.slot, WeightSlot::kExpertGateUp) << t.name;
            EXPECT_EQ(t.row_offset, e * 2 * Fe + (up ? Fe : 0)) << t.name;
            EXPECT_EQ(t.split, model::TpSplit::kColumn) << t.name;
          } else {
            EXPECT_EQ(t.slot, WeightSlot::kExpertDown) << t.name;
            EXPECT_EQ(t.row_offset, e * E) << t.name;
            EXPECT_EQ(t.split, model::TpSplit::kRow) << t.name;
          }
        }
        if (t.slot == WeightSlot::kRouter) {
          EXPECT_EQ(t.split, model::TpSplit::kReplicated);
        }
      }
    }
    if (c.attention_bias) want[WeightSlot::kQkvBias] = {Q + 2 * KV, 1};
    if (c.qk_norm) {
      want[WeightSlot::kQNorm] = {c.head_dim, 1};
      want[WeightSlot::kKNorm] = {c.head_dim, 1};
    }
    const std::vector<model::SlotSpec> slots = model::slots_of(layer);
    ASSERT_EQ(slots.size(), want.size());
    for (const model::SlotSpec& s : slots) {
      SCOPED_TRACE(model::weight_slot_name(s.slot));
      ASSERT_TRUE(want.count(s.slot));
      EXPECT_EQ(s.layer, il);
      EXPECT_EQ(std::make_pair(s.rows, s.cols), want[s.slot]);
      // The slot's parts, by row offset, cover its rows exactly once.
      std::vector<const TensorSpec*> parts;
      for (const TensorSpec& t : layer) {
        if (t.slot == s.slot) parts.push_back(&t);
      }
      std::sort(parts.begin(), parts.end(),
                [](auto* a, auto* b) { return a->row_offset < b->row_offset; });
      int64_t row = 0;
      for (const TensorSpec* t : parts) {
        EXPECT_EQ(t->row_offset, row) << t->name;
        EXPECT_EQ(t->cols(), s.cols) << t->name;
        EXPECT_EQ(t->layer, il);
        EXPECT_EQ(t->owner, TensorOwner::kLayer);
        row += t->rows();
      }
      EXPECT_EQ(row, s.rows);
    }
    EXPECT_EQ(model::tensor_params(layer), [&] {
      int64_t n = 0;
      for (const auto& s : slots) n += s.numel();
      return n;
    }());
  }
}

TEST(ArchTensors, EveryTensorHasExactlyOneStage) {
  for (const ModelConfig& c : all_configs()) {
    SCOPED_TRACE(describe(c));
    auto source = model::random_weights(c, rng()());
    ASSERT_TRUE(source.ok());
    const bool reads_embedding = model::head_reads_embedding(c, **source);
    EXPECT_EQ(reads_embedding, c.tie_word_embeddings);
    const std::vector<StageParts> split = random_split(c);
    SCOPED_TRACE(fmt::format("{} stages", split.size()));

    // Names of the table, each with the number of stages that list it.
    std::map<std::string, int> listed;
    int head_copies = 0, shared_heads = 0;
    for (size_t k = 0; k < split.size(); ++k) {
      const StageParts& p = split[k];
      const StageTensors st = model::stage_tensors(c, p, reads_embedding);
      EXPECT_EQ(st.head_shares_embedding, p.head && p.embedding && c.tie_word_embeddings);
      shared_heads += st.head_shares_embedding;
      for (const TensorSpec& t : st.tensors) {
        EXPECT_TRUE(model::stage_owns(p, t)) << t.name << " at stage " << k;
        if (t.slot == WeightSlot::kLmHead && t.name == "model.embed_tokens.weight") {
          ++head_copies;  // the tied head, read by a last stage without the embedding
          EXPECT_TRUE(p.head && !p.embedding);
          continue;
        }
        ++listed[t.name];
      }
      // No other stage owns what this one lists.
      for (size_t j = 0; j < split.size(); ++j) {
        if (j == k) continue;
        for (const TensorSpec& t : st.tensors) {
          if (t.owner == TensorOwner::kLayer) {
            EXPECT_FALSE(model::stage_owns(split[j], t)) << t.name;
          }
        }
      }
    }
    EXPECT_EQ(head_copies + shared_heads, c.tie_word_embeddings ? 1 : 0);
    std::map<std::string, int> want;
    for (const TensorSpec& t : model::model_tensors(c)) {
      if (!t.optional) want[t.name] = 1;
    }
    EXPECT_EQ(listed, want);

    // Every name maps back to its entry, and to the one stage that lists it.
    for (const TensorSpec& t : model::model_tensors(c)) {
      const std::optional<TensorSpec> found = model::find_tensor_spec(c, t.name);
      ASSERT_TRUE(found.has_value()) << t.name;
      EXPECT_EQ(found->shape, t.shape);
      EXPECT_EQ(found->slot, t.slot);
      EXPECT_EQ(found->row_offset, t.row_offset);
      EXPECT_EQ(found->layer, t.layer);
      int owners = 0;
      for (const StageParts& p : split) owners += model::stage_owns(p, *found);
      EXPECT_EQ(owners, 1) << t.name;
    }
    for (const char* name : {"model.layers.0.self_attn.rotary_emb.inv_freq", "model.layers.x.y",
                             "model.layers.-1.input_layernorm.weight", "rotary.inv_freq"}) {
      EXPECT_FALSE(model::find_tensor_spec(c, name).has_value()) << name;
    }
    EXPECT_FALSE(
        model::find_tensor_spec(c, fmt::format("model.layers.{}.input_layernorm.weight", c.n_layer))
            .has_value());
    if (!c.attention_bias) {
      EXPECT_FALSE(model::find_tensor_spec(c, "model.layers.0.self_attn.q_proj.bias").has_value());
    }
  }
}

TEST(ArchTensors, StageModelLoadsFromExactlyItsTensors) {
  for (const ModelConfig& c : all_configs()) {
    SCOPED_TRACE(describe(c));
    auto source = model::random_weights(c, rng()());
    ASSERT_TRUE(source.ok());
    const MemoryWeights full = cache_weights(**source);
    const std::vector<StageParts> split = random_split(c);
    SCOPED_TRACE(fmt::format("{} stages", split.size()));

    std::vector<int32_t> ids(7);
    for (int32_t& id : ids) {
      id = std::uniform_int_distribution<int32_t>(0, int32_t(c.n_vocab) - 1)(rng());
    }
    model::Batch batch;
    const std::vector<int32_t> table = {0, 1};
    batch.add_sequence(ids, 0, table, true);
    auto run = [&](const std::vector<std::unique_ptr<model::StageModel>>& stages) {
      std::vector<float> in, out;
      for (const auto& s : stages) {
        EXPECT_TRUE(s->forward(batch, in, out).ok());
        std::swap(in, out);
      }
      return in;
    };

    std::vector<std::unique_ptr<model::StageModel>> stages;
    for (const StageParts& p : split) {
      // A source holding exactly the stage's tensors (a tied head copy is embed_tokens).
      const StageTensors st = model::stage_tensors(c, p, model::head_reads_embedding(c, full));
      MemoryWeights own;
      std::set<std::string> names;
      for (const TensorSpec& t : st.tensors) {
        names.insert(t.name);
        own.add(t.name, t.shape, full.data(t.name));
      }
      RecordingWeights rec(own);
      auto m = model::StageModel::load(c, rec, p.layer_begin, p.layer_end);
      ASSERT_TRUE(m.ok()) << m.status().message();
      EXPECT_EQ(rec.read(), names);
      EXPECT_EQ((*m)->n_params(), model::tensor_params(st.tensors));
      ASSERT_TRUE((*m)->allocate_kv(4, 4).ok());
      stages.push_back(std::move(*m));

      // Without any one of them the stage does not load, and says which.
      const TensorSpec& gone =
          st.tensors[std::uniform_int_distribution<size_t>(0, st.tensors.size() - 1)(rng())];
      // (The one exception is the head rule: without lm_head.weight a stage holding the
      // embedding uses it as its head.)
      own.remove(gone.name);
      auto missing = model::StageModel::load(c, own, p.layer_begin, p.layer_end);
      if (gone.name == "lm_head.weight" && p.embedding) {
        EXPECT_TRUE(missing.ok()) << missing.status().message();
        continue;
      }
      ASSERT_FALSE(missing.ok()) << gone.name;
      EXPECT_EQ(missing.status().code(), StatusCode::kNotFound) << missing.status().message();
      EXPECT_NE(missing.status().message().find(
                    gone.slot == WeightSlot::kLmHead ? "model.embed_tokens.weight" : gone.name),
                std::string::npos)
          << missing.status().message();
    }
    std::vector<std::unique_ptr<model::StageModel>> whole;
    auto w = model::StageModel::load(c, full, 0, c.n_layer);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->allocate_kv(4, 4).ok());
    whole.push_back(std::move(*w));
    const std::vector<float> a = run(stages), b = run(whole);
    ASSERT_EQ(a.size(), size_t(c.n_vocab));
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
  }
}

}  // namespace
}  // namespace pp::test
