// Mixture-of-experts models: both config forms of the MoE families (the published one and
// transformers 5's) read to the same ModelConfig (a GGUF MoE file is refused: test-config.cpp);
// which layers are MoE; and the GPU stage model's refusal of an MoE config before it allocates
// anything (gpu-none in a CPU build). The routing kernel is tested in
// tests/kernels/cpu-moe-route-test.cpp, the MoE layer against a float64 decoder in
// test-stage-model.cpp (StageModelFamily) and against transformers in test-reference.cpp
// (tiny-qwen3-moe, tiny-mixtral).
#include <gtest/gtest.h>

#include <fstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "pp/model/config.h"
#include "pp/model/gpu-stage-model.h"
#include "test-model-util.h"
#include "test-util.h"

namespace pp::test {
namespace {

using model::Arch;
using model::ModelConfig;
using nlohmann::json;

json read_json(const std::filesystem::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

// The older form (num_experts / torch_dtype / rope_theta) and the transformers-5 form
// (num_local_experts / dtype / rope_parameters) give the same config.
void expect_same_moe(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.arch, b.arch);
  EXPECT_EQ(a.n_expert, b.n_expert);
  EXPECT_EQ(a.n_expert_used, b.n_expert_used);
  EXPECT_EQ(a.n_ff_expert, b.n_ff_expert);
  EXPECT_EQ(a.expert_norm_topk, b.expert_norm_topk);
  EXPECT_EQ(a.moe_sparse_step, b.moe_sparse_step);
  EXPECT_EQ(a.moe_dense_layers, b.moe_dense_layers);
  EXPECT_EQ(a.rope.theta, b.rope.theta);
  EXPECT_EQ(a.torch_dtype, b.torch_dtype);
  EXPECT_EQ(model::config_to_hf_json(a), model::config_to_hf_json(b));
}

TEST(MoeConfig, Qwen3MoeBothForms) {
  const json old_form = read_json(fixture_dir() / "models" / "tiny-qwen3-moe" / "config.json");
  auto a = model::config_from_hf_json(old_form);
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_EQ(a->arch, Arch::kQwen3Moe);
  EXPECT_EQ(a->n_expert, 8);
  EXPECT_EQ(a->n_expert_used, 2);
  EXPECT_EQ(a->n_ff_expert, 16);
  EXPECT_EQ(a->n_ff, 96);
  EXPECT_TRUE(a->expert_norm_topk);
  EXPECT_TRUE(a->qk_norm);
  EXPECT_EQ(a->moe_dense_layers, (std::vector<int64_t>{1}));
  EXPECT_TRUE(a->layer_is_moe(0));
  EXPECT_FALSE(a->layer_is_moe(1));
  EXPECT_TRUE(a->layer_is_moe(2));

  json v5 = old_form;
  v5["num_local_experts"] = v5["num_experts"];
  v5.erase("num_experts");
  v5["dtype"] = v5["torch_dtype"];
  v5.erase("torch_dtype");
  v5["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", v5["rope_theta"]}};
  v5.erase("rope_theta");
  v5.erase("rope_scaling");
  auto b = model::config_from_hf_json(v5);
  ASSERT_TRUE(b.ok()) << b.status().message();
  expect_same_moe(*a, *b);

  // decoder_sparse_step 2: layers 1, 3, 5, ... are MoE, less mlp_only_layers.
  json step = old_form;
  step["decoder_sparse_step"] = 2;
  step["mlp_only_layers"] = json::array({3});
  step["num_hidden_layers"] = 6;
  auto s = model::config_from_hf_json(step);
  ASSERT_TRUE(s.ok()) << s.status().message();
  std::vector<bool> moe;
  for (int64_t il = 0; il < 6; ++il) moe.push_back(s->layer_is_moe(il));
  EXPECT_EQ(moe, (std::vector<bool>{false, true, false, false, false, true}));

  json bad = old_form;
  bad["num_experts_per_tok"] = 9;
  auto r = model::config_from_hf_json(bad);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("num_experts_per_tok"), std::string::npos);
}

TEST(MoeConfig, MixtralBothForms) {
  const json v5 = read_json(fixture_dir() / "models" / "tiny-mixtral" / "config.json");
  auto a = model::config_from_hf_json(v5);
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_EQ(a->arch, Arch::kMixtral);
  EXPECT_EQ(a->n_expert, 4);
  EXPECT_EQ(a->n_expert_used, 2);
  EXPECT_EQ(a->n_ff_expert, a->n_ff);
  EXPECT_TRUE(a->expert_norm_topk);
  EXPECT_EQ(a->head_dim, 8);  // "head_dim": null, so hidden / heads
  for (int64_t il = 0; il < a->n_layer; ++il) EXPECT_TRUE(a->layer_is_moe(il));

  json old_form = v5;
  old_form["torch_dtype"] = old_form["dtype"];
  old_form.erase("dtype");
  old_form["rope_theta"] = old_form["rope_parameters"]["rope_theta"];
  old_form.erase("rope_parameters");
  auto b = model::config_from_hf_json(old_form);
  ASSERT_TRUE(b.ok()) << b.status().message();
  expect_same_moe(*a, *b);
}

// The GPU has no expert ops yet: an MoE config is refused in init, before any allocation or
// stream (so the CPU build's gpu-none reaches the same check).
TEST(MoeGpu, StageModelRefusesMoe) {
  for (Arch arch : {Arch::kQwen3Moe, Arch::kMixtral}) {
    ModelConfig c = tiny_config(arch);
    c.head_dim = 64;  // what the GPU would accept, so the refusal is the MoE one
    auto m = model::GpuStageModel::random(c, 7, 0, c.n_layer, {});
    ASSERT_FALSE(m.ok());
    EXPECT_EQ(m.status().code(), StatusCode::kUnimplemented);
    EXPECT_EQ(m.status().message(), "mixture-of-experts layers are not supported on the GPU yet");
  }
}

}  // namespace
}  // namespace pp::test
