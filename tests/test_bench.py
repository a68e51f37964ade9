"""Smoke tests of the bench/ harness: a tiny case is validated, timed and printed with a ratio;
a wrong forward, a wrong gradient or wrong indices abort the case loudly; an op that is not
written yet is a skip, any other exception an error. Each test runs tiny shapes (< 1 s)."""
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
try:  # bench/ is not installed: load it from the source tree without putting the tree on sys.path
    import bench  # noqa: F401
except ImportError:
    _spec = importlib.util.spec_from_file_location("bench", ROOT / "bench" / "__init__.py",
                                                   submodule_search_locations=[str(ROOT / "bench")])
    sys.modules["bench"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["bench"])

from bench import cases, harness  # noqa: E402
from bench.harness import Case, Peaks, Settings, Target, op_pair, run_cases  # noqa: E402

import pycnn.functional as PF  # noqa: E402

PEAKS = Peaks(flops=1e11, bandwidth=1e10, matmul_n=1, copy_bytes=1)


def _settings(**kw):
    kw = {"repeat": 2, "warmup": 1, "min_pairs": 1, "sample_seconds": 0.001, "out": io.StringIO(), **kw}
    return Settings(**kw)


def _linear_args(grad=True):
    return [torch.randn(8, 16).requires_grad_(grad), torch.randn(4, 16).requires_grad_(grad),
            torch.randn(4).requires_grad_(grad)]


def _run(case, **kw):
    s = _settings(**kw)
    [r] = run_cases([case], s, PEAKS)
    return r, s.out.getvalue()


def test_tiny_case_is_timed_and_prints_a_ratio():
    case = cases.linear_case("linear tiny", 8, 16, 4, targets=[Target("ratio", "<=", 1e9)])
    r, text = _run(case)
    assert r.status == "ok", r.message
    assert r.ratio > 0 and r.ours > 0 and r.theirs > 0 and r.pairs == 2
    assert r.rate_unit == "GFLOP/s" and r.rate > 0 and r.pct_peak > 0
    assert "ratio" in text and "linear tiny" in text and "PASS" in text


@pytest.mark.parametrize("backward", [False, True])
def test_wrong_forward_is_a_mismatch_and_not_timed(backward):
    wrong = lambda x, w, b: PF.linear(x, w, b) * 1.01  # noqa: E731
    case = Case("bad fwd", "8x16", lambda s: op_pair(s, wrong, F.linear, _linear_args(backward), backward=backward))
    r, text = _run(case)
    assert r.status == "MISMATCH" and "output 0" in r.message
    assert r.ours is None and r.ratio is None
    assert "!!! MISMATCH: bad fwd" in text


class _WrongGrad(torch.autograd.Function):
    """Identity forward, doubled backward: only the gradient check can catch it."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return 2 * g


def test_wrong_gradient_is_a_mismatch():
    ours = lambda x, w, b: PF.linear(_WrongGrad.apply(x), w, b)  # noqa: E731
    case = Case("bad bwd", "8x16", lambda s: op_pair(s, ours, F.linear, _linear_args(), backward=True))
    r, text = _run(case)
    assert r.status == "MISMATCH" and "gradient of differentiable input 0" in r.message, r.message
    assert "!!! MISMATCH" in text


def test_wrong_integer_output_is_a_mismatch():
    def ours(x):
        y, idx = F.max_pool2d(x, 2, return_indices=True)
        return y, idx.flip(-1)

    case = Case("bad idx", "pool", lambda s: op_pair(
        s, ours, lambda x: F.max_pool2d(x, 2, return_indices=True), [torch.randn(2, 3, 4, 4)], backward=False))
    r, _ = _run(case)
    assert r.status == "MISMATCH" and "integer" in r.message


def test_not_implemented_op_is_skipped_with_its_reason():
    def ours(x, w, b):
        raise RuntimeError("conv2d_forward: not implemented yet")

    case = Case("future op", "8x16", lambda s: op_pair(s, ours, F.linear, _linear_args(), backward=True))
    r, text = _run(case)
    assert r.status == "skipped"
    assert "skipped: conv2d_forward: not implemented yet" in text
    unregistered = Case("unregistered", "-", lambda s: op_pair(
        s, lambda x: torch.ops.pycnn.no_such_op_yet(x), torch.relu, [torch.randn(3)], backward=False))
    r, text = _run(unregistered)
    assert r.status == "skipped" and "skipped: op not registered yet" in text


def test_other_exception_is_an_error_not_a_skip():
    def ours(x, w, b):
        raise ValueError("linear: something is really wrong")

    case = Case("broken", "8x16", lambda s: op_pair(s, ours, F.linear, _linear_args(), backward=False))
    r, text = _run(case)
    assert r.status == "ERROR" and "really wrong" in r.message and "!!! ERROR" in text


def test_gemm_case_calls_our_gemm_binding():
    r, _ = _run(cases.gemm_case("gemm small", 48, targets=()))
    assert r.status == "ok", r.message
    assert r.rate_unit == "GFLOP/s"


def test_compare_tolerance():
    ref = torch.tensor([1.0, -2.0, 4.0])
    harness.compare("t", ref + 1e-6, ref, 1e-4)  # within tolerance
    with pytest.raises(harness.Mismatch, match="shape"):
        harness.compare("t", ref[:2], ref, 1e-4)
    with pytest.raises(harness.Mismatch, match="tolerance"):
        harness.compare("t", ref + 1e-2, ref, 1e-4)
    with pytest.raises(harness.Mismatch, match="non-finite"):
        harness.compare("t", torch.tensor([1.0, float("nan"), 4.0]), ref, 1e-4)


def test_markdown_table_lists_every_case():
    s = _settings()
    results = [harness.Result("a", "s1", ours=1e-3, theirs=2e-3, ratio=0.5, targets=[Target("ratio", "<=", 1.0)]),
               harness.Result("b", "s2", status="skipped", message="not implemented yet")]
    md = harness.markdown(s, PEAKS, results)
    assert "| case | shape | pycnn | torch | ratio |" in md
    assert "| a | s1 | 1.000 ms | 2.000 ms | 0.50 | <=1 PASS |" in md
    assert "skipped: not implemented yet" in md and "torch " + torch.__version__ in md


def test_main_quick_writes_markdown(tmp_path, capsys):
    from bench.run import main
    out = tmp_path / "r.md"
    rc = main(["--quick", "--filter", "overhead linear fwd", "--repeat", "1", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "us/call" in text and "peak:" in text
    assert out.read_text().count("| overhead linear") == 2
    assert main(["--filter", "no case has this name"]) == 2
    assert main(["--list"]) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_exits_cleanly():
    proc = subprocess.run([sys.executable, "-m", "bench", "--device", "cuda"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "CUDA is not available" in proc.stdout and "Traceback" not in proc.stderr
