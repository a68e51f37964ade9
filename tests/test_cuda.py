"""The CUDA kernels (pycnn._C_cuda) against torch on the same GPU, forward and every gradient.

torch's reference runs with TF32 disabled, so both sides compute in true float32/float64.
Everything is skipped on machines without a GPU or without the CUDA build of pycnn. The case
lists (the UPPER_CASE constants) are shared with tests/test_cuda_host_emulation.py, which runs
them on the CPU through the host emulator of the same kernels: a shape mistake in a case shows up
there first, without a GPU.
"""
import pytest
import torch
import torch.nn.functional as F

import pycnn
import pycnn.functional as PF
from pycnn._ops import native
from reference import check_op, gradcheck

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or not pycnn.cuda_available(),
    reason="needs a CUDA GPU and pycnn built with its CUDA module (_C_cuda)")

DEV = "cuda"


@pytest.fixture(autouse=True)
def no_tf32():
    """torch's CUDA matmul/conv in full float32, like our kernels."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rand(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


# ---- the raw GEMM: every transpose combination, leading dimensions, alpha/beta, tile sizes ----

def _raw_gemm(ta, tb, M, N, K, alpha, beta, dtype, pad, offset):
    """Runs _C_cuda.gemm on padded, possibly misaligned buffers; returns (ours, float64 reference)."""
    lda = (M if ta else K) + pad
    ldb = (K if tb else N) + pad
    ldc = N + pad
    a_rows, b_rows = (K if ta else M), (N if tb else K)
    A = rand(a_rows * lda + offset, seed=1).to(DEV, dtype)
    B = rand(b_rows * ldb + offset, seed=2).to(DEV, dtype)
    C = rand(M * ldc + offset, seed=3).to(DEV, dtype)
    Am = A[offset:].view(a_rows, lda)[:, :(M if ta else K)]
    Bm = B[offset:].view(b_rows, ldb)[:, :(K if tb else N)]
    Cm = C[offset:].view(M, ldc)[:, :N]
    opA = (Am.t() if ta else Am).double()
    opB = (Bm.t() if tb else Bm).double()
    expected = alpha * (opA @ opB) + (beta * Cm.double() if beta != 0 else 0)
    code = native._CUDA_DTYPE_CODE[dtype]
    stream = torch.cuda.current_stream().cuda_stream
    esize = A.element_size()
    from pycnn import _C_cuda
    _C_cuda.gemm(stream, code, ta, tb, M, N, K, alpha, A.data_ptr() + offset * esize, lda,
                 B.data_ptr() + offset * esize, ldb, beta, C.data_ptr() + offset * esize, ldc)
    torch.cuda.synchronize()
    return Cm.double(), expected


GEMM_CASES = [  # M, N, K, pad (leading dimensions), offset (elements: misaligned bases)
    (1, 1, 1, 0, 0), (7, 13, 5, 3, 1), (33, 65, 17, 0, 0), (64, 64, 64, 0, 0),
    (130, 129, 31, 1, 0),        # partial tiles on every side
    (1536, 1536, 40, 0, 0),      # enough tiles for the largest configuration, vector loads
    (1536, 1500, 41, 2, 1),      # largest configuration, misaligned: scalar loads
]


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("M,N,K,pad,offset", GEMM_CASES)
def test_gemm_matches_float64(ta, tb, dtype, M, N, K, pad, offset):
    for alpha, beta in [(1.0, 0.0), (-0.5, 2.0)]:
        ours, expected = _raw_gemm(ta, tb, M, N, K, alpha, beta, dtype, pad, offset)
        tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ours, expected, **tol)


def test_gemm_beta_zero_ignores_nan():
    from pycnn import _C_cuda
    A = torch.randn(5, 4, device=DEV)
    B = torch.randn(4, 3, device=DEV)
    C = torch.full((5, 3), float("nan"), device=DEV)
    _C_cuda.gemm(torch.cuda.current_stream().cuda_stream, native._CUDA_DTYPE_CODE[torch.float32],
                 False, False, 5, 3, 4, 1.0, A.data_ptr(), 4, B.data_ptr(), 3, 0.0, C.data_ptr(), 3)
    torch.testing.assert_close(C, (A.double() @ B.double()).float(), rtol=1e-5, atol=1e-5)


# ---- conv2d -------------------------------------------------------------------------------

CONV_CASES = [
    # (N, C, H, W), (K, C/g, kh, kw), stride, padding, dilation, groups, bias
    ((2, 3, 9, 8), (4, 3, 3, 3), 1, 1, 1, 1, True),
    ((2, 4, 11, 7), (6, 2, 3, 2), (2, 1), (1, 0), 1, 2, False),
    ((1, 6, 10, 10), (6, 2, 3, 3), 2, 2, 2, 3, True),
    ((3, 5, 6, 6), (7, 5, 1, 1), 1, 0, 1, 1, True),       # pointwise: no im2col
    ((2, 4, 6, 5), (8, 4, 1, 1), 2, 0, 1, 1, False),      # 1x1 strided: needs im2col
    ((2, 8, 16, 16), (32, 8, 5, 5), 1, 2, 1, 1, True),
    ((0, 3, 5, 5), (4, 3, 3, 3), 1, 1, 1, 1, True),       # empty batch
    ((2, 3, 4, 4), (4, 3, 5, 5), 1, 2, 1, 1, True),       # kernel larger than input
    ((4, 32, 20, 20), (64, 32, 3, 3), 1, 1, 1, 1, True),  # the larger GEMM tiles
]


@pytest.mark.parametrize("xs,ws,stride,padding,dilation,groups,bias", CONV_CASES)
def test_conv2d_matches_torch(xs, ws, stride, padding, dilation, groups, bias):
    x, w = rand(*xs, seed=1), rand(*ws, seed=2)
    b = rand(ws[0], seed=3) if bias else None
    check_op(PF.conv2d, F.conv2d, [x, w, b, stride, padding, dilation, groups], device=DEV)


def test_conv2d_in_workspace_chunks():
    """A tiny workspace limit forces one sample per chunk; results must not change."""
    x, w, b = rand(5, 3, 9, 9, seed=1), rand(4, 3, 3, 3, seed=2), rand(4, seed=3)
    limit = native.get_workspace_limit()
    try:
        native.set_workspace_limit(1)
        check_op(PF.conv2d, F.conv2d, [x, w, b, 2, 1, 1, 1], device=DEV)
    finally:
        native.set_workspace_limit(limit)


def test_conv2d_non_contiguous_input():
    x = rand(2, 9, 8, 3, seed=1).permute(0, 3, 1, 2)  # [2, 3, 9, 8], channels-last strides
    check_op(PF.conv2d, F.conv2d, [x, rand(4, 3, 3, 3, seed=2), None, 1, 1, 1, 1], device=DEV)


CONV_TRANSPOSE_CASES = [
    # (N, C, H, W), (C, K/g, kh, kw), stride, padding, output_padding, groups, dilation
    ((2, 4, 5, 6), (4, 3, 3, 3), 2, 1, 1, 1, 1),
    ((1, 6, 4, 4), (6, 2, 3, 2), (2, 1), (1, 0), (0, 0), 3, (1, 2)),
    ((2, 3, 5, 5), (3, 5, 1, 1), 1, 0, 0, 1, 1),
]


@pytest.mark.parametrize("xs,ws,stride,padding,output_padding,groups,dilation", CONV_TRANSPOSE_CASES)
def test_conv_transpose2d_matches_torch(xs, ws, stride, padding, output_padding, groups, dilation):
    x, w, b = rand(*xs, seed=1), rand(*ws, seed=2), rand(ws[1] * groups, seed=3)
    check_op(PF.conv_transpose2d, F.conv_transpose2d,
             [x, w, b, stride, padding, output_padding, groups, dilation], device=DEV)


# ---- depthwise ------------------------------------------------------------------------------

DEPTHWISE_CASES = [  # (N, C, H, W), multiplier, kernel, stride, padding, dilation, bias
    ((2, 3, 9, 8), 1, 3, 1, 1, 1, True),
    ((2, 4, 10, 7), 2, (3, 2), (2, 1), (1, 0), 1, False),
    ((1, 5, 12, 12), 3, 5, 2, 4, 2, True),
    ((0, 3, 5, 5), 1, 3, 1, 1, 1, True),
]


@pytest.mark.parametrize("xs,mult,k,stride,padding,dilation,bias", DEPTHWISE_CASES)
def test_depthwise_matches_torch(xs, mult, k, stride, padding, dilation, bias):
    C = xs[1]
    kh, kw = (k, k) if isinstance(k, int) else k
    x, w = rand(*xs, seed=1), rand(C * mult, 1, kh, kw, seed=2)
    b = rand(C * mult, seed=3) if bias else None
    check_op(lambda x, w, b: PF.depthwise_conv2d(x, w, b, stride, padding, dilation),
             lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups=C), [x, w, b], device=DEV)


# ---- max pooling ------------------------------------------------------------------------------

POOL_CASES = [  # (N, C, H, W), kernel, stride, padding, dilation, ceil_mode
    ((2, 3, 9, 8), 2, 2, 0, 1, False),
    ((2, 3, 9, 8), 3, 2, 1, 1, True),
    ((1, 2, 11, 10), (3, 2), (1, 2), (1, 1), (2, 1), False),
    ((1, 2, 7, 7), 3, 1, 1, 1, False),  # overlapping windows: the backward gathers several
    ((0, 3, 6, 6), 2, 2, 0, 1, False),
]

# Windows made only of padding (dilation wider than the input): -inf, and torch's index, the
# window's first tap past the leading padding (h0 * W + w0), which lies outside the window; on
# CPU and CUDA alike. Its gradient goes to that position when it lies in the plane (as the CPU
# kernel and torch's CPU kernel do), nowhere otherwise.
ALL_PADDING_POOL_CASES = [
    ((2, 3, 2, 2), 2, 2, 1, 3, False),   # every window is padding: 2x2 input, k=2, d=3, p=1 (index 6)
    ((1, 2, 5, 2), (1, 2), 1, (0, 1), (1, 3), False),  # rows fine, columns all padding: indices alias pixels
    ((1, 1, 2, 9), 2, 1, 1, 3, False),   # rows all padding, columns fine
]


@pytest.mark.parametrize("xs,k,stride,padding,dilation,ceil_mode", POOL_CASES)
def test_max_pool2d_matches_torch(xs, k, stride, padding, dilation, ceil_mode):
    args = (k, stride, padding, dilation, ceil_mode, True)
    check_op(lambda x: PF.max_pool2d(x, *args), lambda x: F.max_pool2d(x, *args), [rand(*xs, seed=4)],
             device=DEV)


@pytest.mark.parametrize("xs,k,stride,padding,dilation,ceil_mode", ALL_PADDING_POOL_CASES)
def test_max_pool2d_all_padding_windows_like_torch(xs, k, stride, padding, dilation, ceil_mode):
    x = rand(*xs, seed=4).to(DEV)
    args = (k, stride, padding, dilation, ceil_mode, True)
    y, idx = PF.max_pool2d(x, *args)
    ry, ridx = F.max_pool2d(x, *args)
    assert torch.equal(idx, ridx) and torch.equal(y, ry)
    assert torch.isinf(y).any()
    # the gradient as the CPU kernel gives it (torch's CPU kernel writes past the plane here)
    grads = []
    for device in ("cpu", DEV):
        xg = x.detach().to(device).requires_grad_()
        out, _ = PF.max_pool2d(xg, *args)
        gy = torch.arange(1, out.numel() + 1, dtype=out.dtype, device=device).view(out.shape)
        grads.append(torch.autograd.grad(out, xg, gy)[0])
    assert torch.equal(grads[1].cpu(), grads[0])


def test_max_pool2d_ties_nan_and_inf_like_torch():
    x = torch.randint(0, 3, (2, 3, 8, 8)).double()  # many ties
    x[0, 0, 1, 1] = float("nan")
    x[0, 0, 1, 2] = float("nan")                    # two NaNs in one window
    x[1, 2] = float("-inf")                         # a whole plane of -inf
    for dtype in (torch.float32, torch.float64):
        xd = x.to(DEV, dtype)
        y, idx = PF.max_pool2d(xd, 3, 1, 1, return_indices=True)
        ry, ridx = F.max_pool2d(xd, 3, 1, 1, return_indices=True)
        assert torch.equal(idx, ridx)
        torch.testing.assert_close(y, ry, equal_nan=True, rtol=0, atol=0)


# (N, C, H, W) pooled by max_pool2d(kernel, stride, padding), then unpooled with the same
# geometry into output_size (None: the default size). Every index comes from a real pooling of
# a plane of the unpooled size, so all are in range (torch's own CUDA unpool would hit a device
# assert on a bad one and poison the context for the rest of the run).
UNPOOL_CASES = [
    ((2, 3, 8, 8), 2, 2, 0, None),
    ((2, 3, 9, 9), 2, 2, 0, [9, 9]),      # default 8x8; 9x9 is in the allowed range (7..9)
    ((2, 3, 8, 9), 2, 2, 0, [8, 9]),
    ((1, 2, 7, 7), 3, 2, 1, None),        # overlapping windows: repeated indices
]


def _unpool_inputs(xs, k, stride, padding, seed=5):
    x = rand(*xs, seed=seed)
    _, idx = F.max_pool2d(x, k, stride, padding, return_indices=True)
    return rand(*idx.shape, seed=seed + 1), idx


@pytest.mark.parametrize("xs,k,stride,padding,size", UNPOOL_CASES)
def test_max_unpool2d_matches_torch(xs, k, stride, padding, size):
    v, idx = _unpool_inputs(xs, k, stride, padding)
    if k == 3:  # repeated indices: which value lands is unspecified (as in torch); compare the gradient only
        v.fill_(1.5)
    idx = idx.to(DEV)
    check_op(lambda v: PF.max_unpool2d(v, idx, k, stride, padding, output_size=size),
             lambda v: F.max_unpool2d(v, idx, k, stride, padding, output_size=size), [v], device=DEV)


def test_max_unpool2d_bad_output_size_raises_before_any_kernel():
    v, idx = _unpool_inputs((2, 3, 8, 9), 2, 2, 0)
    v, idx = v.to(DEV), idx.to(DEV)
    with pytest.raises(ValueError, match="output_size"):
        PF.max_unpool2d(v, idx, 2, output_size=[9, 10])  # default 8x8: at most 9x9
    torch.testing.assert_close(PF.max_unpool2d(v, idx, 2, output_size=[8, 9]),
                               F.max_unpool2d(v, idx, 2, output_size=[8, 9]), rtol=0, atol=0)


def test_max_unpool2d_bad_index_raises_and_the_context_stays_usable():
    """A bad index is skipped by the kernel and reported through a flag (no device assert), so
    the error is a ValueError and the next kernels run normally."""
    v = torch.randn(1, 2, 2, 2, device=DEV)
    idx = torch.zeros(1, 2, 2, 2, dtype=torch.int64, device=DEV)
    idx[0, 1, 1, 0] = 99  # plane of 4 x 4 = 16 elements
    with pytest.raises(ValueError, match="99"):
        PF.max_unpool2d(v, idx, 2)
    idx[0, 1, 1, 0] = 3
    torch.testing.assert_close(PF.max_unpool2d(v, idx, 2), F.max_unpool2d(v, idx, 2), rtol=0, atol=0)


# ---- batch norm ------------------------------------------------------------------------------

BN_SHAPES = [(4, 3, 5, 6), (8, 5), (3, 4, 7), (2, 6, 33, 40)]


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_train_matches_torch(shape, affine):
    C = shape[1]
    w, b = (rand(C, seed=7), rand(C, seed=8)) if affine else (None, None)
    x = rand(*shape, seed=9) * 3 + 5  # a mean far from zero
    check_op(lambda x, w, b: PF.batch_norm(x, None, None, w, b, True),
             lambda x, w, b: F.batch_norm(x, None, None, w, b, True), [x, w, b], device=DEV)


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_fused_residual_relu_matches_torch(shape):
    C = shape[1]
    x, r = rand(*shape, seed=9) * 3 + 5, rand(*shape, seed=10) * 4
    check_op(lambda x, r, w: PF.batch_norm(x, None, None, w, None, True, residual=r, relu=True),
             lambda x, r, w: F.relu(F.batch_norm(x, None, None, w, None, True) + r), [x, r, rand(C, seed=7)],
             device=DEV)


def test_batch_norm_empty_batch_like_cpu():
    """Statistics of no values are 0 (the CPU kernel's and the emulator's answer), not 0 / 0."""
    from pycnn import _C_cuda
    for dtype in (torch.float32, torch.float64):
        mean = torch.full((3,), float("nan"), device=DEV, dtype=dtype)
        var = torch.full((3,), float("nan"), device=DEV, dtype=dtype)
        invstd = torch.full((3,), float("nan"), device=DEV, dtype=dtype)
        _C_cuda.batch_norm_stats(torch.cuda.current_stream().cuda_stream, native._CUDA_DTYPE_CODE[dtype],
                                 0, 3, 4, 0, mean.data_ptr(), var.data_ptr(), invstd.data_ptr(), 0.25)
        torch.cuda.synchronize()
        assert torch.equal(mean, torch.zeros_like(mean)) and torch.equal(var, torch.zeros_like(var))
        assert torch.equal(invstd, torch.full_like(invstd, 2.0))  # 1 / sqrt(0 + eps)
    rm, rv = torch.zeros(3, device=DEV), torch.ones(3, device=DEV)
    y = PF.batch_norm(torch.randn(0, 3, 4, device=DEV), rm, rv, None, None, True)
    assert y.shape == (0, 3, 4)


def test_batch_norm_running_stats_update_like_torch():
    x = rand(6, 4, 5, 5, seed=10).to(DEV)
    rm, rv = torch.zeros(4, device=DEV, dtype=torch.float64), torch.ones(4, device=DEV, dtype=torch.float64)
    rm2, rv2 = rm.clone(), rv.clone()
    PF.batch_norm(x, rm, rv, None, None, True, 0.3, 1e-3)
    F.batch_norm(x, rm2, rv2, None, None, True, 0.3, 1e-3)
    torch.testing.assert_close(rm, rm2)
    torch.testing.assert_close(rv, rv2)


def test_batch_norm_eval_matches_torch():
    C = 4
    rm, rv = rand(C, seed=11), rand(C, seed=12).abs() + 0.5
    x, w, b = rand(3, C, 6, 5, seed=13), rand(C, seed=14), rand(C, seed=15)
    check_op(lambda x, w, b: PF.batch_norm(x, rm.to(x), rv.to(x), w, b, False),
             lambda x, w, b: F.batch_norm(x, rm.to(x), rv.to(x), w, b, False), [x, w, b], device=DEV)


# ---- linear ----------------------------------------------------------------------------------

LINEAR_CASES = [(5, 7, 3, True), (0, 4, 3, True), (33, 65, 17, False), (300, 200, 500, True)]  # m, k, n, bias


@pytest.mark.parametrize("m,k,n,bias", LINEAR_CASES)
def test_linear_matches_torch(m, k, n, bias):
    check_op(PF.linear, F.linear, [rand(m, k, seed=1), rand(n, k, seed=2), rand(n, seed=3) if bias else None],
             device=DEV)


# ---- gradcheck (float64, on the GPU) ---------------------------------------------------------

def _cuda64(*ts):
    return [t.to(DEV) if isinstance(t, torch.Tensor) else t for t in ts]


def test_gradcheck_cuda():
    assert gradcheck(lambda x, w, b: PF.conv2d(x, w, b, 2, 1, 1, 2),
                     _cuda64(rand(2, 4, 6, 5, seed=1), rand(4, 2, 3, 3, seed=2), rand(4, seed=3)))
    assert gradcheck(lambda x, w, b: PF.conv_transpose2d(x, w, b, 2, 1, 1),
                     _cuda64(rand(1, 3, 4, 3, seed=1), rand(3, 2, 3, 3, seed=2), rand(2, seed=3)))
    assert gradcheck(lambda x, w, b: PF.depthwise_conv2d(x, w, b, 1, 1),
                     _cuda64(rand(2, 3, 5, 5, seed=1), rand(6, 1, 3, 3, seed=2), rand(6, seed=3)))
    g = torch.Generator().manual_seed(0)
    distinct = torch.randperm(2 * 3 * 6 * 7, generator=g).double().view(2, 3, 6, 7) / 10  # no ties
    assert gradcheck(lambda x: PF.max_pool2d(x, 3, 2, 1), _cuda64(distinct))
    assert gradcheck(lambda x, w, b: PF.batch_norm(x, None, None, w, b, True),
                     _cuda64(rand(4, 3, 3, 2, seed=1), rand(3, seed=2), rand(3, seed=3)))
    assert gradcheck(PF.linear, _cuda64(rand(4, 6, seed=1), rand(3, 6, seed=2), rand(3, seed=3)))


# ---- opcheck on CUDA tensors -----------------------------------------------------------------

def opcheck_cases(device):
    """(op, args) pairs for torch.library.opcheck, on `device` (shared with the emulator test)."""
    d = dict(dtype=torch.float64, device=device)
    x = torch.randn(2, 4, 6, 5, **d, requires_grad=True)
    w = torch.randn(6, 2, 3, 2, **d, requires_grad=True)
    b = torch.randn(6, **d, requires_grad=True)
    ops = torch.ops.pycnn
    # padding [top, bottom, left, right] = [1, 0, 2, 1], stride [1, 2]: OH = 6 + 1 - 3 + 1 = 5,
    # OW = (5 + 3 - 2) // 2 + 1 = 4 (tests/test_conv.py has the same case on the CPU)
    y = ops.conv2d.default(x.detach(), w.detach(), b.detach(), [1, 2], [1, 0, 2, 1], [1, 1], 2)
    assert y.shape == (2, 6, 5, 4)
    cases = [(ops.conv2d.default, (x, w, b, [1, 2], [1, 0, 2, 1], [1, 1], 2)),
             (ops.conv2d_backward.default, (torch.randn(y.shape, **d), x.detach(), w.detach(),
                                            [1, 2], [1, 0, 2, 1], [1, 1], 2, [True, True, True]))]
    wt = torch.randn(4, 3, 3, 3, **d, requires_grad=True)
    cases.append((ops.conv_transpose2d.default, (x, wt, None, [2, 2], [1, 1], [1, 0], 1, [1, 1])))
    wd = torch.randn(8, 1, 3, 3, **d, requires_grad=True)
    cases.append((ops.depthwise_conv2d.default, (x, wd, None, [1, 1], [1, 1, 1, 1], [1, 1])))
    xp = torch.randperm(2 * 3 * 9 * 8, device=device).to(torch.float64).view(2, 3, 9, 8).requires_grad_()
    cases.append((ops.max_pool2d.default, (xp, [3, 3], [2, 2], [1, 1], [1, 1], False)))
    _, idx = F.max_pool2d(xp.detach(), 2, return_indices=True)  # from 9x8 planes: unpool into 9x8
    cases.append((ops.max_unpool2d.default, (torch.randn(idx.shape, **d, requires_grad=True), idx, [9, 8])))
    cases.append((ops.max_unpool2d_backward.default, (torch.randn(2, 3, 9, 8, **d), idx)))
    cases.append((ops.linear.default, (torch.randn(4, 6, **d, requires_grad=True),
                                       torch.randn(3, 6, **d, requires_grad=True), torch.randn(3, **d))))
    xb = torch.randn(4, 3, 5, **d, requires_grad=True)
    cases.append((ops.batch_norm_forward.default,
                  (xb, None, None, torch.randn(3, **d, requires_grad=True), torch.randn(3, **d), True, 1e-5)))
    return cases


def test_opcheck_cuda():
    for op, args in opcheck_cases(DEV):
        torch.library.opcheck(op, args)


# ---- determinism: backward passes written as gathers give the same bits every run -------------

def _grads(fn, *inputs):
    ins = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*ins)
    gy = torch.randn(out.shape, generator=torch.Generator(DEV).manual_seed(0), device=DEV, dtype=out.dtype)
    return torch.autograd.grad(out, ins, gy)


@pytest.mark.parametrize("name", ["max_pool2d", "conv2d", "depthwise", "conv2d_weight", "batch_norm"])
def test_backward_is_bitwise_reproducible(name):
    x = torch.randn(8, 16, 30, 30, device=DEV)
    cases = {
        "max_pool2d": (lambda x: PF.max_pool2d(x, 3, 1, 1), [x]),  # stride 1: up to 9 windows per pixel
        "conv2d": (lambda x: PF.conv2d(x, w, None, 1, 1), [x]),
        "depthwise": (lambda x: PF.depthwise_conv2d(x, wd, None, 1, 2, 2), [x]),
        "conv2d_weight": (lambda w: PF.conv2d(x, w, None, 2, 1), [torch.randn(32, 16, 3, 3, device=DEV)]),
        "batch_norm": (lambda x: PF.batch_norm(x, None, None, None, None, True), [x]),
    }
    w = torch.randn(32, 16, 3, 3, device=DEV)
    wd = torch.randn(32, 1, 5, 5, device=DEV)
    fn, inputs = cases[name]
    first = _grads(fn, *inputs)
    for _ in range(3):
        again = _grads(fn, *inputs)
        for a, b in zip(first, again):
            assert torch.equal(a, b), f"{name}: backward differs between runs"


# ---- streams, devices, errors ----------------------------------------------------------------

def test_runs_on_the_current_stream():
    """The input is produced on a busy side stream; a kernel launched anywhere else would read
    it before it is written."""
    x, w = torch.randn(4, 8, 32, 32, device=DEV), torch.randn(16, 8, 3, 3, device=DEV)
    expected = PF.conv2d(x + 1, w, None, 1, 1)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # ~tens of ms of GPU time on `side`
        x1 = x + 1
        y = PF.conv2d(x1, w, None, 1, 1)
        pooled = PF.max_pool2d(y, 2)
    torch.cuda.current_stream().wait_stream(side)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    torch.testing.assert_close(pooled, F.max_pool2d(expected, 2), rtol=0, atol=0)


def test_mixed_devices_raise():
    x = torch.randn(1, 3, 5, 5, device=DEV)
    with pytest.raises(RuntimeError, match="cpu"):
        PF.conv2d(x, torch.randn(4, 3, 3, 3))
    with pytest.raises(RuntimeError, match="cpu"):
        PF.linear(torch.randn(2, 3, device=DEV), torch.randn(4, 3))
    with pytest.raises(RuntimeError, match="cpu"):
        PF.depthwise_conv2d(x, torch.randn(3, 1, 3, 3))


def test_cuda_driver_check_passes():
    native.check_cuda_runtime()  # raises a clear error if the driver is older than the runtime
    assert native._C_cuda.runtime_status()["devices"] >= 1
