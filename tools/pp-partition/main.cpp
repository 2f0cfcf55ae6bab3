// pp-partition: plans a split of a model's layers into pipeline stages, writes one shard per
// stage plus a manifest, checks and shows existing partitions, and lists those in the run store.
//   pp-partition plan MODEL --pp N [--strategy even|cost|manual] [--layers 0-13,14-29]
//                          [--device-memory 80GiB,...] [--dtype bf16|f16|f32|fp8]
//   pp-partition split MODEL --pp N -o DIR [--tp N] [plan options] [--force]
//   pp-partition verify DIR | inspect DIR [--export-tokenizer OUT] | list
// inspect --export-tokenizer also takes a model (a .gguf file or a Hugging Face folder): it
// writes the tokenizer as tokenizer.json + tokenizer_config.json for Hugging Face clients.
// Every subcommand takes --db PATH. Exit codes: 0 ok, 1 a failure while working, 2 bad usage or
// bad input (a partition failing verification included), 130 interrupted.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <string>
#include <vector>

#include "cli.h"
#include "pp/model/model-source.h"
#include "pp/model/tokenizer-export.h"
#include "pp/partition/byte-size.h"
#include "pp/partition/model-resolver.h"
#include "pp/partition/partition-reader.h"
#include "pp/partition/planner.h"
#include "pp/partition/shard-writer.h"
#include "pp/partition/source-config.h"
#include "pp/store/run-store.h"

namespace {

namespace fs = std::filesystem;
using namespace pp;
using namespace pp::partition;

constexpr const char* kTool = "pp-partition";
constexpr int kExitInterrupted = 130;

std::atomic<bool> g_cancel{false};
extern "C" void on_signal(int) { g_cancel.store(true); }

struct PlanArgs {
  std::string model;
  int pp = 0;
  std::string strategy = "even";
  std::string layers;
  std::string device_memory;
  std::string dtype;
};

struct Args {
  PlanArgs plan;
  std::string out_dir;
  int32_t tp = 1;  // split: ranks per stage, one file each when above 1
  bool force = false;
  std::string dir;
  std::string export_tokenizer;  // inspect: write the tokenizer here as Hugging Face files
  std::string db;
  std::string log_level;
};

void add_plan_options(CLI::App* sub, PlanArgs& a) {
  sub->add_option("MODEL", a.model, "model: a Hugging Face folder or a .gguf file")->required();
  sub->add_option("--pp", a.pp, "number of pipeline stages")->required();
  sub->add_option("--strategy", a.strategy,
                  "even, cost or manual (default even; manual when --layers is given)");
  sub->add_option("--layers", a.layers, "manual layer ranges, inclusive: 0-13,14-29");
  sub->add_option("--device-memory", a.device_memory,
                  "memory of each stage's device: 80GiB,80GiB,... (or one size for all)");
  sub->add_option("--dtype", a.dtype,
                  "shard dtype: bf16, f16, f32 or fp8 (fp8 e4m3 layer linears with f32 "
                  "scales, the rest bf16; default: the model's own; bf16 for GGUF)");
}

Result<std::vector<uint64_t>> parse_memory_list(const std::string& text) {
  std::vector<uint64_t> out;
  if (text.empty()) return out;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string::npos) comma = text.size();
    PP_ASSIGN_OR_RETURN(uint64_t v, parse_byte_size(text.substr(pos, comma - pos)));
    if (v == 0) return invalid_argument("--device-memory sizes must be positive");
    out.push_back(v);
    pos = comma + 1;
  }
  return out;
}

// Options and config to a Plan; the source's config and kind come back in `sc`.
Result<Plan> plan_from_args(const PlanArgs& a, bool strategy_given, SourceConfig& sc) {
  PP_ASSIGN_OR_RETURN(sc, read_source_config(a.model));
  PlanOptions o;
  o.n_stages = a.pp;
  if (!strategy_given && !a.layers.empty()) {
    o.strategy = Strategy::kManual;
  } else {
    PP_ASSIGN_OR_RETURN(o.strategy, parse_strategy(a.strategy));
  }
  if (o.n_stages < 1) return invalid_argument("--pp must be at least 1, not {}", o.n_stages);
  if (o.n_stages > sc.config.n_layer) {
    return invalid_argument(
        "cannot split {} layers into {} stages (--pp is larger than the layer count)",
        sc.config.n_layer, o.n_stages);
  }
  if (!a.layers.empty()) {
    if (o.strategy != Strategy::kManual)
      return invalid_argument("--layers needs --strategy manual");
    PP_ASSIGN_OR_RETURN(o.layers, parse_layer_ranges(a.layers, sc.config.n_layer, o.n_stages));
  }
  PP_ASSIGN_OR_RETURN(o.device_memory, parse_memory_list(a.device_memory));
  if (a.dtype.empty()) {
    o.dtype = default_shard_dtype(sc.config, sc.kind);
  } else {
    PP_ASSIGN_OR_RETURN(o.dtype, parse_shard_dtype(a.dtype));
  }
  return make_plan(sc.config, o);
}

Status run_plan(const Args& a, bool strategy_given) {
  SourceConfig sc;
  PP_ASSIGN_OR_RETURN(Plan plan, plan_from_args(a.plan, strategy_given, sc));
  std::fputs(format_plan_table(plan).c_str(), stdout);
  return ok_status();
}

PartitionRecord record_of(const PartitionManifest& m, const fs::path& dir) {
  PartitionRecord r;
  r.source_path = m.source.path;
  r.source_checksum = "sha256:" + m.source.sha256;
  r.model_config_json = m.config_json.dump();
  r.pp = m.n_stages();
  r.strategy = strategy_name(m.plan.strategy);
  nlohmann::json j = manifest_to_json(m);
  r.plan_json = nlohmann::json{{"plan", j["plan"]}, {"stages", j["stages"]}}.dump();
  r.output_dir = dir.string();
  r.dtype = shard_dtype_name(m.plan.dtype);
  for (int k = 0; k < m.n_stages(); ++k) {
    const StagePlan& s = m.plan.stages[k];
    PartitionStageRecord sr;
    sr.stage = k;
    sr.layer_begin = int(s.layers.begin);
    sr.layer_end = int(s.layers.end);
    sr.has_embedding = s.has_embedding;
    sr.has_lm_head = s.has_lm_head;
    // A tensor-parallel stage's rank files, comma-separated in rank order.
    for (const ShardFile& f : m.files[k].ranks) {
      sr.file += (sr.file.empty() ? "" : ",") + f.file;
      sr.sha256 += (sr.sha256.empty() ? "" : ",") + f.sha256;
      sr.bytes += int64_t(f.bytes);
    }
    r.bytes += sr.bytes;
    r.stages.push_back(sr);
  }
  return r;
}

Status run_split(const Args& a, bool strategy_given) {
  SourceConfig sc;
  PP_ASSIGN_OR_RETURN(Plan plan, plan_from_args(a.plan, strategy_given, sc));
  // Open the store first: a bad --db fails before any work is done.
  PP_ASSIGN_OR_RETURN(auto store, RunStore::open(a.db));
  PP_ASSIGN_OR_RETURN(model::ModelSource source, model::open_model(a.plan.model));

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);

  WriteOptions o;
  o.out_dir = fs::absolute(a.out_dir).lexically_normal();
  if (o.out_dir.filename().empty()) o.out_dir = o.out_dir.parent_path();
  o.force = a.force;
  o.tp = a.tp;
  o.cancel = &g_cancel;
  o.after_stage = [&](int k, const StageFile& f) {
    for (const ShardFile& r : f.ranks) {
      std::fprintf(stderr, "%s: stage %d written: %s, %s\n", kTool, k, r.file.c_str(),
                   format_bytes(double(r.bytes)).c_str());
    }
    return ok_status();
  };
  PP_ASSIGN_OR_RETURN(PartitionManifest m, write_partition(source, plan, o));
  std::fputs(format_plan_table(m.plan).c_str(), stdout);
  uint64_t total = 0;
  for (const StageFile& f : m.files) {
    for (const ShardFile& r : f.ranks) total += r.bytes;
  }
  Result<int64_t> id = store->record_partition(record_of(m, o.out_dir));
  if (!id.ok()) {
    return id.status().with_context(fmt::format(
        "partition written to '{}' but not recorded in the run store", o.out_dir.string()));
  }
  const std::string ranks = m.tp > 1 ? fmt::format(" of {} ranks", m.tp) : "";
  std::printf("wrote '%s': %d stages%s, %s; recorded as partition %lld in '%s'\n",
              o.out_dir.c_str(), m.n_stages(), ranks.c_str(), format_bytes(double(total)).c_str(),
              static_cast<long long>(*id), store->path().c_str());
  return ok_status();
}

Status run_verify(const Args& a) {
  PP_ASSIGN_OR_RETURN(std::vector<FileCheck> checks, verify_partition(a.dir));
  int bad = 0;
  for (const FileCheck& c : checks) {
    if (c.ok) {
      std::printf("ok    %s (%s)\n", c.file.c_str(), format_bytes(double(c.bytes)).c_str());
    } else {
      std::printf("BAD   %s: %s\n", c.file.c_str(), c.problem.c_str());
      ++bad;
    }
  }
  if (bad > 0) {
    return data_loss("'{}' failed verification: {} of {} files bad", a.dir, bad, checks.size());
  }
  std::printf("'%s': all %zu files match the manifest\n", a.dir.c_str(), checks.size());
  return ok_status();
}

// The model's (or partition's) tokenizer as tokenizer.json + tokenizer_config.json in `out`.
Status export_tokenizer(const std::string& model_path, const std::string& out) {
  PP_ASSIGN_OR_RETURN(ResolvedModel m, resolve_model(model_path));
  PP_ASSIGN_OR_RETURN(std::shared_ptr<const model::Tokenizer> tok, m.load_tokenizer());
  PP_RETURN_IF_ERROR(
      model::export_hf_tokenizer(*tok, m.chat_template(), m.config().max_context(), out));
  std::printf("wrote '%s' and '%s' (%lld tokens)\n", (fs::path(out) / "tokenizer.json").c_str(),
              (fs::path(out) / "tokenizer_config.json").c_str(),
              static_cast<long long>(tok->vocab_size()));
  return ok_status();
}

Status run_inspect(const Args& a) {
  // A model that is not a partition: only its tokenizer can be exported.
  if (!a.export_tokenizer.empty() && !fs::exists(fs::path(a.dir) / "partition.json")) {
    return export_tokenizer(a.dir, a.export_tokenizer);
  }
  PP_ASSIGN_OR_RETURN(PartitionManifest m, open_partition(a.dir));
  std::printf("partition '%s'\n", a.dir.c_str());
  std::printf("model: %s, %lld layers, vocabulary %lld, from '%s' (%s, sha256 %s)\n",
              model::arch_name(m.config.arch), static_cast<long long>(m.config.n_layer),
              static_cast<long long>(m.config.n_vocab), m.source.path.c_str(),
              m.source.kind.c_str(), m.source.sha256.c_str());
  std::printf("created %s by pp %s; tokenizer %s; chat template %s\n", m.created.c_str(),
              m.pp_version.c_str(), m.tokenizer.file.c_str(),
              m.chat_template.empty() ? "none" : "yes");
  std::printf("tensor parallel: %s\n",
              m.tp > 1 ? fmt::format("tp {} (one file per stage and rank)", m.tp).c_str()
                       : "tp 1 (whole tensors; any --tp slices them at load)");
  std::fputs(format_plan_table(m.plan).c_str(), stdout);
  for (int k = 0; k < m.n_stages(); ++k) {
    const StageFile& sf = m.files[k];
    for (size_t r = 0; r < sf.ranks.size(); ++r) {
      const ShardFile& f = sf.ranks[r];
      const std::string who =
          m.tp > 1 ? fmt::format("stage {} rank {}", k, r) : fmt::format("stage {}", k);
      std::printf("%s: %s, %llu bytes, %lld tensors, sha256 %s\n", who.c_str(), f.file.c_str(),
                  static_cast<unsigned long long>(f.bytes), static_cast<long long>(f.n_tensors),
                  f.sha256.c_str());
    }
  }
  if (!a.export_tokenizer.empty()) return export_tokenizer(a.dir, a.export_tokenizer);
  return ok_status();
}

Status run_list(const Args& a) {
  PP_ASSIGN_OR_RETURN(auto store, RunStore::open(a.db));
  PP_ASSIGN_OR_RETURN(std::vector<PartitionRecord> parts, store->list_partitions());
  if (parts.empty()) {
    std::printf("no partitions in '%s'\n", store->path().c_str());
    return ok_status();
  }
  std::printf("%4s  %-20s  %3s  %-8s  %-5s  %10s  %-24s  %s\n", "id", "created", "pp", "strategy",
              "dtype", "bytes", "layers", "folder / source");
  for (const PartitionRecord& p : parts) {
    std::time_t t = std::time_t(p.created_at_ms / 1000);
    char when[32];
    std::tm tm{};
    gmtime_r(&t, &tm);
    std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    std::string layers;
    for (const auto& s : p.stages) {
      if (!layers.empty()) layers += ",";
      layers += format_layer_range({s.layer_begin, s.layer_end});
    }
    std::printf("%4lld  %-20s  %3d  %-8s  %-5s  %10s  %-24s  %s\n", static_cast<long long>(p.id),
                when, p.pp, p.strategy.c_str(), p.dtype.c_str(),
                format_bytes(double(p.bytes)).c_str(), layers.c_str(), p.output_dir.c_str());
    std::printf("%4s  %-20s  %3s  %-8s  %-5s  %10s  %-24s  from %s\n", "", "", "", "", "", "", "",
                p.source_path.c_str());
  }
  return ok_status();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"pp-partition: split a model's layers into pipeline stages", kTool};
  app.require_subcommand(1);
  Args a;
  cli::add_version_flag(app);
  cli::add_log_option(app, a.log_level);

  CLI::App* plan = app.add_subcommand("plan", "print a plan as a table, reading only the config");
  add_plan_options(plan, a.plan);
  cli::add_db_option(*plan, a.db);

  CLI::App* split =
      app.add_subcommand("split", "write the stage shards and partition.json into DIR");
  add_plan_options(split, a.plan);
  split->add_option("-o,--output", a.out_dir, "the partition folder to create")->required();
  split
      ->add_option("--tp,--tp-size", a.tp,
                   "tensor-parallel ranks per stage: above 1, one file per stage and rank "
                   "(stage-K-rank-R.safetensors) holding only that rank's slices, served with "
                   "that --tp only (default 1: one file per stage, whole tensors, any --tp)")
      ->check(CLI::Range(1, 256));
  split->add_flag("--force", a.force,
                  "replace an existing DIR (atomically, once the new one is complete)");
  cli::add_db_option(*split, a.db);

  CLI::App* verify =
      app.add_subcommand("verify", "check every file of a partition against its manifest");
  verify->add_option("DIR", a.dir, "partition folder")->required();
  cli::add_db_option(*verify, a.db);

  CLI::App* inspect = app.add_subcommand(
      "inspect", "print the plan table of a partition; export a model's tokenizer");
  inspect
      ->add_option("DIR", a.dir,
                   "partition folder (with --export-tokenizer also a .gguf file or a Hugging "
                   "Face folder)")
      ->required();
  inspect->add_option("--export-tokenizer", a.export_tokenizer,
                      "write the tokenizer to OUT as tokenizer.json and tokenizer_config.json, "
                      "which Hugging Face transformers loads and which encode as pp does");
  cli::add_db_option(*inspect, a.db);

  CLI::App* list = app.add_subcommand("list", "list the partitions recorded in the run store");
  cli::add_db_option(*list, a.db);

  if (int rc = cli::parse(app, argc, argv); rc >= 0) return rc;
  cli::apply_log_level(a.log_level);

  Status s;
  if (plan->parsed()) {
    s = run_plan(a, plan->count("--strategy") > 0);
  } else if (split->parsed()) {
    s = run_split(a, split->count("--strategy") > 0);
  } else if (verify->parsed()) {
    s = run_verify(a);
  } else if (inspect->parsed()) {
    s = run_inspect(a);
  } else if (list->parsed()) {
    s = run_list(a);
  }
  if (s.code() == StatusCode::kCancelled) {
    std::fprintf(stderr, "%s: error: %s\n", kTool, s.message().c_str());
    return kExitInterrupted;
  }
  return cli::report(kTool, s);
}
