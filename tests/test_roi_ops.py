"""pycnn.ops: roi_align, roi_pool, nms, batched_nms, box_iou (torchvision.ops semantics).

torchvision does not run here, so expected values come from plain-Python references written
from the definitions (loops over bins and samples), from published test vectors (detectron2's
roi_align test), and from torch-only oracles: roi_pool over whole images is adaptive_max_pool2d,
roi_align inside the image is grid_sample followed by average pooling.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pycnn  # noqa: F401
import pycnn.ops as ops
from isa import each_isa  # noqa: F401  (fixture)
from reference import assert_same_bits_across_threads, check_op, gradcheck

NAN = float("nan")


# ---- plain-Python references ----------------------------------------------------------------

def bilinear_reference(plane, y, x):
    """torchvision's roi_align bilinear sample of a 2-D list of floats at (y, x)."""
    H, W = len(plane), len(plane[0])
    if y < -1.0 or y > H or x < -1.0 or x > W:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= H - 1:
        y_low = y_high = H - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= W - 1:
        x_low = x_high = W - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * plane[y_low][x_low] + hy * lx * plane[y_low][x_high]
            + ly * hx * plane[y_high][x_low] + ly * lx * plane[y_high][x_high])


def roi_align_reference(x, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """[K, C, PH, PW] float64 from x [N, C, H, W] and rois [K, 5], by the definition."""
    PH, PW = (output_size, output_size) if isinstance(output_size, int) else output_size
    xs = x.double().tolist()
    out = torch.zeros(len(rois), x.shape[1], PH, PW, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.double().tolist()):
        sx, sy = x1 * spatial_scale - offset, y1 * spatial_scale - offset
        rw, rh = x2 * spatial_scale - offset - sx, y2 * spatial_scale - offset - sy
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / PH, rw / PW
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / PH)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / PW)
        count = max(gh * gw, 1)
        for c in range(x.shape[1]):
            plane = xs[int(b)][c]
            for ph in range(PH):
                for pw in range(PW):
                    total = 0.0
                    for iy in range(max(gh, 0)):
                        yy = sy + ph * bh + (iy + 0.5) * bh / gh
                        for ix in range(max(gw, 0)):
                            xx = sx + pw * bw + (ix + 0.5) * bw / gw
                            total += bilinear_reference(plane, yy, xx)
                    out[k, c, ph, pw] = total / count
    return out


def roi_pool_reference(x, rois, output_size, spatial_scale=1.0):
    """(values, argmax) of RoIPool by the definition (torchvision's geometry, torch's max rule)."""
    PH, PW = (output_size, output_size) if isinstance(output_size, int) else output_size
    N, C, H, W = x.shape
    out = torch.zeros(len(rois), C, PH, PW, dtype=x.dtype)
    arg = torch.full((len(rois), C, PH, PW), -1, dtype=torch.int64)
    for k, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sx, sy, ex, ey = (int(round(v * spatial_scale)) for v in (x1, y1, x2, y2))
        rw, rh = max(ex - sx + 1, 1), max(ey - sy + 1, 1)
        for ph in range(PH):
            h0 = min(max(math.floor(ph * rh / PH) + sy, 0), H)
            h1 = min(max(math.ceil((ph + 1) * rh / PH) + sy, 0), H)
            for pw in range(PW):
                w0 = min(max(math.floor(pw * rw / PW) + sx, 0), W)
                w1 = min(max(math.ceil((pw + 1) * rw / PW) + sx, 0), W)
                if h1 <= h0 or w1 <= w0:
                    continue
                window = x[int(b), :, h0:h1, w0:w1].reshape(C, -1)
                best, pos = window.max(dim=1)
                out[k, :, ph, pw] = best
                arg[k, :, ph, pw] = (h0 + pos // (w1 - w0)) * W + w0 + pos % (w1 - w0)
    return out, arg


def iou_reference(a, b, dtype=torch.float64):
    """IoU of two boxes, every step rounded to `dtype` (as the kernels compute it)."""
    f = np.float32 if dtype == torch.float32 else np.float64
    a, b = [f(v) for v in a], [f(v) for v in b]
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    w = max(f(0), min(a[2], b[2]) - max(a[0], b[0]))
    h = max(f(0), min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(inter / (area_a + area_b - inter))


def nms_reference(boxes, scores, threshold, idxs=None):
    """Brute force: visit boxes by descending score (ties: lower index first); keep a box unless a
    kept one of the same category overlaps it with IoU > threshold."""
    b, s, dtype = boxes.tolist(), scores.tolist(), boxes.dtype
    cat = idxs.tolist() if idxs is not None else [0] * len(b)
    order = sorted(range(len(b)), key=lambda i: (-s[i], i))
    kept = []
    for i in order:
        if all(cat[j] != cat[i] or not iou_reference(b[i], b[j], dtype) > threshold for j in kept):
            kept.append(i)
    return torch.tensor(kept, dtype=torch.int64)


def random_rois(K, N, H, W, scale=1.0, margin=0.0, seed=0, dtype=torch.float32):
    """K boxes in image coordinates (feature map H x W seen through spatial_scale), some beyond
    the borders by up to `margin` feature cells."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(K, 2, 2, generator=g, dtype=torch.float64)
    lo = -margin
    xs = (lo + xy[:, :, 0] * (W + 2 * margin)).sort(dim=1).values / scale
    ys = (lo + xy[:, :, 1] * (H + 2 * margin)).sort(dim=1).values / scale
    batch = torch.randint(0, N, (K,), generator=g).double()
    return torch.stack([batch, xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], dim=1).to(dtype)


def distinct(*shape, dtype=torch.float64, seed=0):
    n = math.prod(shape)
    g = torch.Generator().manual_seed(seed)
    return (torch.randperm(n, generator=g).to(dtype) / max(n, 1) - 0.5).reshape(shape)


# ---- roi_align: known values ----------------------------------------------------------------

ARANGE25 = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5)
BOX = torch.tensor([[0, 1, 1, 3, 3]], dtype=torch.float32)
# detectron2 tests/layers/test_roi_align.py (test_forward_output), sampling_ratio 0, 4x4 bins
DETECTRON2_NOT_ALIGNED = [[7.5, 8, 8.5, 9], [10, 10.5, 11, 11.5], [12.5, 13, 13.5, 14], [15, 15.5, 16, 16.5]]
DETECTRON2_ALIGNED = [[4.5, 5.0, 5.5, 6.0], [7.0, 7.5, 8.0, 8.5], [9.5, 10.0, 10.5, 11.0], [12.0, 12.5, 13.0, 13.5]]


@pytest.mark.parametrize("aligned,expected", [(False, DETECTRON2_NOT_ALIGNED), (True, DETECTRON2_ALIGNED)])
def test_roi_align_detectron2_vectors(aligned, expected):
    expected = torch.tensor(expected, dtype=torch.float64)
    # the plain-Python reference derives the published numbers ...
    ref = roi_align_reference(ARANGE25, BOX, 4, sampling_ratio=0, aligned=aligned)[0, 0]
    torch.testing.assert_close(ref, expected, rtol=0, atol=1e-12)
    # ... and pycnn gives them, in both dtypes and both box forms
    for dtype in (torch.float32, torch.float64):
        x = ARANGE25.to(dtype)
        for boxes in (BOX.to(dtype), [BOX[:, 1:].to(dtype)]):
            out = ops.roi_align(x, boxes, (4, 4), spatial_scale=1.0, sampling_ratio=0, aligned=aligned)
            torch.testing.assert_close(out[0, 0].double(), expected, rtol=0, atol=1e-5)


def test_roi_align_empty_box_gives_zeros_and_no_gradient():
    # detectron2's test_empty_box: a zero-height box with aligned=True has no samples
    x = torch.rand(1, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    out = ops.roi_align(x, torch.tensor([[0, 3, 4, 5, 4]], dtype=torch.float64), 7, sampling_ratio=0, aligned=True)
    assert out.shape == (1, 1, 7, 7) and bool((out == 0).all())
    out.sum().backward()
    assert bool((x.grad == 0).all())


# ---- roi_align: references and oracles ------------------------------------------------------

ALIGN_CASES = [
    # N, C, H, W, K, output_size, scale, sampling_ratio, aligned, margin
    (2, 3, 9, 11, 6, 3, 1.0, -1, False, 2.0),
    (2, 3, 9, 11, 6, (2, 4), 0.5, 2, True, 3.0),
    (1, 2, 7, 6, 5, 5, 0.25, 0, True, 1.5),
    (3, 1, 12, 10, 8, (4, 3), 1.0, 3, False, 0.0),
    (1, 4, 5, 5, 4, 7, 1.0, -1, False, 4.0),     # bins smaller than a pixel
    # channels enough for the channel-vector kernels on every target (half a vector or more),
    # partial vectors, and for 37 more than one block of vectors
    (2, 13, 9, 11, 6, (3, 4), 0.5, 2, True, 3.0),
    (2, 37, 7, 8, 5, 7, 0.5, -1, False, 2.0),
]


@pytest.mark.parametrize("N,C,H,W,K,size,scale,ratio,aligned,margin", ALIGN_CASES)
def test_roi_align_matches_reference(N, C, H, W, K, size, scale, ratio, aligned, margin):
    x = torch.randn(N, C, H, W, dtype=torch.float64)
    rois = random_rois(K, N, H, W, scale, margin, dtype=torch.float64)
    expected = roi_align_reference(x, rois, size, scale, ratio, aligned)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        out = ops.roi_align(x.to(dtype), rois.to(dtype), size, scale, ratio, aligned)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


def grid_sample_roi_align(x, rois, size, ratio):
    """roi_align (aligned=True, scale 1, fixed sampling ratio) as torch ops: grid_sample at every
    sample point, then an average over each bin's ratio x ratio samples."""
    N, C, H, W = x.shape
    out = []
    for b, x1, y1, x2, y2 in rois.tolist():
        t = (torch.arange(size * ratio, dtype=x.dtype) + 0.5) / (size * ratio)
        ys, xs = y1 - 0.5 + t * (y2 - y1), x1 - 0.5 + t * (x2 - x1)
        gy, gx = torch.meshgrid((2 * ys + 1) / H - 1, (2 * xs + 1) / W - 1, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1)[None]
        samples = F.grid_sample(x[int(b)][None], grid, mode="bilinear", align_corners=False)
        out.append(F.avg_pool2d(samples, ratio))
    return torch.cat(out)


@pytest.mark.parametrize("ratio", [1, 2, 3])
def test_roi_align_equals_grid_sample_inside_the_image(ratio):
    # boxes whose samples stay within [0, size - 1] in pixel-centre coordinates, where
    # grid_sample's zero padding and roi_align's edge clamping agree
    N, C, H, W = 2, 3, 12, 14
    g = torch.Generator().manual_seed(1)
    lo = 0.5 + torch.rand(7, 2, generator=g, dtype=torch.float64) * 4
    hi = lo + 1 + torch.rand(7, 2, generator=g, dtype=torch.float64) * 6
    rois = torch.cat([torch.tensor([[0], [1], [0], [1], [1], [0], [1]], dtype=torch.float64),
                      lo[:, :1], lo[:, 1:], hi[:, :1], hi[:, 1:]], dim=1)
    check_op(lambda x: ops.roi_align(x, rois.to(x.dtype), 4, 1.0, ratio, True),
             lambda x: grid_sample_roi_align(x, rois.to(x.dtype), 4, ratio),
             [torch.randn(N, C, H, W)])


def test_roi_align_gradcheck():
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64)
    for ratio, aligned, margin in ((-1, False, 2.0), (2, True, 1.0)):
        rois = random_rois(5, 2, 6, 7, 0.5, margin, seed=3, dtype=torch.float64)
        assert gradcheck(lambda t: ops.roi_align(t, rois, (3, 2), 0.5, ratio, aligned), [x])


# ---- roi_pool -------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,size", [((2, 3, 8, 12), (4, 3)), ((1, 2, 6, 6), 6), ((3, 1, 9, 6), (3, 2)),
                                        ((2, 2, 5, 7), 1)])
def test_roi_pool_whole_image_is_adaptive_max_pool(shape, size):
    N, C, H, W = shape
    rois = torch.tensor([[n, 0, 0, W - 1, H - 1] for n in range(N)], dtype=torch.float64)
    ph, pw = (size, size) if isinstance(size, int) else size
    check_op(lambda x: torch.ops.pycnn.roi_pool(x, rois.to(x.dtype), ph, pw, 1.0),
             lambda x: F.adaptive_max_pool2d(x, (ph, pw), return_indices=True),
             [distinct(*shape)])


@pytest.mark.parametrize("size,scale,margin", [(3, 1.0, 2.0), ((2, 5), 0.5, 3.0), (7, 0.25, 1.0)])
def test_roi_pool_matches_reference(size, scale, margin):
    N, C, H, W = 2, 3, 9, 10
    x = distinct(N, C, H, W)
    rois = random_rois(9, N, H, W, scale, margin, seed=2, dtype=torch.float64)
    expected, expected_arg = roi_pool_reference(x, rois, size, scale)
    for dtype in (torch.float64, torch.float32):
        ph, pw = (size, size) if isinstance(size, int) else size
        out, arg = torch.ops.pycnn.roi_pool(x.to(dtype), rois.to(dtype), ph, pw, scale)
        torch.testing.assert_close(out, expected.to(dtype), rtol=0, atol=0)
        assert torch.equal(arg, expected_arg)
        assert torch.equal(ops.roi_pool(x.to(dtype), rois.to(dtype), size, scale), out)


def test_roi_pool_backward_routes_through_argmax():
    N, C, H, W = 2, 3, 8, 9
    x = distinct(N, C, H, W, dtype=torch.float64).requires_grad_()
    rois = random_rois(10, N, H, W, 1.0, 2.0, seed=4, dtype=torch.float64)
    out, arg = torch.ops.pycnn.roi_pool(x, rois, 3, 4, 1.0)
    gy = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, gy)
    expected = torch.zeros(N, C, H * W, dtype=torch.float64)
    for k in range(len(rois)):
        for c in range(C):
            for j, i in enumerate(arg[k, c].flatten().tolist()):
                if i >= 0:  # empty bins (-1) get no gradient
                    expected[int(rois[k, 0]), c, i] += gy[k, c].flatten()[j]
    torch.testing.assert_close(gx, expected.reshape(N, C, H, W), rtol=1e-12, atol=1e-12)
    assert gradcheck(lambda t: ops.roi_pool(t, rois, (3, 4)), [x.detach()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bins", [(3, 4), (2, 1), (8, 15)])
def test_roi_pool_ties_nan_and_infinities_follow_max_pools_rule(dtype, bins):
    # torch's rule, as adaptive_max_pool2d: the first of tied maxima; after a NaN, NaN and the last
    # NaN's position; a bin of -inf only reports its first pixel. Whole-image boxes on 16 x 15
    # planes: bins 4-5, 15 and 1-2 pixels wide (the kernel takes narrow and wide bins apart).
    N, C, H, W = 2, 6, 16, 15
    g = torch.Generator().manual_seed(7)
    x = torch.randint(-3, 3, (N, C, H, W), generator=g).to(dtype)  # many ties
    x[0, 1] = -math.inf
    x[0, 2][torch.rand(H, W, generator=g) < 0.1] = NAN
    x[1, 3][torch.rand(H, W, generator=g) < 0.4] = NAN
    x[1, 4][torch.rand(H, W, generator=g) < 0.3] = math.inf
    x[1, 5][torch.rand(H, W, generator=g) < 0.5] = -math.inf
    rois = torch.tensor([[n, 0, 0, W - 1, H - 1] for n in range(N)], dtype=dtype)
    out, arg = torch.ops.pycnn.roi_pool(x, rois, *bins, 1.0)
    want, want_arg = F.adaptive_max_pool2d(x, bins, return_indices=True)
    torch.testing.assert_close(out, want, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(arg, want_arg)
    assert bool(out[0, 2].isnan().any()) and bool(out[0, 1].isneginf().all())  # the cases occur


def test_roi_pool_empty_bins_give_zero():
    # a box entirely left of the image: every bin is empty
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    out, arg = torch.ops.pycnn.roi_pool(x, torch.tensor([[0, -9, 0, -7, 4]], dtype=torch.float64), 2, 2, 1.0)
    assert bool((out == 0).all()) and bool((arg == -1).all())
    out.sum().backward()
    assert bool((x.grad == 0).all())


# ---- both RoI ops: layouts, empty inputs, determinism, opcheck ----------------------------------

ROI_OPS = [
    pytest.param(lambda x, r: ops.roi_align(x, r, (3, 4), 0.5, 2, True), id="roi_align"),
    pytest.param(lambda x, r: ops.roi_align(x, r, 5, 0.5, -1, False), id="roi_align_adaptive"),
    pytest.param(lambda x, r: ops.roi_pool(x, r, (3, 4), 0.5), id="roi_pool"),
]


@pytest.mark.parametrize("op", ROI_OPS)
def test_roi_ops_noncontiguous_and_list_boxes(op):
    N, C, H, W = 2, 3, 8, 10
    rois = random_rois(6, N, H, W, 0.5, 2.0, seed=5)
    base = torch.randn(N, H, W, C)
    x = base.permute(0, 3, 1, 2)  # channels-last view: not contiguous
    assert not x.is_contiguous()
    check_op(lambda t: op(t, rois.to(t.dtype)), lambda t: op(t.contiguous(), rois.to(t.dtype)), [x])
    # the list-of-Tensor[L, 4] form is the same RoIs
    as_list = [rois[rois[:, 0] == n, 1:] for n in range(N)]
    ordered = torch.cat([rois[rois[:, 0] == n] for n in range(N)])
    torch.testing.assert_close(op(x, as_list), op(x, ordered), rtol=0, atol=0)


@pytest.mark.parametrize("op", ROI_OPS)
def test_roi_ops_no_boxes(op):
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    for boxes in (torch.zeros(0, 5), [torch.zeros(0, 4), torch.zeros(0, 4)], []):
        out = op(x, boxes)
        assert out.shape[:2] == (0, 3)
        out.sum().backward()
        assert bool((x.grad == 0).all())
    out = op(torch.randn(0, 3, 6, 6), torch.zeros(0, 5))  # empty batch, no boxes
    assert out.shape[:2] == (0, 3)


@pytest.mark.parametrize("op", ROI_OPS)
def test_roi_ops_backward_bitwise_same_across_threads(op):
    N, C, H, W = 2, 16, 20, 24
    x = torch.randn(N, C, H, W)
    rois = random_rois(40, N, H, W, 0.5, 3.0, seed=6)
    gy = torch.randn(op(x, rois).shape)

    def run():
        t = x.clone().requires_grad_()
        out = op(t, rois)
        out.backward(gy)
        return out.detach(), t.grad

    assert_same_bits_across_threads(run)


def test_opcheck_roi_ops():
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64, requires_grad=True)
    rois = random_rois(5, 2, 7, 8, 0.5, 2.0, seed=7, dtype=torch.float64)
    torch.library.opcheck(torch.ops.pycnn.roi_align.default, (x, rois, 3, 2, 0.5, 2, True))
    torch.library.opcheck(torch.ops.pycnn.roi_pool.default, (distinct(2, 3, 7, 8).requires_grad_(), rois, 3, 2, 0.5))
    gy = torch.randn(5, 3, 3, 2, dtype=torch.float64)
    torch.library.opcheck(torch.ops.pycnn.roi_align_backward.default, (gy, rois, [2, 3, 7, 8], 0.5, 2, True))
    _, arg = torch.ops.pycnn.roi_pool(x.detach(), rois, 3, 2, 0.5)
    torch.library.opcheck(torch.ops.pycnn.roi_pool_backward.default, (gy, rois, arg, [2, 3, 7, 8], 0.5))


@pytest.mark.parametrize("C", [2, 19])  # RoIAlign's scalar kernels and (19) its channel-vector ones
def test_roi_ops_on_every_cpu_target(each_isa, C):
    # the kernels are compiled once per target (csrc/simd/vec.h): each gives the reference values
    N, H, W = 2, 7, 9
    x = distinct(N, C, H, W).requires_grad_()
    rois = random_rois(6, N, H, W, 0.5, 2.0, seed=10, dtype=torch.float64)
    out = ops.roi_align(x, rois, 3, 0.5, -1, True)
    torch.testing.assert_close(out, roi_align_reference(x.detach(), rois, 3, 0.5, -1, True), rtol=1e-12, atol=1e-12)
    pooled, arg = torch.ops.pycnn.roi_pool(x, rois, 3, 2, 0.5)
    expected, expected_arg = roi_pool_reference(x.detach(), rois, (3, 2), 0.5)
    assert torch.equal(pooled, expected) and torch.equal(arg, expected_arg)
    assert gradcheck(lambda t: ops.roi_align(t, rois, 3, 0.5, -1, True), [x.detach()])
    boxes, scores = random_boxes(40, seed=11), torch.rand(40, dtype=torch.float64)
    assert torch.equal(ops.nms(boxes, scores, 0.4), nms_reference(boxes, scores, 0.4))


# ---- NMS and box IoU --------------------------------------------------------------------------

def random_boxes(n, seed=0, dtype=torch.float64, size=20.0, grid=None):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size
    wh = 1 + torch.rand(n, 2, generator=g, dtype=torch.float64) * size / 2
    boxes = torch.cat([xy, xy + wh], dim=1)
    if grid:  # coordinates on a coarse grid: exact IoUs in float32 too
        boxes = (boxes * grid).round() / grid
    return boxes.to(dtype)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_matches_brute_force(threshold, dtype):
    boxes = random_boxes(120, seed=1, dtype=dtype, grid=2)
    g = torch.Generator().manual_seed(2)
    scores = torch.randint(0, 30, (120,), generator=g).to(dtype) / 30  # many ties
    keep = ops.nms(boxes, scores, threshold)
    assert keep.dtype == torch.int64
    assert torch.equal(keep, nms_reference(boxes, scores, threshold))
    idxs = torch.randint(0, 4, (120,), generator=g)
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, threshold),
                       nms_reference(boxes, scores, threshold, idxs))


def test_nms_iou_exactly_at_threshold_is_kept():
    boxes = torch.tensor([[0, 0, 2, 2], [0, 0, 2, 1], [0, 0, 2, 1.02]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    # IoU(0, 1) = 2 / 4 = 0.5 exactly: kept at threshold 0.5 (suppression needs IoU > threshold)
    assert ops.nms(boxes[:2], scores[:2], 0.5).tolist() == [0, 1]
    assert ops.nms(boxes[:2], scores[:2], 0.49).tolist() == [0]
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 1]  # box 2: IoU 0.51 with box 0


def test_nms_compares_float32_iou_with_the_double_threshold():
    # IoU 2 / 6 in float32 is 0.3333333433, above the double 1/3: suppressed at threshold 1/3 (a
    # threshold rounded to float32 first would equal the IoU and keep the box), kept at the
    # float32 value itself.
    boxes = torch.tensor([[0, 0, 2, 2], [1, 0, 3, 2]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8])
    assert ops.nms(boxes, scores, 1 / 3).tolist() == [0]
    assert ops.nms(boxes, scores, float(torch.tensor(1 / 3, dtype=torch.float32))).tolist() == [0, 1]
    assert ops.nms(boxes, scores, float("nan")).tolist() == [0, 1]  # no IoU is > NaN


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_many_boxes_matches_brute_force(dtype):
    # 613 boxes (not a whole number of vectors), real-valued coordinates, one NaN box and one of
    # negative width, at the RPN's threshold.
    boxes = random_boxes(613, seed=5, dtype=dtype, size=60.0)
    boxes[17] = float("nan")
    boxes[40, 2] = boxes[40, 0] - 1
    scores = torch.rand(613, generator=torch.Generator().manual_seed(6), dtype=dtype)
    assert torch.equal(ops.nms(boxes, scores, 0.7), nms_reference(boxes, scores, 0.7))


def test_nms_ties_keep_input_order_and_empty_input():
    boxes = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [5, 5, 6, 6.0]])
    assert ops.nms(boxes, torch.tensor([0.5, 0.5, 0.5]), 0.5).tolist() == [0, 2]
    assert ops.nms(boxes[[1, 0, 2]], torch.tensor([0.5, 0.5, 0.5]), 0.5).tolist() == [0, 2]
    empty = ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64
    assert ops.batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).shape == (0,)
    # same boxes in different categories do not suppress each other
    assert ops.batched_nms(boxes, torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1, 2]


def test_box_iou_matches_reference():
    a, b = random_boxes(13, seed=3), random_boxes(9, seed=4)
    expected = torch.tensor([[iou_reference(p, q) for q in b.tolist()] for p in a.tolist()], dtype=torch.float64)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        torch.testing.assert_close(ops.box_iou(a.to(dtype), b.to(dtype)).double(), expected, rtol=tol, atol=tol)
    assert ops.box_iou(a, b[:0]).shape == (13, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_box_iou_and_nms_round_every_operation_alike(each_isa, dtype):
    # box_iou, nms's vector lanes and batched_nms's pair loop give the same IoU bits on every
    # target: the IoU formula with each operation rounded on its own (numpy's elementwise
    # arithmetic), no product fused into an add. So a pair kept by one at a threshold is kept by
    # all (a fused product moved IoUs by 1-3 ulp, differently per call site and target).
    g = torch.Generator().manual_seed(12)
    a = random_boxes(300, seed=13, dtype=dtype, size=60.0)
    b = a + (torch.rand(300, 4, generator=g, dtype=torch.float64) - 0.5).to(dtype) * 6  # overlapping pairs
    b[:, 2:] = torch.maximum(b[:, 2:], b[:, :2] + 0.5)
    x, y = a.numpy()[:, None], b.numpy()[None]
    area_x = (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
    area_y = (y[..., 2] - y[..., 0]) * (y[..., 3] - y[..., 1])
    w = np.maximum(np.minimum(x[..., 2], y[..., 2]) - np.maximum(x[..., 0], y[..., 0]), 0)
    h = np.maximum(np.minimum(x[..., 3], y[..., 3]) - np.maximum(x[..., 1], y[..., 1]), 0)
    inter = w * h
    expected = inter / (area_x + area_y - inter)
    iou = ops.box_iou(a, b)
    assert torch.equal(iou, torch.from_numpy(expected))
    pair_scores = torch.tensor([0.9, 0.8], dtype=dtype)
    for i in range(0, 300, 2):
        v = float(iou[i, i])
        if v == 0.0:
            continue
        pair = torch.stack([a[i], b[i]])
        for t, kept in ((v, [0, 1]), (float(np.nextafter(v, -np.inf)), [0])):  # kept at its own IoU only
            assert ops.nms(pair, pair_scores, t).tolist() == kept
            assert ops.batched_nms(pair, pair_scores, torch.zeros(2, dtype=torch.int64), t).tolist() == kept


def test_opcheck_nms_ops():
    boxes, scores = random_boxes(30, seed=5), torch.rand(30, dtype=torch.float64)
    idxs = torch.randint(0, 3, (30,))
    # dynamic output size: the fake kernel's shape is unbacked, so test_aot_dispatch_dynamic is skipped
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.pycnn.nms.default, (boxes, scores, 0.5), test_utils=utils)
    torch.library.opcheck(torch.ops.pycnn.batched_nms.default, (boxes, scores, idxs, 0.5), test_utils=utils)
    torch.library.opcheck(torch.ops.pycnn.box_iou.default, (boxes, random_boxes(7, seed=6)))


# ---- NaN and garbage boxes: zeros, never a read out of bounds ----------------------------------

def test_nan_and_huge_boxes_are_safe():
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    bad = torch.tensor([[0, NAN, 1, 3, 4], [1, 1, NAN, 3, 4], [0, 1, 1, NAN, NAN], [1, -math.inf, 0, math.inf, 5],
                        [0, -1e30, -1e30, 1e30, 1e30], [1, 1e30, 1e30, 2e30, 2e30]], dtype=torch.float64)
    good = torch.tensor([[1, 1, 1, 4, 5]], dtype=torch.float64)
    rois = torch.cat([bad, good])
    for op in (lambda r: ops.roi_align(x, r, 4, 1.0, -1, False), lambda r: ops.roi_align(x, r, 3, 0.5, 2, True),
               lambda r: ops.roi_pool(x, r, 3)):
        out = op(rois)
        assert bool(torch.isfinite(out).all())
        assert bool((out[:4] == 0).all())  # NaN or infinite boxes give zeros
        torch.testing.assert_close(out[-1:], op(good))
        out.sum().backward()
        assert bool(torch.isfinite(x.grad).all())
        x.grad = None
    keep = ops.nms(bad[:, 1:], torch.rand(6, dtype=torch.float64), 0.5)
    assert sorted(keep.tolist()) == list(range(6))  # NaN IoUs suppress nothing


# ---- bad input: a clear exception naming the op and the value ---------------------------------

X = torch.randn(2, 3, 8, 8)
R = torch.tensor([[0, 1, 1, 5, 5.0]])


@pytest.mark.parametrize("call,exc,match", [
    (lambda: ops.roi_align(X, torch.zeros(3, 4), 2), ValueError, r"roi_align: boxes must be a Tensor\[K, 5\].*\(3, 4\)"),
    (lambda: ops.roi_align(X, torch.zeros(3), 2), ValueError, r"roi_align: boxes must be a Tensor\[K, 5\]"),
    (lambda: ops.roi_pool(X, [torch.zeros(2, 5)], 2), ValueError, r"roi_pool: boxes\[0\] must be a Tensor\[L, 4\]"),
    (lambda: ops.roi_align(X, "boxes", 2), TypeError, r"roi_align: boxes must be"),
    (lambda: ops.roi_align(X, R, -1), ValueError, r"roi_align: output_size must be positive, got -1"),
    (lambda: ops.roi_pool(X, R, (2, 0)), ValueError, r"roi_pool: output_size must be positive, got \(2, 0\)"),
    (lambda: ops.roi_align(X, R, (2, 2, 2)), ValueError, r"roi_align: output_size must be an int or a pair"),
    (lambda: ops.roi_align(X, torch.tensor([[2, 1, 1, 5, 5.0]]), 2), ValueError,
     r"roi_align: box 0 has batch index 2.0, which is not an integer in \[0, 2\)"),
    (lambda: ops.roi_pool(X, torch.tensor([[0, 1, 1, 5, 5], [-1, 1, 1, 5, 5.0]]), 2), ValueError,
     r"roi_pool: box 1 has batch index -1.0"),
    (lambda: ops.roi_align(X, torch.tensor([[0.5, 1, 1, 5, 5.0]]), 2), ValueError, r"batch index 0.5"),
    (lambda: ops.roi_align(X, torch.tensor([[NAN, 1, 1, 5, 5.0]]), 2), ValueError, r"batch index nan"),
    (lambda: ops.roi_align(X, R.double(), 2), TypeError, r"roi_align: boxes has dtype torch.float64 but input has torch.float32"),
    (lambda: ops.roi_pool(X, [R[:, 1:].double()], 2), TypeError, r"roi_pool: boxes\[0\] has dtype torch.float64"),
    (lambda: ops.roi_align(X, R.to("meta"), 2), RuntimeError, r"roi_align: boxes is on meta but input is on cpu"),
    (lambda: ops.roi_align(X.int(), R, 2), TypeError, r"roi_align: input has dtype torch.int32"),
    (lambda: ops.roi_align(X[0], R, 2), ValueError, r"roi_align: input must be 4-D"),
    (lambda: ops.roi_align(X, R, 2, spatial_scale=0.0), ValueError, r"spatial_scale must be a positive finite number, got 0.0"),
    (lambda: ops.roi_align(X, R, 2, sampling_ratio=10**9), ValueError, r"roi_align: sampling_ratio must be at most 65536"),
    (lambda: ops.roi_align(torch.zeros(2, 3, 0, 8), R, 2), ValueError, r"roi_align: input must have a non-empty height"),
    (lambda: ops.nms(torch.zeros(3, 5), torch.zeros(3), 0.5), ValueError, r"nms: boxes must be a Tensor\[N, 4\].*\(3, 5\)"),
    (lambda: ops.nms(torch.zeros(3, 4), torch.zeros(2), 0.5), ValueError, r"nms: 3 boxes but 2 scores"),
    (lambda: ops.nms(torch.zeros(3, 4), torch.zeros(3).double(), 0.5), TypeError, r"nms: scores has dtype torch.float64"),
    (lambda: ops.batched_nms(torch.zeros(3, 4), torch.zeros(3), torch.zeros(3), 0.5), ValueError,
     r"batched_nms: idxs must be int64"),
    (lambda: ops.box_iou(torch.zeros(3, 4), torch.zeros(3, 3)), ValueError, r"box_iou: boxes2 must be a Tensor\[N, 4\]"),
])
def test_bad_input_raises(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ---- CUDA: the same results as the CPU kernels (skipped without a GPU and the CUDA build) --------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available() or not pycnn.cuda_available(),
                                reason="needs a CUDA GPU and pycnn built with its CUDA module (_C_cuda)")


@needs_cuda
@pytest.mark.parametrize("op", ROI_OPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_roi_ops_cuda_match_cpu(op, dtype):
    N, C, H, W = 2, 5, 11, 13
    x = distinct(N, C, H, W, dtype=dtype)
    rois = torch.cat([random_rois(30, N, H, W, 0.5, 3.0, seed=8, dtype=dtype),
                      torch.tensor([[0, NAN, 1, 3, 4], [1, -1e30, 0, 1e30, 5]], dtype=dtype)])
    results = []
    for device in ("cpu", "cuda", "cuda"):
        t = x.to(device).requires_grad_()
        out = op(t, rois.to(device))
        gy = torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape).to(device)
        out.backward(gy)
        results.append((out.detach().cpu(), t.grad.cpu()))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for a, b in zip(results[0], results[1]):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)
    for a, b in zip(results[1], results[2]):  # deterministic: bitwise the same twice
        assert torch.equal(a, b)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_and_box_iou_cuda_match_cpu(dtype):
    boxes = random_boxes(300, seed=9, dtype=dtype, grid=2)
    scores = (torch.randint(0, 50, (300,), generator=torch.Generator().manual_seed(3)) / 50).to(dtype)
    idxs = torch.randint(0, 5, (300,), generator=torch.Generator().manual_seed(4))
    for threshold in (0.0, 0.5, 0.9):
        assert torch.equal(ops.nms(boxes.cuda(), scores.cuda(), threshold).cpu(), ops.nms(boxes, scores, threshold))
        assert torch.equal(ops.batched_nms(boxes.cuda(), scores.cuda(), idxs.cuda(), threshold).cpu(),
                           ops.batched_nms(boxes, scores, idxs, threshold))
    torch.testing.assert_close(ops.box_iou(boxes.cuda(), boxes[:40].cuda()).cpu(), ops.box_iou(boxes, boxes[:40]))
