// Sizes as people write them: "80GiB", "512MiB", "1.5GB", "4096" (bytes). Binary suffixes
// (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones (KB, MB, GB, TB) powers of 1000; "K", "M",
// "G", "T" alone are binary. Case-insensitive; a trailing "B" alone means bytes.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "pp/status.h"

namespace pp::partition {

// kInvalidArgument naming the text when it is not a size.
Result<uint64_t> parse_byte_size(std::string_view text);
// "1.50 GiB", "512.0 MiB", "12 B": three significant digits, binary units.
std::string format_bytes(double bytes);

}  // namespace pp::partition
