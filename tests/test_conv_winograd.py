"""The Winograd F(2x2, 3x3) kernels (csrc/cpu/winograd.cpp): float32 3x3 stride-1 convs with at
least 4 channels on each side (8 input channels for the weight gradient), on AVX-512 CPUs.
Checked against torch like every op, against the direct kernels they replace, and on the
block/tile edge cases of their layout."""
import pytest
import torch
import torch.nn.functional as F

import pycnn
import pycnn.functional as PF
from pycnn import _C
from isa import each_isa  # noqa: F401  (fixture)
from reference import check_op


def _shape(x_shape, K, padding, stride=1, dilation=1, groups=1, k=3):
    N, C, H, W = x_shape
    top, left = (padding, padding) if isinstance(padding, int) else padding
    OH = (H + 2 * top - dilation * (k - 1) - 1) // stride + 1
    OW = (W + 2 * left - dilation * (k - 1) - 1) // stride + 1
    return [N, C, H, W, K, OH, OW, k, k, stride, stride, top, left, dilation, dilation, groups]


def _algorithm(x_shape, K, padding, dtype=_C.FLOAT32, **kw):
    return _C.conv2d_forward_algorithm(dtype, _shape(x_shape, K, padding, **kw))


HAS_WINOGRAD = _algorithm((1, 8, 8, 8), 8, 1) == "winograd"
needs_winograd = pytest.mark.skipif(not HAS_WINOGRAD, reason="the Winograd kernels need an AVX-512 CPU")

# (N, C, H, W), K, padding. 32 tiles make a block, numbered over the batch in raster order.
CASES = [
    ((2, 16, 32, 32), 16, 1),     # 16 tiles per row: each 16-lane vector one tile row
    ((3, 8, 7, 5), 9, 1),         # odd output: the last tile row and column half outside
    ((5, 12, 8, 8), 24, 1),       # 8x8 maps: a vector holds 4 tile rows, a block 2 images
    ((2, 12, 9, 13), 20, 0),      # no padding, odd sizes
    ((2, 8, 3, 3), 8, 2),         # padding 2: 5x5 output from a 3x3 input
    ((1, 8, 1, 1), 8, 1),         # one output, one tile, mostly padding
    ((33, 16, 4, 4), 16, 1),      # 4 tiles per image: vectors span 4 images; last block partial
    ((1, 8, 70, 66), 8, 1),       # 33 tiles per row: rows split across vectors and blocks
    ((3, 10, 16, 16), 12, (0, 1)),  # asymmetric padding
    ((2, 40, 6, 10), 33, 1),      # channel counts off the 8/16/32 register tiles
    ((2, 5, 10, 10), 4, 1),       # 4-7 input channels: Winograd forward, dot-product weight gradient
]


@needs_winograd
@pytest.mark.parametrize("x_shape,K,padding", CASES)
def test_winograd_matches_torch(x_shape, K, padding):
    assert _algorithm(x_shape, K, padding) == "winograd"
    g = torch.Generator().manual_seed(sum(x_shape) + K)
    x = torch.randn(*x_shape, generator=g)
    w = torch.randn(K, x_shape[1], 3, 3, generator=g)
    b = torch.randn(K, generator=g)
    check_op(PF.conv2d, F.conv2d, [x, w, b, 1, padding])


@needs_winograd
def test_conv_transpose2d_3x3_stride1_through_winograd():
    # Its forward is conv2d's input gradient (a Winograd forward with the flipped kernel), its
    # input gradient conv2d's forward, its weight gradient conv2d's weight gradient.
    x, w = torch.randn(3, 16, 9, 12), torch.randn(16, 24, 3, 3)
    check_op(PF.conv_transpose2d, F.conv_transpose2d, [x, w, torch.randn(24), 1, 1])


# Shapes along the Winograd kernels' edges. They run on every CPU (checked against torch through
# whatever kernel takes them) and assert a Winograd kernel took them where one exists.
# (N, C, H, W), K, padding, bias
EDGE_CASES = [
    ((1, 4, 5, 7), 4, 0, True),        # 3x5 output: the last tile row and column half outside
    ((1, 4, 1, 1), 8, 1, False),       # 1x1 output: one tile, three quarters unused
    ((2, 8, 2, 3), 4, 1, True),        # 2x3 output: smaller than a tile row pair
    ((1, 8, 4, 5), 17, 0, False),      # 2x3 output without padding
    ((3, 16, 3, 3), 16, 0, True),      # 1x1 output without padding
    ((9, 16, 7, 9), 8, 1, False),      # many samples, odd maps
    ((1, 17, 6, 6), 17, 2, True),      # 17 channels (off the 8/16 tiles), padding 2
    ((2, 17, 9, 4), 64, 1, True),
    ((1, 64, 5, 5), 64, 1, False),
    ((4, 64, 3, 2), 16, 2, True),      # 5x4 output from a 3x2 input
    ((12, 8, 3, 5), 8, 0, True),       # 1x3 outputs: blocks of tiles span many images
    ((1, 16, 33, 35), 4, 1, False),    # 17 x 18 tiles: rows split across vectors and blocks
    ((5, 4, 2, 2), 17, 2, False),
    ((2, 64, 1, 1), 4, 1, True),
    ((40, 8, 2, 3), 8, 1, False),      # 80 tiles from 40 images: the last block partial
]


@pytest.mark.parametrize("x_shape,K,padding,bias", EDGE_CASES)
def test_winograd_edge_shapes_match_torch(each_isa, x_shape, K, padding, bias):
    algorithm = _algorithm(x_shape, K, padding)
    assert algorithm.startswith("winograd") or algorithm in ("direct", "im2col_gemm"), algorithm
    if _algorithm((1, 8, 8, 8), 8, 1).startswith("winograd"):  # this CPU (and ISA) has Winograd
        assert algorithm.startswith("winograd"), algorithm
    g = torch.Generator().manual_seed(sum(x_shape) + K + padding)
    x = torch.randn(*x_shape, generator=g)
    w = torch.randn(K, x_shape[1], 3, 3, generator=g)
    b = torch.randn(K, generator=g) if bias else None
    check_op(PF.conv2d, F.conv2d, [x, w, b, 1, padding])


def _forward_and_grads(x, w, b, padding):
    x, w = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    y = PF.conv2d(x, w, b, 1, padding)
    return (y.detach(), *torch.autograd.grad(y, (x, w), torch.linspace(-1, 1, y.numel()).view_as(y)))


@needs_winograd
@pytest.mark.parametrize("x_shape,K,padding", [CASES[0], CASES[2], CASES[6]])
def test_winograd_agrees_with_the_direct_kernels(x_shape, K, padding):
    x, w, b = torch.randn(*x_shape), torch.randn(K, x_shape[1], 3, 3), torch.randn(K)
    fast = _forward_and_grads(x, w, b, padding)
    previous = _C.set_conv_winograd(False)
    try:
        assert _algorithm(x_shape, K, padding) == "direct"
        plain = _forward_and_grads(x, w, b, padding)
    finally:
        _C.set_conv_winograd(previous)
    for a, c in zip(fast, plain):
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5 * c.abs().max().item())


@needs_winograd
def test_winograd_deterministic_across_thread_counts():
    # 8 x 256 tiles: 64 blocks, so the weight gradient sums 8 chunks.
    x, w, b = torch.randn(8, 16, 32, 32), torch.randn(16, 16, 3, 3), torch.randn(16)
    results = []
    old = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            pycnn.sync_threads()
            results.append(_forward_and_grads(x, w, b, 1))
    finally:
        torch.set_num_threads(old)
        pycnn.sync_threads()
    for other in results[1:]:
        for a, c in zip(results[0], other):
            assert torch.equal(a, c)


@needs_winograd
def test_winograd_lanes_do_not_leak_between_images_or_calls():
    # 8x8 maps put two images in one block: a NaN in image 1 must stay out of images 0 and 2; and
    # the partial block of the next call (16 tiles: lanes 16-31 unused) must not pick up the NaN
    # that lanes 16-31 (image 1) left in this thread's scratch.
    x, w = torch.randn(3, 8, 8, 8), torch.randn(8, 8, 3, 3)
    bad = x.clone()
    bad[1, 0, 4, 4] = float("nan")
    y = PF.conv2d(bad, w, None, 1, 1)
    assert torch.isnan(y[1]).any() and not torch.isnan(y[0]).any() and not torch.isnan(y[2]).any()
    torch.testing.assert_close(y[::2], F.conv2d(x[::2], w, None, 1, 1), rtol=1e-4, atol=1e-4)
    wb = w.clone().requires_grad_(True)
    gy = torch.ones_like(y)
    gy[1, 0, 2, 2] = float("nan")
    gw_bad, = torch.autograd.grad(PF.conv2d(bad, wb, None, 1, 1), [wb], gy)
    assert torch.isnan(gw_bad).any()
    # Now lanes 16-31 of both operands of the weight gradient's tile sums (x's and gy's
    # transforms) hold NaN in this thread's scratch.
    x1, w1 = torch.randn(1, 8, 8, 8), w.clone().requires_grad_(True)
    wr = w.clone().requires_grad_(True)
    gw, = torch.autograd.grad(PF.conv2d(x1, w1, None, 1, 1).sum(), [w1])
    ref, = torch.autograd.grad(F.conv2d(x1, wr, None, 1, 1).sum(), [wr])
    torch.testing.assert_close(gw, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("x_shape,K,padding,kw,expected", [
    ((1, 3, 8, 8), 16, 1, {}, "direct"),                 # 3 input channels: transforms do not pay
    ((1, 16, 8, 8), 3, 1, {}, "direct"),                 # 3 outputs
    ((1, 16, 8, 8), 16, 1, dict(stride=2), "im2col_gemm"),
    ((1, 16, 8, 8), 16, 2, dict(dilation=2), "direct"),
    ((1, 16, 8, 8), 16, 1, dict(groups=2), "im2col_gemm"),
    ((1, 16, 8, 8), 16, 0, dict(k=1), "pointwise_gemm"),
    ((1, 16, 8, 8), 16, 1, dict(dtype=_C.FLOAT64), "im2col_gemm"),
])
def test_forward_algorithm_choice(x_shape, K, padding, kw, expected):
    assert _algorithm(x_shape, K, padding, **kw) == expected
