// The control-plane messages between the coordinator (pp-serve) and the stages (pp-stage), as
// plain structs. wire.h turns them into a small versioned binary format and back; nothing
// received is ever executed or unpickled, and a malformed frame is a Status, never a crash.
//
// The plan of a micro-batch goes to every stage at once ("metadata ahead, tensors behind"):
// stages mirror each running request's KV block table, so a plan carries only what changed.
//
// operator== compares field by field (floats by value, so a NaN field never compares equal).
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

namespace pp::transport {

inline constexpr uint32_t kWireMagic = 0x31505050;  // "PPP1" little-endian
inline constexpr uint16_t kWireVersion = 6;

// A stage is a group of devices, one worker process per device; a worker's index in its group is
// its rank. With tensor parallelism (--tp N) every rank of a stage gets the same plans; rank r of
// stage k sends its activations to rank r of stage k + 1; only rank 0 of the last stage posts
// Tokens, and only rank 0 of each stage posts StageTiming.

// stage -> coordinator, first message on connect.
struct Hello {
  int32_t stage = -1;  // which stage this worker wants to be (-1: any)
  int32_t rank = -1;   // which rank of that stage's group (-1: any)
  std::string host;    // hostname
  int32_t pid = 0;
  std::string device;       // this worker's device: "cpu", "cuda:0"
  std::string device_name;  // "NVIDIA H200", CPU model
  int64_t device_total_bytes = 0;
  int64_t device_free_bytes = 0;
  std::string data_endpoint;  // where this stage receives activations (CPU transport)
  std::string tp_endpoint;    // where it receives its group's collectives (CPU transport)

  friend bool operator==(const Hello&, const Hello&) = default;
};

// coordinator -> stage: what to load and how big a KV pool to allocate.
struct Assign {
  int32_t stage = 0;
  int32_t n_stages = 0;
  // The stage's device group, one entry per rank ("cpu", "cuda:N"; rank r's worker runs on
  // devices[r]), and the rank of the worker this Assign goes to.
  std::vector<std::string> devices;
  int32_t rank = 0;
  std::string model_path;  // a partition folder or a model (folder or .gguf)
  int64_t layer_begin = 0, layer_end = 0;
  std::string next_data_endpoint;  // where to send activations (empty for the last stage)
  int64_t kv_block_size = 16;
  int32_t threads = 0;
  // GPU stages: the NCCL link ids (128 bytes each; empty where the link is not NCCL), and what
  // sizes the device buffers and the KV pool.
  std::string nccl_id_from_previous;
  std::string nccl_id_to_next;
  int32_t max_batch_tokens = 512;  // tokens of one micro-batch at most
  int32_t max_running = 256;       // sequences of one micro-batch at most
  float mem_fraction = 0.85f;      // share of the device's memory for weights, buffers and KV
  bool cuda_graphs = true;         // replay CUDA graphs for decode steps
  // model_path is a config (config.json or its folder), the weights random from this seed.
  bool random_weights = false;
  uint64_t random_seed = 0;
  // Weights quantized as they load: "" (as stored) or "fp8" (model::Quantization's names).
  std::string quantization;
  // A CPU stage's weights: "" (GGUF blocks as stored) or "f32" (model::CpuDtype's names).
  std::string cpu_dtype;
  // Tensor parallelism (devices.size() > 1): each rank's Hello::tp_endpoint in rank order (CPU
  // groups), and the NCCL id of the group's communicator (GPU groups; 128 bytes).
  std::vector<std::string> tp_endpoints;
  std::string tp_nccl_id;

  friend bool operator==(const Assign&, const Assign&) = default;
};

// stage -> coordinator, after loading: how many KV blocks would fit.
struct Loaded {
  int32_t stage = 0;
  int64_t kv_bytes_per_block = 0;
  int64_t kv_blocks_capacity = 0;  // what fits in this stage's memory budget
  double load_seconds = 0;

  friend bool operator==(const Loaded&, const Loaded&) = default;
};

// coordinator -> stage: the KV pool size (minimum over stages); the stage allocates and answers
// with Ready.
struct AllocateKv {
  int64_t n_blocks = 0;
  int64_t block_size = 16;

  friend bool operator==(const AllocateKv&, const AllocateKv&) = default;
};

struct Ready {
  int32_t stage = 0;

  friend bool operator==(const Ready&, const Ready&) = default;
};

// Per-request sampling, carried only to the last stage.
struct WireSampling {
  float temperature = 1.0f, top_p = 1.0f, min_p = 0.0f;
  int32_t top_k = 0;
  float presence_penalty = 0.0f, frequency_penalty = 0.0f, repetition_penalty = 1.0f;
  uint64_t seed = 0;
  int32_t top_logprobs = -1;       // -1: no logprobs; 0: the chosen token's; n: plus n alternatives
  std::vector<int32_t> bias_ids;   // logit bias: distinct token ids, sorted
  std::vector<float> bias_values;  // added to their logits (one per id)

  friend bool operator==(const WireSampling&, const WireSampling&) = default;
};

// One request's part of a micro-batch.
struct PlanEntry {
  uint64_t request_id = 0;
  int32_t pos_begin = 0;            // position of the first new token
  int32_t n_new = 0;                // new tokens this micro-batch (prefill chunk or 1)
  std::vector<int32_t> new_blocks;  // blocks appended to the request's table (mirror delta)
  bool reset_table = false;         // the table restarts from new_blocks (first chunk, recompute)
  bool sample = false;              // the last stage samples after the last new token
  uint64_t sample_step = 0;         // index of the token being generated (RNG counter)
  WireSampling sampling;            // when sample (and the stage is last)
  std::vector<int32_t> token_ids;   // stage 0 only: the new tokens
  std::vector<int32_t> penalty_prompt_ids;  // last stage, penalties only: first time it is seen
  std::vector<int32_t> penalty_output_ids;  // last stage, penalties only: generated so far
  // Last stage, structured output: the tokens that may be sampled, bit t % 32 of word t / 32
  // (ceil(n_vocab / 32) words); empty: every token.
  std::vector<uint32_t> allowed_tokens;

  friend bool operator==(const PlanEntry&, const PlanEntry&) = default;
};

// coordinator -> every stage: one micro-batch.
struct Plan {
  uint64_t seq = 0;   // issue order; every stage processes plans in this order
  int32_t group = 0;  // micro-batch group 0 .. M-1
  std::vector<PlanEntry> entries;
  std::vector<uint64_t> released;  // requests finished or preempted: forget their tables

  friend bool operator==(const Plan&, const Plan&) = default;
};

struct SampledToken {
  uint64_t request_id = 0;
  int32_t token = 0;
  float logprob = 0.0f;
  std::vector<int32_t> top_ids;
  std::vector<float> top_logprobs;

  friend bool operator==(const SampledToken&, const SampledToken&) = default;
};

// last stage -> coordinator: the tokens of one plan.
struct Tokens {
  uint64_t seq = 0;
  int32_t group = 0;
  std::vector<SampledToken> tokens;

  friend bool operator==(const Tokens&, const Tokens&) = default;
};

// stage -> coordinator: trace of one micro-batch (times in microseconds since the epoch).
struct StageTiming {
  int32_t stage = 0;
  uint64_t seq = 0;
  int32_t group = 0;
  int64_t queued_us = 0, start_us = 0, end_us = 0, sent_us = 0;
  int32_t n_tokens = 0;

  friend bool operator==(const StageTiming&, const StageTiming&) = default;
};

struct Heartbeat {
  int32_t stage = -1;  // -1 from the coordinator
  int64_t at_us = 0;

  friend bool operator==(const Heartbeat&, const Heartbeat&) = default;
};

struct StageError {
  int32_t stage = 0;
  uint64_t seq = 0;
  std::string message;

  friend bool operator==(const StageError&, const StageError&) = default;
};

struct Shutdown {
  std::string reason;

  friend bool operator==(const Shutdown&, const Shutdown&) = default;
};

using Message = std::variant<Hello, Assign, Loaded, AllocateKv, Ready, Plan, Tokens, StageTiming,
                             Heartbeat, StageError, Shutdown>;

}  // namespace pp::transport
