// ControlClient: a stage's DEALER socket to the coordinator (see channel.h). The socket monitor
// keeps `connected` current; ZeroMQ reconnects by itself after a drop.
#include <deque>

#include <spdlog/spdlog.h>

#include "pp/transport/channel.h"
#include "pp/transport/wire.h"
#include "zmq-util.h"

namespace pp::transport {

using Clock = std::chrono::steady_clock;

struct ControlClient::Impl {
  zmq::context_t ctx{1};
  zmq::socket_t sock{ctx, zmq::socket_type::dealer};
  std::optional<detail::Monitor> monitor;
  std::shared_ptr<Waker::Fd> wake = std::make_shared<Waker::Fd>();
  std::string endpoint;
  std::vector<uint8_t> send_buf;
  bool connected = false;
  std::optional<Clock::time_point> disconnected_since;
  std::optional<Clock::time_point> last_received;

  // As ControlServer::Impl::read_message: false when nothing is queued; true with `out` empty
  // for a skipped frame.
  bool read_message(std::optional<Message>& out);
  void read_monitor();
};

bool ControlClient::Impl::read_message(std::optional<Message>& out) {
  out.reset();
  zmq::message_t body;
  if (!sock.recv(body, zmq::recv_flags::dontwait)) return false;
  if (body.more()) {
    size_t n_frames = 1;
    for (bool more = true; more; ++n_frames) {
      zmq::message_t extra;
      (void)sock.recv(extra, zmq::recv_flags::none);
      more = extra.more();
    }
    spdlog::warn("control: skipping a message of {} frames from '{}' (expected 1)", n_frames,
                 endpoint);
    return true;
  }
  auto m = decode({static_cast<const uint8_t*>(body.data()), body.size()});
  if (!m.ok()) {
    spdlog::warn("control: skipping a frame from '{}': {}", endpoint, m.status().message());
    return true;
  }
  last_received = Clock::now();
  out = std::move(*m);
  return true;
}

void ControlClient::Impl::read_monitor() {
  while (auto ev = monitor->read()) {
    if (ev->event == ZMQ_EVENT_CONNECTED) {
      connected = true;
      disconnected_since.reset();
    } else if (ev->event == ZMQ_EVENT_DISCONNECTED) {
      connected = false;
      disconnected_since = Clock::now();
    }
  }
}

ControlClient::ControlClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ControlClient::ControlClient(ControlClient&&) noexcept = default;
ControlClient& ControlClient::operator=(ControlClient&&) noexcept = default;
ControlClient::~ControlClient() = default;

Result<ControlClient> ControlClient::connect(const std::string& endpoint,
                                             const ChannelOptions& options) {
  auto impl = std::make_unique<Impl>();
  try {
    detail::set_common_options(impl->sock, options, endpoint);
    impl->monitor.emplace(impl->ctx, impl->sock);
  } catch (const zmq::error_t& e) {
    return detail::zmq_status(e.num(), fmt::format("cannot set up control socket '{}'", endpoint));
  }
  PP_RETURN_IF_ERROR(detail::connect_socket(impl->sock, endpoint));
  impl->endpoint = endpoint;
  return ControlClient(std::move(impl));
}

const std::string& ControlClient::endpoint() const { return impl_->endpoint; }

Status ControlClient::send(const Message& m) {
  encode(m, impl_->send_buf);
  try {
    zmq::message_t body(impl_->send_buf.data(), impl_->send_buf.size());
    if (!impl_->sock.send(body, zmq::send_flags::dontwait)) {
      return make_error(StatusCode::kResourceExhausted,
                        "cannot send '{}' to '{}': the queue is full", message_name(m),
                        impl_->endpoint);
    }
  } catch (const zmq::error_t& e) {
    return detail::zmq_status(
        e.num(), fmt::format("cannot send '{}' to '{}'", message_name(m), impl_->endpoint));
  }
  return ok_status();
}

Result<std::optional<Message>> ControlClient::receive(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  try {
    for (;;) {
      const auto left = std::max(Clock::duration::zero(), deadline - Clock::now());
      PP_ASSIGN_OR_RETURN(auto ready,
                          detail::poll_channel(impl_->sock, &*impl_->monitor, *impl_->wake,
                                               std::chrono::ceil<std::chrono::milliseconds>(left)));
      if (ready.monitor) impl_->read_monitor();
      if (ready.woken) return std::optional<Message>();
      if (ready.socket) {
        std::optional<Message> m;
        while (impl_->read_message(m)) {
          if (m) return m;
        }
      }
      if (Clock::now() >= deadline) return std::optional<Message>();
    }
  } catch (const zmq::error_t& e) {
    return detail::zmq_status(e.num(), fmt::format("cannot receive from '{}'", impl_->endpoint));
  }
}

Status ControlClient::wait_connected(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  try {
    while (!impl_->connected) {
      const auto left = deadline - Clock::now();
      if (left <= Clock::duration::zero()) {
        return make_error(StatusCode::kDeadlineExceeded, "cannot connect to '{}' within {} ms",
                          impl_->endpoint, timeout.count());
      }
      // Poll the monitor alone, so that messages stay queued for receive().
      zmq::pollitem_t item{impl_->monitor->socket().handle(), 0, ZMQ_POLLIN, 0};
      const long ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
      if (zmq_poll(&item, 1, ms) < 0 && zmq_errno() != EINTR) {
        return detail::zmq_status(zmq_errno(), fmt::format("cannot poll '{}'", impl_->endpoint));
      }
      if (item.revents & ZMQ_POLLIN) impl_->read_monitor();
    }
  } catch (const zmq::error_t& e) {
    return detail::zmq_status(e.num(), fmt::format("cannot connect to '{}'", impl_->endpoint));
  }
  return ok_status();
}

bool ControlClient::connected() const { return impl_->connected; }

std::optional<Clock::time_point> ControlClient::disconnected_since() const {
  return impl_->disconnected_since;
}

std::optional<Clock::time_point> ControlClient::last_received() const {
  return impl_->last_received;
}

Waker ControlClient::waker() const { return Waker(impl_->wake); }

}  // namespace pp::transport
