// The partition planner: which contiguous layers each of P pipeline stages runs, and what each
// stage then costs (parameters, bytes, FLOPs and KV bytes per token, an estimated step time).
// Needs only the model's config, never its weights.
//
// Strategies: `even` gives every stage the same number of layers (the first n_layer % P stages
// one more); `cost` minimises the slowest stage's estimated time, counting the embedding on the
// first stage and the final norm + lm_head (+ sampling) on the last; `manual` takes the ranges
// the user gives. Invariant of every Plan: the stages cover layers 0..n_layer-1 exactly once, in
// order, each stage at least one layer; stage 0 holds the embedding, stage P-1 the lm_head.
//
// The cost model (CostModel) is a roofline per stage and step:
//   time = max(tokens_per_step * flops_per_token / peak_flops, bytes / bandwidth)
// where bytes are the weights a step streams: every weight of the stage except the embedding
// table, of which a step gathers only its tokens' rows (a tied table that is also the stage's
// lm_head is streamed). The table still counts in the stage's bytes and memory, so the device
// memory check and the KV pool (the minimum over stages) see it. With the defaults (64 tokens a
// step, H200-like figures) decode is bandwidth-bound, so bytes dominate. FLOPs per token are 2 x
// the matmul parameters plus attention's 4 x q_dim x attention_context (QK^T and AV at an assumed
// context), and on the last stage 2 x n_embd x n_vocab for the lm_head plus ~5 x n_vocab for the
// softmax and sampling; the embedding lookup counts no FLOPs. An MoE layer's bytes and memory
// count every expert, its FLOPs only the n_expert_used experts a token touches (the bytes a step
// streams still count every expert: right for large batches, pessimistic for small ones).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "pp/model/arch-tensors.h"
#include "pp/model/config.h"
#include "pp/model/tensor-info.h"
#include "pp/status.h"

namespace pp::partition {

enum class Strategy : uint8_t { kEven, kCost, kManual };
const char* strategy_name(Strategy s);  // "even", "cost", "manual"
Result<Strategy> parse_strategy(std::string_view text);

// Shard dtypes: F32, F16, BF16, or F8_E4M3 ("fp8": the layers' linear weights in fp8 e4m3 with
// f32 scales, every other tensor in bf16; see quantization.h). Names as on the command line:
// "f32", "f16", "bf16", "fp8".
Result<model::DType> parse_shard_dtype(std::string_view text);
const char* shard_dtype_name(model::DType t);
// Bytes of an element that is not quantized (4 or 2; 2 for fp8, whose other tensors are bf16),
// also the KV cache's element size.
int64_t shard_dtype_bytes(model::DType t);
// Bytes tensor `t` takes in a shard of `dtype`: numel x shard_dtype_bytes, or for fp8 and a
// tensor quantized_on_load, numel bytes plus its f32 scales (per channel, or the checkpoint's
// own blocks or single scale when `c.quant` says so).
uint64_t shard_tensor_bytes(const model::ModelConfig& c, const model::TensorSpec& t,
                            model::DType dtype);

// Layers [begin, end) of one stage.
struct LayerRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
  bool operator==(const LayerRange&) const = default;
};
// "0-13" (inclusive, as on the command line); a one-layer range prints as "5".
std::string format_layer_range(LayerRange r);
// Parses "--layers 0-13,14-29" (inclusive ranges, or single layers "7"). The ranges must cover
// 0..n_layer-1 exactly once, in order, and there must be n_stages of them; otherwise a one-line
// kInvalidArgument naming the problem (overlap, gap, out of range, unordered, count).
Result<std::vector<LayerRange>> parse_layer_ranges(std::string_view text, int64_t n_layer,
                                                   int n_stages);

struct CostModel {
  double peak_flops = 989e12;        // FLOP/s of one device (dense BF16 of an H100/H200 SXM)
  double bandwidth = 4.8e12;         // bytes/s of device memory (H200 HBM3e)
  double tokens_per_step = 64;       // tokens a stage runs per step (a decode micro-batch)
  int64_t attention_context = 1024;  // context length assumed for attention FLOPs, tokens
  int64_t min_kv_tokens = 4096;      // KV a stage must hold beyond its weights (capped at the
                                     // model's context length), for --device-memory checks
};

struct StagePlan {
  int index = 0;
  LayerRange layers;
  bool has_embedding = false;       // holds model.embed_tokens.weight (stage 0)
  bool has_lm_head = false;         // holds model.norm + lm_head and samples (stage P-1)
  int64_t params = 0;               // parameters stored on the stage (a tied lm_head is a copy)
  uint64_t bytes = 0;               // weight bytes at the plan's dtype
  double flops_per_token = 0;       // estimated FLOPs per token (see the cost model above)
  uint64_t kv_bytes_per_token = 0;  // K and V bytes per token for the stage's layers
  double est_time_s = 0;            // the cost model's time of one step, seconds
  uint64_t device_memory = 0;       // bytes of the stage's device; 0 when not given
};

// The parts of the model a planned stage holds (its rows of the model's table of tensors).
model::StageParts stage_parts(const StagePlan& s);

struct Plan {
  Strategy strategy = Strategy::kEven;
  model::DType dtype = model::DType::kBF16;
  int64_t n_layer = 0;
  CostModel cost_model;
  std::vector<StagePlan> stages;
  int slowest = 0;  // index of the stage with the largest est_time_s
};

struct PlanOptions {
  int n_stages = 1;
  Strategy strategy = Strategy::kEven;
  std::vector<LayerRange> layers;       // kManual: one range per stage (see parse_layer_ranges)
  std::vector<uint64_t> device_memory;  // empty, one value for every stage, or one per stage
  model::DType dtype = model::DType::kBF16;
  CostModel cost_model;
};

// Layer `il`'s costs from the model's table of tensors (model::layer_tensors): its parameters
// (an MoE layer's all experts), and its FLOPs per token (of the experts, only the
// n_expert_used a token touches). An MoE family may mix dense and MoE layers (Qwen3-MoE's
// mlp_only_layers), so the cost is per layer.
int64_t layer_params(const model::ModelConfig& c, int64_t il);
double layer_flops_per_token(const model::ModelConfig& c, int64_t il, const CostModel& m);
// Fills params, bytes, FLOPs, KV bytes and est_time_s of a stage with the given layers and edges.
StagePlan stage_cost(const model::ModelConfig& c, LayerRange layers, bool has_embedding,
                     bool has_lm_head, model::DType dtype, const CostModel& m);
// Bytes a stage needs on its device: weights + KV for min(min_kv_tokens, max_position) tokens.
uint64_t stage_memory_needed(const model::ModelConfig& c, const StagePlan& s, const CostModel& m);

// Plans the split. Errors (one line each): n_stages < 1 or > n_layer, bad manual ranges, a
// device-memory list of the wrong length, a stage that does not fit its device (naming the
// stage, the bytes needed and the bytes available).
Result<Plan> make_plan(const model::ModelConfig& c, const PlanOptions& options);
// Recomputes the slowest stage of a plan whose stages are filled in.
void update_slowest(Plan& plan);

// The plan as a text table (one row per stage) followed by the predicted slowest stage.
std::string format_plan_table(const Plan& plan);

}  // namespace pp::partition
