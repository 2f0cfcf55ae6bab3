// StageRegistry: the coordinator's table of stage slots, one per stage of the pipeline. A slot
// is empty until a worker's Hello takes it, and empty again from the moment its stage is lost,
// so a lost process's late messages match no stage. Each slot follows one worker through the
// registration protocol: joined (Hello) -> assigned (Assign sent) -> loaded (Loaded) -> ready
// (Ready, after AllocateKv). The same table and the same steps serve the first start and every
// recovery. Used on the coordinator thread only.
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
  explicit StageRegistry(int32_t n_stages = 0) : slots_(size_t(n_stages)) {}

  int32_t size() const { return int32_t(slots_.size()); }
  StageSlot& operator[](int32_t k) { return slots_[size_t(k)]; }
  const StageSlot& operator[](int32_t k) const { return slots_[size_t(k)]; }
  // The stage a peer holds; -1 for none.
  int32_t stage_of(const transport::PeerId& peer) const;

  // A worker's Hello: the stage it asked for (or the first empty one for -1), if that slot is
  // empty; else the reason it is refused (a line for the worker's Shutdown).
  Result<int32_t> admit(const transport::PeerId& peer, const transport::Hello& hello);
  // Empties stage k's slot (its worker is lost).
  void vacate(int32_t k) { slots_[size_t(k)] = StageSlot{}; }
  void clear_ready();

  bool all_joined() const;
  bool all_loaded() const;
  bool all_ready() const;
  // "stage 1 (not joined), stage 2 (not ready)": the slots not ready yet, for errors.
  std::string describe_missing() const;

 private:
  std::vector<StageSlot> slots_;
};

}  // namespace pp::pipeline
