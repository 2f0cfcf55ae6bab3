// pp-bench's options and the steps every measuring subcommand shares: the dataset, traffic and
// server options as structs filled by CLI11 (the engine's come from tools/common), the
// tokenizer, the progress bar, and writing a finished run (the result table, the run store, the
// --output-file JSON line).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "engine-options.h"
#include "pp/bench/dataset.h"
#include "pp/bench/http-client.h"
#include "pp/bench/offline-bench.h"
#include "pp/bench/serve-bench.h"
#include "pp/model/tokenizer.h"
#include "pp/store/records.h"

namespace pp::bench_tool {

inline constexpr const char* kTool = "pp-bench";

struct CommonArgs {
  std::string dataset_name = "random-ids";
  std::string dataset_path;
  int64_t num_prompts = 1000;
  int64_t random_input_len = 1024;
  int64_t random_output_len = 1024;
  double random_range_ratio = 0.0;
  int64_t sharegpt_output_len = 0;  // 0: the dataset's own
  int64_t sharegpt_context_len = 0;
  int64_t gsp_num_groups = 64;  // generated-shared-prefix (SGLang's defaults)
  int64_t gsp_prompts_per_group = 16;
  int64_t gsp_system_prompt_len = 2048;
  int64_t gsp_question_len = 128;
  int64_t gsp_output_len = 256;
  double gsp_range_ratio = 1.0;
  bool gsp_ordered = false;
  int64_t multi_turn_turns = 4;  // multi-turn
  int64_t multi_turn_user_len = 128;
  std::string request_rate = "inf";
  int64_t max_concurrency = 0;
  int64_t warmup_requests = 1;
  uint64_t seed = 1;
  bool ignore_eos = false;          // --ignore-eos: the default, kept for older command lines
  bool disable_ignore_eos = false;  // stop at EOS
  bool tokenize_prompt = false;     // send ids, not text
  std::string tokenizer;
  int64_t vocab_size = 0;  // random ids below this when there is no tokenizer
  std::string label;
  std::string db;
  std::string output_file;
  bool disable_progress = false;
  std::string log_level;
};

struct ServeArgs {
  std::string base_url;  // else http://HOST:PORT
  std::string host = "127.0.0.1";
  int port = 30000;
  std::string backend = "sglang";
  std::string model;
  bool disable_stream = false;
  std::string extra_request_body;
};

// The engine's options for offline runs (tools/common/engine-options.h); pp-bench's default is
// one stage (--pp 1), not a partition folder's own count.
struct OfflineArgs : cli::EngineArgs {
  OfflineArgs() { pp = 1; }
};

void add_common_options(CLI::App* app, CommonArgs& a);
void add_serve_options(CLI::App* app, ServeArgs& a, bool model_option);

Result<double> parse_rate(const std::string& text);
Result<bench::DatasetOptions> dataset_options(const CommonArgs& a);
Result<bench::TrafficOptions> traffic_options(const CommonArgs& a);
Result<bench::ServeOptions> serve_options(const CommonArgs& c, const ServeArgs& s);
// Whether generation ignores EOS: yes unless --disable-ignore-eos (SGLang's default).
bool ignore_eos(const CommonArgs& c);

// The tokenizer at PATH: of a model pp opens (a Hugging Face or partition folder, a .gguf file:
// through the model source resolver, as pp-serve loads it), else a tokenizer.json, a folder
// holding one, or any .gguf file's.
Result<std::shared_ptr<const model::Tokenizer>> load_tokenizer(const std::string& path);

// A progress function drawing on stderr when it is a terminal (none with --disable-progress).
bench::ProgressFn make_progress(const CommonArgs& a);
void end_progress(const CommonArgs& a);

// Every parameter of a run as JSON (the run store's params, the JSON line's first keys).
nlohmann::json common_params(const CommonArgs& c);
nlohmann::json serve_params(const ServeArgs& s, const std::string& model_id);

// Prints the table, records the run (returns its id) and appends the JSON line.
struct FinishedRun {
  BenchKind kind = BenchKind::kServe;
  std::string title;  // table banner
  std::vector<std::pair<std::string, std::string>> header;
  nlohmann::json params;
  std::string server_url;
  std::optional<int64_t> parent_id;
  const bench::BenchOutcome* outcome = nullptr;
  bool print_table = true;
};
Result<int64_t> finish_run(const CommonArgs& c, const FinishedRun& run);

}  // namespace pp::bench_tool
