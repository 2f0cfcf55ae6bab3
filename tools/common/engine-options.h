// The engine's options, one set for every tool that starts a pipeline::Engine (pp-serve, and
// pp-bench offline and sweep): the fields a tool's parser fills, their registration on a CLI11
// app with one help text each, the one place where they are checked and turned into
// pipeline::EngineOptions, and the same options as JSON for the run store.
//
// Defaults are the fields' initial values; a tool that wants another default sets the field
// before registering (pp-bench runs one stage, --pp 1, where pp-serve's default 0 lets a
// partition folder choose). Options a tool does not offer are left out by EngineOptionGroups and
// keep their defaults.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "pp/pipeline/engine.h"
#include "pp/status.h"

namespace pp::cli {

struct EngineArgs {
  // --- the model and its split
  std::string model;   // a Hugging Face folder, a .gguf file, a partition folder, or a config
  int32_t pp = 0;      // stages; 0: one, or a partition folder's own count
  std::string layers;  // the split as inclusive ranges "0-19,20-35"
  std::optional<uint64_t> random_weights;  // model names a config; weights from this seed
  std::string quantization;                // "fp8": quantize the weights on load; empty: none
  int32_t tp_size = 0;         // tensor-parallel ranks per stage (0: 1, or a partition's)
  std::string dtype = "auto";  // compute dtype: auto, or the device's own (f32 cpu, bf16 cuda)
  std::string cpu_dtype;       // "f32": CPU weights dequantized; empty/"auto": as stored

  // --- the device
  std::string device = "cpu";  // cpu or cuda
  std::vector<int> gpus;       // cuda: stage k on gpus[k % n]; empty: every visible GPU
  double mem_fraction = 0.85;  // cuda: share of each GPU for weights, buffers and KV
  bool disable_cuda_graph = false;

  // --- scheduling and the KV cache
  int32_t async_depth = 1;  // micro-batch groups beyond one per stage
  int32_t max_running_requests = 256;
  int32_t max_batch_tokens = 512;         // tokens per micro-batch at most (the prefill chunk)
  int64_t kv_blocks = 0;                  // KV blocks of 16 tokens; 0: what the stages hold
  int64_t max_total_tokens = 0;           // KV pool in tokens (rounded up to blocks); 0: unset
  std::string kv_memory;                  // KV bytes per stage as text ("4GiB"); empty: kv_blocks
  int32_t threads_per_stage = 0;          // compute threads of each local stage; 0: all cores
  bool disable_chunked_pipeline = false;  // one plan in flight per request, fixed chunks
  bool disable_prefix_cache = false;      // every prompt computed whole, nothing cached
  std::string grammar_backend = "xgrammar";  // structured output: "xgrammar" or "none" (off)

  // --- stages elsewhere, and lost stages
  std::string listen;                    // tcp://HOST:PORT for the stages; empty: ipc://
  std::optional<int32_t> expect_stages;  // wait for this many remote stages at listen
  int32_t stage_restarts = 3;            // restarts of lost local stages per run, in all
  double stage_timeout_s = 5.0;          // heartbeat silence that loses a stage, seconds

  std::string trace;  // Chrome trace of every micro-batch, written at the end
};

// The groups of options a tool offers beyond the ones every engine tool has (--pp,
// --async-depth, --max-running-requests, --max-batch-tokens, --disable-chunked-pipeline,
// --disable-prefix-cache (alias --disable-radix-cache), --kv-blocks, --threads-per-stage, --device,
// --gpus, --mem-fraction, --disable-cuda-graph,
// --random-weights, --quantization, --layers, --trace).
//
// SGLang's launch flags name the same options where pp has them, so that a SGLang command line
// works unchanged: --model-path (--model), --pp-size (--pp), --pp-async-batch-depth
// (--async-depth), --mem-fraction-static (--mem-fraction), --chunked-prefill-size
// (--max-batch-tokens), --max-total-tokens (the KV pool in tokens), --tp-size (--tp) and
// --dtype (auto, or the dtype the device computes in).
struct EngineOptionGroups {
  bool model = true;           // --model (pp-bench sweep names the model itself)
  bool kv_memory = false;      // --kv-memory
  bool remote_stages = false;  // --listen, --expect-stages
  bool stage_faults = false;   // --stage-restarts, --stage-timeout
  bool grammar = false;        // --grammar-backend
};

// Registers the options on `app`, filling `a` (which must outlive the parse).
void add_engine_options(CLI::App& app, EngineArgs& a, EngineOptionGroups groups = {});

// Checks the options (each value in its range, --pp against --expect-stages, --expect-stages
// with --listen, --kv-memory a size and not with --kv-blocks or --max-total-tokens,
// --dtype one the device computes in) and builds the engine's options.
// Errors are kInvalidArgument naming the option. What needs the model (the layer split against
// its layer count, a partition's stage count) is checked by Engine::start.
Result<pipeline::EngineOptions> engine_options(const EngineArgs& a);

// The options as JSON for the run store: model, pp, async_depth, max_running_requests,
// max_batch_tokens, kv_blocks, threads_per_stage, device; and when given or relevant
// chunked_pipeline (false), prefix_cache (false), trace,
// gpus, mem_fraction, cuda_graphs, random_weights, layers, kv_memory, listen, expect_stages.
nlohmann::json engine_params(const EngineArgs& a);

}  // namespace pp::cli
