"""The Winograd kernels (csrc/cpu/winograd.cpp): F(2x2, 3x3) forward and weight gradient, and
F(4x4, 3x3) forward (off by default: see test_winograd_accuracy_against_float64), for float32
3x3 stride-1 convs with at least 4 channels on each side (8 input channels for the weight
gradient), on every CPU target this build and CPU have (avx512, avx2, neon, generic). Checked
against torch like every op, against the direct/GEMM kernels they replace, against a float64
reference, and on the block/tile edge cases of their layout (tiles in vector lanes: segments of
one tile row within one vector, blocks of 16-32 tiles numbered over the batch)."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

import pycnn
import pycnn.functional as PF
from pycnn import _C
from reference import assert_same_bits_across_threads, check_op

from isa import each_isa as isa  # noqa: E402,F401  (fixture: every CPU target this machine runs)


@contextlib.contextmanager
def winograd4x4(mode):
    previous = _C.set_conv_winograd4x4(mode)
    try:
        yield
    finally:
        _C.set_conv_winograd4x4(previous)


def _shape(x_shape, K, padding, stride=1, dilation=1, groups=1, k=3):
    N, C, H, W = x_shape
    top, left = (padding, padding) if isinstance(padding, int) else padding
    OH = (H + 2 * top - dilation * (k - 1) - 1) // stride + 1
    OW = (W + 2 * left - dilation * (k - 1) - 1) // stride + 1
    return [N, C, H, W, K, OH, OW, k, k, stride, stride, top, left, dilation, dilation, groups]


def _algorithm(x_shape, K, padding, dtype=_C.FLOAT32, **kw):
    return _C.conv2d_forward_algorithm(dtype, _shape(x_shape, K, padding, **kw))


def _inputs(x_shape, K, bias=True):
    g = torch.Generator().manual_seed(sum(x_shape) + K)
    x = torch.randn(*x_shape, generator=g)
    w = torch.randn(K, x_shape[1], 3, 3, generator=g)
    b = torch.randn(K, generator=g) if bias else None
    return x, w, b


# (N, C, H, W), K, padding. Blocks hold 2 vectors of tiles (16 tiles on 4- and 8-lane targets,
# 32 on 16-lane ones), numbered over the batch in raster order.
CASES = [
    ((2, 16, 32, 32), 16, 1),     # 16 tiles per row: whole vectors of one tile row
    ((3, 8, 7, 5), 9, 1),         # odd output: the last tile row and column half outside
    ((5, 12, 8, 8), 24, 1),       # 8x8 maps: a vector holds several tile rows, a block 1-2 images
    ((2, 12, 9, 13), 20, 0),      # no padding, odd sizes
    ((2, 8, 3, 3), 8, 2),         # padding 2: 5x5 output from a 3x3 input
    ((1, 8, 1, 1), 8, 1),         # one output, one tile, mostly padding
    ((33, 16, 4, 4), 16, 1),      # 4 tiles per image: vectors span images; last block partial
    ((1, 8, 70, 66), 8, 1),       # 33 tiles per row: rows split across vectors and blocks
    ((3, 10, 16, 16), 12, (0, 1)),  # asymmetric padding
    ((2, 40, 6, 10), 33, 1),      # channel counts off the register tiles
    ((2, 5, 10, 10), 4, 1),       # 4-7 input channels: Winograd forward, dot-product weight gradient
    ((2, 17, 11, 11), 5, 1),      # 5 outputs: one register tile, mostly padding rows
    ((5, 9, 14, 14), 14, 1),      # 14x14 (7 tiles a row) and K = 14: on 32-register targets the 8-row
                                  # GEMM tile (12 rows would pad K to 24), its second block partial
]

# float32 outputs of 1 MiB and more are written with streaming stores (winograd.cpp kStreamBytes).
STREAMED = [
    ((4, 16, 64, 64), 16),     # output and input gradient 1 MiB each, rows vector-aligned
    ((2, 8, 61, 67), 33),      # 67-wide rows: most row starts off the vector alignment
]


@pytest.mark.parametrize("x_shape,K,padding", CASES)
def test_winograd_matches_torch(isa, x_shape, K, padding):
    assert _algorithm(x_shape, K, padding) == "winograd"
    check_op(PF.conv2d, F.conv2d, list(_inputs(x_shape, K)) + [1, padding])


@pytest.mark.parametrize("x_shape,K", STREAMED)
def test_winograd_streamed_outputs_match_torch(isa, x_shape, K):
    N, _, H, W = x_shape
    assert _algorithm(x_shape, K, 1) == "winograd" and N * K * H * W * 4 >= 1 << 20
    # The weight gradient sums N*H*W (up to 16384) products per weight: float32 rounding (ours
    # and torch's) reaches ~5e-4 there.
    tol = {torch.float32: dict(rtol=1e-4, atol=2e-3), torch.float64: dict(rtol=1e-7, atol=1e-7)}
    check_op(PF.conv2d, F.conv2d, list(_inputs(x_shape, K)) + [1, 1], tol=tol)


# F(4x4): 4x4 output tiles from 6x6 input tiles. Edge cases of its layout: odd sizes, maps
# smaller than one tile, partial tile rows and blocks, channels 4, 5, 17, 33, padding 0/1/2.
CASES_4X4 = [
    ((2, 16, 32, 32), 16, 1, True),     # 8 tiles per row
    ((2, 4, 9, 7), 4, 1, True),         # 4 channels, odd sizes: partial last tile row and column
    ((3, 5, 2, 3), 5, 1, False),        # maps smaller than one tile, 5 channels, no bias
    ((1, 17, 3, 3), 33, 2, True),       # padding 2: 5x5 output, one partial tile wider than x
    ((2, 33, 13, 11), 17, 0, False),    # no padding, odd sizes, 17 and 33 channels
    ((5, 8, 6, 6), 12, 1, True),        # 2x2 tiles per image: vectors and blocks span images
    ((1, 8, 70, 38), 9, 1, True),       # 18 tiles per row: rows split across vectors and blocks
    ((3, 10, 14, 18), 12, (2, 0), False),  # asymmetric padding
    ((7, 16, 4, 4), 16, 1, True),       # one tile per image, last block partial
]


@pytest.mark.parametrize("x_shape,K,padding,bias", CASES_4X4)
def test_winograd4x4_matches_torch(isa, x_shape, K, padding, bias):
    x, w, b = _inputs(x_shape, K, bias)
    with winograd4x4(2):
        assert _algorithm(x_shape, K, padding) == "winograd4x4"
        # F(4x4)'s float32 error is larger than F(2x2)'s: the forward and the input gradient
        # (the forward with the flipped kernel) against float64, to 2e-4 of the largest value.
        xx, ww = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        y = PF.conv2d(xx, ww, b, 1, padding)
        gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        gx, gw = torch.autograd.grad(y, (xx, ww), gy)
    xr, wr = x.double().requires_grad_(True), w.double().requires_grad_(True)
    yr = F.conv2d(xr, wr, None if b is None else b.double(), 1, padding)
    gxr, gwr = torch.autograd.grad(yr, (xr, wr), gy.double())
    for ours, ref in ((y, yr), (gx, gxr), (gw, gwr)):
        assert ours.shape == ref.shape
        err = (ours.double() - ref).abs().max().item()
        assert err <= 2e-4 * ref.abs().max().item() + 1e-6


def test_winograd4x4_size_rule():
    # Off by default; mode 1 gives it the larger maps with enough channels (measured: see
    # csrc/cpu/winograd.cpp), small maps and few channels keep F(2x2).
    assert _algorithm((1, 64, 32, 32), 64, 1) == "winograd"
    with winograd4x4(1):
        assert _algorithm((1, 64, 32, 32), 64, 1) == "winograd4x4"
        assert _algorithm((1, 32, 16, 16), 32, 1) == "winograd4x4"
        assert _algorithm((1, 64, 8, 8), 64, 1) == "winograd"
        assert _algorithm((1, 8, 32, 32), 8, 1) == "winograd"


def test_conv_transpose2d_3x3_stride1_through_winograd(isa):
    # Its forward is conv2d's input gradient (a Winograd forward with the flipped kernel), its
    # input gradient conv2d's forward, its weight gradient conv2d's weight gradient.
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(3, 16, 9, 12, generator=g), torch.randn(16, 24, 3, 3, generator=g)
    check_op(PF.conv_transpose2d, F.conv_transpose2d, [x, w, torch.randn(24, generator=g), 1, 1])


def _forward_and_grads(x, w, b, padding):
    x, w = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y = PF.conv2d(x, w, b, 1, padding)
    return (y.detach(), *torch.autograd.grad(y, (x, w), torch.linspace(-1, 1, y.numel()).view_as(y)))


@pytest.mark.parametrize("x_shape,K,padding", [CASES[0], CASES[2], CASES[6]])
def test_winograd_agrees_with_the_plain_kernels(isa, x_shape, K, padding):
    x, w, b = _inputs(x_shape, K)
    fast = _forward_and_grads(x, w, b, padding)
    previous = _C.set_conv_winograd(False)
    try:
        assert _algorithm(x_shape, K, padding) in ("direct", "im2col_gemm")
        plain = _forward_and_grads(x, w, b, padding)
    finally:
        _C.set_conv_winograd(previous)
    for a, c in zip(fast, plain):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5 * c.abs().max().item())


# ResNet-20's 3x3 layers (16/32/64 channels at 32x32/16x16/8x8), N=4, He-initialised weights.
RESNET_LAYERS = [(16, 32), (32, 16), (64, 8), (64, 32)]
# Allowed: twice torch's own float32 error against the same float64 reference. Torch's float32
# kernels (GEMM sums in another order) are what users accept; F(2x2) measured 0.4-0.5x of it on
# these layers on avx2 and generic (its transforms are exact-ish: entries 0, +-1, +-0.5), so 2x
# leaves room for other seeds and targets while a real loss (F(4x4): 5-9x) fails. The bound is
# on the max over all outputs (a few hundred thousand), a stable statistic.
ACCURACY_FACTOR = 2.0


def _accuracy(C, H, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, C, H, H, generator=g)
    w = torch.randn(C, C, 3, 3, generator=g) * (2.0 / (9 * C)) ** 0.5
    b = torch.randn(C, generator=g) * 0.1
    ref = F.conv2d(x.double(), w.double(), b.double(), 1, 1)
    torch_err = (F.conv2d(x, w, b, 1, 1).double() - ref).abs().max().item()
    ours_err = (PF.conv2d(x, w, b, 1, 1).double() - ref).abs().max().item()
    return ours_err, torch_err


@pytest.mark.parametrize("C,H", RESNET_LAYERS)
def test_winograd_accuracy_against_float64(isa, C, H):
    assert _algorithm((4, C, H, H), C, 1) == "winograd"
    ours, ref = _accuracy(C, H)
    assert ours <= ACCURACY_FACTOR * ref, f"Winograd error {ours:.3g}, torch's {ref:.3g}"


def test_winograd4x4_accuracy_is_why_it_is_off():
    # F(4x4)'s transforms (entries up to 5 in B, 8 in A, 1/24 in G) cost float32 accuracy: over
    # ACCURACY_FACTOR x torch's error on each of these layers (measured 5-9x on an AMD AVX2 VM,
    # 8-28x on an Intel AVX-512 VM, whose torch kernels err less), so it is off by default. Kept
    # bounded in absolute terms, since torch's own error differs by machine: the outputs are O(1)
    # (unit-variance weights), measured <= 5.5e-5 on generic, avx2 and avx512; a broken transform
    # would be off by O(0.1-1).
    with winograd4x4(2):
        for C, H in RESNET_LAYERS:
            ours, ref = _accuracy(C, H)
            assert ACCURACY_FACTOR * ref < ours <= 5e-4, f"F(4x4) error {ours:.3g}, torch's {ref:.3g}"


@pytest.mark.parametrize("mode", [0, 2])
def test_winograd_deterministic_across_thread_counts(isa, mode):
    # 8 x 256 tiles: 128 (64) blocks, so the weight gradient sums 8 chunks.
    g = torch.Generator().manual_seed(5)
    x, w, b = torch.randn(8, 16, 32, 32, generator=g), torch.randn(16, 16, 3, 3, generator=g), torch.randn(16)
    with winograd4x4(mode):
        assert_same_bits_across_threads(lambda: _forward_and_grads(x, w, b, 1))


@pytest.mark.parametrize("mode", [0, 2])
def test_winograd_lanes_do_not_leak_between_images_or_calls(isa, mode):
    # 8x8 maps put several images in one block: a NaN in image 1 must stay out of images 0 and 2;
    # and the partial block of the next call must not pick up the NaN that the lanes of image 1
    # left in this thread's scratch.
    g = torch.Generator().manual_seed(6)
    x, w = torch.randn(3, 8, 8, 8, generator=g), torch.randn(8, 8, 3, 3, generator=g)
    bad = x.clone()
    bad[1, 0, 4, 4] = float("nan")
    with winograd4x4(mode):
        y = PF.conv2d(bad, w, None, 1, 1)
        assert torch.isnan(y[1]).any() and not torch.isnan(y[0]).any() and not torch.isnan(y[2]).any()
        torch.testing.assert_close(y[::2], F.conv2d(x[::2], w, None, 1, 1), rtol=1e-4, atol=1e-4)
        wb = w.clone().requires_grad_(True)
        gy = torch.ones_like(y)
        gy[1, 0, 2, 2] = float("nan")
        gw_bad, = torch.autograd.grad(PF.conv2d(bad, wb, None, 1, 1), [wb], gy)
        assert torch.isnan(gw_bad).any()
        # Now both operands of the weight gradient's tile sums (x's and gy's transforms) hold NaN
        # in this thread's scratch; a one-image call uses only part of a block.
        x1, w1 = torch.randn(1, 8, 8, 8, generator=g), w.clone().requires_grad_(True)
        wr = w.clone().requires_grad_(True)
        gw, = torch.autograd.grad(PF.conv2d(x1, w1, None, 1, 1).sum(), [w1])
        ref, = torch.autograd.grad(F.conv2d(x1, wr, None, 1, 1).sum(), [wr])
        torch.testing.assert_close(gw, ref, rtol=1e-4, atol=1e-4)
        y1 = PF.conv2d(x1, w, None, 1, 1)
        torch.testing.assert_close(y1, F.conv2d(x1, w, None, 1, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("x_shape,K,padding,kw,expected", [
    ((1, 3, 8, 8), 16, 1, {}, "im2col_gemm"),           # 3 input channels: transforms do not pay
    ((1, 16, 8, 8), 3, 1, {}, "im2col_gemm"),           # 3 outputs
    ((1, 16, 8, 8), 16, 1, dict(stride=2), "im2col_gemm"),
    ((1, 16, 8, 8), 16, 2, dict(dilation=2), "im2col_gemm"),
    ((1, 16, 8, 8), 16, 1, dict(groups=2), "im2col_gemm"),
    ((1, 16, 8, 8), 16, 0, dict(k=1), "pointwise_gemm"),
    ((1, 16, 8, 8), 16, 1, dict(dtype=_C.FLOAT64), "im2col_gemm"),
    ((1, 4, 8, 8), 4, 1, {}, "winograd"),
])
def test_forward_algorithm_choice(isa, x_shape, K, padding, kw, expected):
    got = _algorithm(x_shape, K, padding, **kw)
    if expected == "im2col_gemm" and got == "direct":
        got = "im2col_gemm"  # the direct kernel where a target has it
    assert got == expected
