// The control-plane wire format: every Message (messages.h) as one frame
//
//   header  magic u32 (kWireMagic) | version u16 (kWireVersion) | type u16 | body length u32
//   body    the message's fields in declaration order, little-endian; integers and floats at
//           their own width, bool as one byte 0/1, strings and vectors as a u32 count followed
//           by the elements (vectors of structs: each element's fields in turn)
//
// decode() trusts nothing: it checks the magic, the version (a newer one is kUnimplemented,
// naming both), the type, that the body length is exactly what follows the header, every count
// against the bytes left BEFORE allocating (so a frame of N bytes never makes it allocate much
// more than N), bool bytes, and that no byte is left over. Floats may hold any bit pattern.
// Failures are one-line kDataLoss statuses such as
//   malformed 'Plan' message: entry 3 token_ids length 4294967295 exceeds frame (20 bytes left)
//
// Type numbers are part of the format: never renumber a type, only append new ones. Adding a
// field to a message changes the format and needs a kWireVersion bump.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "pp/status.h"
#include "pp/transport/messages.h"

namespace pp::transport {

inline constexpr size_t kWireHeaderBytes = 12;

// The type field of the header. Values are fixed forever.
enum class MessageType : uint16_t {
  kHello = 1,
  kAssign = 2,
  kLoaded = 3,
  kAllocateKv = 4,
  kReady = 5,
  kPlan = 6,
  kTokens = 7,
  kStageTiming = 8,
  kHeartbeat = 9,
  kStageError = 10,
  kShutdown = 11,
};

MessageType message_type(const Message& m);
// "Plan", "Tokens", ...; "?" for a value that is not a MessageType.
const char* message_type_name(MessageType type);
inline const char* message_name(const Message& m) { return message_type_name(message_type(m)); }

// Encodes `m` into `out` (cleared first; its capacity is reused, so a caller that keeps one
// buffer per channel does not allocate once the buffer has grown).
void encode(const Message& m, std::vector<uint8_t>& out);
std::vector<uint8_t> encode(const Message& m);

// Exact size of encode(m), header included.
size_t encoded_size(const Message& m);

// Decodes one frame. kDataLoss for a malformed frame, kUnimplemented for another wire version.
Result<Message> decode(std::span<const uint8_t> frame);

}  // namespace pp::transport
