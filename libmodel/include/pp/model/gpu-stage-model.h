// GpuStageModel: the GPU twin of StageModel. Layers [layer_begin, layer_end) of a model on one
// CUDA device, bf16 activations with f32 accumulation, a bf16 paged KV pool, and at the last
// stage the final norm, lm_head (f32 logits) and sampling on the device. Weights are typed: the
// layers' linear slots take the format of their tensors (bf16, or fp8 e4m3 with per-channel or
// 128x128 block scales: an fp8 checkpoint, or a source wrapped by quantize_on_load), every other
// slot (embedding, lm_head, norms, biases) is bf16; Blas::linear dispatches on the format.
//
// Everything is queued on the model's compute stream; no call waits for the GPU except
// SampleSlot::wait. A forward whose sequences all bring one new token (decode) replays a CUDA
// graph captured for its batch-size and context-length bucket (padded rows compute garbage
// that nobody reads and write no KV); prefill and mixed batches run eagerly. The caller owns the
// activation buffers it passes in and out; the model copies them into and out of its own fixed
// residual buffer, which is what lets one graph serve every micro-batch.
//
// Tensor parallelism (tensor-parallel.h): loaded as rank r of N, the model holds its slices and
// computes with tp_local_config. After the o_proj and down GEMMs each rank's partial [T, n_embd]
// output is summed by an in-place NCCL all-reduce (bf16) on the compute stream, and only then
// added into the residual stream (fused into the next RMSNorm); the lm_head is vocabulary-parallel
// and its f32 logits are all-gathered and laid out as [R, n_vocab] on rank 0, which alone
// samples. The collectives are captured in the decode graphs like any other op (NCCL >= 2.9), so
// graphs stay on. The GPU attention kernels map local query head h to local KV head
// h / (n_head / n_head_kv): a group where some rank's heads do not split that way (4 ranks over
// 12 heads and 3 KV heads: rank 1's heads 3..5 read KV heads 0, 1, 1) is refused at load, on
// every rank (kInvalidArgument); a size that divides n_head with n_head_kv a multiple of it, or
// it a multiple of n_head_kv, always works. With uneven shares a rank's kv_bytes_per_block is
// its own: the group's KV pools must have the same number of blocks (the block tables are one).
//
// Not thread-safe: one thread queues forwards (the stage's compute loop).
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "pp/kernels/gpu.h"
#include "pp/kernels/weight.h"
#include "pp/model/arch-tensors.h"
#include "pp/model/batch.h"
#include "pp/model/config.h"
#include "pp/model/quantization.h"
#include "pp/model/tensor-parallel.h"
#include "pp/model/weights.h"
#include "pp/status.h"

namespace pp::model {

struct GpuStageOptions {
  int device = 0;
  int64_t max_tokens = 8192;   // most new tokens in one forward (the prefill chunk budget)
  int64_t max_seqs = 256;      // most sequences in one forward
  int64_t max_logit_rows = 0;  // most logit rows in one forward (0: max_seqs)
  bool cuda_graphs = true;     // replay captured graphs for decode steps
  // random(): the layers' linear weights quantized on load as quantize_on_load(random_weights(
  // config, seed), config, quantization) does (load() takes the source's formats as they are).
  Quantization quantization = Quantization::kNone;
  // fp8 linears of more than 8 rows quantize their activations to fp8 (W8A8, cuBLASLt's fp8
  // GEMM). false keeps them bf16 (W8A16: the CPU's arithmetic, through a dequantized bf16 copy
  // of the weight; slower): the tests use it to check the fp8 model against the CPU closely.
  bool fp8_activations = true;
  // Decode steps (up to 8 rows on a GEMV path) fold SwiGLU into the gate|up GEMV (gemv.h);
  // off: a separate kernel (PP_GPU_FUSE=0 also).
  bool fuse_decode = true;
  // GEMVs launched as programmatic dependents on sm_90+ (PP_GPU_PDL=0 also turns it off).
  bool programmatic_launch = true;
};

// One logit row's sampling: the parameters of gpu::SampleRow, and its penalties.
struct GpuSampleSpec {
  float temperature = 1.0f;
  int32_t top_k = 0;
  float top_p = 1.0f;
  float min_p = 0.0f;
  uint64_t seed = 0;
  uint64_t step = 0;
  float repetition = 1.0f, presence = 0.0f, frequency = 0.0f;
  std::span<const int32_t> prompt_ids;  // repetition covers the prompt
  std::span<const int32_t> output_ids;
  // Logit bias (distinct ids) and the allowed-token mask (ceil(n_vocab / 32) words; empty: every
  // token), applied after the penalties.
  std::span<const int32_t> bias_ids;
  std::span<const float> bias_values;
  std::span<const uint32_t> allowed;
};

// Page-locked host copies of one sampling's results, and the event that says they are there.
class SampleSlot {
 public:
  static Result<SampleSlot> create(int64_t max_rows);
  // Blocks until the copy to the host has finished.
  Status wait();
  int64_t n_rows() const { return n_rows_; }
  int32_t n_top() const { return n_top_; }
  const int32_t* tokens() const { return host_.as<int32_t>(); }
  const float* logprobs() const { return reinterpret_cast<const float*>(tokens() + max_rows_); }
  const int32_t* top_ids() const { return tokens() + 2 * max_rows_; }  // [n_rows, n_top]
  const float* top_logprobs() const {
    return reinterpret_cast<const float*>(top_ids() + max_rows_ * kernels::gpu::kMaxTopLogprobs);
  }

 private:
  friend class GpuStageModel;
  kernels::gpu::HostBuffer host_;
  kernels::gpu::Event ready_;
  int64_t max_rows_ = 0, n_rows_ = 0;
  int32_t n_top_ = 0;
};

class GpuStageModel {
 public:
  // Loads layers [layer_begin, layer_end) of `weights` onto options.device: fp8 layer linears
  // (find(name)->dtype kF8E4M3) as their stored bytes and scales, everything else as bf16.
  // kInvalidArgument when the parts of a fused slot (q|k|v, gate|up) disagree on the format or
  // the scale kind, or a 128x128-scaled part other than the last has rows not a multiple of 128.
  // As rank tp.rank of tp.size: only that rank's slices (tp_slice_source over `weights`, which
  // holds whole tensors, or with `presliced` `weights` holds the rank's slices already, as a
  // tensor-parallel partition's rank file does); kInvalidArgument for a group the GPU cannot
  // split (see above).
  static Result<std::unique_ptr<GpuStageModel>> load(const ModelConfig& config,
                                                     const WeightSource& weights,
                                                     int64_t layer_begin, int64_t layer_end,
                                                     const GpuStageOptions& options, TpRank tp = {},
                                                     bool presliced = false);
  // The same layers with random_weights(config, seed)'s values, generated on the device (and
  // quantized there per options.quantization, bitwise as the host's quantize_on_load); as rank
  // tp.rank, the same slices as load() of that source would hold.
  static Result<std::unique_ptr<GpuStageModel>> random(const ModelConfig& config, uint64_t seed,
                                                       int64_t layer_begin, int64_t layer_end,
                                                       const GpuStageOptions& options,
                                                       TpRank tp = {});
  ~GpuStageModel();
  GpuStageModel(const GpuStageModel&) = delete;
  GpuStageModel& operator=(const GpuStageModel&) = delete;

  const ModelConfig& config() const { return config_; }
  // What this rank computes with (tp_local_config; config() at TP 1).
  const ModelConfig& local_config() const { return local_; }
  const TpLayout& tp_layout() const { return tp_; }
  // The group's NCCL communicator (rank tp.rank of tp.size, on this model's device); required
  // before forward() when the group has several ranks. Not owned; must outlive the forwards and
  // the graphs captured with it (allocate_kv drops them).
  void set_tp_comm(kernels::gpu::NcclComm* comm) { comm_ = comm; }
  const GpuStageOptions& options() const { return options_; }
  int64_t layer_begin() const { return layer_begin_; }
  int64_t layer_end() const { return layer_end_; }
  int64_t n_layer() const { return layer_end_ - layer_begin_; }
  bool has_embedding() const { return layer_begin_ == 0; }
  bool has_lm_head() const { return layer_end_ == config_.n_layer; }
  int64_t weight_bytes() const { return int64_t(weights_.bytes()); }
  // Bytes the scratch buffers take (fixed at load).
  int64_t scratch_bytes() const { return scratch_bytes_; }
  // Bytes of the attention workspace and metadata buffers now (they grow with the KV pool).
  int64_t workspace_bytes() const { return int64_t(attn_ws_.bytes() + meta_.bytes()); }

  // Bytes of KV (bf16) plus per-block attention workspace one block takes on this stage.
  int64_t kv_bytes_per_block(int64_t block_size) const;
  // (Re)allocates the KV pool; drops captured graphs and any cached KV.
  Status allocate_kv(int64_t n_blocks, int64_t block_size);
  int64_t kv_blocks() const { return n_blocks_; }
  int64_t kv_block_size() const { return block_size_; }

  kernels::gpu::Stream& stream() { return stream_; }

  // Queues one micro-batch. `input`: [n_tokens, n_embd] bf16 on the device, from the previous
  // stage (ignored at stage 0, which embeds the batch's token ids). `output`: where a stage
  // without the lm_head leaves its [n_tokens, n_embd] residual stream. The last stage keeps
  // f32 logits of the batch's logit rows for sample() (and logits()). Both buffers must stay
  // untouched until the stream has passed this forward.
  // Every rank of a tensor-parallel group runs the same forwards in the same order (the same
  // batch, and the same input at a stage after the first); each gets the same output.
  // Errors: a malformed batch, more tokens or sequences than the options allow, no KV pool, a
  // group of several ranks without set_tp_comm, a failed collective.
  Status forward(const Batch& batch, const kernels::gpu::Bf16* input, kernels::gpu::Bf16* output);
  // Last stage: the f32 logits [n_logit_rows, n_vocab] of the last forward, on the device
  // (nullptr on a tensor-parallel rank other than 0).
  const float* logits() const { return logits_; }
  // Last stage, rank 0 of its group: queues penalties and sampling of the last forward's logit
  // rows (rows[i] for logit row i) and the copy of the results into `slot` (wait on the slot
  // before reading it). kFailedPrecondition on any other rank (it has no logits).
  Status sample(std::span<const GpuSampleSpec> rows, int32_t n_top, SampleSlot& slot);

  // Forwards that replayed a graph, and graphs captured so far (for tests and the log).
  int64_t graph_replays() const { return graph_replays_; }
  int64_t graphs_captured() const { return int64_t(graphs_.size()); }

 private:
  using Layer = SlotMap<kernels::WeightView>;  // one layer's slots (arch-tensors.h), typed
  // Where one tensor of the table lives in the weight allocation.
  struct TensorPlace {
    void* data = nullptr;  // its first row, in `format`
    kernels::WeightFormat format = kernels::WeightFormat::kBF16;
    float* scales = nullptr;  // fp8: its first row's scales in the slot's scales
    kernels::ScaleKind scale_kind = kernels::ScaleKind::kNone;  // the slot's (after fusing)
  };
  GpuStageModel();
  Status init(const ModelConfig& config, int64_t layer_begin, int64_t layer_end,
              const GpuStageOptions& options, TpRank tp);
  // Lays out the slots of `st` in one allocation, in the formats `source` gives their tensors,
  // and points the layers and edges at them; `where[i]` is where st.tensors[i] goes.
  Status alloc_weights(const StageTensors& st, const WeightSource& source,
                       std::vector<TensorPlace>& where);
  Status alloc_scratch();
  // Reserves the Blas's fp8 scratch for this stage's fp8 linears (none: nothing).
  Status reserve_fp8();
  // Grows the attention workspace to what a batch of this shape needs (dropping graphs).
  Status ensure_workspace(int64_t n_tokens, int64_t n_seq, int64_t max_q_len, int64_t max_kv_len);
  // Packs the batch's metadata into the next staging slot and queues its upload. With
  // `pad_tokens` > n_tokens the batch is padded to that many one-token sequences.
  Status upload_metadata(const Batch& batch, int64_t pad_tokens, int64_t table_width);
  Status run(int64_t n_tokens, int64_t n_seq, int64_t max_q_len, int64_t max_kv_len,
             int64_t table_width, int64_t n_logit_rows);
  // gate|up of x_ and SwiGLU into act_: one GEMV on decode steps, two kernels otherwise.
  Status gate_up_swiglu(const kernels::WeightView& w, int64_t n_tokens);

  ModelConfig config_;
  ModelConfig local_;  // what this rank computes with (tp_local_config; config_ at TP 1)
  TpLayout tp_;
  kernels::gpu::NcclComm* comm_ = nullptr;
  std::vector<int64_t> vocab_bounds_;  // [tp size + 1]: each rank's first lm_head row, then V
  int64_t vocab_max_ = 0;              // the largest rank's lm_head rows
  GpuStageOptions options_;
  int64_t layer_begin_ = 0, layer_end_ = 0;
  kernels::gpu::Stream stream_, copy_stream_;
  std::unique_ptr<kernels::gpu::Blas> blas_;
  bool fuse_decode_ = true;  // options_.fuse_decode unless PP_GPU_FUSE=0

  // Weights: one allocation (the owning storage); each slot a typed view of a slice of it.
  kernels::gpu::DeviceBuffer weights_;
  // kEmbedding [n_vocab, n_embd] (stage 0); kFinalNorm [n_embd], kLmHead [tp_.n_vocab(), n_embd]
  // (last stage: this rank's vocabulary rows; a view of the embedding's when the head shares it).
  SlotMap<kernels::WeightView> edges_;
  std::vector<Layer> layers_;
  kernels::gpu::DeviceBuffer inv_freq_;  // [head_dim / 2] f32

  // KV pool and the attention workspace.
  kernels::gpu::DeviceBuffer kv_, attn_ws_;
  int64_t n_blocks_ = 0, block_size_ = 0, max_table_width_ = 0;

  // Scratch (max_tokens rows) and fixed metadata buffers.
  kernels::gpu::DeviceBuffer scratch_, meta_;
  int64_t scratch_bytes_ = 0;
  kernels::gpu::Bf16 *h_ = nullptr, *x_ = nullptr, *qkv_ = nullptr, *q_ = nullptr, *attn_ = nullptr,
                     *gate_up_ = nullptr, *act_ = nullptr, *rows_ = nullptr;
  float* logits_ = nullptr;    // [R, n_vocab] f32 (rank 0)
  float* gathered_ = nullptr;  // TP, last stage: [tp size, R, vocab_max_] f32, every rank's logits
  int32_t *d_ids_ = nullptr, *d_pos_ = nullptr, *d_seq_start_ = nullptr, *d_tables_ = nullptr,
          *d_logit_rows_ = nullptr;
  int64_t* d_slots_ = nullptr;
  size_t meta_bytes_ = 0;
  // Host staging for metadata uploads: a ring, each slot reusable once its event has fired.
  static constexpr int kStaging = 4;
  std::vector<kernels::gpu::HostBuffer> staging_;
  std::vector<kernels::gpu::Event> staging_done_;
  int staging_next_ = 0;

  // Sampling: device rows, penalties, results.
  kernels::gpu::DeviceBuffer sample_dev_;
  std::vector<kernels::gpu::HostBuffer> sample_staging_;  // a ring, as staging_
  std::vector<kernels::gpu::Event> sample_staging_done_;
  int sample_staging_next_ = 0;
  kernels::gpu::Event sampled_;  // compute: sampled; the copy stream waits on it
  kernels::gpu::Event copied_;   // copy stream: the results read out of sample_dev_
  std::vector<kernels::gpu::SampleRow> sample_params_;
  std::vector<kernels::gpu::PenaltyRow> sample_pen_rows_;
  std::vector<kernels::gpu::PenaltyEntry> sample_entries_;
  std::unordered_map<int32_t, size_t> sample_seen_;
  std::vector<kernels::gpu::LogitBias> sample_bias_;
  std::vector<int32_t> sample_mask_rows_;
  int64_t last_logit_rows_ = 0;

  // PP_GPU_PROFILE=1: GPU time of each forward and each sampling, from event pairs read one
  // step later, logged when the model is destroyed. PP_GPU_PROFILE=ops also splits each decode
  // step's GPU time by kind of op: the steps then run eagerly (no graphs), an event between
  // every two ops, queued behind a busy_wait so that the host's launch gaps do not count.
  enum OpKind : int {
    kOpEmbed,
    kOpNorm,
    kOpQkv,
    kOpRope,
    kOpAttention,
    kOpO,
    kOpGateUp,
    kOpSwiglu,
    kOpDown,
    kOpComm,
    kOpHead,
    kOpEnd,
    kOpKinds
  };
  struct Profile {
    bool on = false, pending_forward = false, pending_sample = false;
    kernels::gpu::Event f0, f1, s0, s1;
    double forward_ms = 0, sample_ms = 0;
    int64_t n_forward = 0, n_sample = 0;
    bool ops = false, ops_step = false;  // ops_step: this forward is a profiled decode step
    std::vector<kernels::gpu::Event> op_events;
    std::vector<int> op_kinds;
    size_t n_ops = 0;  // events recorded this step
    std::array<double, kOpKinds> op_ms{};
    int64_t op_steps = 0;
  };
  Profile prof_;
  Status profile_collect();
  // PP_GPU_PROFILE=ops: an event before an op of this kind (the end of the one before).
  Status op_mark(OpKind kind);

  // Decode graphs by (padded batch size, context bucket).
  std::map<std::pair<int64_t, int64_t>, kernels::gpu::Graph> graphs_;
  int64_t graph_replays_ = 0;
};

}  // namespace pp::model
