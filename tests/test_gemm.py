"""The native GEMM (pycnn._C.gemm) against its plain-loop reference and torch, on every CPU target
this machine runs (each target has its own micro-kernel and register tile).

Matrices live inside larger buffers so leading dimensions exceed the logical widths; C starts
as NaN where beta == 0 (the contract says it is then not read).
"""
import itertools

import pytest
import torch
from hypothesis import given, settings, strategies as st

import pycnn
from pycnn import _C

CODE = {torch.float32: _C.FLOAT32, torch.float64: _C.FLOAT64}


def _tol(dtype, K):
    """Rounding of a length-K dot product of unit normals grows ~ eps * K in the worst case."""
    eps = torch.finfo(dtype).eps
    return dict(rtol=100 * eps, atol=4 * eps * (K + 4))
@pytest.fixture(params=_C.available_isas())
def variant(request):
    previous = _C.set_cpu_isa(request.param)
    try:
        yield request.param
    finally:
        _C.set_cpu_isa(previous)


def _operands(M, N, K, ta, tb, dtype, pad=(0, 0, 0), gen=None):
    """op(A) [M, K], op(B) [K, N] stored (transposed or not) in buffers wider than needed."""
    a_rows, a_cols = (K, M) if ta else (M, K)
    b_rows, b_cols = (N, K) if tb else (K, N)
    A = torch.randn(a_rows, a_cols + pad[0], dtype=dtype, generator=gen)
    B = torch.randn(b_rows, b_cols + pad[1], dtype=dtype, generator=gen)
    C = torch.randn(M, N + pad[2], dtype=dtype, generator=gen)
    return A, B, C


def _run(fn, ta, tb, M, N, K, alpha, A, B, beta, C):
    fn(CODE[A.dtype], ta, tb, M, N, K, alpha, A.data_ptr(), A.shape[1], B.data_ptr(), B.shape[1], beta,
       C.data_ptr(), C.shape[1])


def _expected(ta, tb, M, N, K, alpha, A, B, beta, C):
    a = A[:, :M].t() if ta else A[:, :K]
    b = B[:, :K].t() if tb else B[:, :N]
    out = alpha * (a.double() @ b.double())
    if beta != 0:
        out += beta * C[:, :N].double()
    return out.to(A.dtype)


SIZES = [(1, 1, 1), (13, 17, 19), (12, 32, 7), (37, 5, 300), (200, 7, 3), (5, 41, 513), (2, 4100, 3), (0, 5, 3),
         (4, 0, 3), (3, 4, 0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("ta,tb", list(itertools.product([False, True], repeat=2)))
@pytest.mark.parametrize("M,N,K", SIZES)
def test_gemm_matches_reference(variant, dtype, ta, tb, M, N, K):
    gen = torch.Generator().manual_seed(M * 1000 + N * 10 + K)
    A, B, C = _operands(M, N, K, ta, tb, dtype, pad=(3, 1, 2), gen=gen)
    for alpha, beta in [(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25)]:
        ours, ref = C.clone(), C.clone()
        if beta == 0:
            ours[:, :N] = float("nan")
            ref[:, :N] = float("nan")
        _run(_C.gemm, ta, tb, M, N, K, alpha, A, B, beta, ours)
        _run(_C.gemm_reference, ta, tb, M, N, K, alpha, A, B, beta, ref)
        torch.testing.assert_close(ours, ref, **_tol(dtype, K))
        torch.testing.assert_close(ours[:, :N], _expected(ta, tb, M, N, K, alpha, A, B, beta, C), **_tol(dtype, K))
        # the padding columns of C past N are never written
        assert torch.equal(ours[:, N:], C[:, N:])


def test_gemm_beta_zero_ignores_nan_and_alpha_zero_scales():
    A, B, C = _operands(9, 11, 5, False, False, torch.float64)
    A[0, 0] = float("nan")
    out = torch.full_like(C, float("nan"))
    _run(_C.gemm, False, False, 9, 11, 5, 0.0, A, B, 0.0, out)  # alpha = 0: A and B not read
    assert torch.equal(out, torch.zeros_like(out))
    out = C.clone()
    _run(_C.gemm, False, False, 9, 11, 5, 0.0, A, B, 3.0, out)
    torch.testing.assert_close(out, 3.0 * C)


@settings(max_examples=30, deadline=None)
@given(M=st.integers(1, 70), N=st.integers(1, 70), K=st.integers(1, 300), ta=st.booleans(), tb=st.booleans(),
       pad=st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)), beta=st.sampled_from([0.0, 1.0, -0.5]),
       double=st.booleans())
def test_gemm_property(M, N, K, ta, tb, pad, beta, double):
    dtype = torch.float64 if double else torch.float32
    A, B, C = _operands(M, N, K, ta, tb, dtype, pad=pad)
    ours = C.clone()
    _run(_C.gemm, ta, tb, M, N, K, 1.5, A, B, beta, ours)
    torch.testing.assert_close(ours[:, :N], _expected(ta, tb, M, N, K, 1.5, A, B, beta, C),
                               **_tol(dtype, K))


def test_gemm_same_bits_for_any_thread_count():
    A, B, C = _operands(301, 203, 517, False, True, torch.float32)
    outs = []
    old = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            pycnn.sync_threads()
            out = torch.empty_like(C)
            _run(_C.gemm, False, True, 301, 203, 517, 1.0, A, B, 0.0, out)
            outs.append(out)
    finally:
        torch.set_num_threads(old)
        pycnn.sync_threads()
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_set_cpu_isa_rejects_unknown_and_unavailable_targets():
    with pytest.raises(ValueError, match="unknown target"):
        _C.set_cpu_isa("avx9")
    missing = [n for n in ("generic", "neon", "avx2", "avx512") if n not in _C.available_isas()]
    for name in missing:
        with pytest.raises(ValueError, match=name):
            _C.set_cpu_isa(name)
    assert _C.cpu_isa() == pycnn.cpu_isa()
