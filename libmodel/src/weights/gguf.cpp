// GgufFile: parses a GGUF v2/v3 image (header, metadata, tensor directory) in place.
//
// A GGUF file is: magic "GGUF", u32 version, u64 tensor count, u64 metadata count, the metadata
// key/value pairs, the tensor infos (name, n_dims, ne[n_dims], ggml type, offset), padding to the
// alignment (general.alignment, default 32), then the data section. Everything is little-endian.
//
// The file is untrusted: every length, count and offset it states is checked against the bytes
// that remain before it is used, so a count cannot cause an allocation larger than the file, and
// a lying file ends in a one-line kDataLoss Status naming the file and what is wrong.
#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include "pp/assert.h"
#include "pp/model/gguf.h"
#include "weights/ggml-types.h"
#include "weights/mapped-file.h"

namespace pp::model {
namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr uint32_t kMaxDims = 4;
constexpr uint64_t kDefaultAlignment = 32;
constexpr int kMaxArrayDepth = 8;  // nested arrays are skipped, this deep at most

enum class ValueType : uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

// The fewest bytes one value of a type occupies in the file: bounds element counts.
uint64_t min_value_bytes(uint32_t type) {
  switch (static_cast<ValueType>(type)) {
    case ValueType::kU8:
    case ValueType::kI8:
    case ValueType::kBool:
      return 1;
    case ValueType::kU16:
    case ValueType::kI16:
      return 2;
    case ValueType::kU32:
    case ValueType::kI32:
    case ValueType::kF32:
      return 4;
    case ValueType::kU64:
    case ValueType::kI64:
    case ValueType::kF64:
      return 8;
    case ValueType::kString:
      return 8;  // the length
    case ValueType::kArray:
      return 12;  // element type + count
  }
  return 0;
}

// A bounds-checked cursor over the file image. Messages name the file and say what was read.
class Cursor {
 public:
  Cursor(std::span<const uint8_t> data, const std::string& name) : data_(data), name_(name) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return data_.size() - pos_; }

  template <typename T>
  Status read(T* out, std::string_view what) {
    if (remaining() < sizeof(T)) {
      return data_loss("'{}': file ends inside {} (at byte {} of {})", name_, what, pos_,
                       data_.size());
    }
    std::memcpy(out, data_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return ok_status();
  }

  Status read_string(std::string* out, std::string_view what) {
    uint64_t n = 0;
    PP_RETURN_IF_ERROR(read(&n, what));
    if (n > remaining()) {
      return data_loss("'{}': {} has length {} at byte {}, past the end of the file ({} bytes)",
                       name_, what, n, pos_ - 8, data_.size());
    }
    out->assign(reinterpret_cast<const char*>(data_.data() + pos_), size_t(n));
    pos_ += n;
    return ok_status();
  }

  Status skip(uint64_t n, std::string_view what) {
    if (n > remaining()) {
      return data_loss("'{}': {} extends past the end of the file", name_, what);
    }
    pos_ += n;
    return ok_status();
  }

  // An element count followed by elements of at least `min_bytes` each: the count cannot exceed
  // what the rest of the file could hold.
  Status check_count(uint64_t count, uint64_t min_bytes, std::string_view what) const {
    if (min_bytes > 0 && count > remaining() / min_bytes) {
      return data_loss("'{}': {} claims {} elements, more than the {} bytes left in the file hold",
                       name_, what, count, remaining());
    }
    return ok_status();
  }

  const std::string& name() const { return name_; }

 private:
  std::span<const uint8_t> data_;
  const std::string& name_;
  uint64_t pos_ = 0;
};

// Reads a number stored as `Wire` and widens it to `Out` (int64_t, uint64_t or double).
template <typename Wire, typename Out>
Status read_number(Cursor& c, std::string_view what, GgufValue* out) {
  Wire w{};
  PP_RETURN_IF_ERROR(c.read(&w, what));
  out->v = static_cast<Out>(w);
  return ok_status();
}

// Reads one scalar (not an array) of `type` into `out`.
Status read_scalar(Cursor& c, uint32_t type, const std::string& what, GgufValue* out) {
  switch (static_cast<ValueType>(type)) {
    case ValueType::kU8:
      return read_number<uint8_t, uint64_t>(c, what, out);
    case ValueType::kU16:
      return read_number<uint16_t, uint64_t>(c, what, out);
    case ValueType::kU32:
      return read_number<uint32_t, uint64_t>(c, what, out);
    case ValueType::kU64:
      return read_number<uint64_t, uint64_t>(c, what, out);
    case ValueType::kI8:
      return read_number<int8_t, int64_t>(c, what, out);
    case ValueType::kI16:
      return read_number<int16_t, int64_t>(c, what, out);
    case ValueType::kI32:
      return read_number<int32_t, int64_t>(c, what, out);
    case ValueType::kI64:
      return read_number<int64_t, int64_t>(c, what, out);
    case ValueType::kF32:
      return read_number<float, double>(c, what, out);
    case ValueType::kF64:
      return read_number<double, double>(c, what, out);
    case ValueType::kBool: {
      uint8_t b = 0;
      PP_RETURN_IF_ERROR(c.read(&b, what));
      out->v = b != 0;
      return ok_status();
    }
    case ValueType::kString: {
      std::string s;
      PP_RETURN_IF_ERROR(c.read_string(&s, what));
      out->v = std::move(s);
      return ok_status();
    }
    case ValueType::kArray:
      break;
  }
  return data_loss("'{}': {} has unknown value type {}", c.name(), what, type);
}

template <typename T>
Status read_array_of(Cursor& c, uint32_t elem_type, uint64_t count, const std::string& what,
                     GgufValue* out) {
  std::vector<T> v;
  v.reserve(size_t(count));  // bounded by check_count: at most the bytes left in the file
  GgufValue e;
  for (uint64_t i = 0; i < count; ++i) {
    PP_RETURN_IF_ERROR(read_scalar(c, elem_type, what, &e));
    v.push_back(std::get<T>(std::move(e.v)));
  }
  out->v = GgufValue::Array(std::move(v));
  return ok_status();
}

// Walks past an array's body without keeping it (nested arrays: GgufValue cannot hold them).
Status skip_array(Cursor& c, const std::string& what, int depth) {
  if (depth > kMaxArrayDepth) {
    return data_loss("'{}': {} nests arrays more than {} deep", c.name(), what, kMaxArrayDepth);
  }
  uint32_t elem_type = 0;
  uint64_t count = 0;
  PP_RETURN_IF_ERROR(c.read(&elem_type, what));
  PP_RETURN_IF_ERROR(c.read(&count, what));
  const uint64_t min_bytes = min_value_bytes(elem_type);
  if (min_bytes == 0) {
    return data_loss("'{}': {} has unknown element type {}", c.name(), what, elem_type);
  }
  PP_RETURN_IF_ERROR(c.check_count(count, min_bytes, what));
  for (uint64_t i = 0; i < count; ++i) {
    if (elem_type == uint32_t(ValueType::kArray)) {
      PP_RETURN_IF_ERROR(skip_array(c, what, depth + 1));
    } else if (elem_type == uint32_t(ValueType::kString)) {
      uint64_t n = 0;
      PP_RETURN_IF_ERROR(c.read(&n, what));
      PP_RETURN_IF_ERROR(c.skip(n, what));
    } else {
      PP_RETURN_IF_ERROR(c.skip(min_bytes, what));
    }
  }
  return ok_status();
}

// Reads the value of metadata `key`. Sets *kept = false for a nested array, which is skipped.
Status read_value(Cursor& c, uint32_t type, const std::string& key, GgufValue* out, bool* kept) {
  const std::string what = fmt::format("metadata '{}'", key);
  *kept = true;
  if (type != uint32_t(ValueType::kArray)) return read_scalar(c, type, what, out);

  uint32_t elem_type = 0;
  uint64_t count = 0;
  PP_RETURN_IF_ERROR(c.read(&elem_type, what));
  PP_RETURN_IF_ERROR(c.read(&count, what));
  const uint64_t min_bytes = min_value_bytes(elem_type);
  if (min_bytes == 0) {
    return data_loss("'{}': {} is an array of unknown element type {}", c.name(), what, elem_type);
  }
  PP_RETURN_IF_ERROR(c.check_count(count, min_bytes, what));
  switch (static_cast<ValueType>(elem_type)) {
    case ValueType::kU8:
    case ValueType::kU16:
    case ValueType::kU32:
    case ValueType::kU64:
      return read_array_of<uint64_t>(c, elem_type, count, what, out);
    case ValueType::kI8:
    case ValueType::kI16:
    case ValueType::kI32:
    case ValueType::kI64:
      return read_array_of<int64_t>(c, elem_type, count, what, out);
    case ValueType::kF32:
    case ValueType::kF64:
      return read_array_of<double>(c, elem_type, count, what, out);
    case ValueType::kBool:
      return read_array_of<bool>(c, elem_type, count, what, out);
    case ValueType::kString:
      return read_array_of<std::string>(c, elem_type, count, what, out);
    case ValueType::kArray:
      break;
  }
  // An array of arrays: GgufValue cannot hold it, so walk past it and drop the key.
  *kept = false;
  for (uint64_t i = 0; i < count; ++i) PP_RETURN_IF_ERROR(skip_array(c, what, 2));
  return ok_status();
}

bool is_power_of_two(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

}  // namespace

GgufFile::~GgufFile() { detail::MappedFile::unmap(map_, map_size_); }

Result<std::unique_ptr<GgufFile>> GgufFile::open(const std::filesystem::path& path) {
  PP_ASSIGN_OR_RETURN(detail::MappedFile mapped, detail::MappedFile::open(path));
  const std::span<const uint8_t> bytes = mapped.bytes();
  PP_ASSIGN_OR_RETURN(std::unique_ptr<GgufFile> file, parse(bytes, path.string()));
  file->path_ = path;
  mapped.release(&file->map_, &file->map_size_);
  return file;
}

Result<std::unique_ptr<GgufFile>> GgufFile::parse(std::span<const uint8_t> data,
                                                  std::string display_name) {
  std::unique_ptr<GgufFile> f(new GgufFile());
  f->path_ = display_name;
  f->data_ = data;
  const std::string& name = display_name;
  Cursor c(data, name);

  uint32_t magic = 0;
  PP_RETURN_IF_ERROR(c.read(&magic, "the magic number"));
  if (magic != kGgufMagic) {
    return data_loss("'{}': not a GGUF file (magic 0x{:08x}, expected 0x{:08x} \"GGUF\")", name,
                     magic, kGgufMagic);
  }
  PP_RETURN_IF_ERROR(c.read(&f->version_, "the version"));
  if (f->version_ != 2 && f->version_ != 3) {
    if (f->version_ == 1 || (f->version_ > 3 && f->version_ < 0x10000)) {
      return unimplemented("'{}': GGUF version {} is not supported (only 2 and 3)", name,
                           f->version_);
    }
    return data_loss("'{}': bad GGUF version {} (a big-endian or corrupt file)", name, f->version_);
  }
  uint64_t n_tensors = 0, n_kv = 0;
  PP_RETURN_IF_ERROR(c.read(&n_tensors, "the tensor count"));
  PP_RETURN_IF_ERROR(c.read(&n_kv, "the metadata count"));
  // Each key/value takes at least 13 bytes (key length, type, one byte); each tensor info 24.
  PP_RETURN_IF_ERROR(c.check_count(n_kv, 13, "the metadata count"));
  PP_RETURN_IF_ERROR(c.check_count(n_tensors, 24, "the tensor count"));

  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key;
    PP_RETURN_IF_ERROR(c.read_string(&key, fmt::format("metadata key #{}", i)));
    uint32_t type = 0;
    PP_RETURN_IF_ERROR(c.read(&type, fmt::format("the type of metadata '{}'", key)));
    GgufValue value;
    bool kept = true;
    PP_RETURN_IF_ERROR(read_value(c, type, key, &value, &kept));
    if (!kept) continue;
    if (!f->metadata_.emplace(key, std::move(value)).second) {
      return data_loss("'{}': metadata key '{}' appears twice", name, key);
    }
  }

  uint64_t alignment = kDefaultAlignment;
  if (const GgufValue* a = f->find("general.alignment")) {
    const uint64_t* u = std::get_if<uint64_t>(&a->v);
    const int64_t* s = std::get_if<int64_t>(&a->v);
    const uint64_t v = u ? *u : (s && *s > 0 ? uint64_t(*s) : 0);
    if (!is_power_of_two(v)) {
      return data_loss("'{}': general.alignment must be a power of two integer", name);
    }
    alignment = v;
  }

  f->tensors_.reserve(size_t(n_tensors));
  std::set<std::string_view> seen;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensor t;
    PP_RETURN_IF_ERROR(c.read_string(&t.name, fmt::format("the name of tensor #{}", i)));
    const std::string what = fmt::format("tensor '{}'", t.name);
    uint32_t n_dims = 0;
    PP_RETURN_IF_ERROR(c.read(&n_dims, what));
    if (n_dims > kMaxDims) {
      return data_loss("'{}': {} has {} dimensions (at most {})", name, what, n_dims, kMaxDims);
    }
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne = 0;
      PP_RETURN_IF_ERROR(c.read(&ne, what));
      if (ne > uint64_t(std::numeric_limits<int64_t>::max()) ||
          __builtin_mul_overflow(numel, int64_t(ne), &numel)) {
        return data_loss("'{}': {} has an element count that overflows 64 bits", name, what);
      }
      t.ne.push_back(int64_t(ne));
    }
    uint32_t ggml_type = 0;
    PP_RETURN_IF_ERROR(c.read(&ggml_type, what));
    PP_RETURN_IF_ERROR(c.read(&t.offset, what));
    const std::optional<DType> dtype = detail::dtype_from_ggml(ggml_type);
    if (!dtype) {
      if (const char* tn = detail::ggml_type_name(ggml_type)) {
        return unimplemented("'{}': {} has ggml type {} ({}), which is not supported", name, what,
                             tn, ggml_type);
      }
      return unimplemented("'{}': {} has unknown ggml type {}", name, what, ggml_type);
    }
    t.dtype = *dtype;
    const int64_t block = ggml_block_size(t.dtype);
    const int64_t row = t.ne.empty() ? 1 : t.ne[0];
    if (row % block != 0) {
      return data_loss("'{}': {} has rows of {} elements, not a multiple of the {} block size {}",
                       name, what, row, dtype_name(t.dtype), block);
    }
    Result<uint64_t> nbytes = ggml_type_bytes(t.dtype, numel);
    if (!nbytes.ok()) return nbytes.status().with_context(fmt::format("'{}': {}", name, what));
    t.nbytes = *nbytes;
    if (t.offset % alignment != 0) {
      return data_loss("'{}': {} has offset {}, not a multiple of the alignment {}", name, what,
                       t.offset, alignment);
    }
    f->tensors_.push_back(std::move(t));
  }
  for (const GgufTensor& t : f->tensors_) {
    if (!seen.insert(t.name).second) {
      return data_loss("'{}': tensor '{}' appears twice", name, t.name);
    }
  }

  // The data section starts at the next multiple of the alignment. It may be absent (past the
  // end of the file) only when no tensor has bytes.
  const uint64_t pos = c.pos();
  f->data_offset_ = (pos + alignment - 1) / alignment * alignment;
  const uint64_t avail = data.size() > f->data_offset_ ? data.size() - f->data_offset_ : 0;
  for (const GgufTensor& t : f->tensors_) {
    if (t.nbytes == 0) continue;
    if (t.offset > avail || t.nbytes > avail - t.offset) {
      return data_loss("'{}': tensor '{}' data extends past end of file", name, t.name);
    }
  }
  return f;
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

namespace {

Status absent(const GgufFile& f, std::string_view key) {
  return not_found("'{}': no metadata '{}'", f.path().string(), key);
}

Status wrong_type(const GgufFile& f, std::string_view key, const char* want) {
  return invalid_argument("'{}': metadata '{}' is not {}", f.path().string(), key, want);
}

}  // namespace

Result<std::string> GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return absent(*this, key);
  if (const auto* s = std::get_if<std::string>(&v->v)) return *s;
  return wrong_type(*this, key, "a string");
}

Result<int64_t> GgufFile::get_int(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return absent(*this, key);
  if (const auto* i = std::get_if<int64_t>(&v->v)) return *i;
  if (const auto* u = std::get_if<uint64_t>(&v->v)) {
    if (*u > uint64_t(std::numeric_limits<int64_t>::max())) {
      return make_error(StatusCode::kOutOfRange, "'{}': metadata '{}' = {} does not fit int64",
                        path_.string(), key, *u);
    }
    return int64_t(*u);
  }
  return wrong_type(*this, key, "an integer");
}

Result<double> GgufFile::get_float(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return absent(*this, key);
  if (const auto* d = std::get_if<double>(&v->v)) return *d;
  if (const auto* i = std::get_if<int64_t>(&v->v)) return double(*i);
  if (const auto* u = std::get_if<uint64_t>(&v->v)) return double(*u);
  return wrong_type(*this, key, "a number");
}

Result<bool> GgufFile::get_bool(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return absent(*this, key);
  if (const auto* b = std::get_if<bool>(&v->v)) return *b;
  return wrong_type(*this, key, "a bool");
}

Result<std::vector<std::string>> GgufFile::get_string_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return absent(*this, key);
  if (const auto* a = std::get_if<GgufValue::Array>(&v->v)) {
    if (const auto* s = std::get_if<std::vector<std::string>>(a)) return *s;
  }
  return wrong_type(*this, key, "an array of strings");
}

Result<std::vector<int64_t>> GgufFile::get_int_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return absent(*this, key);
  if (const auto* a = std::get_if<GgufValue::Array>(&v->v)) {
    if (const auto* i = std::get_if<std::vector<int64_t>>(a)) return *i;
    if (const auto* u = std::get_if<std::vector<uint64_t>>(a)) {
      std::vector<int64_t> out;
      out.reserve(u->size());
      for (uint64_t x : *u) {
        if (x > uint64_t(std::numeric_limits<int64_t>::max())) {
          return make_error(StatusCode::kOutOfRange,
                            "'{}': metadata '{}' holds {}, which does not fit int64",
                            path_.string(), key, x);
        }
        out.push_back(int64_t(x));
      }
      return out;
    }
  }
  return wrong_type(*this, key, "an array of integers");
}

Result<std::vector<double>> GgufFile::get_float_array(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return absent(*this, key);
  if (const auto* a = std::get_if<GgufValue::Array>(&v->v)) {
    if (const auto* d = std::get_if<std::vector<double>>(a)) return *d;
    if (const auto* i = std::get_if<std::vector<int64_t>>(a)) {
      return std::vector<double>(i->begin(), i->end());
    }
    if (const auto* u = std::get_if<std::vector<uint64_t>>(a)) {
      return std::vector<double>(u->begin(), u->end());
    }
  }
  return wrong_type(*this, key, "an array of numbers");
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  for (const GgufTensor& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

std::span<const uint8_t> GgufFile::tensor_bytes(const GgufTensor& t) const {
  if (t.nbytes == 0) return {};
  // parse() checked every tensor of this file; a GgufTensor from elsewhere is a caller's bug.
  PP_ASSERT(data_offset_ <= data_.size() && t.offset <= data_.size() - data_offset_ &&
            t.nbytes <= data_.size() - data_offset_ - t.offset);
  return data_.subspan(size_t(data_offset_ + t.offset), size_t(t.nbytes));
}

Status GgufFile::read_f32(const GgufTensor& t, std::span<float> out) const {
  int64_t numel = 1;
  for (int64_t d : t.ne) numel *= d;
  if (out.size() != uint64_t(numel)) {
    return invalid_argument("'{}': tensor '{}' has {} elements, the buffer {}", path_.string(),
                            t.name, numel, out.size());
  }
  const std::span<const uint8_t> bytes = tensor_bytes(t);
  return dequantize_row(t.dtype, bytes.data(), out.data(), numel)
      .with_context(fmt::format("'{}': tensor '{}'", path_.string(), t.name));
}

}  // namespace pp::model
