// The CPU activation transport: 100 micro-batches of random shapes between two threads arrive
// bit-exact and in order, zero-copy sends give every buffer back to the ring, a copying send
// does not depend on the caller's buffer, and a wrong seq, a too-small buffer or a bad shape is
// an error.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "pp/transport/activation.h"
#include "pp/transport/buffer-ring.h"
#include "test-util.h"

namespace pp::transport {
namespace {

using namespace std::chrono_literals;

class Activation : public ::testing::TestWithParam<std::string> {
 protected:
  std::string endpoint() {
    if (GetParam() == "ipc") return "ipc://" + (dir_.path() / "act.sock").string();
    return "tcp://127.0.0.1:0";
  }
  test::TempDir dir_;
};

struct Batch {
  ActivationHeader header;
  std::vector<float> data;
};

std::vector<Batch> random_batches(int n, std::mt19937_64& g) {
  std::vector<Batch> out;
  for (int i = 0; i < n; ++i) {
    Batch b;
    b.header.seq = 1000 + i;
    b.header.group = static_cast<int32_t>(g() % 5);
    b.header.n_tokens = 1 + static_cast<int32_t>(g() % 300);
    b.header.n_embd = 1 + static_cast<int32_t>(g() % 600);
    b.data = test::random_floats(b.header.n_floats(), -8.0f, 8.0f);
    out.push_back(std::move(b));
  }
  return out;
}

TEST_P(Activation, HundredMicroBatchesArriveInOrderBitExact) {
  const auto batches = random_batches(100, test::rng());
  size_t max_floats = 0;
  for (const auto& b : batches) max_floats = std::max(max_floats, b.header.n_floats());
  // The sender fills ring buffers and sends them zero-copy; the ring gets each back from ZeroMQ.
  // Declared before the channels, so it outlives any send still in flight.
  BufferRing send_ring(3, max_floats);

  auto rx = ActivationReceiver::bind(endpoint());
  ASSERT_TRUE(rx.ok()) << rx.status().message();
  auto tx = ActivationSender::connect(rx->endpoint());
  ASSERT_TRUE(tx.ok()) << tx.status().message();
  HostActivationChannel first(std::nullopt, std::move(*tx));
  HostActivationChannel second(std::move(*rx), std::nullopt);
  ActivationChannel& sending = first;
  ActivationChannel& receiving = second;

  Status send_status;
  std::thread sender([&] {
    for (const auto& b : batches) {
      auto slot = send_ring.acquire(10s);
      if (!slot.ok()) {
        send_status = slot.status();
        return;
      }
      auto buf = send_ring.buffer(*slot).first(b.data.size());
      std::memcpy(buf.data(), b.data.data(), b.data.size() * sizeof(float));
      // A mix of zero-copy and copying sends.
      Status s = (b.header.seq % 4 == 0) ? sending.send(b.header, buf)
                                         : sending.send(b.header, buf, send_ring.releaser(*slot));
      if (b.header.seq % 4 == 0) {
        // Copied: the buffer is free at once; scribble on it to prove the copy was taken.
        std::fill(buf.begin(), buf.end(), -1.0f);
        send_ring.release(*slot);
      }
      if (!s.ok()) {
        send_status = s;
        return;
      }
    }
  });

  BufferRing recv_ring(4, max_floats);
  for (const auto& b : batches) {
    auto slot = recv_ring.acquire(1s);
    ASSERT_TRUE(slot.ok());
    auto out = recv_ring.buffer(*slot);
    std::fill(out.begin(), out.end(), 0.0f);
    auto h = receiving.receive(b.header.seq, out, 10s);
    ASSERT_TRUE(h.ok()) << h.status().message();
    ASSERT_TRUE(h->has_value()) << "timed out waiting for seq " << b.header.seq;
    ASSERT_EQ(**h, b.header);
    ASSERT_EQ(std::memcmp(out.data(), b.data.data(), b.data.size() * sizeof(float)), 0)
        << "seq " << b.header.seq;
    recv_ring.release(*slot);
  }
  sender.join();
  ASSERT_TRUE(send_status.ok()) << send_status.message();
  // Every zero-copy buffer came back.
  for (int i = 0; i < 200 && send_ring.in_use() != 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(send_ring.in_use(), 0u);
}

TEST_P(Activation, WrongSeqSmallBufferAndBadShapeAreErrors) {
  auto rx = ActivationReceiver::bind(endpoint());
  ASSERT_TRUE(rx.ok());
  auto tx = ActivationSender::connect(rx->endpoint());
  ASSERT_TRUE(tx.ok());
  auto data = test::random_floats(8 * 16);
  std::vector<float> out(8 * 16);

  ASSERT_TRUE(tx->send({.seq = 7, .group = 1, .n_tokens = 8, .n_embd = 16}, data).ok());
  auto h = rx->receive(6, out, 5s);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(h.status().message().find("seq 7"), std::string::npos) << h.status().message();
  EXPECT_NE(h.status().message().find("expected seq 6"), std::string::npos);

  ASSERT_TRUE(tx->send({.seq = 8, .group = 1, .n_tokens = 8, .n_embd = 16}, data).ok());
  h = rx->receive(8, std::span<float>(out).first(100), 5s);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), StatusCode::kOutOfRange) << h.status().message();

  // The stream goes on after errors: the next message is whole.
  ASSERT_TRUE(tx->send({.seq = 9, .group = 2, .n_tokens = 8, .n_embd = 16}, data).ok());
  h = rx->receive(9, out, 5s);
  ASSERT_TRUE(h.ok()) << h.status().message();
  ASSERT_TRUE(h->has_value());
  EXPECT_EQ(out, data);

  bool done = false;
  Status s = tx->send({.seq = 10, .n_tokens = 8, .n_embd = 15}, data, [&] { done = true; });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.message();
  EXPECT_TRUE(done) << "a failed send must still release the buffer";
  s = tx->send({.seq = 10, .n_tokens = 0, .n_embd = 16}, {});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);

  // Timeout: nothing was sent for seq 10.
  const auto t0 = std::chrono::steady_clock::now();
  h = rx->receive(10, out, 60ms);
  ASSERT_TRUE(h.ok());
  EXPECT_FALSE(h->has_value());
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1s);

  HostActivationChannel edge(std::nullopt, std::nullopt);
  EXPECT_EQ(edge.send({.seq = 1, .n_tokens = 1, .n_embd = 1}, std::span<const float>(data).first(1))
                .code(),
            StatusCode::kFailedPrecondition);
  EXPECT_EQ(edge.receive(1, out, 0ms).status().code(), StatusCode::kFailedPrecondition);
}

TEST(ActivationRing, AcquireWaitsForRelease) {
  BufferRing ring(2, 16);
  auto a = ring.acquire(0ms);
  auto b = ring.acquire(0ms);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
  EXPECT_EQ(ring.in_use(), 2u);
  auto c = ring.acquire(20ms);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), StatusCode::kDeadlineExceeded);
  std::thread t([&, done = ring.releaser(*a)] {
    std::this_thread::sleep_for(30ms);
    done();
  });
  c = ring.acquire(5s);
  t.join();
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, *a);  // ring order
}

INSTANTIATE_TEST_SUITE_P(Transports, Activation, ::testing::Values("ipc", "tcp"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace pp::transport
