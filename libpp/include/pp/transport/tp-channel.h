// The CPU transport of a tensor-parallel group: the collectives its ranks (pp-stage processes,
// one per rank) run inside a forward, over ZeroMQ PUSH/PULL.
//
// Every rank binds one PULL socket before it says Hello (its endpoint goes to the coordinator,
// which hands the group's endpoints to every rank in the Assign). Rank 0 is the root: it
// connects a PUSH socket to every other rank; the others connect one to rank 0.
//
//   all_reduce_sum: ranks 1..N-1 send their x to rank 0, which adds them to its own in rank
//     order ((x0 + x1) + x2 ...) and sends the sum back: every rank gets the same bits, and a
//     run is reproducible whatever order the messages arrive in.
//   gather: ranks 1..N-1 send their part to rank 0, which concatenates all parts in rank order.
//
// Each collective carries a tag that is the same on every rank and increases from one
// collective to the next (the stage derives it from the plan's seq and the collective's index in
// the forward). A message with a tag below the one awaited belongs to a forward some rank gave
// up (the pipeline was reset) and is dropped; one above it is kept until its turn. While it waits
// a collective calls `check` (every 100 ms at most); a non-ok status ends the wait with it (the
// stage stopping, the pipeline reset), so a lost rank never hangs the others.
//
// Threads: used from one thread (the stage's compute thread), like the other channels.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "pp/status.h"
#include "pp/transport/channel.h"

namespace pp::transport {

inline constexpr uint32_t kTpMagic = 0x31545050;  // "PPT1" little-endian
inline constexpr uint16_t kTpVersion = 1;

class TpChannel {
 public:
  // Binds this rank's PULL socket; "tcp://HOST:0" picks a free port (endpoint() says which).
  static Result<TpChannel> bind(const std::string& endpoint, const ChannelOptions& options = {});
  TpChannel(TpChannel&&) noexcept;
  TpChannel& operator=(TpChannel&&) noexcept;
  ~TpChannel();

  // The endpoint bound: what goes into Hello::tp_endpoint.
  const std::string& endpoint() const;

  // Joins the group whose ranks bound `endpoints` (in rank order) as `rank`, connecting the
  // sockets the collectives need; again after a recovery (the old connections are dropped).
  // kInvalidArgument for a rank outside the group or an endpoint that is not this one's.
  Status join(int32_t rank, const std::vector<std::string>& endpoints);
  int32_t rank() const;
  int32_t size() const;

  // x becomes the sum of every rank's x, added in rank order. kDataLoss when a peer's x has
  // another size.
  Status all_reduce_sum(uint64_t tag, std::span<float> x, const std::function<Status()>& check);
  // Rank 0's `out` becomes every rank's `part` in rank order (kDataLoss unless they fill it
  // exactly); other ranks only send.
  Status gather(uint64_t tag, std::span<const float> part, std::span<float> out,
                const std::function<Status()>& check);

 private:
  struct Impl;
  explicit TpChannel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace pp::transport
