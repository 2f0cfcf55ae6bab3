// cuBLASLt behind Blas::linear, and the dispatch on the weight's format. Row-major
// y[m, n] = x[m, k] W[n, k]^T is, in cuBLAS's column-major terms, Y^T (n x m) = op(A) B with
// A = W viewed as k x n (transposed by op) and B = X^T viewed as k x m: no copies, no
// transposes in memory (the TN layout cuBLASLt's fp8 GEMMs require). The bias rides on the
// BIAS epilogue. Descriptors and the heuristic's first algorithm are cached per shape.
//
// fp8 beyond the GEMV: x is quantized per token into reserved scratch (one scale per row for
// per-tensor and per-channel weights, cuBLASLt's OUTER_VEC mode on both operands; one per row
// and 128 columns for 128x128 weights, VEC128 on x and BLK128x128 on W). cuBLASLt's scale
// layouts (as PyTorch's scaled_mm passes them on cuBLAS 12.9+): VEC128 scales of B = x^T are
// "outer-dim-major", scale (row r, group g) at g * m + r; BLK128x128 scales of A = W are
// [n / 128] rows of ceil(k / 128) floats at a stride rounded up to 4 floats (16 bytes), so a
// weight whose ceil(k / 128) is not a multiple of 4 has its scales copied to padded rows first.
// A per-tensor weight scale is broadcast to n scales. cuBLASLt (CUDA 13, H100) refuses
// block-scaled GEMMs whose row count is not a multiple of 16: such calls run through the
// epilogue's scratch with each chunk's rows padded to 16 (zero activations and scales). Each
// of these runs as stream work, so a captured graph replays it.
#include "pp/kernels/cuda/linear.h"

#include <fmt/format.h>

#include <algorithm>

#include "pp/assert.h"
#include "pp/kernels/cuda/fp8.h"
#include "pp/kernels/cuda/gemv.h"

namespace pp::kernels::cuda {
static_assert(kGemvMaxM == gpu::kFp8GemvMaxRows);
namespace {

Status blas_error(const char* what, cublasStatus_t s) {
  return internal_error("cublasLt {}: {}", what, cublasGetStatusString(s));
}

Status cuda_error(const char* what, cudaError_t e) {
  if (e == cudaSuccess) return ok_status();
  cudaGetLastError();
  return internal_error("{}: {}", what, cudaGetErrorString(e));
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t round16(int64_t n) { return ceil_div(n, 16) * 16; }
size_t align256(size_t n) { return (n + 255) / 256 * 256; }

GemvParams gemv_params(const LinearParams& p, bool programmatic) {
  return {.x = p.x,
          .w = p.w,
          .format = p.format,
          .scale_kind = p.scale_kind,
          .scales = p.scales,
          .bias = p.bias,
          .swiglu = p.swiglu,
          .out = p.out,
          .out_f32 = p.out_f32,
          .m = p.m,
          .n = p.n,
          .k = p.k,
          .accumulate = p.accumulate,
          .programmatic = programmatic};
}

bool fused(const LinearParams& p) { return p.swiglu; }

Status unfusable(const LinearParams& p) {
  return invalid_argument(
      "linear: the fused SwiGLU runs on the GEMV only (m <= {}, k a multiple of {}, aligned "
      "rows): m={} n={} k={}",
      kGemvMaxM, p.format == WeightFormat::kBF16 ? 8 : 16, p.m, p.n, p.k);
}

std::string describe(const LinearParams& p) {
  return fmt::format("fp8 linear m={} n={} k={} scales={} bias={} out={}{}", p.m, p.n, p.k,
                     scale_kind_name(p.scale_kind), p.bias ? "yes" : "no",
                     p.out_f32 ? "f32" : "bf16", p.accumulate ? " accumulate" : "");
}

}  // namespace

namespace {

// Releases what a plan holds (parts not yet created are null).
template <typename P>
void destroy_plan(P* pl) {
  if (!pl) return;
  if (pl->a) cublasLtMatrixLayoutDestroy(pl->a);
  if (pl->b) cublasLtMatrixLayoutDestroy(pl->b);
  if (pl->c) cublasLtMatrixLayoutDestroy(pl->c);
  if (pl->op) cublasLtMatmulDescDestroy(pl->op);
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
  int device = 0, major = 0;
  if (cudaGetDevice(&device) == cudaSuccess &&
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess) {
    b->programmatic_supported_ = major >= 9;
    b->programmatic_ = b->programmatic_supported_;
  }
  cudaGetLastError();
  return b;
}

cublasStatus_t Blas::heuristic_algo(Plan* pl) {
  cublasLtMatmulPreference_t pref = nullptr;
  cublasStatus_t s = cublasLtMatmulPreferenceCreate(&pref);
  if (s != CUBLAS_STATUS_SUCCESS) return s;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                       &workspace_bytes_, sizeof(workspace_bytes_));
  // Split-k partial sums only in f32: reduced in the output's type (bf16), each partial of a
  // sum that cancels to a small result is rounded at its own, larger magnitude (an H100 run
  // of CudaLinear.GemvEveryRowCountAndVariantMatchesFloat64 saw one output off by 2^-4 at
  // m = 9, k = 920, partials around 8).
  const uint32_t schemes = CUBLASLT_REDUCTION_SCHEME_NONE | CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &schemes,
                                       sizeof(schemes));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  s = cublasLtMatmulAlgoGetHeuristic(handle_, pl->op, pl->a, pl->b, pl->c, pl->c, pref, 1, &result,
                                     &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (s != CUBLAS_STATUS_SUCCESS) return s;
  if (found == 0) return CUBLAS_STATUS_NOT_SUPPORTED;
  pl->algo = result.algo;
  return CUBLAS_STATUS_SUCCESS;
}

void Blas::clear_plans() {
  for (auto& [key, pl] : plans_) destroy_plan(pl.get());
  for (auto& [key, pl] : fp8_lt_plans_) destroy_plan(pl.get());
  plans_.clear();
  fp8_lt_plans_.clear();
  fp8_plans_.clear();  // they point into fp8_lt_plans_
}

Blas::~Blas() {
  clear_plans();
  if (fp8_scratch_) cudaFree(fp8_scratch_);
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
    destroy_plan(&pl);
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
  if ((s = heuristic_algo(&pl)) != CUBLAS_STATUS_SUCCESS) return fail("heuristic", s);
  auto owned = std::make_unique<Plan>(pl);
  Plan* raw = owned.get();
  plans_.emplace(key, std::move(owned));
  return raw;
}

Result<Blas::Plan*> Blas::fp8_lt_plan(int64_t m, int64_t n, int64_t k, ScaleKind kind, bool bias,
                                      bool f32, bool accumulate) {
  const Fp8Key key{m, n, k, int(kind), int(bias) | int(f32) << 1 | int(accumulate) << 2};
  if (auto it = fp8_lt_plans_.find(key); it != fp8_lt_plans_.end()) return it->second.get();
  Plan pl;
  pl.m = m;
  pl.n = n;
  pl.k = k;
  pl.bias = bias;
  pl.f32 = f32;
  pl.accumulate = accumulate;
  // Refused (no algorithm, or an attribute this cuBLASLt does not know): remembered as nullptr.
  auto refuse = [&]() -> Result<Plan*> {
    destroy_plan(&pl);
    fp8_lt_plans_.emplace(key, nullptr);
    return static_cast<Plan*>(nullptr);
  };
  cublasStatus_t s = cublasLtMatmulDescCreate(&pl.op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  if (s != CUBLAS_STATUS_SUCCESS) return blas_error("matmul descriptor", s);
  auto set = [&](cublasLtMatmulDescAttributes_t attr, const auto& v) {
    return cublasLtMatmulDescSetAttribute(pl.op, attr, &v, sizeof(v)) == CUBLAS_STATUS_SUCCESS;
  };
  const cublasOperation_t trans_a = CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  const bool block = kind == ScaleKind::kBlock128x128;
  const int32_t a_mode = block ? CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F
                               : CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
  const int32_t b_mode =
      block ? CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F : CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
  // Real scratch addresses for the heuristic; each call sets its own.
  const void* a_scale = w_scales_;
  const void* b_scale = act_scales_;
  bool ok = set(CUBLASLT_MATMUL_DESC_TRANSA, trans_a) &&
            set(CUBLASLT_MATMUL_DESC_TRANSB, trans_b) &&
            set(CUBLASLT_MATMUL_DESC_A_SCALE_MODE, a_mode) &&
            set(CUBLASLT_MATMUL_DESC_B_SCALE_MODE, b_mode) &&
            set(CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, a_scale) &&
            set(CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, b_scale);
  if (ok && bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    const cudaDataType_t bias_type = CUDA_R_16BF;
    ok = set(CUBLASLT_MATMUL_DESC_EPILOGUE, epi) &&
         set(CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, bias_type);
  }
  if (!ok) return refuse();
  if ((s = cublasLtMatrixLayoutCreate(&pl.a, CUDA_R_8F_E4M3, uint64_t(k), uint64_t(n), k)) !=
          CUBLAS_STATUS_SUCCESS ||
      (s = cublasLtMatrixLayoutCreate(&pl.b, CUDA_R_8F_E4M3, uint64_t(k), uint64_t(m), k)) !=
          CUBLAS_STATUS_SUCCESS ||
      (s = cublasLtMatrixLayoutCreate(&pl.c, f32 ? CUDA_R_32F : CUDA_R_16BF, uint64_t(n),
                                      uint64_t(m), n)) != CUBLAS_STATUS_SUCCESS) {
    return refuse();
  }
  // No algorithm, or none that takes these attributes: refused (the caller falls back).
  if (heuristic_algo(&pl) != CUBLAS_STATUS_SUCCESS) return refuse();
  auto owned = std::make_unique<Plan>(pl);
  Plan* raw = owned.get();
  fp8_lt_plans_.emplace(key, std::move(owned));
  return raw;
}

Result<Blas::Fp8Plan> Blas::fp8_plan_for(const LinearParams& p) {
  const bool bias = p.bias != nullptr, f32 = p.out_f32 != nullptr;
  const Fp8Key key{p.m, p.n, p.k, int(p.scale_kind),
                   int(bias) | int(f32) << 1 | int(p.accumulate) << 2};
  if (auto it = fp8_plans_.find(key); it != fp8_plans_.end()) return it->second;
  const Fp8Reserve& r = fp8_reserved_;
  if (!fp8_scratch_ || p.m > r.max_m || p.n > r.max_n || p.k > r.max_k) {
    return make_error(StatusCode::kFailedPrecondition,
                      "{}: beyond the fp8 scratch reserved (m <= {}, n <= {}, k <= {})",
                      describe(p), r.max_m, r.max_n, r.max_k);
  }
  if (int(fp8_plans_.size()) >= kMaxShapes) clear_plans();
  Fp8Plan fp;
  std::string why;
  bool done = false;
  if (!fp8_activations_) {
    why = " (activations kept in bf16)";
  } else if (p.k % 16 != 0) {
    why = " (k % 16 != 0: no fp8 GEMM)";
  } else {
    PP_ASSIGN_OR_RETURN(fp.full, fp8_lt_plan(p.m, p.n, p.k, p.scale_kind, bias, f32, p.accumulate));
    if (fp.full) {
      fp.path = LinearPath::kFp8Lt;
      done = true;
    } else {
      why = " (cuBLASLt has no algorithm with this epilogue";
      const int64_t rows = std::min(p.m, kEpilogueRows), tail = p.m % kEpilogueRows;
      // The plain GEMM of kEpilogueRows rows (and the tail's) into scratch: f32, else bf16
      // (cuBLASLt has no f32 output with 128x128 block scales); as they are, else padded to
      // a multiple of 16 rows (its block-scaled GEMMs take no other row counts).
      for (const bool f32_scratch : {true, false}) {
        for (const bool pad : {false, true}) {
          const int64_t fr = pad ? round16(rows) : rows, tr = pad ? round16(tail) : tail;
          if (pad && fr == rows && tr == tail) continue;  // nothing to pad
          PP_ASSIGN_OR_RETURN(fp.full,
                              fp8_lt_plan(fr, p.n, p.k, p.scale_kind, false, f32_scratch, false));
          fp.tail = nullptr;
          if (fp.full && p.m > kEpilogueRows && tail > 0) {
            PP_ASSIGN_OR_RETURN(fp.tail,
                                fp8_lt_plan(tr, p.n, p.k, p.scale_kind, false, f32_scratch, false));
          }
          if (fp.full && (p.m <= kEpilogueRows || tail == 0 || fp.tail)) {
            fp.path = f32_scratch ? LinearPath::kFp8LtEpilogue : LinearPath::kFp8LtBf16Epilogue;
            fp.padded = pad;
            why += f32_scratch ? ")" : " nor into f32)";
            if (pad) why += " (rows padded to 16)";
            done = true;
            break;
          }
        }
        if (done) break;
      }
      if (!done) why += " nor into f32 or bf16 scratch)";
    }
  }
  if (!done) {
    if (r.max_weight_elems < p.n * p.k) {
      return unimplemented("{}: no path{} and no dequantization scratch reserved", describe(p),
                           why);
    }
    fp.path = LinearPath::kFp8Dequant;
  }
  log(fmt::format("{}: {}{}", describe(p), linear_path_name(fp.path), why));
  fp8_plans_.emplace(key, fp);
  return fp;
}

Status Blas::reserve_fp8(const Fp8Reserve& r) {
  const Fp8Reserve& have = fp8_reserved_;
  if (fp8_scratch_ && r.max_m <= have.max_m && r.max_n <= have.max_n && r.max_k <= have.max_k &&
      r.max_weight_elems <= have.max_weight_elems) {
    return ok_status();
  }
  Fp8Reserve want{std::max(r.max_m, have.max_m), std::max(r.max_n, have.max_n),
                  std::max(r.max_k, have.max_k),
                  std::max(r.max_weight_elems, have.max_weight_elems)};
  if (want.max_m <= 0 || want.max_n <= 0 || want.max_k <= 0) {
    return invalid_argument("reserve_fp8: bad sizes m={} n={} k={}", want.max_m, want.max_n,
                            want.max_k);
  }
  const int64_t kb = ceil_div(want.max_k, 128);
  const int64_t rows = round16(want.max_m);  // a chunk's rows may be padded to 16
  const size_t q = align256(size_t(rows * want.max_k));
  const size_t as = align256(size_t(rows * kb) * sizeof(float));
  const size_t ws =
      align256(size_t(std::max(want.max_n, ceil_div(want.max_n, 128) * ceil_div(kb, 4) * 4)) *
               sizeof(float));
  const size_t acc = align256(size_t(kEpilogueRows * want.max_n) * sizeof(float));
  const size_t deq = align256(size_t(want.max_weight_elems) * sizeof(__nv_bfloat16));
  // Plans hold the old scratch's addresses only as heuristic placeholders; drop them anyway.
  clear_plans();
  if (fp8_scratch_) {
    cudaFree(fp8_scratch_);
    fp8_scratch_ = nullptr;
  }
  const cudaError_t err = cudaMalloc(&fp8_scratch_, q + as + ws + acc + deq);
  if (err != cudaSuccess) {
    cudaGetLastError();
    fp8_scratch_ = nullptr;
    fp8_reserved_ = {};
    return make_error(StatusCode::kResourceExhausted, "cannot allocate the fp8 scratch: {}",
                      cudaGetErrorString(err));
  }
  char* base = static_cast<char*>(fp8_scratch_);
  act_q_ = reinterpret_cast<uint8_t*>(base);
  act_scales_ = reinterpret_cast<float*>(base + q);
  w_scales_ = reinterpret_cast<float*>(base + q + as);
  acc_ = reinterpret_cast<float*>(base + q + as + ws);
  w_dequant_ = want.max_weight_elems > 0
                   ? reinterpret_cast<__nv_bfloat16*>(base + q + as + ws + acc)
                   : nullptr;
  fp8_reserved_ = want;
  return ok_status();
}

Status Blas::fp8_lt_run(const LinearParams& p, const Fp8Plan& fp, cudaStream_t stream) {
  // The weight's scales as cuBLASLt reads them.
  const void* a_scale = p.scales;
  const int64_t kb = ceil_div(p.k, 128);
  if (p.scale_kind == ScaleKind::kPerTensor) {
    PP_RETURN_IF_ERROR(
        cuda_error("broadcast_scale", broadcast_scale(p.scales, w_scales_, p.n, stream)));
    a_scale = w_scales_;
  } else if (p.scale_kind == ScaleKind::kBlock128x128 && kb % 4 != 0) {
    const int64_t ld = ceil_div(kb, 4) * 4;
    PP_RETURN_IF_ERROR(cuda_error("pad_block_scales", pad_block_scales(p.scales, ceil_div(p.n, 128),
                                                                       kb, ld, w_scales_, stream)));
    a_scale = w_scales_;
  }
  const bool block = p.scale_kind == ScaleKind::kBlock128x128;
  const bool fused = fp.path == LinearPath::kFp8Lt;
  const int64_t chunk = fused ? p.m : kEpilogueRows;
  const float alpha = 1.0f;
  for (int64_t r0 = 0; r0 < p.m; r0 += chunk) {
    const int64_t mc = std::min(chunk, p.m - r0);
    const int64_t mp = fp.padded ? round16(mc) : mc;  // the GEMM's rows
    Plan* pl = mp == fp.full->m ? fp.full : fp.tail;
    PP_ASSERT(pl != nullptr && pl->m == mp);
    if (mp > mc) {
      // The padding rows: zero activations (their products are zero) and zero scales.
      PP_RETURN_IF_ERROR(cuda_error(
          "pad rows", cudaMemsetAsync(act_q_ + mc * p.k, 0, size_t((mp - mc) * p.k), stream)));
      PP_RETURN_IF_ERROR(
          cuda_error("pad scales",
                     cudaMemsetAsync(act_scales_, 0, size_t(mp * (block ? kb : 1)) * 4, stream)));
    }
    QuantizeFp8Params qp{.x = p.x + r0 * p.k,
                         .q = act_q_,
                         .scales = act_scales_,
                         .rows = mc,
                         .cols = p.k,
                         .group = block ? 128 : 0,
                         .group_major = block,
                         .scale_ld = mp};
    PP_RETURN_IF_ERROR(cuda_error("quantize_fp8", quantize_fp8(qp, stream)));
    const void* b_scale = act_scales_;
    cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale,
                                   sizeof(a_scale));
    cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale,
                                   sizeof(b_scale));
    if (pl->bias) {
      cublasLtMatmulDescSetAttribute(pl->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p.bias,
                                     sizeof(p.bias));
    }
    void* out = acc_;
    float beta = 0.0f;
    if (fused) {
      out = p.out ? static_cast<void*>(p.out + r0 * p.n) : static_cast<void*>(p.out_f32 + r0 * p.n);
      beta = p.accumulate ? 1.0f : 0.0f;
    }
    const cublasStatus_t s =
        cublasLtMatmul(handle_, pl->op, &alpha, p.w, pl->a, act_q_, pl->b, &beta, out, pl->c, out,
                       pl->c, &pl->algo, workspace_, workspace_bytes_, stream);
    if (s != CUBLAS_STATUS_SUCCESS) return blas_error("fp8 matmul", s);
    if (!fused) {
      const bool bf16_scratch = fp.path == LinearPath::kFp8LtBf16Epilogue;
      Fp8EpilogueParams ep{
          .acc = bf16_scratch ? nullptr : acc_,
          .acc_bf16 = bf16_scratch ? reinterpret_cast<__nv_bfloat16*>(acc_) : nullptr,
          .bias = p.bias,
          .out = p.out ? p.out + r0 * p.n : nullptr,
          .out_f32 = p.out_f32 ? p.out_f32 + r0 * p.n : nullptr,
          .m = mc,
          .n = p.n,
          .accumulate = p.accumulate};
      PP_RETURN_IF_ERROR(cuda_error("linear_epilogue", linear_epilogue(ep, stream)));
    }
  }
  return ok_status();
}

Result<LinearPath> Blas::path_for(const LinearParams& p) {
  if (p.format != WeightFormat::kBF16 && p.format != WeightFormat::kFp8E4M3) {
    return unimplemented("linear: {} weights are not supported on the GPU",
                         weight_format_name(p.format));
  }
  if (gemv_supported(gemv_params(p, false))) {
    return p.format == WeightFormat::kBF16 ? LinearPath::kBf16Gemv : LinearPath::kFp8Gemv;
  }
  if (fused(p)) return unfusable(p);
  if (p.format == WeightFormat::kBF16) return LinearPath::kBf16;
  PP_ASSIGN_OR_RETURN(Fp8Plan fp, fp8_plan_for(p));
  return fp.path;
}

Status Blas::linear(const LinearParams& p, cudaStream_t stream) {
  if (p.m == 0) return ok_status();
  constexpr int64_t kMaxDim = int64_t(1) << 20;
  if (!p.x || !p.w || (p.out == nullptr) == (p.out_f32 == nullptr) || p.m < 0 || p.n <= 0 ||
      p.k <= 0 || p.m >= kMaxDim || p.n >= kMaxDim || p.k >= kMaxDim) {
    return invalid_argument("linear: bad sizes m={} n={} k={}", p.m, p.n, p.k);
  }
  if (p.format != WeightFormat::kBF16 && p.format != WeightFormat::kFp8E4M3) {
    return unimplemented("linear: {} weights are not supported on the GPU",
                         weight_format_name(p.format));
  }
  if (p.format == WeightFormat::kBF16 && p.scale_kind != ScaleKind::kNone) {
    return invalid_argument("linear: a bf16 weight with {} scales", scale_kind_name(p.scale_kind));
  }
  if (p.format == WeightFormat::kFp8E4M3 && (p.scale_kind == ScaleKind::kNone || !p.scales)) {
    return invalid_argument("linear: an fp8 weight without scales");
  }
  if (const GemvParams g = gemv_params(p, programmatic_); gemv_supported(g)) {
    if (p.format == WeightFormat::kFp8E4M3 && log_ &&
        gemv_logged_.emplace(p.m, p.n, p.k, int(p.scale_kind)).second) {
      log(fmt::format("{}: {}", describe(p), linear_path_name(LinearPath::kFp8Gemv)));
    }
    return cuda_error("gemv", gemv(g, stream));
  }
  if (fused(p)) return unfusable(p);
  if (p.format == WeightFormat::kBF16) return bf16_run(p, stream);
  PP_ASSIGN_OR_RETURN(Fp8Plan fp, fp8_plan_for(p));
  if (fp.path != LinearPath::kFp8Dequant) return fp8_lt_run(p, fp, stream);
  PP_RETURN_IF_ERROR(
      cuda_error("dequantize_fp8", dequantize_fp8(static_cast<const uint8_t*>(p.w), p.scale_kind,
                                                  p.scales, p.n, p.k, w_dequant_, stream)));
  LinearParams b = p;
  b.w = w_dequant_;
  b.format = WeightFormat::kBF16;
  b.scale_kind = ScaleKind::kNone;
  b.scales = nullptr;
  return bf16_run(b, stream);
}

Status Blas::bf16_run(const LinearParams& p, cudaStream_t stream) {
  if (p.bias && p.out_f32) {
    // cuBLASLt has no bias epilogue for bf16 inputs into f32 (a bf16 bias with an f32 output
    // is "not supported"): the product first, then the bias added in place.
    LinearParams q = p;
    q.bias = nullptr;
    PP_RETURN_IF_ERROR(bf16_run(q, stream));
    Fp8EpilogueParams e;
    e.acc = p.out_f32;
    e.bias = p.bias;
    e.out_f32 = p.out_f32;
    e.m = p.m;
    e.n = p.n;
    return cuda_error("bias epilogue", linear_epilogue(e, stream));
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
