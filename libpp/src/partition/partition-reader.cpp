// open_partition, open_stage and verify_partition: a partition folder read back and checked
// against its manifest.
#include "pp/partition/partition-reader.h"

#include <fstream>
#include <optional>
#include <system_error>

#include <fmt/ranges.h>

#include "pp/model/arch-tensors.h"
#include "pp/model/tensor-parallel.h"
#include "pp/partition/sha256.h"

namespace pp::partition {

namespace fs = std::filesystem;

Result<PartitionManifest> open_partition(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return not_found("'{}' is not a partition folder", dir.string());
  fs::path mp = dir / kManifestName;
  std::ifstream in(mp);
  if (!in)
    return not_found("'{}' has no {} (not a partition made by pp-partition split)", dir.string(),
                     kManifestName);
  nlohmann::json j = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return data_loss("cannot parse '{}': not valid JSON", mp.string());
  return manifest_from_json(j, mp.string());
}

int stage_of_tensor(const model::ModelConfig& c, const std::string& name,
                    const std::vector<StagePlan>& stages) {
  const std::optional<model::TensorSpec> t = model::find_tensor_spec(c, name);
  if (!t) return -1;
  for (const StagePlan& s : stages) {
    if (model::stage_owns(stage_parts(s), *t)) return s.index;
  }
  return -1;
}

namespace {

// Every tensor of a stage file (rank r's of a tensor-parallel partition) that the model reads is
// one the table gives the stage, and every tensor the stage loads (its part of the table, with
// the head rule) is there with the shape rank r holds.
Status check_stage_tensors(const model::WeightSource& w, const PartitionManifest& m, int k,
                           int32_t r, const std::string& file) {
  const StagePlan& s = m.plan.stages[k];
  const StageFile& f = m.files[k];
  const ShardFile& rf = f.ranks[size_t(r)];
  for (const std::string& name : w.names()) {
    const int owner = stage_of_tensor(m.config, name, m.plan.stages);
    // A tensor the model does not read (a rotary cache an older writer kept) is left alone.
    if (owner < 0) continue;
    // A tied model's last stage carries its own lm_head copy, which the table gives that stage.
    if (owner != k) return data_loss("'{}' holds tensor '{}' of another stage", file, name);
  }
  const model::StageTensors need =
      model::stage_tensors(m.config, stage_parts(s), model::head_reads_embedding(m.config, w));
  // The manifest's tp was checked against the config (manifest_from_json).
  PP_ASSIGN_OR_RETURN(const model::TpLayout layout, model::tp_layout(m.config, {r, m.tp}));
  for (const model::ShardedTensor& t : model::shard_tensors(m.config, layout, need.tensors)) {
    const model::TensorInfo* info = w.find(t.local.name);
    if (!info) return data_loss("'{}' lacks '{}'", file, t.local.name);
    if (info->shape != t.local.shape) {
      return data_loss("'{}': '{}' has shape [{}], rank {} of {} holds [{}]", file, t.local.name,
                       fmt::join(info->shape, ", "), r, m.tp, fmt::join(t.local.shape, ", "));
    }
  }
  if (s.has_lm_head && (f.lm_head_tensor.empty() || !w.find(f.lm_head_tensor))) {
    return data_loss("'{}' lacks the lm_head tensor '{}'", file, f.lm_head_tensor);
  }
  if (rf.n_tensors != int64_t(w.names().size())) {
    return data_loss("'{}' holds {} tensors, the manifest says {}", file, w.names().size(),
                     rf.n_tensors);
  }
  return ok_status();
}

Status check_size(const fs::path& p, uint64_t expected, uint64_t* found) {
  std::error_code ec;
  uint64_t size = fs::file_size(p, ec);
  if (ec) return not_found("cannot open '{}': {}", p.string(), ec.message());
  if (found) *found = size;
  if (size != expected) {
    return data_loss("'{}' has {} bytes, the manifest says {}", p.string(), size, expected);
  }
  return ok_status();
}

Status check_sha(const fs::path& p, const std::string& expected) {
  PP_ASSIGN_OR_RETURN(std::string got, sha256_file(p));
  if (got != expected) {
    return data_loss("'{}' has sha256 {}, the manifest says {}", p.string(), got, expected);
  }
  return ok_status();
}

}  // namespace

Result<StageShard> open_stage(const fs::path& dir, const PartitionManifest& m, int k,
                              bool verify_checksum, model::TpRank tp) {
  if (k < 0 || k >= m.n_stages()) {
    return make_error(StatusCode::kOutOfRange, "stage {} does not exist: '{}' has {} stages", k,
                      dir.string(), m.n_stages());
  }
  if (tp.size < 1 || tp.rank < 0 || tp.rank >= tp.size) {
    return invalid_argument("bad tensor-parallel rank {} of {}", tp.rank, tp.size);
  }
  if (m.tp > 1 && tp.size != m.tp) {
    return invalid_argument(
        "partition '{}' is split for tensor-parallel groups of {} (--tp {}), not {}", dir.string(),
        m.tp, m.tp, tp.size);
  }
  // At tp 1 every rank reads the stage's one file and slices it at load.
  const int32_t r = m.tp > 1 ? tp.rank : 0;
  const StagePlan& s = m.plan.stages[k];
  const StageFile& f = m.files[k];
  const ShardFile& rf = f.ranks[size_t(r)];
  fs::path p = dir / rf.file;
  PP_RETURN_IF_ERROR(check_size(p, rf.bytes, nullptr));
  if (verify_checksum) PP_RETURN_IF_ERROR(check_sha(p, rf.sha256));
  PP_ASSIGN_OR_RETURN(std::unique_ptr<model::WeightSource> w, model::open_safetensors(p));
  PP_RETURN_IF_ERROR(check_stage_tensors(*w, m, k, r, p.string()));
  StageShard out;
  out.config = m.config;
  out.index = k;
  out.n_stages = m.n_stages();
  out.layers = s.layers;
  out.has_embedding = s.has_embedding;
  out.has_lm_head = s.has_lm_head;
  out.lm_head_tensor = f.lm_head_tensor;
  out.dtype = m.plan.dtype;
  out.file = p;
  out.weights = std::move(w);
  if (m.tp > 1) out.sliced_for = tp;
  return out;
}

Result<StageShard> open_stage(const fs::path& dir, int k, bool verify_checksum, model::TpRank tp) {
  PP_ASSIGN_OR_RETURN(PartitionManifest m, open_partition(dir));
  return open_stage(dir, m, k, verify_checksum, tp);
}

Result<std::vector<FileCheck>> verify_partition(const fs::path& dir) {
  PP_ASSIGN_OR_RETURN(PartitionManifest m, open_partition(dir));
  std::vector<FileCheck> out;
  auto check_file = [&](const std::string& name, uint64_t expected_bytes, bool check_bytes,
                        const std::string& sha) {
    FileCheck c;
    c.file = name;
    fs::path p = dir / name;
    std::error_code ec;
    c.bytes = fs::file_size(p, ec);
    if (ec) {
      c.bytes = 0;
      c.problem = "missing";
    } else if (check_bytes && c.bytes != expected_bytes) {
      c.problem = fmt::format("has {} bytes, the manifest says {}", c.bytes, expected_bytes);
    } else {
      auto got = sha256_file(p);
      if (!got.ok()) {
        c.problem = got.status().message();
      } else if (*got != sha) {
        c.problem = fmt::format("sha256 {} does not match the manifest's {}", *got, sha);
      }
    }
    c.ok = c.problem.empty();
    return c;
  };
  for (int k = 0; k < m.n_stages(); ++k) {
    for (int32_t r = 0; r < int32_t(m.files[k].ranks.size()); ++r) {
      const ShardFile& f = m.files[k].ranks[size_t(r)];
      FileCheck c = check_file(f.file, f.bytes, true, f.sha256);
      if (c.ok) {
        fs::path p = dir / f.file;
        auto w = model::open_safetensors(p);
        Status st = w.ok() ? check_stage_tensors(**w, m, k, r, p.string()) : w.status();
        if (!st.ok()) {
          c.ok = false;
          c.problem = st.message();
        }
      }
      out.push_back(std::move(c));
    }
  }
  out.push_back(check_file(m.tokenizer.file, 0, false, m.tokenizer.sha256));
  if (!m.tokenizer.config_file.empty()) {
    out.push_back(check_file(m.tokenizer.config_file, 0, false, m.tokenizer.config_sha256));
  }
  return out;
}

}  // namespace pp::partition
