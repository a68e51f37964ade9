import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import pycnn.functional as PF
from pycnn import _C
from reference import check_op, gradcheck

# torch's own warning about its 'same' padding with even kernels (the reference side)
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")


def _via_depthwise(stride, padding, dilation):
    return lambda x, w, b: PF.depthwise_conv2d(x, w, b, stride, padding, dilation)


def _via_conv2d(stride, padding, dilation):
    return lambda x, w, b: PF.conv2d(x, w, b, stride, padding, dilation, groups=x.shape[-3])


def _torch(stride, padding, dilation):
    return lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups=x.shape[-3])


def _check_both(x, w, b, stride=1, padding=0, dilation=1):
    grad = [True, True, b is not None]
    ref = _torch(stride, padding, dilation)
    check_op(_via_depthwise(stride, padding, dilation), ref, [x, w, b], grad=grad)
    return check_op(_via_conv2d(stride, padding, dilation), ref, [x, w, b], grad=grad)


CASES = [
    # (N, C, H, W), multiplier, (kh, kw), stride, padding, dilation
    ((2, 3, 9, 11), 1, (3, 3), 1, 1, 1),            # 3x3 fast path with borders
    ((2, 3, 9, 11), 2, (3, 3), 1, 1, 1),            # multiplier 2
    ((2, 2, 7, 13), 3, (3, 3), 1, 0, 1),            # multiplier 3, no padding
    ((1, 4, 33, 37), 1, (3, 3), 1, 1, 1),           # rows longer than a vector
    ((2, 3, 12, 10), 1, (3, 3), 1, 2, 2),           # dilated 3x3 fast path
    ((2, 2, 14, 15), 2, (5, 5), 1, 2, 1),           # 5x5 fast path
    ((2, 2, 14, 15), 1, (5, 5), 1, 4, 2),           # dilated 5x5
    ((1, 4, 13, 7), 1, (3, 3), 2, 1, 1),            # stride 2
    ((1, 4, 13, 7), 2, (3, 2), (2, 3), (0, 2), (2, 1)),  # everything asymmetric
    ((3, 2, 8, 8), 1, (3, 3), 1, 0, 2),             # dilation, no padding
    ((2, 3, 6, 6), 1, (1, 1), 1, 2, 1),             # 1x1 with padding larger than the kernel
    ((2, 2, 10, 10), 2, (7, 7), 1, 3, 1),           # generic stride-1 kernel size
    ((2, 2, 10, 10), 1, (3, 3), 3, 4, 2),           # stride 3, large padding
    ((2, 5, 4, 4), 1, (4, 4), 1, "same", 1),        # 'same' with an even kernel: asymmetric padding
    ((1, 3, 9, 8), 2, (3, 4), 1, "same", (2, 1)),   # 'same' + dilation
    ((2, 1, 11, 12), 6, (5, 5), 1, 0, 1),           # C = 1 (LeNet's first layer)
    ((2, 3, 5, 5), 1, (5, 5), 1, 0, 1),             # kernel as large as the input: 1x1 output
    ((2, 2, 3, 4), 1, (3, 3), (2, 1), (3, 3), (1, 1)),  # output larger than the input
]


@pytest.mark.parametrize("shape,mult,kernel,stride,padding,dilation", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_depthwise_matches_torch(shape, mult, kernel, stride, padding, dilation, bias):
    N, C, H, W = shape
    x = torch.randn(shape)
    w = torch.randn(C * mult, 1, *kernel)
    b = torch.randn(C * mult) if bias else None
    _check_both(x, w, b, stride, padding, dilation)


def test_depthwise_unbatched():
    out = _check_both(torch.randn(3, 8, 9), torch.randn(6, 1, 3, 3), torch.randn(6), 1, 1, 1)
    assert out[0].shape == (6, 8, 9)


def test_depthwise_empty_batch():
    out = _check_both(torch.randn(0, 3, 8, 9), torch.randn(3, 1, 3, 3), torch.randn(3), 1, 1, 1)
    assert out[0].shape == (0, 3, 8, 9)


def test_depthwise_non_contiguous():
    x = torch.randn(2, 9, 10, 4).permute(0, 3, 1, 2)  # [2, 4, 9, 10], channels last in memory
    w = torch.randn(3, 3, 8, 1).permute(2, 3, 0, 1)   # [8, 1, 3, 3]
    assert not x.is_contiguous() and not w.is_contiguous()
    _check_both(x, w, torch.randn(16)[::2], 1, 1, 1)
    _check_both(x[:, :, ::2, 1::3], w, None, 2, (1, 0), 1)


def test_depthwise_big_map_deterministic_across_thread_counts():
    x, w = torch.randn(3, 4, 40, 67), torch.randn(8, 1, 3, 3)
    gy = torch.randn(3, 8, 40, 67)
    results = []
    before = _C.get_num_threads()
    try:
        for threads in (1, 2, 3):
            _C.set_num_threads(threads)
            xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
            y = PF.depthwise_conv2d(xx, ww, None, 1, 1)
            results.append((y, *torch.autograd.grad(y, (xx, ww), gy)))
    finally:
        _C.set_num_threads(before)
    for other in results[1:]:
        for a, c in zip(results[0], other):
            assert torch.equal(a, c)
    torch.testing.assert_close(results[0][0], F.conv2d(x, w, None, 1, 1, 1, 4), rtol=1e-4, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(0, 3), c=st.integers(1, 4), mult=st.integers(1, 3), h=st.integers(1, 12), w=st.integers(1, 12),
       kh=st.integers(1, 5), kw=st.integers(1, 5), sh=st.integers(1, 3), sw=st.integers(1, 3),
       ph=st.integers(0, 3), pw=st.integers(0, 3), dh=st.integers(1, 3), dw=st.integers(1, 3), bias=st.booleans())
def test_depthwise_property(n, c, mult, h, w, kh, kw, sh, sw, ph, pw, dh, dw, bias):
    if (h + 2 * ph - dh * (kh - 1) - 1) < 0 or (w + 2 * pw - dw * (kw - 1) - 1) < 0:
        return  # no output position: a bad-input case, tested below
    _check_both(torch.randn(n, c, h, w), torch.randn(c * mult, 1, kh, kw), torch.randn(c * mult) if bias else None,
                (sh, sw), (ph, pw), (dh, dw))


@pytest.mark.parametrize("stride,padding,dilation,mult", [(1, 1, 1, 1), (2, (1, 2), (1, 2), 2), (1, "same", 2, 3)])
def test_depthwise_gradcheck(stride, padding, dilation, mult):
    fn = _via_depthwise(stride, padding, dilation)
    assert gradcheck(fn, [torch.randn(2, 2, 6, 7), torch.randn(2 * mult, 1, 3, 3), torch.randn(2 * mult)])


def test_depthwise_opcheck():
    f64 = dict(dtype=torch.float64)
    x = torch.randn(2, 3, 7, 8, **f64, requires_grad=True)
    w = torch.randn(6, 1, 3, 3, **f64, requires_grad=True)
    b = torch.randn(6, **f64, requires_grad=True)
    torch.library.opcheck(torch.ops.pycnn.depthwise_conv2d.default, (x, w, b, [1, 2], [1, 0, 2, 1], [1, 1]))
    torch.library.opcheck(torch.ops.pycnn.depthwise_conv2d.default, (x, w, None, [1, 1], [1, 1, 1, 1], [2, 1]))
    gy = torch.randn(2, 6, 6, 5, **f64)
    torch.library.opcheck(torch.ops.pycnn.depthwise_conv2d_backward.default,
                          (gy, x.detach(), w.detach(), [1, 2], [1, 0, 2, 1], [1, 1], [True, True, True]))


def _dw(x=None, w=None, b=None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1)):
    x = torch.randn(2, 3, 8, 8) if x is None else x
    w = torch.randn(3, 1, 3, 3) if w is None else w
    return torch.ops.pycnn.depthwise_conv2d(x, w, b, list(stride), list(padding), list(dilation))


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(w=torch.randn(4, 1, 3, 3)), ValueError, "multiplier"),
    (dict(w=torch.randn(3, 2, 3, 3)), ValueError, r"\(3, 2, 3, 3\)"),
    (dict(w=torch.randn(3, 3, 3)), ValueError, "weight must be 4-D"),
    (dict(x=torch.randn(3, 8, 8)), ValueError, "input must be 4-D"),
    (dict(b=torch.randn(4)), ValueError, "bias has 4"),
    (dict(stride=(0, 1)), ValueError, r"stride must be positive, got \(0, 1\)"),
    (dict(dilation=(1, -1)), ValueError, "dilation must be positive"),
    (dict(padding=(0, 0, -1, 0)), ValueError, "padding must be non-negative"),
    (dict(padding=(1, 1)), ValueError, "padding must have 4"),
    (dict(w=torch.randn(3, 1, 9, 3)), ValueError, "output size"),
    (dict(w=torch.randn(3, 1, 3, 3, dtype=torch.float64)), TypeError, "float64"),
    (dict(x=torch.ones(2, 3, 8, 8, dtype=torch.int32), w=torch.ones(3, 1, 3, 3, dtype=torch.int32)), TypeError, "int32"),
    (dict(x=torch.randn(2, 0, 8, 8), w=torch.randn(0, 1, 3, 3)), ValueError, "at least one channel"),
    (dict(x=torch.randn(2, 3, 8, 8, device="meta"), w=torch.randn(3, 1, 3, 3, device="meta")), RuntimeError, "meta"),
])
def test_depthwise_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        _dw(**kwargs)


def test_depthwise_functional_bad_input():
    with pytest.raises(ValueError, match="'same' is not supported for strided"):
        PF.depthwise_conv2d(torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3), padding="same", stride=2)
    with pytest.raises(ValueError, match="input must be 3-D or 4-D"):
        PF.depthwise_conv2d(torch.randn(5, 5), torch.randn(2, 1, 3, 3))
    with pytest.raises(ValueError, match="grad_out has shape"):
        torch.ops.pycnn.depthwise_conv2d_backward(torch.randn(2, 3, 5, 5), torch.randn(2, 3, 8, 8),
                                                  torch.randn(3, 1, 3, 3), [1, 1], [0, 0, 0, 0], [1, 1],
                                                  [True, True, True])
