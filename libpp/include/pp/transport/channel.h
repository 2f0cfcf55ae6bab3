// The control channel between the coordinator and its stages, over ZeroMQ: plans, sampled
// tokens, registration, heartbeats and shutdown travel as wire.h frames, one frame a message.
//
//   ControlServer  the coordinator's side: a ROUTER socket bound to "ipc:///path" or
//                  "tcp://HOST:PORT" (port 0: a free port, endpoint() says which). It receives
//                  (peer, Message) and sends to a peer by its id.
//   ControlClient  a stage's side: a DEALER socket connected to the coordinator.
//
// send() never blocks: each peer's queue holds `send_hwm` messages and a full queue is
// kResourceExhausted; sending to a peer that is gone is kUnavailable (ZMQ_ROUTER_MANDATORY, plus
// the disconnects the socket monitor reports). receive() waits at most its timeout and returns
// empty on timeout or when woken. A malformed frame is logged (spdlog warn) and skipped: receive
// goes on to the next good message.
//
// Losing a peer: ZMTP heartbeats (ChannelOptions::heartbeat_interval / heartbeat_timeout) drop a
// silent connection, a dead process's connection drops at once, and the server reports each drop
// as an Incoming with event kDisconnected for the peer that last spoke on that connection. The
// server also keeps, per peer, when it last heard from it (last_seen), for application-level
// heartbeats. Together these let the coordinator notice a lost stage within about a second.
//
// Threads: a ZeroMQ socket is not thread-safe, so each channel object is used from one thread
// only (the one that created it, or another after a hand-over with a happens-before edge). The
// one exception is Waker: another thread may call wake() at any time to make a blocked (or the
// next) receive() return empty at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "pp/status.h"
#include "pp/transport/messages.h"
#include "pp/transport/wire.h"  // message_name(), for callers that log what they got

namespace pp::transport {

// Socket settings shared by the control and activation channels.
struct ChannelOptions {
  int send_hwm = 100000;     // messages queued per peer before send() is kResourceExhausted
  int receive_hwm = 100000;  // messages queued per peer on the receiving side
  std::chrono::milliseconds linger{100};  // how long close waits to flush unsent messages
  std::chrono::milliseconds heartbeat_interval{200};  // ZMTP PING period
  std::chrono::milliseconds heartbeat_timeout{900};   // silence after which a link is dropped
  int64_t max_message_bytes = int64_t(1)
                              << 30;  // a bigger incoming frame drops the link (-1: none)
};

// Wakes a channel's receive() from any thread. Cheap to copy; stays safe to call after the
// channel is gone (it then does nothing useful).
class Waker {
 public:
  Waker() = default;
  void wake() const;

  struct Fd;  // private to the implementation
  explicit Waker(std::shared_ptr<Fd> fd) : fd_(std::move(fd)) {}

 private:
  std::shared_ptr<Fd> fd_;
};

// A peer's ZeroMQ routing id: opaque bytes, stable for the life of the peer's connection.
using PeerId = std::string;
// Printable form of a peer id (hex), for logs and errors.
std::string peer_label(const PeerId& peer);

enum class PeerEvent : uint8_t {
  kMessage,       // `message` holds what the peer sent
  kDisconnected,  // the peer's connection dropped (process gone or heartbeat timed out)
};

struct Incoming {
  PeerId peer;
  PeerEvent event = PeerEvent::kMessage;
  Message message;  // meaningful only when event == kMessage
};

class ControlServer {
 public:
  // Binds a ROUTER socket. "tcp://HOST:0" picks a free port.
  static Result<ControlServer> bind(const std::string& endpoint,
                                    const ChannelOptions& options = {});

  ControlServer(ControlServer&&) noexcept;
  ControlServer& operator=(ControlServer&&) noexcept;
  ~ControlServer();

  // The endpoint actually bound, e.g. "tcp://127.0.0.1:41234": what stages connect to.
  const std::string& endpoint() const;

  // Queues `m` for `peer`. kUnavailable: the peer is not (or no longer) connected;
  // kResourceExhausted: its queue is full. Never blocks.
  Status send(const PeerId& peer, const Message& m);

  // The next message or disconnect, waiting at most `timeout` (0: only what is already there).
  // Empty on timeout or wake. An error only when the socket itself fails.
  Result<std::optional<Incoming>> receive(std::chrono::milliseconds timeout);

  // When `peer` last sent a good message (steady clock); empty for a peer never heard from.
  std::optional<std::chrono::steady_clock::time_point> last_seen(const PeerId& peer) const;
  // Peers heard from before, not reported disconnected, and silent for longer than `silence`.
  std::vector<PeerId> silent_peers(std::chrono::milliseconds silence) const;

  Waker waker() const;

 private:
  struct Impl;
  explicit ControlServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class ControlClient {
 public:
  // Connects a DEALER socket. Returns at once: the connection completes in the background and
  // messages sent before it does are queued.
  static Result<ControlClient> connect(const std::string& endpoint,
                                       const ChannelOptions& options = {});

  ControlClient(ControlClient&&) noexcept;
  ControlClient& operator=(ControlClient&&) noexcept;
  ~ControlClient();

  const std::string& endpoint() const;

  // Queues `m` for the server. kResourceExhausted when the queue is full. Never blocks.
  Status send(const Message& m);

  // The next message from the server, waiting at most `timeout`; empty on timeout or wake.
  Result<std::optional<Message>> receive(std::chrono::milliseconds timeout);

  // Waits until the connection is up (messages that arrive meanwhile are kept for receive()).
  // kDeadlineExceeded when it is not up within `timeout`.
  Status wait_connected(std::chrono::milliseconds timeout);
  // Whether the connection is up, as of the last receive() or wait_connected().
  bool connected() const;
  // When the connection last dropped; empty while it never has or is up again.
  std::optional<std::chrono::steady_clock::time_point> disconnected_since() const;
  // When the server last sent a good message; empty before the first.
  std::optional<std::chrono::steady_clock::time_point> last_received() const;

  Waker waker() const;

 private:
  struct Impl;
  explicit ControlClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace pp::transport
