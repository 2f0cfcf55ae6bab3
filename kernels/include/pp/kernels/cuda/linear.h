// The linear layer on the GPU: y = x W^T (+ bias), bf16 in and out, f32 compute, weights in
// Hugging Face [out, in] row-major layout (the CUDA twin of cpu::matmul), dispatched on the
// weight's format: bf16 through cuBLASLt; fp8 e4m3 (with per-tensor, per-channel or 128x128
// block scales) through the fp8 GEMV for m <= 8 and cuBLASLt's scaled fp8 GEMM on activations
// quantized per token (fp8.h) beyond, with fallbacks where cuBLASLt refuses a variant (each
// LinearPath below). Included only by kernels/ and GPU tests: it names CUDA types.
//
// Blas owns the cuBLASLt handle and its workspace, and caches the matmul descriptors and the
// chosen algorithm of each shape it has seen, so a call on a known shape allocates nothing and
// queries nothing (prefill chunks of many sizes grow the cache; it is cleared when it holds
// kMaxShapes). One Blas per stream-owning thread: it is not
// thread-safe. Not batch-invariant: cuBLAS picks algorithms (tile shapes, split-k) by m, so a
// row's result can change in the last bits with the batch size, unlike cpu::matmul.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>

#include "pp/kernels/gpu.h"
#include "pp/kernels/weight.h"
#include "pp/status.h"

namespace pp::kernels::cuda {

using gpu::LinearPath;

struct LinearParams {
  const __nv_bfloat16* x = nullptr;     // [m, k]
  const void* w = nullptr;              // [n, k] in `format`
  const __nv_bfloat16* bias = nullptr;  // [n] or nullptr
  __nv_bfloat16* out = nullptr;         // [m, n] bf16, or
  float* out_f32 = nullptr;             // [m, n] f32 (set one of the two)
  int64_t m = 0, n = 0, k = 0;
  bool accumulate = false;                    // out += x w^T (+ bias) instead of out =
  WeightFormat format = WeightFormat::kBF16;  // kBF16 or kFp8E4M3
  ScaleKind scale_kind = ScaleKind::kNone;    // fp8: kPerTensor, kPerChannel or kBlock128x128
  const float* scales = nullptr;              // fp8: scale_count(scale_kind, n, k) floats
  // GEMV paths only (gemv.h): out[m, n] = silu(gate) * up of a gate|up weight of 2n rows.
  // Elsewhere kInvalidArgument.
  bool swiglu = false;
};

// The most of each dimension an fp8 linear beyond the GEMV will see (Blas::reserve_fp8).
struct Fp8Reserve {
  int64_t max_m = 0, max_n = 0, max_k = 0;
  // Elements of the largest fp8 weight, for the dequantizing fallback (0: no such fallback).
  int64_t max_weight_elems = 0;
};

class Blas {
 public:
  static constexpr size_t kDefaultWorkspaceBytes = size_t(32) << 20;
  static constexpr int kMaxShapes = 4096;

  // Creates the handle and allocates the workspace on the current device.
  static Result<std::unique_ptr<Blas>> create(size_t workspace_bytes = kDefaultWorkspaceBytes);
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  // out = x w^T (+ bias) on `stream`. The first call of a shape builds its descriptors and
  // asks cuBLASLt for an algorithm; later calls reuse them. Errors: kInvalidArgument for bad
  // sizes, kInternal for cuBLAS failures.
  Status linear(const LinearParams& p, cudaStream_t stream);

  // Reserves the device scratch fp8 linears with m > kFp8GemvMaxM need (activations quantized
  // per token and their scales, expanded weight scales, the f32 rows of the epilogue fallback,
  // the dequantized weight of the last fallback). Until then such calls fail with
  // kFailedPrecondition; linear itself never allocates device memory (graph capture).
  Status reserve_fp8(const Fp8Reserve& r);
  // The path linear(p) takes (planning it, as the first call of a shape does).
  Result<LinearPath> path_for(const LinearParams& p);
  // Called once for each fp8 shape and variant planned, with a line naming its path.
  void set_log(std::function<void(const std::string&)> log) { log_ = std::move(log); }
  // Off: no activation quantization; fp8 linears beyond the GEMV take the dequantizing fallback
  // (gpu::Blas::set_fp8_activations). Clears the plans made so far.
  void set_fp8_activations(bool on) {
    fp8_activations_ = on;
    clear_plans();
  }

  // On (the default on sm_90 and later, where it exists): the GEMV is launched as a programmatic
  // dependent of the kernel before it (gemv.h). Off: ordinary launches, for comparison.
  void set_programmatic_launch(bool on) { programmatic_ = on && programmatic_supported_; }

  // Rows of one cuBLASLt call on the epilogue fallback (its f32 scratch is this many rows).
  static constexpr int64_t kEpilogueRows = 256;

 private:
  struct Plan {
    int64_t m = 0, n = 0, k = 0;
    bool bias = false, f32 = false, accumulate = false;
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  // One fp8 shape's decision: its path and, for the cuBLASLt paths, the plans of its chunks.
  struct Fp8Plan {
    LinearPath path = LinearPath::kFp8Dequant;
    Plan* full = nullptr;  // kFp8Lt: all m rows; the epilogue paths: kEpilogueRows rows
    Plan* tail = nullptr;  // the epilogue paths: the last m % kEpilogueRows rows
    // The epilogue paths: each chunk's rows padded to a multiple of 16 (zero activations) for
    // cuBLASLt, which refuses 128x128 block scales at other row counts (H100, CUDA 13).
    bool padded = false;
  };
  using Fp8Key = std::tuple<int64_t, int64_t, int64_t, int, int>;  // m n k kind flags

  Blas() = default;
  Result<Plan*> plan_for(const LinearParams& p);
  // A cuBLASLt scaled fp8 plan, or nullptr when cuBLASLt has no algorithm for it.
  Result<Plan*> fp8_lt_plan(int64_t m, int64_t n, int64_t k, ScaleKind kind, bool bias, bool f32,
                            bool accumulate);
  Result<Fp8Plan> fp8_plan_for(const LinearParams& p);
  Status fp8_lt_run(const LinearParams& p, const Fp8Plan& fp, cudaStream_t stream);
  Status bf16_run(const LinearParams& p, cudaStream_t stream);
  // cuBLASLt's first choice of algorithm for pl's descriptor and layouts within the workspace:
  // CUBLAS_STATUS_NOT_SUPPORTED when it has none.
  cublasStatus_t heuristic_algo(Plan* pl);
  void clear_plans();
  void log(const std::string& line) {
    if (log_) log_(line);
  }

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::unordered_map<uint64_t, std::unique_ptr<Plan>> plans_;  // by shape_key
  std::map<Fp8Key, std::unique_ptr<Plan>> fp8_lt_plans_;
  std::map<Fp8Key, Fp8Plan> fp8_plans_;
  std::set<std::tuple<int64_t, int64_t, int64_t, int>> gemv_logged_;
  std::function<void(const std::string&)> log_;
  bool fp8_activations_ = true;
  bool programmatic_supported_ = false, programmatic_ = false;

  // fp8 scratch (reserve_fp8), one allocation.
  Fp8Reserve fp8_reserved_;
  void* fp8_scratch_ = nullptr;
  uint8_t* act_q_ = nullptr;            // [max_m, max_k] fp8
  float* act_scales_ = nullptr;         // [max_m * ceil(max_k / 128)]
  float* w_scales_ = nullptr;           // expanded or padded weight scales
  float* acc_ = nullptr;                // [kEpilogueRows, max_n] f32
  __nv_bfloat16* w_dequant_ = nullptr;  // [max_weight_elems]
};

}  // namespace pp::kernels::cuda
