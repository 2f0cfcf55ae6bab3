// The linear layer on the GPU through cuBLASLt: y = x W^T (+ bias), bf16 in and out, f32
// compute, weights in Hugging Face [out, in] row-major layout (the CUDA twin of cpu::matmul).
// Included only by kernels/ and GPU tests: it names CUDA types.
//
// Blas owns the cuBLASLt handle and its workspace, and caches the matmul descriptors and the
// chosen algorithm of each shape it has seen in a fixed table, so a call on a known shape
// allocates nothing and queries nothing. One Blas per stream-owning thread: it is not
// thread-safe. Not batch-invariant: cuBLAS picks algorithms (tile shapes, split-k) by m, so a
// row's result can change in the last bits with the batch size, unlike cpu::matmul.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "pp/status.h"

namespace pp::kernels::cuda {

struct LinearParams {
  const __nv_bfloat16* x = nullptr;     // [m, k]
  const __nv_bfloat16* w = nullptr;     // [n, k]
  const __nv_bfloat16* bias = nullptr;  // [n] or nullptr
  __nv_bfloat16* out = nullptr;         // [m, n]
  int64_t m = 0, n = 0, k = 0;
};

class Blas {
 public:
  static constexpr size_t kDefaultWorkspaceBytes = size_t(32) << 20;
  static constexpr int kMaxShapes = 64;

  // Creates the handle and allocates the workspace on the current device.
  static Result<std::unique_ptr<Blas>> create(size_t workspace_bytes = kDefaultWorkspaceBytes);
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  // out = x w^T (+ bias) on `stream`. The first call of a shape builds its descriptors and
  // asks cuBLASLt for an algorithm; later calls reuse them. Errors: kInvalidArgument for bad
  // sizes, kResourceExhausted when the shape table is full, kInternal for cuBLAS failures.
  Status linear(const LinearParams& p, cudaStream_t stream);

 private:
  struct Plan {
    int64_t m = 0, n = 0, k = 0;
    bool bias = false;
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  Blas() = default;
  Result<Plan*> plan_for(const LinearParams& p);

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::array<Plan, kMaxShapes> plans_{};
  int n_plans_ = 0;
};

}  // namespace pp::kernels::cuda
