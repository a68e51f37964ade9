#!/usr/bin/env bash
# The C++ kernel self-test (csrc/cpu/selftest.cpp): every fast kernel against plain reference
# loops, float and double, on every target the CPU runs. No Python, no torch.
#   scripts/selftest.sh            native build, every target this CPU runs
#   scripts/selftest.sh aarch64    cross-compiled (g++-aarch64-linux-gnu), run under qemu-aarch64:
#                                  the neon and generic targets
#   scripts/selftest.sh clang      native, built with clang++ (the kernels' Clang target regions)
#   scripts/selftest.sh avx512emu  the avx512 kernels compiled for AVX2 (CMake PYCNN_EMULATE_AVX512),
#                                  so they run on CPUs without AVX-512
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-native}
if [ "$what" = aarch64 ]; then
  dir=build/selftest-aarch64
  extra=(-DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake)
  run=(qemu-aarch64 -L /usr/aarch64-linux-gnu)
elif [ "$what" = avx512emu ]; then
  dir=build/selftest-avx512emu
  extra=(-DPYCNN_EMULATE_AVX512=ON)
  run=()
elif [ "$what" = clang ]; then
  dir=build/selftest-clang
  extra=(-DCMAKE_CXX_COMPILER=clang++)
  run=()
else
  dir=build/selftest
  extra=()
  run=()
fi
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
cmake -S . -B "$dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DPYCNN_PYTHON_MODULE=OFF -DPYCNN_SELFTEST=ON \
  -DPYCNN_CUDA=OFF "${extra[@]}" >/dev/null
cmake --build "$dir" --target pycnn_selftest >/dev/null
"${run[@]}" "$dir/pycnn_selftest"
