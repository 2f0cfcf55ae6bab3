// The model source resolver: which kind of source a path is, and opening a stage of it.
#include "pp/partition/model-resolver.h"

#include "pp/partition/partition-reader.h"

namespace pp::partition {

namespace fs = std::filesystem;

const char* source_kind_name(SourceKind k) {
  switch (k) {
    case SourceKind::kPartition:
      return "partition";
    case SourceKind::kHfDir:
      return "hf";
    case SourceKind::kGguf:
      return "gguf";
    case SourceKind::kRandomWeights:
      return "random";
  }
  return "?";
}

Result<ResolvedModel> resolve_model(const fs::path& given, const ResolveOptions& options) {
  if (given.empty()) return invalid_argument("no model given");
  std::error_code ec;
  ResolvedModel r;
  r.path_ = fs::absolute(given, ec);
  if (ec) r.path_ = given;
  const fs::path& path = r.path_;
  r.quantization_ = options.quantization;
  r.cpu_dtype_ = options.cpu_dtype;
  if (options.random_weights) {
    r.kind_ = SourceKind::kRandomWeights;
    r.random_seed_ = options.random_weights;
    PP_ASSIGN_OR_RETURN(r.config_, model::config_from_path(path));
    const fs::path tok =
        (fs::is_directory(path, ec) ? path : path.parent_path()) / "tokenizer.json";
    if (fs::exists(tok, ec)) r.tokenizer_json_ = tok;
    return r;
  }
  if (fs::is_directory(path, ec) && fs::exists(path / kManifestName, ec)) {
    r.kind_ = SourceKind::kPartition;
    PP_ASSIGN_OR_RETURN(PartitionManifest m, open_partition(path));
    r.config_ = m.config;
    r.chat_template_ = m.chat_template;
    if (!m.tokenizer.file.empty()) r.tokenizer_json_ = path / m.tokenizer.file;
    r.partition_ = std::move(m);
    return r;
  }
  PP_ASSIGN_OR_RETURN(model::ModelSource src, model::open_model(path));
  r.kind_ = src.kind == model::SourceKind::kGguf ? SourceKind::kGguf : SourceKind::kHfDir;
  r.config_ = src.config;
  r.chat_template_ = src.chat_template;
  if (!src.tokenizer_json.empty() && fs::exists(src.tokenizer_json, ec)) {
    r.tokenizer_json_ = src.tokenizer_json;
  }
  r.source_ = std::make_shared<const model::ModelSource>(std::move(src));
  return r;
}

std::vector<LayerRange> ResolvedModel::fixed_layers() const {
  std::vector<LayerRange> out;
  if (partition_) {
    for (const StagePlan& s : partition_->plan.stages) out.push_back(s.layers);
  }
  return out;
}

int32_t ResolvedModel::fixed_tp() const {
  return partition_ && partition_->tp > 1 ? partition_->tp : 0;
}

model::DType ResolvedModel::plan_dtype() const {
  if (quantization_ == model::Quantization::kFp8) return model::DType::kF8E4M3;
  switch (kind_) {
    case SourceKind::kPartition:
      return partition_->plan.dtype;
    case SourceKind::kRandomWeights:
      return model::DType::kBF16;
    case SourceKind::kHfDir:
    case SourceKind::kGguf:
      break;
  }
  return model::DType::kF32;
}

bool ResolvedModel::has_tokenizer() const {
  return (kind_ == SourceKind::kGguf && source_ && source_->gguf) || !tokenizer_json_.empty();
}

Result<std::shared_ptr<const model::Tokenizer>> ResolvedModel::load_tokenizer() const {
  if (kind_ == SourceKind::kGguf && source_ && source_->gguf) {
    PP_ASSIGN_OR_RETURN(std::unique_ptr<model::Tokenizer> tok,
                        model::Tokenizer::from_gguf(*source_->gguf));
    return std::shared_ptr<const model::Tokenizer>(std::move(tok));
  }
  if (tokenizer_json_.empty()) {
    return not_found("'{}' has no tokenizer (no tokenizer.json)", path_.string());
  }
  PP_ASSIGN_OR_RETURN(std::unique_ptr<model::Tokenizer> tok,
                      model::Tokenizer::from_hf_file(tokenizer_json_));
  if (kind_ == SourceKind::kHfDir) {
    // config.json knows BOS and EOS; tokenizer.json only lets the tokenizer guess.
    if (!config_.bos_token_ids.empty()) tok->set_bos_id(config_.bos_token_ids.front());
    if (!config_.eos_token_ids.empty()) tok->set_eos_id(config_.eos_token_ids.front());
  }
  return std::shared_ptr<const model::Tokenizer>(std::move(tok));
}

Result<StageWeights> ResolvedModel::open_stage(int32_t k, int32_t n, LayerRange layers,
                                               model::TpRank tp) const {
  if (n < 1 || k < 0 || k >= n) return invalid_argument("bad stage {} of {}", k, n);
  StageWeights out;
  out.config = config_;
  out.layers = layers;
  out.random_seed = random_seed_;
  out.quantization = quantization_;
  out.cpu_dtype = cpu_dtype_;
  if (kind_ == SourceKind::kPartition) {
    PP_ASSIGN_OR_RETURN(StageShard shard, partition::open_stage(path_, *partition_, k,
                                                                /*verify_checksum=*/false, tp));
    if (shard.n_stages != n) {
      return invalid_argument("partition '{}' has {} stages, the coordinator runs {}",
                              path_.string(), shard.n_stages, n);
    }
    if (layers.end > 0 && shard.layers != layers) {
      return invalid_argument("partition '{}' stage {} holds layers [{}, {}), assigned [{}, {})",
                              path_.string(), k, shard.layers.begin, shard.layers.end, layers.begin,
                              layers.end);
    }
    out.config = shard.config;
    out.layers = shard.layers;
    out.weights = shard.weights;
    out.sliced_for = shard.sliced_for;
  } else if (source_) {
    out.weights = source_->weights;
  }
  const int64_t L = out.config.n_layer;
  const LayerRange& r = out.layers;
  if (r.begin < 0 || r.end > L || r.begin >= r.end || (r.begin == 0) != (k == 0) ||
      (r.end == L) != (k == n - 1)) {
    return invalid_argument("stage {} of {} was assigned layers [{}, {}) of {}", k, n, r.begin,
                            r.end, L);
  }
  if (out.weights) out.weights = model::quantize_on_load(out.weights, out.config, quantization_);
  return out;
}

}  // namespace pp::partition
