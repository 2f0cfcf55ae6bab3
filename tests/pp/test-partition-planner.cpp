// Tests of the partition planner and its helpers: sha256 against the FIPS 180-2 vectors, byte
// sizes, --layers parsing and its one-line errors, even/cost/manual plans, the exactness of the
// cost DP (against brute force), the device-memory refusal, and that `cost` puts fewer layers on
// the lm_head stage of a large-vocabulary model than `even`; and that the planner's parameters
// and the ownership of tensors follow the model's table.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>

#include "pp/model/arch-tensors.h"
#include "pp/model/quantization.h"
#include "pp/partition/byte-size.h"
#include "pp/partition/partition-reader.h"
#include "pp/partition/planner.h"
#include "pp/partition/sha256.h"
#include "test-util.h"

namespace pp::partition {
namespace {

using model::ModelConfig;

TEST(PartitionSha256, KnownVectors) {
  auto hex = [](std::string_view s) {
    return sha256_hex({reinterpret_cast<const uint8_t*>(s.data()), s.size()});
  };
  EXPECT_EQ(hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(
      hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklm"
          "nopqrlmnopqrsmnopqrstnopqrstu"),
      "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  std::string million(1000000, 'a');
  EXPECT_EQ(hex(million), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(PartitionSha256, IncrementalMatchesOneShot) {
  std::uniform_int_distribution<int> byte(0, 255), len(0, 300);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<uint8_t> data(size_t(len(test::rng())) * 7);
    for (auto& b : data) b = uint8_t(byte(test::rng()));
    Sha256 h;
    size_t at = 0;
    while (at < data.size()) {
      size_t n = std::min(data.size() - at, size_t(len(test::rng()) % 130));
      h.update(data.data() + at, n);
      at += n;
    }
    EXPECT_EQ(h.finish_hex(), sha256_hex(data)) << "size " << data.size();
  }
}

TEST(PartitionSha256, FilesAndConcatenation) {
  test::TempDir dir;
  auto a = test::random_floats(1000), b = test::random_floats(333);
  auto write = [](const std::filesystem::path& p, const std::vector<float>& v) {
    std::ofstream(p, std::ios::binary)
        .write(reinterpret_cast<const char*>(v.data()), std::streamsize(v.size() * 4));
  };
  write(dir.path() / "a", a);
  write(dir.path() / "b", b);
  std::vector<uint8_t> both(reinterpret_cast<const uint8_t*>(a.data()),
                            reinterpret_cast<const uint8_t*>(a.data() + a.size()));
  both.insert(both.end(), reinterpret_cast<const uint8_t*>(b.data()),
              reinterpret_cast<const uint8_t*>(b.data() + b.size()));
  auto one = sha256_files({dir.path() / "a", dir.path() / "b"});
  ASSERT_TRUE(one.ok()) << one.status().message();
  EXPECT_EQ(*one, sha256_hex(both));
  auto missing = sha256_file(dir.path() / "nope");
  EXPECT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
}

TEST(PartitionByteSize, Parses) {
  EXPECT_EQ(*parse_byte_size("80GiB"), 80ull << 30);
  EXPECT_EQ(*parse_byte_size("512MiB"), 512ull << 20);
  EXPECT_EQ(*parse_byte_size("1.5GB"), 1500000000ull);
  EXPECT_EQ(*parse_byte_size("4096"), 4096ull);
  EXPECT_EQ(*parse_byte_size("2g"), 2ull << 30);
  EXPECT_EQ(*parse_byte_size("10kb"), 10000ull);
  EXPECT_EQ(*parse_byte_size("1TiB"), 1ull << 40);
  for (const char* bad : {"", "GiB", "12XB", "1.2.3GB", "-5GiB", "80 GiBs"}) {
    auto r = parse_byte_size(bad);
    EXPECT_FALSE(r.ok()) << bad;
    if (!r.ok()) EXPECT_EQ(r.status().message().find('\n'), std::string::npos);
  }
  EXPECT_EQ(format_bytes(1536.0 * 1024 * 1024), "1.50 GiB");
}

TEST(PartitionLayers, ParsesAndRejects) {
  auto r = parse_layer_ranges("0-13,14-29", 30, 2);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ((*r)[0], (LayerRange{0, 14}));
  EXPECT_EQ((*r)[1], (LayerRange{14, 30}));
  auto single = parse_layer_ranges("0,1-2,3", 4, 3);
  ASSERT_TRUE(single.ok()) << single.status().message();
  EXPECT_EQ((*single)[0], (LayerRange{0, 1}));
  EXPECT_EQ((*single)[2], (LayerRange{3, 4}));

  struct Case {
    const char* text;
    int n_stages;
    const char* expect;  // a word the message must contain
  };
  for (const Case& c : std::vector<Case>{{"0-14,14-29", 2, "overlap"},
                                         {"0-12,14-29", 2, "leaves out layer 13"},
                                         {"0-13,14-30", 2, "out of range"},
                                         {"14-29,0-13", 2, "out of order"},
                                         {"0-13", 1, "leaves out layers 14-29"},
                                         {"0-9,10-19,20-29", 2, "--pp is 2"},
                                         {"0-13,,14-29", 2, "empty"},
                                         {"0-x,14-29", 2, "invalid"},
                                         {"5-3,4-29", 2, "ends before"}}) {
    auto bad = parse_layer_ranges(c.text, 30, c.n_stages);
    ASSERT_FALSE(bad.ok()) << c.text;
    EXPECT_NE(bad.status().message().find(c.expect), std::string::npos)
        << c.text << ": " << bad.status().message();
    EXPECT_EQ(bad.status().message().find('\n'), std::string::npos);
  }
}

ModelConfig read_config(const std::string& name) {
  std::ifstream in(test::fixture_dir() / "configs" / name);
  EXPECT_TRUE(in.good()) << name;
  auto j = nlohmann::json::parse(in);
  auto c = model::config_from_hf_json(j);
  EXPECT_TRUE(c.ok()) << c.status().message();
  return *c;
}

ModelConfig random_small_config() {
  std::uniform_int_distribution<int> layers(2, 9), vocab(1, 40), heads(1, 4);
  ModelConfig c;
  c.n_head = heads(test::rng());
  c.n_head_kv = 1;
  c.head_dim = 16;
  c.n_embd = c.n_head * c.head_dim;
  c.n_ff = 2 * c.n_embd + 16 * heads(test::rng());
  c.n_layer = layers(test::rng());
  c.n_vocab = 64 * vocab(test::rng());
  c.max_position = 512;
  c.tie_word_embeddings = vocab(test::rng()) % 2 == 0;
  return c;
}

TEST(PartitionPlanner, EvenPlanCoversEveryLayerOnce) {
  ModelConfig c = read_config("qwen3-8b.json");
  for (int p = 1; p <= 8; ++p) {
    PlanOptions o;
    o.n_stages = p;
    auto plan = make_plan(c, o);
    ASSERT_TRUE(plan.ok()) << plan.status().message();
    ASSERT_EQ(int(plan->stages.size()), p);
    int64_t at = 0, lo = c.n_layer, hi = 0;
    for (const StagePlan& s : plan->stages) {
      EXPECT_EQ(s.layers.begin, at);
      at = s.layers.end;
      lo = std::min(lo, s.layers.size());
      hi = std::max(hi, s.layers.size());
      EXPECT_EQ(s.has_embedding, s.index == 0);
      EXPECT_EQ(s.has_lm_head, s.index == p - 1);
    }
    EXPECT_EQ(at, c.n_layer);
    EXPECT_LE(hi - lo, 1);
  }
}

TEST(PartitionPlanner, StageCostsAddUpToTheModel) {
  ModelConfig c = read_config("qwen3-8b.json");
  // Qwen3-8B: 8.19 B parameters (untied), 36 layers.
  PlanOptions o;
  o.n_stages = 3;
  o.dtype = model::DType::kBF16;
  auto plan = make_plan(c, o);
  ASSERT_TRUE(plan.ok());
  int64_t params = 0;
  uint64_t kv = 0;
  for (const auto& s : plan->stages) {
    params += s.params;
    kv += s.kv_bytes_per_token;
    EXPECT_EQ(s.bytes, uint64_t(s.params) * 2);
  }
  EXPECT_NEAR(double(params), 8.19e9, 0.01e9);
  EXPECT_EQ(kv, uint64_t(36 * 2 * 8 * 128 * 2));  // layers x K,V x kv heads x head_dim x bf16
  // The last stage's FLOPs include the lm_head: 2 x n_embd x n_vocab per token.
  const StagePlan& last = plan->stages.back();
  double layers_only = 0;
  for (int64_t il = last.layers.begin; il < last.layers.end; ++il) {
    layers_only += layer_flops_per_token(c, il, o.cost_model);
  }
  EXPECT_NEAR(last.flops_per_token - layers_only, 2.0 * 4096 * 151936 + 5.0 * 151936, 1.0);
}

// Qwen3-30B-A3B (tests/fixtures/configs/qwen3-30b-a3b.json, as published): memory counts all
// 128 experts of every layer (30.5 B parameters), the FLOPs only the 8 a token touches (about
// 3.3 B active); the cost plan of an MoE model over many layers stays quick.
TEST(PartitionPlanner, MoeCountsEveryExpertForMemoryAndTheTouchedOnesForTime) {
  const ModelConfig c = read_config("qwen3-30b-a3b.json");
  ASSERT_TRUE(c.is_moe());
  PlanOptions o;
  o.n_stages = 4;
  o.strategy = Strategy::kCost;
  auto plan = make_plan(c, o);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  int64_t params = 0;
  double flops = 0;
  for (const auto& s : plan->stages) {
    params += s.params;
    flops += s.flops_per_token;
    EXPECT_EQ(s.bytes, uint64_t(s.params) * 2);
  }
  EXPECT_NEAR(double(params), 30.53e9, 0.01e9);
  const double E = 2048, Q = 32 * 128, KV = 4 * 128, Fe = 768, V = 151936;
  const double touched = Q * E * 2 + 2 * KV * E + 128 * E + 8 * 3 * Fe * E;  // per layer
  const double attention = 4.0 * Q * o.cost_model.attention_context;
  EXPECT_NEAR(flops, 48 * (2 * touched + attention) + 2 * V * E + 5 * V, 48.0);
  EXPECT_NEAR(layer_flops_per_token(c, 0, o.cost_model), 2 * touched + attention, 1.0);
}

// A dense layer among MoE ones (mlp_only_layers) costs as a dense layer.
TEST(PartitionPlanner, MixedDenseAndMoeLayersCostPerLayer) {
  ModelConfig c = read_config("qwen3-30b-a3b.json");
  c.moe_dense_layers = {5};
  const int64_t E = 2048, Q = 32 * 128, KV = 4 * 128, F = 6144;
  const int64_t dense = 2 * E + Q * E * 2 + 2 * KV * E + 2 * 128 + 3 * F * E;
  EXPECT_EQ(layer_params(c, 5), dense);
  EXPECT_EQ(layer_params(c, 4), dense - 3 * F * E + 128 * E + 128 * 3 * 768 * E);
  const StagePlan s = stage_cost(c, {4, 6}, false, false, model::DType::kBF16, CostModel{});
  EXPECT_EQ(s.params, layer_params(c, 4) + layer_params(c, 5));
}

// fp8: the layers' linears count one byte per element plus an f32 scale per row (per 128 x 128
// tile for a block FP8 checkpoint), every other tensor and the KV cache two bytes.
TEST(PartitionPlanner, Fp8CountsOneBytePerLinearElement) {
  ModelConfig c = read_config("qwen3-8b.json");
  for (const bool block : {false, true}) {
    if (block) {
      c.quant.method = model::WeightQuantConfig::Method::kFp8;
      c.quant.strategy = model::WeightQuantConfig::Strategy::kBlock;
    }
    PlanOptions o;
    o.n_stages = 3;
    o.dtype = model::DType::kF8E4M3;
    auto plan = make_plan(c, o);
    ASSERT_TRUE(plan.ok()) << plan.status().message();
    PlanOptions b = o;
    b.dtype = model::DType::kBF16;
    auto bf16 = make_plan(c, b);
    ASSERT_TRUE(bf16.ok());
    for (const StagePlan& s : plan->stages) {
      uint64_t want = 0;
      for (const model::TensorSpec& t :
           model::stage_tensors(c, stage_parts(s), c.tie_word_embeddings).tensors) {
        if (model::quantized_on_load(t)) {
          want += uint64_t(t.numel());
          want +=
              4 * uint64_t(block ? ((t.rows() + 127) / 128) * ((t.cols() + 127) / 128) : t.rows());
        } else {
          want += 2 * uint64_t(t.numel());
        }
      }
      EXPECT_EQ(s.bytes, want) << "stage " << s.index;
      EXPECT_EQ(s.kv_bytes_per_token, bf16->stages[size_t(s.index)].kv_bytes_per_token);
      EXPECT_LT(s.bytes, bf16->stages[size_t(s.index)].bytes * 7 / 10);
    }
  }
  EXPECT_EQ(*parse_shard_dtype("fp8"), model::DType::kF8E4M3);
  EXPECT_STREQ(shard_dtype_name(model::DType::kF8E4M3), "fp8");
  const auto bad = parse_shard_dtype("fp4");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'fp4'"), std::string::npos);
  EXPECT_NE(bad.status().message().find("fp8"), std::string::npos);
}

// The planner's parameters and pp-partition's ownership of tensors both come from the model's
// table: a stage's parameters are those of its rows of the table (a tied head shared when one
// stage holds both), and every tensor of the table belongs to the one stage that loads it.
TEST(PartitionPlanner, ParamsAndOwnershipFollowTheTable) {
  for (int round = 0; round < 8; ++round) {
    ModelConfig c = random_small_config();
    c.attention_bias = round & 1;
    c.qk_norm = round & 2;
    SCOPED_TRACE(::testing::Message()
                 << "layers=" << c.n_layer << " bias=" << c.attention_bias
                 << " qk_norm=" << c.qk_norm << " tied=" << c.tie_word_embeddings);
    PlanOptions o;
    o.n_stages = std::uniform_int_distribution<int>(1, int(c.n_layer))(test::rng());
    auto plan = make_plan(c, o);
    ASSERT_TRUE(plan.ok()) << plan.status().message();
    for (const StagePlan& s : plan->stages) {
      const model::StageTensors st = model::stage_tensors(c, stage_parts(s), c.tie_word_embeddings);
      EXPECT_EQ(s.params, model::tensor_params(st.tensors)) << "stage " << s.index;
    }
    for (const model::TensorSpec& t : model::model_tensors(c)) {
      const int k = stage_of_tensor(c, t.name, plan->stages);
      ASSERT_GE(k, 0) << t.name;
      EXPECT_TRUE(model::stage_owns(stage_parts(plan->stages[size_t(k)]), t)) << t.name;
      if (t.owner == model::TensorOwner::kEmbedding) {
        EXPECT_EQ(k, 0);
      } else if (t.owner == model::TensorOwner::kHead) {
        EXPECT_EQ(k, o.n_stages - 1);
      }
    }
    for (const std::string& name : std::vector<std::string>{
             "model.layers.0.self_attn.rotary_emb.inv_freq", "rotary.inv_freq",
             "model.layers." + std::to_string(c.n_layer) + ".input_layernorm.weight"}) {
      EXPECT_EQ(stage_of_tensor(c, name, plan->stages), -1) << name;
    }
    EXPECT_EQ(stage_of_tensor(c, "model.layers.0.self_attn.q_proj.bias", plan->stages),
              c.attention_bias ? 0 : -1);
  }
}

// The lm_head (152k x 4096, streamed every step, plus sampling) makes the last stage heavy, so
// `cost` gives it fewer layers than `even`. The embedding is only gathered (a step reads its
// tokens' rows), so it costs the first stage memory but not time: that stage gets no fewer
// layers than `even`, and its memory (table included) is what a device must hold.
TEST(PartitionPlanner, CostPutsFewerLayersOnTheLmHeadStageOfALargeVocabularyModel) {
  ModelConfig c = read_config("qwen3-8b.json");
  for (int p : {2, 3, 4, 6}) {
    PlanOptions even, cost;
    even.n_stages = cost.n_stages = p;
    cost.strategy = Strategy::kCost;
    auto pe = make_plan(c, even);
    auto pc = make_plan(c, cost);
    ASSERT_TRUE(pe.ok() && pc.ok());
    EXPECT_LT(pc->stages.back().layers.size(), pe->stages.back().layers.size()) << "pp " << p;
    EXPECT_GE(pc->stages.front().layers.size(), pe->stages.front().layers.size()) << "pp " << p;
    EXPECT_LT(pc->stages[pc->slowest].est_time_s, pe->stages[pe->slowest].est_time_s);
    // The first stage's bytes still include the whole embedding table.
    const uint64_t table = uint64_t(c.n_vocab * c.n_embd) * 2;
    EXPECT_GE(pc->stages.front().bytes, table);
  }
}

// Every composition of n_layer into n_stages positive parts, brute force.
void for_each_split(int64_t n, int p, std::vector<LayerRange>& cur,
                    const std::function<void(const std::vector<LayerRange>&)>& f) {
  int64_t at = cur.empty() ? 0 : cur.back().end;
  if (int(cur.size()) == p - 1) {
    cur.push_back({at, n});
    f(cur);
    cur.pop_back();
    return;
  }
  for (int64_t end = at + 1; end <= n - (p - 1 - int64_t(cur.size())); ++end) {
    cur.push_back({at, end});
    for_each_split(n, p, cur, f);
    cur.pop_back();
  }
}

TEST(PartitionPlanner, CostIsOptimalAgainstBruteForce) {
  for (int trial = 0; trial < 30; ++trial) {
    ModelConfig c = random_small_config();
    ASSERT_TRUE(c.validate().ok()) << c.validate().message();
    std::uniform_int_distribution<int> pd(1, int(std::min<int64_t>(4, c.n_layer)));
    PlanOptions o;
    o.n_stages = pd(test::rng());
    o.strategy = Strategy::kCost;
    o.dtype = model::DType::kF32;
    o.cost_model.tokens_per_step = std::uniform_real_distribution<double>(1, 4096)(test::rng());
    auto plan = make_plan(c, o);
    ASSERT_TRUE(plan.ok()) << plan.status().message();
    double best = 1e300;
    std::vector<LayerRange> cur;
    for_each_split(c.n_layer, o.n_stages, cur, [&](const std::vector<LayerRange>& r) {
      double worst = 0;
      for (int k = 0; k < o.n_stages; ++k) {
        worst = std::max(
            worst,
            stage_cost(c, r[k], k == 0, k == o.n_stages - 1, o.dtype, o.cost_model).est_time_s);
      }
      best = std::min(best, worst);
    });
    EXPECT_LE(plan->stages[plan->slowest].est_time_s, best * (1 + 1e-9))
        << "trial " << trial << " layers " << c.n_layer << " pp " << o.n_stages;
  }
}

TEST(PartitionPlanner, ManualTakesTheRangesGiven) {
  ModelConfig c = read_config("qwen3-8b.json");
  PlanOptions o;
  o.n_stages = 3;
  o.strategy = Strategy::kManual;
  o.layers = *parse_layer_ranges("0-4,5-30,31-35", c.n_layer, 3);
  auto plan = make_plan(c, o);
  ASSERT_TRUE(plan.ok()) << plan.status().message();
  EXPECT_EQ(plan->stages[1].layers, (LayerRange{5, 31}));
  EXPECT_EQ(plan->slowest, 1);
  o.layers.clear();
  EXPECT_FALSE(make_plan(c, o).ok());
}

TEST(PartitionPlanner, RefusesBadStageCounts) {
  ModelConfig c = read_config("qwen3-8b.json");
  PlanOptions o;
  o.n_stages = 37;
  auto r = make_plan(c, o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("36 layers into 37 stages"), std::string::npos);
  o.n_stages = 0;
  EXPECT_FALSE(make_plan(c, o).ok());
}

TEST(PartitionPlanner, DeviceMemory) {
  ModelConfig c = read_config("qwen3-8b.json");  // 16.4 GB in bf16, 8.2 GB per stage of 2
  PlanOptions o;
  o.n_stages = 2;
  o.device_memory = {*parse_byte_size("7GiB")};
  auto r = make_plan(c, o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  const std::string& msg = r.status().message();
  EXPECT_NE(msg.find("stage 0"), std::string::npos) << msg;
  EXPECT_NE(msg.find("needs"), std::string::npos) << msg;
  EXPECT_NE(msg.find("has 7.00 GiB"), std::string::npos) << msg;

  o.device_memory = {*parse_byte_size("80GiB"), *parse_byte_size("80GiB")};
  ASSERT_TRUE(make_plan(c, o).ok());
  o.device_memory = {1, 2, 3};
  EXPECT_FALSE(make_plan(c, o).ok());

  // Mixed devices: cost moves layers off the small device so that it fits, even does not.
  o.n_stages = 2;
  o.device_memory = {*parse_byte_size("5GiB"), *parse_byte_size("40GiB")};
  EXPECT_FALSE(make_plan(c, o).ok());
  o.strategy = Strategy::kCost;
  auto fit = make_plan(c, o);
  ASSERT_TRUE(fit.ok()) << fit.status().message();
  EXPECT_LE(stage_memory_needed(c, fit->stages[0], o.cost_model), 5ull << 30);
  EXPECT_LT(fit->stages[0].layers.size(), fit->stages[1].layers.size());
}

TEST(PartitionPlanner, TableNamesTheSlowestStage) {
  ModelConfig c = read_config("qwen3-8b.json");
  PlanOptions o;
  o.n_stages = 4;
  auto plan = make_plan(c, o);
  ASSERT_TRUE(plan.ok());
  std::string t = format_plan_table(*plan);
  EXPECT_NE(t.find("predicted slowest stage: 3"), std::string::npos) << t;
  EXPECT_NE(t.find("0-8"), std::string::npos) << t;
  EXPECT_NE(t.find("27-35"), std::string::npos) << t;
}

}  // namespace
}  // namespace pp::partition
