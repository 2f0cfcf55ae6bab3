// BufferRing: host buffers handed out in ring order and given back from any thread.
#include "pp/transport/buffer-ring.h"

#include <algorithm>

#include "pp/assert.h"

namespace pp::transport {

BufferRing::BufferRing(size_t n_buffers, size_t n_floats)
    : n_floats_(n_floats),
      buffers_(n_buffers, std::vector<float>(n_floats)),
      in_use_(n_buffers, false) {
  PP_ASSERT(n_buffers > 0);
}

Result<size_t> BufferRing::acquire(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  const size_t i = next_;
  if (!cv_.wait_for(lock, timeout, [&] { return !in_use_[i]; })) {
    return make_error(StatusCode::kDeadlineExceeded, "buffer {} of {} is still in use after {} ms",
                      i, buffers_.size(), timeout.count());
  }
  in_use_[i] = true;
  next_ = (next_ + 1) % buffers_.size();
  return i;
}

void BufferRing::release(size_t index) {
  {
    std::lock_guard lock(mu_);
    PP_ASSERT_MSG(index < in_use_.size() && in_use_[index], "releasing a buffer that is free");
    in_use_[index] = false;
  }
  cv_.notify_all();
}

size_t BufferRing::in_use() const {
  std::lock_guard lock(mu_);
  return static_cast<size_t>(std::count(in_use_.begin(), in_use_.end(), true));
}

}  // namespace pp::transport
