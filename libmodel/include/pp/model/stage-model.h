// StageModel: the layers [layer_begin, layer_end) of a model, with the token embedding when
// layer_begin == 0 and the final norm and lm_head when layer_end == n_layer; one stage of the
// pipeline, or the whole model when it holds every layer. Weights are f32, or GGUF blocks kept
// as stored (CpuDtype), q|k|v and gate|up fused. It loads exactly the tensors the table lists for
// its parts (stage_tensors in arch-tensors.h), so a stage can be loaded from a shard holding only
// its own tensors.
//
// forward() takes a Batch and, at stage 0, its token ids, otherwise the previous stage's
// residual stream h [n_tokens, n_embd]. A stage without the lm_head returns h; the last stage
// returns logits [n_logit_rows, n_vocab] for the batch's logit rows. Splitting a model
// anywhere gives bitwise the same logits as running it whole, and a row's result does not
// depend on what else is in the batch.
//
// Tensor parallelism (tensor-parallel.h): loaded as rank r of N, a stage model holds its slice of
// every split tensor and computes with tp_local_config; forward() all-reduces the partial outputs
// of o_proj and down_proj through the TpComm given to set_tp_comm, and the last stage gathers the
// logits on rank 0 (other ranks return none).
//
// Not thread-safe: one forward at a time (the stage's compute loop).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "pp/kernels/host-weight.h"
#include "pp/model/arch-tensors.h"
#include "pp/model/batch.h"
#include "pp/model/config.h"
#include "pp/model/kv-cache.h"
#include "pp/model/quantization.h"
#include "pp/model/tensor-parallel.h"
#include "pp/model/weights.h"
#include "pp/status.h"

namespace pp::model {

class DecoderLayer;
struct LayerWorkspace;

class StageModel {
 public:
  // Loads layers [layer_begin, layer_end) of the model described by `config` from `weights`,
  // GGUF block weights kept as stored unless cpu_dtype is kF32 (quantization.h); as rank
  // tp.rank of tp.size, only that rank's slices: read out of whole tensors, or, when
  // `presliced`, `weights` already holds them (a tensor-parallel partition's rank file, each
  // tensor under its Hugging Face name with the rank's shape from shard_tensors) and they are
  // loaded as they are. kInvalidArgument for a bad range or group; kNotFound / kDataLoss for
  // missing or misshapen tensors.
  static Result<std::unique_ptr<StageModel>> load(const ModelConfig& config,
                                                  const WeightSource& weights, int64_t layer_begin,
                                                  int64_t layer_end,
                                                  CpuDtype cpu_dtype = CpuDtype::kAuto,
                                                  TpRank tp = {}, bool presliced = false);
  ~StageModel();
  StageModel(const StageModel&) = delete;
  StageModel& operator=(const StageModel&) = delete;

  const ModelConfig& config() const { return config_; }
  const TpLayout& tp_layout() const { return tp_; }
  // The group's collectives; required before forward() when the group has several ranks. Not
  // owned; must outlive the forwards.
  void set_tp_comm(TpComm* comm) { comm_ = comm; }
  // Tensor parallelism, last stage: how many of logit row i's most likely tokens the sampler
  // needs (k[i]; 0: the whole row, for penalties, biases, masks, logprobs or no top-k). The next
  // forward gathers only those: rank 0's row i is -inf except at a set of tokens that holds its
  // k most likely (ties: lower id), with their logits. Greedy is k = 1.
  void set_tp_row_top_k(std::span<const int32_t> k) { row_top_k_.assign(k.begin(), k.end()); }
  int64_t layer_begin() const { return layer_begin_; }
  int64_t layer_end() const { return layer_end_; }
  int64_t n_layer() const { return layer_end_ - layer_begin_; }
  bool has_embedding() const { return layer_begin_ == 0; }
  bool has_lm_head() const { return layer_end_ == config_.n_layer; }
  // Parameters held (a tied embedding and lm_head counted once).
  int64_t n_params() const;

  // (Re)allocates the KV pool: n_blocks blocks of block_size tokens for this stage's layers.
  // Any cached KV is lost.
  Status allocate_kv(int64_t n_blocks, int64_t block_size);
  const KvCache* kv() const { return kv_.get(); }
  // Bytes of KV one block takes on this stage.
  int64_t kv_bytes_per_block(int64_t block_size) const;

  // Runs the stage on one micro-batch. `input_hidden` is [n_tokens, n_embd] for a stage
  // without the embedding and ignored otherwise (the ids come from the batch). `output` is
  // resized to [n_tokens, n_embd] (h) or, with the lm_head, [n_logit_rows, n_vocab] (logits;
  // empty on a tensor-parallel rank other than 0).
  // Errors: a malformed batch, ids outside the vocabulary, no KV pool, a failed collective.
  Status forward(const Batch& batch, std::span<const float> input_hidden,
                 std::vector<float>& output);

 private:
  StageModel();
  Status run_layers(const Batch& batch, float* h);

  ModelConfig config_;
  ModelConfig local_;  // what this rank computes with (tp_local_config; config_ at TP 1)
  TpLayout tp_;
  TpComm* comm_ = nullptr;
  std::vector<int64_t> vocab_bounds_;  // [tp size + 1]: each rank's first lm_head row, then V
  int64_t layer_begin_ = 0, layer_end_ = 0;
  // The edges' slots: kEmbedding [n_vocab, n_embd] (stage 0); kFinalNorm [n_embd] and kLmHead
  // [tp_.n_vocab(), n_embd], this rank's vocabulary rows (last stage; empty when the head shares
  // the embedding, whose rows it then views).
  SlotMap<kernels::HostWeight> edges_;
  kernels::WeightView lm_head_;  // edges_[kLmHead] or, shared, edges_[kEmbedding]
  std::vector<DecoderLayer> layers_;
  std::vector<float> inv_freq_;  // [head_dim / 2]
  std::unique_ptr<KvCache> kv_;

  // Per-forward scratch, reused.
  std::unique_ptr<LayerWorkspace> ws_;
  std::vector<float> h_;                // [n_tokens, n_embd] residual stream of the last stage
  std::vector<float> rows_;             // [n_logit_rows, n_embd] normed rows for the lm_head
  std::vector<float> part_, gathered_;  // TP: this rank's logits, and every rank's (rank 0)
  std::vector<float> send_;             // TP: what this rank sends of its logits
  std::vector<int32_t> row_top_k_, top_ids_;
  std::vector<int64_t> slots_;  // [n_tokens]
};

}  // namespace pp::model
