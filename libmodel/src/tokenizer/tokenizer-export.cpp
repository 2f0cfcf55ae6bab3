// A tokenizer as Hugging Face files (see tokenizer-export.h). Whether BOS / EOS are added is
// read from the tokenizer itself (what encode(text, add_special=true) adds), so that the config
// agrees with the post-processor that to_hf_json writes.
#include "pp/model/tokenizer-export.h"

#include <fstream>
#include <system_error>

namespace pp::model {

namespace {

Status write_json(const std::filesystem::path& path, const nlohmann::json& j) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return internal_error("cannot write '{}'", path.string());
  out << j.dump(2, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace);
  out.close();
  if (!out) return internal_error("cannot write '{}'", path.string());
  return ok_status();
}

}  // namespace

nlohmann::json hf_tokenizer_config(const Tokenizer& tok, const std::string& chat_template,
                                   int64_t model_max_length) {
  nlohmann::json c;
  c["tokenizer_class"] = "PreTrainedTokenizerFast";
  c["clean_up_tokenization_spaces"] = false;
  const std::optional<int32_t> bos = tok.bos_id(), eos = tok.eos_id();
  c["bos_token"] = bos ? nlohmann::json(tok.id_to_token(*bos)) : nlohmann::json();
  c["eos_token"] = eos ? nlohmann::json(tok.id_to_token(*eos)) : nlohmann::json();
  // What pp adds: compare a text encoded with and without the special tokens.
  const std::vector<int32_t> plain = tok.encode("a", false), with = tok.encode("a", true);
  c["add_bos_token"] = bos && with.size() > plain.size() && with.front() == *bos;
  c["add_eos_token"] = eos && with.size() > plain.size() && with.back() == *eos;
  if (model_max_length > 0) c["model_max_length"] = model_max_length;
  if (!chat_template.empty()) c["chat_template"] = chat_template;
  return c;
}

Status export_hf_tokenizer(const Tokenizer& tok, const std::string& chat_template,
                           int64_t model_max_length, const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return internal_error("cannot create '{}': {}", dir.string(), ec.message());
  PP_RETURN_IF_ERROR(write_json(dir / "tokenizer.json", tok.to_hf_json()));
  return write_json(dir / "tokenizer_config.json",
                    hf_tokenizer_config(tok, chat_template, model_max_length));
}

}  // namespace pp::model
