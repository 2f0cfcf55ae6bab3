// write_partition: streams a model's tensors, one at a time, into per-stage safetensors files in
// a temporary folder beside the destination, then the tokenizer and partition.json, fsyncs
// everything and renames the folder into place. A guard removes the temporary folder on every
// path that does not reach the final rename.
#include "pp/partition/shard-writer.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <system_error>

#include "pp/assert.h"
#include "pp/kernels/host-weight.h"
#include "pp/model/arch-tensors.h"
#include "pp/model/quantization.h"
#include "pp/model/safetensors-writer.h"
#include "pp/model/safetensors.h"
#include "pp/model/tensor-parallel.h"
#include "pp/model/tokenizer.h"
#include "pp/partition/partition-reader.h"
#include "pp/partition/sha256.h"
#include "pp/version.h"

namespace pp::partition {

namespace fs = std::filesystem;
using model::ModelSource;
using model::SourceKind;

namespace {

// Removes a temporary folder unless released.
class TempFolderGuard {
 public:
  explicit TempFolderGuard(fs::path p) : path_(std::move(p)) {}
  ~TempFolderGuard() {
    if (path_.empty()) return;
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  void release() { path_.clear(); }

 private:
  fs::path path_;
};

// The values of one stage's tensors (f32, or fp8 bytes and f32 scales), in a file-backed mapping
// inside the temporary folder, handed out in order by take():
// the safetensors writer takes every tensor of a file at once, and a file-backed mapping lets the
// kernel page a large stage out to disk instead of holding it in RAM. The blocks are reserved
// with posix_fallocate first, so a full disk is an error here rather than a SIGBUS later.
class StageScratch {
 public:
  ~StageScratch() { reset(); }
  Status create(const fs::path& p, size_t n_bytes) {
    reset();
    path_ = p;
    used_ = 0;
    bytes_ = std::max<size_t>(n_bytes, sizeof(float));
    fd_ = ::open(p.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd_ < 0) return internal_error("cannot create '{}': {}", p.string(), std::strerror(errno));
    if (int err = ::posix_fallocate(fd_, 0, off_t(bytes_)); err != 0) {
      return make_error(err == ENOSPC ? StatusCode::kResourceExhausted : StatusCode::kInternal,
                        "cannot reserve {} bytes for '{}': {}", bytes_, p.string(),
                        std::strerror(err));
    }
    void* m = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
    if (m == MAP_FAILED) {
      return internal_error("cannot map '{}': {}", p.string(), std::strerror(errno));
    }
    data_ = static_cast<std::byte*>(m);
    return ok_status();
  }
  // The next n elements of T (4-byte aligned; scratch_bytes() counted the padding).
  template <typename T>
  std::span<T> take(size_t n) {
    const size_t at = (used_ + 3) & ~size_t(3);
    PP_ASSERT(at + n * sizeof(T) <= bytes_);
    used_ = at + n * sizeof(T);
    return {reinterpret_cast<T*>(data_ + at), n};
  }
  void reset() {
    if (data_) ::munmap(data_, bytes_);
    if (fd_ >= 0) ::close(fd_);
    if (!path_.empty()) ::unlink(path_.c_str());
    data_ = nullptr;
    fd_ = -1;
    path_.clear();
  }

 private:
  fs::path path_;
  int fd_ = -1;
  std::byte* data_ = nullptr;
  size_t bytes_ = 0;
  size_t used_ = 0;
};

// Scratch bytes a tensor takes: its f32 values, or (fp8 shards) at most its fp8 bytes plus one
// f32 scale per row (more than any scale layout of a 2-D weight: one per tensor, per row, or
// per 128 x 128 tile) and alignment padding.
size_t scratch_bytes(const model::TensorInfo& t, bool fp8) {
  const size_t n = size_t(t.numel());
  if (!fp8 || t.shape.size() != 2) return n * sizeof(float) + 4;
  // Quantized or not is decided later; room for either.
  return std::max(n * sizeof(float), n + size_t(t.shape[0]) * sizeof(float) + 8) + 4;
}

// The quantization_config of an fp8 partition: the source's own when it is an FP8 checkpoint
// (its bytes and scales are kept), else per-channel compressed-tensors (what quantize_on_load
// writes), the lm_head (and every tensor that is not a layer's linear) left in bf16.
model::WeightQuantConfig shard_quant_config(const model::ModelConfig& c) {
  if (c.quant.quantized()) return c.quant;
  model::WeightQuantConfig q;
  q.method = model::WeightQuantConfig::Method::kCompressedTensors;
  q.strategy = model::WeightQuantConfig::Strategy::kChannel;
  q.not_converted = {"lm_head"};
  return q;
}

const char* model_dtype_name(model::DType t) {
  switch (t) {
    case model::DType::kF32:
      return "float32";
    case model::DType::kF16:
      return "float16";
    default:
      return "bfloat16";  // bf16, and fp8 shards' unquantized tensors
  }
}

// The shard's entries for source tensor `from` written as `to`: an fp8 weight (a source's fp8
// tensor as stored, or a layer's linear quantized per channel) with its scale tensor
// (`P.weight_scale_inv` for 128 x 128 blocks, else `P.weight_scale`: [1] per tensor, [rows, 1]
// per channel); every other tensor as f32 values written in `dtype` (bf16 in an fp8 shard).
Status add_entries(const model::ModelConfig& c, const model::WeightSource& w,
                   const std::string& from, const std::string& to, bool fp8, model::DType dtype,
                   StageScratch& scratch, std::vector<model::SafetensorsEntry>& entries) {
  const model::TensorInfo* info = w.find(from);
  const std::optional<model::TensorSpec> spec = model::find_tensor_spec(c, to);
  const bool stored_fp8 = info->dtype == model::DType::kF8E4M3;
  if (fp8 && (stored_fp8 || (spec && model::quantized_on_load(*spec)))) {
    PP_ASSERT(info->shape.size() == 2);
    kernels::HostWeight q;
    if (stored_fp8) {
      PP_ASSIGN_OR_RETURN(q, w.read_weight(from));
    } else {
      std::vector<float> values(size_t(info->numel()));
      PP_RETURN_IF_ERROR(w.read_f32(from, values));
      q = kernels::HostWeight::quantize_fp8(values, info->shape[0], info->shape[1],
                                            kernels::ScaleKind::kPerChannel);
    }
    std::span<std::byte> bytes = scratch.take<std::byte>(q.bytes().size());
    std::copy(q.bytes().begin(), q.bytes().end(), bytes.begin());
    std::span<float> scales = scratch.take<float>(q.scales().size());
    std::copy(q.scales().begin(), q.scales().end(), scales.begin());
    const std::string prefix = to.substr(0, to.size() - std::string_view(".weight").size());
    model::SafetensorsEntry e{
        .name = to, .dtype = model::DType::kF8E4M3, .shape = info->shape, .raw = bytes};
    model::SafetensorsEntry s{
        .name = prefix + ".weight_scale", .dtype = model::DType::kF32, .data = scales};
    switch (q.scale_kind()) {
      case kernels::ScaleKind::kBlock128x128:
        s.name = prefix + ".weight_scale_inv";
        s.shape = {(q.rows() + 127) / 128, (q.cols() + 127) / 128};
        break;
      case kernels::ScaleKind::kPerChannel:
        s.shape = {q.rows(), 1};
        break;
      default:
        s.shape = {1};
        break;
    }
    entries.push_back(std::move(e));
    entries.push_back(std::move(s));
    return ok_status();
  }
  std::span<float> dst = scratch.take<float>(size_t(info->numel()));
  PP_RETURN_IF_ERROR(w.read_f32(from, dst));
  entries.push_back(
      {.name = to, .dtype = fp8 ? model::DType::kBF16 : dtype, .shape = info->shape, .data = dst});
  return ok_status();
}

std::string random_suffix() {
  std::random_device rd;
  return fmt::format("{:08x}{:08x}", rd(), rd());
}

Status fsync_path(const fs::path& p, bool directory) {
  int fd = ::open(p.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) return internal_error("cannot open '{}': {}", p.string(), std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) return internal_error("cannot sync '{}': {}", p.string(), std::strerror(err));
  return ok_status();
}

// Writes `data` to `p` and fsyncs it; a short write (a full disk) is an error naming the file.
Status write_file(const fs::path& p, std::string_view data) {
  int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return internal_error("cannot create '{}': {}", p.string(), std::strerror(errno));
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = n < 0 ? errno : ENOSPC;
      ::close(fd);
      return make_error(err == ENOSPC ? StatusCode::kResourceExhausted : StatusCode::kInternal,
                        "cannot write '{}': {}", p.string(), std::strerror(err));
    }
    done += size_t(n);
  }
  int rc = ::fsync(fd);
  int err = errno;
  if (::close(fd) != 0 && rc == 0) {
    rc = -1;
    err = errno;
  }
  if (rc != 0) return internal_error("cannot sync '{}': {}", p.string(), std::strerror(err));
  return ok_status();
}

Result<std::string> read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return not_found("cannot open '{}'", p.string());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string utc_now_iso() {
  std::time_t t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

bool cancelled(const WriteOptions& o) { return o.cancel && o.cancel->load(); }

Status cancelled_status() {
  return make_error(StatusCode::kCancelled, "interrupted: no partition written");
}

// The tokenizer files of the partition: copied from a Hugging Face folder, or made from the GGUF
// metadata (tokenizer.json from the tokenizer, tokenizer_config.json naming BOS/EOS and the chat
// template).
Status write_tokenizer(const ModelSource& src, const fs::path& tmp, TokenizerFiles& out) {
  out.file = "tokenizer.json";
  if (src.kind == SourceKind::kGguf) {
    PP_ASSERT(src.gguf);
    auto tok = model::Tokenizer::from_gguf(*src.gguf);
    if (!tok.ok())
      return tok.status().with_context(fmt::format("'{}': tokenizer", src.path.string()));
    PP_RETURN_IF_ERROR(write_file(tmp / out.file, (*tok)->to_hf_json().dump()));
    nlohmann::json tc = nlohmann::json::object();
    if (auto b = (*tok)->bos_id()) tc["bos_token"] = (*tok)->id_to_token(*b);
    if (auto e = (*tok)->eos_id()) tc["eos_token"] = (*tok)->id_to_token(*e);
    if (!src.chat_template.empty()) tc["chat_template"] = src.chat_template;
    out.config_file = "tokenizer_config.json";
    PP_RETURN_IF_ERROR(write_file(tmp / out.config_file, tc.dump(2)));
  } else {
    if (src.tokenizer_json.empty()) {
      return not_found("'{}' has no tokenizer.json (the partition must carry its tokenizer)",
                       src.path.string());
    }
    PP_ASSIGN_OR_RETURN(std::string text, read_text(src.tokenizer_json));
    PP_RETURN_IF_ERROR(write_file(tmp / out.file, text));
    fs::path tc = src.tokenizer_json.parent_path() / "tokenizer_config.json";
    std::error_code ec;
    if (fs::exists(tc, ec)) {
      PP_ASSIGN_OR_RETURN(std::string t, read_text(tc));
      out.config_file = "tokenizer_config.json";
      PP_RETURN_IF_ERROR(write_file(tmp / out.config_file, t));
    }
  }
  PP_ASSIGN_OR_RETURN(out.sha256, sha256_file(tmp / out.file));
  if (!out.config_file.empty()) {
    PP_ASSIGN_OR_RETURN(out.config_sha256, sha256_file(tmp / out.config_file));
  }
  return ok_status();
}

// The shards, plus the f32 scratch of the largest stage (see StageScratch). With tensor
// parallelism a stage's rank files together hold every replicated tensor (norms, the embedding, a
// KV head several ranks read) once per rank: the stage's bytes scale with its parameters summed
// over the ranks' local shapes.
Status check_space(const fs::path& parent, const Plan& plan, const model::ModelConfig& c,
                   const std::vector<model::TpLayout>& layouts) {
  struct statvfs st {};
  if (::statvfs(parent.c_str(), &st) != 0) return ok_status();  // unknown: let writes decide
  uint64_t need = 0, scratch = 0;
  for (const StagePlan& s : plan.stages) {
    double factor = 1.0;
    if (layouts.size() > 1) {
      const model::StageTensors t = model::stage_tensors(c, stage_parts(s), true);
      const int64_t whole = model::tensor_params(t.tensors);
      int64_t ranks = 0;
      for (const model::TpLayout& l : layouts) {
        for (const model::ShardedTensor& x : model::shard_tensors(c, l, t.tensors)) {
          ranks += x.local.numel();
        }
      }
      if (whole > 0) factor = double(ranks) / double(whole);
    }
    need += uint64_t(double(s.bytes) * factor);
    scratch = std::max<uint64_t>(scratch, uint64_t(s.params) * 4);
  }
  need += scratch;
  uint64_t have = uint64_t(st.f_bavail) * uint64_t(st.f_frsize);
  if (need > have) {
    return make_error(
        StatusCode::kResourceExhausted,
        "not enough disk space in '{}': the partition needs about {} bytes, {} are free",
        parent.string(), need, have);
  }
  return ok_status();
}

// Moves the finished temporary folder to `out`. Without force, RENAME_NOREPLACE refuses a DIR
// that appeared meanwhile; with force, RENAME_EXCHANGE swaps old and new in one step and the old
// one (now at `tmp`) is removed by the caller's guard.
Status commit(const fs::path& tmp, const fs::path& out, bool force) {
  std::error_code ec;
  bool exists = fs::exists(fs::symlink_status(out, ec));
  if (!exists) {
    if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, out.c_str(), RENAME_NOREPLACE) == 0) {
      return ok_status();
    }
    if (errno == EEXIST) {
      return make_error(StatusCode::kAlreadyExists,
                        "'{}' already exists (use --force to replace it)", out.string());
    }
    if (errno != EINVAL && errno != ENOSYS) {
      return internal_error("cannot rename '{}' to '{}': {}", tmp.string(), out.string(),
                            std::strerror(errno));
    }
    // A file system without renameat2 flags: plain rename (fails on a non-empty DIR).
    if (::rename(tmp.c_str(), out.c_str()) != 0) {
      return internal_error("cannot rename '{}' to '{}': {}", tmp.string(), out.string(),
                            std::strerror(errno));
    }
    return ok_status();
  }
  if (!force) {
    return make_error(StatusCode::kAlreadyExists, "'{}' already exists (use --force to replace it)",
                      out.string());
  }
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, out.c_str(), RENAME_EXCHANGE) == 0) {
    return ok_status();
  }
  if (errno != EINVAL && errno != ENOSYS) {
    return internal_error("cannot replace '{}': {}", out.string(), std::strerror(errno));
  }
  // Fallback: move the old one aside, the new one in, then drop the old one.
  fs::path aside = out;
  aside += ".old-" + random_suffix();
  if (::rename(out.c_str(), aside.c_str()) != 0) {
    return internal_error("cannot move '{}' aside: {}", out.string(), std::strerror(errno));
  }
  if (::rename(tmp.c_str(), out.c_str()) != 0) {
    int err = errno;
    ::rename(aside.c_str(), out.c_str());
    return internal_error("cannot rename '{}' to '{}': {}", tmp.string(), out.string(),
                          std::strerror(err));
  }
  fs::remove_all(aside, ec);
  return ok_status();
}

}  // namespace

Result<std::string> source_checksum(const ModelSource& source, std::string* files) {
  std::vector<fs::path> paths;
  if (source.kind == SourceKind::kGguf) {
    paths.push_back(source.gguf ? source.gguf->path() : source.path);
  } else if (auto* st = dynamic_cast<const model::SafetensorsWeights*>(source.weights.get())) {
    for (const auto& f : st->files()) paths.push_back(f->path());
  } else {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(source.path, ec)) {
      if (e.path().extension() == ".safetensors") paths.push_back(e.path());
    }
    std::sort(paths.begin(), paths.end());
  }
  if (paths.empty()) return not_found("'{}' has no weight files to checksum", source.path.string());
  if (files) {
    files->clear();
    for (const auto& p : paths) {
      if (!files->empty()) *files += ",";
      *files += p.filename().string();
    }
  }
  return sha256_files(paths);
}

Result<PartitionManifest> write_partition(const ModelSource& src, const Plan& plan,
                                          const WriteOptions& o) {
  const model::ModelConfig& c = src.config;
  if (plan.stages.empty() || plan.n_layer != c.n_layer) {
    return invalid_argument("the plan is for {} layers, the model has {}", plan.n_layer, c.n_layer);
  }
  PP_ASSERT(src.weights);
  const model::WeightSource& w = *src.weights;
  const int n_stages = int(plan.stages.size());

  fs::path out = fs::absolute(o.out_dir).lexically_normal();
  if (out.filename().empty()) out = out.parent_path();
  fs::path parent = out.parent_path();
  std::error_code ec;
  if (!fs::is_directory(parent, ec)) {
    return not_found("cannot create '{}': folder '{}' does not exist", out.string(),
                     parent.string());
  }
  if (fs::exists(fs::symlink_status(out, ec)) && !o.force) {
    return make_error(StatusCode::kAlreadyExists, "'{}' already exists (use --force to replace it)",
                      out.string());
  }

  // Which tensors go where, by the model's table (tensors the model does not read stay behind);
  // the edges must be present.
  std::vector<std::vector<std::string>> names(n_stages);
  for (const std::string& name : w.names()) {
    int k = stage_of_tensor(c, name, plan.stages);
    if (k >= 0) names[k].push_back(name);
  }
  for (int k = 0; k < n_stages; ++k) {
    if (names[k].empty()) return not_found("'{}' has no tensors for stage {}", w.describe(), k);
  }
  // Every tensor a stage will load (its rows of the table, with the head rule) must be there.
  for (const StagePlan& s : plan.stages) {
    const model::StageTensors need =
        model::stage_tensors(c, stage_parts(s), model::head_reads_embedding(c, w));
    for (const model::TensorSpec& t : need.tensors) {
      if (!w.find(t.name)) return not_found("'{}' has no tensor '{}'", w.describe(), t.name);
    }
  }
  // The edges' names, from the table: the embedding and the lm_head's own tensor.
  std::string embed_name, lm_head_name;
  for (const model::TensorSpec& t : model::stage_tensors(c, {0, 0, true, true}, false).tensors) {
    if (t.slot == model::WeightSlot::kEmbedding) embed_name = t.name;
    if (t.slot == model::WeightSlot::kLmHead) lm_head_name = t.name;
  }
  const bool has_lm_head = w.find(lm_head_name) != nullptr;
  if (!has_lm_head && !c.tie_word_embeddings) {
    return not_found("'{}' has no tensor '{}' and the embeddings are not tied", w.describe(),
                     lm_head_name);
  }
  std::vector<std::string> lm_head_tensor(n_stages);
  {
    const int last = n_stages - 1;
    if (has_lm_head) {
      lm_head_tensor[last] = lm_head_name;
    } else if (plan.stages[last].has_embedding) {
      lm_head_tensor[last] = embed_name;  // tied, one stage: the table serves both
    } else {
      lm_head_tensor[last] = lm_head_name;  // tied: the last stage gets its own copy
    }
  }

  if (o.tp < 1) return invalid_argument("--tp must be at least 1, not {}", o.tp);
  std::vector<model::TpLayout> layouts;
  if (o.tp > 1) {
    auto l = model::tp_layouts(c, o.tp);
    if (!l.ok()) return l.status().with_context(fmt::format("cannot split '{}'", w.describe()));
    layouts = std::move(l).value();
  }

  PP_RETURN_IF_ERROR(check_space(parent, plan, c, layouts));
  if (cancelled(o)) return cancelled_status();

  fs::path tmp = parent / (out.filename().string() + ".tmp-" + random_suffix());
  if (!fs::create_directory(tmp, ec)) {
    return internal_error("cannot create '{}': {}", tmp.string(), ec ? ec.message() : "exists");
  }
  TempFolderGuard guard(tmp);

  PartitionManifest m;
  m.pp_version = version_string();
  m.created = utc_now_iso();
  m.config = c;
  m.chat_template = src.chat_template;
  m.plan = plan;
  m.tp = o.tp;
  if (o.tp > 1) m.format_version = kManifestFormatVersionTp;
  m.source.path = fs::absolute(src.path).lexically_normal().string();
  m.source.kind = src.kind == SourceKind::kGguf ? "gguf" : "hf";

  // The shards' config says how their weights are stored: an fp8 partition's
  // quantization_config, and none once an FP8 source is written in a 16- or 32-bit dtype.
  const bool fp8 = plan.dtype == model::DType::kF8E4M3;
  m.config.quant = fp8 ? shard_quant_config(c) : model::WeightQuantConfig{};
  if (fp8 || c.quant.quantized()) m.config.torch_dtype = model_dtype_name(plan.dtype);
  m.config_json = model::config_to_hf_json(m.config);

  StageScratch scratch;
  // One shard: `items` (source name in `from`, name in the shard) read one at a time into the
  // scratch mapping (f32 values, or fp8 bytes and f32 scales), written, fsynced and hashed.
  using Items = std::vector<std::pair<std::string, std::string>>;
  auto write_shard = [&](const model::WeightSource& from, Items items, const std::string& file,
                         std::map<std::string, std::string> meta) -> Result<ShardFile> {
    std::sort(items.begin(), items.end(),
              [](const auto& a, const auto& b) { return a.second < b.second; });
    size_t n_bytes = 0;
    for (const auto& item : items) n_bytes += scratch_bytes(*from.find(item.first), fp8);
    PP_RETURN_IF_ERROR(scratch.create(tmp / fmt::format(".scratch-{}", file), n_bytes));
    std::vector<model::SafetensorsEntry> entries;
    for (const auto& [name, to] : items) {
      if (cancelled(o)) return cancelled_status();
      PP_RETURN_IF_ERROR(add_entries(c, from, name, to, fp8, plan.dtype, scratch, entries));
    }
    ShardFile f;
    f.file = file;
    fs::path p = tmp / f.file;
    PP_RETURN_IF_ERROR(model::write_safetensors(p, entries, meta));
    scratch.reset();
    if (cancelled(o)) return cancelled_status();
    PP_RETURN_IF_ERROR(fsync_path(p, false));
    f.bytes = fs::file_size(p, ec);
    if (ec) return internal_error("cannot stat '{}': {}", p.string(), ec.message());
    PP_ASSIGN_OR_RETURN(f.sha256, sha256_file(p));
    f.n_tensors = int64_t(items.size());
    return f;
  };
  const bool reads_embedding = model::head_reads_embedding(c, w);
  // A rank slices the weights as the tp 1 shards would hold them: an fp8 partition's linears
  // quantized whole (per channel), then cut, so a row-parallel slice keeps its rows' scales and
  // the rank files hold the very bytes a rank of a tp 1 fp8 partition would load.
  const std::shared_ptr<const model::WeightSource> rank_base =
      o.tp > 1 && fp8 ? model::quantize_on_load(src.weights, c, model::Quantization::kFp8)
                      : src.weights;
  for (int k = 0; k < n_stages; ++k) {
    StageFile f;
    f.lm_head_tensor = lm_head_tensor[k];
    std::map<std::string, std::string> meta = {
        {"format", "pt"},
        {"pp_stage", std::to_string(k)},
        {"pp_n_stages", std::to_string(n_stages)},
        {"pp_layers", format_layer_range(plan.stages[k].layers)},
        {"pp_source", m.source.path},
    };
    if (o.tp == 1) {
      // (source name, name in the shard): a tied lm_head copy reads the embedding table.
      Items items;
      for (const std::string& n : names[k]) items.emplace_back(n, n);
      if (k == n_stages - 1 && !has_lm_head && !plan.stages[k].has_embedding) {
        items.emplace_back(embed_name, lm_head_name);
      }
      PP_ASSIGN_OR_RETURN(ShardFile sf,
                          write_shard(w, std::move(items), fmt::format("stage-{}.safetensors", k),
                                      std::move(meta)));
      f.ranks.push_back(std::move(sf));
    } else {
      // Exactly what the stage loads, as each rank holds it; the head's tensor is lm_head.weight
      // unless it is the stage's own embedding table.
      const model::StageTensors st =
          model::stage_tensors(c, stage_parts(plan.stages[k]), reads_embedding);
      if (plan.stages[k].has_lm_head) {
        f.lm_head_tensor = st.head_shares_embedding ? embed_name : lm_head_name;
      }
      for (int32_t r = 0; r < o.tp; ++r) {
        std::vector<model::ShardedTensor> shards =
            model::shard_tensors(c, layouts[size_t(r)], st.tensors);
        Items items;
        for (const model::ShardedTensor& t : shards) {
          const bool head = t.local.slot == model::WeightSlot::kLmHead;
          items.emplace_back(t.local.name, head ? lm_head_name : t.local.name);
        }
        std::unique_ptr<model::WeightSource> sliced =
            model::tp_slice_source(*rank_base, std::move(shards));
        std::map<std::string, std::string> rank_meta = meta;
        rank_meta["pp_tp_rank"] = std::to_string(r);
        rank_meta["pp_tp_size"] = std::to_string(o.tp);
        PP_ASSIGN_OR_RETURN(
            ShardFile sf,
            write_shard(*sliced, std::move(items),
                        fmt::format("stage-{}-rank-{}.safetensors", k, r), std::move(rank_meta)));
        f.ranks.push_back(std::move(sf));
      }
    }
    m.files.push_back(f);
    if (o.after_stage) PP_RETURN_IF_ERROR(o.after_stage(k, f));
    if (cancelled(o)) return cancelled_status();
  }

  PP_RETURN_IF_ERROR(write_tokenizer(src, tmp, m.tokenizer));
  {
    auto sum = source_checksum(src, &m.source.checksum_of);
    if (!sum.ok()) return sum.status();
    m.source.sha256 = *sum;
  }
  if (cancelled(o)) return cancelled_status();
  PP_RETURN_IF_ERROR(write_file(tmp / kManifestName, manifest_to_json(m).dump(2) + "\n"));
  PP_RETURN_IF_ERROR(fsync_path(tmp, true));
  if (cancelled(o)) return cancelled_status();

  PP_RETURN_IF_ERROR(commit(tmp, out, o.force));
  // After a swap `tmp` holds the old partition, which the guard now removes; after a plain
  // rename it no longer exists.
  (void)fsync_path(parent, true);
  return m;
}

}  // namespace pp::partition
