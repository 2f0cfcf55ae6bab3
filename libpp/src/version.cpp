// The version string, from the CMake project version.
#include "pp/version.h"

namespace pp {
const char* version_string() { return "0.1.0"; }
}  // namespace pp
