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

enum class DatasetKind { kRandomIds, kRandom, kShareGpt, kFixed };

const char* dataset_kind_name(DatasetKind kind);  // "random-ids", "random", "sharegpt", "fixed"
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
