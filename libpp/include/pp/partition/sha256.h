// SHA-256 (FIPS 180-4), small and dependency-free: the checksums of a partition's files and of
// the model it was made from. Incremental: update() any number of times, then finish() once.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "pp/status.h"

namespace pp::partition {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  void update(std::span<const uint8_t> data) { update(data.data(), data.size()); }
  // The 32-byte digest. The object must not be updated afterwards.
  std::array<uint8_t, 32> finish();
  // The digest as 64 lowercase hex digits.
  std::string finish_hex();

 private:
  void block(const uint8_t* p);
  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buf_;
  size_t buf_len_ = 0;
  uint64_t total_ = 0;  // bytes hashed so far
};

std::string sha256_hex(std::span<const uint8_t> data);
// Hex digest of a file's contents, read in chunks.
Result<std::string> sha256_file(const std::filesystem::path& path);
// Hex digest of the concatenated contents of `paths`, in the order given.
Result<std::string> sha256_files(const std::vector<std::filesystem::path>& paths);

}  // namespace pp::partition
