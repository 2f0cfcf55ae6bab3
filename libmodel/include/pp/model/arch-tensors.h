// The table of a model's tensors: for each tensor its Hugging Face name, its shape computed from
// the ModelConfig, which part of a stage owns it (embedding, layer, head), how it splits under
// tensor parallelism, and which weight slot it fills. Each family lists its layer's tensors once
// (ArchSpec::layer_tensors, in libmodel/src/arch/); every consumer reads these lists: the CPU and
// GPU stage models (what to load, into which slot), random weights (what exists), the partition
// writer and reader (which stage owns what) and the planner (parameter counts).
//
// Slots: a layer computes with a few fused weights rather than one per checkpoint tensor. q, k
// and v fill one `kQkv` slot at row offsets 0, Q and Q + KV ([Q + 2 KV, E]); gate and up one
// `kGateUp` slot ([2 F, E]); their biases likewise. A slot's shape is the sum of its parts'
// (slots_of), so no consumer spells a fused shape by hand.
//
// Experts (an MoE layer, ModelConfig::layer_is_moe): the router fills `kRouter` ([n_expert,
// E]); every expert's gate and up fill one `kExpertGateUp` slot, expert e's gate at rows
// e 2F and its up at e 2F + F ([n_expert 2F, E], i.e. [n_expert, 2F, E]); every expert's down
// one `kExpertDown` slot at rows e E ([n_expert E, F], i.e. [n_expert, E, F]). One contiguous
// weight per layer with a fixed stride per expert is what a grouped GEMM wants (vLLM's fused_moe
// w13 / w2 layout): expert e is a pointer offset, not a lookup in a list, and each expert's
// gate|up is the dense layer's kGateUp, so the same SwiGLU follows.
//
// The head: tied embeddings read model.embed_tokens.weight for the lm_head; so does a checkpoint
// without lm_head.weight (head_reads_embedding). A stage holding both the embedding and the head
// then shares one table (StageTensors::head_shares_embedding); a last stage without the
// embedding reads embed_tokens into its own head slot.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pp/model/config.h"
#include "pp/model/weights.h"

namespace pp::model {

// Which part of a stage holds a tensor.
enum class TensorOwner : uint8_t {
  kEmbedding,  // the token embedding: stage 0
  kLayer,      // one decoder layer: the stage whose range holds TensorSpec::layer
  kHead,       // final norm and lm_head: the last stage
};

// How a tensor splits across the ranks of a tensor-parallel stage.
enum class TpSplit : uint8_t {
  kReplicated,  // every rank holds all of it (norms, the router, the token embedding)
  kColumn,      // rows (output features) split: q, k, v, gate, up (experts' too), biases
  kRow,         // columns (input features) split, outputs summed: o_proj, down_proj (experts')
  kVocab,       // vocabulary rows split: the lm_head (tensor-parallel.h)
};

// The weights a stage computes with. A tensor fills one slot, whole or at a row offset.
enum class WeightSlot : uint8_t {
  kEmbedding,     // [n_vocab, n_embd]
  kFinalNorm,     // [n_embd]
  kLmHead,        // [n_vocab, n_embd]
  kAttnNorm,      // [n_embd]
  kQkv,           // [q_dim + 2 kv_dim, n_embd]: q | k | v rows
  kQkvBias,       // [q_dim + 2 kv_dim]
  kQNorm,         // [head_dim]
  kKNorm,         // [head_dim]
  kO,             // [n_embd, q_dim]
  kFfnNorm,       // [n_embd]
  kGateUp,        // [2 n_ff, n_embd]: gate | up rows
  kDown,          // [n_embd, n_ff]
  kRouter,        // [n_expert, n_embd]: the MoE router (gate)
  kExpertGateUp,  // [n_expert * 2 n_ff_expert, n_embd]: per expert gate | up rows
  kExpertDown,    // [n_expert * n_embd, n_ff_expert]: per expert down
  kCount,
};
const char* weight_slot_name(WeightSlot s);  // "qkv", "gate_up", ...

struct TensorSpec {
  std::string name;            // Hugging Face name: "model.layers.3.self_attn.q_proj.weight"
  std::vector<int64_t> shape;  // Hugging Face shape, outermost first ([out, in] for a linear)
  TensorOwner owner = TensorOwner::kLayer;
  int64_t layer = -1;  // global layer index for kLayer, -1 otherwise
  TpSplit split = TpSplit::kReplicated;
  WeightSlot slot = WeightSlot::kAttnNorm;
  int64_t row_offset = 0;  // first row of the slot this tensor fills
  bool optional = false;   // a checkpoint may lack it (lm_head.weight of a tied model)

  int64_t rows() const { return shape.empty() ? 1 : shape[0]; }
  int64_t cols() const { return shape.size() < 2 ? 1 : shape[1]; }
  int64_t numel() const { return rows() * cols(); }
  bool is_matrix() const { return shape.size() == 2; }  // a linear's weight
};

// One slot a list of tensors fills: [rows, cols], the rows summed over its parts.
struct SlotSpec {
  WeightSlot slot = WeightSlot::kAttnNorm;
  int64_t layer = -1;  // as TensorSpec::layer
  int64_t rows = 0, cols = 0;
  int64_t numel() const { return rows * cols; }
};

// Something per slot (a layer's weights, a stage's edges), indexed by WeightSlot.
template <typename T>
class SlotMap {
 public:
  T& operator[](WeightSlot s) { return v_[size_t(s)]; }
  const T& operator[](WeightSlot s) const { return v_[size_t(s)]; }
  std::span<T> all() { return v_; }
  std::span<const T> all() const { return v_; }

 private:
  std::array<T, size_t(WeightSlot::kCount)> v_{};
};

// Layer `il`'s tensors, from the config's family (ArchSpec::layer_tensors).
std::vector<TensorSpec> layer_tensors(const ModelConfig& c, int64_t il);
// Every tensor of a checkpoint of this config: embedding, all layers, final norm, lm_head
// (optional when the embeddings are tied). What random weights hold; what a partition owns.
std::vector<TensorSpec> model_tensors(const ModelConfig& c);

// The table's entry for a Hugging Face tensor name, or nullopt for a name the model does not
// read (rotary caches, a bias the config does not use, a layer past n_layer). Layer tensors are
// found under the layer prefix every family shares ("model.layers.<il>."), without listing the
// other layers.
std::optional<TensorSpec> find_tensor_spec(const ModelConfig& c, std::string_view name);

// The tied-embedding rule, once: true when the lm_head reads model.embed_tokens.weight from `w`
// (tied embeddings and the source has the table, or the source has no lm_head.weight).
bool head_reads_embedding(const ModelConfig& c, const WeightSource& w);

// The parts of the model one stage holds.
struct StageParts {
  int64_t layer_begin = 0, layer_end = 0;  // [begin, end)
  bool embedding = false;                  // the token embedding (stage 0)
  bool head = false;                       // the final norm and lm_head (the last stage)
};
// The parts of layers [layer_begin, layer_end): the embedding when it starts at 0, the head when
// it ends at n_layer.
StageParts stage_parts(const ModelConfig& c, int64_t layer_begin, int64_t layer_end);

// What one stage reads, in load order: embedding, each layer's tensors, final norm, head.
struct StageTensors {
  std::vector<TensorSpec> tensors;
  // The head reads the embedding and this stage holds it: kLmHead is the kEmbedding slot, and
  // no head tensor is listed.
  bool head_shares_embedding = false;
};
StageTensors stage_tensors(const ModelConfig& c, const StageParts& parts,
                           bool head_reads_embedding);
// The same for a source: its head follows head_reads_embedding(c, w).
StageTensors stage_tensors(const ModelConfig& c, const WeightSource& w, int64_t layer_begin,
                           int64_t layer_end);

// True when a stage holding `parts` owns `t` (embedding at stage 0, head at the last stage, a
// layer's tensors with the layer).
bool stage_owns(const StageParts& parts, const TensorSpec& t);

// The slots `tensors` fill, in order of first appearance, with their shapes.
std::vector<SlotSpec> slots_of(std::span<const TensorSpec> tensors);
// Parameters of a list of tensors (sum of numel); of its linear weights only.
int64_t tensor_params(std::span<const TensorSpec> tensors);
int64_t matrix_params(std::span<const TensorSpec> tensors);

}  // namespace pp::model
