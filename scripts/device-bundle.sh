#!/usr/bin/env bash
# Gathers binaries built here and the shared libraries they need that a bare GPU machine
# (Ubuntu 24.04 with CUDA 13, cuBLAS, NCCL, OpenBLAS, fmt 9) lacks, into one folder to carry
# there: ZeroMQ and its dependencies, cpp-httplib, this distribution's spdlog, PCRE2, SQLite.
#
#   scripts/device-bundle.sh OUT_DIR BINARY...
#
# On the GPU machine: LD_LIBRARY_PATH=OUT_DIR/lib OUT_DIR/bin/pp-serve ...
set -euo pipefail
out=$1
shift
mkdir -p "$out/bin" "$out/lib"
# Libraries the GPU machine has itself (or must not be replaced: the C library, the driver).
skip='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libnccl|libopenblas|libgfortran|libquadmath|libfmt|libresolv)'
for bin in "$@"; do
  cp -L "$bin" "$out/bin/"
  ldd "$bin" | awk '/=> \// {print $1, $3}' | while read -r name path; do
    [[ $name =~ $skip ]] && continue
    cp -L -n "$path" "$out/lib/$name"
  done
done
du -sh "$out" >&2
