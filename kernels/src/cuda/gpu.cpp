// gpu.h over the CUDA runtime, cuBLASLt and NCCL: resource wrappers, and each op forwarded to
// its kernel in kernels/src/cuda with the plain types converted.
#include "pp/kernels/gpu.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <vector>

#include "pp/kernels/cuda/attention.h"
#include "pp/kernels/cuda/embedding.h"
#include "pp/kernels/cuda/fill.h"
#include "pp/kernels/cuda/fp8.h"
#include "pp/kernels/cuda/linear.h"
#include "pp/kernels/cuda/rms-norm.h"
#include "pp/kernels/cuda/rope.h"
#include "pp/kernels/cuda/sampling.h"
#include "pp/kernels/cuda/swiglu.h"

namespace pp::kernels::gpu {
namespace {

static_assert(sizeof(Bf16) == sizeof(__nv_bfloat16));
static_assert(sizeof(SampleRow) == sizeof(cuda::SampleRowParams));
static_assert(sizeof(PenaltyEntry) == sizeof(cuda::PenaltyEntry));
static_assert(sizeof(PenaltyRow) == sizeof(cuda::PenaltyRow));

Status cuda_status(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return ok_status();
  cudaGetLastError();  // clear a sticky-free error so the next call starts clean
  const StatusCode code =
      err == cudaErrorMemoryAllocation ? StatusCode::kResourceExhausted : StatusCode::kInternal;
  return make_error(code, "{}: {}", what, cudaGetErrorString(err));
}

Status nccl_status(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return ok_status();
  return internal_error("nccl {}: {}", what, ncclGetErrorString(r));
}

cudaStream_t native(Stream& s) { return static_cast<cudaStream_t>(s.native()); }
__nv_bfloat16* bf(Bf16* p) { return reinterpret_cast<__nv_bfloat16*>(p); }
const __nv_bfloat16* bf(const Bf16* p) { return reinterpret_cast<const __nv_bfloat16*>(p); }

cuda::PagedKv paged(const PagedKvView& v) {
  return {bf(v.k), bf(v.v), v.n_blocks, v.block_size, v.n_head_kv, v.head_dim};
}

cuda::AttentionParams attention_params(const AttentionArgs& a) {
  cuda::AttentionParams p;
  p.q = bf(a.q);
  p.out = bf(a.out);
  p.kv = paged(a.kv);
  p.seq_start = a.seq_start;
  p.q_pos = a.q_pos;
  p.block_tables = a.block_tables;
  p.n_tokens = a.n_tokens;
  p.n_seq = a.n_seq;
  p.n_head = a.n_head;
  p.max_blocks = a.max_blocks;
  p.scale = a.scale;
  p.max_q_len = a.max_q_len;
  p.max_kv_len = a.max_kv_len;
  p.workspace = a.workspace;
  p.workspace_bytes = a.workspace_bytes;
  return p;
}

}  // namespace

bool available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return n > 0;
}

Status set_device(int device) { return cuda_status(cudaSetDevice(device), "cudaSetDevice"); }

Result<MemInfo> mem_info() {
  size_t free_b = 0, total_b = 0;
  PP_RETURN_IF_ERROR(cuda_status(cudaMemGetInfo(&free_b, &total_b), "cudaMemGetInfo"));
  return MemInfo{int64_t(free_b), int64_t(total_b)};
}

// --- memory

Result<DeviceBuffer> DeviceBuffer::allocate(size_t bytes) {
  DeviceBuffer b;
  if (bytes == 0) return b;
  const cudaError_t err = cudaMalloc(&b.p_, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return make_error(StatusCode::kResourceExhausted, "cannot allocate {} bytes on the GPU: {}",
                      bytes, cudaGetErrorString(err));
  }
  b.bytes_ = bytes;
  return b;
}
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  std::swap(p_, o.p_);
  std::swap(bytes_, o.bytes_);
  return *this;
}
DeviceBuffer::~DeviceBuffer() {
  if (p_) cudaFree(p_);
}

Result<HostBuffer> HostBuffer::allocate(size_t bytes) {
  HostBuffer b;
  if (bytes == 0) return b;
  const cudaError_t err = cudaMallocHost(&b.p_, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    return make_error(StatusCode::kResourceExhausted,
                      "cannot allocate {} bytes of pinned memory: {}", bytes,
                      cudaGetErrorString(err));
  }
  b.bytes_ = bytes;
  return b;
}
HostBuffer& HostBuffer::operator=(HostBuffer&& o) noexcept {
  std::swap(p_, o.p_);
  std::swap(bytes_, o.bytes_);
  return *this;
}
HostBuffer::~HostBuffer() {
  if (p_) cudaFreeHost(p_);
}

// --- streams, events, graphs

Result<Stream> Stream::create(bool high_priority) {
  int least = 0, greatest = 0;
  cudaDeviceGetStreamPriorityRange(&least, &greatest);
  cudaStream_t s = nullptr;
  PP_RETURN_IF_ERROR(cuda_status(
      cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, high_priority ? greatest : least),
      "cudaStreamCreate"));
  Stream out;
  out.s_ = s;
  return out;
}
Stream& Stream::operator=(Stream&& o) noexcept {
  std::swap(s_, o.s_);
  return *this;
}
Stream::~Stream() {
  if (s_) cudaStreamDestroy(static_cast<cudaStream_t>(s_));
}
Status Stream::synchronize() {
  return cuda_status(cudaStreamSynchronize(static_cast<cudaStream_t>(s_)), "stream synchronize");
}

Result<Event> Event::create(bool timing) {
  cudaEvent_t e = nullptr;
  PP_RETURN_IF_ERROR(
      cuda_status(cudaEventCreateWithFlags(&e, timing ? cudaEventDefault : cudaEventDisableTiming),
                  "cudaEventCreate"));
  Event out;
  out.e_ = e;
  return out;
}
Event& Event::operator=(Event&& o) noexcept {
  std::swap(e_, o.e_);
  return *this;
}
Event::~Event() {
  if (e_) cudaEventDestroy(static_cast<cudaEvent_t>(e_));
}
Status Event::record(Stream& s) {
  return cuda_status(cudaEventRecord(static_cast<cudaEvent_t>(e_), native(s)), "event record");
}
Status Event::wait_on(Stream& s) const {
  return cuda_status(cudaStreamWaitEvent(native(s), static_cast<cudaEvent_t>(e_), 0),
                     "stream wait event");
}
Status Event::synchronize() const {
  return cuda_status(cudaEventSynchronize(static_cast<cudaEvent_t>(e_)), "event synchronize");
}
Result<bool> Event::done() const {
  const cudaError_t err = cudaEventQuery(static_cast<cudaEvent_t>(e_));
  if (err == cudaErrorNotReady) return false;
  PP_RETURN_IF_ERROR(cuda_status(err, "event query"));
  return true;
}
Result<float> Event::elapsed_since(const Event& start) const {
  float ms = 0;
  PP_RETURN_IF_ERROR(cuda_status(
      cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start.e_), static_cast<cudaEvent_t>(e_)),
      "event elapsed time"));
  return ms;
}

Status Graph::begin_capture(Stream& s) {
  return cuda_status(cudaStreamBeginCapture(native(s), cudaStreamCaptureModeThreadLocal),
                     "begin graph capture");
}
Result<Graph> Graph::end_capture(Stream& s) {
  cudaGraph_t g = nullptr;
  PP_RETURN_IF_ERROR(cuda_status(cudaStreamEndCapture(native(s), &g), "end graph capture"));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t err = cudaGraphInstantiate(&exec, g, 0);
  if (err != cudaSuccess) {
    cudaGraphDestroy(g);
    return cuda_status(err, "instantiate graph");
  }
  Graph out;
  out.g_ = g;
  out.exec_ = exec;
  return out;
}
Graph& Graph::operator=(Graph&& o) noexcept {
  std::swap(g_, o.g_);
  std::swap(exec_, o.exec_);
  return *this;
}
Graph::~Graph() {
  if (exec_) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(exec_));
  if (g_) cudaGraphDestroy(static_cast<cudaGraph_t>(g_));
}
Status Graph::launch(Stream& s) const {
  return cuda_status(cudaGraphLaunch(static_cast<cudaGraphExec_t>(exec_), native(s)),
                     "graph launch");
}

Status copy_async(void* dst, const void* src, size_t bytes, Stream& s) {
  if (bytes == 0) return ok_status();
  return cuda_status(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, native(s)), "copy");
}

Status zero_async(void* dst, size_t bytes, Stream& s) {
  if (bytes == 0) return ok_status();
  return cuda_status(cudaMemsetAsync(dst, 0, bytes, native(s)), "memset");
}

Status copy_2d_async(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
                     size_t rows, Stream& s) {
  if (width == 0 || rows == 0) return ok_status();
  return cuda_status(
      cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows, cudaMemcpyDefault, native(s)),
      "copy 2d");
}

Status upload_bf16(Bf16* dst, const float* src, size_t n) {
  std::vector<__nv_bfloat16> tmp(n);
  for (size_t i = 0; i < n; ++i) tmp[i] = __float2bfloat16_rn(src[i]);
  return cuda_status(cudaMemcpy(dst, tmp.data(), n * sizeof(Bf16), cudaMemcpyHostToDevice),
                     "upload");
}

// --- ops

Status busy_wait(int64_t microseconds, Stream& s) {
  return cuda_status(cuda::busy_wait(microseconds, native(s)), "busy_wait");
}

Status fill_random(Bf16* out, size_t n, uint64_t key, float lo, float hi, Stream& s) {
  return cuda_status(cuda::fill_random(bf(out), n, key, lo, hi, native(s)), "fill_random");
}

Status embedding(const Bf16* table, const int32_t* ids, Bf16* out, int64_t n_vocab, int64_t n_embd,
                 int64_t n_tokens, Stream& s) {
  if (n_tokens == 0) return ok_status();
  return cuda_status(
      cuda::embedding({bf(table), ids, bf(out), n_vocab, n_embd, n_tokens}, native(s)),
      "embedding");
}

Status rms_norm(const Bf16* x, Bf16* residual, const Bf16* weight, Bf16* out, int64_t n_rows,
                int64_t n, float eps, Stream& s) {
  if (n_rows == 0) return ok_status();
  return cuda_status(
      cuda::rms_norm({bf(x), bf(residual), bf(weight), bf(out), n_rows, n, eps}, native(s)),
      "rms_norm");
}

Status rope_kv_write(const RopeKvArgs& a, Stream& s) {
  if (a.n_tokens == 0) return ok_status();
  cuda::RopeKvParams p;
  p.qkv = bf(a.qkv);
  p.q_out = bf(a.q_out);
  p.pos = a.pos;
  p.slots = a.slots;
  p.inv_freq = a.inv_freq;
  p.q_norm = bf(a.q_norm);
  p.k_norm = bf(a.k_norm);
  p.norm_eps = a.norm_eps;
  p.kv = paged(a.kv);
  p.n_tokens = a.n_tokens;
  p.n_head = a.n_head;
  p.rot_dim = a.rot_dim;
  return cuda_status(cuda::rope_kv_write(p, native(s)), "rope_kv_write");
}

size_t attention_workspace_bytes(const AttentionArgs& a) {
  return cuda::attention_workspace_bytes(attention_params(a));
}

Status attention(const AttentionArgs& a, Stream& s) {
  return cuda_status(cuda::attention(attention_params(a), native(s)), "attention");
}

Status swiglu(const Bf16* gate_up, Bf16* out, int64_t n_tokens, int64_t n_ff, Stream& s) {
  if (n_tokens == 0) return ok_status();
  return cuda_status(cuda::swiglu({bf(gate_up), bf(out), n_tokens, n_ff}, native(s)), "swiglu");
}

Status apply_penalties(float* logits, int64_t row_stride, int64_t n_vocab,
                       const PenaltyEntry* entries, int64_t n_entries, const PenaltyRow* rows,
                       Stream& s) {
  return cuda_status(
      cuda::apply_penalties(logits, row_stride, n_vocab,
                            reinterpret_cast<const cuda::PenaltyEntry*>(entries), n_entries,
                            reinterpret_cast<const cuda::PenaltyRow*>(rows), native(s)),
      "apply_penalties");
}

Status apply_logit_constraints(float* logits, int64_t row_stride, int64_t n_vocab,
                               const LogitBias* bias, int64_t n_bias, const uint32_t* masks,
                               const int32_t* mask_rows, int64_t n_masked, Stream& s) {
  static_assert(sizeof(LogitBias) == sizeof(cuda::LogitBias));
  return cuda_status(cuda::apply_logit_constraints(logits, row_stride, n_vocab,
                                                   reinterpret_cast<const cuda::LogitBias*>(bias),
                                                   n_bias, masks, mask_rows, n_masked, native(s)),
                     "apply_logit_constraints");
}

Status sample(const SampleArgs& a, Stream& s) {
  if (a.n_rows == 0) return ok_status();
  cuda::SampleParams p;
  p.logits = a.logits;
  p.type = cuda::LogitsType::kF32;
  p.n_rows = a.n_rows;
  p.n_vocab = a.n_vocab;
  p.row_stride = a.row_stride;
  p.rows = reinterpret_cast<const cuda::SampleRowParams*>(a.rows);
  p.n_top_logprobs = a.n_top_logprobs;
  p.tokens = a.tokens;
  p.logprobs = a.logprobs;
  p.top_ids = a.top_ids;
  p.top_logprobs = a.top_logprobs;
  return cuda_status(cuda::sample(p, native(s)), "sample");
}

struct Blas::Impl {
  std::unique_ptr<cuda::Blas> blas;
};
Blas::Blas() : impl_(std::make_unique<Impl>()) {}
Blas::~Blas() = default;
Result<std::unique_ptr<Blas>> Blas::create() {
  std::unique_ptr<Blas> b(new Blas());
  PP_ASSIGN_OR_RETURN(b->impl_->blas, cuda::Blas::create());
  return b;
}
namespace {
cuda::LinearParams linear_params(const LinearArgs& a) {
  cuda::LinearParams p;
  p.x = bf(a.x);
  p.w = a.w.data;
  p.bias = bf(a.bias);
  p.out = bf(a.out);
  p.out_f32 = a.out_f32;
  p.m = a.m;
  p.n = a.swiglu ? a.w.rows / 2 : a.w.rows;
  p.k = a.w.cols;
  p.accumulate = a.accumulate;
  p.format = a.w.format;
  p.scale_kind = a.w.scale_kind;
  p.scales = a.w.scales;
  p.swiglu = a.swiglu;
  return p;
}
}  // namespace

Status Blas::linear(const LinearArgs& a, Stream& s) {
  if (a.swiglu && a.w.rows % 2 != 0) {
    return invalid_argument("linear: a gate|up weight of {} rows (SwiGLU needs an even count)",
                            a.w.rows);
  }
  return impl_->blas->linear(linear_params(a), native(s));
}
Status Blas::reserve_fp8(int64_t max_m, int64_t max_n, int64_t max_k, int64_t max_weight_elems) {
  return impl_->blas->reserve_fp8({max_m, max_n, max_k, max_weight_elems});
}
Result<LinearPath> Blas::path_for(const LinearArgs& a) {
  return impl_->blas->path_for(linear_params(a));
}
void Blas::set_log(std::function<void(const std::string&)> log) {
  impl_->blas->set_log(std::move(log));
}
void Blas::set_fp8_activations(bool on) { impl_->blas->set_fp8_activations(on); }
void Blas::set_programmatic_launch(bool on) { impl_->blas->set_programmatic_launch(on); }

Status quantize_fp8_rows(const Bf16* x, void* q, float* scales, int64_t rows, int64_t cols,
                         Stream& s) {
  cuda::QuantizeFp8Params p;
  p.x = bf(x);
  p.q = static_cast<uint8_t*>(q);
  p.scales = scales;
  p.rows = rows;
  p.cols = cols;
  return cuda_status(cuda::quantize_fp8(p, native(s)), "quantize_fp8_rows");
}

// --- NCCL

Result<NcclId> NcclComm::unique_id() {
  ncclUniqueId id;
  PP_RETURN_IF_ERROR(nccl_status(ncclGetUniqueId(&id), "get unique id"));
  static_assert(sizeof(id.internal) == sizeof(NcclId));
  NcclId out;
  std::memcpy(out.data(), id.internal, out.size());
  return out;
}

Result<std::unique_ptr<NcclComm>> NcclComm::init(const NcclId& id, int n_ranks, int rank) {
  ncclUniqueId nid;
  std::memcpy(nid.internal, id.data(), id.size());
  ncclComm_t comm = nullptr;
  PP_RETURN_IF_ERROR(nccl_status(ncclCommInitRank(&comm, n_ranks, nid, rank), "init rank"));
  std::unique_ptr<NcclComm> c(new NcclComm());
  c->comm_ = comm;
  c->rank_ = rank;
  c->n_ranks_ = n_ranks;
  return c;
}

NcclComm::~NcclComm() {
  if (comm_) ncclCommDestroy(static_cast<ncclComm_t>(comm_));
}

Status NcclComm::send(const void* data, size_t bytes, int peer, Stream& s) {
  return nccl_status(
      ncclSend(data, bytes, ncclUint8, peer, static_cast<ncclComm_t>(comm_), native(s)), "send");
}

Status NcclComm::recv(void* data, size_t bytes, int peer, Stream& s) {
  return nccl_status(
      ncclRecv(data, bytes, ncclUint8, peer, static_cast<ncclComm_t>(comm_), native(s)), "recv");
}

Status NcclComm::all_reduce_sum(Bf16* data, size_t count, Stream& s) {
  if (count == 0) return ok_status();
  return nccl_status(ncclAllReduce(data, data, count, ncclBfloat16, ncclSum,
                                   static_cast<ncclComm_t>(comm_), native(s)),
                     "all-reduce");
}

Status NcclComm::all_reduce_sum(float* data, size_t count, Stream& s) {
  if (count == 0) return ok_status();
  return nccl_status(ncclAllReduce(data, data, count, ncclFloat32, ncclSum,
                                   static_cast<ncclComm_t>(comm_), native(s)),
                     "all-reduce");
}

Status NcclComm::all_gather(const void* send, void* recv, size_t bytes, Stream& s) {
  if (bytes == 0) return ok_status();
  return nccl_status(
      ncclAllGather(send, recv, bytes, ncclUint8, static_cast<ncclComm_t>(comm_), native(s)),
      "all-gather");
}

}  // namespace pp::kernels::gpu
