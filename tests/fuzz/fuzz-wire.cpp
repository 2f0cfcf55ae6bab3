// Fuzz target: the stage message decoder (transport/wire.h). Each input is one frame given to
// decode(), as a stage or the coordinator does with every message it receives.
//
// Properties checked beyond "no crash": a refused frame is kDataLoss (malformed) or
// kUnimplemented (another wire version); an accepted frame encodes back to exactly its own
// bytes (the format has one encoding per message), and encoded_size() agrees.
#include <cstdint>
#include <cstring>
#include <vector>

#include "fuzz-util.h"
#include "pp/transport/wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pp::transport;
  auto m = decode({data, size});
  if (!m.ok()) {
    const pp::StatusCode c = m.status().code();
    PP_FUZZ_CHECK(c == pp::StatusCode::kDataLoss || c == pp::StatusCode::kUnimplemented);
    PP_FUZZ_CHECK(!m.status().message().empty());
    return 0;
  }
  (void)message_name(*m);
  PP_FUZZ_CHECK(encoded_size(*m) == size);
  const std::vector<uint8_t> again = encode(*m);
  PP_FUZZ_CHECK(again.size() == size && std::memcmp(again.data(), data, size) == 0);
  return 0;
}
