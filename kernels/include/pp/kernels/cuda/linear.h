// The linear layer on the GPU through cuBLASLt: y = x W^T (+ bias), bf16 in and out, f32
// compute, weights in Hugging Face [out, in] row-major layout (the CUDA twin of cpu::matmul).
// Included only by kernels/ and GPU tests: it names CUDA types.
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
#include <memory>
#include <unordered_map>

#include "pp/status.h"

namespace pp::kernels::cuda {

struct LinearParams {
  const __nv_bfloat16* x = nullptr;     // [m, k]
  const __nv_bfloat16* w = nullptr;     // [n, k]
  const __nv_bfloat16* bias = nullptr;  // [n] or nullptr
  __nv_bfloat16* out = nullptr;         // [m, n] bf16, or
  float* out_f32 = nullptr;             // [m, n] f32 (set one of the two)
  int64_t m = 0, n = 0, k = 0;
  bool accumulate = false;  // out += x w^T (+ bias) instead of out =
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

 private:
  struct Plan {
    int64_t m = 0, n = 0, k = 0;
    bool bias = false, f32 = false, accumulate = false;
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  Blas() = default;
  Result<Plan*> plan_for(const LinearParams& p);
  void clear_plans();

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::unordered_map<uint64_t, std::unique_ptr<Plan>> plans_;  // by shape_key
};

}  // namespace pp::kernels::cuda
