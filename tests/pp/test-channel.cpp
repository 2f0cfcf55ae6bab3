// The ZeroMQ control channel over ipc:// and tcp://127.0.0.1:0: a server and three clients
// exchange random messages both ways in order; a dropped client is reported and sending to it is
// kUnavailable; garbage frames are skipped; timeouts and wakes return promptly; a full queue is
// kResourceExhausted rather than a hang.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <thread>
#include <zmq.hpp>

#include "pp/transport/channel.h"
#include "pp/transport/wire.h"
#include "test-util.h"
#include "test-wire-random.h"

namespace pp::transport {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

class Channel : public ::testing::TestWithParam<std::string> {
 protected:
  // A fresh endpoint of the parameter's kind.
  std::string endpoint() {
    if (GetParam() == "ipc") return "ipc://" + (dir_.path() / "control.sock").string();
    return "tcp://127.0.0.1:0";
  }
  test::TempDir dir_;
};

// Receives on the server until a message arrives or `limit` passes.
std::optional<Incoming> next_message(ControlServer& s, std::chrono::milliseconds limit = 5000ms) {
  const auto end = Clock::now() + limit;
  while (Clock::now() < end) {
    auto in = s.receive(100ms);
    EXPECT_TRUE(in.ok()) << in.status().message();
    if (!in.ok()) return std::nullopt;
    if (*in && (*in)->event == PeerEvent::kMessage) return std::move(**in);
  }
  return std::nullopt;
}

std::optional<Message> next_message(ControlClient& c, std::chrono::milliseconds limit = 5000ms) {
  auto m = c.receive(limit);
  EXPECT_TRUE(m.ok()) << m.status().message();
  if (!m.ok()) return std::nullopt;
  return std::move(*m);
}

TEST_P(Channel, ServerAndThreeClientsExchangeInOrder) {
  auto server = ControlServer::bind(endpoint());
  ASSERT_TRUE(server.ok()) << server.status().message();
  if (GetParam() == "tcp") {
    EXPECT_TRUE(server->endpoint().starts_with("tcp://127.0.0.1:"));
    EXPECT_FALSE(server->endpoint().ends_with(":0"));
  }
  std::vector<ControlClient> clients;
  for (int i = 0; i < 3; ++i) {
    auto c = ControlClient::connect(server->endpoint());
    ASSERT_TRUE(c.ok()) << c.status().message();
    clients.push_back(std::move(*c));
  }
  for (auto& c : clients) ASSERT_TRUE(c.wait_connected(5000ms).ok());

  // Registration: each client says which stage it is; the server learns its peer id.
  std::map<int32_t, PeerId> peer_of;
  for (int i = 0; i < 3; ++i) {
    Hello hello;
    hello.stage = i;
    hello.pid = 100 + i;
    ASSERT_TRUE(clients[i].send(hello).ok());
  }
  for (int i = 0; i < 3; ++i) {
    auto in = next_message(*server);
    ASSERT_TRUE(in);
    auto* hello = std::get_if<Hello>(&in->message);
    ASSERT_NE(hello, nullptr) << message_name(in->message);
    EXPECT_EQ(hello->pid, 100 + hello->stage);
    peer_of[hello->stage] = in->peer;
    EXPECT_TRUE(server->last_seen(in->peer).has_value());
  }
  ASSERT_EQ(peer_of.size(), 3u);

  // Random traffic both ways; per-peer order and content must hold.
  test::RandomMessages r(test::rng()());
  constexpr int kPerPeer = 60;
  std::vector<std::vector<Message>> up(3), down(3);
  for (int k = 0; k < kPerPeer; ++k) {
    for (int i = 0; i < 3; ++i) {
      up[i].push_back(r.make(r.len(std::variant_size_v<Message> - 1)));
      ASSERT_TRUE(clients[i].send(up[i].back()).ok());
      down[i].push_back(r.make(r.len(std::variant_size_v<Message> - 1)));
      ASSERT_TRUE(server->send(peer_of[i], down[i].back()).ok());
    }
  }
  std::map<PeerId, size_t> got;
  for (int n = 0; n < 3 * kPerPeer; ++n) {
    auto in = next_message(*server);
    ASSERT_TRUE(in) << "after " << n << " messages";
    int stage = -1;
    for (auto& [s, p] : peer_of) {
      if (p == in->peer) stage = s;
    }
    ASSERT_GE(stage, 0) << "message from an unknown peer";
    const size_t k = got[in->peer]++;
    ASSERT_TRUE(in->message == up[stage][k]) << "stage " << stage << " message " << k;
  }
  for (int i = 0; i < 3; ++i) {
    for (int k = 0; k < kPerPeer; ++k) {
      auto m = next_message(clients[i]);
      ASSERT_TRUE(m) << "client " << i << " message " << k;
      ASSERT_TRUE(*m == down[i][k]) << "client " << i << " message " << k;
    }
    EXPECT_TRUE(clients[i].last_received().has_value());
  }
  // Nothing else is queued.
  auto extra = server->receive(0ms);
  ASSERT_TRUE(extra.ok());
  EXPECT_FALSE(extra->has_value());
}

TEST_P(Channel, DisconnectedPeerIsReportedAndUnavailable) {
  auto server = ControlServer::bind(endpoint());
  ASSERT_TRUE(server.ok()) << server.status().message();
  PeerId peer;
  {
    auto c = ControlClient::connect(server->endpoint());
    ASSERT_TRUE(c.ok());
    ASSERT_TRUE(c->send(Heartbeat{.stage = 1, .at_us = 5}).ok());
    auto in = next_message(*server);
    ASSERT_TRUE(in);
    peer = in->peer;
    EXPECT_TRUE(server->send(peer, Heartbeat{}).ok());
  }  // the client is gone
  const auto t0 = Clock::now();
  bool reported = false;
  while (!reported && Clock::now() - t0 < 5s) {
    auto in = server->receive(100ms);
    ASSERT_TRUE(in.ok());
    if (*in && (*in)->event == PeerEvent::kDisconnected) {
      EXPECT_EQ((*in)->peer, peer);
      reported = true;
    }
  }
  ASSERT_TRUE(reported) << "no disconnect event within 5 s";
  EXPECT_LT(Clock::now() - t0, 1s);
  Status s = server->send(peer, Shutdown{"bye"});
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.message();
  EXPECT_FALSE(server->last_seen(peer).has_value());
  // A peer id that never existed is unavailable too (ZMQ_ROUTER_MANDATORY).
  s = server->send(std::string("\0nobody", 7), Shutdown{});
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.message();
}

TEST_P(Channel, GarbageFramesAreSkipped) {
  auto server = ControlServer::bind(endpoint());
  ASSERT_TRUE(server.ok());
  zmq::context_t ctx;
  zmq::socket_t raw(ctx, zmq::socket_type::dealer);
  raw.set(zmq::sockopt::linger, 0);
  raw.connect(server->endpoint());
  test::RandomMessages r(test::rng()());
  auto good = encode(r.make(5));
  // Random bytes, a truncated frame, a frame with a bad bool-sized count, a three-part message.
  std::vector<uint8_t> noise(64);
  for (auto& b : noise) b = static_cast<uint8_t>(r.u64());
  raw.send(zmq::buffer(noise));
  raw.send(zmq::buffer(good.data(), good.size() / 2));
  raw.send(zmq::message_t(), zmq::send_flags::none);
  raw.send(zmq::buffer(good), zmq::send_flags::sndmore);
  raw.send(zmq::buffer(good), zmq::send_flags::sndmore);
  raw.send(zmq::buffer(good));
  Message expect = r.make(8);
  const auto bytes = encode(expect);
  raw.send(zmq::buffer(bytes));
  auto in = next_message(*server);
  ASSERT_TRUE(in);
  EXPECT_TRUE(in->message == expect) << message_name(in->message);

  // The client side skips garbage from the server the same way.
  zmq::socket_t raw_router(ctx, zmq::socket_type::router);
  raw_router.set(zmq::sockopt::linger, 0);
  raw_router.bind("tcp://127.0.0.1:*");
  auto client = ControlClient::connect(raw_router.get(zmq::sockopt::last_endpoint));
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE(client->send(Ready{.stage = 2}).ok());
  zmq::message_t id, body;
  ASSERT_TRUE(raw_router.recv(id));
  ASSERT_TRUE(raw_router.recv(body));
  auto ready = decode({static_cast<const uint8_t*>(body.data()), body.size()});
  ASSERT_TRUE(ready.ok());
  EXPECT_EQ(std::get<Ready>(*ready).stage, 2);
  raw_router.send(zmq::buffer(id.data(), id.size()), zmq::send_flags::sndmore);
  raw_router.send(zmq::buffer(noise));
  Message down = r.make(5);
  const auto down_bytes = encode(down);
  raw_router.send(zmq::buffer(id.data(), id.size()), zmq::send_flags::sndmore);
  raw_router.send(zmq::buffer(down_bytes));
  auto m = next_message(*client);
  ASSERT_TRUE(m);
  EXPECT_TRUE(*m == down);
}

// A stage that hangs (here: a child process stopped with SIGSTOP, its socket still open) answers
// no ZMTP heartbeat; the server drops it and reports it within about a second.
TEST_P(Channel, FrozenPeerIsDroppedByHeartbeat) {
  auto server = ControlServer::bind(endpoint());
  ASSERT_TRUE(server.ok());
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Its own process group: a process that stops in an orphaned group gets the whole group
    // (ctest and the CI runner with it) a SIGHUP from the kernel.
    setpgid(0, 0);
    // The child touches none of the parent's sockets: a fresh context, then it stops itself.
    auto c = ControlClient::connect(server->endpoint());
    if (!c.ok() || !c->send(Heartbeat{.stage = 3}).ok()) _exit(1);
    (void)c->wait_connected(5000ms);
    std::this_thread::sleep_for(200ms);  // let the Hello leave
    raise(SIGSTOP);
    _exit(0);
  }
  auto in = next_message(*server);
  ASSERT_TRUE(in);
  const PeerId peer = in->peer;
  // Wait until the child is stopped before timing.
  for (int i = 0; i < 500; ++i) {
    int st = 0;
    if (waitpid(child, &st, WUNTRACED | WNOHANG) == child && WIFSTOPPED(st)) break;
    std::this_thread::sleep_for(10ms);
  }
  const auto t0 = Clock::now();
  bool dropped = false;
  while (!dropped && Clock::now() - t0 < 5s) {
    auto ev = server->receive(100ms);
    ASSERT_TRUE(ev.ok());
    dropped = *ev && (*ev)->event == PeerEvent::kDisconnected && (*ev)->peer == peer;
  }
  const auto took = Clock::now() - t0;
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
  ASSERT_TRUE(dropped) << "a frozen peer was not dropped within 5 s";
  EXPECT_LT(took, 1500ms) << std::chrono::duration<double>(took).count() << " s";
  EXPECT_EQ(server->send(peer, Heartbeat{}).code(), StatusCode::kUnavailable);
}

TEST_P(Channel, TimeoutsAndWakesArePrompt) {
  auto server = ControlServer::bind(endpoint());
  ASSERT_TRUE(server.ok());
  auto t0 = Clock::now();
  auto in = server->receive(0ms);
  ASSERT_TRUE(in.ok());
  EXPECT_FALSE(in->has_value());
  EXPECT_LT(Clock::now() - t0, 50ms);

  t0 = Clock::now();
  in = server->receive(80ms);
  ASSERT_TRUE(in.ok());
  EXPECT_FALSE(in->has_value());
  const auto waited = Clock::now() - t0;
  EXPECT_GE(waited, 75ms);
  EXPECT_LT(waited, 500ms);

  // Another thread wakes a long receive.
  Waker w = server->waker();
  std::thread waker([w] {
    std::this_thread::sleep_for(50ms);
    w.wake();
  });
  t0 = Clock::now();
  in = server->receive(10s);
  waker.join();
  ASSERT_TRUE(in.ok());
  EXPECT_FALSE(in->has_value());
  EXPECT_LT(Clock::now() - t0, 2s);

  auto client = ControlClient::connect(server->endpoint());
  ASSERT_TRUE(client.ok());
  Waker cw = client->waker();
  cw.wake();  // a wake before the receive makes the next receive return at once
  t0 = Clock::now();
  auto m = client->receive(10s);
  ASSERT_TRUE(m.ok());
  EXPECT_FALSE(m->has_value());
  EXPECT_LT(Clock::now() - t0, 1s);
}

TEST_P(Channel, SilentPeersAreListed) {
  auto server = ControlServer::bind(endpoint());
  ASSERT_TRUE(server.ok());
  auto a = ControlClient::connect(server->endpoint());
  auto b = ControlClient::connect(server->endpoint());
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(a->send(Heartbeat{.stage = 0}).ok());
  ASSERT_TRUE(b->send(Heartbeat{.stage = 1}).ok());
  std::map<int32_t, PeerId> peer_of;
  for (int i = 0; i < 2; ++i) {
    auto in = next_message(*server);
    ASSERT_TRUE(in);
    peer_of[std::get<Heartbeat>(in->message).stage] = in->peer;
  }
  std::this_thread::sleep_for(150ms);
  ASSERT_TRUE(b->send(Heartbeat{.stage = 1}).ok());
  ASSERT_TRUE(next_message(*server));
  auto silent = server->silent_peers(100ms);
  ASSERT_EQ(silent.size(), 1u);
  EXPECT_EQ(silent[0], peer_of[0]);
}

TEST(ChannelQueue, FullQueueIsAnErrorNotAHang) {
  // Nobody listens at this endpoint: messages pile up in the client's queue.
  test::TempDir dir;
  ChannelOptions o;
  o.send_hwm = 16;
  auto c = ControlClient::connect("ipc://" + (dir.path() / "nobody.sock").string(), o);
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->connected());
  const auto t0 = Clock::now();
  Status s;
  int sent = 0;
  for (; sent < 10000 && s.ok(); ++sent) s = c->send(Heartbeat{.stage = 0, .at_us = sent});
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.message();
  EXPECT_LT(sent, 1000);
  EXPECT_LT(Clock::now() - t0, 1s);
  EXPECT_EQ(c->wait_connected(50ms).code(), StatusCode::kDeadlineExceeded);
}

TEST(ChannelEndpoint, BadEndpointsAreInvalid) {
  auto s = ControlServer::bind("bogus://x");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument) << s.status().message();
  auto first = ControlServer::bind("tcp://127.0.0.1:0");
  ASSERT_TRUE(first.ok());
  auto second = ControlServer::bind(first->endpoint());  // the port is taken
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kUnavailable) << second.status().message();
}

INSTANTIATE_TEST_SUITE_P(Transports, Channel, ::testing::Values("ipc", "tcp"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace pp::transport
