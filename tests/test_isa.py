"""CPU targets: pycnn.cpu_isa(), PYCNN_CPU_ISA, and the kernel tests on every target this CPU runs.

The kernels are compiled once per target (avx512, avx2, neon, generic) and one is chosen at
import. The rest of the suite runs on that one; test_kernel_tests_pass_on_every_target reruns the
kernel test files in a subprocess for each other target this machine can execute.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import pycnn
from pycnn import _C

ROOT = Path(__file__).resolve().parent.parent
KERNEL_TESTS = ["test_conv.py", "test_conv_transpose.py", "test_conv_winograd.py", "test_pool.py",
                "test_batch_norm.py", "test_depthwise.py", "test_linear.py", "test_threads.py", "test_roi_ops.py"]
ALL_TARGETS = ("generic", "neon", "avx2", "avx512")


def _python(code, **env):
    # cwd outside the source tree: `python -c` puts cwd first on sys.path, and the tree's pycnn/
    # has no compiled modules (CI tests the installed package).
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=tempfile.gettempdir(), env={**os.environ, **env})


def test_cpu_isa_is_an_available_target():
    assert pycnn.cpu_isa() in _C.available_isas()
    assert set(_C.available_isas()) <= set(ALL_TARGETS)
    assert "generic" in _C.available_isas()
    if not os.environ.get("PYCNN_CPU_ISA"):  # by default: the best this CPU runs
        assert pycnn.cpu_isa() == _C.available_isas()[-1]


def test_pycnn_cpu_isa_env_picks_a_lower_target():
    r = _python("import pycnn; print(pycnn.cpu_isa())", PYCNN_CPU_ISA="generic")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "generic"


@pytest.mark.parametrize("name", [n for n in ALL_TARGETS if n not in _C.available_isas()] + ["avx9"])
def test_pycnn_cpu_isa_env_naming_a_missing_target_fails_the_import_clearly(name):
    r = _python("import pycnn", PYCNN_CPU_ISA=name)
    assert r.returncode == 1, (r.returncode, r.stderr)  # an exception, not a crash (SIGILL/SIGSEGV)
    last = r.stderr.strip().splitlines()[-1]
    assert f"PYCNN_CPU_ISA={name}" in last and ("does not support" in last or "unknown target" in last
                                                 or "has no" in last), last


def test_switching_targets_in_process_gives_the_same_results():
    import torch
    import pycnn.functional as PF
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 8, 12, 12, generator=g), torch.randn(8, 8, 3, 3, generator=g)
    outs = {}
    previous = _C.cpu_isa()
    try:
        for name in _C.available_isas():
            _C.set_cpu_isa(name)
            assert pycnn.cpu_isa() == name
            outs[name] = PF.conv2d(x, w, padding=1)
    finally:
        _C.set_cpu_isa(previous)
    ref = torch.nn.functional.conv2d(x, w, padding=1)
    for name, y in outs.items():
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4, msg=lambda m: f"{name}: {m}")


@pytest.mark.skipif(os.environ.get("PYCNN_ISA_MATRIX_CHILD") == "1", reason="already inside the per-target run")
@pytest.mark.parametrize("name", [n for n in _C.available_isas() if n != _C.cpu_isa()])
def test_kernel_tests_pass_on_every_target(name, tmp_path):
    """The kernel reference tests (forward, every gradient, threads) on another target."""
    files = [str(ROOT / "tests" / f) for f in KERNEL_TESTS]
    # cwd outside the source tree, config from the repository: the child imports the same pycnn
    # this process did (the installed one, or the tree's on PYTHONPATH in development).
    cmd = [sys.executable, "-m", "pytest", "-x", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
           "--rootdir", str(ROOT), *files]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "PYCNN_CPU_ISA": name, "PYCNN_ISA_MATRIX_CHILD": "1"})
    tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-30:])
    assert r.returncode == 0, f"kernel tests on {name} failed:\n{tail}"
    assert " passed" in tail


def test_the_installed_build_is_not_the_avx512_emulation():
    # PYCNN_EMULATE_AVX512 (scripts/test_avx512emu.sh) is a test build: its "avx512" kernels run
    # on AVX2 instructions. What users install, and what this suite tests, must be the real one.
    assert _C.avx512_emulated is False
