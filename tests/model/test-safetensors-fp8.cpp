// FP8 safetensors checkpoints: F8_E4M3 weights with their scales in each layout the readers meet
// (block `weight_scale_inv`; compressed-tensors `weight_scale` per tensor, per channel or per
// block; F32 or BF16 scales; the scale in another shard), the scale tensors and `input_scale`
// hidden, read_weight giving the stored bytes and read_f32 the real values; and the errors: a
// missing or misshapen scale (kDataLoss naming the tensor and the file), F8_E5M2 (kUnimplemented).
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "pp/kernels/float-convert.h"
#include "pp/kernels/host-weight.h"
#include "pp/model/safetensors-writer.h"
#include "pp/model/safetensors.h"
#include "test-util.h"

namespace pp::test {
namespace {

using kernels::HostWeight;
using kernels::ScaleKind;
using model::DType;
using model::SafetensorsEntry;
using model::SafetensorsWeights;

constexpr const char* kW = "model.layers.0.mlp.down_proj.weight";
constexpr const char* kP = "model.layers.0.mlp.down_proj";

// A weight of [rows, cols] quantized with `kind`, and the entries that store it: the fp8 bytes,
// the scale tensor (`scale_name`, `scale_shape`, `scale_dtype`), an input_scale and a norm.
struct Fp8File {
  HostWeight w;
  std::vector<float> scales;  // as stored (BF16-rounded when the scales are BF16)
  std::vector<float> norm = random_floats(7);
  std::vector<float> input_scale = {0.25f};
  std::vector<SafetensorsEntry> entries;

  Fp8File(int64_t rows, int64_t cols, ScaleKind kind, const std::string& scale_name,
          std::vector<int64_t> scale_shape, DType scale_dtype = DType::kF32)
      : w(HostWeight::quantize_fp8(random_floats(size_t(rows * cols), -3.0f, 3.0f), rows, cols,
                                   kind)) {
    scales.assign(w.scales().begin(), w.scales().end());
    if (scale_dtype == DType::kBF16) {
      for (float& s : scales) s = kernels::bf16_to_f32(kernels::f32_to_bf16(s));
    }
    entries.push_back(
        {.name = kW, .dtype = DType::kF8E4M3, .shape = {rows, cols}, .raw = w.bytes()});
    entries.push_back({.name = std::string(kP) + "." + scale_name,
                       .dtype = scale_dtype,
                       .shape = std::move(scale_shape),
                       .data = scales});
    entries.push_back({.name = std::string(kP) + ".input_scale",
                       .dtype = DType::kF32,
                       .shape = {},
                       .data = input_scale});
    entries.push_back(
        {.name = "model.norm.weight", .dtype = DType::kBF16, .shape = {7}, .data = norm});
  }
};

void write_file(const std::filesystem::path& p, std::span<const SafetensorsEntry> e) {
  ASSERT_TRUE(model::write_safetensors(p, e, {}).ok());
}

// Opens `p` and checks the fp8 weight against `f`: listed with `kind`, bytes and scales as
// stored, read_f32 the dequantized values, scale tensors hidden.
void check_fp8(const std::filesystem::path& p, const Fp8File& f, ScaleKind kind) {
  auto st = SafetensorsWeights::open(p);
  ASSERT_TRUE(st.ok()) << st.status().message();
  EXPECT_EQ((*st)->names(), (std::vector<std::string>{kW, "model.norm.weight"}));
  EXPECT_EQ((*st)->find(std::string(kP) + ".weight_scale"), nullptr);
  EXPECT_EQ((*st)->find(std::string(kP) + ".weight_scale_inv"), nullptr);
  EXPECT_EQ((*st)->find(std::string(kP) + ".input_scale"), nullptr);
  const model::TensorInfo* t = (*st)->find(kW);
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->dtype, DType::kF8E4M3);
  EXPECT_EQ(t->scale_kind, kind);
  EXPECT_EQ(t->nbytes, uint64_t(f.w.numel()));
  EXPECT_EQ((*st)->find("model.norm.weight")->scale_kind, ScaleKind::kNone);

  auto w = (*st)->read_weight(kW);
  ASSERT_TRUE(w.ok()) << w.status().message();
  EXPECT_EQ(w->format(), kernels::WeightFormat::kFp8E4M3);
  EXPECT_EQ(w->scale_kind(), kind);
  ASSERT_EQ(w->bytes().size(), f.w.bytes().size());
  EXPECT_EQ(std::memcmp(w->bytes().data(), f.w.bytes().data(), f.w.bytes().size()), 0);
  // Per-tensor scales written as [1, 1] or [] read back as one value.
  EXPECT_EQ(std::vector<float>(w->scales().begin(), w->scales().end()), f.scales);

  auto values = (*st)->read_f32(kW);
  ASSERT_TRUE(values.ok()) << values.status().message();
  std::vector<float> want(values->size());
  w->dequantize(want);
  EXPECT_EQ(*values, want);
  // The non-fp8 tensor reads as before (read_weight: f32 [n, 1]).
  auto norm = (*st)->read_weight("model.norm.weight");
  ASSERT_TRUE(norm.ok());
  EXPECT_EQ(norm->format(), kernels::WeightFormat::kF32);
}

TEST(SafetensorsFp8, BlockScaleInv) {
  TempDir dir;
  // [300, 200]: 3 x 2 tiles, the last ones partial.
  Fp8File f(300, 200, ScaleKind::kBlock128x128, "weight_scale_inv", {3, 2});
  write_file(dir.path() / "model.safetensors", f.entries);
  check_fp8(dir.path(), f, ScaleKind::kBlock128x128);
}

TEST(SafetensorsFp8, CompressedTensorsLayouts) {
  struct Case {
    ScaleKind kind;
    std::vector<int64_t> shape;
    DType dtype;
  };
  const Case cases[] = {
      {ScaleKind::kPerTensor, {}, DType::kF32},
      {ScaleKind::kPerTensor, {1}, DType::kF32},
      {ScaleKind::kPerChannel, {130}, DType::kF32},
      {ScaleKind::kPerChannel, {130, 1}, DType::kBF16},
      {ScaleKind::kBlock128x128, {2, 3}, DType::kF32},
      {ScaleKind::kBlock128x128, {2, 3}, DType::kBF16},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << kernels::scale_kind_name(c.kind) << " " << c.shape.size()
                                    << "-D " << model::dtype_name(c.dtype));
    TempDir dir;
    Fp8File f(130, 300, c.kind, "weight_scale", c.shape, c.dtype);
    write_file(dir.path() / "model.safetensors", f.entries);
    check_fp8(dir.path(), f, c.kind);
  }
}

TEST(SafetensorsFp8, ScaleInAnotherShard) {
  TempDir dir;
  Fp8File f(64, 256, ScaleKind::kPerChannel, "weight_scale", {64});
  write_file(dir.path() / "a.safetensors", std::span(f.entries).subspan(0, 1));
  write_file(dir.path() / "b.safetensors", std::span(f.entries).subspan(1));
  nlohmann::json index = {{"weight_map",
                           {{kW, "a.safetensors"},
                            {std::string(kP) + ".weight_scale", "b.safetensors"},
                            {std::string(kP) + ".input_scale", "b.safetensors"},
                            {"model.norm.weight", "b.safetensors"}}}};
  std::ofstream(dir.path() / "model.safetensors.index.json") << index.dump();
  check_fp8(dir.path(), f, ScaleKind::kPerChannel);
}

// The status of opening a file of `entries`.
Status open_status(std::span<const SafetensorsEntry> entries, std::filesystem::path* path) {
  static TempDir dir;
  *path = dir.path() / "model.safetensors";
  EXPECT_TRUE(model::write_safetensors(*path, entries, {}).ok());
  auto st = SafetensorsWeights::open(*path);
  return st.ok() ? ok_status() : st.status();
}

TEST(SafetensorsFp8, MissingScaleIsDataLoss) {
  Fp8File f(64, 64, ScaleKind::kPerTensor, "weight_scale", {});
  std::vector<SafetensorsEntry> e = {f.entries[0], f.entries[3]};
  std::filesystem::path p;
  const Status s = open_status(e, &p);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find(kW), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(p.string()), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("no scale"), std::string::npos) << s.message();
}

TEST(SafetensorsFp8, MisshapenScaleIsDataLoss) {
  struct Case {
    const char* scale;
    std::vector<int64_t> shape;
  };
  // [200, 300]: blocks [2, 3], channels [200].
  const Case cases[] = {
      {"weight_scale_inv", {}},    {"weight_scale_inv", {200}}, {"weight_scale_inv", {3, 2}},
      {"weight_scale", {2}},       {"weight_scale", {300}},     {"weight_scale", {200, 2}},
      {"weight_scale", {2, 3, 1}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message() << c.scale << " of " << c.shape.size() << " dims");
    Fp8File f(200, 300, ScaleKind::kPerTensor, c.scale, {1});
    int64_t n = 1;
    for (int64_t d : c.shape) n *= d;
    std::vector<float> scales(size_t(n), 0.5f);
    f.entries[1].shape = c.shape;
    f.entries[1].data = scales;
    std::filesystem::path p;
    const Status s = open_status(f.entries, &p);
    EXPECT_EQ(s.code(), StatusCode::kDataLoss);
    EXPECT_NE(s.message().find(kW), std::string::npos) << s.message();
    EXPECT_NE(s.message().find(p.string()), std::string::npos) << s.message();
  }
}

TEST(SafetensorsFp8, ScaleOfAnotherDtypeIsDataLoss) {
  Fp8File f(64, 64, ScaleKind::kPerTensor, "weight_scale", {});
  f.entries[1].dtype = DType::kF16;
  std::filesystem::path p;
  const Status s = open_status(f.entries, &p);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("F16"), std::string::npos) << s.message();
}

TEST(SafetensorsFp8, E5M2IsUnimplemented) {
  // A header by hand: the writer does not write F8_E5M2.
  const std::string header =
      R"({"w": {"dtype": "F8_E5M2", "shape": [2, 2], "data_offsets": [0, 4]}})";
  std::vector<uint8_t> b(8 + header.size() + 4, 0);
  const uint64_t n = header.size();
  std::memcpy(b.data(), &n, 8);
  std::memcpy(b.data() + 8, header.data(), header.size());
  TempDir dir;
  const auto p = dir.path() / "e5m2.safetensors";
  std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), b.size());
  auto st = SafetensorsWeights::open(p);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(st.status().message().find("F8_E5M2"), std::string::npos) << st.status().message();
}

TEST(SafetensorsFp8, WriterChecksRawBytes) {
  TempDir dir;
  std::vector<std::byte> raw(5);
  std::vector<SafetensorsEntry> e = {
      {.name = "w", .dtype = DType::kF8E4M3, .shape = {2, 3}, .raw = raw}};
  const Status s = model::write_safetensors(dir.path() / "x.safetensors", e, {});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("5 bytes"), std::string::npos) << s.message();
}

}  // namespace
}  // namespace pp::test
