// MappedFile: a whole file mapped read-only into memory (mmap), unmapped when the object dies.
// Weight readers parse the mapping in place; every offset they take from the file is checked
// against size() first. An empty file maps to an empty span.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>

#include "pp/status.h"

namespace pp::model::detail {

class MappedFile {
 public:
  MappedFile() = default;
  MappedFile(MappedFile&& o) noexcept;
  MappedFile& operator=(MappedFile&& o) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  // kNotFound when the file does not exist, kInvalidArgument for a directory, kInternal for
  // other failures of open/fstat/mmap; messages name the path.
  static Result<MappedFile> open(const std::filesystem::path& path);

  std::span<const uint8_t> bytes() const { return {static_cast<const uint8_t*>(base_), size_}; }
  size_t size() const { return size_; }
  // Gives up ownership of the mapping: the caller unmaps it with unmap(base, size).
  void release(void** base, size_t* size);
  static void unmap(void* base, size_t size);

 private:
  void* base_ = nullptr;
  size_t size_ = 0;
};

}  // namespace pp::model::detail
