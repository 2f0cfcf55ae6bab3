// The stage slots: admission by Hello, and the questions the registration loop asks.
#include "stage-registry.h"

#include <algorithm>

#include <fmt/format.h>

namespace pp::pipeline {

int32_t StageRegistry::worker_of(const transport::PeerId& peer) const {
  for (size_t k = 0; k < slots_.size(); ++k) {
    if (slots_[k].joined() && slots_[k].peer == peer) return int32_t(k);
  }
  return -1;
}

Result<int32_t> StageRegistry::admit(const transport::PeerId& peer, const transport::Hello& h) {
  if (h.stage >= n_stages()) {
    return invalid_argument("this pipeline has {} stages (0..{})", n_stages(), n_stages() - 1);
  }
  if (h.rank >= tp_) {
    if (tp_ == 1)
      return invalid_argument("a stage has one device here; there is no rank {}", h.rank);
    return invalid_argument("a stage has {} ranks here (0..{}); there is no rank {}", tp_, tp_ - 1,
                            h.rank);
  }
  // The first empty slot that matches what the worker asked for.
  int32_t w = -1;
  for (int32_t i = 0; i < size() && w < 0; ++i) {
    if ((h.stage < 0 || stage(i) == h.stage) && (h.rank < 0 || rank(i) == h.rank) &&
        !slots_[size_t(i)].joined()) {
      w = i;
    }
  }
  if (w < 0) {
    if (h.stage < 0 && h.rank < 0) {
      return make_error(StatusCode::kAlreadyExists, "the pipeline is complete");
    }
    return make_error(StatusCode::kAlreadyExists, "{}{} is taken",
                      h.stage >= 0 ? fmt::format("stage {}", h.stage) : "every stage",
                      h.rank >= 0 && tp_ > 1 ? fmt::format(" rank {}", h.rank) : "");
  }
  StageSlot& s = slots_[size_t(w)];
  s = StageSlot{};
  s.peer = peer;
  s.hello = h;
  return w;
}

std::string StageRegistry::name(int32_t w) const {
  return tp_ == 1 ? fmt::format("stage {}", w) : fmt::format("stage {} rank {}", stage(w), rank(w));
}

void StageRegistry::clear_ready() {
  for (StageSlot& s : slots_) s.ready = false;
}

bool StageRegistry::all_joined() const {
  return std::all_of(slots_.begin(), slots_.end(), [](const StageSlot& s) { return s.joined(); });
}

bool StageRegistry::all_loaded() const {
  return std::all_of(slots_.begin(), slots_.end(),
                     [](const StageSlot& s) { return s.loaded.has_value(); });
}

bool StageRegistry::all_ready() const {
  return std::all_of(slots_.begin(), slots_.end(), [](const StageSlot& s) { return s.ready; });
}

std::string StageRegistry::describe_missing() const {
  std::string missing;
  for (size_t k = 0; k < slots_.size(); ++k) {
    const StageSlot& s = slots_[k];
    if (s.joined() && s.ready) continue;
    missing += fmt::format("{}{} ({})", missing.empty() ? "" : ", ", name(int32_t(k)),
                           !s.joined() ? "not joined"
                           : !s.loaded ? "not loaded"
                                       : "not ready");
  }
  return missing;
}

}  // namespace pp::pipeline
