#!/usr/bin/env python3
"""An independent cross-check of `pp-bench quality --quantization fp8`: Hugging Face
transformers loads the default model (SmolLM2-135M-Instruct's GGUF, dequantized to fp32), every
decoder-layer linear weight is quantized to fp8 e4m3 per output channel with torch
(scale = amax / 448, as pp does), and both models read the same N random token ids teacher-forced:
top-1 agreement and KL(fp32 || fp8) mean and max, as pp-bench quality prints them. The ids are
drawn by torch, not by pp-bench, so the two agree statistically, not position by position.

    .cache/venv-ref/bin/python scripts/fp8-quality-reference.py [MODEL_DIR] [N]
"""
import os
import sys

import torch
from transformers import AutoModelForCausalLM


def main():
    model_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/pp/models")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 512
    m = AutoModelForCausalLM.from_pretrained(
        model_dir, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", torch_dtype=torch.float32)
    m.eval()
    ids = torch.randint(0, m.config.vocab_size, (1, n), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(ids).logits[0].double()
        for name, mod in m.named_modules():
            if isinstance(mod, torch.nn.Linear) and "layers." in name:
                w = mod.weight.data
                amax = w.abs().amax(dim=1, keepdim=True)
                s = torch.where(amax > 0, amax / 448.0, torch.ones_like(amax))
                mod.weight.data = (w / s).to(torch.float8_e4m3fn).to(torch.float32) * s
        got = m(ids).logits[0].double()
    lp, lq = ref.log_softmax(-1), got.log_softmax(-1)
    kl = (lp.exp() * (lp - lq)).sum(-1)
    top1 = (ref.argmax(-1) == got.argmax(-1)).double().mean().item()
    print(f"positions {n}: top-1 agreement {top1:.4f}, KL mean {kl.mean().item():.6f}, "
          f"KL max {kl.max().item():.6f} nats")


if __name__ == "__main__":
    main()
