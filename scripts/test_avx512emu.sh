#!/usr/bin/env bash
# The avx512 kernels on a CPU without AVX-512: build pycnn with PYCNN_EMULATE_AVX512 (the avx512
# target's 64-byte vectors, 32-register tiles and lane masks compiled for AVX2; csrc/simd/vec.h),
# run the C++ self-test, then the torch-referenced kernel tests on that target. Needs torch and
# pybind11 in the environment (CI runs it after README's install). Writes only under build/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=build/avx512emu
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
pybind11_dir=$(python -c "import pybind11; print(pybind11.get_cmake_dir())")
cmake -S . -B "$dir" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DPYCNN_CUDA=OFF -DPYCNN_EMULATE_AVX512=ON \
  -DPYCNN_SELFTEST=ON -Dpybind11_DIR="$pybind11_dir" -DPython_EXECUTABLE="$(command -v python)" >/dev/null
cmake --build "$dir" >/dev/null
"$dir/pycnn_selftest"

# A copy of the package with the emulated module, imported from outside the source tree.
pkg=$dir/package
rm -rf "$pkg" && mkdir -p "$pkg"
cp -r pycnn "$pkg/"
find "$pkg" \( -name '*.so' -o -name __pycache__ \) -prune -exec rm -rf {} +
cp "$dir"/_C*.so "$pkg/pycnn/"
tests=(test_conv.py test_conv_transpose.py test_conv_winograd.py test_conv_dispatch.py test_gemm.py test_pool.py
       test_batch_norm.py test_depthwise.py test_linear.py test_threads.py test_partial_conv.py test_roi_ops.py)
cd "$dir"
PYTHONPATH="$root/$pkg" PYCNN_CPU_ISA=avx512 PYCNN_ISA_MATRIX_CHILD=1 python -m pytest -p no:cacheprovider \
  -c "$root/pyproject.toml" --rootdir "$root" "${tests[@]/#/$root/tests/}"
