// MappedFile: open + fstat + mmap(PROT_READ, MAP_PRIVATE), with errors as Status.
#include "weights/mapped-file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace pp::model::detail {

MappedFile::MappedFile(MappedFile&& o) noexcept
    : base_(std::exchange(o.base_, nullptr)), size_(std::exchange(o.size_, 0)) {}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    unmap(base_, size_);
    base_ = std::exchange(o.base_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

MappedFile::~MappedFile() { unmap(base_, size_); }

void MappedFile::unmap(void* base, size_t size) {
  if (base != nullptr && size > 0) munmap(base, size);
}

void MappedFile::release(void** base, size_t* size) {
  *base = std::exchange(base_, nullptr);
  *size = std::exchange(size_, 0);
}

Result<MappedFile> MappedFile::open(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    const StatusCode code = err == ENOENT ? StatusCode::kNotFound : StatusCode::kInternal;
    return make_error(code, "cannot open '{}': {}", path.string(), std::strerror(err));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return internal_error("cannot stat '{}': {}", path.string(), std::strerror(err));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    return invalid_argument("'{}' is a directory, not a file", path.string());
  }
  MappedFile m;
  if (st.st_size > 0) {
    void* p = mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return internal_error("cannot map '{}': {}", path.string(), std::strerror(err));
    }
    m.base_ = p;
    m.size_ = size_t(st.st_size);
  }
  ::close(fd);  // the mapping stays valid
  return m;
}

}  // namespace pp::model::detail
