// GPU test (label gpu): the decode GEMV's SwiGLU epilogue (gemv.h) against the separate kernels
// it replaces (gemv over the gate|up rows, then swiglu), bitwise (a row's sum is added in the
// same order in both; gate and up are rounded to bf16 before silu as the stored gate|up is), on
// fresh random inputs, for bf16 weights and fp8 weights of every scale kind, every m up to 8,
// odd output counts, with and without bias, launched ordinarily and as programmatic dependents
// chained behind rms_norm (the order of a decode layer). Blas::linear refuses the fusion beyond
// the GEMV (m > 8).
#include <gtest/gtest.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <random>

#include "cuda-test-util.h"
#include "pp/kernels/cuda/gemv.h"
#include "pp/kernels/cuda/linear.h"
#include "pp/kernels/cuda/rms-norm.h"
#include "pp/kernels/cuda/swiglu.h"
#include "pp/kernels/host-weight.h"
#include "test-util.h"

namespace {

using pp::kernels::HostWeight;
using pp::kernels::ScaleKind;
using pp::kernels::WeightFormat;
namespace ck = pp::kernels::cuda;
using pp::test::DeviceBuffer;

// A weight [rows, k] on the device in `format` (fp8: quantized with `kind`), with its scales.
struct TestWeight {
  DeviceBuffer<uint8_t> bytes;
  DeviceBuffer<float> scales;
  WeightFormat format = WeightFormat::kBF16;
  ScaleKind kind = ScaleKind::kNone;

  TestWeight(const std::vector<float>& w, int64_t rows, int64_t k, WeightFormat f, ScaleKind sk)
      : format(f), kind(sk) {
    if (f == WeightFormat::kBF16) {
      const auto b = pp::test::to_bf16(w);
      std::vector<uint8_t> raw(b.size() * 2);
      std::memcpy(raw.data(), b.data(), raw.size());
      bytes = DeviceBuffer<uint8_t>(raw);
      return;
    }
    const HostWeight q = HostWeight::quantize_fp8(w, rows, k, sk);
    bytes = DeviceBuffer<uint8_t>(std::vector<uint8_t>(
        reinterpret_cast<const uint8_t*>(q.bytes().data()),
        reinterpret_cast<const uint8_t*>(q.bytes().data()) + q.bytes().size()));
    scales = DeviceBuffer<float>(std::vector<float>(q.scales().begin(), q.scales().end()));
  }
  ck::GemvParams params() const {
    ck::GemvParams p;
    p.w = bytes.get();
    p.format = format;
    p.scale_kind = kind;
    p.scales = kind == ScaleKind::kNone ? nullptr : scales.get();
    return p;
  }
};

struct Case {
  WeightFormat format;
  ScaleKind kind;
};

class CudaGemvFused : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    if (!pp::test::have_gpu()) GTEST_SKIP() << "no GPU";
    PP_CUDA_OK(cudaStreamCreate(&stream_));
  }
  void TearDown() override {
    if (stream_) cudaStreamDestroy(stream_);
  }
  cudaStream_t stream_ = nullptr;
};

TEST_P(CudaGemvFused, MatchesTheSeparateKernels) {
  const Case c = GetParam();
  const bool block = c.kind == ScaleKind::kBlock128x128;
  std::uniform_int_distribution<int64_t> pick_n(1, 300), pick_kv(1, 40), pick_kb(1, 4);
  for (int64_t m = 1; m <= ck::kGemvMaxM; ++m) {
    for (int variant = 0; variant < 4; ++variant) {
      const bool bias = variant & 1, programmatic = variant & 2;
      // Block scales: n and k multiples of 128 sometimes, not always (partial blocks).
      const int64_t n =
          block && variant == 0 ? 128 * pick_kb(pp::test::rng()) : pick_n(pp::test::rng());
      const int64_t k = block ? 128 * pick_kb(pp::test::rng()) - (variant == 1 ? 16 : 0)
                              : 16 * pick_kv(pp::test::rng());
      SCOPED_TRACE(testing::Message()
                   << "format=" << pp::kernels::weight_format_name(c.format)
                   << " scales=" << pp::kernels::scale_kind_name(c.kind) << " m=" << m << " n=" << n
                   << " k=" << k << " bias=" << bias << " programmatic=" << programmatic);
      // The residual stream h, the norm weight, the gate|up weight.
      const auto h = pp::test::round_bf16(pp::test::random_floats(size_t(m * k), -20, 20));
      const auto g = pp::test::round_bf16(pp::test::random_floats(size_t(k), 0.5, 1.5));
      const auto w = pp::test::round_bf16(pp::test::random_floats(size_t(2 * n * k), -0.1, 0.1));
      const auto b = pp::test::round_bf16(pp::test::random_floats(size_t(2 * n), -1, 1));
      const TestWeight tw(w, 2 * n, k, c.format, c.kind);
      auto dh = pp::test::upload_bf16(h);
      auto dg = pp::test::upload_bf16(g);
      auto db = pp::test::upload_bf16(b);
      DeviceBuffer<__nv_bfloat16> dx(size_t(m * k)), dgu(size_t(m * 2 * n)), dact(size_t(m * n)),
          dfused_act(size_t(m * n));
      dfused_act.fill_bytes(0xff);
      const float eps = 1e-5f;

      // The separate kernels: rms_norm, gemv over the 2n rows, swiglu.
      ASSERT_EQ(
          ck::rms_norm(
              {.x = dh.get(), .weight = dg.get(), .out = dx.get(), .n_rows = m, .n = k, .eps = eps},
              stream_),
          cudaSuccess);
      ck::GemvParams base = tw.params();
      base.bias = bias ? db.get() : nullptr;
      base.m = m;
      base.k = k;
      base.programmatic = programmatic;
      ck::GemvParams sep = base;
      sep.x = dx.get();
      sep.out = dgu.get();
      sep.n = 2 * n;
      ASSERT_EQ(ck::gemv(sep, stream_), cudaSuccess);
      ASSERT_EQ(
          ck::swiglu({.gate_up = dgu.get(), .out = dact.get(), .n_tokens = m, .n_ff = n}, stream_),
          cudaSuccess);

      // The fused GEMV: bitwise.
      ck::GemvParams sw = base;
      sw.x = dx.get();
      sw.swiglu = true;
      sw.out = dfused_act.get();
      sw.n = n;
      ASSERT_EQ(ck::gemv(sw, stream_), cudaSuccess);
      PP_CUDA_OK(cudaStreamSynchronize(stream_));
      const auto act = pp::test::download_f32(dact);
      const auto act_sw = pp::test::download_f32(dfused_act);
      for (size_t i = 0; i < act.size(); ++i) {
        ASSERT_EQ(std::memcmp(&act[i], &act_sw[i], 4), 0)
            << "swiglu epilogue at " << i << ": " << act_sw[i] << " against " << act[i];
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, CudaGemvFused,
                         ::testing::Values(Case{WeightFormat::kBF16, ScaleKind::kNone},
                                           Case{WeightFormat::kFp8E4M3, ScaleKind::kPerTensor},
                                           Case{WeightFormat::kFp8E4M3, ScaleKind::kPerChannel},
                                           Case{WeightFormat::kFp8E4M3, ScaleKind::kBlock128x128}),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           // Test names take letters, digits and underscores only.
                           std::string name = i.param.format == WeightFormat::kBF16
                                                  ? std::string("bf16")
                                                  : std::string("fp8_") +
                                                        pp::kernels::scale_kind_name(i.param.kind);
                           for (char& ch : name) {
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return name;
                         });

// Beyond the GEMV a fused call is refused, not run unfused or half-fused.
TEST(CudaGemvFusedRefusal, BlasRefusesFusionsBeyondTheGemv) {
  if (!pp::test::have_gpu()) GTEST_SKIP() << "no GPU";
  auto blas = ck::Blas::create();
  ASSERT_TRUE(blas.ok()) << blas.status().message();
  const int64_t m = 9, n = 64, k = 128;
  auto x = pp::test::upload_bf16(pp::test::round_bf16(pp::test::random_floats(m * k, -1, 1)));
  auto w = pp::test::upload_bf16(pp::test::round_bf16(pp::test::random_floats(2 * n * k, -1, 1)));
  DeviceBuffer<__nv_bfloat16> y(size_t(m * 2 * n));
  ck::LinearParams p{.x = x.get(), .w = w.get(), .out = y.get(), .m = m, .n = n, .k = k};
  p.swiglu = true;
  const pp::Status st = (*blas)->linear(p, nullptr);
  EXPECT_EQ(st.code(), pp::StatusCode::kInvalidArgument) << st.message();
  EXPECT_FALSE((*blas)->path_for(p).ok());
}

}  // namespace
