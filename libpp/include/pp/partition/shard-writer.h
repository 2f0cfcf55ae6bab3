// The shard writer: a model (Hugging Face folder or GGUF file) and a Plan in, a partition folder
// out: DIR/stage-K.safetensors (Hugging Face tensor names, the plan's dtype), the tokenizer
// (tokenizer.json, and tokenizer_config.json), and DIR/partition.json (see manifest.h), written
// last.
//
// Tensor parallel (WriteOptions::tp = N > 1): DIR/stage-K-rank-R.safetensors for every stage K
// and rank R, each holding exactly the tensors stage K loads (stage_tensors) as rank R holds
// them (shard_tensors: its slices, the replicated tensors whole), read through tp_slice_source,
// so a rank's host stores and reads only its part. A tied lm_head is written as `lm_head.weight`
// (the rank's vocabulary rows) as below. fp8: a linear is quantized whole and then sliced (a
// row-parallel slice keeps the scales of its whole rows), so a rank file holds the bytes a rank
// would cut out of the tp 1 shard; a slice that cuts an FP8 checkpoint's 128 x 128 blocks reads
// as f32 and is quantized again per channel (lossy, unlike loading whole blocks and slicing).
//
// Atomic: everything is written into DIR.tmp-<random> beside DIR, each file fsynced, and the
// folder renamed to DIR only when complete. Any failure, or the cancel flag, removes the
// temporary folder: there is never a half-written DIR. An existing DIR is refused, or with
// `force` swapped for the new one in one rename once the new one is complete.
//
// Memory: one tensor at a time is read (dequantized to f32) into a file-backed scratch mapping
// inside the temporary folder (the safetensors writer takes a whole file's tensors at once), so
// the kernel can page a large stage out instead of holding the model in RAM. A tied lm_head is
// written as its own `lm_head.weight` into the last stage when that stage does not also hold the
// embedding table.
//
// fp8 (plan dtype kF8E4M3): the layers' linear weights (quantized_on_load) are written as
// F8_E4M3 with f32 scales: a bf16/f32 source's quantized per channel (`P.weight_scale`
// [rows, 1], compressed-tensors naming), an FP8 checkpoint's kept as stored (block scales as
// `P.weight_scale_inv`); every other tensor in bf16. The manifest's config then carries the
// quantization_config that describes the shards (none when an FP8 source is written in a 16- or
// 32-bit dtype, which dequantizes it).
#pragma once

#include <atomic>
#include <filesystem>
#include <functional>

#include "pp/model/model-source.h"
#include "pp/partition/manifest.h"
#include "pp/partition/planner.h"
#include "pp/status.h"

namespace pp::partition {

struct WriteOptions {
  std::filesystem::path out_dir;  // DIR; its parent folder must exist
  bool force = false;             // replace an existing DIR (atomically, after the new one is done)
  // Ranks per stage: 1 writes one file per stage (whole tensors); N > 1 one file per stage and
  // rank. kInvalidArgument when the model cannot be split N ways (model::tp_layouts).
  int32_t tp = 1;
  // Checked between tensors; when set, the write stops, cleans up and returns kCancelled.
  // A tool's SIGINT/SIGTERM handler sets it.
  const std::atomic<bool>* cancel = nullptr;
  // Called after stage `k`'s files are complete (written, fsynced, hashed). A non-ok Status aborts
  // the write (cleaning up) and is returned: progress reports and failure-injection tests.
  std::function<Status(int k, const StageFile& file)> after_stage;
};

// Writes the partition and returns its manifest. Errors: DIR exists (kAlreadyExists), the
// parent is missing (kNotFound), tensors the plan needs are missing from the source (kNotFound),
// not enough disk space (kResourceExhausted), a failed write (kInternal), kCancelled.
Result<PartitionManifest> write_partition(const model::ModelSource& source, const Plan& plan,
                                          const WriteOptions& options);

// The checksum recorded for a source model: sha256 of a GGUF file, or of the concatenated
// *.safetensors files of a folder in name order; `files` receives the names hashed.
Result<std::string> source_checksum(const model::ModelSource& source, std::string* files);

}  // namespace pp::partition
