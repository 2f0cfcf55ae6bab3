// Tests of quantization on load (pp/model/quantization.h): the tensor rule (a layer's linear
// weights only), the wrapping source (find reports kF8E4M3 per channel, read_weight gives
// HostWeight::quantize_fp8 of the values, read_f32 their dequantized values, every other tensor
// passes through untouched), an fp8 source is not quantized again, and the option's parser.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "pp/kernels/host-weight.h"
#include "pp/model/arch-tensors.h"
#include "pp/model/config.h"
#include "pp/model/quantization.h"
#include "pp/model/weights.h"
#include "test-model-util.h"

namespace pp::test {
namespace {

using kernels::HostWeight;
using kernels::ScaleKind;
using kernels::WeightFormat;
using model::DType;

// A source whose listed tensors are already fp8 (per tensor): an "fp8 checkpoint".
class Fp8Source final : public model::WeightSource {
 public:
  explicit Fp8Source(const MemoryWeights& inner, std::string fp8_name)
      : inner_(inner), fp8_name_(std::move(fp8_name)) {
    info_ = *inner_.find(fp8_name_);
    info_.dtype = DType::kF8E4M3;
    info_.scale_kind = ScaleKind::kPerTensor;
    info_.nbytes = uint64_t(info_.numel());
    weight_ = HostWeight::quantize_fp8(inner_.data(fp8_name_), info_.shape[0], info_.shape[1],
                                       ScaleKind::kPerTensor);
  }
  std::vector<std::string> names() const override { return inner_.names(); }
  const model::TensorInfo* find(std::string_view n) const override {
    return n == fp8_name_ ? &info_ : inner_.find(n);
  }
  Status read_f32(std::string_view n, std::span<float> out) const override {
    if (n != fp8_name_) return inner_.read_f32(n, out);
    weight_.dequantize(out);
    return ok_status();
  }
  using WeightSource::read_f32;
  Result<HostWeight> read_weight(std::string_view n) const override {
    if (n != fp8_name_) return inner_.read_weight(n);
    return HostWeight::from_bytes(weight_.format(), weight_.scale_kind(), weight_.rows(),
                                  weight_.cols(), {weight_.bytes().begin(), weight_.bytes().end()},
                                  {weight_.scales().begin(), weight_.scales().end()});
  }
  std::string describe() const override { return "fp8 memory"; }

 private:
  const MemoryWeights& inner_;
  std::string fp8_name_;
  model::TensorInfo info_;
  HostWeight weight_;
};

TEST(Quantization, ParsesTheOption) {
  EXPECT_EQ(*model::parse_quantization("fp8"), model::Quantization::kFp8);
  EXPECT_EQ(*model::parse_quantization("none"), model::Quantization::kNone);
  const auto bad = model::parse_quantization("int4");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("'int4'"), std::string::npos);
  EXPECT_STREQ(model::quantization_name(model::Quantization::kFp8), "fp8");
}

TEST(Quantization, NoneReturnsTheSourceItself) {
  const model::ModelConfig c = tiny_config(model::Arch::kLlama);
  auto w = std::make_shared<MemoryWeights>(random_weights(c));
  EXPECT_EQ(model::quantize_on_load(w, c, model::Quantization::kNone), w);
}

class QuantizeOnLoad : public ::testing::TestWithParam<model::Arch> {};

TEST_P(QuantizeOnLoad, LinearsOnlyPerChannel) {
  const model::ModelConfig c = tiny_config(GetParam());
  auto mem = std::make_shared<MemoryWeights>(random_weights(c));
  auto q = model::quantize_on_load(mem, c, model::Quantization::kFp8);
  EXPECT_EQ(q->names(), mem->names());
  int n_quantized = 0;
  for (const std::string& name : mem->names()) {
    SCOPED_TRACE(name);
    const auto spec = model::find_tensor_spec(c, name);
    ASSERT_TRUE(spec.has_value());
    const model::TensorInfo* info = q->find(name);
    ASSERT_NE(info, nullptr);
    const std::vector<float>& values = mem->data(name);
    auto got = q->read_f32(name);
    ASSERT_TRUE(got.ok()) << got.status().message();
    auto w = q->read_weight(name);
    ASSERT_TRUE(w.ok()) << w.status().message();
    const bool linear = spec->owner == model::TensorOwner::kLayer && spec->is_matrix();
    EXPECT_EQ(model::quantized_on_load(*spec), linear);
    if (!linear) {
      // The embedding, norms, biases and lm_head: untouched.
      EXPECT_EQ(info->dtype, DType::kF32);
      EXPECT_EQ(info->scale_kind, ScaleKind::kNone);
      EXPECT_EQ(*got, values);
      EXPECT_EQ(w->format(), WeightFormat::kF32);
      EXPECT_EQ(std::memcmp(w->f32_data(), values.data(), values.size() * 4), 0);
      continue;
    }
    ++n_quantized;
    EXPECT_EQ(info->dtype, DType::kF8E4M3);
    EXPECT_EQ(info->scale_kind, ScaleKind::kPerChannel);
    EXPECT_EQ(info->nbytes, uint64_t(info->numel()));
    EXPECT_EQ(info->shape, spec->shape);
    const HostWeight want =
        HostWeight::quantize_fp8(values, spec->rows(), spec->cols(), ScaleKind::kPerChannel);
    ASSERT_EQ(w->format(), WeightFormat::kFp8E4M3);
    EXPECT_EQ(w->scale_kind(), ScaleKind::kPerChannel);
    ASSERT_EQ(w->bytes().size(), want.bytes().size());
    EXPECT_EQ(std::memcmp(w->bytes().data(), want.bytes().data(), want.bytes().size()), 0);
    EXPECT_EQ(std::vector<float>(w->scales().begin(), w->scales().end()),
              std::vector<float>(want.scales().begin(), want.scales().end()));
    // read_f32 is dequantize(read_weight), bitwise.
    std::vector<float> deq(values.size());
    w->dequantize(deq);
    EXPECT_EQ(*got, deq);
    EXPECT_NE(*got, values);  // it was quantized
  }
  // q, k, v, o, gate, up, down in every layer.
  EXPECT_EQ(n_quantized, 7 * c.n_layer);
  EXPECT_NE(q->describe().find("fp8"), std::string::npos);
}

INSTANTIATE_TEST_SUITE_P(Families, QuantizeOnLoad,
                         ::testing::Values(model::Arch::kLlama, model::Arch::kQwen2,
                                           model::Arch::kQwen3),
                         [](const auto& info) {
                           return std::string(model::arch_name(info.param));
                         });

// An MoE model: every expert's gate, up and down are quantized like the dense linears; the
// router (a small, sensitive matrix) keeps its precision.
TEST(Quantization, ExpertsQuantizedRouterKept) {
  const std::filesystem::path dir = fixture_dir() / "models" / "tiny-qwen3-moe";
  auto c = model::config_from_hf_dir(dir);
  ASSERT_TRUE(c.ok()) << c.status().message();
  auto w = model::open_safetensors(dir);
  ASSERT_TRUE(w.ok()) << w.status().message();
  auto q = model::quantize_on_load(std::shared_ptr<const model::WeightSource>(std::move(*w)), *c,
                                   model::Quantization::kFp8);
  int experts = 0, routers = 0;
  for (const std::string& name : q->names()) {
    SCOPED_TRACE(name);
    const auto spec = model::find_tensor_spec(*c, name);
    ASSERT_TRUE(spec.has_value());
    const bool expert = spec->slot == model::WeightSlot::kExpertGateUp ||
                        spec->slot == model::WeightSlot::kExpertDown;
    const bool router = spec->slot == model::WeightSlot::kRouter;
    experts += expert;
    routers += router;
    if (expert) EXPECT_EQ(q->find(name)->dtype, DType::kF8E4M3);
    if (router) EXPECT_NE(q->find(name)->dtype, DType::kF8E4M3);
    EXPECT_EQ(model::quantized_on_load(*spec),
              spec->owner == model::TensorOwner::kLayer && spec->is_matrix() && !router);
  }
  EXPECT_GT(experts, 0);
  EXPECT_GT(routers, 0);
}

TEST(Quantization, AnFp8SourceIsNotQuantizedAgain) {
  const model::ModelConfig c = tiny_config(model::Arch::kLlama);
  const MemoryWeights mem = random_weights(c);
  const std::string name = "model.layers.1.mlp.down_proj.weight";
  auto src = std::make_shared<Fp8Source>(mem, name);
  auto q = model::quantize_on_load(src, c, model::Quantization::kFp8);
  // The checkpoint's own per-tensor scale stays; values are the checkpoint's dequantized ones.
  EXPECT_EQ(q->find(name)->scale_kind, ScaleKind::kPerTensor);
  auto w = q->read_weight(name);
  ASSERT_TRUE(w.ok()) << w.status().message();
  EXPECT_EQ(w->scale_kind(), ScaleKind::kPerTensor);
  auto want = src->read_weight(name);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(std::memcmp(w->bytes().data(), want->bytes().data(), want->bytes().size()), 0);
  EXPECT_EQ(*q->read_f32(name), *src->read_f32(name));
  // Another linear of the same source is still quantized per channel.
  EXPECT_EQ(q->find("model.layers.1.mlp.up_proj.weight")->scale_kind, ScaleKind::kPerChannel);
}

}  // namespace
}  // namespace pp::test
