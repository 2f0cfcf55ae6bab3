// The scheduler tests' fake model: a token for each (request, generation step), a fixed function
// of the two, so that a test knows every output without running a model.
#pragma once

#include <cstdint>

namespace pp::test {

// splitmix64's finaliser: a well-mixed 64-bit function of x.
inline uint64_t mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// What the fake model samples for request `id` at generation step `step`.
inline int32_t fake_token(uint64_t id, uint64_t step, int32_t n_vocab) {
  return int32_t(mix(id * 1000003ull + step) % uint64_t(n_vocab));
}

}  // namespace pp::test
