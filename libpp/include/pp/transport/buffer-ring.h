// A fixed ring of host float buffers for the activation transport: a stage takes the next buffer
// for a send (or a receive), and gives it back when the transport (or the kernels reading it)
// are done with it. Taking a buffer that is still in use waits, so a buffer is never reused while
// a send may still read it: the bug that only shows under load.
//
// acquire() is called from the one thread that drives the channel; release() from any thread
// (ZeroMQ's I/O thread calls it through a send's `done`).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <span>
#include <vector>

#include "pp/status.h"
#include "pp/transport/activation.h"

namespace pp::transport {

class BufferRing {
 public:
  // `n_buffers` buffers of `n_floats` floats each.
  BufferRing(size_t n_buffers, size_t n_floats);
  BufferRing(const BufferRing&) = delete;
  BufferRing& operator=(const BufferRing&) = delete;

  size_t size() const { return buffers_.size(); }
  size_t buffer_floats() const { return n_floats_; }

  // The next buffer in ring order, marked in use; waits up to `timeout` for it to be released.
  // kDeadlineExceeded when it is still in use then.
  Result<size_t> acquire(std::chrono::milliseconds timeout);
  std::span<float> buffer(size_t index) { return buffers_[index]; }
  // Marks buffer `index` free again. Thread-safe. Releasing a free buffer is a bug.
  void release(size_t index);
  // A SendDone that releases buffer `index`; the ring must outlive the transport's use of it.
  SendDone releaser(size_t index) {
    return [this, index] { release(index); };
  }
  // How many buffers are in use now.
  size_t in_use() const;

 private:
  size_t n_floats_;
  std::vector<std::vector<float>> buffers_;
  std::vector<bool> in_use_;
  size_t next_ = 0;
  mutable std::mutex mu_;
  std::condition_variable cv_;
};

}  // namespace pp::transport
