// The CPU activation transport over ZeroMQ PUSH/PULL (see activation.h).
//
// One micro-batch is one two-frame message: a 28-byte header
//   magic u32 | version u16 | reserved u16 | seq u64 | group i32 | n_tokens i32 | n_embd i32
// and the payload, n_tokens * n_embd little-endian f32. With a `done` callback the payload frame
// wraps the caller's buffer (zero-copy; ZeroMQ calls the free function, which calls done, once its
// I/O thread has written the bytes); without one the payload is copied into the message.
#include <algorithm>
#include <cstring>

#include <spdlog/spdlog.h>

#include "pp/transport/activation.h"
#include "zmq-util.h"

namespace pp::transport {
namespace {

using Clock = std::chrono::steady_clock;
constexpr size_t kHeaderBytes = 28;

void put_header(uint8_t* p, const ActivationHeader& h) {
  const uint16_t reserved = 0;
  std::memcpy(p + 0, &kActivationMagic, 4);
  std::memcpy(p + 4, &kActivationVersion, 2);
  std::memcpy(p + 6, &reserved, 2);
  std::memcpy(p + 8, &h.seq, 8);
  std::memcpy(p + 16, &h.group, 4);
  std::memcpy(p + 20, &h.n_tokens, 4);
  std::memcpy(p + 24, &h.n_embd, 4);
}

Result<ActivationHeader> parse_header(const zmq::message_t& m) {
  if (m.size() != kHeaderBytes) {
    return data_loss("malformed activation header: {} bytes, expected {}", m.size(), kHeaderBytes);
  }
  const auto* p = static_cast<const uint8_t*>(m.data());
  uint32_t magic = 0;
  uint16_t version = 0;
  std::memcpy(&magic, p, 4);
  std::memcpy(&version, p + 4, 2);
  if (magic != kActivationMagic) {
    return data_loss("not a pp activation: magic 0x{:08x}, expected 0x{:08x}", magic,
                     kActivationMagic);
  }
  if (version != kActivationVersion) {
    return unimplemented("activation has version {}, this build speaks version {}", version,
                         kActivationVersion);
  }
  ActivationHeader h;
  std::memcpy(&h.seq, p + 8, 8);
  std::memcpy(&h.group, p + 16, 4);
  std::memcpy(&h.n_tokens, p + 20, 4);
  std::memcpy(&h.n_embd, p + 24, 4);
  if (h.n_tokens <= 0 || h.n_embd <= 0) {
    return data_loss("malformed activation of seq {}: shape [{}, {}]", h.seq, h.n_tokens, h.n_embd);
  }
  return h;
}

void call_done(void*, void* hint) {
  auto* done = static_cast<SendDone*>(hint);
  (*done)();
  delete done;
}

}  // namespace

// ---- sender ----

struct ActivationSender::Impl {
  zmq::context_t ctx{1};
  zmq::socket_t sock{ctx, zmq::socket_type::push};
  std::string endpoint;
};

ActivationSender::ActivationSender(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ActivationSender::ActivationSender(ActivationSender&&) noexcept = default;
ActivationSender& ActivationSender::operator=(ActivationSender&&) noexcept = default;
ActivationSender::~ActivationSender() = default;

Result<ActivationSender> ActivationSender::connect(const std::string& endpoint,
                                                   const ChannelOptions& options) {
  auto impl = std::make_unique<Impl>();
  try {
    detail::set_common_options(impl->sock, options, endpoint);
  } catch (const zmq::error_t& e) {
    return detail::zmq_status(e.num(),
                              fmt::format("cannot set up activation socket '{}'", endpoint));
  }
  PP_RETURN_IF_ERROR(detail::connect_socket(impl->sock, endpoint));
  impl->endpoint = endpoint;
  return ActivationSender(std::move(impl));
}

const std::string& ActivationSender::endpoint() const { return impl_->endpoint; }

Status ActivationSender::send(const ActivationHeader& header, std::span<const float> data,
                              SendDone done) {
  // From here on `done` runs exactly once: on every early return, or by ZeroMQ's free function.
  auto release = [&] {
    if (done) done();
  };
  if (header.n_tokens <= 0 || header.n_embd <= 0 || data.size() != header.n_floats()) {
    release();
    return invalid_argument("activation of seq {}: shape [{}, {}] but {} floats given", header.seq,
                            header.n_tokens, header.n_embd, data.size());
  }
  try {
    zmq::message_t head(kHeaderBytes);
    put_header(static_cast<uint8_t*>(head.data()), header);
    const size_t bytes = data.size_bytes();
    zmq::message_t payload;
    if (done) {
      // zmq_msg_init_data wants a mutable pointer; ZeroMQ only reads it.
      auto* hint = new SendDone(std::move(done));
      payload.rebuild(const_cast<float*>(data.data()), bytes, call_done, hint);
    } else {
      payload.rebuild(data.data(), bytes);
    }
    if (!impl_->sock.send(head, zmq::send_flags::sndmore | zmq::send_flags::dontwait)) {
      return make_error(StatusCode::kResourceExhausted,
                        "cannot send activation of seq {} to '{}': the queue is full", header.seq,
                        impl_->endpoint);
    }
    (void)impl_->sock.send(payload, zmq::send_flags::dontwait);
  } catch (const zmq::error_t& e) {
    return detail::zmq_status(e.num(), fmt::format("cannot send activation of seq {} to '{}'",
                                                   header.seq, impl_->endpoint));
  }
  return ok_status();
}

// ---- receiver ----

struct ActivationReceiver::Impl {
  zmq::context_t ctx{1};
  zmq::socket_t sock{ctx, zmq::socket_type::pull};
  std::shared_ptr<Waker::Fd> wake = std::make_shared<Waker::Fd>();
  std::string endpoint;

  // Reads and drops the rest of a multipart message.
  void drain_rest(bool more) {
    while (more) {
      zmq::message_t m;
      (void)sock.recv(m, zmq::recv_flags::none);
      more = m.more();
    }
  }
};

ActivationReceiver::ActivationReceiver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ActivationReceiver::ActivationReceiver(ActivationReceiver&&) noexcept = default;
ActivationReceiver& ActivationReceiver::operator=(ActivationReceiver&&) noexcept = default;
ActivationReceiver::~ActivationReceiver() = default;

Result<ActivationReceiver> ActivationReceiver::bind(const std::string& endpoint,
                                                    const ChannelOptions& options) {
  auto impl = std::make_unique<Impl>();
  try {
    detail::set_common_options(impl->sock, options, endpoint);
  } catch (const zmq::error_t& e) {
    return detail::zmq_status(e.num(),
                              fmt::format("cannot set up activation socket '{}'", endpoint));
  }
  PP_ASSIGN_OR_RETURN(impl->endpoint, detail::bind_socket(impl->sock, endpoint));
  return ActivationReceiver(std::move(impl));
}

const std::string& ActivationReceiver::endpoint() const { return impl_->endpoint; }

Waker ActivationReceiver::waker() const { return Waker(impl_->wake); }

Result<std::optional<ActivationHeader>> ActivationReceiver::receive(
    uint64_t expected_seq, std::span<float> out, std::chrono::milliseconds timeout) {
  using R = std::optional<ActivationHeader>;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  try {
    zmq::message_t head;
    ActivationHeader h;
    for (;;) {
      if (!impl_->sock.recv(head, zmq::recv_flags::dontwait)) {
        const auto left = std::max(std::chrono::duration_cast<std::chrono::milliseconds>(
                                       deadline - std::chrono::steady_clock::now()),
                                   std::chrono::milliseconds(0));
        PP_ASSIGN_OR_RETURN(auto ready,
                            detail::poll_channel(impl_->sock, nullptr, *impl_->wake, left));
        if (ready.woken || !ready.socket) return R();
        if (!impl_->sock.recv(head, zmq::recv_flags::dontwait)) return R();
      }
      auto parsed = parse_header(head);
      if (!parsed.ok()) {
        impl_->drain_rest(head.more());
        return parsed.status();
      }
      h = *parsed;
      if (!head.more()) return data_loss("activation of seq {} has no payload", h.seq);
      // An older seq belongs to a plan that a recovery forgot (the sender ran it before the
      // pipeline was reset): it is stale, never a reordering. Drop it and wait on.
      if (h.seq >= expected_seq) break;
      impl_->drain_rest(true);
      spdlog::info("dropped a stale activation of seq {} (expecting seq {})", h.seq, expected_seq);
    }
    if (h.seq != expected_seq) {
      impl_->drain_rest(true);
      return data_loss("activation of seq {} (group {}) arrived, expected seq {}", h.seq, h.group,
                       expected_seq);
    }
    if (h.n_floats() > out.size()) {
      impl_->drain_rest(true);
      return make_error(StatusCode::kOutOfRange,
                        "activation of seq {} is [{}, {}] f32, the receive buffer holds {} floats",
                        h.seq, h.n_tokens, h.n_embd, out.size());
    }
    const size_t bytes = h.n_floats() * sizeof(float);
    auto got = impl_->sock.recv(zmq::mutable_buffer(out.data(), bytes), zmq::recv_flags::none);
    // The payload frame is part of the message already here, so recv does not wait.
    const bool more = impl_->sock.get(zmq::sockopt::rcvmore) != 0;
    impl_->drain_rest(more);
    if (!got || got->untruncated_size != bytes || more) {
      return data_loss("activation of seq {}: payload of {} bytes{}, expected {}", h.seq,
                       got ? got->untruncated_size : 0, more ? " in several frames" : "", bytes);
    }
    return R(h);
  } catch (const zmq::error_t& e) {
    return detail::zmq_status(e.num(),
                              fmt::format("cannot receive activation on '{}'", impl_->endpoint));
  }
}

// ---- a stage's pair ----

Status HostActivationChannel::send(const ActivationHeader& header, std::span<const float> data,
                                   SendDone done) {
  if (!to_next_) {
    if (done) done();
    return make_error(StatusCode::kFailedPrecondition,
                      "cannot send activation of seq {}: the last stage has no next stage",
                      header.seq);
  }
  return to_next_->send(header, data, std::move(done));
}

Result<std::optional<ActivationHeader>> HostActivationChannel::receive(
    uint64_t expected_seq, std::span<float> out, std::chrono::milliseconds timeout) {
  if (!from_previous_) {
    return make_error(StatusCode::kFailedPrecondition,
                      "cannot receive activation of seq {}: the first stage has no previous stage",
                      expected_seq);
  }
  return from_previous_->receive(expected_seq, out, timeout);
}

}  // namespace pp::transport
