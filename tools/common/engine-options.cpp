// The engine's options for every tool (see engine-options.h). Each option's range is written
// once, in the table below: CLI11 checks it while parsing, and engine_options() checks it again
// for values set otherwise (a pp-bench sweep's grid axes).
#include "engine-options.h"

#include <chrono>
#include <filesystem>

#include <fmt/format.h>

#include "pp/partition/byte-size.h"

namespace pp::cli {

namespace {

template <class T>
struct Bound {
  const char* name;
  T lo, hi;
  CLI::Range range() const { return CLI::Range(lo, hi); }
  Status check(T v) const {
    if (v >= lo && v <= hi) return ok_status();
    return invalid_argument("{} must be in [{}, {}], not {}", name, lo, hi, v);
  }
};

constexpr Bound<int32_t> kPp{"--pp", 0, 1024};
constexpr Bound<int32_t> kTp{"--tp", 0, 256};
constexpr Bound<int32_t> kAsyncDepth{"--async-depth", 0, 64};
constexpr Bound<int32_t> kMaxRunning{"--max-running-requests", 1, 1 << 20};
constexpr Bound<int32_t> kMaxBatchTokens{"--max-batch-tokens", 1, 1 << 30};
constexpr Bound<int64_t> kKvBlocks{"--kv-blocks", 0, int64_t(1) << 31};
constexpr Bound<int32_t> kThreads{"--threads-per-stage", 0, 4096};
constexpr Bound<int32_t> kExpectStages{"--expect-stages", 1, 1024};
constexpr Bound<int32_t> kStageRestarts{"--stage-restarts", 0, 1 << 20};
constexpr Bound<double> kStageTimeout{"--stage-timeout", 0.1, 86400.0};
constexpr Bound<double> kMemFraction{"--mem-fraction", 0.01, 1.0};
constexpr Bound<int64_t> kMaxTotalTokens{"--max-total-tokens", 0, int64_t(1) << 35};
constexpr int32_t kKvBlockSize = 16;  // pipeline::EngineOptions::kv_block_size

// The dtype each device computes in: what --dtype may name besides auto.
const char* device_dtype(const std::string& device) {
  return device == "cuda" ? "bfloat16" : "float32";
}

}  // namespace

void add_engine_options(CLI::App& app, EngineArgs& a, EngineOptionGroups groups) {
  if (groups.model) {
    app.add_option("--model,--model-path", a.model,
                   "the model: a Hugging Face folder, a .gguf file or a partition folder")
        ->required();
  }
  const std::string pp_default =
      a.pp == 0 ? "default: 1, or a partition folder's own count" : fmt::format("default {}", a.pp);
  app.add_option("--pp,--pp-size", a.pp,
                 "pipeline stages, each a local pp-stage process (" + pp_default + ")")
      ->check(kPp.range());
  app.add_option("--tp,--tp-size", a.tp_size,
                 "tensor-parallel ranks per stage, each a local pp-stage process on its own "
                 "device (default 1): stage k, rank r runs on GPU k*N+r of --gpus")
      ->check(kTp.range());
  app.add_option("--async-depth,--pp-async-batch-depth", a.async_depth,
                 "micro-batch groups in flight beyond one per stage (default 1)")
      ->check(kAsyncDepth.range());
  app.add_option("--max-running-requests", a.max_running_requests,
                 "requests running at once at most (default 256)")
      ->check(kMaxRunning.range());
  app.add_option("--max-batch-tokens,--chunked-prefill-size", a.max_batch_tokens,
                 "most tokens per micro-batch: the prefill chunk (default 512); decode tokens "
                 "count too, and -1 (no chunking) is not supported")
      ->check(kMaxBatchTokens.range());
  app.add_flag("--disable-chunked-pipeline", a.disable_chunked_pipeline,
               "plan a long prompt's next chunk only once its previous one has come back, in "
               "chunks of --max-batch-tokens (default: the next chunk follows the previous one "
               "through the stages, later chunks smaller)");
  app.add_flag("--disable-prefix-cache,--disable-radix-cache", a.disable_prefix_cache,
               "compute every prompt whole: do not reuse the KV of a prefix already computed for "
               "another request (default: full blocks of common prefixes are computed once and "
               "shared; --disable-radix-cache is SGLang's name)");
  CLI::Option* kv_blocks =
      app.add_option("--kv-blocks", a.kv_blocks,
                     "KV cache blocks of 16 tokens (default: what the stages' memory holds)")
          ->check(kKvBlocks.range());
  CLI::Option* total_tokens =
      app.add_option("--max-total-tokens", a.max_total_tokens,
                     "KV cache size in tokens, rounded up to blocks of 16 (as --kv-blocks)")
          ->check(kMaxTotalTokens.range())
          ->excludes(kv_blocks);
  if (groups.kv_memory) {
    app.add_option("--kv-memory", a.kv_memory, "KV cache memory per stage, e.g. 4GiB")
        ->excludes(kv_blocks)
        ->excludes(total_tokens);
  }
  app.add_option("--threads-per-stage", a.threads_per_stage,
                 "compute threads of each local stage (default 0: all cores)")
      ->check(kThreads.range());
  if (groups.remote_stages) {
    app.add_option("--listen", a.listen,
                   "the coordinator's endpoint for stages, tcp://HOST:PORT (default: a private "
                   "ipc:// socket)");
    app.add_option("--expect-stages", a.expect_stages,
                   "wait for N remote pp-stage processes to connect to --listen instead of "
                   "starting local ones")
        ->check(kExpectStages.range());
  }
  if (groups.grammar) {
    app.add_option("--grammar-backend", a.grammar_backend,
                   "the engine behind structured output: xgrammar (default) or none (requests "
                   "that ask for it get a 400)")
        ->check(CLI::IsMember({"xgrammar", "none"}));
  }
  if (groups.stage_faults) {
    app.add_option("--stage-restarts", a.stage_restarts,
                   "times a lost local stage is restarted, all stages together, before requests "
                   "fail (default 3)")
        ->check(kStageRestarts.range());
    app.add_option("--stage-timeout", a.stage_timeout_s,
                   "seconds of heartbeat silence after which a stage is lost, and that a lost "
                   "remote stage has to rejoin (default 5)")
        ->check(kStageTimeout.range());
  }
  app.add_option("--device", a.device, "run the stages on cpu or cuda (default cpu)")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--gpus", a.gpus,
                 "cuda: the GPUs to use, stage k on the (k mod n)-th (default: every visible one)")
      ->delimiter(',');
  app.add_option("--mem-fraction,--mem-fraction-static", a.mem_fraction,
                 "cuda: share of each GPU's memory for weights, buffers and the KV cache "
                 "(default 0.85)")
      ->check(kMemFraction.range());
  app.add_flag("--disable-cuda-graph", a.disable_cuda_graph,
               "cuda: run decode steps eagerly instead of replaying CUDA graphs");
  app.add_option("--random-weights", a.random_weights,
                 "--model is a config.json (or its folder): random weights from this seed, made "
                 "on each stage");
  app.add_option("--quantization", a.quantization,
                 "quantize the weights as they load: fp8 (e4m3, one scale per output channel; "
                 "activations per token). An fp8 checkpoint needs no flag")
      ->check(CLI::IsMember({"fp8", "none"}));
  app.add_option("--dtype", a.dtype,
                 "the dtype the stages compute in: auto (default), or the device's own: float32 "
                 "on cpu, bfloat16 on cuda");
  app.add_option("--cpu-dtype", a.cpu_dtype,
                 "cpu: how the weights are held: auto (GGUF Q4_0..Q8_0, Q4_K..Q6_K kept quantized, "
                 "8-bit activations; the default) or f32 (all dequantized: the exact reference)")
      ->check(CLI::IsMember({"auto", "f32"}));
  app.add_option("--layers", a.layers,
                 "the layers of each stage, inclusive ranges: 0-19,20-35 (default: even split)");
  app.add_option("--trace", a.trace,
                 "write a Chrome trace of every micro-batch on every stage to FILE at the end");
}

Result<pipeline::EngineOptions> engine_options(const EngineArgs& a) {
  if (a.model.empty()) return invalid_argument("no model given (--model)");
  PP_RETURN_IF_ERROR(kPp.check(a.pp));
  PP_RETURN_IF_ERROR(kAsyncDepth.check(a.async_depth));
  PP_RETURN_IF_ERROR(kMaxRunning.check(a.max_running_requests));
  PP_RETURN_IF_ERROR(kMaxBatchTokens.check(a.max_batch_tokens));
  PP_RETURN_IF_ERROR(kKvBlocks.check(a.kv_blocks));
  PP_RETURN_IF_ERROR(kThreads.check(a.threads_per_stage));
  PP_RETURN_IF_ERROR(kStageRestarts.check(a.stage_restarts));
  PP_RETURN_IF_ERROR(kStageTimeout.check(a.stage_timeout_s));
  PP_RETURN_IF_ERROR(kMemFraction.check(a.mem_fraction));
  PP_RETURN_IF_ERROR(kMaxTotalTokens.check(a.max_total_tokens));
  if (a.device != "cpu" && a.device != "cuda") {
    return invalid_argument("--device must be cpu or cuda, not '{}'", a.device);
  }
  PP_RETURN_IF_ERROR(kTp.check(a.tp_size));
  // SGLang's spellings: "float" is float32, "half" float16.
  const std::string dtype = a.dtype == "float"  ? "float32"
                            : a.dtype == "half" ? "float16"
                                                : a.dtype;
  if (dtype != "auto" && dtype != device_dtype(a.device)) {
    return invalid_argument("--dtype {} is not supported on {}: it computes in {} (or use auto)",
                            a.dtype, a.device, device_dtype(a.device));
  }
  if (a.max_total_tokens > 0 && a.kv_blocks > 0) {
    return invalid_argument("--max-total-tokens and --kv-blocks exclude each other");
  }

  pipeline::EngineOptions e;
  e.model_path = a.model;
  e.n_stages = a.pp;
  e.tp_size = a.tp_size;
  if (a.expect_stages) {
    PP_RETURN_IF_ERROR(kExpectStages.check(*a.expect_stages));
    if (a.pp > 0 && a.pp != *a.expect_stages) {
      return invalid_argument("--pp {} and --expect-stages {} disagree", a.pp, *a.expect_stages);
    }
    if (a.listen.empty()) return invalid_argument("--expect-stages needs --listen tcp://HOST:PORT");
    e.n_stages = *a.expect_stages;
    e.launch_local_stages = false;
    e.register_timeout = std::chrono::minutes(10);
  }
  e.listen = a.listen;
  e.layer_split = a.layers;
  e.random_weights = a.random_weights;
  if (!a.quantization.empty()) {
    PP_ASSIGN_OR_RETURN(e.quantization, model::parse_quantization(a.quantization));
  }
  if (!a.cpu_dtype.empty()) {
    PP_ASSIGN_OR_RETURN(e.cpu_dtype, model::parse_cpu_dtype(a.cpu_dtype));
  }

  e.device = a.device;
  e.gpus = a.gpus;
  e.mem_fraction = a.mem_fraction;
  e.cuda_graphs = !a.disable_cuda_graph;

  e.async_depth = a.async_depth;
  e.max_running_requests = a.max_running_requests;
  e.max_batch_tokens = a.max_batch_tokens;
  e.chunked_pipeline = !a.disable_chunked_pipeline;
  e.prefix_cache = !a.disable_prefix_cache;
  e.structured_output = a.grammar_backend != "none";
  e.kv_blocks = a.kv_blocks;
  if (a.max_total_tokens > 0) {
    e.kv_blocks = (a.max_total_tokens + kKvBlockSize - 1) / kKvBlockSize;
  }
  if (!a.kv_memory.empty()) {
    if (e.kv_blocks > 0) {
      return invalid_argument(
          "--kv-memory and --kv-blocks (or --max-total-tokens) exclude each "
          "other");
    }
    PP_ASSIGN_OR_RETURN(uint64_t bytes, partition::parse_byte_size(a.kv_memory));
    e.kv_memory = int64_t(bytes);
  }
  e.threads_per_stage = a.threads_per_stage;

  e.stage_restarts = a.stage_restarts;
  e.stage_timeout = std::chrono::milliseconds(int64_t(a.stage_timeout_s * 1000.0));
  e.trace_path = std::filesystem::path(a.trace);
  return e;
}

nlohmann::json engine_params(const EngineArgs& a) {
  nlohmann::json j;
  j["model"] = a.model;
  j["pp"] = a.expect_stages ? *a.expect_stages : a.pp;
  if (a.tp_size > 1) j["tp"] = a.tp_size;
  j["async_depth"] = a.async_depth;
  j["max_running_requests"] = a.max_running_requests;
  j["max_batch_tokens"] = a.max_batch_tokens;
  if (a.disable_chunked_pipeline) j["chunked_pipeline"] = false;
  if (a.disable_prefix_cache) j["prefix_cache"] = false;
  if (a.grammar_backend != "xgrammar") j["grammar_backend"] = a.grammar_backend;
  j["kv_blocks"] = a.kv_blocks;
  if (a.max_total_tokens > 0) j["max_total_tokens"] = a.max_total_tokens;
  if (a.dtype != "auto") j["dtype"] = a.dtype;
  if (!a.kv_memory.empty()) j["kv_memory"] = a.kv_memory;
  j["threads_per_stage"] = a.threads_per_stage;
  if (!a.trace.empty()) j["trace"] = a.trace;
  j["device"] = a.device;
  if (a.device != "cpu") {
    j["gpus"] = a.gpus;
    j["mem_fraction"] = a.mem_fraction;
    j["cuda_graphs"] = !a.disable_cuda_graph;
  }
  if (a.random_weights) j["random_weights"] = *a.random_weights;
  if (!a.quantization.empty() && a.quantization != "none") j["quantization"] = a.quantization;
  if (!a.cpu_dtype.empty() && a.cpu_dtype != "auto") j["cpu_dtype"] = a.cpu_dtype;
  if (!a.layers.empty()) j["layers"] = a.layers;
  if (!a.listen.empty()) j["listen"] = a.listen;
  if (a.expect_stages) j["expect_stages"] = *a.expect_stages;
  return j;
}

}  // namespace pp::cli
