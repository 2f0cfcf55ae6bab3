#!/usr/bin/env python3
"""FP8 checkpoint fixtures for pp's model tests, with transformers references (torch, fp32, CPU).

Two tiny random families (LlamaForCausalLM, Qwen3ForCausalLM) whose every linear dimension is a
multiple of 128 (hidden 128, 4 heads x head_dim 64, 2 KV heads, intermediate 256, 2 layers,
vocab 256 like the other tiny fixtures), each saved in the two FP8 layouts pp reads:

  <family>-fp8-block  quant_method "fp8", weight_block_size [128, 128]: W as float8_e4m3fn and
                      W_scale_inv f32 [rows/128, cols/128] (real = W * W_scale_inv), the way
                      DeepSeek-V3 and Qwen3-FP8 ship; lm_head in modules_to_not_convert.
  <family>-fp8-ct     compressed-tensors float-quantized: W as float8_e4m3fn and W_scale f32,
                      per channel [rows, 1] for Llama, per tensor [1] for Qwen3; lm_head ignored.

Only the decoder layers' linear weights are fp8; the embedding, norms and lm_head stay bf16. Each
group's scale is amax / 448, like pp's HostWeight::quantize_fp8. The reference is transformers
in fp32 on the dequantized weights (a plain config of the same architecture, eager attention):
tests/fixtures/reference/<name>.json + .logits.bin in the format of make-model-fixtures.py (its
writer is reused), a 16-token prompt with logits at every position and 16 greedy tokens.

Usage: /work/main/.cache/venv-ref/bin/python scripts/make-fp8-fixtures.py [--out tests/fixtures]
Needs: torch, transformers, safetensors, numpy.
"""
import argparse
import importlib.util
import json
import os
import shutil
import tempfile

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("mmf", os.path.join(HERE, "make-model-fixtures.py"))
mmf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mmf)
mmf.N_GREEDY = 16

N_PROMPT = 16
SHAPE = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-6)
FAMILIES = {
    "tiny-llama": dict(cls="LlamaConfig", old_form=True, ct_strategy="channel", kw=dict(
        max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=False)),
    "tiny-qwen3": dict(cls="Qwen3Config", old_form=False, ct_strategy="tensor", kw=dict(
        max_position_embeddings=1024, rope_theta=1000000.0, tie_word_embeddings=False,
        attention_bias=False, use_sliding_window=False)),
}
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FP8_MAX = 448.0


def is_linear(name):
    return name.startswith("model.layers.") and name.endswith(".weight") and \
        name.split(".")[-2] in LINEARS


def quantize(w, strategy):
    """(fp8 tensor, f32 scale tensor, dequantized f32) of a 2-D f32 weight."""
    r, c = w.shape
    if strategy == "block":
        assert r % 128 == 0 and c % 128 == 0
        tiles = w.reshape(r // 128, 128, c // 128, 128)
        amax = tiles.abs().amax(dim=(1, 3))
        scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        full = scale.repeat_interleave(128, 0).repeat_interleave(128, 1)
    elif strategy == "channel":
        amax = w.abs().amax(dim=1, keepdim=True)
        scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))  # [r, 1]
        full = scale.expand(r, c)
    else:
        amax = w.abs().amax().reshape(1)
        scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))  # [1]
        full = scale.expand(r, c)
    q = (w / full).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale.float().contiguous(), q.float() * full


def quant_config(layout, strategy):
    if layout == "block":
        return {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                "weight_block_size": [128, 128], "modules_to_not_convert": ["lm_head"]}
    return {"quant_method": "compressed-tensors", "format": "float-quantized",
            "quantization_status": "compressed", "kv_cache_scheme": None, "ignore": ["lm_head"],
            "config_groups": {"group_0": {
                "targets": ["Linear"],
                "weights": {"num_bits": 8, "type": "float", "symmetric": True, "dynamic": False,
                            "strategy": strategy, "group_size": None, "block_structure": None},
                "input_activations": {"num_bits": 8, "type": "float", "symmetric": True,
                                      "dynamic": True, "strategy": "token"}}}}


def make(out_dir, family, spec, seed):
    cfg_cls = getattr(transformers, spec["cls"])
    config = cfg_cls(**SHAPE, **spec["kw"], bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    mmf.randomize(model, seed)
    # The published weights are bf16; the linears are quantized from those values.
    base = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    with tempfile.TemporaryDirectory() as tmp:
        model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
        with open(os.path.join(tmp, "config.json")) as f:
            cfg = json.load(f)
    if spec["old_form"]:
        cfg = mmf.to_old_form(cfg)
    rng = np.random.default_rng(seed)
    prompt = rng.integers(3, config.vocab_size, size=N_PROMPT).tolist()

    for layout, strategy in (("block", "block"), ("ct", spec["ct_strategy"])):
        name = f"{family}-fp8-{layout}"
        tensors, real = {}, {}
        for k, v in base.items():
            if is_linear(k):
                q, scale, deq = quantize(v.float(), strategy)
                tensors[k] = q
                tensors[k + ("_scale_inv" if layout == "block" else "_scale")] = scale
                real[k] = deq
            else:
                tensors[k] = v.contiguous()
                real[k] = v.float()
        mdir = os.path.join(out_dir, "models", name)
        shutil.rmtree(mdir, ignore_errors=True)
        os.makedirs(mdir)
        save_file(tensors, os.path.join(mdir, "model.safetensors"), metadata={"format": "pt"})
        qcfg = dict(cfg, quantization_config=quant_config(layout, strategy))
        with open(os.path.join(mdir, "config.json"), "w") as f:
            json.dump(qcfg, f, indent=2, sort_keys=True)
            f.write("\n")
        # The reference: the dequantized weights in a plain fp32 model of the same architecture.
        ref = transformers.AutoModelForCausalLM.from_config(
            config, dtype=torch.float32, attn_implementation="eager").eval()
        missing, unexpected = ref.load_state_dict(real, strict=False)
        assert not unexpected and all("rotary" in m for m in missing), (missing, unexpected)
        mmf.write_reference(out_dir, name, ref, f"models/{name}", spec["cls"].replace("Config", ""),
                            prompt, list(range(len(prompt))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "fixtures"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    for i, (family, spec) in enumerate(FAMILIES.items()):
        make(args.out, family, spec, seed=2000 + i)


if __name__ == "__main__":
    main()
