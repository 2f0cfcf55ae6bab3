#!/usr/bin/env bash
# Builds the kernels' GPU test binary (test-cuda) and kernel-bench with nvcc alone, without
# CMake and without the packages only the tools need (ZeroMQ, cpp-httplib, SQLite, PCRE2), for a
# machine that has a GPU but not the whole build environment. fmt is used header-only and
# GoogleTest statically where its archives exist, so the binaries need only the CUDA runtime
# libraries (cuBLAS), OpenBLAS and libgomp at run time.
#
#   scripts/device-build-kernels.sh [OUT_DIR]   (default build-dev; CUDA_ARCH=90, JOBS=nproc)
#
# The outputs land in OUT_DIR: test-cuda, kernel-bench, and lib/libgomp.so.1 (copied, so the
# folder can be carried to a machine without it; set LD_LIBRARY_PATH=OUT_DIR/lib there).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${1:-$root/build-dev}")
arch=${CUDA_ARCH:-90}
jobs=${JOBS:-$(nproc)}
cuda=${CUDA_HOME:-/usr/local/cuda}
nvcc="$cuda/bin/nvcc"
rm -rf "$out/obj"
mkdir -p "$out/obj" "$out/lib"

inc=(-I"$root/kernels/include" -I"$root/tests/common" -I"$root/tests/cuda" -I"$cuda/include")
defs=(-DFMT_HEADER_ONLY -DPP_HAVE_CUDA=1 "-DPP_SOURCE_DIR=\"$root\"")
cxxflags=(-std=c++20 -O2 -march=x86-64-v3 -fopenmp -Wall -Wno-unused-parameter)
cuflags=(-std=c++17 -O3 -gencode=arch=compute_${arch},code=sm_${arch} --expt-relaxed-constexpr
         -lineinfo -Xcompiler=-fopenmp)

jobs_file="$out/obj/commands"
: >"$jobs_file"
# add OBJECT ARGV...: one compile command per line, each word shell-quoted.
add() {
  local obj=$1
  shift
  printf '%q ' "$@" >>"$jobs_file"
  printf '\n' >>"$jobs_file"
}
for src in "$root"/kernels/src/*.cpp "$root"/kernels/src/cpu/*.cpp "$root"/kernels/src/cuda/*.cpp; do
  obj="$out/obj/lib-$(basename "$(dirname "$src")")-$(basename "$src").o"
  add "$obj" g++ "${cxxflags[@]}" "${defs[@]}" "${inc[@]}" -c "$src" -o "$obj"
done
for src in "$root"/kernels/src/cuda/*.cu; do
  obj="$out/obj/lib-cu-$(basename "$src").o"
  add "$obj" "$nvcc" "${cuflags[@]}" "${defs[@]}" "${inc[@]}" -c "$src" -o "$obj"
done
for src in "$root"/tests/common/test-util.cpp "$root"/tests/cuda/*.cpp; do
  obj="$out/obj/test-$(basename "$src").o"
  add "$obj" g++ "${cxxflags[@]}" "${defs[@]}" "${inc[@]}" -c "$src" -o "$obj"
done
add "$out/obj/bench.o" "$nvcc" "${cuflags[@]}" "${defs[@]}" "${inc[@]}" -c "$root/kernels/bench/kernel-bench.cu" -o "$out/obj/bench.o"
xargs -P "$jobs" -d '\n' -I{} bash -c '{}' <"$jobs_file"

blas=-lopenblas  # PP_STATIC_BLAS=1 links OpenBLAS's archive instead (about 25 MB more per binary)
if [[ ${PP_STATIC_BLAS:-0} == 1 ]]; then
  for a in /usr/lib/x86_64-linux-gnu/libopenblas.a; do
    [[ -f $a ]] && blas="$a -lgfortran"
  done
fi
gtest="-lgtest -lgtest_main"
[[ -f /usr/lib/x86_64-linux-gnu/libgtest.a ]] &&
  gtest="/usr/lib/x86_64-linux-gnu/libgtest_main.a /usr/lib/x86_64-linux-gnu/libgtest.a"
lib_objs=$(ls "$out"/obj/lib-*.o)
test_objs=$(ls "$out"/obj/test-*.o)
link=(-gencode=arch=compute_${arch},code=sm_${arch} -Xcompiler=-fopenmp -lcublasLt -lcublas -lpthread)
# shellcheck disable=SC2086
"$nvcc" -o "$out/test-cuda" $test_objs $lib_objs $gtest $blas "${link[@]}"
# shellcheck disable=SC2086
"$nvcc" -o "$out/kernel-bench" "$out/obj/bench.o" $lib_objs $blas "${link[@]}"
gomp=$(g++ -print-file-name=libgomp.so.1)
[[ -f $gomp ]] && cp -L "$gomp" "$out/lib/"
echo "built $out/test-cuda $out/kernel-bench" >&2
