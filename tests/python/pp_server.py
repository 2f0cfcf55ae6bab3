"""Helpers for the Python end-to-end tests: where the build and the default model are, a tiny
chat model whose byte-level tokenizer fits its 256-token vocabulary, a pp-serve process on a
free port (its stderr in a file; stopped with SIGTERM, killed with its stages on failure), and
the module fixture the openai-client tests share: that process on the default model."""
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

SOURCE_DIR = Path(os.environ.get("PP_SOURCE_DIR", Path(__file__).resolve().parents[2]))
BUILD_DIR = Path(os.environ.get("PP_BUILD_DIR", SOURCE_DIR / "build"))
SERVE = BUILD_DIR / "tools" / "pp-serve"


def default_model_path() -> Path:
    d = os.environ.get("PP_MODEL_DIR") or str(Path.home() / ".cache" / "pp" / "models")
    return Path(d) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _byte_chars():
    """GPT-2's byte-to-unicode map."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def make_tiny_chat_model(dst: Path) -> Path:
    """tests/fixtures/models/tiny-llama with a byte-level tokenizer: ids 0..252 are the bytes
    0x00..0xFC, 253 <|endoftext|> (BOS), 254 <|im_start|>, 255 <|im_end|> (EOS), ChatML."""
    src = SOURCE_DIR / "tests" / "fixtures" / "models" / "tiny-llama"
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "model.safetensors", dst / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    config["bos_token_id"], config["eos_token_id"] = 253, 255
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    chars = _byte_chars()
    vocab = {chars[b]: b for b in range(253)}
    added = []
    for i, tok in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]):
        vocab[tok] = 253 + i
        added.append({"id": 253 + i, "content": tok, "single_word": False, "lstrip": False,
                      "rstrip": False, "normalized": False, "special": True})
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    tokenizer = {"version": "1.0", "added_tokens": added, "normalizer": None,
                 "pre_tokenizer": byte_level, "post_processor": None, "decoder": byte_level,
                 "model": {"type": "BPE", "dropout": None, "unk_token": None, "fuse_unk": False,
                           "byte_fallback": False, "vocab": vocab, "merges": []}}
    (dst / "tokenizer.json").write_text(json.dumps(tokenizer))
    template = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
                "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    (dst / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "chat_template": template}))
    return dst


class ServeProcess:
    """pp-serve --port 0 ARGS in its own process group."""

    def __init__(self, args, log_path: Path, timeout=120):
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([str(SERVE), "--port", "0", *map(str, args)],
                                     stdout=subprocess.DEVNULL, stderr=self.log,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(r"listening on http://[^:]+:(\d+)", log_path.read_text())
            if m:
                self.port = int(m.group(1))
                self.url = f"http://127.0.0.1:{self.port}"
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"pp-serve exited early:\n{log_path.read_text()}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"pp-serve did not start:\n{log_path.read_text()}")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def terminate(self, timeout=60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        self.log.close()


def serve_default_model(tmp_path_factory, tmp_name: str, *args):
    """The body of a module-scoped pytest fixture (`yield from` it): pp-serve on the default model
    with 2 stages, served as "smol", plus ARGS; skips the module when the model is missing, and
    checks that SIGTERM stops the server cleanly."""
    import pytest
    model = default_model_path()
    if not model.exists():
        pytest.skip(f"the default model is missing: {model} (scripts/fetch-model.sh)")
    tmp = tmp_path_factory.mktemp(tmp_name)
    srv = ServeProcess(["--model", model, "--pp", "2", *args, "--served-model-name", "smol",
                        "--db", tmp / "runs.db"], tmp / "serve.log")
    yield srv
    assert srv.terminate() == 0, srv.log_path.read_text()


def openai_client(server: ServeProcess, api_key: str, timeout: float):
    """The official openai client on SERVER's /v1, without retries."""
    import openai
    return openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0,
                         timeout=timeout)
