// The version of pp, shared by every tool's --version.
#pragma once

namespace pp {
const char* version_string();  // "0.1.0"
}
