#!/usr/bin/env bash
# Installs what pp needs to build and test, from Debian packages (and PyPI for the Python test
# clients). Safe to run again: it installs only what is missing.
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config git python3 python3-pip python3-venv
      libcli11-dev libspdlog-dev libfmt-dev nlohmann-json3-dev libsqlite3-dev libgtest-dev
      libzmq3-dev cppzmq-dev libcpp-httplib-dev libpcre2-dev libopenblas-dev clang-format
      iproute2 unzip
      clang libclang-rt-dev libomp-dev)  # the fuzz and sanitizer builds (clang, libFuzzer, OpenMP)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
# Python packages the end-to-end tests use (the safetensors reader check, the openai client).
if ! python3 -c 'import safetensors.numpy, numpy, openai, pytest' >/dev/null 2>&1; then
  python3 -m pip install -q --disable-pip-version-check safetensors numpy openai pytest >&2 ||
    echo "setup: warning: could not install safetensors/numpy/openai/pytest; tests that need them are skipped" >&2
fi
