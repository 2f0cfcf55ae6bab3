// write_safetensors: builds the JSON header from the entries' shapes, then streams each tensor
// through a small conversion buffer into the file, so memory stays bounded whatever the model.
#include "pp/model/safetensors-writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "pp/kernels/float-convert.h"

namespace pp::model {
namespace {

using nlohmann::json;

constexpr size_t kChunkElems = 1 << 16;  // elements converted per write

const char* stored_name(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kF8E4M3:
      return "F8_E4M3";
    default:
      return nullptr;
  }
}

int64_t stored_size(DType t) {
  switch (t) {
    case DType::kF32:
      return 4;
    case DType::kF8E4M3:
      return 1;
    default:
      return 2;
  }
}

Status io_error(const char* op, const std::filesystem::path& path, int err) {
  const StatusCode code = (err == ENOSPC || err == EDQUOT || err == EFBIG)
                              ? StatusCode::kResourceExhausted
                              : StatusCode::kInternal;
  return make_error(code, "cannot {} '{}': {}", op, path.string(), std::strerror(err));
}

// Writes all of `data`, retrying short writes and EINTR.
Status write_all(int fd, const void* data, size_t n, const std::filesystem::path& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return io_error("write", path, errno);
    }
    if (w == 0) return io_error("write", path, ENOSPC);
    p += w;
    n -= size_t(w);
  }
  return ok_status();
}

Status write_tensor(int fd, const SafetensorsEntry& e, const std::filesystem::path& path) {
  if (e.dtype == DType::kF32) return write_all(fd, e.data.data(), e.data.size_bytes(), path);
  if (e.dtype == DType::kF8E4M3) return write_all(fd, e.raw.data(), e.raw.size(), path);
  std::vector<uint16_t> buf(std::min(kChunkElems, e.data.size()));
  for (size_t i = 0; i < e.data.size(); i += kChunkElems) {
    const size_t n = std::min(kChunkElems, e.data.size() - i);
    for (size_t k = 0; k < n; ++k) {
      buf[k] = e.dtype == DType::kF16 ? kernels::f32_to_f16(e.data[i + k])
                                      : kernels::f32_to_bf16(e.data[i + k]);
    }
    PP_RETURN_IF_ERROR(write_all(fd, buf.data(), n * sizeof(uint16_t), path));
  }
  return ok_status();
}

// Checks the entries and builds the header; `order` receives the entries in file order.
Result<std::string> build_header(std::span<const SafetensorsEntry> tensors,
                                 const std::map<std::string, std::string>& metadata,
                                 const std::filesystem::path& path,
                                 std::vector<const SafetensorsEntry*>* order) {
  for (const SafetensorsEntry& e : tensors) order->push_back(&e);
  // Like the reference implementation: wider elements first, then by name, so that every
  // tensor's data is aligned to its element size (the data section starts 8-byte aligned).
  std::sort(order->begin(), order->end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
    const int64_t sa = stored_size(a->dtype), sb = stored_size(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });
  std::set<std::string_view> names;
  for (const SafetensorsEntry* e : *order) {
    if (!names.insert(e->name).second) {
      return invalid_argument("cannot write '{}': tensor '{}' given twice", path.string(), e->name);
    }
  }
  json header = json::object();
  uint64_t offset = 0;
  for (size_t i = 0; i < order->size(); ++i) {
    const SafetensorsEntry& e = *(*order)[i];
    if (e.name.empty() || e.name == "__metadata__") {
      return invalid_argument("cannot write '{}': bad tensor name '{}'", path.string(), e.name);
    }
    const char* dtype = stored_name(e.dtype);
    if (dtype == nullptr) {
      return invalid_argument(
          "cannot write '{}': tensor '{}' has dtype {} (F32, F16, BF16 or F8_E4M3)", path.string(),
          e.name, dtype_name(e.dtype));
    }
    int64_t numel = 1;
    for (int64_t d : e.shape) {
      if (d < 0 || __builtin_mul_overflow(numel, d, &numel)) {
        return invalid_argument("cannot write '{}': tensor '{}' has a bad shape", path.string(),
                                e.name);
      }
    }
    const bool raw = e.dtype == DType::kF8E4M3;
    const size_t given = raw ? e.raw.size() : e.data.size();
    if (uint64_t(numel) != given || (raw ? !e.data.empty() : !e.raw.empty())) {
      return invalid_argument("cannot write '{}': tensor '{}' has {} elements but {} {}",
                              path.string(), e.name, numel, given, raw ? "bytes" : "values");
    }
    const uint64_t nbytes = uint64_t(numel) * uint64_t(stored_size(e.dtype));
    header[e.name] = {
        {"dtype", dtype}, {"shape", e.shape}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string s;
  try {
    s = header.dump(-1, ' ', false, json::error_handler_t::strict);
  } catch (const json::exception&) {
    return invalid_argument("cannot write '{}': a tensor name or metadata is not valid UTF-8",
                            path.string());
  }
  s.append((8 - s.size() % 8) % 8, ' ');  // the data section starts 8-byte aligned
  return s;
}

}  // namespace

Status write_safetensors(const std::filesystem::path& path,
                         std::span<const SafetensorsEntry> tensors,
                         const std::map<std::string, std::string>& metadata) {
  std::vector<const SafetensorsEntry*> order;
  PP_ASSIGN_OR_RETURN(std::string header, build_header(tensors, metadata, path, &order));

  std::filesystem::path tmp = path;
  tmp += fmt::format(".tmp.{}", ::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return io_error("create", tmp, errno);
  auto fail = [&](Status s) {
    ::close(fd);
    ::unlink(tmp.c_str());
    return s;
  };
  const uint64_t header_len = header.size();
  if (Status s = write_all(fd, &header_len, sizeof header_len, tmp); !s.ok()) return fail(s);
  if (Status s = write_all(fd, header.data(), header.size(), tmp); !s.ok()) return fail(s);
  for (const SafetensorsEntry* e : order) {
    if (Status s = write_tensor(fd, *e, tmp); !s.ok()) return fail(s);
  }
  if (::fsync(fd) != 0) return fail(io_error("sync", tmp, errno));
  if (::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return io_error("close", tmp, err);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return io_error("rename to", path, err);
  }
  // Make the rename itself durable; a failure here leaves a complete file, so it is not an error.
  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : ".";
  if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return ok_status();
}

}  // namespace pp::model
