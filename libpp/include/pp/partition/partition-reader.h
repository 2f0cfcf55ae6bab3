// Reading a partition folder made by pp-partition split: its manifest, one stage's shard (all a
// stage host needs), and a full verification of every file against the manifest.
//
// A stage host calls open_stage(dir, k): it reads partition.json and stage-K.safetensors only, so
// a host may hold nothing but those two files (and the tokenizer when it serves). In a
// tensor-parallel partition (manifest tp > 1) rank r of stage k reads stage-K-rank-R.safetensors
// only, which already holds its slices.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "pp/model/config.h"
#include "pp/model/tensor-parallel.h"
#include "pp/model/weights.h"
#include "pp/partition/manifest.h"
#include "pp/partition/planner.h"
#include "pp/status.h"

namespace pp::partition {

// Reads and checks DIR/partition.json (see manifest.h). kNotFound when DIR or the manifest is
// missing, kDataLoss when it is malformed.
Result<PartitionManifest> open_partition(const std::filesystem::path& dir);

// One stage of a partition, opened: what StageModel needs to load it.
struct StageShard {
  model::ModelConfig config;  // the whole model's normalized config
  int index = 0;              // this stage
  int n_stages = 1;
  LayerRange layers;           // [begin, end), global layer indices (tensor names keep them)
  bool has_embedding = false;  // the file holds model.embed_tokens.weight
  bool has_lm_head = false;    // the file holds model.norm.weight and the lm_head
  // The lm_head's tensor in this file: "lm_head.weight", or "model.embed_tokens.weight" for a
  // tied model whose one stage holds both; empty without lm_head.
  std::string lm_head_tensor;
  model::DType dtype = model::DType::kBF16;  // storage dtype of the shard
  std::filesystem::path file;  // DIR/stage-K.safetensors (DIR/stage-K-rank-R.safetensors)
  std::shared_ptr<const model::WeightSource> weights;  // this stage's tensors only
  // Set when `weights` holds rank sliced_for->rank's slices of the stage's tensors (a
  // tensor-parallel partition): load them as they are (StageModel::load's `presliced`). Unset:
  // whole tensors, which a rank of any group size slices at load.
  std::optional<model::TpRank> sliced_for;
};

// Opens stage k, as rank tp.rank of a group of tp.size. Checks the file's size against the
// manifest always, its sha256 when `verify_checksum` (kDataLoss naming the file on a mismatch),
// and that the file holds the tensors the stage needs with the rank's shapes. A partition of
// tp 1 opens the stage's one file for any rank; a tensor-parallel partition opens rank tp.rank's
// file and is kInvalidArgument for a group size other than its own.
Result<StageShard> open_stage(const std::filesystem::path& dir, int k, bool verify_checksum = false,
                              model::TpRank tp = {});
Result<StageShard> open_stage(const std::filesystem::path& dir, const PartitionManifest& m, int k,
                              bool verify_checksum = false, model::TpRank tp = {});

// The result of checking one file of a partition.
struct FileCheck {
  std::string file;    // relative to the partition folder
  uint64_t bytes = 0;  // size found on disk (0 when missing)
  bool ok = false;
  std::string problem;  // empty when ok: "missing", "size 10 != 12", "sha256 mismatch", ...
};

// Checks every file the manifest names (stages, or every rank of every stage, and the
// tokenizer): present, of the recorded size, with the recorded sha256; and that each stage file
// is a readable safetensors file holding exactly the tensors of its layers and edges, each with
// the shape its rank holds (model::shard_tensors; the whole shape at tp 1). An unreadable manifest
// is the Status; problems with files are reported per file.
Result<std::vector<FileCheck>> verify_partition(const std::filesystem::path& dir);

// Which stage a Hugging Face tensor name belongs to, by the model's table of tensors
// (model::find_tensor_spec): a layer's tensors go to the stage holding that layer, the embedding
// to stage 0, the final norm and lm_head.weight to the last stage. -1 for a name the model does
// not read (rotary caches, a bias the config does not use, a layer it does not have).
int stage_of_tensor(const model::ModelConfig& c, const std::string& name,
                    const std::vector<StagePlan>& stages);

}  // namespace pp::partition
