// The data plane between neighbouring stages: one micro-batch's hidden states, [n_tokens, n_embd]
// f32, with a small header {seq, group, n_tokens, n_embd}.
//
// ActivationChannel is the interface a stage worker uses: send() to the next stage, receive()
// from the previous one. Every stage processes plans in issue order, so a receive names the seq
// it expects: a later one is an error, never silently reordered; an earlier one is stale. Today's
// implementation is HostActivationChannel (CPU backend, ZeroMQ); the NCCL one (GPU backend) slots
// in behind the same interface.
//
// Buffer lifetime. send() with a `done` callback is zero-copy: the transport reads the caller's
// buffer until it calls done() (exactly once, from any thread, also when the send fails), so the
// caller keeps the buffer out of use until then (BufferRing does the bookkeeping). Without
// `done`, send() copies the data once and the buffer is free when it returns. receive() writes
// into a buffer the caller chose (typically the next one of a BufferRing of receive buffers).
//
// Threads: like the control channel, each object is used from one thread; only Waker::wake()
// and the `done` callbacks cross threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "pp/status.h"
#include "pp/transport/channel.h"

namespace pp::transport {

inline constexpr uint32_t kActivationMagic = 0x31415050;  // "PPA1" little-endian
inline constexpr uint16_t kActivationVersion = 1;

struct ActivationHeader {
  uint64_t seq = 0;      // the plan's issue number
  int32_t group = 0;     // micro-batch group 0 .. M-1
  int32_t n_tokens = 0;  // rows
  int32_t n_embd = 0;    // floats per row (hidden size, or more when the residual travels too)
  size_t n_floats() const { return size_t(n_tokens) * size_t(n_embd); }

  friend bool operator==(const ActivationHeader&, const ActivationHeader&) = default;
};

// Called once the transport no longer reads a sent buffer. May run on a transport thread.
using SendDone = std::function<void()>;

class ActivationChannel {
 public:
  virtual ~ActivationChannel() = default;

  // Sends micro-batch `header.seq`'s activations, data = [n_tokens, n_embd] f32, to the next
  // stage. Never blocks on the receiver: kResourceExhausted when the queue is full.
  // kInvalidArgument when data.size() != n_tokens * n_embd or a dimension is not positive;
  // kFailedPrecondition on a channel without a next stage.
  virtual Status send(const ActivationHeader& header, std::span<const float> data,
                      SendDone done = {}) = 0;

  // Receives the activations of micro-batch `expected_seq` into `out` (its first n_tokens*n_embd
  // floats), waiting at most `timeout`; empty on timeout or wake. kDataLoss when a later seq
  // arrives or the frame is malformed (the message is consumed either way); kOutOfRange when
  // `out` is too small; kFailedPrecondition on a channel without a previous stage. An earlier
  // seq is stale (a plan the coordinator forgot when it recovered from a lost stage): it is
  // dropped and the receive waits on.
  virtual Result<std::optional<ActivationHeader>> receive(uint64_t expected_seq,
                                                          std::span<float> out,
                                                          std::chrono::milliseconds timeout) = 0;
};

// The sending half of the CPU transport: a PUSH socket connected to the next stage's receiver.
class ActivationSender {
 public:
  static Result<ActivationSender> connect(const std::string& endpoint,
                                          const ChannelOptions& options = {});
  ActivationSender(ActivationSender&&) noexcept;
  ActivationSender& operator=(ActivationSender&&) noexcept;
  ~ActivationSender();

  const std::string& endpoint() const;
  // As ActivationChannel::send.
  Status send(const ActivationHeader& header, std::span<const float> data, SendDone done = {});

 private:
  struct Impl;
  explicit ActivationSender(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The receiving half of the CPU transport: a PULL socket bound where the previous stage sends.
class ActivationReceiver {
 public:
  // "tcp://HOST:0" picks a free port; endpoint() says which.
  static Result<ActivationReceiver> bind(const std::string& endpoint,
                                         const ChannelOptions& options = {});
  ActivationReceiver(ActivationReceiver&&) noexcept;
  ActivationReceiver& operator=(ActivationReceiver&&) noexcept;
  ~ActivationReceiver();

  // The endpoint actually bound: what goes into Hello::data_endpoint.
  const std::string& endpoint() const;
  // As ActivationChannel::receive.
  Result<std::optional<ActivationHeader>> receive(uint64_t expected_seq, std::span<float> out,
                                                  std::chrono::milliseconds timeout);
  Waker waker() const;

 private:
  struct Impl;
  explicit ActivationReceiver(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A stage's CPU data plane: a receiver unless it is the first stage, a sender unless it is the
// last.
class HostActivationChannel final : public ActivationChannel {
 public:
  HostActivationChannel(std::optional<ActivationReceiver> from_previous,
                        std::optional<ActivationSender> to_next)
      : from_previous_(std::move(from_previous)), to_next_(std::move(to_next)) {}

  Status send(const ActivationHeader& header, std::span<const float> data,
              SendDone done = {}) override;
  Result<std::optional<ActivationHeader>> receive(uint64_t expected_seq, std::span<float> out,
                                                  std::chrono::milliseconds timeout) override;

  ActivationReceiver* receiver() { return from_previous_ ? &*from_previous_ : nullptr; }
  ActivationSender* sender() { return to_next_ ? &*to_next_ : nullptr; }

 private:
  std::optional<ActivationReceiver> from_previous_;
  std::optional<ActivationSender> to_next_;
};

}  // namespace pp::transport
