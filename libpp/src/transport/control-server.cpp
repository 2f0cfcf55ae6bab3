// ControlServer: the coordinator's ROUTER socket (see channel.h).
//
// Peers are known by their routing id. The socket monitor reports dropped connections by file
// descriptor, so the server remembers which descriptor each peer's last message came from
// (ZMQ_SRCFD) and turns a drop into a kDisconnected event for that peer. A dropped peer is
// "gone": sends to it fail with kUnavailable at once, even before ZeroMQ has torn down its pipe,
// until it speaks again over a new connection.
#include <deque>
#include <unordered_map>

#include <spdlog/spdlog.h>

#include "pp/transport/channel.h"
#include "pp/transport/wire.h"
#include "zmq-util.h"

namespace pp::transport {

using Clock = std::chrono::steady_clock;

struct ControlServer::Impl {
  // Declaration order is destruction order reversed: sockets close before the context ends.
  zmq::context_t ctx{1};
  zmq::socket_t sock{ctx, zmq::socket_type::router};
  std::optional<detail::Monitor> monitor;
  std::shared_ptr<Waker::Fd> wake = std::make_shared<Waker::Fd>();
  std::string endpoint;
  std::vector<uint8_t> send_buf;  // reused by every send

  struct Peer {
    Clock::time_point last_seen;
    int fd = -1;
  };
  std::unordered_map<PeerId, Peer> peers;   // heard from, not dropped
  std::unordered_map<int, PeerId> fd_peer;  // connection -> the peer last heard on it
  std::unordered_map<PeerId, int> gone;     // dropped peer -> the connection that dropped
  std::deque<Incoming> pending;             // disconnects not yet returned

  // Reads one message if one is queued. Returns true and fills `out` for a good message; false
  // with `out` empty when none is queued; a malformed frame is logged and reported as true
  // with `out` empty, so the caller reads on.
  bool read_message(std::optional<Incoming>& out);
  void note_message(const PeerId& peer, int fd);
  void read_monitor();
};

void ControlServer::Impl::note_message(const PeerId& peer, int fd) {
  if (auto g = gone.find(peer); g != gone.end()) {
    if (fd < 0 || g->second == fd) return;  // a late message from the dropped connection
    gone.erase(g);
  }
  auto& p = peers[peer];
  if (p.fd != fd) {
    if (auto it = fd_peer.find(p.fd); it != fd_peer.end() && it->second == peer) {
      fd_peer.erase(it);
    }
    p.fd = fd;
  }
  if (fd >= 0) fd_peer[fd] = peer;
  p.last_seen = Clock::now();
}

bool ControlServer::Impl::read_message(std::optional<Incoming>& out) {
  out.reset();
  zmq::message_t id, body;
  if (!sock.recv(id, zmq::recv_flags::dontwait)) return false;
  if (!id.more()) {
    spdlog::warn("control: skipping a message without a body from peer '{}'",
                 peer_label(id.to_string()));
    return true;
  }
  (void)sock.recv(body, zmq::recv_flags::none);
  PeerId peer = id.to_string();
  if (body.more()) {
    size_t n_frames = 2;
    for (bool more = true; more; ++n_frames) {
      zmq::message_t extra;
      (void)sock.recv(extra, zmq::recv_flags::none);
      more = extra.more();
    }
    spdlog::warn("control: skipping a message of {} frames from peer '{}' (expected 2)", n_frames,
                 peer_label(peer));
    return true;
  }
  auto m = decode({static_cast<const uint8_t*>(body.data()), body.size()});
  if (!m.ok()) {
    spdlog::warn("control: skipping a frame from peer '{}': {}", peer_label(peer),
                 m.status().message());
    return true;
  }
  note_message(peer, body.get(ZMQ_SRCFD));
  out = Incoming{std::move(peer), PeerEvent::kMessage, std::move(*m)};
  return true;
}

void ControlServer::Impl::read_monitor() {
  while (auto ev = monitor->read()) {
    const int fd = static_cast<int>(ev->value);
    // ZMQ_EVENT_ACCEPTED needs no bookkeeping: an old connection's DISCONNECTED comes before its
    // number can be accepted again (the events are ordered), and messages are read before the
    // monitor, so erasing the mapping here would forget a new peer's first message.
    if (ev->event == ZMQ_EVENT_DISCONNECTED) {
      auto it = fd_peer.find(fd);
      if (it == fd_peer.end()) continue;  // a peer that never sent a message
      PeerId peer = std::move(it->second);
      fd_peer.erase(it);
      peers.erase(peer);
      gone[peer] = fd;
      pending.push_back(Incoming{std::move(peer), PeerEvent::kDisconnected, {}});
    }
  }
}

ControlServer::ControlServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ControlServer::ControlServer(ControlServer&&) noexcept = default;
ControlServer& ControlServer::operator=(ControlServer&&) noexcept = default;
ControlServer::~ControlServer() = default;

Result<ControlServer> ControlServer::bind(const std::string& endpoint,
                                          const ChannelOptions& options) {
  auto impl = std::make_unique<Impl>();
  try {
    detail::set_common_options(impl->sock, options, endpoint);
    impl->sock.set(zmq::sockopt::router_mandatory, 1);
    impl->monitor.emplace(impl->ctx, impl->sock);
  } catch (const zmq::error_t& e) {
    return detail::zmq_status(e.num(), fmt::format("cannot set up control socket '{}'", endpoint));
  }
  PP_ASSIGN_OR_RETURN(impl->endpoint, detail::bind_socket(impl->sock, endpoint));
  return ControlServer(std::move(impl));
}

const std::string& ControlServer::endpoint() const { return impl_->endpoint; }

Status ControlServer::send(const PeerId& peer, const Message& m) {
  if (impl_->gone.contains(peer)) {
    return make_error(StatusCode::kUnavailable, "cannot send '{}' to peer '{}': disconnected",
                      message_name(m), peer_label(peer));
  }
  encode(m, impl_->send_buf);
  try {
    zmq::message_t id(peer.data(), peer.size());
    zmq::message_t body(impl_->send_buf.data(), impl_->send_buf.size());
    if (!impl_->sock.send(id, zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
      return make_error(StatusCode::kResourceExhausted,
                        "cannot send '{}' to peer '{}': its queue is full", message_name(m),
                        peer_label(peer));
    }
    // The routing frame was accepted, so the body is too (a multipart message is atomic).
    (void)impl_->sock.send(body, zmq::send_flags::dontwait);
  } catch (const zmq::error_t& e) {
    return detail::zmq_status(
        e.num(), fmt::format("cannot send '{}' to peer '{}'", message_name(m), peer_label(peer)));
  }
  return ok_status();
}

Result<std::optional<Incoming>> ControlServer::receive(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  try {
    for (;;) {
      if (!impl_->pending.empty()) {
        Incoming in = std::move(impl_->pending.front());
        impl_->pending.pop_front();
        return std::optional<Incoming>(std::move(in));
      }
      const auto left = std::max(Clock::duration::zero(), deadline - Clock::now());
      PP_ASSIGN_OR_RETURN(auto ready,
                          detail::poll_channel(impl_->sock, &*impl_->monitor, *impl_->wake,
                                               std::chrono::ceil<std::chrono::milliseconds>(left)));
      if (ready.woken) return std::optional<Incoming>();
      // Messages first: a peer's last words arrive before the news that it dropped.
      if (ready.socket) {
        std::optional<Incoming> in;
        while (impl_->read_message(in)) {
          if (in) return in;
        }
      }
      if (ready.monitor) impl_->read_monitor();
      if (impl_->pending.empty() && Clock::now() >= deadline) return std::optional<Incoming>();
    }
  } catch (const zmq::error_t& e) {
    return detail::zmq_status(e.num(), "cannot receive on control socket");
  }
}

std::optional<Clock::time_point> ControlServer::last_seen(const PeerId& peer) const {
  auto it = impl_->peers.find(peer);
  if (it == impl_->peers.end()) return std::nullopt;
  return it->second.last_seen;
}

std::vector<PeerId> ControlServer::silent_peers(std::chrono::milliseconds silence) const {
  std::vector<PeerId> out;
  const auto now = Clock::now();
  for (const auto& [peer, p] : impl_->peers) {
    if (now - p.last_seen > silence) out.push_back(peer);
  }
  return out;
}

Waker ControlServer::waker() const { return Waker(impl_->wake); }

}  // namespace pp::transport
