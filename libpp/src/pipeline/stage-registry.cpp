// The stage slots: admission by Hello, and the questions the registration loop asks.
#include "stage-registry.h"

#include <algorithm>

#include <fmt/format.h>

namespace pp::pipeline {

int32_t StageRegistry::stage_of(const transport::PeerId& peer) const {
  for (size_t k = 0; k < slots_.size(); ++k) {
    if (slots_[k].joined() && slots_[k].peer == peer) return int32_t(k);
  }
  return -1;
}

Result<int32_t> StageRegistry::admit(const transport::PeerId& peer, const transport::Hello& h) {
  int32_t k = h.stage;
  if (k < 0) {
    for (size_t i = 0; i < slots_.size(); ++i) {
      if (!slots_[i].joined()) {
        k = int32_t(i);
        break;
      }
    }
    if (k < 0) return make_error(StatusCode::kAlreadyExists, "the pipeline is complete");
  }
  if (k >= size()) {
    return invalid_argument("this pipeline has {} stages (0..{})", size(), size() - 1);
  }
  if (h.rank > 0) {
    return invalid_argument("stage {} has one device; there is no rank {}", k, h.rank);
  }
  if (slots_[size_t(k)].joined()) {
    return make_error(StatusCode::kAlreadyExists, "stage {} is taken", k);
  }
  StageSlot& s = slots_[size_t(k)];
  s = StageSlot{};
  s.peer = peer;
  s.hello = h;
  return k;
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
    missing += fmt::format("{}stage {} ({})", missing.empty() ? "" : ", ", k,
                           !s.joined() ? "not joined"
                           : !s.loaded ? "not loaded"
                                       : "not ready");
  }
  return missing;
}

}  // namespace pp::pipeline
