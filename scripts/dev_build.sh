#!/usr/bin/env bash
# Developers' in-tree build: compiles the native modules into ./pycnn so that
# `PYTHONPATH=$PWD pytest` runs against the working tree. A lock lets several shells share it.
# Usage: scripts/dev_build.sh [cpu|cuda]   (default cpu: CUDA is skipped for a fast loop)
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-cpu}
# The cuda build makes only _C_cuda: two build folders both copying _C into pycnn/ would let a
# stale one overwrite the other.
if [ "$what" = cuda ]; then dir=build/dev-cuda; cuda=ON; target=_C_cuda; else dir=build/dev; cuda=OFF; target=all; fi
mkdir -p "$dir"
exec 9>"$dir.lock"
flock 9
pybind11_dir=$(python -c "import pybind11; print(pybind11.get_cmake_dir())")
if [ ! -f "$dir/build.ninja" ]; then
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPYCNN_INPLACE=ON -DPYCNN_CUDA=$cuda \
    -DCMAKE_CUDA_ARCHITECTURES=90 -Dpybind11_DIR="$pybind11_dir" -DPython_EXECUTABLE="$(command -v python)" >/dev/null
fi
cmake --build "$dir" --target "$target"
