// The GPU backend's plain-C++ face: device memory, streams, events, CUDA graphs, the NCCL
// communicator (point-to-point, and the collectives of tensor parallelism), and every CUDA op,
// with no CUDA header in sight. libmodel and libpp build on this; only kernels/ includes
// cuda_runtime.h (DESIGN.md: layers of the code).
//
// Values on the GPU are bf16, held here as Bf16 (the raw 16 bits). Every call takes the Stream
// it is ordered on and returns at once (work is queued, never waited for), except the ones named
// synchronize. Errors of the CUDA runtime, cuBLAS and NCCL come back as Status: kResourceExhausted
// when memory runs out, kInvalidArgument for bad sizes, kInternal otherwise.
//
// Built without CUDA, every call returns kUnimplemented ("built without CUDA") and available()
// is false, so the tools can say so in one line.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "pp/kernels/weight.h"
#include "pp/status.h"

namespace pp::kernels::gpu {

struct Bf16 {
  uint16_t bits = 0;
};

// True when pp was built with CUDA and at least one GPU is visible.
bool available();
// Binds the calling thread to CUDA device `device` (every call below runs on the bound device).
Status set_device(int device);
struct MemInfo {
  int64_t free_bytes = 0, total_bytes = 0;
};
Result<MemInfo> mem_info();  // of the bound device

// --- memory -------------------------------------------------------------------------------

// Device memory (cudaMalloc), freed on destruction. Move-only.
class DeviceBuffer {
 public:
  static Result<DeviceBuffer> allocate(size_t bytes);
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;
  ~DeviceBuffer();
  void* data() const { return p_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// Page-locked host memory (cudaMallocHost): the source or target of asynchronous copies.
class HostBuffer {
 public:
  static Result<HostBuffer> allocate(size_t bytes);
  HostBuffer() = default;
  HostBuffer(HostBuffer&& o) noexcept : p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; }
  HostBuffer& operator=(HostBuffer&& o) noexcept;
  ~HostBuffer();
  void* data() const { return p_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
};

// --- streams, events, graphs ---------------------------------------------------------------

class Stream {
 public:
  // A non-blocking stream (it does not synchronise with the legacy default stream).
  static Result<Stream> create(bool high_priority = false);
  Stream() = default;
  Stream(Stream&& o) noexcept : s_(o.s_) { o.s_ = nullptr; }
  Stream& operator=(Stream&& o) noexcept;
  ~Stream();
  void* native() const { return s_; }  // the cudaStream_t
  Status synchronize();

 private:
  void* s_ = nullptr;
};

class Event {
 public:
  // timing: the event can measure elapsed time (slightly slower to record).
  static Result<Event> create(bool timing = false);
  Event() = default;
  Event(Event&& o) noexcept : e_(o.e_) { o.e_ = nullptr; }
  Event& operator=(Event&& o) noexcept;
  ~Event();
  Status record(Stream& s);
  // Work queued on `s` after this call waits for the event.
  Status wait_on(Stream& s) const;
  Status synchronize() const;
  // True when the event's work is done; an error if it failed.
  Result<bool> done() const;
  // Milliseconds from `start` to this event (both recorded with timing).
  Result<float> elapsed_since(const Event& start) const;

 private:
  void* e_ = nullptr;
};

// A captured sequence of stream work, replayed with one launch. Move-only.
class Graph {
 public:
  // Starts capturing what is queued on `s` (this thread's calls only) instead of running it.
  static Status begin_capture(Stream& s);
  // Ends the capture on `s` and instantiates the graph.
  static Result<Graph> end_capture(Stream& s);
  Graph() = default;
  Graph(Graph&& o) noexcept : g_(o.g_), exec_(o.exec_) { o.g_ = o.exec_ = nullptr; }
  Graph& operator=(Graph&& o) noexcept;
  ~Graph();
  Status launch(Stream& s) const;

 private:
  void* g_ = nullptr;
  void* exec_ = nullptr;
};

// Copies of any direction (the pointers say which), queued on `s`.
Status copy_async(void* dst, const void* src, size_t bytes, Stream& s);
Status zero_async(void* dst, size_t bytes, Stream& s);
// `rows` rows of `width` bytes from src (rows src_pitch bytes apart) to dst (dst_pitch apart).
Status copy_2d_async(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t width,
                     size_t rows, Stream& s);
// Host f32 -> device bf16 (rounded to nearest even), synchronously; for loading weights.
Status upload_bf16(Bf16* dst, const float* src, size_t n);

// Keeps the stream busy for about `microseconds` (a spinning kernel): a profile queues a step's
// launches behind it, so that the host's launch gaps do not show in the step's GPU times.
Status busy_wait(int64_t microseconds, Stream& s);

// --- ops (CUDA twins of the CPU reference in cpu.h) -----------------------------------------

// Deterministic pseudo-random values in [lo, hi), rounded to bf16: value i of stream `key` is
// random_weight_value(key, i, lo, hi) (random-weights.h), the same on the host.
Status fill_random(Bf16* out, size_t n, uint64_t key, float lo, float hi, Stream& s);

// out[t] = table[ids[t]] (rows of n_embd); also a row gather with the ids as row indices.
Status embedding(const Bf16* table, const int32_t* ids, Bf16* out, int64_t n_vocab, int64_t n_embd,
                 int64_t n_tokens, Stream& s);

// out = rmsnorm(x) * weight per row; with residual: residual += x first, normalising that.
Status rms_norm(const Bf16* x, Bf16* residual, const Bf16* weight, Bf16* out, int64_t n_rows,
                int64_t n, float eps, Stream& s);

struct PagedKvView {
  Bf16* k = nullptr;  // [n_blocks, block_size, n_head_kv, head_dim]
  Bf16* v = nullptr;
  int64_t n_blocks = 0, block_size = 0, n_head_kv = 0, head_dim = 0;
};

struct RopeKvArgs {
  Bf16* qkv = nullptr;    // [n_tokens, (n_head + 2 n_head_kv) * head_dim]
  Bf16* q_out = nullptr;  // [n_tokens, n_head, head_dim]
  const int32_t* pos = nullptr;
  const int64_t* slots = nullptr;  // < 0: no cache write
  const float* inv_freq = nullptr;
  const Bf16* q_norm = nullptr;
  const Bf16* k_norm = nullptr;
  float norm_eps = 1e-6f;
  PagedKvView kv;
  int64_t n_tokens = 0, n_head = 0, rot_dim = 0;
};
Status rope_kv_write(const RopeKvArgs& a, Stream& s);

struct AttentionArgs {
  const Bf16* q = nullptr;  // [n_tokens, n_head, head_dim]
  Bf16* out = nullptr;
  PagedKvView kv;
  const int32_t* seq_start = nullptr;
  const int32_t* q_pos = nullptr;
  const int32_t* block_tables = nullptr;
  int64_t n_tokens = 0, n_seq = 0, n_head = 0, max_blocks = 0;
  float scale = 1.0f;
  int64_t max_q_len = 0, max_kv_len = 0;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};
size_t attention_workspace_bytes(const AttentionArgs& a);
Status attention(const AttentionArgs& a, Stream& s);

Status swiglu(const Bf16* gate_up, Bf16* out, int64_t n_tokens, int64_t n_ff, Stream& s);

// Repetition, presence and frequency penalties on f32 logit rows, from per-row lists of
// distinct token ids: entry e names a row, an id, whether the id is in the prompt or output
// (repetition applies), and how often it occurs in the output (presence and frequency apply).
// The same arithmetic as cpu::apply_penalties.
struct PenaltyEntry {
  int32_t row = 0, id = 0;
  int32_t seen = 0;          // 1: in the prompt or the output
  int32_t output_count = 0;  // occurrences in the output
};
struct PenaltyRow {
  float repetition = 1.0f, presence = 0.0f, frequency = 0.0f;
};
Status apply_penalties(float* logits, int64_t row_stride, int64_t n_vocab,
                       const PenaltyEntry* entries, int64_t n_entries, const PenaltyRow* rows,
                       Stream& s);

// Logit bias and allowed-token masks (structured output), after the penalties: the same
// arithmetic as cpu::apply_logit_constraints. Bias entries name distinct (row, id) pairs; mask k
// covers row mask_rows[k] with ceil(n_vocab / 32) words at masks + k * words (device memory).
struct LogitBias {  // as cuda::LogitBias
  int32_t row = 0, id = 0;
  float value = 0.0f;
};
Status apply_logit_constraints(float* logits, int64_t row_stride, int64_t n_vocab,
                               const LogitBias* bias, int64_t n_bias, const uint32_t* masks,
                               const int32_t* mask_rows, int64_t n_masked, Stream& s);

struct SampleRow {  // as cuda::SampleRowParams (device memory, one per row)
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  uint64_t seed = 0;
  uint64_t step = 0;
};
constexpr int32_t kMaxTopLogprobs = 64;
struct SampleArgs {
  const float* logits = nullptr;  // [n_rows, row_stride] f32, after penalties
  int64_t n_rows = 0, n_vocab = 0, row_stride = 0;
  const SampleRow* rows = nullptr;
  int32_t n_top_logprobs = 0;
  int32_t* tokens = nullptr;
  float* logprobs = nullptr;
  int32_t* top_ids = nullptr;
  float* top_logprobs = nullptr;
};
Status sample(const SampleArgs& a, Stream& s);

// Quantizes bf16 x[rows, cols] to fp8 e4m3 with one f32 scale per row: scale = amax / 448 (1
// for an all-zero row), q = fp8(x / scale); the same bytes as HostWeight::quantize_fp8 with
// per-channel scales on the same values (random weights quantized on load).
Status quantize_fp8_rows(const Bf16* x, void* q, float* scales, int64_t rows, int64_t cols,
                         Stream& s);

// y = x W^T (+ bias); bf16 activations, f32 compute. `accumulate`: y += x W^T (the residual add
// fused into the GEMM); `out_f32`: write f32 instead of bf16 (logits). The weight is typed and
// the op dispatches on its format (LinearPath); any other format is kUnimplemented naming it.
struct LinearArgs {
  const Bf16* x = nullptr;     // [m, k]
  WeightView w;                // [n, k] on the device: n = w.rows, k = w.cols
  const Bf16* bias = nullptr;  // [n] (bf16, the activations' type) or nullptr
  Bf16* out = nullptr;         // [m, n] (bf16), or
  float* out_f32 = nullptr;    // [m, n] (f32)
  int64_t m = 0;
  bool accumulate = false;
  // The decode fusion, on the GEMV paths only (m <= kFp8GemvMaxRows; elsewhere
  // kInvalidArgument; path_for says which path a call takes): w is gate|up [2n, k] and
  // out[m, n] = silu(gate) * up (bf16, no accumulate).
  bool swiglu = false;
};
// The most rows (m) an fp8 linear runs through the GEMV (kFp8Gemv) rather than cuBLASLt.
inline constexpr int64_t kFp8GemvMaxRows = 8;

// How Blas::linear computes a call, by weight format, scale kind and m.
enum class LinearPath : uint8_t {
  kBf16,               // bf16 weight: cuBLASLt bf16 GEMM
  kBf16Gemv,           // bf16 weight, m <= 8: the GEMV (W streamed once)
  kFp8Gemv,            // fp8, m <= 8: the GEMV (W streamed once, exact bf16 activations)
  kFp8Lt,              // fp8: x quantized per token, cuBLASLt scaled fp8 GEMM, epilogue fused
  kFp8LtEpilogue,      // fp8: the same GEMM into f32 scratch rows, then bias/accumulate/convert
  kFp8LtBf16Epilogue,  // fp8: the same into bf16 scratch rows (block scales: cuBLASLt has no
                       // f32 output for them), then bias/accumulate/convert
  kFp8Dequant,         // fp8: W dequantized to a bf16 scratch, then the bf16 GEMM
};
inline const char* linear_path_name(LinearPath p) {
  switch (p) {
    case LinearPath::kBf16:
      return "bf16";
    case LinearPath::kBf16Gemv:
      return "bf16-gemv";
    case LinearPath::kFp8Gemv:
      return "fp8-gemv";
    case LinearPath::kFp8Lt:
      return "fp8-cublaslt";
    case LinearPath::kFp8LtEpilogue:
      return "fp8-cublaslt+epilogue";
    case LinearPath::kFp8LtBf16Epilogue:
      return "fp8-cublaslt+bf16-epilogue";
    case LinearPath::kFp8Dequant:
      return "fp8-dequant-bf16";
  }
  return "?";
}

class Blas {
 public:
  static Result<std::unique_ptr<Blas>> create();
  ~Blas();
  Status linear(const LinearArgs& a, Stream& s);
  // Reserves the scratch fp8 linears beyond the GEMV (m > 8) use: up to max_m rows of max_k
  // inputs and max_n outputs; max_weight_elems > 0 also reserves a bf16 weight of that many
  // elements for the dequantizing fallback. Call before any such linear (not while capturing).
  Status reserve_fp8(int64_t max_m, int64_t max_n, int64_t max_k, int64_t max_weight_elems);
  // The path linear(a) takes (planning the shape as its first call would).
  Result<LinearPath> path_for(const LinearArgs& a);
  // Receives one line per fp8 shape and variant planned, naming its path (for the log).
  void set_log(std::function<void(const std::string&)> log);
  // Off: fp8 linears keep their activations in bf16 (W8A16, the CPU's arithmetic): the GEMV up
  // to 8 rows, the dequantizing fallback beyond (reserve its weight scratch). On (the default):
  // beyond the GEMV, activations are quantized to fp8 per token (or per 128-column group with
  // block scales) for cuBLASLt's fp8 GEMM. Set before the first linear.
  void set_fp8_activations(bool on);
  // On (the default on Hopper): GEMVs are launched as programmatic dependents of the kernel
  // before them, issuing their first weight loads before it ends. Off: ordinary launches.
  void set_programmatic_launch(bool on);

 private:
  Blas();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// --- NCCL ----------------------------------------------------------------------------------

using NcclId = std::array<uint8_t, 128>;

// A communicator of n_ranks GPUs (one per rank; ranks may be threads of one process, each bound
// to its own device). Every call is queued on `s` like any op (and may be captured in a CUDA
// graph); a collective must be called by every rank, in the same order, with the same sizes.
class NcclComm {
 public:
  // A fresh id; the process that makes it hosts the rendezvous until every rank has joined.
  static Result<NcclId> unique_id();
  // Joins the communicator `id` as `rank` on the bound device; blocks until every rank joins.
  static Result<std::unique_ptr<NcclComm>> init(const NcclId& id, int n_ranks, int rank);
  ~NcclComm();
  int rank() const { return rank_; }
  int n_ranks() const { return n_ranks_; }
  Status send(const void* data, size_t bytes, int peer, Stream& s);
  Status recv(void* data, size_t bytes, int peer, Stream& s);
  // In place: data [count] becomes the sum over the ranks' data (ncclSum; bf16 partial sums are
  // rounded to bf16 at each step of NCCL's algorithm). Every rank gets the same values: each
  // NCCL algorithm reduces a chunk once and broadcasts the result.
  Status all_reduce_sum(Bf16* data, size_t count, Stream& s);
  Status all_reduce_sum(float* data, size_t count, Stream& s);
  // recv [n_ranks * bytes] becomes every rank's send [bytes] in rank order. In place when send
  // is recv + rank() * bytes.
  Status all_gather(const void* send, void* recv, size_t bytes, Stream& s);

 private:
  NcclComm() = default;
  void* comm_ = nullptr;
  int rank_ = 0, n_ranks_ = 1;
};

}  // namespace pp::kernels::gpu
