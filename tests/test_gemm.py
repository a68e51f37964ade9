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
import pycnn.functional as PF
from pycnn import _C
from reference import check_op

CODE = {torch.float32: _C.FLOAT32, torch.float64: _C.FLOAT64}


def _tol(dtype, K):
    """Rounding of a length-K dot product of unit normals grows ~ eps * K in the worst case."""
    eps = torch.finfo(dtype).eps
    return dict(rtol=100 * eps, atol=4 * eps * (K + 4))
from isa import each_isa  # noqa: E402,F401  (fixture: every CPU target this machine runs)


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
def test_gemm_matches_reference(each_isa, dtype, ta, tb, M, N, K):
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


# ---- tiles and cache blocks, against torch -------------------------------------------------------
# Register tiles (MR x NR): portable 4 x 8, AVX2 6 x 16 (float) / 6 x 8, AVX-512 12 or 8 x 32 / x 16.
# Cache blocks: k blocks of KC = 512 (float) / 256 (double), made even; row blocks of MC = 64..192;
# column blocks of NC = 4096 (float) / 2048 (double).
TILE_SIZES = [
    (96, 96, 64),      # full tiles for every MR (4, 6, 8, 12) and NR (8, 16, 32)
    (48, 32, 7),
    (37, 41, 19),      # edge tiles in both directions for every kernel
    (97, 95, 5),       # one row / column past the full tiles
    (11, 7, 3),        # smaller than one tile
    (25, 50, 30),
]
BLOCK_SIZES = [
    (13, 17, 513),     # two k blocks (float), three (double)
    (29, 23, 1100),    # three k blocks (float), five (double): accumulation onto C across blocks
    (200, 37, 33),     # M > 192: more than one row block for every kernel
    (389, 19, 17),     # several row blocks (of 12 or 13 micro-panels on AVX2), the last panel ragged
    (3, 4100, 9),      # N > 4096: two column blocks (float), three (double)
    (7, 8300, 5),      # three column blocks (float), five (double)
]


def _check_against_torch(ta, tb, M, N, K, dtype, pad, alphas_betas, seed):
    gen = torch.Generator().manual_seed(seed)
    A, B, C = _operands(M, N, K, ta, tb, dtype, pad=pad, gen=gen)
    for alpha, beta in alphas_betas:
        ours = C.clone()
        if beta == 0:
            ours[:, :N] = float("nan")  # not read when beta == 0
        _run(_C.gemm, ta, tb, M, N, K, alpha, A, B, beta, ours)
        torch.testing.assert_close(ours[:, :N], _expected(ta, tb, M, N, K, alpha, A, B, beta, C), **_tol(dtype, K),
                                   msg=lambda m: f"alpha={alpha} beta={beta}: {m}")
        assert torch.equal(ours[:, N:], C[:, N:]), "wrote past N into C's padding columns"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("M,N,K", TILE_SIZES + BLOCK_SIZES)
def test_gemm_tiles_and_blocks_match_torch(each_isa, dtype, M, N, K):
    # beta == 0 (C not read: NaN there) and beta != 0, each with alpha != 1; every transpose.
    alphas_betas = [(1.0, 0.0), (0.5, 1.0), (-2.0, 0.25)] if (M, N, K) in TILE_SIZES else [(0.5, 0.0), (-2.0, 0.25)]
    for i, (ta, tb) in enumerate(itertools.product([False, True], repeat=2)):
        _check_against_torch(ta, tb, M, N, K, dtype, (2 + i, 5 - i, 3), alphas_betas, seed=M + N + K + i)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, True)])
def test_gemm_all_blocks_at_once_match_torch(each_isa, dtype, ta, tb):
    # More than one row, column and k block in the same call: C's blocks accumulate over k
    # blocks at every (row block, column block), with ld > dims everywhere.
    M, N, K = (197, 4099, 520) if dtype == torch.float32 else (101, 2053, 261)
    _check_against_torch(ta, tb, M, N, K, dtype, (1, 3, 2), [(-2.0, 0.25)], seed=1)


# (batch M, in features K, out features N). The forward is a GEMM of (M, N, K), the input
# gradient (M, K, N), the weight gradient (N, K, M).
LINEAR_SHAPES = [
    (96, 64, 96),      # full tiles everywhere
    (37, 19, 41),      # edge tiles everywhere
    (200, 1100, 13),   # forward: 2 row blocks, 3 k blocks; input gradient: 2 row blocks
    (3, 300, 4100),    # forward: 2 column blocks (3 in double); input gradient: 8+ k blocks;
                       # weight gradient: 4100 rows, 20+ row blocks
]


@pytest.mark.parametrize("M,K,N", LINEAR_SHAPES)
def test_linear_tiles_and_blocks_match_torch(each_isa, M, K, N):
    g = torch.Generator().manual_seed(M + K + N)
    x, w, b = torch.randn(M, K, generator=g), torch.randn(N, K, generator=g), torch.randn(N, generator=g)
    tol = {dt: _tol(dt, max(M, K, N)) for dt in (torch.float32, torch.float64)}
    check_op(PF.linear, torch.nn.functional.linear, [x, w, b], tol=tol)
