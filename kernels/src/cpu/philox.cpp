// Philox4x32-10, the counter-based generator behind sampling: a pure function of (counter, key),
// so the draw for (seed, step) is the same on every backend, batch and thread. The CUDA twin
// must implement exactly this (see the comment on philox4x32_10 in cpu.h).
#include "pp/kernels/cpu.h"

namespace pp::kernels::cpu {
namespace {
constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;  // key schedule (Weyl) increments
constexpr int kRounds = 10;
}  // namespace

std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
  for (int round = 0; round < kRounds; ++round) {
    if (round > 0) {
      k[0] += kW0;
      k[1] += kW1;
    }
    const uint64_t p0 = uint64_t(kM0) * c[0];
    const uint64_t p1 = uint64_t(kM1) * c[2];
    c = {uint32_t(p1 >> 32) ^ c[1] ^ k[0], uint32_t(p1), uint32_t(p0 >> 32) ^ c[3] ^ k[1],
         uint32_t(p0)};
  }
  return c;
}

float philox_uniform(uint64_t seed, uint64_t step) {
  const auto r = philox4x32_10({uint32_t(step), uint32_t(step >> 32), 0u, 0u},
                               {uint32_t(seed), uint32_t(seed >> 32)});
  return float(r[0] >> 8) * (1.0f / 16777216.0f);  // 24 bits: exact in f32, < 1
}

}  // namespace pp::kernels::cpu
