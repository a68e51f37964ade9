"""Runs the CUDA kernels' device code on the CPU (csrc/cuda/host_check: one std::thread per CUDA
thread) against torch. The only execution the CUDA GEMM, conv plans, depthwise and pooling index
math get on a machine without a GPU; tests/test_cuda.py is the real check on a GPU."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECK = os.path.join(ROOT, "csrc", "cuda", "host_check", "check.py")


@pytest.mark.skipif(shutil.which("g++") is None or not os.path.exists(CHECK),
                    reason="needs g++ and the csrc/ sources")
def test_cuda_device_code_on_host_emulator():
    p = subprocess.run([sys.executable, CHECK], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "host emulation OK" in p.stdout
