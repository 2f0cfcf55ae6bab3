// Helpers shared by the GoogleTest binaries: where the sources, fixtures and the default model
// are, fresh random inputs, and the |a-b| <= atol + rtol*|ref| comparison.
#pragma once

#include <cstdint>
#include <filesystem>
#include <random>
#include <span>
#include <string>
#include <vector>

namespace pp::test {

std::filesystem::path source_dir();
std::filesystem::path fixture_dir();  // tests/fixtures
// The default model (SmolLM2-135M-Instruct Q4_1 GGUF) fetched by scripts/fetch-model.sh:
// $PP_MODEL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf, default ~/.cache/pp/models.
std::filesystem::path default_model_path();
// A fresh temporary directory, removed when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// A generator seeded from std::random_device (printed on failure via the test's name/seed).
std::mt19937_64& rng();
uint64_t rng_seed();
std::vector<float> random_floats(size_t n, float lo = -1.0f, float hi = 1.0f);
// A uniform integer in [lo, hi].
inline int64_t random_int(int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(rng());
}

// Index of the first element where |a-b| > atol + rtol*|ref|, or -1 when all are close (equal
// values, infinities included, always are).
int64_t first_mismatch(std::span<const float> got, std::span<const float> ref, double atol,
                       double rtol);

std::vector<uint8_t> read_file_bytes(const std::filesystem::path& p);

}  // namespace pp::test
