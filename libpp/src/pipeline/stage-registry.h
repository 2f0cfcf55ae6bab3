// StageRegistry: the coordinator's table of worker slots, one per rank of each stage (P stages of
// N tensor-parallel ranks: worker w = stage * N + rank). A slot is empty until a worker's Hello
// takes it, and empty again from the moment its stage is lost (the loss of any rank is the loss
// of its stage: every rank of it is vacated), so a lost process's late messages match no slot. Each
// slot follows one worker through the registration protocol: joined (Hello) -> assigned (Assign
// sent) -> loaded (Loaded) -> ready (Ready, after AllocateKv). The same table and the same steps
// serve the first start and every recovery. Used on the coordinator thread only.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "pp/status.h"
#include "pp/transport/channel.h"
#include "pp/transport/messages.h"

namespace pp::pipeline {

struct StageSlot {
  transport::PeerId peer;  // empty: no worker holds this stage now
  transport::Hello hello;
  std::optional<transport::Loaded> loaded;
  bool assigned = false;  // sent an Assign since it joined
  bool ready = false;     // Ready since the last AllocateKv
  std::string told_next;  // next_data_endpoint of its last Assign

  bool joined() const { return !peer.empty(); }
};

class StageRegistry {
 public:
  explicit StageRegistry(int32_t n_stages = 0, int32_t tp = 1)
      : tp_(tp), slots_(size_t(n_stages) * size_t(tp)) {}

  // Workers (slots), stages, and ranks per stage.
  int32_t size() const { return int32_t(slots_.size()); }
  int32_t n_stages() const { return size() / tp_; }
  int32_t tp() const { return tp_; }
  int32_t stage(int32_t w) const { return w / tp_; }
  int32_t rank(int32_t w) const { return w % tp_; }
  int32_t worker(int32_t stage, int32_t rank) const { return stage * tp_ + rank; }
  StageSlot& operator[](int32_t w) { return slots_[size_t(w)]; }
  const StageSlot& operator[](int32_t w) const { return slots_[size_t(w)]; }
  // The worker slot a peer holds, and its stage; -1 for none.
  int32_t worker_of(const transport::PeerId& peer) const;
  int32_t stage_of(const transport::PeerId& peer) const {
    const int32_t w = worker_of(peer);
    return w < 0 ? -1 : stage(w);
  }

  // A worker's Hello: the stage and rank it asked for (-1: the first empty one), if that slot
  // is empty; else the reason it is refused (a line for the worker's Shutdown). The worker slot.
  Result<int32_t> admit(const transport::PeerId& peer, const transport::Hello& hello);
  // Empties every rank's slot of stage k (it is lost).
  void vacate(int32_t k) {
    for (int32_t r = 0; r < tp_; ++r) slots_[size_t(worker(k, r))] = StageSlot{};
  }
  void clear_ready();

  bool all_joined() const;
  bool all_loaded() const;
  bool all_ready() const;
  // "stage 1 (not joined), stage 2 (not ready)": the slots not ready yet, for errors.
  std::string describe_missing() const;
  // "stage 2" or, with several ranks, "stage 2 rank 1".
  std::string name(int32_t w) const;

 private:
  int32_t tp_ = 1;
  std::vector<StageSlot> slots_;
};

}  // namespace pp::pipeline
