#!/usr/bin/env bash
# Creates the Python environment that makes the reference fixtures (transformers + torch from
# PyPI, CPU is enough): .cache/venv-ref. Only needed to regenerate tests/fixtures; the tests
# themselves compare against the committed fixtures and need no Python ML stack.
#   scripts/setup-reference.sh && .cache/venv-ref/bin/python scripts/make-model-fixtures.py
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.cache/venv-ref"
python3 -m venv "$venv"
"$venv/bin/pip" install -q torch transformers accelerate gguf numpy safetensors tokenizers jinja2
echo "reference environment ready: $venv"
