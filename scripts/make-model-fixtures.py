#!/usr/bin/env python3
"""Reference fixtures for pp's model tests, made with Hugging Face transformers (torch, fp32, CPU).

For each family pp serves, a tiny randomly initialised model is built with transformers, saved as
safetensors (bf16 weights, so the fixtures stay small; the reference runs in fp32 on exactly those
bf16-rounded weights), and run on a random prompt. For the default model (SmolLM2-135M-Instruct,
Q4_1 GGUF), transformers loads the GGUF itself (it dequantizes to fp32).

Each reference is tests/fixtures/reference/<name>.json:
  {"model": "models/<name>" | "default", "family": ..., "prompt_ids": [...], "vocab": N,
   "logit_positions": [...], "logits_file": "<name>.logits.bin", "greedy": [32 ids]}
with <name>.logits.bin the raw little-endian f32 next-token logits at logit_positions, row-major.
"greedy" continues the prompt for 32 tokens by argmax, ignoring EOS.

Usage: python3 scripts/make-model-fixtures.py [--gguf PATH] [--out tests/fixtures]
Needs: torch, transformers, gguf, safetensors (see scripts/setup-reference.sh).
"""
import argparse
import json
import os
import shutil

import numpy as np
import torch
import transformers

torch.backends.cuda.matmul.allow_tf32 = False
torch.set_num_threads(max(1, os.cpu_count() or 1))

N_GREEDY = 32

# Tiny shapes: every feature of the family shows up (GQA, head_dim != hidden/heads, biases,
# q/k norm, tied embeddings, llama3 rope scaling), and the files stay small.
FAMILIES = {
    "tiny-llama": dict(cls="LlamaConfig", old_form=True, kw=dict(
        vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)),
    "tiny-llama3": dict(cls="LlamaConfig", old_form=False, kw=dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=2048,
        rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=64))),
    "tiny-llama-headdim": dict(cls="LlamaConfig", old_form=True, kw=dict(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, head_dim=24, max_position_embeddings=512,
        rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=True)),
    "tiny-mistral": dict(cls="MistralConfig", old_form=True, kw=dict(
        vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024,
        rms_norm_eps=1e-5, rope_theta=1000000.0, sliding_window=None, tie_word_embeddings=False)),
    "tiny-qwen2": dict(cls="Qwen2Config", old_form=False, kw=dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
        use_sliding_window=False)),
    "tiny-qwen3": dict(cls="Qwen3Config", old_form=False, kw=dict(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=1024,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
        attention_bias=False, use_sliding_window=False)),
    # Mixture of experts: 8 experts (top 2, renormalised) with a dense layer between two sparse
    # ones (mlp_only_layers), in the older form (num_experts, rope_theta).
    "tiny-qwen3-moe": dict(cls="Qwen3MoeConfig", old_form=True, kw=dict(
        vocab_size=256, hidden_size=64, intermediate_size=96, moe_intermediate_size=16,
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1,
        mlp_only_layers=[1], max_position_embeddings=1024, rms_norm_eps=1e-6,
        rope_theta=1000000.0, tie_word_embeddings=False, attention_bias=False,
        use_sliding_window=False)),
    # Mixtral: 4 experts of intermediate_size, top 2, in the transformers-5 form.
    "tiny-mixtral": dict(cls="MixtralConfig", old_form=False, kw=dict(
        vocab_size=256, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
        max_position_embeddings=1024, rms_norm_eps=1e-5, rope_theta=1000000.0,
        sliding_window=None, tie_word_embeddings=False)),
}


def to_old_form(cfg: dict) -> dict:
    """Rewrites a transformers-5 config.json into the older form most published models carry."""
    cfg = dict(cfg)
    rp = cfg.pop("rope_parameters", None)
    if rp:
        rp = dict(rp)
        cfg["rope_theta"] = rp.pop("rope_theta")
        if rp.get("rope_type", "default") == "default":
            cfg["rope_scaling"] = None
        else:
            cfg["rope_scaling"] = rp
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    if cfg.get("model_type") == "qwen3_moe" and "num_local_experts" in cfg:
        cfg["num_experts"] = cfg.pop("num_local_experts")  # Qwen3-30B-A3B's own name
    return cfg


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights with enough spread that logits are far from uniform and ties are unlikely."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / fan_in ** 0.5))


@torch.no_grad()
def greedy(model, prompt_ids, n):
    ids = torch.tensor([prompt_ids])
    out = model(ids, use_cache=True)
    past = out.past_key_values
    nxt = int(out.logits[0, -1].argmax())
    gen = [nxt]
    for _ in range(n - 1):
        out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        nxt = int(out.logits[0, -1].argmax())
        gen.append(nxt)
    return gen


@torch.no_grad()
def write_reference(out_dir, name, model, model_ref, family, prompt_ids, positions):
    logits = model(torch.tensor([prompt_ids])).logits[0].float()
    rows = logits[positions].numpy().astype("<f4")
    ref_dir = os.path.join(out_dir, "reference")
    os.makedirs(ref_dir, exist_ok=True)
    rows.tofile(os.path.join(ref_dir, f"{name}.logits.bin"))
    gen = greedy(model, prompt_ids, N_GREEDY)
    meta = dict(model=model_ref, family=family, prompt_ids=list(map(int, prompt_ids)),
                vocab=int(logits.shape[-1]), logit_positions=list(map(int, positions)),
                logits_file=f"{name}.logits.bin", greedy=gen,
                transformers=transformers.__version__, torch=torch.__version__)
    with open(os.path.join(ref_dir, f"{name}.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{name}: {len(prompt_ids)} prompt tokens, greedy {gen[:8]}...")


def make_tiny(out_dir, name, spec, seed):
    cfg_cls = getattr(transformers, spec["cls"])
    config = cfg_cls(**spec["kw"], bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomize(model, seed)
    model = model.to(torch.bfloat16)
    mdir = os.path.join(out_dir, "models", name)
    shutil.rmtree(mdir, ignore_errors=True)
    model.save_pretrained(mdir, safe_serialization=True)
    gc = os.path.join(mdir, "generation_config.json")
    if os.path.exists(gc):
        os.remove(gc)
    cfg_path = os.path.join(mdir, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if spec["old_form"]:
        cfg = to_old_form(cfg)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    # The reference: the same bf16 weights, computed in fp32, eager attention.
    model = transformers.AutoModelForCausalLM.from_pretrained(
        mdir, dtype=torch.float32, attn_implementation="eager").eval()
    rng = np.random.default_rng(seed)
    prompt = rng.integers(3, config.vocab_size, size=23).tolist()
    write_reference(out_dir, name, model, f"models/{name}", spec["cls"].replace("Config", ""),
                    prompt, list(range(len(prompt))))


def make_default(out_dir, gguf_path):
    d, f = os.path.split(os.path.abspath(gguf_path))
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        d, gguf_file=f, dtype=torch.float32, attn_implementation="eager").eval()
    chat = tok.apply_chat_template([{"role": "user", "content": "Write a short poem about the sea."}],
                                   add_generation_prompt=True, tokenize=False)
    ids = tok(chat, add_special_tokens=False)["input_ids"]
    write_reference(out_dir, "smollm2-chat", model, "default", "Llama", ids,
                    [len(ids) - 2, len(ids) - 1])
    ids = tok("The history of the printing press begins", add_special_tokens=False)["input_ids"]
    write_reference(out_dir, "smollm2-text", model, "default", "Llama", ids, [len(ids) - 1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", default=os.path.expanduser(
        "~/.cache/pp/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                  "fixtures"))
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    for i, (name, spec) in enumerate(FAMILIES.items()):
        if args.only and args.only != name:
            continue
        make_tiny(args.out, name, spec, seed=1000 + i)
    if not args.only or args.only == "default":
        make_default(args.out, args.gguf)


if __name__ == "__main__":
    main()
