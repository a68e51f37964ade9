import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings, strategies as st

import pycnn
import pycnn.functional as PF
from pycnn._ops import native
from isa import use_isa
from reference import assert_same_bits_across_threads, check_op, gradcheck

# (N, C, H, W), (K, kh, kw), stride, padding, dilation, groups, bias
CASES = [
    ((2, 3, 7, 9), (4, 3, 3), 1, 1, 1, 1, True),
    ((2, 3, 7, 9), (4, 3, 3), 1, 0, 1, 1, False),
    ((3, 6, 11, 8), (9, 2, 3), (2, 1), (1, 2), (2, 1), 3, True),
    ((1, 6, 10, 10), (4, 3, 3), 2, 1, 1, 2, False),
    ((2, 4, 5, 5), (4, 1, 1), 1, 0, 1, 2, True),          # pointwise, grouped
    ((2, 5, 6, 7), (3, 1, 1), 1, 0, 1, 1, False),         # pointwise
    ((1, 3, 6, 6), (2, 1, 1), 2, 0, 1, 1, True),          # strided 1x1: not pointwise
    ((2, 2, 13, 11), (3, 5, 4), 3, (2, 1), (1, 2), 1, True),
    ((2, 3, 8, 8), (5, 4, 2), 1, "same", 1, 1, True),      # even kernel, 'same' pads bottom/right more
    ((1, 4, 9, 7), (2, 2, 4), 1, "same", (2, 1), 2, False),
    ((2, 3, 6, 5), (2, 3, 2), 1, "valid", 1, 1, True),
    ((1, 1, 1, 1), (1, 1, 1), 1, 0, 1, 1, True),
    ((1, 2, 3, 3), (3, 3, 3), 4, 2, 1, 1, True),          # stride larger than input: 2x2 output
    ((0, 3, 7, 7), (4, 3, 3), 1, 1, 1, 1, True),          # empty batch
    ((5, 3, 4, 6), (2, 3, 3), 1, (0, 1), 1, 1, True),
    # horizontal stride 2, one group: the vectorised stride-2 im2col (forward packing and the
    # weight gradient's columns), with rows of more than 16 outputs and odd sizes
    ((2, 5, 9, 11), (7, 3, 3), 2, 1, 1, 1, True),
    ((2, 4, 16, 16), (8, 3, 3), (1, 2), (0, 1), 1, 1, False),
    ((1, 3, 40, 37), (4, 2, 2), 2, 0, 1, 1, True),
    ((1, 3, 20, 21), (2, 3, 3), 2, 2, 2, 1, True),
]


def _tensors(x_shape, w_shape, groups, bias, gen=None):
    x = torch.randn(*x_shape, generator=gen)
    K, kh, kw = w_shape
    w = torch.randn(K, x_shape[-3] // groups, kh, kw, generator=gen)
    b = torch.randn(K, generator=gen) if bias else None
    return x, w, b


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,dilation,groups,bias", CASES)
def test_conv2d_matches_torch(x_shape, w_shape, stride, padding, dilation, groups, bias):
    x, w, b = _tensors(x_shape, w_shape, groups, bias)
    check_op(PF.conv2d, F.conv2d, [x, w, b, stride, padding, dilation, groups])


def test_conv2d_unbatched():
    x, w, b = _tensors((3, 7, 6), (4, 3, 3), 1, True)
    out = check_op(PF.conv2d, F.conv2d, [x, w, b, 1, 1])
    assert out[0].shape == (4, 7, 6)


def test_conv2d_empty_batch_gives_zero_weight_grads():
    x, w, b = _tensors((0, 3, 5, 5), (2, 3, 3), 1, True)
    w.requires_grad_(True)
    b.requires_grad_(True)
    y = PF.conv2d(x, w, b, padding=1)
    assert y.shape == (0, 2, 5, 5)
    gw, gb = torch.autograd.grad(y.sum(), (w, b))
    assert torch.equal(gw, torch.zeros_like(w)) and torch.equal(gb, torch.zeros_like(b))


def test_conv2d_non_contiguous_input_and_weight():
    x = torch.randn(2, 6, 3, 7).permute(0, 2, 1, 3)  # [2, 3, 6, 7] with channels not outermost
    w = torch.randn(3, 3, 3, 4).permute(3, 2, 1, 0)  # [4, 3, 3, 3], non-contiguous
    assert not x.is_contiguous() and not w.is_contiguous()

    def ours(x, w, b):
        assert not x.is_contiguous() and not w.is_contiguous()  # the layout reached the op
        return PF.conv2d(x, w, b, 1, 1, 1, 1)

    check_op(ours, lambda x, w, b: F.conv2d(x, w, b, 1, 1, 1, 1), [x, w, torch.randn(4)])


def test_conv2d_batch_larger_than_workspace():
    # one float64 sample's columns: C*kh*kw*OH*OW = 3*3*3*6*6 = 972 elements = 7776 bytes
    x, w, b = _tensors((5, 3, 6, 6), (4, 3, 3), 1, True)
    old = pycnn.get_workspace_limit()
    try:
        pycnn.set_workspace_limit(2 * 972 * 8)
        assert native.workspace(x.double(), 972, 5).numel() == 2 * 972  # chunks of 2, 2, 1 samples
        check_op(PF.conv2d, F.conv2d, [x, w, b, 1, 1])
        pycnn.set_workspace_limit(1)  # less than one sample: still one sample at a time
        check_op(PF.conv2d, F.conv2d, [x, w, b, 1, 1])
    finally:
        pycnn.set_workspace_limit(old)
    assert pycnn.get_workspace_limit() == old


def test_cpu_workspace_is_kept_per_thread_and_dtype():
    """The CPU workspace is reused between calls (no allocation per convolution), grown when a call
    needs more, separate per dtype and per thread (two threads never share one), and released by
    set_workspace_limit; convolutions give the same results either way."""
    import threading
    x, w, b = _tensors((3, 3, 6, 6), (4, 3, 3), 1, True)
    a = native.workspace(x, 100, 2)
    assert a.numel() >= 200 and native.workspace(x, 50, 2).data_ptr() == a.data_ptr()
    bigger = native.workspace(x, 300, 2)
    assert bigger.numel() >= 600 and native.workspace(x, 100, 2).data_ptr() == bigger.data_ptr()
    assert native.workspace(x.double(), 100, 2).data_ptr() != bigger.data_ptr()
    other = []
    t = threading.Thread(target=lambda: other.append(native.workspace(x, 100, 2).data_ptr()))
    t.start()
    t.join()
    assert other[0] != bigger.data_ptr()
    pycnn.set_workspace_limit(pycnn.get_workspace_limit())  # same limit: this thread's buffers released
    assert native.workspace(x, 100, 2).numel() == 200
    check_op(PF.conv2d, F.conv2d, [x, w, b, 1, 1])


def test_conv_shape_memo_never_skips_a_check():
    """_conv_shape remembers checked argument sizes; a call that differs in anything the checks
    read (stride, padding, groups, the op naming the error, malformed lists) is checked afresh."""
    from pycnn._ops import conv as C
    x, w = torch.randn(2, 4, 6, 6), torch.randn(4, 4, 3, 3)
    first = C._conv_shape(x, w, [1, 1], [1, 1, 1, 1], [1, 1], 1)
    assert C._conv_shape(x, w, [1, 1], [1, 1, 1, 1], [1, 1], 1) is first  # remembered
    with pytest.raises(ValueError, match="conv2d: stride must be positive"):
        C._conv_shape(x, w, [0, 1], [1, 1, 1, 1], [1, 1], 1)
    with pytest.raises(ValueError, match="conv2d: weight has 4 input channels per group"):
        C._conv_shape(x, w, [1, 1], [1, 1, 1, 1], [1, 1], 2)
    with pytest.raises(ValueError, match="partial_conv2d: kernel 3x3"):
        C._conv_shape(torch.randn(2, 4, 1, 1), w, [1, 1], [0, 0, 0, 0], [1, 1], 1, op="partial_conv2d")
    with pytest.raises(ValueError, match="conv2d: stride must be a list of 2 ints"):
        C._conv_shape(x, w, [[1], 1], [1, 1, 1, 1], [1, 1], 1)  # unhashable: checked, not remembered


def test_conv2d_asymmetric_padding_direct_op():
    x, w, b = _tensors((2, 3, 7, 6), (4, 3, 2), 1, True)
    top, bottom, left, right = 2, 0, 1, 3
    check_op(lambda x, w, b: torch.ops.pycnn.conv2d(x, w, b, [2, 1], [top, bottom, left, right], [1, 2], 1),
             lambda x, w, b: F.conv2d(F.pad(x, (left, right, top, bottom)), w, b, (2, 1), 0, (1, 2)), [x, w, b])


def test_conv2d_direct_op_with_depthwise_shapes():
    # functional.conv2d routes these to pycnn::depthwise_conv2d; the im2col op must agree too.
    x = torch.randn(2, 4, 7, 7)
    w = torch.randn(8, 1, 3, 3)
    check_op(lambda x, w, b: torch.ops.pycnn.conv2d(x, w, b, [1, 1], [1, 1, 1, 1], [1, 1], 4),
             lambda x, w, b: F.conv2d(x, w, b, 1, 1, 1, 4), [x, w, torch.randn(8)])


def test_conv2d_deterministic_across_thread_counts():
    x, w, b = _tensors((5, 4, 9, 9), (6, 3, 3), 2, True)
    x.requires_grad_(True)
    w.requires_grad_(True)
    results = []
    old = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            pycnn.sync_threads()
            y = PF.conv2d(x, w, b, 2, 1, 1, 2)
            results.append((y, *torch.autograd.grad(y, (x, w), torch.ones_like(y))))
    finally:
        torch.set_num_threads(old)
        pycnn.sync_threads()
    for a, c in zip(*results):
        assert torch.equal(a, c)


# Output channels per group: mostly 1-3, sometimes up to 40 (more than one GEMM register tile).
CHANNELS_PER_GROUP = st.one_of(st.integers(1, 3), st.integers(4, 40))
# "free": every parameter drawn; "kernel_eq_stride": stride = kernel; "tiled": also no padding,
# no dilation and an input a whole number of strides (col2im's permutation path).
STRIDE_MODES = st.sampled_from(["free", "free", "kernel_eq_stride", "tiled"])


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 3), cg=st.integers(1, 3), kg=CHANNELS_PER_GROUP, groups=st.integers(1, 3),
       h=st.integers(1, 9), w=st.integers(1, 9), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 3), sw=st.integers(1, 3), ph=st.integers(0, 2), pw=st.integers(0, 2),
       dh=st.integers(1, 2), dw=st.integers(1, 2), bias=st.booleans(), mode=STRIDE_MODES)
def test_conv2d_property(n, cg, kg, groups, h, w, kh, kw, sh, sw, ph, pw, dh, dw, bias, mode):
    if mode != "free":
        sh, sw = kh, kw
    if mode == "tiled":
        ph = pw = 0
        dh = dw = 1
        h, w = kh * (1 + h // kh), kw * (1 + w // kw)
    assume(h + 2 * ph >= dh * (kh - 1) + 1 and w + 2 * pw >= dw * (kw - 1) + 1)
    x = torch.randn(n, cg * groups, h, w)
    wt = torch.randn(kg * groups, cg, kh, kw)
    b = torch.randn(kg * groups) if bias else None
    check_op(PF.conv2d, F.conv2d, [x, wt, b, (sh, sw), (ph, pw), (dh, dw), groups])


def test_conv2d_gradcheck():
    x, w, b = _tensors((2, 4, 6, 5), (4, 3, 2), 2, True)
    assert gradcheck(lambda x, w, b: PF.conv2d(x, w, b, (2, 1), (1, 0), (1, 2), 2), [x, w, b])
    assert gradcheck(lambda x, w, b: PF.conv2d(x, w, b), [x, torch.randn(3, 4, 1, 1), torch.randn(3)])


def test_conv2d_opcheck():
    d = dict(dtype=torch.float64)
    x = torch.randn(2, 4, 6, 5, **d, requires_grad=True)
    w = torch.randn(6, 2, 3, 2, **d, requires_grad=True)
    b = torch.randn(6, **d, requires_grad=True)
    args = (x, w, b, [1, 2], [1, 0, 2, 1], [1, 1], 2)
    torch.library.opcheck(torch.ops.pycnn.conv2d.default, args)
    torch.library.opcheck(torch.ops.pycnn.conv2d.default, (x, w, None, [1, 1], [0, 0, 0, 0], [2, 1], 2))
    gy = torch.randn(2, 6, 5, 4, **d)
    torch.library.opcheck(torch.ops.pycnn.conv2d_backward.default,
                          (gy, x.detach(), w.detach(), [1, 2], [1, 0, 2, 1], [1, 1], 2, [True, True, True]))
    torch.library.opcheck(torch.ops.pycnn.conv2d_backward.default,
                          (gy, x.detach(), w.detach(), [1, 2], [1, 0, 2, 1], [1, 1], 2, [False, True, False]))


def _call(**kw):
    args = dict(input=torch.randn(1, 4, 6, 6), weight=torch.randn(2, 4, 3, 3), bias=None, stride=1, padding=0,
                dilation=1, groups=1)
    args.update(kw)
    return PF.conv2d(**args)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(weight=torch.randn(2, 3, 3, 3)), ValueError, "weight has 3 input channels per group, input has 4"),
    (dict(weight=torch.randn(3, 2, 3, 3), groups=2), ValueError, "output channels 3"),
    (dict(input=torch.randn(1, 5, 6, 6), weight=torch.randn(2, 2, 3, 3), groups=2), ValueError, "input channels 5"),
    (dict(groups=0), ValueError, "groups must be a positive int, got 0"),
    (dict(stride=0), ValueError, r"stride must be positive, got \(0, 0\)"),
    (dict(dilation=(1, -1)), ValueError, r"dilation must be positive, got \(1, -1\)"),
    (dict(padding=-1), ValueError, "padding must be non-negative"),
    (dict(weight=torch.randn(2, 4, 7, 3)), ValueError, "larger than the padded input"),
    (dict(weight=torch.randn(2, 4, 3, 3), dilation=3), ValueError, "larger than the padded input"),
    (dict(bias=torch.randn(3)), ValueError, "bias has 3 elements"),
    (dict(bias=torch.randn(2, 1)), ValueError, "bias must be 1-D"),
    (dict(weight=torch.randn(2, 4, 3, 3).double()), TypeError, "float64"),
    (dict(input=torch.ones(1, 4, 6, 6, dtype=torch.int64), weight=torch.ones(2, 4, 3, 3, dtype=torch.int64)),
     TypeError, "int64"),
    (dict(input=torch.randn(1, 1, 4, 6, 6)), ValueError, "input must be 3-D or 4-D"),
    (dict(weight=torch.randn(2, 4, 3)), ValueError, "weight must be 4-D"),
    (dict(input=torch.randn(1, 4, 6, 6, device="meta"), weight=torch.randn(2, 4, 3, 3, device="meta")),
     RuntimeError, "meta"),
])
def test_conv2d_bad_input(kw, exc, match):
    with pytest.raises(exc, match=match):
        _call(**kw)


@pytest.mark.parametrize("args,match", [
    (([1], [0, 0, 0, 0], [1, 1], 1), "stride must be a list of 2 ints"),
    (([1, 1], [0, 0], [1, 1], 1), "padding must be a list of 4 ints"),
    (([1, 1], [0, 0, 0, 0], [1, 1], -2), "groups must be a positive int, got -2"),
])
def test_conv2d_op_bad_lists(args, match):
    with pytest.raises(ValueError, match=match):
        torch.ops.pycnn.conv2d(torch.randn(1, 4, 6, 6), torch.randn(2, 4, 3, 3), None, *args)


def test_conv2d_backward_rejects_wrong_grad_out_shape():
    x, w = torch.randn(1, 4, 6, 6), torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match=r"grad_out has shape \(1, 2, 5, 4\)"):
        torch.ops.pycnn.conv2d_backward(torch.randn(1, 2, 5, 4), x, w, [1, 1], [0, 0, 0, 0], [1, 1], 1,
                                        [True, True, True])


# ---- the float kernels of every CPU target (csrc/cpu/conv.cpp over simd/vec.h) ----------------
# Each case: the forward kernel forward_kernel() picks (Winograd switched off: these test the
# direct and GEMM kernels), checked against torch (forward and every gradient, float32 and
# float64) on every target this CPU runs. Lane counts are 4 (generic, neon), 8 (avx2) and 16
# (avx512) floats, so widths that are no multiple of them exercise the masked edges.
from pycnn import _C

# (N, C, H, W), (K, kh, kw), stride, padding, dilation, bias, expected forward kernel
KERNEL_CASES = [
    ((2, 3, 9, 13), (5, 3, 3), 1, 1, 1, True, "direct"),            # odd width, K off every tile
    ((2, 16, 8, 8), (16, 3, 3), 1, 1, 1, False, "direct"),           # ResNet 8x8 maps
    ((1, 4, 7, 37), (7, 3, 3), 1, 4, 1, True, "direct"),             # padding 4 > the kernel's reach 2
    ((2, 5, 11, 19), (6, 3, 3), 1, 2, 2, True, "direct"),            # dilation 2
    ((2, 3, 12, 29), (4, 5, 5), 1, 0, 1, True, "direct"),            # 5x5, odd width, no padding
    ((2, 20, 10, 16), (24, 3, 3), 1, 1, (2, 1), True, "direct"),     # 24 outputs, width a lane multiple
    ((3, 6, 14, 14), (16, 5, 5), 1, 0, 1, True, "direct"),           # LeNet conv2
    ((2, 3, 9, 75), (5, 3, 3), 2, 1, 1, True, "direct"),             # stride 2, OW 38: shifted copies, 2 row phases
    ((2, 33, 9, 75), (5, 3, 3), 2, 1, 1, True, "im2col_gemm"),       # the same with > 32 channels: GEMM
    ((2, 3, 11, 128), (4, 2, 2), 2, 0, 1, True, "direct"),           # stride 2, rows of 64: direct
    ((2, 3, 12, 135), (5, 5, 4), 2, 1, (2, 3), True, "direct"),      # stride 2 with dilation: phases
    ((2, 3, 12, 128), (5, 3, 3), (3, 1), 1, 1, True, "direct"),      # vertical stride 3
    ((2, 5, 10, 32), (7, 3, 3), 2, 1, 1, True, "direct"),            # stride 2, OW 16 (ResNet's s2 3x3)
    ((3, 4, 9, 31), (6, 3, 3), 2, 1, 1, False, "direct"),            # odd W: the last tap reads the zero margin
    ((2, 4, 10, 66), (6, 3, 3), (1, 2), 3, 1, True, "direct"),       # stride (1, 2), padding > reach
    ((2, 5, 14, 13), (6, 3, 3), (3, 1), 1, 2, True, "direct"),       # vertical stride 3, dilation 2, OW 13
    ((2, 36, 10, 66), (6, 3, 3), (1, 2), 3, 1, True, "im2col_gemm"), # stride (1, 2), > 32 channels
    ((2, 6, 9, 11), (4, 2, 2), 2, 0, 1, True, "direct"),             # kernel == stride (conv_transpose)
    ((2, 34, 9, 11), (4, 2, 2), 2, 0, 1, True, "im2col_gemm"),       # the same with > 32 channels
    ((2, 5, 13, 35), (5, 3, 3), 3, 1, 2, True, "im2col_gemm"),       # stride 3: the scalar packer
    ((2, 8, 15, 15), (12, 1, 1), 2, 0, 1, True, "im2col_gemm"),      # 1x1 stride-2 shortcut
    ((2, 8, 7, 9), (12, 1, 1), 1, 0, 1, True, "pointwise_gemm"),
]


def _conv_shape16(x_shape, w_shape, stride, padding, dilation, groups=1):
    (N, C, H, W), (K, kh, kw) = x_shape, w_shape
    (sh, sw), (ph, pw), (dh, dw) = (v if isinstance(v, tuple) else (v, v) for v in (stride, padding, dilation))
    OH = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return [N, C, H, W, K, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, groups]


@pytest.fixture(params=_C.available_isas())
def cpu_isa(request):
    """Every target, Winograd off (these cases test the kernels Winograd would replace)."""
    winograd = _C.set_conv_winograd(False)
    try:
        with use_isa(request.param):
            yield request.param
    finally:
        _C.set_conv_winograd(winograd)


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,dilation,bias,expected", KERNEL_CASES)
def test_conv2d_kernels_on_every_target(cpu_isa, x_shape, w_shape, stride, padding, dilation, bias, expected):
    shape16 = _conv_shape16(x_shape, w_shape, stride, padding, dilation)
    assert _C.conv2d_forward_algorithm(_C.FLOAT32, shape16) == expected
    assert _C.conv2d_forward_algorithm(_C.FLOAT64, shape16) in ("im2col_gemm", "pointwise_gemm")
    x, w, b = _tensors(x_shape, w_shape, 1, bias, torch.Generator().manual_seed(sum(x_shape) + sum(w_shape)))
    check_op(PF.conv2d, F.conv2d, [x, w, b, stride, padding, dilation, 1])


@pytest.mark.parametrize("x_shape,w_shape,stride,padding,dilation", [
    ((5, 16, 12, 12), (16, 3, 3), 1, 1, 1),   # direct forward, input gradient as a forward, dot weight gradient
    ((4, 6, 13, 21), (5, 3, 3), 2, 1, 1),     # stride 2: vectorised packer, col2im, dot weight gradient
    ((3, 5, 9, 10), (7, 3, 3), 1, 3, 2),      # dilation, padding past the reach
    ((2, 4, 8, 128), (6, 2, 2), 2, 0, 1),     # stride-2 direct forward
])
def test_conv2d_kernels_bitwise_across_thread_counts(cpu_isa, x_shape, w_shape, stride, padding, dilation):
    x, w, b = _tensors(x_shape, w_shape, 1, True, torch.Generator().manual_seed(7))

    def run():
        xs, ws, bs = (t.clone().requires_grad_(True) for t in (x, w, b))
        y = PF.conv2d(xs, ws, bs, stride, padding, dilation)
        gy = torch.linspace(-1, 1, y.numel()).view_as(y)
        return (y.detach(), *torch.autograd.grad(y, (xs, ws, bs), gy))

    assert_same_bits_across_threads(run)
