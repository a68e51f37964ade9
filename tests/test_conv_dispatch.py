"""conv2d / conv_transpose2d along the kernels' dispatch: every branch gets torch-checked cases.

* Forward algorithms (pycnn._C.conv2d_forward_algorithm): a table of candidate shapes per
  algorithm. Each case asserts the algorithm it reports is one its shape allows (fallbacks
  included, for CPUs without the fast kernels) and that forward and gradients match torch.
  test_every_reachable_algorithm_has_a_checked_case probes many shapes and fails for any name
  the chooser produces on this CPU (a new kernel, e.g. "winograd4x4") that no table case reaches.
* col2im's permutation path (kernel == stride, no padding, taps tiling the input exactly), as
  conv_transpose2d's forward and conv2d's input gradient, next to shapes just off it.
* The weight gradient's threaded branches: check_op at 2 threads and bitwise equal results at
  1, 2 and 3 threads for each forward algorithm's shapes.
All of it runs once per available ISA (tests/isa.py).
"""
from __future__ import annotations

import fnmatch
import itertools
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import pycnn
import pycnn.functional as PF
from pycnn import _C
from isa import each_isa  # noqa: F401  (fixture)
from reference import check_op

FLOAT64_ALGORITHMS = {"im2col_gemm", "pointwise_gemm"}
WINOGRAD = "winograd*"  # F(2x2, 3x3) is "winograd"; larger tiles (e.g. "winograd4x4") may follow


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def conv_shape(x_shape, w_shape, stride=1, padding=0, dilation=1, groups=1):
    """The 16-entry shape conv2d_forward_algorithm takes (symmetric padding)."""
    N, C, H, W = x_shape
    K, kh, kw = w_shape
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    OH = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return [N, C, H, W, K, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, groups]


def forward_algorithm(dtype_code, shape16):
    return _C.conv2d_forward_algorithm(dtype_code, list(shape16))


def _matches(name, patterns):
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def plausible(name, shape16, dtype_code):
    """What any chooser must respect, whatever kernels exist: a Winograd kernel only for 3x3
    stride-1 undilated single-group convs, the pointwise GEMM only for 1x1 stride-1 unpadded
    ones, float64 only through the GEMMs."""
    N, C, H, W, K, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, groups = shape16
    pointwise = kh == kw == 1 and sh == sw == 1 and ph == pw == 0
    if dtype_code == _C.FLOAT64 and name not in FLOAT64_ALGORITHMS:
        return False
    if fnmatch.fnmatchcase(name, WINOGRAD):
        return (kh, kw, sh, sw, dh, dw, groups) == (3, 3, 1, 1, 1, 1, 1)
    if name == "pointwise_gemm":
        return pointwise
    if name == "direct":
        return groups == 1 and not pointwise
    return name == "im2col_gemm"


@dataclass(frozen=True)
class Case:
    name: str
    x_shape: tuple
    w_shape: tuple            # (K, kh, kw)
    stride: object = 1
    padding: object = 0
    dilation: object = 1
    groups: int = 1
    bias: bool = True
    allowed: tuple = ("im2col_gemm",)   # float32 algorithms this shape may take (fnmatch patterns)
    winograd_off: bool = False          # with _C.set_conv_winograd(False)

    def shape16(self):
        return conv_shape(self.x_shape, self.w_shape, self.stride, self.padding, self.dilation, self.groups)

    def tensors(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        K, kh, kw = self.w_shape
        x = torch.randn(*self.x_shape, generator=g)
        w = torch.randn(K, self.x_shape[1] // self.groups, kh, kw, generator=g)
        b = torch.randn(K, generator=g) if self.bias else None
        return x, w, b

    def args(self):
        return (self.stride, self.padding, self.dilation, self.groups)


W_ = (WINOGRAD, "direct", "im2col_gemm")   # a Winograd shape: Winograd, else direct, else GEMM
D_ = ("direct", "im2col_gemm")              # stride 1, one group: direct, else GEMM
G_ = ("im2col_gemm",)                       # strided or grouped
P_ = ("pointwise_gemm",)                    # 1x1, stride 1, no padding

FORWARD_CASES = [
    # Winograd candidates: 3x3, stride 1, one group, >= 4 channels each side
    Case("wino_16ch_8x8", (2, 16, 8, 8), (16, 3, 3), padding=1, allowed=W_),
    Case("wino_odd_out_nobias", (1, 4, 5, 7), (4, 3, 3), bias=False, allowed=W_),       # 3x5 out: partial tiles
    Case("wino_1x1_map", (3, 8, 1, 1), (8, 3, 3), padding=1, allowed=W_),               # output smaller than a tile
    Case("wino_17ch_pad2", (1, 17, 2, 3), (17, 3, 3), padding=2, allowed=W_),
    Case("wino_64ch", (2, 64, 6, 6), (64, 3, 3), padding=1, allowed=W_),
    Case("wino_off_16ch", (2, 16, 8, 8), (16, 3, 3), padding=1, allowed=D_, winograd_off=True),
    Case("wino_off_odd", (1, 8, 9, 7), (12, 3, 3), padding=(0, 1), allowed=D_, winograd_off=True),
    # direct candidates: stride 1, one group, not pointwise, not a Winograd shape
    Case("direct_3ch", (2, 3, 9, 10), (5, 3, 3), padding=1, allowed=D_),                # 3 input channels
    Case("direct_3out", (1, 16, 8, 8), (3, 3, 3), padding=1, bias=False, allowed=D_),   # 3 output channels
    Case("direct_5x5_ow16", (1, 8, 7, 16), (13, 5, 5), padding=2, allowed=D_),          # OW % 16 == 0 rows layout
    Case("direct_ow32", (1, 5, 4, 34), (9, 3, 3), allowed=D_, winograd_off=True),       # OW = 32
    Case("direct_1x3_ow33", (2, 6, 5, 33), (17, 1, 3), padding=(0, 1), allowed=D_),     # OW % 16 != 0, K % 8 != 0
    Case("direct_dilated", (1, 4, 10, 10), (6, 3, 3), padding=2, dilation=2, allowed=D_),
    Case("direct_2x2", (2, 16, 4, 5), (40, 2, 2), allowed=D_),                          # K past one 8-row tile
    Case("direct_1x1_padded", (1, 3, 4, 4), (5, 1, 1), padding=1, allowed=D_),          # 1x1 with padding
    # GEMM over implicit im2col: strided, grouped
    Case("direct_stride2_ow6", (2, 5, 9, 11), (7, 3, 3), stride=2, padding=1, allowed=D_),   # shifted layout, 2 row phases
    Case("gemm_stride2", (2, 40, 9, 11), (7, 3, 3), stride=2, padding=1, allowed=G_),       # > 32 channels, OW 6
    Case("direct_stride_1x2", (1, 4, 6, 19), (35, 3, 3), stride=(1, 2), padding=1, bias=False, allowed=D_),
    Case("direct_stride_3x1", (2, 6, 13, 11), (5, 3, 3), stride=(3, 1), padding=1, allowed=D_),  # 3 row phases
    Case("gemm_stride_1x2", (1, 36, 6, 19), (35, 3, 3), stride=(1, 2), padding=1, bias=False, allowed=G_),
    Case("gemm_groups2", (2, 8, 7, 7), (6, 3, 3), padding=1, groups=2, allowed=G_),
    Case("gemm_groups2_3x3_wino_like", (1, 16, 8, 8), (16, 3, 3), padding=1, groups=2, allowed=G_),
    Case("direct_kernel_eq_stride", (2, 3, 8, 10), (40, 2, 2), stride=2, allowed=D_),
    Case("gemm_kernel_eq_stride", (2, 34, 8, 10), (40, 2, 2), stride=2, allowed=G_),
    Case("gemm_1x1_stride2", (1, 3, 6, 7), (2, 1, 1), stride=2, allowed=G_),
    # ResNet's stage-transition conv: stride 2, OW 16 (direct where that is two vectors: AVX2, NEON)
    Case("stride2_ow16", (2, 16, 32, 32), (32, 3, 3), stride=2, padding=1, allowed=D_),
    Case("stride2_ow8", (2, 16, 16, 16), (32, 3, 3), stride=2, padding=1, allowed=D_),   # direct where OW is whole vectors
    # pointwise GEMM: x itself is the column matrix
    Case("pointwise", (2, 5, 6, 7), (3, 1, 1), allowed=P_),
    Case("pointwise_groups2", (2, 4, 5, 5), (4, 1, 1), groups=2, bias=False, allowed=P_),
    Case("pointwise_40ch", (1, 40, 3, 3), (33, 1, 1), allowed=P_),
]


class winograd_switch:
    """Context: the Winograd kernels on or off, restored after."""

    def __init__(self, enabled):
        self.enabled, self.previous = enabled, None

    def __enter__(self):
        self.previous = _C.set_conv_winograd(self.enabled)

    def __exit__(self, *exc):
        _C.set_conv_winograd(self.previous)


def _reported(case):
    with winograd_switch(not case.winograd_off):
        return (forward_algorithm(_C.FLOAT32, case.shape16()), forward_algorithm(_C.FLOAT64, case.shape16()))


@pytest.mark.parametrize("case", FORWARD_CASES, ids=lambda c: c.name)
def test_forward_algorithm_case_matches_torch(each_isa, case):
    f32, f64 = _reported(case)
    assert _matches(f32, case.allowed), f"float32 took {f32!r}, allowed {case.allowed}"
    assert plausible(f32, case.shape16(), _C.FLOAT32), f32
    pointwise = "pointwise_gemm" in case.allowed
    assert f64 == ("pointwise_gemm" if pointwise else "im2col_gemm"), f"float64 took {f64!r}"
    x, w, b = case.tensors()
    with winograd_switch(not case.winograd_off):
        check_op(PF.conv2d, F.conv2d, [x, w, b, *case.args()])


def _probe_shapes():
    """Many small shapes (only asked for their algorithm, never run)."""
    channels = [2, 3, 4, 8, 16, 64]
    for (kh, kw), s, d, g, c, k, hw, p, n in itertools.product(
            [(1, 1), (3, 3), (2, 2), (5, 5), (1, 3)], [1, 2], [1, 2], [1, 2], channels, channels,
            [1, 2, 5, 8, 16, 33], [0, 1, 2], [1, 8]):
        if c % g or k % g:
            continue
        if hw + 2 * p < d * (max(kh, kw) - 1) + 1:
            continue
        yield conv_shape((n, c, hw, hw), (k, kh, kw), s, p, d, g)


def test_every_reachable_algorithm_has_a_checked_case(each_isa):
    # What the chooser produces on this CPU, over many shapes, winograd on and off.
    produced = {}
    for winograd in (True, False):
        with winograd_switch(winograd):
            for shape in _probe_shapes():
                for code in (_C.FLOAT32, _C.FLOAT64):
                    name = forward_algorithm(code, shape)
                    assert plausible(name, shape, code), f"{name!r} for {shape} (dtype code {code})"
                    produced.setdefault(name, shape)
    # What the table's (torch-checked) cases take on this CPU.
    covered = {name for case in FORWARD_CASES for name in _reported(case)}
    missing = {name: shape for name, shape in produced.items() if name not in covered}
    assert not missing, (f"algorithms reachable on this CPU with no checked case in FORWARD_CASES "
                         f"(add one that reaches each): {missing}")
    assert {"im2col_gemm", "pointwise_gemm"} <= covered


# ---- col2im: the kernel == stride permutation --------------------------------------------------
# conv_transpose2d's forward is conv2d's input gradient: GEMM into columns, then col2im. With
# kernel == stride, no padding and no output_padding the taps tile the output exactly, and
# col2im is a permutation (no zero fill, no accumulation). Channel counts: the transpose's output
# channels are col2im's planes (split across threads: 3 samples at 2 threads puts one sample on
# the channel-parallel path).

COL2IM_CHANNELS = [1, 3, 16, 33]


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("cout_g", COL2IM_CHANNELS)
def test_conv_transpose2d_kernel_eq_stride(each_isa, k, groups, cout_g):
    g = torch.Generator().manual_seed(100 * k + 10 * groups + cout_g)
    cin = 2 * groups if cout_g != 3 else 3 * groups
    h, w = (5, 7) if cout_g % 2 else (4, 9)           # odd input sizes: 10x14 / 15x21 outputs
    x = torch.randn(3, cin, h, w, generator=g)
    wt = torch.randn(cin, cout_g, k, k, generator=g)
    b = torch.randn(cout_g * groups, generator=g)
    out = check_op(PF.conv_transpose2d, F.conv_transpose2d, [x, wt, b, k, 0, 0, groups])
    assert out[0].shape == (3, cout_g * groups, h * k, w * k)


@pytest.mark.parametrize("kernel,stride,output_padding,padding", [
    ((2, 3), (2, 3), 0, 0),     # non-square: rows and columns of the tiling
    ((3, 2), (3, 2), 0, 0),
    (2, 2, 1, 0),               # output_padding: the last row/column gets no tap (general path)
    (2, 2, (0, 1), 0),          # ... only the last column
    (3, 3, (2, 0), 0),          # ... only the last two rows
    (2, 2, 0, 1),               # padding: not a permutation
    (3, 2, 0, 0),               # overlapping taps: accumulation
    (2, 3, 0, 0),               # gaps between taps: zero fill
    (2, 3, 1, 0),               # gaps, and output_padding makes the output a whole number of strides
    ((1, 3), (2, 3), (1, 0), 0),
])
def test_conv_transpose2d_next_to_the_permutation(each_isa, kernel, stride, output_padding, padding):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 5, 3, generator=g)
    kh, kw = _pair(kernel)
    wt = torch.randn(4, 3, kh, kw, generator=g)
    check_op(PF.conv_transpose2d, F.conv_transpose2d, [x, wt, torch.randn(3, generator=g), stride, padding,
                                                       output_padding])


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("c_g", COL2IM_CHANNELS)
def test_conv2d_kernel_eq_stride_backward(each_isa, k, groups, c_g):
    # conv2d's input gradient through col2im: exact tiling (permutation), and inputs one row or
    # one column past it (which no tap reads: the general, zero-filling path). The op itself,
    # not functional.conv2d, which sends one channel per group to the depthwise kernel.
    g = torch.Generator().manual_seed(200 * k + 10 * groups + c_g)
    K = 5 * groups
    oh, ow = (3, 5) if c_g % 2 else (5, 1)
    for extra_h, extra_w in ((0, 0), (0, 1), (1, 0)) if c_g in (3, 33) else ((0, 0),):
        x = torch.randn(3, c_g * groups, oh * k + extra_h, ow * k + extra_w, generator=g)
        w = torch.randn(K, c_g, k, k, generator=g)
        check_op(lambda x, w, b: torch.ops.pycnn.conv2d(x, w, b, [k, k], [0, 0, 0, 0], [1, 1], groups),
                 lambda x, w, b: F.conv2d(x, w, b, k, 0, 1, groups), [x, w, torch.randn(K, generator=g)])


@pytest.mark.parametrize("x_hw,kernel,stride", [
    ((6, 9), 2, 3),             # kernel < stride, input a whole number of strides: gaps to zero
    ((9, 8), (3, 2), (3, 4)),
    ((7, 8), (1, 2), (2, 2)),
    ((9, 11), 3, 2),            # kernel > stride: taps overlap, col2im accumulates
])
def test_conv2d_backward_next_to_the_permutation(each_isa, x_hw, kernel, stride):
    g = torch.Generator().manual_seed(11)
    kh, kw = _pair(kernel)
    x, w = torch.randn(3, 4, *x_hw, generator=g), torch.randn(5, 4, kh, kw, generator=g)
    check_op(PF.conv2d, F.conv2d, [x, w, torch.randn(5, generator=g), stride])


# ---- threaded weight gradient: same bits for any thread count ----------------------------------

def _forward_and_grads(case, dtype):
    x, w, b = case.tensors(seed=3)
    x, w = x.to(dtype).requires_grad_(True), w.to(dtype).requires_grad_(True)
    b = b.to(dtype).requires_grad_(True) if b is not None else None
    y = PF.conv2d(x, w, b, *case.args())
    gy = torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y).sin()
    wants = [x, w] + ([b] if b is not None else [])
    return (y.detach(), *torch.autograd.grad(y, wants, gy))


def _thread_count(n):
    torch.set_num_threads(n)
    pycnn.sync_threads()


# Per forward algorithm, shapes with several input channels (the weight gradient splits them across
# threads; with fewer of them than threads it splits the output channels) and a batch (it sums the
# samples in order); 1 to 4 threads.
THREAD_CASES = [
    Case("wino", (4, 16, 9, 8), (8, 3, 3), padding=1, allowed=W_),
    Case("wino_4ch", (3, 4, 7, 7), (5, 3, 3), padding=1, bias=False, allowed=W_),   # dot-product weight grad
    Case("wino_off", (3, 12, 8, 8), (8, 3, 3), padding=1, allowed=D_, winograd_off=True),
    Case("direct", (3, 3, 10, 12), (7, 5, 5), padding=2, allowed=D_),
    Case("lenet_1ch", (5, 1, 12, 12), (6, 5, 5), allowed=D_),                          # C < threads: split by K
    Case("first_3ch", (3, 3, 9, 9), (13, 3, 3), padding=1, allowed=D_),                # C = 3 < 4 threads below
    Case("s2_2ch", (4, 2, 9, 9), (6, 3, 3), stride=2, padding=1, allowed=D_),          # C = threads
    Case("s2_5ch", (5, 5, 11, 9), (7, 3, 3), stride=2, padding=1, allowed=D_),
    Case("gemm_s2_40ch", (2, 40, 9, 9), (7, 3, 3), stride=2, padding=1, allowed=G_),   # > 32 channels, OW 5
    Case("kernel_eq_stride", (3, 6, 8, 6), (9, 2, 2), stride=2, allowed=D_),
    Case("gemm_groups2", (3, 8, 7, 7), (6, 3, 3), padding=1, groups=2, allowed=G_),
    Case("pointwise", (4, 6, 5, 7), (9, 1, 1), allowed=P_),
]


@pytest.mark.parametrize("case", THREAD_CASES, ids=lambda c: c.name)
def test_weight_gradient_threads(each_isa, case):
    f32, _ = _reported(case)
    assert _matches(f32, case.allowed), f32
    old = torch.get_num_threads()
    try:
        with winograd_switch(not case.winograd_off):
            _thread_count(2)
            x, w, b = case.tensors()
            check_op(PF.conv2d, F.conv2d, [x, w, b, *case.args()])
            for dtype in (torch.float32, torch.float64):
                runs = []
                for n in (1, 2, 3, 4):
                    _thread_count(n)
                    runs.append(_forward_and_grads(case, dtype))
                for n, run in zip((2, 3, 4), runs[1:]):
                    for what, a, c in zip(("y", "gx", "gw", "gb"), runs[0], run):
                        assert torch.equal(a, c), f"{dtype} {what}: {n} threads differ from 1 thread"
    finally:
        _thread_count(old)
