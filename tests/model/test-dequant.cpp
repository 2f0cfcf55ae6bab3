// Dequantization tests: every GGML type pp reads, against gguf-py's numpy dequantizers
// (tests/fixtures/gguf/quants.gguf, written by scripts/make-gguf-fixtures.py: random blocks and
// gguf-py-quantized random data, each next to gguf-py's f32 result). Agreement must be bit-exact.
// Also: the exhaustive f16 -> f32 conversion, block byte counts, and errors for bad sizes.
#include <gtest/gtest.h>

#include <bit>
#include <cstring>
#include <set>

#include "f16-reference.h"
#include "pp/model/gguf.h"
#include "test-util.h"

namespace pp::test {
namespace {

using model::DType;
using model::GgufFile;

TEST(Dequant, MatchesGgufPyBitExact) {
  const auto path = fixture_dir() / "gguf" / "quants.gguf";
  auto f = GgufFile::open(path);
  ASSERT_TRUE(f.ok()) << f.status().message() << " (run scripts/make-gguf-fixtures.py)";
  const GgufFile& file = **f;
  std::set<std::string> seen;
  for (const model::GgufTensor& t : file.tensors()) {
    if (t.name.ends_with(".expected")) continue;
    SCOPED_TRACE(t.name);
    const model::GgufTensor* want_t = file.find_tensor(t.name + ".expected");
    ASSERT_NE(want_t, nullptr);
    ASSERT_EQ(want_t->dtype, DType::kF32);
    ASSERT_EQ(want_t->ne, t.ne);
    EXPECT_EQ(t.name.substr(0, t.name.find('.')), model::dtype_name(t.dtype));
    int64_t n = 1;
    for (int64_t d : t.ne) n *= d;
    std::vector<float> got(static_cast<size_t>(n)), want(static_cast<size_t>(n));
    ASSERT_TRUE(file.read_f32(t, got).ok());
    ASSERT_TRUE(file.read_f32(*want_t, want).ok());
    int64_t bad = -1;
    for (int64_t i = 0; i < n && bad < 0; ++i) {
      if (std::bit_cast<uint32_t>(got[size_t(i)]) != std::bit_cast<uint32_t>(want[size_t(i)])) {
        bad = i;
      }
    }
    EXPECT_EQ(bad, -1) << "first difference at element " << bad << ": got "
                       << (bad >= 0 ? got[size_t(bad)] : 0) << ", gguf-py "
                       << (bad >= 0 ? want[size_t(bad)] : 0);
    // The same bytes through the public row entry point, one row at a time.
    const int64_t cols = t.ne[0];
    const uint64_t row_bytes = *model::ggml_type_bytes(t.dtype, cols);
    const std::span<const uint8_t> bytes = file.tensor_bytes(t);
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = 0; r < n / cols; ++r) {
      ASSERT_TRUE(
          model::dequantize_row(t.dtype, bytes.data() + r * row_bytes, row.data(), cols).ok());
      EXPECT_EQ(std::memcmp(row.data(), want.data() + r * cols, size_t(cols) * 4), 0);
    }
    seen.insert(t.name);
  }
  for (const char* name :
       {"Q4_0.rand", "Q4_1.rand", "Q5_0.rand", "Q5_1.rand", "Q8_0.rand", "Q2_K.rand", "Q3_K.rand",
        "Q4_K.rand", "Q5_K.rand", "Q6_K.rand", "F32.quant", "F16.quant", "BF16.quant", "Q4_0.quant",
        "Q4_1.quant", "Q5_0.quant", "Q5_1.quant", "Q8_0.quant"}) {
    EXPECT_TRUE(seen.count(name)) << "fixture lacks " << name;
  }
}

TEST(Dequant, EveryF16Value) {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < all.size(); ++i) all[i] = uint16_t(i);
  std::vector<float> out(all.size());
  ASSERT_TRUE(model::dequantize_row(DType::kF16, reinterpret_cast<const uint8_t*>(all.data()),
                                    out.data(), int64_t(all.size()))
                  .ok());
  for (uint32_t i = 0; i < all.size(); ++i) {
    const float want = f16_reference_value(all[i]);
    if (std::isnan(want)) {
      EXPECT_TRUE(std::isnan(out[i])) << i;
    } else {
      EXPECT_EQ(std::bit_cast<uint32_t>(out[i]), std::bit_cast<uint32_t>(want)) << i;
    }
  }
}

TEST(Dequant, Bf16AndPlainTypes) {
  const std::vector<float> src = random_floats(64, -100.0f, 100.0f);
  std::vector<uint16_t> bf(src.size());
  std::vector<float> want(src.size());
  for (size_t i = 0; i < src.size(); ++i) {
    bf[i] = uint16_t(std::bit_cast<uint32_t>(src[i]) >> 16);
    want[i] = std::bit_cast<float>(uint32_t(bf[i]) << 16);
  }
  std::vector<float> out(src.size());
  ASSERT_TRUE(model::dequantize_row(DType::kBF16, reinterpret_cast<const uint8_t*>(bf.data()),
                                    out.data(), int64_t(out.size()))
                  .ok());
  EXPECT_EQ(first_mismatch(out, want, 0, 0), -1);

  std::vector<int32_t> ints(src.size());
  for (size_t i = 0; i < src.size(); ++i) ints[i] = int32_t(src[i] * 1000);
  ASSERT_TRUE(model::dequantize_row(DType::kI32, reinterpret_cast<const uint8_t*>(ints.data()),
                                    out.data(), int64_t(out.size()))
                  .ok());
  for (size_t i = 0; i < src.size(); ++i) EXPECT_EQ(out[i], float(ints[i]));
}

TEST(Dequant, BlockSizesAndErrors) {
  EXPECT_EQ(*model::ggml_type_bytes(DType::kQ4_1, 576), 576u / 32 * 20);
  EXPECT_EQ(*model::ggml_type_bytes(DType::kQ8_0, 64), 68u);
  EXPECT_EQ(*model::ggml_type_bytes(DType::kQ6_K, 512), 420u);
  EXPECT_EQ(*model::ggml_type_bytes(DType::kQ3_K, 256), 110u);
  EXPECT_EQ(*model::ggml_type_bytes(DType::kF16, 3), 6u);
  EXPECT_EQ(model::ggml_block_size(DType::kQ5_K), 256);
  EXPECT_EQ(model::ggml_block_size(DType::kBF16), 1);
  EXPECT_EQ(model::ggml_type_bytes(DType::kQ4_0, 33).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(model::ggml_type_bytes(DType::kQ4_K, -256).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(model::ggml_type_bytes(DType::kF64, int64_t(1) << 62).status().code(),
            StatusCode::kDataLoss);
  EXPECT_EQ(model::ggml_type_bytes(DType::kBool, 4).status().code(), StatusCode::kUnimplemented);
  uint8_t block[34] = {};
  float out[32];
  EXPECT_EQ(model::dequantize_row(DType::kQ8_0, block, out, 31).code(), StatusCode::kDataLoss);
  EXPECT_EQ(model::dequantize_row(DType::kU8, block, out, 4).code(), StatusCode::kUnimplemented);
}

}  // namespace
}  // namespace pp::test
