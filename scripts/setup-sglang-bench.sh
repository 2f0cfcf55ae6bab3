#!/usr/bin/env bash
# Makes SGLang's own benchmark client runnable against pp-serve: the sglang 0.5.9 wheel (cached,
# never installed: only its bench_serving.py is run, as a plain script, with the wheel's
# package on PYTHONPATH) and a virtual environment with the PyPI packages that script imports
# (aiohttp, numpy, pybase64, requests, datasets, pillow, tqdm, transformers; no torch: the
# tokenizer alone is used). Both live outside the tree, under ${PP_SGLANG_CACHE:-~/.cache/pp/sglang},
# so every worktree shares them. Safe to run again: it fetches only what is missing.
# Prints the two paths (python, bench_serving.py) on stdout; exit 77 when PyPI is unreachable.
#   scripts/setup-sglang-bench.sh
set -euo pipefail
version=0.5.9
cache=${PP_SGLANG_CACHE:-$HOME/.cache/pp/sglang}
venv=$cache/venv
wheel=$cache/sglang-$version-py3-none-any.whl
pkg=$cache/sglang-$version  # the unpacked wheel: $pkg/sglang/bench_serving.py
mkdir -p "$cache"
unreachable() {
  echo "setup-sglang-bench: cannot reach PyPI ($1); the bench_serving test is skipped" >&2
  exit 77
}
if [ ! -f "$wheel" ]; then
  python3 -m pip download -q --disable-pip-version-check --no-deps "sglang==$version" \
    -d "$cache" >&2 || unreachable "sglang==$version"
fi
if [ ! -f "$pkg/sglang/bench_serving.py" ]; then
  rm -rf "$pkg.tmp"
  python3 -m zipfile -e "$wheel" "$pkg.tmp"
  mv "$pkg.tmp" "$pkg"
fi
needs=(aiohttp numpy pybase64 requests datasets pillow tqdm transformers)
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c \
    'import aiohttp, numpy, pybase64, requests, datasets, PIL, tqdm, transformers' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${needs[@]}" >&2 ||
    unreachable "${needs[*]}"
fi
echo "$venv/bin/python"
echo "$pkg/sglang/bench_serving.py"
