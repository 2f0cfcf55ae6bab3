// GgufWeights: the tensors of a GGUF file under their Hugging Face names and shapes.
//
// llama.cpp's converter renames tensors (model.layers.N.self_attn.q_proj.weight ->
// blk.N.attn_q.weight), stores shapes innermost first, and for the llama family (Llama, Mistral,
// which it writes as general.architecture "llama") reorders the rows of q_proj and k_proj so
// that each head's two rotary halves are interleaved:
//   gguf = hf.reshape(n_head, 2, rows / n_head / 2, cols).swapaxes(1, 2).reshape(rows, cols)
// (n_head_kv heads for k_proj; biases likewise). Reading undoes all three, so an architecture sees
// exactly the tensors of the original Hugging Face checkpoint. Names we do not know are kept
// under their GGUF name.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <map>
#include <optional>

#include "pp/model/gguf.h"
#include "pp/model/weights.h"

namespace pp::model {
namespace {

struct LayerName {
  const char* gguf;  // suffix after "blk.N."
  const char* hf;    // suffix after "model.layers.N."
};

const LayerName kLayerNames[] = {
    {"attn_norm.weight", "input_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_q.bias", "self_attn.q_proj.bias"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_k.bias", "self_attn.k_proj.bias"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_v.bias", "self_attn.v_proj.bias"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"attn_output.bias", "self_attn.o_proj.bias"},
    {"attn_q_norm.weight", "self_attn.q_norm.weight"},
    {"attn_k_norm.weight", "self_attn.k_norm.weight"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
};

// The Hugging Face name of a GGUF tensor, or nullopt when we do not know it.
std::optional<std::string> hf_name(std::string_view g) {
  if (g == "token_embd.weight") return "model.embed_tokens.weight";
  if (g == "output_norm.weight") return "model.norm.weight";
  if (g == "output.weight") return "lm_head.weight";
  constexpr std::string_view kBlk = "blk.";
  if (!g.starts_with(kBlk)) return std::nullopt;
  g.remove_prefix(kBlk.size());
  const size_t dot = g.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot > 9) return std::nullopt;
  const std::string_view digits = g.substr(0, dot);
  if (digits.size() > 1 && digits[0] == '0') return std::nullopt;
  int layer = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), layer);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  const std::string_view rest = g.substr(dot + 1);
  for (const LayerName& n : kLayerNames) {
    if (rest == n.gguf) return fmt::format("model.layers.{}.{}", layer, n.hf);
  }
  return std::nullopt;
}

// Architectures whose GGUF files come from llama.cpp's LlamaModel converter (undo_permute).
bool permutes_qk(std::string_view arch) {
  return arch == "llama" || arch == "mistral" || arch == "mistral3";
}

class GgufWeights final : public WeightSource {
 public:
  struct Entry {
    TensorInfo info;            // Hugging Face name and shape
    const GgufTensor* tensor;   // in file_
    int64_t permute_heads = 0;  // > 0: undo llama.cpp's q/k row permutation with this many heads
  };

  using EntryMap = std::map<std::string, Entry, std::less<>>;

  GgufWeights(std::shared_ptr<const GgufFile> file, EntryMap entries)
      : file_(std::move(file)), entries_(std::move(entries)) {}

  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    out.reserve(entries_.size());
    for (const auto& [name, e] : entries_) out.push_back(name);
    return out;
  }

  const TensorInfo* find(std::string_view name) const override {
    auto it = entries_.find(name);
    return it == entries_.end() ? nullptr : &it->second.info;
  }

  Status read_f32(std::string_view name, std::span<float> out) const override {
    auto it = entries_.find(name);
    if (it == entries_.end()) return not_found("no tensor '{}' in '{}'", name, describe());
    const Entry& e = it->second;
    if (out.size() != uint64_t(e.info.numel())) {
      return invalid_argument("tensor '{}' of '{}' has {} elements, the buffer {}", name,
                              describe(), e.info.numel(), out.size());
    }
    if (e.permute_heads == 0) return file_->read_f32(*e.tensor, out);
    return read_unpermuted(e, out);
  }

  // A GGUF block type the CPU backend keeps (block_weight_format) as stored, its rows in
  // Hugging Face order; any other type as f32.
  Result<kernels::HostWeight> read_weight(std::string_view name) const override {
    auto it = entries_.find(name);
    if (it == entries_.end()) return not_found("no tensor '{}' in '{}'", name, describe());
    const Entry& e = it->second;
    const std::optional<kernels::WeightFormat> f = block_weight_format(e.info.dtype);
    if (!f || e.info.shape.size() != 2) return WeightSource::read_weight(name);
    const int64_t rows = e.info.shape[0], cols = e.info.shape[1];
    if (cols % kernels::weight_format_block_elems(*f) != 0) return WeightSource::read_weight(name);
    const std::span<const uint8_t> bytes = file_->tensor_bytes(*e.tensor);
    const int64_t row_bytes = kernels::weight_row_bytes(*f, cols);
    if (int64_t(bytes.size()) != rows * row_bytes) {
      return data_loss("tensor '{}' of '{}' has {} bytes, expected {} rows of {}", name, describe(),
                       bytes.size(), rows, row_bytes);
    }
    kernels::HostWeight w = kernels::HostWeight::zeros(*f, rows, cols);
    const std::span<std::byte> dst = w.row_bytes(0, rows);
    const int64_t head_rows = e.permute_heads > 0 ? rows / e.permute_heads : 0;
    for (int64_t r = 0; r < rows; ++r) {
      // GGUF row r = h*head_rows + 2*i + j holds Hugging Face row h*head_rows + j*(head_rows/2) +
      // i.
      int64_t to = r;
      if (e.permute_heads > 0) {
        const int64_t h = r / head_rows, i = (r % head_rows) / 2, j = r % 2;
        to = h * head_rows + j * (head_rows / 2) + i;
      }
      std::memcpy(dst.data() + to * row_bytes, bytes.data() + r * row_bytes, size_t(row_bytes));
    }
    drop_pages(bytes);
    return w;
  }

  std::string describe() const override { return file_->path().string(); }

 private:
  // GGUF row r = h*head_rows + 2*i + j holds Hugging Face row h*head_rows + j*(head_rows/2) + i.
  Status read_unpermuted(const Entry& e, std::span<float> out) const {
    const int64_t rows = e.info.shape[0];
    const int64_t cols = e.info.numel() / std::max<int64_t>(rows, 1);
    const int64_t head_rows = rows / e.permute_heads;
    const int64_t half = head_rows / 2;
    auto hf_row = [&](int64_t r) {
      const int64_t h = r / head_rows, i = (r % head_rows) / 2, j = r % 2;
      return h * head_rows + j * half + i;
    };
    const std::span<const uint8_t> bytes = file_->tensor_bytes(*e.tensor);
    if (cols % ggml_block_size(e.info.dtype) == 0) {
      // Row by row, straight into place: a row is a whole number of blocks.
      const uint64_t row_bytes = e.info.nbytes / uint64_t(rows);
      for (int64_t r = 0; r < rows; ++r) {
        PP_RETURN_IF_ERROR(dequantize_row(e.info.dtype, bytes.data() + r * row_bytes,
                                          out.data() + hf_row(r) * cols, cols));
      }
      return ok_status();
    }
    std::vector<float> tmp(out.size());
    PP_RETURN_IF_ERROR(file_->read_f32(*e.tensor, tmp));
    for (int64_t r = 0; r < rows; ++r) {
      std::copy_n(tmp.data() + r * cols, cols, out.data() + hf_row(r) * cols);
    }
    return ok_status();
  }

  // The copy is what the stage keeps: hand the mapped pages of the file back, so that a stage's
  // resident set holds its weights once (clean file pages; a later read faults them in again).
  static void drop_pages(std::span<const uint8_t> bytes) {
    const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    const uintptr_t begin = (uintptr_t(bytes.data()) + page - 1) & ~(page - 1);
    const uintptr_t end = (uintptr_t(bytes.data() + bytes.size())) & ~(page - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  }

  std::shared_ptr<const GgufFile> file_;
  EntryMap entries_;
};

}  // namespace

Result<std::unique_ptr<WeightSource>> open_gguf_weights(std::shared_ptr<const GgufFile> file,
                                                        int64_t n_head, int64_t n_head_kv) {
  if (!file) return invalid_argument("open_gguf_weights: no file");
  const std::string fname = file->path().string();
  std::string arch;
  if (Result<std::string> a = file->get_string("general.architecture"); a.ok()) arch = *a;
  const bool permute = permutes_qk(arch);
  if (permute && (n_head <= 0 || n_head_kv <= 0)) {
    return invalid_argument("'{}': architecture '{}' needs n_head and n_head_kv (got {} and {})",
                            fname, arch, n_head, n_head_kv);
  }

  GgufWeights::EntryMap entries;
  for (const GgufTensor& t : file->tensors()) {
    GgufWeights::Entry e;
    e.tensor = &t;
    e.info.name = hf_name(t.name).value_or(t.name);
    e.info.dtype = t.dtype;
    e.info.shape.assign(t.ne.rbegin(), t.ne.rend());
    e.info.offset = t.offset;
    e.info.nbytes = t.nbytes;
    if (permute) {
      const bool is_q = e.info.name.ends_with(".self_attn.q_proj.weight") ||
                        e.info.name.ends_with(".self_attn.q_proj.bias");
      const bool is_k = e.info.name.ends_with(".self_attn.k_proj.weight") ||
                        e.info.name.ends_with(".self_attn.k_proj.bias");
      if (is_q || is_k) {
        e.permute_heads = is_q ? n_head : n_head_kv;
        const int64_t rows = e.info.shape.empty() ? 1 : e.info.shape[0];
        if (e.info.shape.empty() || e.info.shape.size() > 2 || rows % (2 * e.permute_heads) != 0) {
          return data_loss("'{}': tensor '{}' has {} rows, not a multiple of 2 x {} heads", fname,
                           t.name, rows, e.permute_heads);
        }
      }
    }
    std::string key = e.info.name;
    if (!entries.emplace(std::move(key), std::move(e)).second) {
      return data_loss("'{}': two tensors map to the name '{}'", fname, t.name);
    }
  }
  return std::unique_ptr<WeightSource>(new GgufWeights(std::move(file), std::move(entries)));
}

}  // namespace pp::model
