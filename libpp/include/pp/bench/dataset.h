// Benchmark datasets: the prompts a benchmark sends and how many tokens each asks for, made
// the way SGLang's bench_serving makes them so that numbers from both tools are comparable.
//
//   random-ids  synthetic token ids. Lengths are uniform integers in
//               [max(int(len * range_ratio), 1), len] (inputs and outputs alike); prompt i is
//               the ids (offset_i + i + j) % vocab_size for j = 0..len-1, offset_i uniform in
//               [0, vocab_size). Sent as ids where the backend takes them.
//   random      text of the given token lengths (same length rule): token ids of the prompts of a
//               ShareGPT file (--dataset-path), repeated or cut to the length, else ids drawn
//               uniformly from the tokenizer's non-special vocabulary; decoded to text. Needs a
//               tokenizer. The prompt length counted is the target length (as SGLang does).
//   sharegpt    the first two turns of each conversation of a ShareGPT-format JSON file
//               ([{"conversations": [{"value": ...}, {"value": ...}]}, ...]), shuffled by the
//               seed; the prompt length is the tokenized first turn, the output length the
//               tokenized second (or a fixed one); pairs shorter than 2 tokens, or longer
//               together than the context length, are skipped. Needs a tokenizer.
//   fixed       every prompt exactly input_len ids and output_len new tokens (random-ids with
//               range ratio 1).
//   generated-shared-prefix
//               SGLang's: gsp_num_groups groups of gsp_prompts_per_group prompts; the prompts of a
//               group share one system prompt of gsp_system_prompt_len tokens, each followed by
//               its own question of gsp_question_len tokens; gsp_output_len new tokens each;
//               gsp_num_groups * gsp_prompts_per_group requests in all (num_prompts is not
//               used), shuffled by the seed. Tokens are drawn uniformly from the tokenizer's
//               non-special vocabulary (from [0, vocab_size) without one) and sent as ids (text
//               would be retokenized and could move the boundary of the shared part).
//   multi-turn  num_prompts conversations of mt_turns turns. Turn t of a conversation re-sends
//               the whole history: its first turn's prompt (a user message of input_len tokens),
//               then for each earlier turn an answer of output_len tokens and the next user
//               message of mt_user_len tokens; every turn asks for output_len new tokens. The
//               answers in the history are synthetic (random tokens, fixed by the seed), not what
//               the server answered, so the requests do not depend on each other's outputs; a
//               turn shares the whole previous turn's prompt. Requests are ordered turn by turn
//               (every conversation's first turn, then every second turn, ...), so that with
//               a --max-concurrency below the number of conversations a turn is usually sent
//               after its previous one finished. Ids as above.
//
// One difference from SGLang: an output length is never 0 (SGLang's lower bound int(len *
// ratio) may be 0; a server reads max_tokens 0 as "no limit"), so outputs are at least 1.
// The same options and seed always give the same dataset.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "pp/model/tokenizer.h"
#include "pp/status.h"

namespace pp::bench {

enum class DatasetKind {
  kRandomIds,
  kRandom,
  kShareGpt,
  kFixed,
  kGeneratedSharedPrefix,
  kMultiTurn
};

// "random-ids", "random", "sharegpt", "fixed", "generated-shared-prefix", "multi-turn"
const char* dataset_kind_name(DatasetKind kind);
std::optional<DatasetKind> parse_dataset_kind(std::string_view name);

struct DatasetOptions {
  DatasetKind kind = DatasetKind::kRandomIds;
  int64_t num_prompts = 1000;
  int64_t input_len = 1024;   // prompt tokens (the upper end for random kinds)
  int64_t output_len = 1024;  // new tokens (the upper end for random kinds)
  double range_ratio = 0.0;   // lengths uniform in [max(int(len * ratio), 1), len]; 0..1
  uint64_t seed = 1;
  std::filesystem::path path;                  // ShareGPT JSON (sharegpt; optional for random)
  std::optional<int64_t> sharegpt_output_len;  // sharegpt: this output length for every prompt
  int64_t context_len = 0;  // sharegpt: skip pairs with prompt + output above this (0: no limit)
  // generated-shared-prefix (SGLang's defaults)
  int64_t gsp_num_groups = 64;           // groups (distinct system prompts)
  int64_t gsp_prompts_per_group = 16;    // prompts sharing one system prompt
  int64_t gsp_system_prompt_len = 2048;  // tokens of each system prompt
  int64_t gsp_question_len = 128;        // tokens of each question
  int64_t gsp_output_len = 256;          // new tokens of each request
  // multi-turn (also input_len: the first user message; output_len: each answer)
  int64_t mt_turns = 4;       // turns per conversation
  int64_t mt_user_len = 128;  // tokens of each later user message
};

// One request of a benchmark.
struct BenchRequest {
  std::vector<int32_t> prompt_ids;  // the prompt as token ids; empty when only text is known
  std::string prompt_text;          // the prompt as text; empty when only ids are known
  int64_t prompt_len = 0;           // prompt tokens, as counted in the metrics
  int64_t output_len = 0;           // new tokens asked for (max_tokens)
};

// A length uniform in [max(int(len * ratio), lowest), len], like numpy's randint (ratio clamped
// to 0..1).
int64_t sample_length(int64_t len, double ratio, int64_t lowest, std::mt19937_64& rng);

// Makes the dataset. `vocab_size` bounds the ids of random-ids and fixed (the tokenizer's when 0);
// `tokenizer` may be null for those two, and then prompt_text stays empty. Errors: bad options
// (kInvalidArgument), an unreadable or malformed ShareGPT file, a kind that needs a tokenizer
// without one (kFailedPrecondition), no usable ShareGPT pair (kOutOfRange). A ShareGPT file with
// fewer usable pairs than asked gives all it has.
Result<std::vector<BenchRequest>> make_dataset(const DatasetOptions& options, int64_t vocab_size,
                                               const model::Tokenizer* tokenizer);

}  // namespace pp::bench
