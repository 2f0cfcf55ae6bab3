// ZeroMQ helpers shared by the channels (see zmq-util.h).
#include "zmq-util.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "pp/assert.h"

namespace pp::transport::detail {

Status zmq_status(int err, std::string_view doing) {
  StatusCode code = StatusCode::kInternal;
  switch (err) {
    case EHOSTUNREACH:
    case EADDRINUSE:
    case EADDRNOTAVAIL:
    case ENOTCONN:
    case ECONNREFUSED:
      code = StatusCode::kUnavailable;
      break;
    case EAGAIN:
      code = StatusCode::kResourceExhausted;
      break;
    case EINVAL:
    case EPROTONOSUPPORT:
    case ENODEV:
    case ENOENT:
    case ENAMETOOLONG:
      code = StatusCode::kInvalidArgument;
      break;
    case ETERM:
      code = StatusCode::kCancelled;
      break;
    default:
      break;
  }
  return Status(code, fmt::format("{}: {}", doing, zmq_strerror(err)));
}

void set_common_options(zmq::socket_t& s, const ChannelOptions& o, const std::string& endpoint) {
  s.set(zmq::sockopt::sndhwm, o.send_hwm);
  s.set(zmq::sockopt::rcvhwm, o.receive_hwm);
  s.set(zmq::sockopt::linger, static_cast<int>(o.linger.count()));
  s.set(zmq::sockopt::maxmsgsize, o.max_message_bytes);
  s.set(zmq::sockopt::heartbeat_ivl, static_cast<int>(o.heartbeat_interval.count()));
  s.set(zmq::sockopt::heartbeat_timeout, static_cast<int>(o.heartbeat_timeout.count()));
  // TTL is sent to the other side: drop us if you hear nothing for this long. ZeroMQ keeps it in
  // deciseconds, so round up to at least 100 ms.
  s.set(zmq::sockopt::heartbeat_ttl,
        static_cast<int>(std::max<int64_t>(100, o.heartbeat_timeout.count())));
  if (endpoint.starts_with("tcp://")) {
    // The OS-level backstop under the ZMTP heartbeats.
    s.set(zmq::sockopt::tcp_keepalive, 1);
    s.set(zmq::sockopt::tcp_keepalive_idle, 10);
    s.set(zmq::sockopt::tcp_keepalive_intvl, 2);
    s.set(zmq::sockopt::tcp_keepalive_cnt, 3);
  }
}

std::string bind_spelling(const std::string& endpoint) {
  if (endpoint.starts_with("tcp://") && endpoint.ends_with(":0")) {
    return endpoint.substr(0, endpoint.size() - 1) + "*";
  }
  return endpoint;
}

Result<std::string> bind_socket(zmq::socket_t& s, const std::string& endpoint) {
  try {
    s.bind(bind_spelling(endpoint));
    return s.get(zmq::sockopt::last_endpoint);
  } catch (const zmq::error_t& e) {
    return zmq_status(e.num(), fmt::format("cannot bind '{}'", endpoint));
  }
}

Status connect_socket(zmq::socket_t& s, const std::string& endpoint) {
  try {
    s.connect(endpoint);
    return ok_status();
  } catch (const zmq::error_t& e) {
    return zmq_status(e.num(), fmt::format("cannot connect to '{}'", endpoint));
  }
}

Monitor::Monitor(zmq::context_t& ctx, zmq::socket_t& target) : pair_(ctx, zmq::socket_type::pair) {
  static std::atomic<uint64_t> counter{0};
  const std::string addr = fmt::format("inproc://pp-monitor-{}", counter.fetch_add(1));
  const int rc =
      zmq_socket_monitor(target.handle(), addr.c_str(),
                         ZMQ_EVENT_CONNECTED | ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED);
  // Only fails for a bad address or unsupported transport, both impossible here.
  PP_ASSERT_MSG(rc == 0, "zmq_socket_monitor failed");
  pair_.set(zmq::sockopt::linger, 0);
  pair_.connect(addr);
}

std::optional<MonitorEvent> Monitor::read() {
  zmq::message_t head, addr;
  if (!pair_.recv(head, zmq::recv_flags::dontwait)) return std::nullopt;
  // The endpoint frame follows; a multipart message arrives whole, so this does not wait.
  if (head.more()) (void)pair_.recv(addr, zmq::recv_flags::none);
  MonitorEvent ev;
  if (head.size() >= 6) {
    uint32_t value = 0;
    std::memcpy(&ev.event, head.data(), 2);
    std::memcpy(&value, static_cast<const uint8_t*>(head.data()) + 2, 4);
    ev.value = value;
  }
  return ev;
}

Result<PollResult> poll_channel(zmq::socket_t& s, Monitor* monitor, Waker::Fd& wake,
                                std::chrono::milliseconds timeout) {
  zmq::pollitem_t items[3] = {
      {s.handle(), 0, ZMQ_POLLIN, 0},
      {nullptr, wake.fd, ZMQ_POLLIN, 0},
      {monitor ? monitor->socket().handle() : nullptr, 0, ZMQ_POLLIN, 0},
  };
  const int n_items = monitor ? 3 : 2;
  const int rc = zmq_poll(items, n_items, static_cast<long>(timeout.count()));
  PollResult r;
  if (rc < 0) {
    if (zmq_errno() == EINTR) return r;
    return zmq_status(zmq_errno(), "cannot poll channel");
  }
  r.socket = items[0].revents & ZMQ_POLLIN;
  if (items[1].revents & ZMQ_POLLIN) {
    wake.drain();
    r.woken = true;
  }
  r.monitor = monitor && (items[2].revents & ZMQ_POLLIN);
  return r;
}

}  // namespace pp::transport::detail

namespace pp::transport {

Waker::Fd::Fd() : fd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {
  PP_ASSERT_MSG(fd >= 0, "eventfd failed");
}

Waker::Fd::~Fd() { ::close(fd); }

void Waker::Fd::drain() {
  uint64_t v = 0;
  while (::read(fd, &v, sizeof v) == static_cast<ssize_t>(sizeof v)) {
  }
}

void Waker::wake() const {
  if (!fd_) return;
  const uint64_t one = 1;
  // Cannot fail short of the counter overflowing 2^64-1 wakes.
  [[maybe_unused]] ssize_t n = ::write(fd_->fd, &one, sizeof one);
}

std::string peer_label(const PeerId& peer) {
  std::string out;
  for (unsigned char c : peer) out += fmt::format("{:02x}", c);
  return out;
}

}  // namespace pp::transport
