// Tensor parallelism inside a stage (Megatron style): what rank r of a group of N holds, how
// each tensor of the table (arch-tensors.h) is sliced for it, and the collectives a rank's
// forward calls.
//
// The split, from each TensorSpec's TpSplit:
//   - query heads are divided among the ranks as evenly as whole heads allow (rank r: heads
//     [r H / N, (r + 1) H / N)); a rank holds every KV head its query heads read, so when the
//     model has fewer KV heads than ranks (or the heads do not divide evenly) a KV head is
//     replicated on the ranks that need it. q, k, v (and their biases) are column-parallel;
//     o_proj is row-parallel: its columns are the rank's query heads.
//   - the MLP's n_ff (each expert's n_ff_expert) is divided in units of 128, 64, 32 or 1 rows,
//     the largest that gives every rank one, so that GGUF and fp8 blocks stay whole where they
//     can; gate and up are column-parallel, down row-parallel.
//   - the lm_head is vocabulary-parallel (rank r: rows [r V / N, (r + 1) V / N)); the token
//     embedding is replicated (a lookup per token costs no collective; a vocabulary-parallel
//     embedding would cost an all-reduce of [n_tokens, n_embd] at every stage 0 forward).
//   - norms and the MoE router are replicated.
// A rank's forward sums the partial outputs of o_proj and down_proj with an all-reduce (the
// residual stream h is then the same on every rank) and gathers the lm_head's logits on rank 0,
// which samples.
//
// A rank computes with a local config (tp_local_config): the model's config with n_head,
// n_head_kv, n_ff and n_ff_expert its own, so the layer code is the same for any N. Its query
// head h is the model's head TpLayout::head_begin + h, which reads the model's KV head
// (head_begin + h) / group: attention takes both (cpu::AttentionParams::head_begin, group).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "pp/model/arch-tensors.h"
#include "pp/model/config.h"
#include "pp/model/weights.h"
#include "pp/status.h"

namespace pp::model {

// A rank in a tensor-parallel group of `size` ranks.
struct TpRank {
  int32_t rank = 0, size = 1;
  bool operator==(const TpRank&) const = default;
};

// What rank `tp.rank` of `tp.size` holds; each range is [begin, end) in the model's numbering.
struct TpLayout {
  TpRank tp;
  int64_t head_begin = 0, head_end = 0;            // query heads
  int64_t kv_head_begin = 0, kv_head_end = 0;      // KV heads
  int64_t group = 1;                               // the model's query heads per KV head
  int64_t ff_begin = 0, ff_end = 0;                // rows of n_ff (a dense MLP)
  int64_t ff_expert_begin = 0, ff_expert_end = 0;  // rows of n_ff_expert (each expert)
  int64_t vocab_begin = 0, vocab_end = 0;          // rows of the lm_head

  int64_t n_head() const { return head_end - head_begin; }
  int64_t n_head_kv() const { return kv_head_end - kv_head_begin; }
  int64_t n_vocab() const { return vocab_end - vocab_begin; }
};

// The layout of rank tp.rank. kInvalidArgument for a size below 1, a rank outside the group,
// or more ranks than query heads (a rank without a head would have nothing to compute).
Result<TpLayout> tp_layout(const ModelConfig& c, TpRank tp);
// Every rank's layout, in rank order (the lm_head's vocabulary slices tile [0, n_vocab)).
Result<std::vector<TpLayout>> tp_layouts(const ModelConfig& c, int32_t size);

// The config a rank computes with: n_head, n_head_kv, n_ff and n_ff_expert its own; everything
// else (n_vocab included: the embedding is whole) the model's. Not valid() in general (5 query
// heads over 2 KV heads): it sizes buffers and tables, nothing more.
ModelConfig tp_local_config(const ModelConfig& c, const TpLayout& l);

// Which part of a full (Hugging Face shaped) tensor a rank reads: rows [row_begin, row_end) and
// columns [col_begin, col_end); a 1-D tensor has one column.
struct TpSlice {
  int64_t row_begin = 0, row_end = 0, col_begin = 0, col_end = 0;
  int64_t rows() const { return row_end - row_begin; }
  int64_t cols() const { return col_end - col_begin; }
  bool whole(const TensorSpec& full) const {
    return row_begin == 0 && row_end == full.rows() && col_begin == 0 && col_end == full.cols();
  }
};

// One tensor as a rank holds it: its table entry with the rank's shape and its row offset in
// the rank's slot, and the slice of the full tensor it reads.
struct ShardedTensor {
  TensorSpec local;
  TpSlice slice;
};

// `full` (an entry of the model's table) as rank l.tp.rank holds it.
ShardedTensor shard_tensor(const ModelConfig& c, const TpLayout& l, const TensorSpec& full);
// A stage's tensors (stage_tensors) as the rank holds them, in the same order.
std::vector<ShardedTensor> shard_tensors(const ModelConfig& c, const TpLayout& l,
                                         std::span<const TensorSpec> full);

// A WeightSource showing `base`'s tensors as one rank holds them: each tensor of `tensors`
// under its name with the rank's shape, read from its slice; other names are absent. A slice
// of a block-quantized tensor (GGUF blocks, fp8 128 x 128 tiles) that cuts a block reads as f32
// (find() says so); every other slice keeps the stored format and its scales. `base` must
// outlive the view.
std::unique_ptr<WeightSource> tp_slice_source(const WeightSource& base,
                                              std::vector<ShardedTensor> tensors);

// The collectives of one rank's forward. Every rank of a group calls the same collectives in
// the same order with the same sizes; a failure (a lost rank, the pipeline reset) is a Status
// and the forward gives up.
class TpComm {
 public:
  virtual ~TpComm() = default;
  virtual TpRank rank() const = 0;
  // x [n] becomes the sum over the ranks' x, added in rank order ((x0 + x1) + x2 ...), so every
  // rank gets the same bits and a run is reproducible.
  virtual Status all_reduce_sum(std::span<float> x) = 0;
  // Rank 0's `out` becomes every rank's `part` concatenated in rank order (out.size() is the
  // sum of the parts' sizes); on other ranks `out` is untouched.
  virtual Status gather(std::span<const float> part, std::span<float> out) = 0;
};

}  // namespace pp::model
