// Fuzz target: the GGUF reader and what opening a .gguf model derives from it. Each input is a
// whole file image given to GgufFile::parse (the code open() runs on the mmapped file); when it
// parses, every metadata value is read through the typed getters, every tensor is converted to
// f32, and the model config, tokenizer (tokenizer.ggml.*) and chat template are built from it
// as ModelSource does, the tokenizer then encoding and decoding a fixed text.
//
// Properties checked beyond "no crash": every tensor the reader accepts lies inside the file and
// converts to f32 without error; a tokenizer built from the file only returns ids inside its
// vocabulary.
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz-util.h"
#include "pp/model/chat-template.h"
#include "pp/model/gguf.h"
#include "pp/model/model-source.h"
#include "pp/model/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace pp::model;
  auto parsed = GgufFile::parse({data, size}, "fuzz.gguf");
  if (!parsed.ok()) return 0;
  const GgufFile& f = **parsed;

  for (const auto& [key, value] : f.metadata()) {
    PP_FUZZ_CHECK(f.find(key) == &value);
    (void)f.get_string(key);
    (void)f.get_int(key);
    (void)f.get_float(key);
    (void)f.get_bool(key);
    (void)f.get_string_array(key);
    (void)f.get_int_array(key);
    (void)f.get_float_array(key);
  }
  for (const GgufTensor& t : f.tensors()) {
    PP_FUZZ_CHECK(f.find_tensor(t.name) != nullptr);
    PP_FUZZ_CHECK(f.tensor_bytes(t).size() == t.nbytes);
    int64_t numel = 1;
    for (int64_t d : t.ne) numel *= d;
    std::vector<float> out(static_cast<size_t>(numel));
    PP_FUZZ_CHECK(f.read_f32(t, out).ok());
  }

  (void)config_from_gguf(f);
  if (auto tpl = f.get_string("tokenizer.chat_template"); tpl.ok()) {
    (void)ChatTemplate::from_jinja(*tpl, "<s>", "</s>");
  }
  auto tok = Tokenizer::from_gguf(f);
  if (!tok.ok()) return 0;
  const int64_t n_vocab = (*tok)->vocab_size();
  for (bool add_special : {false, true}) {
    const std::vector<int32_t> ids =
        (*tok)->encode("Hello, world! <|im_start|>user\n caf\xc3\xa9 12345\xff", add_special);
    for (int32_t id : ids) PP_FUZZ_CHECK(id >= 0 && id < n_vocab);
    (void)(*tok)->decode(ids, add_special);
  }
  (void)(*tok)->to_hf_json();
  return 0;
}
