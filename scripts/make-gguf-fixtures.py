#!/usr/bin/env python3
"""Writes the GGUF dequantization fixtures of tests/model/test-dequant.cpp and the default-model
expectations of tests/model/test-gguf.cpp, computed with gguf-py (pip install gguf numpy).

tests/fixtures/gguf/quants.gguf holds, for every GGML type pp dequantizes, a tensor "<TYPE>.rand"
of random blocks (random quant bits, sane random fp16 scales) and, for the types gguf-py can
quantize, "<TYPE>.quant" (random normal data quantized by gguf-py); next to each, an F32 tensor
"<name>.expected" holding gguf-py's dequantization. The C++ test requires bit-exact agreement.

tests/fixtures/gguf/smollm2-expected.json holds rows and sums of a few tensors of the default
model (SmolLM2-135M-Instruct Q4_1) under their Hugging Face names, with llama.cpp's q/k row
permutation undone the way transformers' GGUF loader does it, and the model's metadata: the first values of some rows exactly, and float64 sums of rows and of
whole tensors.

Usage: scripts/make-gguf-fixtures.py [--model PATH] [--seed N]
"""

import argparse
import json
import os
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize, quantize

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "gguf"

ROWS = 3
COLS = 256  # a whole K super-block per row
ROW_PREFIX = 64  # values of each model row stored exactly

# (type, byte offsets of the fp16 scale fields inside one block)
RANDOM_BLOCK_TYPES = [
    (T.Q4_0, [0]),
    (T.Q4_1, [0, 2]),
    (T.Q5_0, [0]),
    (T.Q5_1, [0, 2]),
    (T.Q8_0, [0]),
    (T.Q2_K, [80, 82]),
    (T.Q3_K, [108]),
    (T.Q4_K, [0, 2]),
    (T.Q5_K, [0, 2]),
    (T.Q6_K, [208]),
]
QUANTIZABLE = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]


def random_blocks(rng, qtype, scale_offsets):
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = ROWS * COLS // block_elems
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for off in scale_offsets:
        # Magnitudes 1e-3..1e-1 with random signs: finite, normal fp16 values.
        scale = (rng.uniform(1e-3, 1e-1, size=n_blocks) * rng.choice([-1, 1], size=n_blocks))
        raw[:, off:off + 2] = scale.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(ROWS, -1)


def write_quants(rng):
    w = gguf.GGUFWriter(str(OUT / "quants.gguf"), "pp-fixture")
    w.add_string("pp.fixture", "dequantization cases written by scripts/make-gguf-fixtures.py")

    def add(name, raw, qtype):
        expected = dequantize(raw, qtype).astype(np.float32)
        assert expected.shape == (ROWS, COLS), (name, expected.shape)
        if qtype == T.F32:
            w.add_tensor(name, raw)
        elif qtype == T.F16:
            w.add_tensor(name, raw)
        else:
            w.add_tensor(name, raw, raw_dtype=qtype)
        w.add_tensor(name + ".expected", np.ascontiguousarray(expected))

    for qtype, offsets in RANDOM_BLOCK_TYPES:
        add(f"{qtype.name}.rand", random_blocks(rng, qtype, offsets), qtype)
    for qtype in QUANTIZABLE:
        data = rng.standard_normal((ROWS, COLS)).astype(np.float32)
        data[0, :7] = [0.0, -0.0, 1e-8, -65504.0, 3.0e4, 1e-5, -2.5]  # edges for F16 / BF16
        add(f"{qtype.name}.quant", quantize(data, qtype), qtype)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def reverse_permute(w, n_head):
    # transformers' LlamaTensorProcessor: undoes llama.cpp's HF -> GGUF q/k permutation.
    dim = w.shape[0] // n_head // 2
    w = w.reshape(n_head, dim, 2, *w.shape[1:])
    return w.swapaxes(2, 1).reshape(-1, *w.shape[3:])


def write_model_expectations(model_path):
    r = gguf.GGUFReader(str(model_path))
    field = lambda k: r.fields[k].contents()  # noqa: E731
    n_head = int(field("llama.attention.head_count"))
    n_head_kv = int(field("llama.attention.head_count_kv"))
    tensors = {t.name: t for t in r.tensors}

    def hf(name, permute_heads=0):
        t = tensors[name]
        x = dequantize(t.data, t.tensor_type).astype(np.float32)
        x = x.reshape([int(d) for d in reversed(t.shape)])
        if permute_heads:
            x = reverse_permute(x, permute_heads)
        return t, x

    out = {
        "model": model_path.name,
        "architecture": field("general.architecture"),
        "tensor_count": len(r.tensors),
        "block_count": int(field("llama.block_count")),
        "embedding_length": int(field("llama.embedding_length")),
        "head_count": n_head,
        "head_count_kv": n_head_kv,
        "rope_freq_base": float(field("llama.rope.freq_base")),
        "tensors": [],
    }
    cases = [
        ("token_embd.weight", "model.embed_tokens.weight", 0, [0, 1, 2, 12345, 49151]),
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", n_head, [0, 1, 2, 3, 33]),
        ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", n_head_kv, [0, 1, 2, 3, 65]),
        ("blk.29.ffn_down.weight", "model.layers.29.mlp.down_proj.weight", 0, [0, 575]),
        ("output_norm.weight", "model.norm.weight", 0, None),
    ]
    for gname, hname, heads, rows in cases:
        t, x = hf(gname, heads)
        entry = {
            "gguf_name": gname,
            "name": hname,
            "type": t.tensor_type.name,
            "shape": list(x.shape),
            "sum": float(np.sum(x, dtype=np.float64)),
            "abs_sum": float(np.sum(np.abs(x), dtype=np.float64)),
        }
        x2 = x.reshape(1, -1) if rows is None else x
        # Each listed row: its first ROW_PREFIX values exactly, and the float64 sum of all of it.
        entry["rows"] = {str(i): {"head": [float(v) for v in x2[i, :ROW_PREFIX]],
                                  "sum": float(np.sum(x2[i], dtype=np.float64))}
                         for i in (rows or [0])}
        out["tensors"].append(entry)
    with open(OUT / "smollm2-expected.json", "w") as f:
        json.dump(out, f)
        f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    default_model = Path(os.environ.get("PP_MODEL_DIR", Path.home() / ".cache" / "pp" / "models"))
    ap.add_argument("--model", type=Path,
                    default=default_model / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--seed", type=int, default=20240611)
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    write_quants(np.random.default_rng(args.seed))
    write_model_expectations(args.model)
    for p in sorted(OUT.iterdir()):
        print(f"{p.relative_to(ROOT)}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
