#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/), a few small files
each: valid inputs of every kind a target parses, so that libFuzzer starts from deep inside the
parsers rather than from random bytes. Deterministic: running it again gives the same files.

The formats are written here by hand from their specifications (safetensors, GGUF v3, pp's
partition.json and wire format: see the headers named below), independently of the C++ code.

    python3 scripts/make-fuzz-corpus.py [OUT_DIR]   (default tests/fuzz/corpus)
"""
import json
import os
import re
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(out, target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- safetensors (libmodel/include/pp/model/safetensors.h) -----------------------------------
def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def make_safetensors(out):
    t = "safetensors"
    f32 = struct.pack("<6f", 0.5, -1.25, 3.0, 1e-3, -7.5, 2.0)
    bf16 = bytes([0x80, 0x3F, 0x00, 0xC0, 0x49, 0x40, 0x00, 0x00])
    f16 = struct.pack("<4H", 0x3C00, 0xC000, 0x7BFF, 0x0001)
    write(out, t, "mixed.safetensors", safetensors([
        ("model.embed_tokens.weight", "F32", [2, 3], f32),
        ("model.norm.weight", "BF16", [4], bf16),
        ("lm_head.weight", "F16", [2, 2], f16),
        ("ids", "I64", [2], struct.pack("<2q", -3, 9)),
        ("mask", "BOOL", [3], bytes([1, 0, 1])),
        ("bytes", "U8", [2], bytes([7, 255])),
        ("scalar", "F64", [], struct.pack("<d", 3.5)),
        ("halfwords", "I16", [2], struct.pack("<2h", -2, 300)),
        ("words", "I32", [1, 1], struct.pack("<i", 123456)),
        ("small", "I8", [2], struct.pack("<2b", -1, 5)),
    ], {"format": "pt", "pp.stage": "0"}))
    write(out, t, "empty.safetensors", safetensors([], {}))
    write(out, t, "zero-dim.safetensors", safetensors([("e", "F32", [0, 4], b"")]))
    # Index files (the target opens them next to two fixed shards, shard-1 and shard-2).
    write(out, t, "index.json", json.dumps({
        "metadata": {"total_size": 40},
        "weight_map": {"a.weight": "shard-1.safetensors", "b.weight": "shard-2.safetensors",
                       "c.weight": "shard-2.safetensors"}}))
    write(out, t, "index-missing.json", json.dumps({
        "weight_map": {"a.weight": "shard-1.safetensors", "z": "shard-9.safetensors"}}))


# --- GGUF v3 (libmodel/include/pp/model/gguf.h) ----------------------------------------------
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gval(vtype, v):
    if vtype == STR:
        return gstr(v)
    if vtype == ARR:
        etype, items = v
        return struct.pack("<IQ", etype, len(items)) + b"".join(gval(etype, x) for x in items)
    fmt = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?",
           U64: "Q", I64: "q", F64: "d"}[vtype]
    return struct.pack("<" + fmt, v)


def gguf(kvs, tensors, alignment=32):
    """kvs: list of (key, type, value); tensors: list of (name, ne, ggml type, raw bytes)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for key, vtype, v in kvs:
        out += gstr(key) + struct.pack("<I", vtype) + gval(vtype, v)
    offset, blobs = 0, []
    for name, ne, gtype, raw in tensors:
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", gtype, offset)
        blobs.append(raw + b"\0" * (-len(raw) % alignment))
        offset += len(blobs[-1])
    out += b"\0" * (-len(out) % alignment)
    return out + b"".join(blobs)


def tiny_vocab():
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tokens += ["<0x%02X>" % b for b in (0x0A, 0x20, 0xE2, 0x96, 0x81)]
    tokens += ["a", "b", "c", "h", "e", "l", "o", "\u0120", "\u2581", "he", "ll", "\u0120h",
               "hel", "hell", "hello", "\u2581h", "\u2581hello"]
    return tokens


def make_gguf(out):
    t = "gguf"
    tokens = tiny_vocab()
    types = [2, 3, 3, 3, 3] + [6] * 5 + [1] * (len(tokens) - 10)
    common = [
        ("general.architecture", STR, "llama"),
        ("general.name", STR, "fuzz seed"),
        ("general.alignment", U32, 32),
        ("llama.block_count", U32, 1),
        ("llama.context_length", U32, 64),
        ("llama.embedding_length", U32, 32),
        ("llama.feed_forward_length", U32, 64),
        ("llama.attention.head_count", U32, 4),
        ("llama.attention.head_count_kv", U32, 2),
        ("llama.rope.freq_base", F32, 10000.0),
        ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
        ("tokenizer.ggml.tokens", ARR, (STR, tokens)),
        ("tokenizer.ggml.token_type", ARR, (I32, types)),
        ("tokenizer.ggml.bos_token_id", U32, 1),
        ("tokenizer.ggml.eos_token_id", U32, 2),
        ("tokenizer.chat_template", STR,
         "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
         "{% endfor %}"),
    ]
    q8_0 = struct.pack("<H", 0x3C00) + bytes((i * 7 - 16) % 256 for i in range(32))
    q4_0 = struct.pack("<H", 0x3800) + bytes((i * 37) % 256 for i in range(16))
    q4_k = struct.pack("<HH", 0x3C00, 0x3400) + bytes((i * 11) % 64 for i in range(12))
    q4_k += bytes((i * 29) % 256 for i in range(128))
    q6_k = bytes((i * 13) % 256 for i in range(192)) + bytes((i % 7) for i in range(16))
    q6_k += struct.pack("<H", 0x3C00)
    tensors = [
        ("token_embd.weight", [4, 2], 0, struct.pack("<8f", *[0.25 * i - 1 for i in range(8)])),
        ("blk.0.attn_norm.weight", [4], 1, struct.pack("<4H", 0x3C00, 0xBC00, 0x4000, 0x0400)),
        ("blk.0.attn_q.weight", [32, 1], 8, q8_0),
        ("blk.0.attn_k.weight", [32, 1], 2, q4_0),
        ("blk.0.ffn_up.weight", [256, 1], 12, q4_k),
        ("blk.0.ffn_down.weight", [256, 1], 14, q6_k),
        ("output_norm.weight", [2], 30, struct.pack("<2H", 0x3F80, 0xC000)),
    ]
    merges = ["h e", "l l", "he ll", "hell o", "\u0120 h", "hel l"]
    write(out, t, "gpt2.gguf", gguf(common + [
        ("tokenizer.ggml.model", STR, "gpt2"),
        ("tokenizer.ggml.pre", STR, "smollm"),
        ("tokenizer.ggml.merges", ARR, (STR, merges)),
    ], tensors))
    scores = [0.0] * 10 + [-float(i) for i in range(len(tokens) - 10)]
    write(out, t, "spm.gguf", gguf(common + [
        ("tokenizer.ggml.model", STR, "llama"),
        ("tokenizer.ggml.scores", ARR, (F32, scores)),
        ("tokenizer.ggml.add_space_prefix", BOOL, True),
    ], tensors[:2]))
    # Every metadata value type, v3, no tensors.
    write(out, t, "values.gguf", gguf([
        ("u8", U8, 200), ("i8", I8, -100), ("u16", U16, 60000), ("i16", I16, -30000),
        ("u32", U32, 4000000000), ("i32", I32, -2000000000), ("f32", F32, 1.5),
        ("bool", BOOL, True), ("str", STR, "h\u00e9llo"), ("u64", U64, 2**63 + 5),
        ("i64", I64, -2**62), ("f64", F64, -0.25),
        ("arr.i64", ARR, (I64, [1, -2, 3])), ("arr.f32", ARR, (F32, [0.5, 1.5])),
        ("arr.bool", ARR, (BOOL, [True, False])), ("arr.u8", ARR, (U8, [1, 2, 3])),
        ("arr.str", ARR, (STR, ["a", "", "bc"])), ("arr.empty", ARR, (U32, [])),
    ], []))


# --- partition.json (libpp/include/pp/partition/manifest.h) ----------------------------------
def make_partition(out):
    t = "partition"
    config = {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 1,
              "eos_token_id": 2, "head_dim": 16, "hidden_act": "silu", "hidden_size": 64,
              "intermediate_size": 160, "max_position_embeddings": 512, "mlp_bias": False,
              "model_type": "llama", "num_attention_heads": 4, "num_hidden_layers": 3,
              "num_key_value_heads": 2, "rms_norm_eps": 1e-05, "rope_scaling": None,
              "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
              "vocab_size": 256}

    def stage(i, begin, end, n_layer, tied=False):
        last = end == n_layer
        return {"bytes": 120168 + i, "device_memory": 0, "embedding": i == 0,
                "est_time_s": 2.25e-08, "file": "stage-%d.safetensors" % i,
                "flops_per_token": 348160.0, "index": i, "kv_bytes_per_token": 128,
                "layers": {"begin": begin, "end": end}, "lm_head": last,
                "lm_head_tensor": ("model.embed_tokens.weight" if tied else "lm_head.weight")
                if last else "",
                "n_tensors": 10, "params": 59520, "sha256": "%064x" % (i + 1),
                "weight_bytes": 119040}

    def manifest(cfg, stages, strategy="even"):
        return {"chat_template": "{{ messages }}", "config": cfg, "created": "2025-01-31T12:00:00Z",
                "dtype": "bf16", "format": "pp-partition", "format_version": 1,
                "plan": {"cost_model": {"attention_context": 1024, "bandwidth": 4.8e12,
                                        "min_kv_tokens": 4096, "peak_flops": 9.89e14,
                                        "tokens_per_step": 64.0},
                         "n_layer": cfg["num_hidden_layers"], "strategy": strategy},
                "pp_version": "0.1.0",
                "source": {"checksum_of": "model.safetensors", "kind": "hf", "path": "/models/x",
                           "sha256": "%064x" % 7},
                "stages": stages,
                "tokenizer": {"config_file": "tokenizer_config.json", "config_sha256": "%064x" % 9,
                              "file": "tokenizer.json", "sha256": "%064x" % 8}}

    write(out, t, "three-stages.json", json.dumps(manifest(
        config, [stage(0, 0, 1, 3), stage(1, 1, 2, 3), stage(2, 2, 3, 3)])))
    tied = dict(config, tie_word_embeddings=True)
    write(out, t, "one-stage-tied.json", json.dumps(manifest(tied, [stage(0, 0, 3, 3, True)])))
    with open(os.path.join(ROOT, "tests/fixtures/configs/qwen3-8b.json")) as f:
        qwen3 = json.load(f)
    n = qwen3["num_hidden_layers"]
    write(out, t, "qwen3-manual.json", json.dumps(manifest(
        qwen3, [stage(0, 0, 10, n), stage(1, 10, n, n)], "manual")))
    llama3 = dict(config, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 8192})
    write(out, t, "llama3.json", json.dumps(manifest(
        llama3, [stage(0, 0, 2, 3), stage(1, 2, 3, 3)])))
    write(out, t, "gap.json", json.dumps(manifest(config, [stage(0, 0, 1, 3), stage(1, 2, 3, 3)])))


# --- tokenizer (tests/fuzz/fuzz-tokenizer.cpp: byte 0 picks the tokenizer, the rest is text and,
# read as little-endian int32, ids) -----------------------------------------------------------
def make_tokenizer(out):
    t = "tokenizer"
    texts = ["Hello, world! It's 2025 and we're testing   spaces.\n\tTabs too.",
             "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
             "Caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001F600 \u0645\u0631\u062d\u0628\u0627",
             "<s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nhi [/INST]</s>"]
    for k, text in enumerate(texts):
        for tok in range(4):
            if (k + tok) % 2 == 0:
                write(out, t, "text-%d-%d" % (k, tok), bytes([tok]) + text.encode())
    write(out, t, "invalid-utf8", bytes([1]) + b"ab\xff\xfe\xc3(\xe2\x82 \xf0\x9f\x98")
    ids = struct.pack("<8i", 15496, 11, 995, 0, 1, 2, 50256, 198)
    write(out, t, "ids-gpt2", bytes([0]) + ids)
    write(out, t, "ids-out-of-vocab", bytes([2]) + struct.pack("<4i", -1, 2**31 - 1, 5, -2**31))


# --- HTTP request bodies (libpp/include/pp/server/openai-protocol.h; byte 0 picks the
# endpoint) -----------------------------------------------------------------------------------
def make_http(out):
    t = "http"
    bodies = [
        (0, {"model": "m", "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0.7,
             "top_p": 0.9, "stop": ["\n", "The end"], "n": 2, "logprobs": 3, "seed": 42}),
        (0, {"prompt": [[1, 2, 3], [4, 5]], "max_tokens": 4, "stream": True,
             "stream_options": {"include_usage": True}}),
        (1, {"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Hi!"},
                                        {"role": "assistant", "content": "Hello."},
                                        {"role": "user", "content": [{"type": "text",
                                                                      "text": "More?"}]}],
             "max_completion_tokens": 8, "frequency_penalty": 0.5, "presence_penalty": -0.5,
             "logprobs": True, "top_logprobs": 2, "stream": True}),
        (1, {"messages": [{"role": "user", "content": "x"}], "top_k": 5, "min_p": 0.1,
             "repetition_penalty": 1.1, "stop": "STOP", "ignore_eos": True}),
        (2, {"text": "The capital of France is", "sampling_params": {
            "max_new_tokens": 8, "temperature": 0, "stop": ["."], "top_k": 1},
            "return_logprob": True, "top_logprobs_num": 2}),
        (2, {"input_ids": [[1, 2], [3]], "sampling_params": {"n": 2}, "stream": True}),
    ]
    for k, (kind, body) in enumerate(bodies):
        write(out, t, "body-%d" % k, bytes([kind]) + json.dumps(body).encode())
    write(out, t, "bad-json", bytes([1]) + b'{"messages": [{"role": "user", "content": "\\ud800"')


# --- stage messages (libpp/include/pp/transport/wire.h, messages.h) --------------------------
def wire_version():
    """kWireVersion of messages.h, so that the seeds pass the version check."""
    with open(os.path.join(ROOT, "libpp/include/pp/transport/messages.h")) as f:
        m = re.search(r"kWireVersion = (\d+);", f.read())
    return int(m.group(1))


def frame(mtype, body):
    return struct.pack("<IHHI", 0x31505050, wire_version(), mtype, len(body)) + body


def wstr(s):
    b = s.encode()
    return struct.pack("<I", len(b)) + b


def wvec(fmt, xs):
    return struct.pack("<I", len(xs)) + b"".join(struct.pack("<" + fmt, x) for x in xs)


def make_wire(out):
    t = "wire"
    hello = (struct.pack("<ii", 1, 0) + wstr("host-a") + struct.pack("<i", 4242) + wstr("cpu")
             + wstr("x86") + struct.pack("<qq", 1 << 34, 1 << 33) + wstr("tcp://10.0.0.1:5000"))
    write(out, t, "hello", frame(1, hello))
    assign = (struct.pack("<ii", 1, 2) + struct.pack("<I", 1) + wstr("cuda:1") + struct.pack("<i", 0)
              + wstr("/models/p") + struct.pack("<qq", 2, 4)
              + wstr("tcp://b:1") + struct.pack("<qi", 16, 2) + wstr("") + wstr("n" * 128)
              + struct.pack("<iif??Q", 512, 256, 0.85, True, False, 0) + wstr("fp8"))
    write(out, t, "assign", frame(2, assign))
    write(out, t, "loaded", frame(3, struct.pack("<iqqd", 0, 4096, 1000, 1.5)))
    write(out, t, "allocate-kv", frame(4, struct.pack("<qq", 900, 16)))
    write(out, t, "ready", frame(5, struct.pack("<i", 1)))
    sampling = (struct.pack("<fffifffQi", 0.7, 0.9, 0.05, 40, 0.1, 0.2, 1.1, 1234, 2)
                + wvec("i", [3, 11]) + wvec("f", [1.5, -100.0]))

    def entry(rid, ids):
        return (struct.pack("<Qii", rid, 7, len(ids)) + wvec("i", [3, 4]) + struct.pack("<??Q", True, True, 9)
                + sampling + wvec("i", ids) + wvec("i", [5, 6]) + wvec("i", [7])
                + wvec("I", [0xFFFFFFFF, 0x0000FFFF]))

    plan = struct.pack("<Qi", 77, 1) + struct.pack("<I", 2) + entry(5, [1, 2, 3]) + entry(6, [9])
    plan += wvec("Q", [3, 4])
    write(out, t, "plan", frame(6, plan))
    tok = struct.pack("<Qif", 5, 17, -0.5) + wvec("i", [17, 3]) + wvec("f", [-0.5, -2.0])
    write(out, t, "tokens", frame(7, struct.pack("<Qi", 77, 1) + struct.pack("<I", 1) + tok))
    write(out, t, "stage-timing", frame(8, struct.pack("<iQiqqqqi", 1, 77, 1, 10, 20, 30, 40, 5)))
    write(out, t, "heartbeat", frame(9, struct.pack("<iq", -1, 1700000000000000)))
    write(out, t, "stage-error", frame(10, struct.pack("<iQ", 2, 78) + wstr("out of memory")))
    write(out, t, "shutdown", frame(11, wstr("bye")))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests/fuzz/corpus")
    make_safetensors(out)
    make_gguf(out)
    make_partition(out)
    make_tokenizer(out)
    make_http(out)
    make_wire(out)


if __name__ == "__main__":
    main()
