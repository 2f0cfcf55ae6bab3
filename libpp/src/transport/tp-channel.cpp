// The CPU collectives of a tensor-parallel group over ZeroMQ PUSH/PULL (see tp-channel.h).
//
// One message is two frames: a 24-byte header
//   magic u32 | version u16 | reserved u16 | tag u64 | sender i32 | reserved u32
// and the payload, little-endian f32. Messages that arrive before their turn wait in `pending`,
// keyed by (tag, sender).
#include "pp/transport/tp-channel.h"

#include <chrono>
#include <cstring>
#include <map>

#include <spdlog/spdlog.h>

#include "zmq-util.h"

namespace pp::transport {
namespace {

constexpr size_t kHeaderBytes = 24;
constexpr std::chrono::milliseconds kCheckInterval{100};

struct Header {
  uint64_t tag = 0;
  int32_t sender = 0;
};

}  // namespace

struct TpChannel::Impl {
  zmq::context_t ctx{1};
  zmq::socket_t pull{ctx, zmq::socket_type::pull};
  std::shared_ptr<Waker::Fd> wake = std::make_shared<Waker::Fd>();
  ChannelOptions options;
  std::string endpoint;
  int32_t rank = 0, size = 1;
  // Rank 0: one socket per rank (index 0 unused); other ranks: [0] is rank 0's.
  std::vector<zmq::socket_t> push;
  std::map<std::pair<uint64_t, int32_t>, std::vector<float>> pending;

  Status send(int32_t to, const Header& h, std::span<const float> data) {
    zmq::socket_t& s = push[size_t(rank == 0 ? to : 0)];
    try {
      zmq::message_t head(kHeaderBytes);
      auto* p = static_cast<uint8_t*>(head.data());
      std::memset(p, 0, kHeaderBytes);
      std::memcpy(p + 0, &kTpMagic, 4);
      std::memcpy(p + 4, &kTpVersion, 2);
      std::memcpy(p + 8, &h.tag, 8);
      std::memcpy(p + 16, &h.sender, 4);
      zmq::message_t payload(data.data(), data.size_bytes());
      if (!s.send(head, zmq::send_flags::sndmore | zmq::send_flags::dontwait) ||
          !s.send(payload, zmq::send_flags::dontwait)) {
        return make_error(StatusCode::kResourceExhausted,
                          "cannot send collective {} to rank {}: the queue is full", h.tag, to);
      }
    } catch (const zmq::error_t& e) {
      return detail::zmq_status(e.num(),
                                fmt::format("cannot send collective {} to rank {}", h.tag, to));
    }
    return ok_status();
  }

  // Reads one message into `pending` (dropping it when its tag is below `floor`); false when
  // none came within `timeout`.
  Result<bool> read_one(uint64_t floor, std::chrono::milliseconds timeout) {
    try {
      zmq::message_t head;
      if (!pull.recv(head, zmq::recv_flags::dontwait)) {
        PP_ASSIGN_OR_RETURN(auto ready, detail::poll_channel(pull, nullptr, *wake, timeout));
        if (!ready.socket || !pull.recv(head, zmq::recv_flags::dontwait)) return false;
      }
      uint32_t magic = 0;
      uint16_t version = 0;
      Header h;
      const auto* p = static_cast<const uint8_t*>(head.data());
      const bool sized = head.size() == kHeaderBytes;
      if (sized) {
        std::memcpy(&magic, p, 4);
        std::memcpy(&version, p + 4, 2);
        std::memcpy(&h.tag, p + 8, 8);
        std::memcpy(&h.sender, p + 16, 4);
      }
      zmq::message_t payload;
      const bool has_payload = head.more() && pull.recv(payload, zmq::recv_flags::none);
      for (bool more = has_payload && payload.more(); more;) {
        zmq::message_t rest;
        (void)pull.recv(rest, zmq::recv_flags::none);
        more = rest.more();
      }
      if (!sized || magic != kTpMagic || version != kTpVersion || !has_payload ||
          payload.size() % sizeof(float) != 0 || h.sender < 0 || h.sender >= size) {
        return data_loss("malformed collective message on '{}'", endpoint);
      }
      if (h.tag < floor) return true;  // of a forward some rank gave up: stale
      std::vector<float> v(payload.size() / sizeof(float));
      std::memcpy(v.data(), payload.data(), payload.size());
      pending[{h.tag, h.sender}] = std::move(v);
      return true;
    } catch (const zmq::error_t& e) {
      return detail::zmq_status(e.num(),
                                fmt::format("cannot receive a collective on '{}'", endpoint));
    }
  }

  // The message of collective `tag` from `sender`, waiting for it.
  Result<std::vector<float>> take(uint64_t tag, int32_t sender,
                                  const std::function<Status()>& check) {
    // Everything below `tag` is stale now.
    pending.erase(pending.begin(), pending.lower_bound({tag, 0}));
    for (;;) {
      if (auto it = pending.find({tag, sender}); it != pending.end()) {
        std::vector<float> v = std::move(it->second);
        pending.erase(it);
        return v;
      }
      PP_ASSIGN_OR_RETURN(const bool got, read_one(tag, kCheckInterval));
      if (!got) PP_RETURN_IF_ERROR(check());
    }
  }
};

TpChannel::TpChannel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
TpChannel::TpChannel(TpChannel&&) noexcept = default;
TpChannel& TpChannel::operator=(TpChannel&&) noexcept = default;
TpChannel::~TpChannel() = default;

Result<TpChannel> TpChannel::bind(const std::string& endpoint, const ChannelOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  try {
    detail::set_common_options(impl->pull, options, endpoint);
  } catch (const zmq::error_t& e) {
    return detail::zmq_status(e.num(),
                              fmt::format("cannot set up collective socket '{}'", endpoint));
  }
  PP_ASSIGN_OR_RETURN(impl->endpoint, detail::bind_socket(impl->pull, endpoint));
  return TpChannel(std::move(impl));
}

const std::string& TpChannel::endpoint() const { return impl_->endpoint; }
int32_t TpChannel::rank() const { return impl_->rank; }
int32_t TpChannel::size() const { return impl_->size; }

Status TpChannel::join(int32_t rank, const std::vector<std::string>& endpoints) {
  Impl& m = *impl_;
  if (rank < 0 || size_t(rank) >= endpoints.size()) {
    return invalid_argument("rank {} is outside a tensor-parallel group of {}", rank,
                            endpoints.size());
  }
  if (endpoints[size_t(rank)] != m.endpoint) {
    return invalid_argument("rank {} of the group listens at '{}', this worker at '{}'", rank,
                            endpoints[size_t(rank)], m.endpoint);
  }
  m.push.clear();
  m.pending.clear();
  m.rank = rank;
  m.size = int32_t(endpoints.size());
  auto connect = [&](const std::string& to) -> Status {
    zmq::socket_t s(m.ctx, zmq::socket_type::push);
    try {
      detail::set_common_options(s, m.options, to);
    } catch (const zmq::error_t& e) {
      return detail::zmq_status(e.num(), fmt::format("cannot set up collective socket '{}'", to));
    }
    PP_RETURN_IF_ERROR(detail::connect_socket(s, to));
    m.push.push_back(std::move(s));
    return ok_status();
  };
  if (rank == 0) {
    m.push.emplace_back();  // no socket to itself
    for (size_t r = 1; r < endpoints.size(); ++r) PP_RETURN_IF_ERROR(connect(endpoints[r]));
  } else {
    PP_RETURN_IF_ERROR(connect(endpoints[0]));
  }
  return ok_status();
}

Status TpChannel::all_reduce_sum(uint64_t tag, std::span<float> x,
                                 const std::function<Status()>& check) {
  Impl& m = *impl_;
  if (m.size == 1) return ok_status();
  if (m.rank != 0) {
    PP_RETURN_IF_ERROR(m.send(0, {tag, m.rank}, x));
    PP_ASSIGN_OR_RETURN(std::vector<float> sum, m.take(tag, 0, check));
    if (sum.size() != x.size()) {
      return data_loss("collective {}: rank 0 sent {} floats, expected {}", tag, sum.size(),
                       x.size());
    }
    std::copy(sum.begin(), sum.end(), x.begin());
    return ok_status();
  }
  for (int32_t r = 1; r < m.size; ++r) {
    PP_ASSIGN_OR_RETURN(std::vector<float> part, m.take(tag, r, check));
    if (part.size() != x.size()) {
      return data_loss("collective {}: rank {} sent {} floats, expected {}", tag, r, part.size(),
                       x.size());
    }
    for (size_t i = 0; i < x.size(); ++i) x[i] += part[i];
  }
  for (int32_t r = 1; r < m.size; ++r) PP_RETURN_IF_ERROR(m.send(r, {tag, 0}, x));
  return ok_status();
}

Status TpChannel::gather(uint64_t tag, std::span<const float> part, std::span<float> out,
                         const std::function<Status()>& check) {
  Impl& m = *impl_;
  if (m.rank != 0) return m.send(0, {tag, m.rank}, part);
  size_t at = 0;
  auto put = [&](std::span<const float> p, int32_t r) -> Status {
    if (at + p.size() > out.size()) {
      return data_loss("collective {}: rank {}'s part overflows the {} floats gathered", tag, r,
                       out.size());
    }
    std::copy(p.begin(), p.end(), out.begin() + ptrdiff_t(at));
    at += p.size();
    return ok_status();
  };
  PP_RETURN_IF_ERROR(put(part, 0));
  for (int32_t r = 1; r < m.size; ++r) {
    PP_ASSIGN_OR_RETURN(std::vector<float> p, m.take(tag, r, check));
    PP_RETURN_IF_ERROR(put(p, r));
  }
  if (at != out.size()) {
    return data_loss("collective {}: the parts fill {} of {} floats", tag, at, out.size());
  }
  return ok_status();
}

}  // namespace pp::transport
