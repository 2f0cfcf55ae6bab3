// Safetensors reader: validates the JSON header of a mmapped file against the file's length, and
// opens sharded checkpoints through model.safetensors.index.json.
//
// Invariants after open: every tensor has a known dtype, a shape of non-negative dimensions whose
// element count does not overflow, and data_offsets [begin, end] with begin <= end <= the length
// of the data section and end - begin == numel * element size. Tensors may overlap or leave gaps
// (the format forbids both, but reading them is harmless).
//
// FP8 checkpoints: an F8_E4M3 tensor `P.weight` is read with its scale, `P.weight_scale_inv`
// (DeepSeek-V3 / Qwen3 block FP8: f32 [ceil(rows / 128), ceil(cols / 128)]) or `P.weight_scale`
// (compressed-tensors: one value, one per row, or 128 x 128 blocks), real = stored * scale. The
// scale tensors and `P.input_scale` (static activation scales; pp quantizes activations at run
// time) belong to their weight and are not listed.
#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "pp/assert.h"
#include "pp/kernels/float-convert.h"
#include "pp/model/gguf.h"
#include "pp/model/safetensors.h"
#include "weights/mapped-file.h"

namespace pp::model {
namespace {

using nlohmann::json;

struct DTypeName {
  const char* name;
  DType dtype;
  int64_t size;
};

const DTypeName kDTypes[] = {
    {"F64", DType::kF64, 8},   {"F32", DType::kF32, 4},        {"F16", DType::kF16, 2},
    {"BF16", DType::kBF16, 2}, {"I64", DType::kI64, 8},        {"I32", DType::kI32, 4},
    {"I16", DType::kI16, 2},   {"I8", DType::kI8, 1},          {"U8", DType::kU8, 1},
    {"BOOL", DType::kBool, 1}, {"F8_E4M3", DType::kF8E4M3, 1},
};

// Dtypes of the format that pp knows but does not read, with the reason.
bool unsupported_dtype(std::string_view name) { return name == "F8_E5M2" || name == "F8_E8M0"; }

// Parses one header entry into `t`; the message says what is wrong (without the file name).
std::string parse_entry(const std::string& name, const json& j, uint64_t data_size, TensorInfo* t) {
  if (!j.is_object()) return "is not an object";
  auto dt = j.find("dtype");
  auto sh = j.find("shape");
  auto off = j.find("data_offsets");
  if (dt == j.end() || !dt->is_string()) return "has no string 'dtype'";
  if (sh == j.end() || !sh->is_array()) return "has no array 'shape'";
  if (off == j.end() || !off->is_array() || off->size() != 2) {
    return "has no 'data_offsets' pair";
  }
  const std::string& dtype = dt->get_ref<const std::string&>();
  if (!dtype_from_safetensors(dtype, &t->dtype)) return fmt::format("has unknown dtype {}", dtype);
  int64_t numel = 1;
  for (const json& d : *sh) {
    if (!d.is_number_unsigned() ||
        d.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()) ||
        __builtin_mul_overflow(numel, int64_t(d.get<uint64_t>()), &numel)) {
      return "has a bad shape (dimensions must be non-negative integers, their product fit 64 "
             "bits)";
    }
    t->shape.push_back(int64_t(d.get<uint64_t>()));
  }
  const json& b = (*off)[0];
  const json& e = (*off)[1];
  if (!b.is_number_unsigned() || !e.is_number_unsigned()) {
    return "has data_offsets that are not non-negative integers";
  }
  const uint64_t begin = b.get<uint64_t>(), end = e.get<uint64_t>();
  if (begin > end) return fmt::format("has data_offsets [{}, {}] out of order", begin, end);
  if (end > data_size) {
    return fmt::format("data [{}, {}] extends past end of file (data section of {} bytes)", begin,
                       end, data_size);
  }
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(uint64_t(numel), uint64_t(dtype_size(t->dtype)), &nbytes) ||
      nbytes != end - begin) {
    return fmt::format("holds {} bytes, but {} elements of {} need {}", end - begin, numel, dtype,
                       nbytes);
  }
  t->name = name;
  t->offset = begin;
  t->nbytes = nbytes;
  return {};
}

// Rejects shard names that would leave the checkpoint's folder.
bool safe_relative_path(const std::string& s) {
  if (s.empty()) return false;
  const std::filesystem::path p(s);
  if (p.is_absolute()) return false;
  for (const auto& part : p) {
    if (part == "..") return false;
  }
  return true;
}

Result<json> read_json_file(const std::filesystem::path& path) {
  PP_ASSIGN_OR_RETURN(detail::MappedFile m, detail::MappedFile::open(path));
  const std::span<const uint8_t> b = m.bytes();
  try {
    return json::parse(b.begin(), b.end());
  } catch (const json::exception& e) {
    return data_loss("'{}': bad JSON: {}", path.string(), e.what());
  }
}

}  // namespace

bool dtype_from_safetensors(std::string_view name, DType* out) {
  for (const DTypeName& d : kDTypes) {
    if (name == d.name) {
      *out = d.dtype;
      return true;
    }
  }
  return false;
}

int64_t dtype_size(DType t) {
  for (const DTypeName& d : kDTypes) {
    if (d.dtype == t) return d.size;
  }
  return 0;
}

SafetensorsFile::~SafetensorsFile() { detail::MappedFile::unmap(map_, map_size_); }

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::open(const std::filesystem::path& path) {
  PP_ASSIGN_OR_RETURN(detail::MappedFile mapped, detail::MappedFile::open(path));
  PP_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, parse(mapped.bytes(), path.string()));
  f->path_ = path;
  mapped.release(&f->map_, &f->map_size_);
  return f;
}

Result<std::unique_ptr<SafetensorsFile>> SafetensorsFile::parse(std::span<const uint8_t> data,
                                                                std::string display_name) {
  const std::string& name = display_name;
  if (data.size() < 8) {
    return data_loss("'{}': file of {} bytes is too short for a safetensors header", name,
                     data.size());
  }
  uint64_t header_len = 0;
  std::memcpy(&header_len, data.data(), 8);
  if (header_len > data.size() - 8) {
    return data_loss("'{}': header length {} extends past end of file ({} bytes)", name, header_len,
                     data.size());
  }
  if (header_len > kMaxHeaderBytes) {
    return data_loss("'{}': header length {} is larger than the {} bytes allowed", name, header_len,
                     kMaxHeaderBytes);
  }
  const std::span<const uint8_t> header = data.subspan(8, size_t(header_len));
  json j;
  try {
    j = json::parse(header.begin(), header.end());
  } catch (const json::exception& e) {
    return data_loss("'{}': bad JSON header: {}", name, e.what());
  }
  if (!j.is_object()) return data_loss("'{}': JSON header is not an object", name);

  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = display_name;
  f->data_ = data.subspan(size_t(8 + header_len));
  for (const auto& [key, value] : j.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) return data_loss("'{}': __metadata__ is not an object", name);
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) {
          return data_loss("'{}': __metadata__ value '{}' is not a string", name, mk);
        }
        f->metadata_[mk] = mv.get<std::string>();
      }
      continue;
    }
    if (value.is_object()) {
      auto dt = value.find("dtype");
      if (dt != value.end() && dt->is_string() && unsupported_dtype(dt->get<std::string>())) {
        return unimplemented(
            "'{}': tensor '{}' has dtype {}, which pp does not read (fp8 weights must be "
            "F8_E4M3)",
            name, key, dt->get<std::string>());
      }
    }
    TensorInfo t;
    const std::string err = parse_entry(key, value, f->data_.size(), &t);
    if (!err.empty()) return data_loss("'{}': tensor '{}' {}", name, key, err);
    f->tensors_.push_back(std::move(t));
  }
  std::sort(f->tensors_.begin(), f->tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  return f;
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

std::span<const uint8_t> SafetensorsFile::tensor_bytes(const TensorInfo& t) const {
  PP_ASSERT(t.offset <= data_.size() && t.nbytes <= data_.size() - t.offset);
  return data_.subspan(size_t(t.offset), size_t(t.nbytes));
}

Status SafetensorsFile::read_f32(const TensorInfo& t, std::span<float> out) const {
  const int64_t n = t.numel();
  if (out.size() != uint64_t(n)) {
    return invalid_argument("'{}': tensor '{}' has {} elements, the buffer {}", path_.string(),
                            t.name, n, out.size());
  }
  const std::span<const uint8_t> b = tensor_bytes(t);
  switch (t.dtype) {
    case DType::kU8:
      for (int64_t i = 0; i < n; ++i) out[i] = float(b[i]);
      return ok_status();
    case DType::kBool:
      for (int64_t i = 0; i < n; ++i) out[i] = b[i] != 0 ? 1.0f : 0.0f;
      return ok_status();
    default:
      return dequantize_row(t.dtype, b.data(), out.data(), n)
          .with_context(fmt::format("'{}': tensor '{}'", path_.string(), t.name));
  }
}

Result<std::unique_ptr<SafetensorsWeights>> SafetensorsWeights::open(
    const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path index;
  fs::path single;
  if (fs::is_directory(path, ec)) {
    if (fs::exists(path / "model.safetensors.index.json", ec)) {
      index = path / "model.safetensors.index.json";
    } else if (fs::exists(path / "model.safetensors", ec)) {
      single = path / "model.safetensors";
    } else {
      return not_found("'{}' has neither model.safetensors nor model.safetensors.index.json",
                       path.string());
    }
  } else if (path.filename().string().ends_with(".index.json")) {
    index = path;
  } else {
    single = path;
  }

  std::unique_ptr<SafetensorsWeights> w(new SafetensorsWeights());
  if (!single.empty()) {
    PP_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::open(single));
    for (const TensorInfo& t : f->tensors()) w->tensors_.emplace(t.name, t);
    w->describe_ = single.string();
    w->files_.push_back(std::move(f));
    PP_RETURN_IF_ERROR(w->attach_scales());
    return w;
  }

  PP_ASSIGN_OR_RETURN(json j, read_json_file(index));
  const std::string iname = index.string();
  auto wm = j.is_object() ? j.find("weight_map") : j.end();
  if (wm == j.end() || !wm->is_object()) {
    return data_loss("'{}': no 'weight_map' object", iname);
  }
  std::map<std::string, int> shard_index;  // shard file name -> file_index
  for (const auto& [tensor, shard] : wm->items()) {
    if (!shard.is_string() || !safe_relative_path(shard.get<std::string>())) {
      return data_loss("'{}': tensor '{}' names a bad shard file", iname, tensor);
    }
    shard_index.emplace(shard.get<std::string>(), 0);
  }
  if (shard_index.empty()) return data_loss("'{}': 'weight_map' is empty", iname);
  const fs::path dir = index.parent_path();
  for (auto& [shard, idx] : shard_index) {
    const fs::path p = dir / shard;
    if (!fs::exists(p, ec)) {
      return not_found("shard '{}' named in '{}' does not exist", p.string(), iname);
    }
    PP_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::open(p));
    idx = int(w->files_.size());
    w->files_.push_back(std::move(f));
  }
  for (const auto& [tensor, shard] : wm->items()) {
    const int idx = shard_index.at(shard.get<std::string>());
    const SafetensorsFile& f = *w->files_[size_t(idx)];
    const TensorInfo* t = f.find(tensor);
    if (t == nullptr) {
      return not_found("tensor '{}' named in '{}' is not in its shard '{}'", tensor, iname,
                       f.path().string());
    }
    TensorInfo info = *t;
    info.file_index = idx;
    w->tensors_.emplace(tensor, std::move(info));
  }
  w->describe_ = iname;
  PP_RETURN_IF_ERROR(w->attach_scales());
  return w;
}

namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The scale kind a scale tensor of `shape` gives a [rows, cols] weight, or kNone when the shape
// fits none. `block_only`: a `weight_scale_inv`, which is always 128 x 128 blocks.
kernels::ScaleKind scale_kind_of(const std::vector<int64_t>& shape, int64_t rows, int64_t cols,
                                 bool block_only) {
  using kernels::ScaleKind;
  const bool block =
      shape.size() == 2 && shape[0] == ceil_div(rows, 128) && shape[1] == ceil_div(cols, 128);
  if (block_only) return block ? ScaleKind::kBlock128x128 : ScaleKind::kNone;
  if (shape.empty() || (shape.size() == 1 && shape[0] == 1)) return ScaleKind::kPerTensor;
  if ((shape.size() == 1 && shape[0] == rows) ||
      (shape.size() == 2 && shape[0] == rows && shape[1] == 1)) {
    return ScaleKind::kPerChannel;
  }
  return block ? ScaleKind::kBlock128x128 : ScaleKind::kNone;
}

std::string shape_string(const std::vector<int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

}  // namespace

Status SafetensorsWeights::attach_scales() {
  std::set<std::string> hidden;
  for (auto& [name, t] : tensors_) {
    if (t.dtype != DType::kF8E4M3) continue;
    const std::string& file = files_[size_t(t.file_index)]->path().string();
    if (t.shape.size() != 2 || !name.ends_with(".weight")) {
      return data_loss("'{}': F8_E4M3 tensor '{}' of shape {} is not a linear's 2-D weight", file,
                       name, shape_string(t.shape));
    }
    const std::string prefix = name.substr(0, name.size() - std::string_view(".weight").size());
    auto inv = tensors_.find(prefix + ".weight_scale_inv");
    auto plain = tensors_.find(prefix + ".weight_scale");
    const bool is_inv = inv != tensors_.end();
    if (!is_inv && plain == tensors_.end()) {
      return data_loss(
          "'{}': F8_E4M3 tensor '{}' has no scale ('{}.weight_scale_inv' or '{}.weight_scale')",
          file, name, prefix, prefix);
    }
    const TensorInfo& s = is_inv ? inv->second : plain->second;
    if (s.dtype != DType::kF32 && s.dtype != DType::kBF16) {
      return data_loss("'{}': scale '{}' of F8_E4M3 tensor '{}' is {} (F32 or BF16 expected)", file,
                       s.name, name, dtype_name(s.dtype));
    }
    t.scale_kind = scale_kind_of(s.shape, t.shape[0], t.shape[1], is_inv);
    if (t.scale_kind == kernels::ScaleKind::kNone) {
      return data_loss(
          "'{}': scale '{}' of shape {} fits no scaling of F8_E4M3 tensor '{}' {} ({} 128x128 "
          "blocks{})",
          file, s.name, shape_string(s.shape), name, shape_string(t.shape),
          shape_string({ceil_div(t.shape[0], 128), ceil_div(t.shape[1], 128)}),
          is_inv ? "" : fmt::format(", [] or [1] per tensor, [{}] per channel", t.shape[0]));
    }
    scales_.emplace(name, s);
    hidden.insert(prefix + ".weight_scale_inv");
    hidden.insert(prefix + ".weight_scale");
    hidden.insert(prefix + ".input_scale");
  }
  for (const std::string& n : hidden) tensors_.erase(n);
  return ok_status();
}

std::vector<std::string> SafetensorsWeights::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, t] : tensors_) out.push_back(name);
  return out;
}

const TensorInfo* SafetensorsWeights::find(std::string_view name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

Status SafetensorsWeights::read_f32(std::string_view name, std::span<float> out) const {
  const TensorInfo* t = find(name);
  if (t == nullptr) return not_found("no tensor '{}' in '{}'", name, describe_);
  if (t->dtype != DType::kF8E4M3) return files_[size_t(t->file_index)]->read_f32(*t, out);
  if (out.size() != uint64_t(t->numel())) {
    return invalid_argument("'{}': tensor '{}' has {} elements, the buffer {}", describe_, name,
                            t->numel(), out.size());
  }
  PP_ASSIGN_OR_RETURN(kernels::HostWeight w, read_weight(name));
  w.dequantize(out);
  return ok_status();
}

Result<kernels::HostWeight> SafetensorsWeights::read_weight(std::string_view name) const {
  const TensorInfo* t = find(name);
  if (t == nullptr) return not_found("no tensor '{}' in '{}'", name, describe_);
  if (t->dtype != DType::kF8E4M3) return WeightSource::read_weight(name);
  const SafetensorsFile& f = *files_[size_t(t->file_index)];
  const TensorInfo& s = scales_.find(name)->second;
  std::vector<float> scales(size_t(s.numel()));
  PP_RETURN_IF_ERROR(files_[size_t(s.file_index)]->read_f32(s, scales));
  const std::span<const uint8_t> b = f.tensor_bytes(*t);
  std::vector<std::byte> data(b.size());
  if (!b.empty()) std::memcpy(data.data(), b.data(), b.size());
  auto w =
      kernels::HostWeight::from_bytes(kernels::WeightFormat::kFp8E4M3, t->scale_kind, t->shape[0],
                                      t->shape[1], std::move(data), std::move(scales));
  if (!w.ok())
    return w.status().with_context(fmt::format("'{}': tensor '{}'", f.path().string(), name));
  return w;
}

Result<std::unique_ptr<WeightSource>> open_safetensors(const std::filesystem::path& path) {
  PP_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWeights> w, SafetensorsWeights::open(path));
  return std::unique_ptr<WeightSource>(std::move(w));
}

}  // namespace pp::model
