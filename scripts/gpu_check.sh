#!/usr/bin/env bash
# Issue #14's checks in one call on a lent GPU machine (the device tool's `run`, which sets $OUT):
#   run(command="bash scripts/gpu_check.sh", timeout_s=600)
# A lent GPU gives ~15 minutes in all, so each phase has its own time limit and the script goes
# on after a failing phase (a build failure ends it; the limits add up to 570 s, inside the call's
# 600): device facts, the build with the CUDA module, the CUDA tests, compute-sanitizer memcheck
# over the op tests, the GPU bench. At most 8 files come back from $OUT: gpu.txt, build.log,
# tests.log, memcheck.log, bench.log and the bench table cuda-float32.md (commit it under
# bench/results/ and quote it in README).
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
OUT=${OUT:-$repo/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
phase() { echo "== $1 ($(date -u +%T))"; }

phase "device"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; nvcc --version | tail -2
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} 2>&1 | tee "$OUT/gpu.txt"

phase "build (sm_90, CUDA module required)"
export PYCNN_CUDA=ON CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90" CMAKE_BUILD_PARALLEL_LEVEL=16
if ! timeout 240 python -m pip install --no-build-isolation --no-deps -q . >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"; exit 1
fi
# From outside the checkout, so the installed package (with _C_cuda) is the one imported.
work=$(mktemp -d) && cp -r "$repo/bench" "$work/" && cd "$work"
python -c "import pycnn; print('pycnn cuda_available', pycnn.cuda_available())" | tee -a "$OUT/gpu.txt"
pytest_args=(-q -p no:cacheprovider --rootdir "$repo" -c "$repo/pyproject.toml")

phase "CUDA tests"
timeout 140 python -m pytest "${pytest_args[@]}" "$repo/tests/test_cuda.py" "$repo/tests/test_cuda_module.py" \
  "$repo/tests/test_roi_ops.py" "$repo/tests/test_partial_conv.py" "$repo/tests/test_pool.py" >"$OUT/tests.log" 2>&1
echo "tests rc=$?"; tail -25 "$OUT/tests.log"

phase "compute-sanitizer memcheck (forward and backward of every op family, no gradcheck)"
timeout 110 compute-sanitizer --tool memcheck --leak-check no --error-exitcode 9 \
  python -m pytest "${pytest_args[@]}" -x "$repo/tests/test_cuda.py" -k "not gradcheck and not opcheck" \
  >"$OUT/memcheck.log" 2>&1
echo "memcheck rc=$?"; grep -m3 "ERROR SUMMARY" "$OUT/memcheck.log"; tail -5 "$OUT/memcheck.log"

phase "bench (pycnn vs torch with cuDNN, float32)"
timeout 80 python -m bench --device cuda --quick --markdown --out "$OUT/cuda-float32.md" >"$OUT/bench.log" 2>&1
echo "bench rc=$?"; cat "$OUT/cuda-float32.md" 2>/dev/null || tail -20 "$OUT/bench.log"
phase "done"
