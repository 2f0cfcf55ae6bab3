// Safetensors tests: round trips through write_safetensors for F32, F16 and BF16 with random
// data and shapes (F16/BF16 rounding checked against conversions written independently here);
// the file layout the reference implementation requires; sharded checkpoints through
// model.safetensors.index.json; and corrupt or lying files, each a clean error.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include "f16-reference.h"
#include "pp/model/safetensors-writer.h"
#include "pp/model/safetensors.h"
#include "test-util.h"

namespace pp::test {
namespace {

using model::DType;
using model::SafetensorsEntry;
using model::SafetensorsFile;
using model::SafetensorsWeights;

using Bytes = std::vector<uint8_t>;

// Rounds to bfloat16 (nearest, ties to even) by picking the closer of the two neighbours.
float to_bf16_reference(float x) {
  if (std::isnan(x)) return x;
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const float lo = std::bit_cast<float>(bits & 0xffff0000u);
  const float hi = std::bit_cast<float>((bits & 0xffff0000u) + 0x10000u);
  const double dlo = std::fabs(double(x) - double(lo));
  const double dhi = std::isinf(hi) ? std::fabs(double(x) - std::ldexp(1.0, 128))
                                    : std::fabs(double(x) - double(hi));
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return ((bits >> 16) & 1) ? hi : lo;
}

float to_f16_reference(float x) { return f16_reference_value(f16_reference_bits(x)); }

bool same_value(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) ||
         std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
}

// A safetensors image from a JSON header (not padded) and a data section.
Bytes image(const std::string& header, const Bytes& data) {
  Bytes b(8 + header.size() + data.size());
  const uint64_t n = header.size();
  std::memcpy(b.data(), &n, 8);
  std::memcpy(b.data() + 8, header.data(), header.size());
  if (!data.empty()) std::memcpy(b.data() + 8 + header.size(), data.data(), data.size());
  return b;
}

// A parse of a heap copy of `b` of exactly its size (so ASan sees any overrun); the copy lives as
// long as this object, which reads like the Result it holds.
struct Parsed {
  std::unique_ptr<uint8_t[]> copy;
  Result<std::unique_ptr<SafetensorsFile>> result = Status(StatusCode::kInternal, "unset");

  bool ok() const { return result.ok(); }
  const Status& status() const { return result.status(); }
  std::unique_ptr<SafetensorsFile>& operator*() { return *result; }
};

Parsed parse_copy(const Bytes& b) {
  Parsed p;
  p.copy = std::make_unique<uint8_t[]>(std::max<size_t>(b.size(), 1));
  if (!b.empty()) std::memcpy(p.copy.get(), b.data(), b.size());
  p.result = SafetensorsFile::parse({p.copy.get(), b.size()}, "lie.safetensors");
  return p;
}

struct Tensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

std::vector<Tensor> random_tensors(int n) {
  std::mt19937_64& r = rng();
  std::vector<Tensor> out;
  const DType types[] = {DType::kF32, DType::kF16, DType::kBF16};
  for (int i = 0; i < n; ++i) {
    Tensor t;
    t.name = fmt::format("model.layers.{}.w{}", r() % 50, i);
    t.dtype = types[r() % 3];
    const int dims = int(r() % 4);  // 0: a scalar
    int64_t numel = 1;
    for (int d = 0; d < dims; ++d) {
      t.shape.push_back(int64_t(r() % 9));  // zero-sized dimensions too
      numel *= t.shape.back();
    }
    t.values = random_floats(size_t(numel), -70000.0f, 70000.0f);
    out.push_back(std::move(t));
  }
  return out;
}

std::vector<SafetensorsEntry> entries_of(const std::vector<Tensor>& ts) {
  std::vector<SafetensorsEntry> e;
  for (const Tensor& t : ts) e.push_back({t.name, t.dtype, t.shape, t.values});
  return e;
}

std::vector<float> stored(const Tensor& t) {
  std::vector<float> v = t.values;
  for (float& x : v) {
    if (t.dtype == DType::kF16) x = to_f16_reference(x);
    if (t.dtype == DType::kBF16) x = to_bf16_reference(x);
  }
  return v;
}

TEST(Safetensors, RoundTripEveryDtype) {
  for (int iter = 0; iter < 10; ++iter) {
    std::vector<Tensor> ts = random_tensors(1 + int(rng()() % 8));
    // Values where rounding is delicate: ties, overflow, subnormals, NaN, infinities.
    ts.push_back({"edges.f16",
                  DType::kF16,
                  {12},
                  {65504.0f, 65519.0f, 65520.0f, -1e9f, 5.96e-8f, 2.98e-8f, 2.99e-8f, 1e-10f,
                   std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity(),
                   1.0009765625f + 0.00048828125f, -0.0f}});
    ts.push_back({"edges.bf16",
                  DType::kBF16,
                  {6},
                  {std::bit_cast<float>(0x3f808000u), std::bit_cast<float>(0x3f818000u),
                   std::bit_cast<float>(0x7f7fffffu), std::numeric_limits<float>::quiet_NaN(),
                   std::numeric_limits<float>::denorm_min(), -3.0f}});
    const std::map<std::string, std::string> meta = {{"format", "pt"},
                                                     {"pp.stage", std::to_string(iter)}};
    TempDir dir;
    const auto path = dir.path() / "model.safetensors";
    const std::vector<SafetensorsEntry> entries = entries_of(ts);
    ASSERT_TRUE(model::write_safetensors(path, entries, meta).ok());

    // Layout: 8-byte aligned JSON header starting with '{', data contiguous up to the end.
    const Bytes raw = read_file_bytes(path);
    uint64_t header_len = 0;
    std::memcpy(&header_len, raw.data(), 8);
    EXPECT_EQ((8 + header_len) % 8, 0u);
    EXPECT_EQ(raw[8], '{');
    uint64_t data_bytes = 0;
    for (const Tensor& t : ts) data_bytes += t.values.size() * (t.dtype == DType::kF32 ? 4 : 2);
    EXPECT_EQ(raw.size(), 8 + header_len + data_bytes);

    for (const std::filesystem::path& p : {dir.path(), path}) {
      auto w = SafetensorsWeights::open(p);
      ASSERT_TRUE(w.ok()) << w.status().message();
      EXPECT_EQ((*w)->metadata(), meta);
      EXPECT_EQ((*w)->names().size(), ts.size());
      for (const Tensor& t : ts) {
        SCOPED_TRACE(t.name);
        const model::TensorInfo* info = (*w)->find(t.name);
        ASSERT_NE(info, nullptr);
        EXPECT_EQ(info->dtype, t.dtype);
        EXPECT_EQ(info->shape, t.shape);
        auto got = (*w)->read_f32(t.name);
        ASSERT_TRUE(got.ok()) << got.status().message();
        const std::vector<float> want = stored(t);
        ASSERT_EQ(got->size(), want.size());
        for (size_t i = 0; i < want.size(); ++i) {
          ASSERT_TRUE(same_value((*got)[i], want[i]))
              << "element " << i << " of " << t.values[i] << ": got " << (*got)[i] << ", want "
              << want[i];
        }
      }
    }
    // No temporary file is left behind.
    int files = 0;
    for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path())) ++files;
    EXPECT_EQ(files, 1);
  }
}

TEST(Safetensors, OtherDtypesAreReadable) {
  // F64 and integer tensors (written by hand) are converted to f32.
  const std::vector<double> d = {1.5, -2.25, 1e10};
  const std::vector<int16_t> s = {-7, 300};
  Bytes data(d.size() * 8 + s.size() * 2 + 2);
  std::memcpy(data.data(), d.data(), d.size() * 8);
  std::memcpy(data.data() + 24, s.data(), 4);
  data[28] = 200;
  data[29] = 1;
  const std::string header = R"({"d":{"dtype":"F64","shape":[3],"data_offsets":[0,24]},)"
                             R"("s":{"dtype":"I16","shape":[2],"data_offsets":[24,28]},)"
                             R"("u":{"dtype":"U8","shape":[1],"data_offsets":[28,29]},)"
                             R"("b":{"dtype":"BOOL","shape":[1],"data_offsets":[29,30]}})";
  auto f = parse_copy(image(header, data));
  ASSERT_TRUE(f.ok()) << f.status().message();
  std::vector<float> out(3);
  ASSERT_TRUE((*f)->read_f32(*(*f)->find("d"), out).ok());
  EXPECT_EQ(out, (std::vector<float>{1.5f, -2.25f, 1e10f}));
  out.resize(2);
  ASSERT_TRUE((*f)->read_f32(*(*f)->find("s"), out).ok());
  EXPECT_EQ(out, (std::vector<float>{-7.0f, 300.0f}));
  out.resize(1);
  ASSERT_TRUE((*f)->read_f32(*(*f)->find("u"), out).ok());
  EXPECT_EQ(out[0], 200.0f);
  ASSERT_TRUE((*f)->read_f32(*(*f)->find("b"), out).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_TRUE((*f)->metadata().empty());
}

TEST(Safetensors, ShardedIndex) {
  TempDir dir;
  std::vector<Tensor> a = random_tensors(4), b = random_tensors(3);
  for (size_t i = 0; i < b.size(); ++i) b[i].name = fmt::format("shard2.t{}", i);
  ASSERT_TRUE(
      model::write_safetensors(dir.path() / "model-00001-of-00002.safetensors", entries_of(a), {})
          .ok());
  ASSERT_TRUE(model::write_safetensors(dir.path() / "model-00002-of-00002.safetensors",
                                       entries_of(b), {{"k", "v"}})
                  .ok());
  nlohmann::json index;
  index["metadata"] = {{"total_size", 1234}};
  for (const Tensor& t : a) index["weight_map"][t.name] = "model-00001-of-00002.safetensors";
  for (const Tensor& t : b) index["weight_map"][t.name] = "model-00002-of-00002.safetensors";
  const auto index_path = dir.path() / "model.safetensors.index.json";
  std::ofstream(index_path) << index.dump();

  for (const std::filesystem::path& p : {dir.path(), index_path}) {
    auto w = model::open_safetensors(p);
    ASSERT_TRUE(w.ok()) << w.status().message();
    EXPECT_EQ((*w)->names().size(), a.size() + b.size());
    for (const auto* group : {&a, &b}) {
      for (const Tensor& t : *group) {
        const model::TensorInfo* info = (*w)->find(t.name);
        ASSERT_NE(info, nullptr) << t.name;
        EXPECT_EQ(info->file_index, group == &a ? 0 : 1);
        auto got = (*w)->read_f32(t.name);
        ASSERT_TRUE(got.ok());
        const std::vector<float> want = stored(t);
        for (size_t i = 0; i < want.size(); ++i) ASSERT_TRUE(same_value((*got)[i], want[i]));
      }
    }
    auto missing = (*w)->read_f32("model.layers.99.nothing");
    ASSERT_FALSE(missing.ok());
    EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
    EXPECT_NE(missing.status().message().find("model.layers.99.nothing"), std::string::npos);
    EXPECT_NE(missing.status().message().find("model.safetensors.index.json"), std::string::npos);
  }

  // A tensor the index names but its shard lacks.
  index["weight_map"]["ghost.weight"] = "model-00002-of-00002.safetensors";
  std::ofstream(index_path) << index.dump();
  auto ghost = model::open_safetensors(dir.path());
  ASSERT_FALSE(ghost.ok());
  EXPECT_EQ(ghost.status().code(), StatusCode::kNotFound);
  EXPECT_NE(ghost.status().message().find("ghost.weight"), std::string::npos);

  // A shard that does not exist.
  index["weight_map"].erase("ghost.weight");
  index["weight_map"]["lost.weight"] = "model-00003-of-00002.safetensors";
  std::ofstream(index_path) << index.dump();
  auto lost = model::open_safetensors(dir.path());
  ASSERT_FALSE(lost.ok());
  EXPECT_EQ(lost.status().code(), StatusCode::kNotFound);
  EXPECT_NE(lost.status().message().find("model-00003-of-00002.safetensors"), std::string::npos);

  // A shard path escaping the folder, and a broken index.
  index["weight_map"]["lost.weight"] = "../elsewhere.safetensors";
  std::ofstream(index_path) << index.dump();
  EXPECT_EQ(model::open_safetensors(dir.path()).status().code(), StatusCode::kDataLoss);
  std::ofstream(index_path) << "{\"weight_map\": ";
  EXPECT_EQ(model::open_safetensors(dir.path()).status().code(), StatusCode::kDataLoss);
}

TEST(Safetensors, MissingFiles) {
  TempDir dir;
  auto empty = model::open_safetensors(dir.path());
  ASSERT_FALSE(empty.ok());
  EXPECT_EQ(empty.status().code(), StatusCode::kNotFound);
  auto none = model::open_safetensors(dir.path() / "x.safetensors");
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
  EXPECT_NE(none.status().message().find("x.safetensors"), std::string::npos);
}

void expect_data_loss(const Bytes& b, const std::string& needle) {
  auto f = parse_copy(b);
  ASSERT_FALSE(f.ok()) << "accepted a file that should fail with: " << needle;
  EXPECT_EQ(f.status().code(), StatusCode::kDataLoss) << f.status().message();
  EXPECT_NE(f.status().message().find("'lie.safetensors'"), std::string::npos);
  EXPECT_NE(f.status().message().find(needle), std::string::npos) << f.status().message();
}

TEST(Safetensors, EveryTruncationIsAnError) {
  TempDir dir;
  const std::vector<float> v = random_floats(10);
  const std::vector<SafetensorsEntry> e = {{"a", DType::kF32, {2, 3}, {v.data(), 6}},
                                           {"b", DType::kBF16, {4}, {v.data() + 6, 4}}};
  ASSERT_TRUE(model::write_safetensors(dir.path() / "t.safetensors", e, {{"x", "y"}}).ok());
  const Bytes full = read_file_bytes(dir.path() / "t.safetensors");
  ASSERT_TRUE(parse_copy(full).ok());
  for (size_t n = 0; n < full.size(); ++n) {
    auto f = parse_copy(Bytes(full.begin(), full.begin() + std::ptrdiff_t(n)));
    ASSERT_FALSE(f.ok()) << "truncated to " << n << " bytes";
    EXPECT_EQ(f.status().code(), StatusCode::kDataLoss);
  }
}

TEST(Safetensors, LyingHeaders) {
  const Bytes data(16, 1);
  auto entry = [](const std::string& body) { return "{\"t\":{" + body + "}}"; };
  expect_data_loss(image(entry(R"("dtype":"F32","shape":[4],"data_offsets":[0,32])"), data),
                   "extends past end of file");
  expect_data_loss(image(entry(R"("dtype":"F32","shape":[4],"data_offsets":[16,0])"), data),
                   "out of order");
  expect_data_loss(image(entry(R"("dtype":"F32","shape":[3],"data_offsets":[0,16])"), data),
                   "need 12");
  expect_data_loss(image(entry(R"("dtype":"F16","shape":[4],"data_offsets":[0,16])"), data),
                   "need 8");
  expect_data_loss(image(entry(R"("dtype":"C64","shape":[2],"data_offsets":[0,16])"), data),
                   "unknown dtype C64");
  expect_data_loss(image(entry(R"("dtype":"F8_E4M3","shape":[8],"data_offsets":[0,16])"), data),
                   "need 8");
  expect_data_loss(image(entry(R"("dtype":"F32","shape":[-4],"data_offsets":[0,16])"), data),
                   "bad shape");
  expect_data_loss(
      image(entry(R"("dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16])"), data),
      "bad shape");
  expect_data_loss(
      image(entry(R"("dtype":"F32","shape":[2305843009213693952],"data_offsets":[0,16])"), data),
      "need");
  expect_data_loss(image(entry(R"("dtype":"F32","shape":[4],"data_offsets":[0])"), data),
                   "data_offsets");
  expect_data_loss(image(entry(R"("dtype":"F32","shape":[4],"data_offsets":[-1,15])"), data),
                   "data_offsets");
  expect_data_loss(image(entry(R"("shape":[4],"data_offsets":[0,16])"), data), "dtype");
  expect_data_loss(image(R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[0,16])", data),
                   "bad JSON");
  expect_data_loss(image("[1,2]", data), "not an object");
  expect_data_loss(image(R"({"__metadata__":{"a":1}})", data), "__metadata__");
  expect_data_loss(image(R"({"t":5})", data), "tensor 't'");
  {
    Bytes b = image("{}", data);
    const uint64_t huge = ~0ull;
    std::memcpy(b.data(), &huge, 8);
    expect_data_loss(b, "header length");
  }
  {
    // A header length within the file but beyond the 100 MB bound.
    Bytes b(8 + SafetensorsFile::kMaxHeaderBytes + 8, ' ');
    const uint64_t len = SafetensorsFile::kMaxHeaderBytes + 1;
    std::memcpy(b.data(), &len, 8);
    expect_data_loss(b, "header length");
  }
  expect_data_loss(Bytes{1, 2, 3}, "too short");
}

TEST(SafetensorsWriter, RejectsBadEntries) {
  TempDir dir;
  const std::vector<float> v = random_floats(4);
  const auto path = dir.path() / "w.safetensors";
  auto code = [&](std::vector<SafetensorsEntry> e, std::map<std::string, std::string> meta = {}) {
    return model::write_safetensors(path, e, meta).code();
  };
  EXPECT_EQ(code({{"a", DType::kF32, {5}, v}}), StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{"a", DType::kI8, {4}, v}}), StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{"a", DType::kF32, {4}, v}, {"a", DType::kF16, {4}, v}}),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{"__metadata__", DType::kF32, {4}, v}}), StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{"a", DType::kF32, {-4}, v}}), StatusCode::kInvalidArgument);
  EXPECT_EQ(code({{"bad\xff", DType::kF32, {4}, v}}), StatusCode::kInvalidArgument);
  EXPECT_FALSE(std::filesystem::exists(path));
  const Status s = model::write_safetensors(dir.path() / "no" / "such" / "dir.safetensors",
                                            std::vector<SafetensorsEntry>{}, {});
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_NE(s.message().find("dir.safetensors"), std::string::npos);
  // An empty file set is valid.
  ASSERT_TRUE(model::write_safetensors(path, std::vector<SafetensorsEntry>{}, {}).ok());
  auto w = model::open_safetensors(path);
  ASSERT_TRUE(w.ok()) << w.status().message();
  EXPECT_TRUE((*w)->names().empty());
}

}  // namespace
}  // namespace pp::test
