// Dequantization of GGML block formats to f32, bit-exact with ggml's reference dequantizers and
// gguf-py's numpy ones (tests/fixtures/gguf holds gguf-py's output). Each block format is a fixed
// number of bytes for a fixed number of elements; the layouts below follow ggml-common.h. The
// formats the CPU backend keeps quantized (Q4_0 ... Q8_0, Q4_K ... Q6_K) dequantize in
// kernels/src/gguf-blocks.cpp, which their matmul kernels share.
//
// Bit-exactness needs every product rounded to f32 before the following add, exactly as numpy
// evaluates `d * q + m`; the build targets FMA hardware, so contraction is turned off here.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <cstring>

#include "pp/kernels/float-convert.h"
#include "pp/kernels/gguf-blocks.h"
#include "pp/model/gguf.h"
#include "weights/ggml-types.h"

namespace pp::model {
namespace detail {
using kernels::bf16_to_f32;
using kernels::f16_to_f32;
using kernels::load_u16;
using kernels::load_u32;
namespace {

struct TypeRow {
  uint32_t id;
  const char* name;
  std::optional<DType> dtype;
  GgmlBlock block;
};

constexpr int kQKK = 256;  // elements per super-block of the K formats

const TypeRow kTypes[] = {
    {0, "F32", DType::kF32, {1, 4}},        {1, "F16", DType::kF16, {1, 2}},
    {2, "Q4_0", DType::kQ4_0, {32, 18}},    {3, "Q4_1", DType::kQ4_1, {32, 20}},
    {6, "Q5_0", DType::kQ5_0, {32, 22}},    {7, "Q5_1", DType::kQ5_1, {32, 24}},
    {8, "Q8_0", DType::kQ8_0, {32, 34}},    {9, "Q8_1", std::nullopt, {}},
    {10, "Q2_K", DType::kQ2_K, {256, 84}},  {11, "Q3_K", DType::kQ3_K, {256, 110}},
    {12, "Q4_K", DType::kQ4_K, {256, 144}}, {13, "Q5_K", DType::kQ5_K, {256, 176}},
    {14, "Q6_K", DType::kQ6_K, {256, 210}}, {15, "Q8_K", std::nullopt, {}},
    {16, "IQ2_XXS", std::nullopt, {}},      {17, "IQ2_XS", std::nullopt, {}},
    {18, "IQ3_XXS", std::nullopt, {}},      {19, "IQ1_S", std::nullopt, {}},
    {20, "IQ4_NL", std::nullopt, {}},       {21, "IQ3_S", std::nullopt, {}},
    {22, "IQ2_S", std::nullopt, {}},        {23, "IQ4_XS", std::nullopt, {}},
    {24, "I8", DType::kI8, {1, 1}},         {25, "I16", DType::kI16, {1, 2}},
    {26, "I32", DType::kI32, {1, 4}},       {27, "I64", DType::kI64, {1, 8}},
    {28, "F64", DType::kF64, {1, 8}},       {29, "IQ1_M", std::nullopt, {}},
    {30, "BF16", DType::kBF16, {1, 2}},     {31, "Q4_0_4_4", std::nullopt, {}},
    {32, "Q4_0_4_8", std::nullopt, {}},     {33, "Q4_0_8_8", std::nullopt, {}},
    {34, "TQ1_0", std::nullopt, {}},        {35, "TQ2_0", std::nullopt, {}},
    {39, "MXFP4", std::nullopt, {}},
};

const TypeRow* row_for_id(uint32_t id) {
  for (const TypeRow& r : kTypes) {
    if (r.id == id) return &r;
  }
  return nullptr;
}

// K formats: 256-element super-blocks of 16 or 8 sub-blocks, each with its own scale.

// Q2_K: scales[16] (low nibble scale, high nibble min), qs[64] (2 bits), d, dmin.
// Element j*128 + k*32 + l is bits 2k..2k+1 of qs[j*32 + l]; its sub-block is the index / 16.
void dequant_q2_k(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* qs = b + 16;
  const float d = f16_to_f32(load_u16(b + 80));
  const float dmin = f16_to_f32(load_u16(b + 82));
  for (int i = 0; i < kQKK; ++i) {
    const int j = i / 128, k = (i / 32) % 4, l = i % 32;
    const int q = (qs[j * 32 + l] >> (2 * k)) & 3;
    const uint8_t sc = scales[i / 16];
    const float dl = d * float(sc & 0x0f);
    const float ml = dmin * float(sc >> 4);
    y[i] = dl * float(q) - ml;
  }
}

// Q3_K: hmask[32], qs[64], scales[12] (sixteen 6-bit signed scales, offset 32), d.
// Element i: low 2 bits as in Q2_K, and 4 is subtracted unless bit i/32 of hmask[i % 32] is set.
void dequant_q3_k(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* sc = b + 96;
  const float d = f16_to_f32(load_u16(b + 108));
  float dl[16];
  for (int s = 0; s < 16; ++s) {
    const int lo = s < 8 ? (sc[s] & 0x0f) : (sc[s - 8] >> 4);
    const int hi = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
    const int scale = int(int8_t(uint8_t(lo | hi << 4))) - 32;
    dl[s] = d * float(scale);
  }
  for (int i = 0; i < kQKK; ++i) {
    const int j = i / 128, k = (i / 32) % 4, l = i % 32;
    const int low = (qs[j * 32 + l] >> (2 * k)) & 3;
    const int high_set = (hmask[l] >> (i / 32)) & 1;
    y[i] = dl[i / 16] * float(low - (high_set ? 0 : 4));
  }
}

template <typename T>
void convert_plain(const uint8_t* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    T v;
    std::memcpy(&v, src + i * int64_t(sizeof(T)), sizeof(T));
    dst[i] = static_cast<float>(v);
  }
}

template <void (*kBlock)(const uint8_t*, float*)>
void dequant_blocks(const uint8_t* src, float* dst, int64_t n, GgmlBlock blk) {
  const int64_t nb = n / blk.elems;
  for (int64_t i = 0; i < nb; ++i) kBlock(src + i * blk.bytes, dst + i * blk.elems);
}

}  // namespace

std::optional<DType> dtype_from_ggml(uint32_t ggml_type) {
  const TypeRow* r = row_for_id(ggml_type);
  return r ? r->dtype : std::nullopt;
}

std::optional<uint32_t> ggml_from_dtype(DType t) {
  for (const TypeRow& r : kTypes) {
    if (r.dtype == t) return r.id;
  }
  return std::nullopt;
}

const char* ggml_type_name(uint32_t ggml_type) {
  const TypeRow* r = row_for_id(ggml_type);
  return r ? r->name : nullptr;
}

GgmlBlock ggml_block(DType t) {
  for (const TypeRow& r : kTypes) {
    if (r.dtype == t) return r.block;
  }
  return {};
}

}  // namespace detail

int64_t ggml_block_size(DType t) { return detail::ggml_block(t).elems; }

std::optional<kernels::WeightFormat> block_weight_format(DType t) {
  using kernels::WeightFormat;
  switch (t) {
    case DType::kQ4_0:
      return WeightFormat::kQ4_0;
    case DType::kQ4_1:
      return WeightFormat::kQ4_1;
    case DType::kQ5_0:
      return WeightFormat::kQ5_0;
    case DType::kQ5_1:
      return WeightFormat::kQ5_1;
    case DType::kQ8_0:
      return WeightFormat::kQ8_0;
    case DType::kQ4_K:
      return WeightFormat::kQ4_K;
    case DType::kQ5_K:
      return WeightFormat::kQ5_K;
    case DType::kQ6_K:
      return WeightFormat::kQ6_K;
    default:
      return std::nullopt;
  }
}

Result<uint64_t> ggml_type_bytes(DType t, int64_t n) {
  const detail::GgmlBlock blk = detail::ggml_block(t);
  if (blk.elems == 0) return unimplemented("type {} has no GGML layout", dtype_name(t));
  if (n < 0 || n % blk.elems != 0) {
    return data_loss("{} elements are not a whole number of {} blocks of {}", n, dtype_name(t),
                     blk.elems);
  }
  const uint64_t blocks = uint64_t(n / blk.elems);
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(blocks, uint64_t(blk.bytes), &bytes)) {
    return data_loss("{} elements of {} overflow a 64-bit byte count", n, dtype_name(t));
  }
  return bytes;
}

Status dequantize_row(DType t, const uint8_t* src, float* dst, int64_t n) {
  using namespace detail;
  const GgmlBlock blk = ggml_block(t);
  if (blk.elems == 0) return unimplemented("cannot dequantize type {}", dtype_name(t));
  if (n < 0 || n % blk.elems != 0) {
    return data_loss("{} elements are not a whole number of {} blocks of {}", n, dtype_name(t),
                     blk.elems);
  }
  if (n == 0) return ok_status();
  switch (t) {
    case DType::kF32:
      std::memcpy(dst, src, size_t(n) * sizeof(float));
      break;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = f16_to_f32(load_u16(src + 2 * i));
      break;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(load_u16(src + 2 * i));
      break;
    case DType::kF64:
      convert_plain<double>(src, dst, n);
      break;
    case DType::kI8:
      convert_plain<int8_t>(src, dst, n);
      break;
    case DType::kI16:
      convert_plain<int16_t>(src, dst, n);
      break;
    case DType::kI32:
      convert_plain<int32_t>(src, dst, n);
      break;
    case DType::kI64:
      convert_plain<int64_t>(src, dst, n);
      break;
    case DType::kQ4_0:
      kernels::dequantize_blocks(kernels::WeightFormat::kQ4_0, src, dst, n);
      break;
    case DType::kQ4_1:
      kernels::dequantize_blocks(kernels::WeightFormat::kQ4_1, src, dst, n);
      break;
    case DType::kQ5_0:
      kernels::dequantize_blocks(kernels::WeightFormat::kQ5_0, src, dst, n);
      break;
    case DType::kQ5_1:
      kernels::dequantize_blocks(kernels::WeightFormat::kQ5_1, src, dst, n);
      break;
    case DType::kQ8_0:
      kernels::dequantize_blocks(kernels::WeightFormat::kQ8_0, src, dst, n);
      break;
    case DType::kQ2_K:
      dequant_blocks<dequant_q2_k>(src, dst, n, blk);
      break;
    case DType::kQ3_K:
      dequant_blocks<dequant_q3_k>(src, dst, n, blk);
      break;
    case DType::kQ4_K:
      kernels::dequantize_blocks(kernels::WeightFormat::kQ4_K, src, dst, n);
      break;
    case DType::kQ5_K:
      kernels::dequantize_blocks(kernels::WeightFormat::kQ5_K, src, dst, n);
      break;
    case DType::kQ6_K:
      kernels::dequantize_blocks(kernels::WeightFormat::kQ6_K, src, dst, n);
      break;
    case DType::kU8:
    case DType::kBool:
    case DType::kF8E4M3:
      return unimplemented("cannot dequantize type {}", dtype_name(t));
  }
  return ok_status();
}

}  // namespace pp::model
