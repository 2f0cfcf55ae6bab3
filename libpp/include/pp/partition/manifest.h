// PartitionManifest: what DIR/partition.json says about a partition made by pp-partition split.
//
// partition.json (format_version 1, or 2 for a tensor-parallel partition):
//   format "pp-partition", format_version, pp_version, created (UTC, ISO 8601), dtype ("bf16"...),
//   config (the normalized model config, Hugging Face form), chat_template,
//   tokenizer {file, sha256, config_file, config_sha256},
//   source {path, kind "gguf"|"hf", sha256, checksum_of},
//   plan {strategy, n_layer, cost_model {...}},
//   stages [{index, layers {begin, end} (half-open), embedding, lm_head, lm_head_tensor, params,
//            weight_bytes, flops_per_token, kv_bytes_per_token, est_time_s, device_memory,
//            file, bytes (of the file), sha256, n_tensors}]
// A tensor-parallel partition (split --tp N, N > 1) is format_version 2 (a reader of version 1
// refuses it rather than load a rank's slices as whole tensors) with a top-level `tp` N, and
// each stage lists its ranks' files in rank order instead of one file:
//   stages [{..., ranks [{rank, file, bytes, sha256, n_tensors}]}]
// stage-K-rank-R.safetensors holds rank R's slices of stage K's tensors (shard_tensors in
// tensor-parallel.h) under their Hugging Face names with the rank's shapes. A partition of
// tp 1 has no `tp` field and is written byte for byte as before.
// The source checksum is the sha256 of the GGUF file, or of the concatenated bytes of the
// folder's *.safetensors files in name order (checksum_of lists them).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "pp/model/config.h"
#include "pp/partition/planner.h"
#include "pp/status.h"

namespace pp::partition {

inline constexpr int kManifestFormatVersion = 1;
// A tensor-parallel partition's (tp > 1).
inline constexpr int kManifestFormatVersionTp = 2;
inline constexpr const char* kManifestName = "partition.json";

// One safetensors file of a partition: a stage's, or one rank's of a stage.
struct ShardFile {
  // "stage-0.safetensors", or "stage-0-rank-1.safetensors" in a tensor-parallel partition;
  // relative to the partition folder
  std::string file;
  uint64_t bytes = 0;  // size of the file
  std::string sha256;  // of the whole file, 64 hex digits
  int64_t n_tensors = 0;
};

// The files of one stage.
struct StageFile {
  // ranks[r] is rank r's file; one file (the whole stage) when the partition's tp is 1.
  std::vector<ShardFile> ranks;
  // The tensor that is the lm_head in this file: "lm_head.weight", or "model.embed_tokens.weight"
  // when the embeddings are tied and this stage holds the table; empty without lm_head.
  std::string lm_head_tensor;
};

struct TokenizerFiles {
  std::string file;  // "tokenizer.json" (Hugging Face tokenizers format)
  std::string sha256;
  std::string config_file;  // "tokenizer_config.json" when the source had one, else empty
  std::string config_sha256;
};

struct SourceInfo {
  std::string path;         // absolute path of the model the partition was made from
  std::string kind;         // "gguf" or "hf"
  std::string sha256;       // see the top of this file
  std::string checksum_of;  // the files hashed, comma-separated names
};

struct PartitionManifest {
  int format_version = kManifestFormatVersion;
  std::string pp_version;
  std::string created;         // "2025-01-31T12:00:00Z"
  model::ModelConfig config;   // parsed from config_json
  nlohmann::json config_json;  // the normalized config as stored
  std::string chat_template;   // empty when the model has none
  TokenizerFiles tokenizer;
  SourceInfo source;
  Plan plan;                     // plan.stages[k] describes stage k
  std::vector<StageFile> files;  // files[k] is stage k's shard (its ranks' shards)
  // Ranks per stage: each stage is stored as tp files, one per rank (1: whole tensors, which
  // any group size slices at load).
  int32_t tp = 1;
  int n_stages() const { return int(plan.stages.size()); }
};

nlohmann::json manifest_to_json(const PartitionManifest& m);
// kDataLoss naming `where` when a field is missing or malformed, or the stages do not cover the
// model's layers exactly once in order.
Result<PartitionManifest> manifest_from_json(const nlohmann::json& j, const std::string& where);

}  // namespace pp::partition
