#!/usr/bin/env python3
"""Checks `pp-partition inspect MODEL --export-tokenizer DIR` against Hugging Face itself: the
default model's (SmolLM2 GGUF) exported tokenizer, loaded with transformers' AutoTokenizer and
with `tokenizers`, gives the reference ids of tests/fixtures/tokenizers/smollm2-ids.json for the
whole corpus, with and without special tokens (the ids pp gives: test-tokenizer checks pp
against the same fixture), so no BOS is added, as the GGUF says; and its chat template renders.

  scripts/check-exported-tokenizer.py [--build BUILD_DIR] [--model GGUF]

Needs transformers and tokenizers: the interpreter running it, $PP_REF_PYTHON, or
.cache/venv-ref/bin/python (scripts/setup-reference.sh) of this checkout or of the main worktree
of its git repository; exit
77 (skipped) when none has them or the model is missing.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = 77


def main_worktree():
    """The main worktree of this checkout's repository (a linked worktree has no .cache)."""
    try:
        common = subprocess.run(["git", "-C", ROOT, "rev-parse", "--path-format=absolute",
                                 "--git-common-dir"], capture_output=True, text=True, check=True)
        return os.path.dirname(common.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        return ROOT


def reexec_with_reference_python():
    try:
        import tokenizers  # noqa: F401
        import transformers  # noqa: F401
        return
    except ImportError:
        pass
    if os.environ.get("PP_CHECK_EXPORT_REEXEC"):
        sys.exit(SKIP)
    for py in (os.environ.get("PP_REF_PYTHON"),
               os.path.join(ROOT, ".cache", "venv-ref", "bin", "python"),
               os.path.join(main_worktree(), ".cache", "venv-ref", "bin", "python")):
        if py and os.path.exists(py):
            env = dict(os.environ, PP_CHECK_EXPORT_REEXEC="1")
            os.execve(py, [py] + sys.argv, env)
    print("skipped: no python with transformers and tokenizers")
    sys.exit(SKIP)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.environ.get("PP_BUILD_DIR", os.path.join(ROOT, "build")))
    ap.add_argument("--model", default=os.path.join(
        os.environ.get("PP_MODEL_DIR") or os.path.expanduser("~/.cache/pp/models"),
        "SmolLM2-135M-Instruct.Q4_1.gguf"))
    args = ap.parse_args()
    if not os.path.exists(args.model):
        print(f"skipped: no model {args.model}")
        return SKIP
    reexec_with_reference_python()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    ref = json.load(open(os.path.join(ROOT, "tests", "fixtures", "tokenizers", "smollm2-ids.json"),
                         encoding="utf-8"))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "tok")
        subprocess.run([os.path.join(args.build, "tools", "pp-partition"), "inspect", args.model,
                        "--export-tokenizer", out, "--db", os.path.join(tmp, "runs.db")],
                       check=True, stdout=subprocess.DEVNULL)
        hf = AutoTokenizer.from_pretrained(out)
        raw = Tokenizer.from_file(os.path.join(out, "tokenizer.json"))
        bad = 0
        for text, ids, ids_special in zip(ref["corpus"], ref["ids"], ref["ids_special"]):
            got = {
                "transformers": hf(text, add_special_tokens=False)["input_ids"],
                "transformers+special": hf(text)["input_ids"],
                "tokenizers": raw.encode(text, add_special_tokens=False).ids,
                "tokenizers+special": raw.encode(text).ids,
            }
            for name, g in got.items():
                want = ids_special if name.endswith("+special") else ids
                if g != want:
                    bad += 1
                    print(f"MISMATCH {name} {text!r}: {g[:12]} != {want[:12]}")
        n = len(ref["corpus"])
        print(f"{out}: {type(hf).__name__}, bos {hf.bos_token!r}, eos {hf.eos_token!r}; "
              f"{n * 4 - bad}/{n * 4} encodings match pp's reference ids")
        text = hf.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                      add_generation_prompt=True)
        if "Hi" not in text:
            print(f"chat template rendered {text!r}")
            bad += 1
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
