// ZeroMQ helpers shared by the control and activation channels: errors as pp::Status, the socket
// options every channel sets, "tcp://HOST:0" endpoints, the socket monitor that reports
// connects and disconnects, and the eventfd that lets another thread wake a poller.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <zmq.hpp>

#include "pp/status.h"
#include "pp/transport/channel.h"

namespace pp::transport::detail {

// kUnavailable for an unreachable peer or an address in use, kResourceExhausted for a full
// queue (EAGAIN), kInvalidArgument for a bad endpoint, kCancelled for a terminated context,
// kInternal otherwise. Message: "<doing>: <zmq error>".
Status zmq_status(int err, std::string_view doing);

// Options every channel socket gets: high-water marks, linger, ZMTP heartbeats, the maximum
// message size and, on tcp://, TCP keepalive.
void set_common_options(zmq::socket_t& s, const ChannelOptions& o, const std::string& endpoint);

// "tcp://HOST:0" -> "tcp://HOST:*" (ZeroMQ's spelling of "any free port"); others unchanged.
std::string bind_spelling(const std::string& endpoint);

// Binds `s` and returns the endpoint actually bound (the port filled in).
Result<std::string> bind_socket(zmq::socket_t& s, const std::string& endpoint);
Status connect_socket(zmq::socket_t& s, const std::string& endpoint);

struct MonitorEvent {
  uint16_t event = 0;  // ZMQ_EVENT_*
  int64_t value = 0;   // the file descriptor for CONNECTED, ACCEPTED and DISCONNECTED
};

// A PAIR socket receiving `target`'s monitor events (connected, accepted, disconnected).
// Created before `target` binds or connects, so that no event is missed.
class Monitor {
 public:
  Monitor(zmq::context_t& ctx, zmq::socket_t& target);
  zmq::socket_t& socket() { return pair_; }
  // The next event, without waiting; empty when none is queued.
  std::optional<MonitorEvent> read();

 private:
  zmq::socket_t pair_;
};

struct PollResult {
  bool socket = false;   // the channel's socket has a message
  bool monitor = false;  // the monitor has an event
  bool woken = false;    // a Waker fired (the eventfd is drained)
};
// Waits up to `timeout` (0: just looks) for any of the three; EINTR counts as nothing ready.
Result<PollResult> poll_channel(zmq::socket_t& s, Monitor* monitor, Waker::Fd& wake,
                                std::chrono::milliseconds timeout);

}  // namespace pp::transport::detail

namespace pp::transport {

// The file descriptor behind a Waker: an eventfd, closed when the last holder lets go.
struct Waker::Fd {
  Fd();
  ~Fd();
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  void drain();
  int fd = -1;
};

}  // namespace pp::transport
