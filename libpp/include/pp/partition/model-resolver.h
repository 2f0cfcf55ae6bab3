// The model source resolver: what the user named with --model, opened once and the same way by
// every tool (pp-serve, pp-stage, pp-bench, the coordinator). Four kinds of source:
//
//   a partition folder (partition.json + stage-K.safetensors): its config, split and tokenizer;
//     each stage opens only its own shard;
//   a Hugging Face folder (config.json, *.safetensors, tokenizer.json) or one GGUF file: the
//     whole model, any split;
//   a config (config.json or its folder) with random weights from a seed (--random-weights):
//     a real-size model without a download; a tokenizer.json beside the config is used.
//
// Resolving reads metadata only (configs, manifests, file headers): weights are read by the
// stage backend that loads them. A source that is none of these is one clear error naming it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "pp/model/config.h"
#include "pp/model/model-source.h"
#include "pp/model/quantization.h"
#include "pp/model/tensor-parallel.h"
#include "pp/model/tokenizer.h"
#include "pp/model/weights.h"
#include "pp/partition/manifest.h"
#include "pp/partition/planner.h"
#include "pp/status.h"

namespace pp::partition {

enum class SourceKind : uint8_t { kPartition, kHfDir, kGguf, kRandomWeights };
// "partition", "hf", "gguf", "random"
const char* source_kind_name(SourceKind k);

struct ResolveOptions {
  // The path names a config (config.json or its folder); the weights are random from this seed,
  // made where each stage loads (model::random_weights on the CPU, on the device on a GPU).
  std::optional<uint64_t> random_weights;
  // Quantize the weights as each stage loads them (`--quantization fp8`): every source kind.
  model::Quantization quantization = model::Quantization::kNone;
  // The CPU backend's weights (`--cpu-dtype`): GGUF blocks as stored (kAuto) or all f32.
  model::CpuDtype cpu_dtype = model::CpuDtype::kAuto;
};

// The weights of one stage, opened (not yet read).
struct StageWeights {
  model::ModelConfig config;  // the whole model's config
  LayerRange layers;          // [begin, end), global layer indices
  // The stage's tensors under Hugging Face names; null for random weights (random_seed set),
  // which each backend makes itself.
  std::shared_ptr<const model::WeightSource> weights;
  std::optional<uint64_t> random_seed;
  // Quantization on load. `weights` already reads quantized (model::quantize_on_load); random
  // weights are made and then quantized by the backend, the same way on the CPU and the GPU.
  model::Quantization quantization = model::Quantization::kNone;
  // How a CPU stage holds its weights (model::StageModel::load).
  model::CpuDtype cpu_dtype = model::CpuDtype::kAuto;
  // Set when `weights` already holds rank sliced_for->rank's slices (a tensor-parallel
  // partition's rank file): the backend loads them as they are instead of slicing whole
  // tensors (model::StageModel::load's `presliced`).
  std::optional<model::TpRank> sliced_for;
};

class ResolvedModel {
 public:
  const std::filesystem::path& path() const { return path_; }  // absolute
  SourceKind kind() const { return kind_; }
  const model::ModelConfig& config() const { return config_; }
  std::optional<uint64_t> random_seed() const { return random_seed_; }
  // The manifest of a partition folder; null for other kinds.
  const PartitionManifest* partition() const { return partition_ ? &*partition_ : nullptr; }
  // The split a partition folder fixes (one range per stage); empty for other kinds.
  std::vector<LayerRange> fixed_layers() const;
  // The tensor-parallel size a partition folder fixes: its manifest's tp when above 1 (one
  // file per stage and rank); 0 for any (other kinds, and partitions whose stage files hold
  // whole tensors, of which each rank reads its slices).
  int32_t fixed_tp() const;
  // The dtype the planner assumes for the weights in memory: f32 for a model loaded on the CPU
  // backend, bf16 for random weights and partitions (their stored dtype); kF8E4M3 when the
  // layers' weights are fp8 (an fp8 checkpoint or partition, or quantization on load).
  model::DType plan_dtype() const;
  model::Quantization quantization() const { return quantization_; }
  // The model's own Jinja chat template; empty when it has none.
  const std::string& chat_template() const { return chat_template_; }
  // Whether a tokenizer comes with the model (GGUF metadata, tokenizer.json).
  bool has_tokenizer() const;
  // Loads the tokenizer; kNotFound naming the path when the model has none. For a Hugging Face
  // folder, BOS and EOS come from config.json (tokenizer.json only lets the tokenizer guess).
  Result<std::shared_ptr<const model::Tokenizer>> load_tokenizer() const;

  // Opens stage k of n with layers `layers`, as rank tp.rank of a group of tp.size (for a
  // partition: checked against its own split; only stage k's shard is opened, or in a
  // tensor-parallel partition only rank tp.rank's, and StageWeights::sliced_for is set). Errors:
  // a stage count, range or group size the source cannot serve, missing or malformed files.
  Result<StageWeights> open_stage(int32_t k, int32_t n, LayerRange layers,
                                  model::TpRank tp = {}) const;

 private:
  friend Result<ResolvedModel> resolve_model(const std::filesystem::path&, const ResolveOptions&);
  std::filesystem::path path_;
  SourceKind kind_ = SourceKind::kHfDir;
  model::ModelConfig config_;
  std::optional<uint64_t> random_seed_;
  model::Quantization quantization_ = model::Quantization::kNone;
  model::CpuDtype cpu_dtype_ = model::CpuDtype::kAuto;
  std::optional<PartitionManifest> partition_;
  std::shared_ptr<const model::ModelSource> source_;  // kHfDir, kGguf
  std::filesystem::path tokenizer_json_;              // partition, HF folder, random: when present
  std::string chat_template_;
};

// Resolves `path` (see the top of this file). kNotFound when it does not exist; the opener's
// error for a malformed or unsupported model.
Result<ResolvedModel> resolve_model(const std::filesystem::path& path,
                                    const ResolveOptions& options = {});

}  // namespace pp::partition
