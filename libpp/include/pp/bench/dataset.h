// Benchmark datasets: the prompts a benchmark sends and how many tokens each asks for, made
// the way SGLang's bench_serving (0.5.9) makes them, so that the same flags give the same
// workload in both tools. SGLang draws with numpy's and Python's generators, pp with
// std::mt19937_64: the same seed gives the same distributions, not the same draws.
//
// Lengths ("len in [lo, len]") are uniform integers in [max(int(len * range_ratio), 1), len].
// A text prompt is made as ids and decoded; the server tokenizes it again, so the tokens the
// model sees may differ a little from the length counted (SGLang counts the same way). Text
// prompts leave room for the special tokens the tokenizer adds (BOS ...: its
// num_special_tokens_to_add), so a drawn length L gives L - n_special ids, and that is the
// length counted. `tokenize_prompt` (SGLang's --tokenize-prompt) keeps them ids, sent as ids.
//
//   random-ids  lengths as above; prompt i is the ids (offset_i + i + j) % vocab_size for
//               j = 0..len-1, offset_i uniform in [0, vocab_size); decoded to text when there
//               is a tokenizer (sent as text unless tokenize_prompt), else ids.
//   random      lengths as above; the token ids of the first turns of a ShareGPT file
//               (--dataset-path; one shuffled conversation per request), repeated or cut to the
//               length, decoded to text. Without a file SGLang downloads ShareGPT; pp draws the
//               ids uniformly from the tokenizer's non-special vocabulary instead. Needs a
//               tokenizer.
//   sharegpt    the first two turns of each conversation of a ShareGPT-format JSON file
//               ([{"conversations": [{"value": ...}, {"value": ...}]}, ...]), shuffled by the
//               seed; the prompt length is the tokenized first turn, the output length the
//               tokenized second (or a fixed one); pairs shorter than 2 tokens, or longer
//               together than the context length, are skipped. Needs a tokenizer.
//   fixed       (pp's) every prompt exactly input_len ids and output_len new tokens (random-ids
//               with range ratio 1), always sent as ids.
//   generated-shared-prefix
//               SGLang's: gsp_num_groups groups of gsp_prompts_per_group prompts; a group's
//               prompts share one system prompt of len gsp_system_prompt_len tokens, each
//               followed by "\n\n" and its own question of len gsp_question_len tokens, and ask
//               for len gsp_output_len new tokens (lengths with gsp_range_ratio, default 1:
//               exact); tokens drawn uniformly from the whole vocabulary (special tokens too, as
//               SGLang's get_vocab()); the prompt length is the prompt text tokenized with the
//               special tokens added. gsp_num_groups * gsp_prompts_per_group requests in all
//               (num_prompts is not used), shuffled by the seed unless gsp_ordered. Without a
//               tokenizer (or with tokenize_prompt) the parts are joined as ids, tokens below
//               vocab_size.
//   multi-turn  (pp's) num_prompts conversations of mt_turns turns. Turn t of a conversation
//               re-sends the whole history: its first turn's prompt (a user message of input_len
//               tokens), then for each earlier turn an answer of output_len tokens and the next
//               user message of mt_user_len tokens; every turn asks for output_len new tokens.
//               The answers in the history are synthetic (random tokens, fixed by the seed), not
//               what the server answered, so the requests do not depend on each other's
//               outputs; a turn shares the whole previous turn's prompt. Requests are ordered
//               turn by turn (every conversation's first turn, then every second turn, ...), so
//               that with a --max-concurrency below the number of conversations a turn is
//               usually sent after its previous one finished. Always ids, non-special tokens.
//
// Differences from SGLang: a length is never 0 (SGLang's lower bound int(len * ratio) may be 0,
// and it may cut a text prompt to 0; a server reads max_tokens 0 as "no limit"); `random`
// cycles the ShareGPT conversations when there are fewer than requests (SGLang makes fewer
// requests). The same options and seed always give the same dataset.
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
  std::filesystem::path path;    // ShareGPT JSON (sharegpt; optional for random)
  bool tokenize_prompt = false;  // random, random-ids, generated-shared-prefix: ids, not text
  std::optional<int64_t> sharegpt_output_len;  // sharegpt: this output length for every prompt
  int64_t context_len = 0;  // sharegpt: skip pairs with prompt + output above this (0: no limit)
  // generated-shared-prefix (SGLang's defaults)
  int64_t gsp_num_groups = 64;           // groups (distinct system prompts)
  int64_t gsp_prompts_per_group = 16;    // prompts sharing one system prompt
  int64_t gsp_system_prompt_len = 2048;  // tokens of each system prompt
  int64_t gsp_question_len = 128;        // tokens of each question
  int64_t gsp_output_len = 256;          // new tokens of each request
  double gsp_range_ratio = 1.0;          // as range_ratio, for the three lengths above
  bool gsp_ordered = false;              // keep the requests group by group (no shuffle)
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
