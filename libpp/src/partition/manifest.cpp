// partition.json to and from PartitionManifest. Reading checks every field it uses and the
// layer coverage of the stages, so a reader can trust a manifest that parsed.
#include "pp/partition/manifest.h"

#include <limits>
#include <type_traits>

#include "pp/model/tensor-parallel.h"

namespace pp::partition {

using nlohmann::json;

json manifest_to_json(const PartitionManifest& m) {
  json stages = json::array();
  for (int k = 0; k < m.n_stages(); ++k) {
    const StagePlan& s = m.plan.stages[k];
    const StageFile& f = m.files[k];
    stages.push_back({
        {"index", s.index},
        {"layers", {{"begin", s.layers.begin}, {"end", s.layers.end}}},
        {"embedding", s.has_embedding},
        {"lm_head", s.has_lm_head},
        {"lm_head_tensor", f.lm_head_tensor},
        {"params", s.params},
        {"weight_bytes", s.bytes},
        {"flops_per_token", s.flops_per_token},
        {"kv_bytes_per_token", s.kv_bytes_per_token},
        {"est_time_s", s.est_time_s},
        {"device_memory", s.device_memory},
    });
    json& sj = stages.back();
    if (m.tp == 1) {
      const ShardFile& r = f.ranks.at(0);
      sj["file"] = r.file;
      sj["bytes"] = r.bytes;
      sj["sha256"] = r.sha256;
      sj["n_tensors"] = r.n_tensors;
    } else {
      json ranks = json::array();
      for (size_t r = 0; r < f.ranks.size(); ++r) {
        const ShardFile& rf = f.ranks[r];
        ranks.push_back({{"rank", r},
                         {"file", rf.file},
                         {"bytes", rf.bytes},
                         {"sha256", rf.sha256},
                         {"n_tensors", rf.n_tensors}});
      }
      sj["ranks"] = std::move(ranks);
    }
  }
  const CostModel& cm = m.plan.cost_model;
  json out{
      {"format", "pp-partition"},
      {"format_version", m.format_version},
      {"pp_version", m.pp_version},
      {"created", m.created},
      {"dtype", shard_dtype_name(m.plan.dtype)},
      {"config", m.config_json},
      {"chat_template", m.chat_template},
      {"tokenizer",
       {{"file", m.tokenizer.file},
        {"sha256", m.tokenizer.sha256},
        {"config_file", m.tokenizer.config_file},
        {"config_sha256", m.tokenizer.config_sha256}}},
      {"source",
       {{"path", m.source.path},
        {"kind", m.source.kind},
        {"sha256", m.source.sha256},
        {"checksum_of", m.source.checksum_of}}},
      {"plan",
       {{"strategy", strategy_name(m.plan.strategy)},
        {"n_layer", m.plan.n_layer},
        {"cost_model",
         {{"peak_flops", cm.peak_flops},
          {"bandwidth", cm.bandwidth},
          {"tokens_per_step", cm.tokens_per_step},
          {"attention_context", cm.attention_context},
          {"min_kv_tokens", cm.min_kv_tokens}}}}},
      {"stages", stages},
  };
  if (m.tp != 1) out["tp"] = m.tp;
  return out;
}

namespace {

// Reads j[key] as T; a missing key or a wrong type is kDataLoss naming the field.
template <typename T>
Status get(const json& j, const char* key, T& out, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end()) return data_loss("'{}': missing field '{}'", where, key);
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    // nlohmann converts a float to an integer by a cast, undefined past the integer's range
    // (the fuzzer found 5.3e116): an integer field must hold an integer that fits.
    if (!it->is_number_integer()) {
      return data_loss("'{}': field '{}' has the wrong type", where, key);
    }
    const bool fits = it->is_number_unsigned()
                          ? it->get<uint64_t>() <= uint64_t(std::numeric_limits<T>::max())
                          : it->get<int64_t>() >= int64_t(std::numeric_limits<T>::min()) &&
                                it->get<int64_t>() <= int64_t(std::numeric_limits<T>::max());
    if (!fits) return data_loss("'{}': field '{}' is out of range", where, key);
  }
  try {
    out = it->get<T>();
  } catch (const json::exception&) {
    return data_loss("'{}': field '{}' has the wrong type", where, key);
  }
  return ok_status();
}

}  // namespace

Result<PartitionManifest> manifest_from_json(const json& j, const std::string& where) {
  if (!j.is_object()) return data_loss("'{}' is not a JSON object", where);
  PartitionManifest m;
  std::string format;
  PP_RETURN_IF_ERROR(get(j, "format", format, where));
  if (format != "pp-partition") return data_loss("'{}' is not a pp partition manifest", where);
  PP_RETURN_IF_ERROR(get(j, "format_version", m.format_version, where));
  if (m.format_version != kManifestFormatVersion && m.format_version != kManifestFormatVersionTp) {
    return make_error(StatusCode::kFailedPrecondition,
                      "'{}' has format version {}, this pp reads versions {} and {}", where,
                      m.format_version, kManifestFormatVersion, kManifestFormatVersionTp);
  }
  if (j.contains("tp")) PP_RETURN_IF_ERROR(get(j, "tp", m.tp, where));
  if ((m.format_version == kManifestFormatVersionTp) != (m.tp > 1) || m.tp < 1) {
    return data_loss("'{}': format version {} with tp {}", where, m.format_version, m.tp);
  }
  PP_RETURN_IF_ERROR(get(j, "pp_version", m.pp_version, where));
  PP_RETURN_IF_ERROR(get(j, "created", m.created, where));
  std::string dtype;
  PP_RETURN_IF_ERROR(get(j, "dtype", dtype, where));
  auto dt = parse_shard_dtype(dtype);
  if (!dt.ok()) return data_loss("'{}': unknown dtype '{}'", where, dtype);
  m.plan.dtype = *dt;
  if (!j.contains("config") || !j["config"].is_object()) {
    return data_loss("'{}': missing field 'config'", where);
  }
  m.config_json = j["config"];
  auto config = model::config_from_hf_json(m.config_json);
  if (!config.ok()) return config.status().with_context(fmt::format("'{}': config", where));
  m.config = std::move(config).value();
  PP_RETURN_IF_ERROR(get(j, "chat_template", m.chat_template, where));

  if (!j.contains("tokenizer") || !j["tokenizer"].is_object()) {
    return data_loss("'{}': missing field 'tokenizer'", where);
  }
  const json& tok = j["tokenizer"];
  PP_RETURN_IF_ERROR(get(tok, "file", m.tokenizer.file, where));
  PP_RETURN_IF_ERROR(get(tok, "sha256", m.tokenizer.sha256, where));
  PP_RETURN_IF_ERROR(get(tok, "config_file", m.tokenizer.config_file, where));
  PP_RETURN_IF_ERROR(get(tok, "config_sha256", m.tokenizer.config_sha256, where));

  for (const std::string* name : {&m.tokenizer.file, &m.tokenizer.config_file}) {
    if (name == &m.tokenizer.config_file && name->empty()) continue;
    if (name->empty() || name->find('/') != std::string::npos || name->starts_with(".")) {
      return data_loss("'{}': bad tokenizer file name '{}'", where, *name);
    }
  }

  if (!j.contains("source") || !j["source"].is_object()) {
    return data_loss("'{}': missing field 'source'", where);
  }
  const json& src = j["source"];
  PP_RETURN_IF_ERROR(get(src, "path", m.source.path, where));
  PP_RETURN_IF_ERROR(get(src, "kind", m.source.kind, where));
  PP_RETURN_IF_ERROR(get(src, "sha256", m.source.sha256, where));
  PP_RETURN_IF_ERROR(get(src, "checksum_of", m.source.checksum_of, where));

  if (!j.contains("plan") || !j["plan"].is_object()) {
    return data_loss("'{}': missing field 'plan'", where);
  }
  const json& plan = j["plan"];
  std::string strategy;
  PP_RETURN_IF_ERROR(get(plan, "strategy", strategy, where));
  auto st = parse_strategy(strategy);
  if (!st.ok()) return data_loss("'{}': unknown strategy '{}'", where, strategy);
  m.plan.strategy = *st;
  PP_RETURN_IF_ERROR(get(plan, "n_layer", m.plan.n_layer, where));
  if (plan.contains("cost_model") && plan["cost_model"].is_object()) {
    const json& cm = plan["cost_model"];
    CostModel& c = m.plan.cost_model;
    PP_RETURN_IF_ERROR(get(cm, "peak_flops", c.peak_flops, where));
    PP_RETURN_IF_ERROR(get(cm, "bandwidth", c.bandwidth, where));
    PP_RETURN_IF_ERROR(get(cm, "tokens_per_step", c.tokens_per_step, where));
    PP_RETURN_IF_ERROR(get(cm, "attention_context", c.attention_context, where));
    PP_RETURN_IF_ERROR(get(cm, "min_kv_tokens", c.min_kv_tokens, where));
  }
  if (m.plan.n_layer != m.config.n_layer) {
    return data_loss("'{}': plan has {} layers, config {}", where, m.plan.n_layer,
                     m.config.n_layer);
  }

  if (!j.contains("stages") || !j["stages"].is_array() || j["stages"].empty()) {
    return data_loss("'{}': missing field 'stages'", where);
  }
  const json& stages = j["stages"];
  const int n = int(stages.size());
  for (int k = 0; k < n; ++k) {
    const json& sj = stages[k];
    if (!sj.is_object()) return data_loss("'{}': stage {} is not an object", where, k);
    StagePlan s;
    StageFile f;
    PP_RETURN_IF_ERROR(get(sj, "index", s.index, where));
    if (!sj.contains("layers") || !sj["layers"].is_object()) {
      return data_loss("'{}': stage {} has no layers", where, k);
    }
    PP_RETURN_IF_ERROR(get(sj["layers"], "begin", s.layers.begin, where));
    PP_RETURN_IF_ERROR(get(sj["layers"], "end", s.layers.end, where));
    PP_RETURN_IF_ERROR(get(sj, "embedding", s.has_embedding, where));
    PP_RETURN_IF_ERROR(get(sj, "lm_head", s.has_lm_head, where));
    PP_RETURN_IF_ERROR(get(sj, "lm_head_tensor", f.lm_head_tensor, where));
    PP_RETURN_IF_ERROR(get(sj, "params", s.params, where));
    PP_RETURN_IF_ERROR(get(sj, "weight_bytes", s.bytes, where));
    PP_RETURN_IF_ERROR(get(sj, "flops_per_token", s.flops_per_token, where));
    PP_RETURN_IF_ERROR(get(sj, "kv_bytes_per_token", s.kv_bytes_per_token, where));
    PP_RETURN_IF_ERROR(get(sj, "est_time_s", s.est_time_s, where));
    PP_RETURN_IF_ERROR(get(sj, "device_memory", s.device_memory, where));
    if (m.tp == 1) {
      ShardFile& rf = f.ranks.emplace_back();
      PP_RETURN_IF_ERROR(get(sj, "file", rf.file, where));
      PP_RETURN_IF_ERROR(get(sj, "bytes", rf.bytes, where));
      PP_RETURN_IF_ERROR(get(sj, "sha256", rf.sha256, where));
      PP_RETURN_IF_ERROR(get(sj, "n_tensors", rf.n_tensors, where));
    } else {
      if (!sj.contains("ranks") || !sj["ranks"].is_array() || int64_t(sj["ranks"].size()) != m.tp) {
        return data_loss("'{}': stage {} does not list the files of its {} ranks", where, k, m.tp);
      }
      for (int32_t r = 0; r < m.tp; ++r) {
        const json& rj = sj["ranks"][size_t(r)];
        if (!rj.is_object()) {
          return data_loss("'{}': stage {} rank {} is not an object", where, k, r);
        }
        int32_t rank = -1;
        ShardFile& rf = f.ranks.emplace_back();
        PP_RETURN_IF_ERROR(get(rj, "rank", rank, where));
        PP_RETURN_IF_ERROR(get(rj, "file", rf.file, where));
        PP_RETURN_IF_ERROR(get(rj, "bytes", rf.bytes, where));
        PP_RETURN_IF_ERROR(get(rj, "sha256", rf.sha256, where));
        PP_RETURN_IF_ERROR(get(rj, "n_tensors", rf.n_tensors, where));
        if (rank != r) {
          return data_loss("'{}': stage {} lists rank {} as rank {}", where, k, rank, r);
        }
      }
    }
    int64_t expected_begin = k == 0 ? 0 : m.plan.stages.back().layers.end;
    if (s.index != k || s.layers.begin != expected_begin || s.layers.end <= s.layers.begin ||
        s.layers.end > m.config.n_layer) {
      return data_loss(
          "'{}': stage {} has layers [{}, {}), not a continuation of the stages "
          "before it",
          where, k, s.layers.begin, s.layers.end);
    }
    if (s.has_embedding != (k == 0) || s.has_lm_head != (k == n - 1)) {
      return data_loss("'{}': stage {} has the wrong embedding/lm_head flags", where, k);
    }
    for (const ShardFile& rf : f.ranks) {
      if (rf.file.empty() || rf.file.find('/') != std::string::npos || rf.file.starts_with(".")) {
        return data_loss("'{}': stage {} names a bad file '{}'", where, k, rf.file);
      }
    }
    m.plan.stages.push_back(s);
    m.files.push_back(f);
  }
  if (m.plan.stages.back().layers.end != m.config.n_layer) {
    return data_loss("'{}': the stages cover layers 0-{}, the model has {}", where,
                     m.plan.stages.back().layers.end - 1, m.config.n_layer);
  }
  if (m.tp > 1) {
    auto layouts = model::tp_layouts(m.config, m.tp);
    if (!layouts.ok()) {
      return data_loss("'{}': tp {}: {}", where, m.tp, layouts.status().message());
    }
  }
  update_slowest(m.plan);
  return m;
}

}  // namespace pp::partition
