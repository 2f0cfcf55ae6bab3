// Tensor-parallel layouts, the slice of each tensor a rank reads, and the weight source that
// reads those slices (see tensor-parallel.h).
#include "pp/model/tensor-parallel.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <string>

#include "pp/assert.h"
#include "pp/model/gguf.h"

namespace pp::model {
namespace {

// [r n / N, (r + 1) n / N): n units over N ranks, the larger shares last.
std::pair<int64_t, int64_t> even_share(int64_t n, int32_t rank, int32_t size) {
  return {n * rank / size, n * (rank + 1) / size};
}

// Rows of n_ff (or n_ff_expert) for a rank: in units of 128, 64, 32 or 1, the largest that
// divides n and leaves every rank at least one unit.
std::pair<int64_t, int64_t> ff_share(int64_t n, int32_t rank, int32_t size) {
  for (int64_t unit : {128, 64, 32, 1}) {
    if (n % unit == 0 && n / unit >= size) {
      auto [b, e] = even_share(n / unit, rank, size);
      return {b * unit, e * unit};
    }
  }
  return even_share(n, rank, size);  // fewer rows than ranks: some ranks hold none
}

}  // namespace

Result<TpLayout> tp_layout(const ModelConfig& c, TpRank tp) {
  if (tp.size < 1) return invalid_argument("tensor-parallel size {} is not positive", tp.size);
  if (tp.rank < 0 || tp.rank >= tp.size) {
    return invalid_argument("rank {} is outside a tensor-parallel group of {}", tp.rank, tp.size);
  }
  if (tp.size > c.n_head) {
    return invalid_argument("tensor-parallel size {} exceeds the model's {} attention heads",
                            tp.size, c.n_head);
  }
  if (c.n_head_kv < 1 || c.n_head % c.n_head_kv != 0) {
    return invalid_argument("{} attention heads do not group over {} KV heads", c.n_head,
                            c.n_head_kv);
  }
  TpLayout l;
  l.tp = tp;
  l.group = c.n_head / c.n_head_kv;
  std::tie(l.head_begin, l.head_end) = even_share(c.n_head, tp.rank, tp.size);
  l.kv_head_begin = l.head_begin / l.group;
  l.kv_head_end = (l.head_end - 1) / l.group + 1;
  std::tie(l.ff_begin, l.ff_end) = ff_share(c.n_ff, tp.rank, tp.size);
  std::tie(l.ff_expert_begin, l.ff_expert_end) = ff_share(c.n_ff_expert, tp.rank, tp.size);
  std::tie(l.vocab_begin, l.vocab_end) = even_share(c.n_vocab, tp.rank, tp.size);
  return l;
}

Result<std::vector<TpLayout>> tp_layouts(const ModelConfig& c, int32_t size) {
  std::vector<TpLayout> out;
  for (int32_t r = 0; r < std::max(size, 1); ++r) {
    PP_ASSIGN_OR_RETURN(TpLayout l, tp_layout(c, {r, size}));
    out.push_back(l);
  }
  return out;
}

ModelConfig tp_local_config(const ModelConfig& c, const TpLayout& l) {
  ModelConfig local = c;
  local.n_head = l.n_head();
  local.n_head_kv = l.n_head_kv();
  local.n_ff = l.ff_end - l.ff_begin;
  local.n_ff_expert = l.ff_expert_end - l.ff_expert_begin;
  return local;
}

ShardedTensor shard_tensor(const ModelConfig& c, const TpLayout& l, const TensorSpec& full) {
  ShardedTensor s{full, {0, full.rows(), 0, full.cols()}};
  if (l.tp.size == 1) return s;
  const int64_t D = c.head_dim;
  const int64_t q_local = l.n_head() * D, kv_local = l.n_head_kv() * D;
  const int64_t ff_local = l.ff_end - l.ff_begin;
  const int64_t ffe = c.n_ff_expert, ffe_local = l.ff_expert_end - l.ff_expert_begin;
  auto rows = [&](int64_t b, int64_t e) {
    s.slice.row_begin = b;
    s.slice.row_end = e;
    s.local.shape[0] = e - b;
  };
  auto cols = [&](int64_t b, int64_t e) {
    PP_ASSERT(full.is_matrix());
    s.slice.col_begin = b;
    s.slice.col_end = e;
    s.local.shape[1] = e - b;
  };
  switch (full.slot) {
    case WeightSlot::kLmHead:
      rows(l.vocab_begin, l.vocab_end);
      break;
    case WeightSlot::kQkv:
    case WeightSlot::kQkvBias:
      if (full.row_offset == 0) {
        rows(l.head_begin * D, l.head_end * D);
        s.local.row_offset = 0;
      } else {
        rows(l.kv_head_begin * D, l.kv_head_end * D);
        s.local.row_offset = full.row_offset == c.q_dim() ? q_local : q_local + kv_local;
      }
      break;
    case WeightSlot::kO:
      cols(l.head_begin * D, l.head_end * D);
      break;
    case WeightSlot::kGateUp:
      rows(l.ff_begin, l.ff_end);
      s.local.row_offset = full.row_offset == 0 ? 0 : ff_local;
      break;
    case WeightSlot::kDown:
      cols(l.ff_begin, l.ff_end);
      break;
    case WeightSlot::kExpertGateUp: {
      const int64_t e = full.row_offset / (2 * ffe);
      const bool up = full.row_offset % (2 * ffe) != 0;
      rows(l.ff_expert_begin, l.ff_expert_end);
      s.local.row_offset = e * 2 * ffe_local + (up ? ffe_local : 0);
      break;
    }
    case WeightSlot::kExpertDown:
      cols(l.ff_expert_begin, l.ff_expert_end);
      break;
    default:
      PP_ASSERT_MSG(full.split == TpSplit::kReplicated, "a split tensor in an unsplit slot");
      break;
  }
  return s;
}

std::vector<ShardedTensor> shard_tensors(const ModelConfig& c, const TpLayout& l,
                                         std::span<const TensorSpec> full) {
  std::vector<ShardedTensor> out;
  out.reserve(full.size());
  for (const TensorSpec& t : full) out.push_back(shard_tensor(c, l, t));
  return out;
}

namespace {

// Whether a slice of a tensor stored as `info` keeps its stored format: GGUF blocks whole along
// the columns, fp8 128 x 128 tiles whole (or ending at the tensor's edge) both ways.
bool slice_keeps_format(const TensorInfo& info, const TpSlice& s) {
  if (std::optional<kernels::WeightFormat> f = block_weight_format(info.dtype)) {
    const int64_t b = kernels::weight_format_block_elems(*f);
    return s.col_begin % b == 0 && s.col_end % b == 0;
  }
  if (info.dtype == DType::kF8E4M3 && info.scale_kind == kernels::ScaleKind::kBlock128x128) {
    const int64_t rows = info.shape.empty() ? 1 : info.shape[0];
    const int64_t cols = info.shape.size() < 2 ? 1 : info.shape[1];
    auto edge = [](int64_t x, int64_t end) { return x % 128 == 0 || x == end; };
    return s.row_begin % 128 == 0 && edge(s.row_end, rows) && s.col_begin % 128 == 0 &&
           edge(s.col_end, cols);
  }
  return true;
}

// The f32 values of `s` out of a full [rows, cols] tensor.
void copy_slice(std::span<const float> full, int64_t cols, const TpSlice& s, std::span<float> out) {
  PP_ASSERT(int64_t(out.size()) == s.rows() * s.cols());
  for (int64_t r = 0; r < s.rows(); ++r) {
    std::copy_n(full.data() + (s.row_begin + r) * cols + s.col_begin, s.cols(),
                out.data() + r * s.cols());
  }
}

class TpSliceSource final : public WeightSource {
 public:
  TpSliceSource(const WeightSource& base, std::vector<ShardedTensor> tensors) : base_(base) {
    for (ShardedTensor& t : tensors) {
      Entry e;
      e.slice = t.slice;
      e.full_rows = t.local.rows();
      if (const TensorInfo* info = base.find(t.local.name)) {
        e.full_rows = info->shape.empty() ? 1 : info->shape[0];
        e.full_cols = info->shape.size() < 2 ? 1 : info->shape[1];
        e.info = *info;
        e.info.shape = t.local.shape;
        e.info.offset = 0;
        e.info.file_index = 0;
        e.keeps_format = slice_keeps_format(*info, t.slice);
        if (!e.keeps_format) {
          e.info.dtype = DType::kF32;
          e.info.scale_kind = kernels::ScaleKind::kNone;
        }
        e.info.nbytes = uint64_t(double(info->nbytes) * double(e.info.numel()) /
                                 double(std::max<int64_t>(info->numel(), 1)));
        e.present = true;
      }
      entries_.emplace(t.local.name, std::move(e));
    }
  }

  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const auto& [name, e] : entries_) {
      if (e.present) out.push_back(name);
    }
    return out;
  }
  const TensorInfo* find(std::string_view name) const override {
    const Entry* e = entry(name);
    return e ? &e->info : nullptr;
  }
  Status read_f32(std::string_view name, std::span<float> out) const override {
    const Entry* e = entry(name);
    if (!e) return not_found("no tensor '{}' in '{}'", name, describe());
    if (int64_t(out.size()) != e->info.numel()) {
      return invalid_argument("'{}' has {} values, the buffer {}", name, e->info.numel(),
                              out.size());
    }
    if (whole(*e)) return base_.read_f32(name, out);
    std::vector<float> full(size_t(e->full_rows * e->full_cols));
    PP_RETURN_IF_ERROR(base_.read_f32(name, full));
    copy_slice(full, e->full_cols, e->slice, out);
    return ok_status();
  }
  Result<kernels::HostWeight> read_weight(std::string_view name) const override {
    const Entry* e = entry(name);
    if (!e) return not_found("no tensor '{}' in '{}'", name, describe());
    if (whole(*e)) return base_.read_weight(name);
    if (!e->keeps_format) return WeightSource::read_weight(name);  // f32 through read_f32
    PP_ASSIGN_OR_RETURN(kernels::HostWeight w, base_.read_weight(name));
    return slice_weight(w, e->slice);
  }
  std::string describe() const override { return base_.describe(); }

 private:
  struct Entry {
    TensorInfo info;  // the rank's shape
    TpSlice slice;
    int64_t full_rows = 0, full_cols = 1;
    bool keeps_format = true;
    bool present = false;
  };

  const Entry* entry(std::string_view name) const {
    auto it = entries_.find(name);
    return it != entries_.end() && it->second.present ? &it->second : nullptr;
  }
  static bool whole(const Entry& e) {
    return e.slice.row_begin == 0 && e.slice.row_end == e.full_rows && e.slice.col_begin == 0 &&
           e.slice.col_end == e.full_cols;
  }

  // The slice of a weight in its stored format (f32, GGUF blocks, fp8 with its scales).
  static Result<kernels::HostWeight> slice_weight(const kernels::HostWeight& w, const TpSlice& s) {
    const kernels::WeightFormat f = w.format();
    const int64_t full_row = kernels::weight_row_bytes(f, w.cols());
    const int64_t first = kernels::weight_row_bytes(f, s.col_begin);
    const int64_t row = kernels::weight_row_bytes(f, s.cols());
    std::vector<std::byte> data(size_t(s.rows() * row));
    const std::span<const std::byte> src = w.bytes();
    for (int64_t r = 0; r < s.rows(); ++r) {
      std::memcpy(data.data() + r * row, src.data() + (s.row_begin + r) * full_row + first,
                  size_t(row));
    }
    std::vector<float> scales;
    const std::span<const float> sc = w.scales();
    switch (w.scale_kind()) {
      case kernels::ScaleKind::kNone:
        break;
      case kernels::ScaleKind::kPerTensor:
        scales.assign(sc.begin(), sc.end());
        break;
      case kernels::ScaleKind::kPerChannel:
        scales.assign(sc.begin() + s.row_begin, sc.begin() + s.row_end);
        break;
      case kernels::ScaleKind::kBlock128x128: {
        const int64_t full_tiles = (w.cols() + 127) / 128;
        for (int64_t tr = s.row_begin / 128; tr < (s.row_end + 127) / 128; ++tr) {
          for (int64_t tc = s.col_begin / 128; tc < (s.col_end + 127) / 128; ++tc) {
            scales.push_back(sc[size_t(tr * full_tiles + tc)]);
          }
        }
        break;
      }
    }
    return kernels::HostWeight::from_bytes(f, w.scale_kind(), s.rows(), s.cols(), std::move(data),
                                           std::move(scales));
  }

  const WeightSource& base_;
  std::map<std::string, Entry, std::less<>> entries_;
};

}  // namespace

std::unique_ptr<WeightSource> tp_slice_source(const WeightSource& base,
                                              std::vector<ShardedTensor> tensors) {
  return std::make_unique<TpSliceSource>(base, std::move(tensors));
}

}  // namespace pp::model
