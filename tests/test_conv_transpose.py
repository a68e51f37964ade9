import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings, strategies as st

import pycnn
import pycnn.functional as PF
from reference import check_op, gradcheck

# (N, Cin, H, W), (Cout_per_group, kh, kw), stride, padding, output_padding, groups, dilation, bias
CASES = [
    ((2, 3, 5, 4), (4, 3, 3), 1, 0, 0, 1, 1, True),
    ((2, 3, 5, 4), (4, 3, 3), 2, 1, 1, 1, 1, False),
    ((3, 6, 4, 7), (2, 2, 3), (2, 3), (1, 0), (1, 2), 3, 1, True),
    ((1, 4, 6, 5), (3, 3, 2), 1, (1, 1), (1, 0), 2, (2, 1), True),   # output_padding < dilation, stride 1
    ((2, 4, 3, 3), (5, 1, 1), 1, 0, 0, 1, 1, True),                  # pointwise
    ((2, 4, 3, 3), (2, 1, 1), 3, 0, 2, 2, 1, False),                 # strided 1x1: gaps get only the bias
    ((1, 2, 1, 1), (3, 4, 5), 1, 0, 0, 1, 1, True),
    ((2, 2, 6, 5), (2, 5, 4), 2, 2, 0, 1, (1, 2), True),
    ((0, 3, 4, 4), (2, 3, 3), 2, 1, 1, 1, 1, True),                  # empty batch
    ((5, 2, 4, 3), (3, 3, 3), 1, 1, 0, 1, 1, True),
]


def _tensors(x_shape, w_shape, groups, bias, gen=None):
    x = torch.randn(*x_shape, generator=gen)
    cout_g, kh, kw = w_shape
    w = torch.randn(x_shape[-3], cout_g, kh, kw, generator=gen)
    b = torch.randn(cout_g * groups, generator=gen) if bias else None
    return x, w, b


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,output_padding,groups,dilation,bias", CASES)
def test_conv_transpose2d_matches_torch(x_shape, w_shape, stride, padding, output_padding, groups, dilation, bias):
    x, w, b = _tensors(x_shape, w_shape, groups, bias)
    check_op(PF.conv_transpose2d, F.conv_transpose2d, [x, w, b, stride, padding, output_padding, groups, dilation])


def test_conv_transpose2d_unbatched():
    x, w, b = _tensors((3, 4, 5), (2, 3, 3), 1, True)
    out = check_op(PF.conv_transpose2d, F.conv_transpose2d, [x, w, b, 2, 1, 1])
    assert out[0].shape == (2, 8, 10)


def test_conv_transpose2d_empty_batch_gives_zero_weight_grads():
    x, w, b = _tensors((0, 3, 4, 4), (2, 3, 3), 1, True)
    w.requires_grad_(True)
    b.requires_grad_(True)
    y = PF.conv_transpose2d(x, w, b, stride=2)
    assert y.shape == (0, 2, 9, 9)
    gw, gb = torch.autograd.grad(y.sum(), (w, b))
    assert torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros_like(b))


def test_conv_transpose2d_non_contiguous_input_and_weight():
    x = torch.randn(2, 5, 4, 6).permute(0, 3, 1, 2)  # [2, 6, 5, 4]
    w = torch.randn(3, 3, 2, 6).permute(3, 2, 1, 0)  # [6, 2, 3, 3]
    assert not x.is_contiguous() and not w.is_contiguous()

    def ours(x, w, b):
        assert not x.is_contiguous() and not w.is_contiguous()
        return PF.conv_transpose2d(x, w, b, 2, 1, 1, 3)

    check_op(ours, lambda x, w, b: F.conv_transpose2d(x, w, b, 2, 1, 1, 3), [x, w, torch.randn(6)])


def test_conv_transpose2d_batch_larger_than_workspace():
    # per sample (conv view): Cout*kh*kw*H*W = 2*3*3*4*4 = 288 elements = 2304 bytes in float64
    x, w, b = _tensors((5, 3, 4, 4), (2, 3, 3), 1, True)
    old = pycnn.get_workspace_limit()
    try:
        pycnn.set_workspace_limit(2 * 288 * 8)
        check_op(PF.conv_transpose2d, F.conv_transpose2d, [x, w, b, 2, 1, 1])
        pycnn.set_workspace_limit(1)
        check_op(PF.conv_transpose2d, F.conv_transpose2d, [x, w, b, 2, 1, 1])
    finally:
        pycnn.set_workspace_limit(old)
    assert pycnn.get_workspace_limit() == old


def test_conv_transpose2d_deterministic():
    x, w, b = _tensors((3, 4, 6, 6), (3, 3, 3), 2, True)
    x.requires_grad_(True)
    runs = []
    for _ in range(2):
        y = PF.conv_transpose2d(x, w, b, 2, 1, 0, 2)
        runs.append((y, *torch.autograd.grad(y, (x,), torch.ones_like(y))))
    for a, c in zip(*runs):
        assert torch.equal(a, c)


# Output channels per group: mostly 1-3, sometimes up to 40 (more than one GEMM register tile).
CHANNELS_PER_GROUP = st.one_of(st.integers(1, 3), st.integers(4, 40))
# "free": every parameter drawn; "kernel_eq_stride": stride = kernel; "tiled": also no padding,
# no output_padding and no dilation, so the taps tile the output (col2im's permutation path).
STRIDE_MODES = st.sampled_from(["free", "free", "kernel_eq_stride", "tiled"])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 3), cg=st.integers(1, 3), kg=CHANNELS_PER_GROUP, groups=st.integers(1, 3),
       h=st.integers(1, 6), w=st.integers(1, 6), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
       oph=st.integers(0, 2), opw=st.integers(0, 2), dh=st.integers(1, 2), dw=st.integers(1, 2), bias=st.booleans(),
       mode=STRIDE_MODES)
def test_conv_transpose2d_property(n, cg, kg, groups, h, w, kh, kw, sh, sw, ph, pw, oph, opw, dh, dw, bias, mode):
    if mode != "free":
        sh, sw = kh, kw
    if mode == "tiled":
        ph = pw = oph = opw = 0
        dh = dw = 1
    assume(oph < max(sh, dh) and opw < max(sw, dw))
    assume((h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1 >= 1 and (w - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1 >= 1)
    x = torch.randn(n, cg * groups, h, w)
    wt = torch.randn(cg * groups, kg, kh, kw)
    b = torch.randn(kg * groups) if bias else None
    check_op(PF.conv_transpose2d, F.conv_transpose2d, [x, wt, b, (sh, sw), (ph, pw), (oph, opw), groups, (dh, dw)])


def test_conv_transpose2d_gradcheck():
    x, w, b = _tensors((2, 4, 3, 4), (2, 3, 2), 2, True)
    assert gradcheck(lambda x, w, b: PF.conv_transpose2d(x, w, b, (2, 1), (1, 0), (1, 0), 2, (1, 2)), [x, w, b])


def test_conv_transpose2d_opcheck():
    d = dict(dtype=torch.float64)
    x = torch.randn(2, 4, 3, 4, **d, requires_grad=True)
    w = torch.randn(4, 3, 3, 2, **d, requires_grad=True)
    b = torch.randn(6, **d, requires_grad=True)
    args = (x, w, b, [2, 1], [1, 0], [1, 0], 2, [1, 2])
    torch.library.opcheck(torch.ops.pycnn.conv_transpose2d.default, args)
    torch.library.opcheck(torch.ops.pycnn.conv_transpose2d.default, (x, w, None, [1, 1], [0, 0], [0, 0], 2, [1, 1]))
    y = torch.ops.pycnn.conv_transpose2d(x, w, b, *args[3:])
    gy = torch.randn_like(y)
    torch.library.opcheck(torch.ops.pycnn.conv_transpose2d_backward.default,
                          (gy, x.detach(), w.detach(), [2, 1], [1, 0], [1, 0], 2, [1, 2], [True, True, True]))
    torch.library.opcheck(torch.ops.pycnn.conv_transpose2d_backward.default,
                          (gy, x.detach(), w.detach(), [2, 1], [1, 0], [1, 0], 2, [1, 2], [True, False, True]))


def _call(**kw):
    args = dict(input=torch.randn(1, 4, 5, 5), weight=torch.randn(4, 2, 3, 3), bias=None, stride=1, padding=0,
                output_padding=0, groups=1, dilation=1)
    args.update(kw)
    return PF.conv_transpose2d(**args)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(weight=torch.randn(3, 2, 3, 3)), ValueError, "weight has 3 input channels"),
    (dict(groups=3, weight=torch.randn(4, 2, 3, 3)), ValueError, "input channels 4 are not divisible by groups=3"),
    (dict(groups=0), ValueError, "groups must be a positive int, got 0"),
    (dict(stride=0), ValueError, "stride must be positive"),
    (dict(dilation=0), ValueError, "dilation must be positive"),
    (dict(padding=-1), ValueError, "padding must be non-negative"),
    (dict(output_padding=-1), ValueError, "output_padding must be non-negative"),
    (dict(stride=2, output_padding=2), ValueError, "output_padding .* must be smaller than either stride"),
    (dict(output_padding=1), ValueError, "must be smaller than either stride"),
    (dict(padding=4), ValueError, "output size would be -1x-1"),
    (dict(bias=torch.randn(4)), ValueError, "bias has 4 elements, expected 2"),
    (dict(weight=torch.randn(4, 2, 3, 3).double()), TypeError, "float64"),
    (dict(input=torch.ones(1, 4, 5, 5, dtype=torch.int32), weight=torch.ones(4, 2, 3, 3, dtype=torch.int32)),
     TypeError, "int32"),
    (dict(input=torch.randn(4, 5)), ValueError, "input must be 3-D or 4-D"),
    (dict(weight=torch.randn(4, 2, 3)), ValueError, "weight must be 4-D"),
])
def test_conv_transpose2d_bad_input(kw, exc, match):
    with pytest.raises(exc, match=match):
        _call(**kw)


def test_conv_transpose2d_backward_rejects_wrong_grad_out_shape():
    x, w = torch.randn(1, 4, 5, 5), torch.randn(4, 2, 3, 3)
    with pytest.raises(ValueError, match="grad_out has shape"):
        torch.ops.pycnn.conv_transpose2d_backward(torch.randn(1, 2, 5, 5), x, w, [1, 1], [0, 0], [0, 0], 1, [1, 1],
                                                  [True, True, True])
