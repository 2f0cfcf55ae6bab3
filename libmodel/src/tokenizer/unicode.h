// UTF-8 helpers for the tokenizer: strict validation (the same rules PCRE2 applies, so a run we
// call valid can be handed to PCRE2 without its own check), lossy conversion that replaces each
// maximal invalid subpart with U+FFFD (what Rust's String::from_utf8_lossy, and so Hugging Face
// `tokenizers`, does), and GPT-2's byte-to-unicode mapping used by byte-level BPE.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pp::model::tok {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// Length of the valid UTF-8 sequence starting at s[i], or 0 when the bytes there are not one.
size_t utf8_valid_len(std::string_view s, size_t i);
// Length of the character at s[i], counting an invalid byte as a one-byte character.
inline size_t utf8_char_len(std::string_view s, size_t i) {
  size_t n = utf8_valid_len(s, i);
  return n == 0 ? 1 : n;
}
bool utf8_is_valid(std::string_view s);
// Decodes the valid sequence at s[i] (utf8_valid_len(s, i) > 0).
uint32_t utf8_decode(std::string_view s, size_t i);
void utf8_append(std::string& out, uint32_t cp);
// s with every maximal invalid subpart replaced by U+FFFD.
std::string utf8_lossy(std::string_view s);
// Bytes at the end of s that start a multi-byte sequence still missing continuation bytes
// (0 when s ends on a complete character or on bytes that can never complete).
size_t utf8_incomplete_tail(std::string_view s);

// GPT-2's reversible map from each byte to a printable code point, as UTF-8 strings.
const std::array<std::string, 256>& byte_to_unicode();
// The inverse: the byte a code point stands for, or -1 when it is not one of the 256.
int unicode_to_byte(uint32_t cp);

}  // namespace pp::model::tok
