// cuBLASLt behind Blas::linear. Row-major y[m, n] = x[m, k] W[n, k]^T is, in cuBLAS's
// column-major terms, Y^T (n x m) = op(A) B with A = W viewed as k x n (transposed by op) and
// B = X^T viewed as k x m: no copies, no transposes in memory. The bias rides on the
// BIAS epilogue. Descriptors and the heuristic's first algorithm are cached per shape.
#include "pp/kernels/cuda/linear.h"

namespace pp::kernels::cuda {
namespace {

Status blas_error(const char* what, cublasStatus_t s) {
  return internal_error("cublasLt {}: {}", what, cublasGetStatusString(s));
}

}  // namespace

Result<std::unique_ptr<Blas>> Blas::create(size_t workspace_bytes) {
  std::unique_ptr<Blas> b(new Blas());
  cublasStatus_t s = cublasLtCreate(&b->handle_);
  if (s != CUBLAS_STATUS_SUCCESS) return blas_error("create", s);
  if (workspace_bytes > 0) {
    const cudaError_t err = cudaMalloc(&b->workspace_, workspace_bytes);
    if (err != cudaSuccess) {
      return make_error(StatusCode::kResourceExhausted,
                        "cannot allocate the cublasLt workspace: {}", cudaGetErrorString(err));
    }
  }
  b->workspace_bytes_ = workspace_bytes;
  return b;
}

void Blas::clear_plans() {
  for (auto& [key, pl] : plans_) {
    cublasLtMatrixLayoutDestroy(pl->a);
    cublasLtMatrixLayoutDestroy(pl->b);
    cublasLtMatrixLayoutDestroy(pl->c);
    cublasLtMatmulDescDestroy(pl->op);
  }
  plans_.clear();
}

Blas::~Blas() {
  clear_plans();
  if (workspace_) cudaFree(workspace_);
  if (handle_) cublasLtDestroy(handle_);
}

Result<Blas::Plan*> Blas::plan_for(const LinearParams& p) {
  const bool bias = p.bias != nullptr, f32 = p.out_f32 != nullptr;
  // m, n, k < 2^20 each (checked by linear), three flags.
  const uint64_t key = (uint64_t(p.m) << 43) | (uint64_t(p.n) << 23) | (uint64_t(p.k) << 3) |
                       (uint64_t(bias) << 2) | (uint64_t(f32) << 1) | uint64_t(p.accumulate);
  if (auto it = plans_.find(key); it != plans_.end()) return it->second.get();
  if (int(plans_.size()) >= kMaxShapes) clear_plans();
  Plan pl;
  pl.m = p.m;
  pl.n = p.n;
  pl.k = p.k;
  pl.bias = bias;
  pl.f32 = f32;
  pl.accumulate = p.accumulate;
  auto fail = [&](const char* what, cublasStatus_t s) {
    if (pl.a) cublasLtMatrixLayoutDestroy(pl.a);
    if (pl.b) cublasLtMatrixLayoutDestroy(pl.b);
    if (pl.c) cublasLtMatrixLayoutDestroy(pl.c);
    if (pl.op) cublasLtMatmulDescDestroy(pl.op);
    return blas_error(what, s);
  };
  cublasStatus_t s = cublasLtMatmulDescCreate(&pl.op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  if (s != CUBLAS_STATUS_SUCCESS) return fail("matmul descriptor", s);
  const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(pl.op, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a));
  cublasLtMatmulDescSetAttribute(pl.op, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b));
  if (bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    const cudaDataType_t bias_type = CUDA_R_16BF;
    cublasLtMatmulDescSetAttribute(pl.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi));
    cublasLtMatmulDescSetAttribute(pl.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                   sizeof(bias_type));
  }
  const auto k = uint64_t(p.k), n = uint64_t(p.n), m = uint64_t(p.m);
  if ((s = cublasLtMatrixLayoutCreate(&pl.a, CUDA_R_16BF, k, n, int64_t(k))) !=
      CUBLAS_STATUS_SUCCESS) {
    return fail("layout", s);
  }
  if ((s = cublasLtMatrixLayoutCreate(&pl.b, CUDA_R_16BF, k, m, int64_t(k))) !=
      CUBLAS_STATUS_SUCCESS) {
    return fail("layout", s);
  }
  if ((s = cublasLtMatrixLayoutCreate(&pl.c, f32 ? CUDA_R_32F : CUDA_R_16BF, n, m, int64_t(n))) !=
      CUBLAS_STATUS_SUCCESS) {
    return fail("layout", s);
  }
  cublasLtMatmulPreference_t pref = nullptr;
  if ((s = cublasLtMatmulPreferenceCreate(&pref)) != CUBLAS_STATUS_SUCCESS) {
    return fail("preference", s);
  }
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                       &workspace_bytes_, sizeof(workspace_bytes_));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  s = cublasLtMatmulAlgoGetHeuristic(handle_, pl.op, pl.a, pl.b, pl.c, pl.c, pref, 1, &result,
                                     &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (s != CUBLAS_STATUS_SUCCESS) return fail("heuristic", s);
  if (found == 0) return fail("heuristic", CUBLAS_STATUS_NOT_SUPPORTED);
  pl.algo = result.algo;
  auto owned = std::make_unique<Plan>(pl);
  Plan* raw = owned.get();
  plans_.emplace(key, std::move(owned));
  return raw;
}

Status Blas::linear(const LinearParams& p, cudaStream_t stream) {
  if (p.m == 0) return ok_status();
  constexpr int64_t kMaxDim = int64_t(1) << 20;
  if (!p.x || !p.w || (p.out == nullptr) == (p.out_f32 == nullptr) || p.m < 0 || p.n <= 0 ||
      p.k <= 0 || p.m >= kMaxDim || p.n >= kMaxDim || p.k >= kMaxDim) {
    return invalid_argument("linear: bad sizes m={} n={} k={}", p.m, p.n, p.k);
  }
  PP_ASSIGN_OR_RETURN(Plan * pl, plan_for(p));
  if (p.bias) {
    cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias,
                                   sizeof(p.bias));
  }
  const float alpha = 1.0f, beta = p.accumulate ? 1.0f : 0.0f;
  void* out = p.out ? static_cast<void*>(p.out) : static_cast<void*>(p.out_f32);
  const cublasStatus_t s =
      cublasLtMatmul(handle_, pl->op, &alpha, p.w, pl->a, p.x, pl->b, &beta, out, pl->c, out, pl->c,
                     &pl->algo, workspace_, workspace_bytes_, stream);
  if (s != CUBLAS_STATUS_SUCCESS) return blas_error("matmul", s);
  return ok_status();
}

}  // namespace pp::kernels::cuda
