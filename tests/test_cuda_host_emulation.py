"""The CUDA module's own code run on the CPU by the host emulator (csrc/cuda/host_check), against
torch: the bindings, every launch path and every kernel's device code, with a warp model for the
block reductions. It is the only execution csrc/cuda gets without a GPU; nothing here says
anything about a real GPU (see the README's GPU section).

The case lists are tests/test_cuda.py's own, run through pycnn's ops with CPU tensors routed to
the emulated module: a wrong shape in a GPU test case fails here first.
"""
import importlib
import os
import re
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F

import pycnn.functional as PF
from pycnn._ops import native
from reference import check_op

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST_CHECK = os.path.join(ROOT, "csrc", "cuda", "host_check")

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None or not os.path.isdir(HOST_CHECK)
                                or importlib.util.find_spec("pybind11") is None,
                                reason="needs g++, pybind11 and the csrc/ sources")

import test_cuda as gpu  # noqa: E402  (the GPU tests' case lists; importing runs nothing)


@pytest.fixture(scope="module")
def emu():
    sys.path.insert(0, HOST_CHECK)
    try:
        import check
    finally:
        sys.path.remove(HOST_CHECK)
    e = check.emulator()
    assert e.lib.emu_selftest() == 0, "the emulator's barrier/warp model fails its self-test"
    return e


@pytest.fixture
def cuda(emu):
    """pycnn's ops on CPU tensors run the emulated CUDA kernels; no barrier failure allowed."""
    with emu.routed():
        yield emu
    assert emu.failure() == ""


def rand(*shape, seed=0):
    return gpu.rand(*shape, seed=seed)


# The emulator runs a GPU thread's work at CPU speed, one thread at a time: the largest cases of
# the GPU lists are checked in float32 only (float64 takes the same paths), to keep this quick.
def dtypes_for(flops):
    return (torch.float32,) if flops > 2e7 else (torch.float32, torch.float64)


# ---- the GEMM on every tile configuration (the emulated devices differ in SM count) --------------

def _gemm(emu, ta, tb, M, N, K, alpha, beta, dtype, pad, offset):
    lda, ldb, ldc = (M if ta else K) + pad, (K if tb else N) + pad, N + pad
    a_rows, b_rows = (K if ta else M), (N if tb else K)
    A, B, C = (rand(n, seed=s).to(dtype) for n, s in ((a_rows * lda + offset, 1), (b_rows * ldb + offset, 2),
                                                      (M * ldc + offset, 3)))
    Am = A[offset:].view(a_rows, lda)[:, :(M if ta else K)]
    Bm = B[offset:].view(b_rows, ldb)[:, :(K if tb else N)]
    Cm = C[offset:].view(M, ldc)[:, :N]
    opA, opB = (Am.t() if ta else Am).double(), (Bm.t() if tb else Bm).double()
    expected = alpha * (opA @ opB) + (beta * Cm.double() if beta != 0 else 0)
    e = A.element_size()
    emu.module.gemm(0, native._DTYPE_CODE[dtype], ta, tb, M, N, K, alpha, A.data_ptr() + offset * e, lda,
                    B.data_ptr() + offset * e, ldb, beta, C.data_ptr() + offset * e, ldc)
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(Cm.double(), expected, rtol=tol, atol=tol)


def test_gemm_every_configuration(emu):
    """Emulated devices with 1, 8 and 2^20 SMs make the launch code pick the largest, middle and
    smallest tiles: all 20 instances of the kernel (float: 3 tiles, double: 2, x 4 transposes) run."""
    small = [c for c in gpu.GEMM_CASES if c[0] * c[1] <= 20000]  # the 1536^2 cases take minutes here
    for device in (1, 3, 2):
        with emu.limits(device=device):
            for ta in (False, True):
                for tb in (False, True):
                    for dtype in (torch.float32, torch.float64):
                        for M, N, K, pad, offset in small:
                            for alpha, beta in [(1.0, 0.0), (-0.5, 2.0)]:
                                _gemm(emu, ta, tb, M, N, K, alpha, beta, dtype, pad, offset)
    assert emu.launches()["instances:gemm_kernel<T, Cfg, TA, TB>"] == 20
    assert emu.failure() == ""


# ---- tests/test_cuda.py's case lists, on the emulator ---------------------------------------------

@pytest.mark.parametrize("case", gpu.CONV_CASES)
def test_conv2d_cases(cuda, case):
    xs, ws, stride, padding, dilation, groups, bias = case
    x, w = rand(*xs, seed=1), rand(*ws, seed=2)
    b = rand(ws[0], seed=3) if bias else None
    flops = 2 * xs[0] * ws[0] * ws[1] * ws[2] * ws[3] * xs[2] * xs[3]
    check_op(PF.conv2d, F.conv2d, [x, w, b, stride, padding, dilation, groups], dtypes=dtypes_for(flops))


def test_conv2d_in_workspace_chunks(cuda):
    limit = native.get_workspace_limit()
    try:
        native.set_workspace_limit(1)  # one sample per chunk: the weight gradient accumulates with beta = 1
        check_op(PF.conv2d, F.conv2d, [rand(5, 3, 9, 9, seed=1), rand(4, 3, 3, 3, seed=2), rand(4, seed=3), 2, 1, 1, 1])
    finally:
        native.set_workspace_limit(limit)


@pytest.mark.parametrize("case", gpu.CONV_TRANSPOSE_CASES)
def test_conv_transpose2d_cases(cuda, case):
    xs, ws, stride, padding, output_padding, groups, dilation = case
    x, w, b = rand(*xs, seed=1), rand(*ws, seed=2), rand(ws[1] * groups, seed=3)
    check_op(PF.conv_transpose2d, F.conv_transpose2d, [x, w, b, stride, padding, output_padding, groups, dilation])


@pytest.mark.parametrize("case", gpu.DEPTHWISE_CASES)
def test_depthwise_cases(cuda, case):
    xs, mult, k, stride, padding, dilation, bias = case
    C = xs[1]
    kh, kw = (k, k) if isinstance(k, int) else k
    x, w = rand(*xs, seed=1), rand(C * mult, 1, kh, kw, seed=2)
    b = rand(C * mult, seed=3) if bias else None
    check_op(lambda x, w, b: PF.depthwise_conv2d(x, w, b, stride, padding, dilation),
             lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups=C), [x, w, b])


@pytest.mark.parametrize("case", gpu.POOL_CASES)
def test_max_pool2d_cases(cuda, case):
    xs, k, stride, padding, dilation, ceil_mode = case
    args = (k, stride, padding, dilation, ceil_mode, True)
    check_op(lambda x: PF.max_pool2d(x, *args), lambda x: F.max_pool2d(x, *args), [rand(*xs, seed=4)])


@pytest.mark.parametrize("case", gpu.ALL_PADDING_POOL_CASES)
def test_max_pool2d_all_padding_windows_like_cpu_and_torch(emu, case):
    xs, k, stride, padding, dilation, ceil_mode = case
    args = (k, stride, padding, dilation, ceil_mode, True)
    x = rand(*xs, seed=4).requires_grad_()
    ry, ridx = F.max_pool2d(x.detach(), *args)
    cpu_y, cpu_idx = PF.max_pool2d(x, *args)
    gy = torch.randn(cpu_y.shape, dtype=x.dtype)
    (cpu_gx,) = torch.autograd.grad(cpu_y, x, gy)
    with emu.routed():
        y, idx = PF.max_pool2d(x, *args)
        (gx,) = torch.autograd.grad(y, x, gy)
    assert torch.isinf(ry).any()
    assert torch.equal(idx, ridx) and torch.equal(y, ry)
    assert torch.equal(cpu_idx, ridx) and torch.equal(cpu_y, ry)
    assert torch.equal(gx, cpu_gx)
    assert emu.failure() == ""


def test_max_pool2d_ties_nan_and_inf_like_torch(cuda):
    x = torch.randint(0, 3, (2, 3, 8, 8), generator=torch.Generator().manual_seed(0)).double()
    x[0, 0, 1, 1] = x[0, 0, 1, 2] = float("nan")
    x[1, 2] = float("-inf")
    for dtype in (torch.float32, torch.float64):
        y, idx = PF.max_pool2d(x.to(dtype), 3, 1, 1, return_indices=True)
        ry, ridx = F.max_pool2d(x.to(dtype), 3, 1, 1, return_indices=True)
        assert torch.equal(idx, ridx)
        torch.testing.assert_close(y, ry, equal_nan=True, rtol=0, atol=0)


@pytest.mark.parametrize("case", gpu.UNPOOL_CASES)
def test_max_unpool2d_cases(cuda, case):
    xs, k, stride, padding, size = case
    v, idx = gpu._unpool_inputs(xs, k, stride, padding)
    if k == 3:
        v.fill_(1.5)
    check_op(lambda v: PF.max_unpool2d(v, idx, k, stride, padding, output_size=size),
             lambda v: F.max_unpool2d(v, idx, k, stride, padding, output_size=size), [v])


def _launch_count(emu):
    return sum(n for key, n in emu.launches().items() if isinstance(key, tuple))


def test_max_unpool2d_bad_output_size_raises_before_any_kernel(cuda):
    v, idx = gpu._unpool_inputs((2, 3, 8, 9), 2, 2, 0)
    before = _launch_count(cuda)
    with pytest.raises(ValueError, match="output_size"):
        PF.max_unpool2d(v, idx, 2, output_size=[9, 10])
    assert _launch_count(cuda) == before


def test_max_unpool2d_bad_index_is_reported_by_the_kernel_flag(cuda):
    v = torch.randn(1, 2, 2, 2)
    idx = torch.zeros(1, 2, 2, 2, dtype=torch.int64)
    idx[0, 1, 1, 0] = 99
    with pytest.raises(ValueError, match=r"99 at position \(0, 1, 1, 0\)"):
        PF.max_unpool2d(v, idx, 2)
    idx[0, 1, 1, 0] = -1
    with pytest.raises(ValueError, match=r"-1 at position \(0, 1, 1, 0\)"):
        PF.max_unpool2d(v, idx, 2)


@pytest.mark.parametrize("shape", gpu.BN_SHAPES)
def test_batch_norm_fused_cases(cuda, shape):
    x, r = rand(*shape, seed=9) * 3 + 5, rand(*shape, seed=10) * 4
    check_op(lambda x, r, w: PF.batch_norm(x, None, None, w, None, True, residual=r, relu=True),
             lambda x, r, w: F.relu(F.batch_norm(x, None, None, w, None, True) + r), [x, r, rand(shape[1], seed=7)])


@pytest.mark.parametrize("shape", gpu.BN_SHAPES)
def test_batch_norm_cases(cuda, shape):
    C = shape[1]
    x = rand(*shape, seed=9) * 3 + 5
    check_op(lambda x, w, b: PF.batch_norm(x, None, None, w, b, True),
             lambda x, w, b: F.batch_norm(x, None, None, w, b, True), [x, rand(C, seed=7), rand(C, seed=8)])
    rm, rv = rand(C, seed=11), rand(C, seed=12).abs() + 0.5
    check_op(lambda x, w, b: PF.batch_norm(x, rm.to(x), rv.to(x), w, b, False),
             lambda x, w, b: F.batch_norm(x, rm.to(x), rv.to(x), w, b, False), [x, rand(C, seed=7), None])


def test_batch_norm_long_rows_and_running_stats(cuda):
    x = rand(3, 4, 700, seed=10)  # rows longer than the 512-thread block: the strided loop
    rm, rv = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    rm2, rv2 = rm.clone(), rv.clone()
    check_op(lambda x: PF.batch_norm(x, rm, rv, None, None, True, 0.3, 1e-3),
             lambda x: F.batch_norm(x, rm2, rv2, None, None, True, 0.3, 1e-3), [x], dtypes=(torch.float64,))
    torch.testing.assert_close(rm, rm2)
    torch.testing.assert_close(rv, rv2)


def test_batch_norm_empty_batch_statistics_are_zero(cuda):
    for dtype in (torch.float32, torch.float64):
        mean, var, invstd = (torch.full((3,), float("nan"), dtype=dtype) for _ in range(3))
        cuda.module.batch_norm_stats(0, native._DTYPE_CODE[dtype], 0, 3, 4, 0, mean.data_ptr(), var.data_ptr(),
                                     invstd.data_ptr(), 0.25)
        assert torch.equal(mean, torch.zeros(3, dtype=dtype)) and torch.equal(var, torch.zeros(3, dtype=dtype))
        assert torch.equal(invstd, torch.full((3,), 2.0, dtype=dtype))  # 1 / sqrt(0 + eps)
    check_op(lambda x, w, b: PF.batch_norm(x, None, None, w, b, True),
             lambda x, w, b: F.batch_norm(x, None, None, w, b, True), [torch.randn(0, 3, 4), torch.randn(3),
                                                                        torch.randn(3)])


@pytest.mark.parametrize("case", gpu.LINEAR_CASES)
def test_linear_cases(cuda, case):
    m, k, n, bias = case
    check_op(PF.linear, F.linear, [rand(m, k, seed=1), rand(n, k, seed=2), rand(n, seed=3) if bias else None],
             dtypes=dtypes_for(2 * m * k * n))


def test_opcheck_cases(cuda):
    for op, args in gpu.opcheck_cases("cpu"):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


# ---- forced launch paths: 64-bit indices, grid-stride loops, split grids -------------------------

def _tour(emu):
    """One call of every kernel family, forward and backward, against torch (float64)."""
    f64 = (torch.float64,)
    check_op(PF.conv2d, F.conv2d, [rand(3, 4, 7, 6, seed=1), rand(6, 2, 3, 3, seed=2), rand(6, seed=3), 1, 1, 1, 2],
             dtypes=f64)
    check_op(PF.conv2d, F.conv2d, [rand(2, 5, 4, 4, seed=1), rand(70, 5, 1, 1, seed=2), rand(70, seed=3)], dtypes=f64)
    check_op(lambda x, w, b: PF.depthwise_conv2d(x, w, b, 2, 1, 1),
             lambda x, w, b: F.conv2d(x, w, b, 2, 1, 1, groups=3), [rand(2, 3, 7, 7, seed=1), rand(6, 1, 3, 3, seed=2),
                                                                    rand(6, seed=3)], dtypes=f64)
    check_op(lambda x: PF.max_pool2d(x, 3, 2, 1, 1, False, True), lambda x: F.max_pool2d(x, 3, 2, 1, 1, False, True),
             [rand(2, 3, 9, 8, seed=4)], dtypes=f64)
    v, idx = gpu._unpool_inputs((2, 3, 8, 8), 2, 2, 0)
    check_op(lambda v: PF.max_unpool2d(v, idx, 2), lambda v: F.max_unpool2d(v, idx, 2), [v], dtypes=f64)
    check_op(lambda x, w, b: PF.batch_norm(x, None, None, w, b, True),
             lambda x, w, b: F.batch_norm(x, None, None, w, b, True),
             [rand(3, 5, 40, seed=9) + 4, rand(5, seed=7), rand(5, seed=8)], dtypes=f64)
    rm, rv = rand(5, seed=11), rand(5, seed=12).abs() + 0.5
    check_op(lambda x: PF.batch_norm(x, rm, rv, None, None, False), lambda x: F.batch_norm(x, rm, rv, None, None, False),
             [rand(3, 5, 40, seed=9)], dtypes=f64)
    check_op(lambda x, r: PF.batch_norm(x, None, None, None, None, True, residual=r, relu=True),
             lambda x, r: F.relu(F.batch_norm(x, None, None, None, None, True) + r),
             [rand(3, 5, 40, seed=9), rand(3, 5, 40, seed=10)], dtypes=f64)
    run_ours, run_ref = (rm.clone(), rv.clone()), (rm.clone(), rv.clone())  # the running-statistics update
    check_op(lambda x: PF.batch_norm(x, *run_ours, None, None, True), lambda x: F.batch_norm(x, *run_ref, None, None, True),
             [rand(3, 5, 40, seed=9)], dtypes=f64)
    for ours, ref in zip(run_ours, run_ref):
        torch.testing.assert_close(ours, ref)
    check_op(PF.linear, F.linear, [rand(70, 9, seed=1), rand(5, 9, seed=2), rand(5, seed=3)], dtypes=f64)
    _detection_and_restoration_tour(emu)


def _detection_and_restoration_tour(emu):
    """RoIAlign and RoIPool against their torch oracles (grid_sample + average; adaptive max pool on
    whole images), box IoU and NMS against brute force, partial convolution against its two-conv
    composition."""
    import pycnn.ops as ops
    import test_partial_conv as pconv
    import test_roi_ops as roi
    f64 = (torch.float64,)
    rois = torch.tensor([[0, 0.7, 1.2, 5.1, 6.3], [1, 2.0, 0.9, 7.5, 4.4]], dtype=torch.float64)
    check_op(lambda x: ops.roi_align(x, rois, 3, 1.0, 2, True), lambda x: roi.grid_sample_roi_align(x, rois, 3, 2),
             [rand(2, 3, 9, 10, seed=5)], dtypes=f64)
    whole = torch.tensor([[n, 0, 0, 5, 5] for n in range(2)], dtype=torch.float64)
    check_op(lambda x: torch.ops.pycnn.roi_pool(x, whole, 3, 3, 1.0),
             lambda x: F.adaptive_max_pool2d(x, (3, 3), return_indices=True), [roi.distinct(2, 3, 6, 6)], dtypes=f64)
    boxes, scores = roi.random_boxes(70, seed=3, grid=2), torch.rand(70, dtype=torch.float64)
    iou = ops.box_iou(boxes, boxes[:9])
    want = torch.tensor([[roi.iou_reference(a, b) for b in boxes[:9].tolist()] for a in boxes.tolist()],
                        dtype=torch.float64)
    torch.testing.assert_close(iou, want, rtol=1e-15, atol=1e-15)  # FMA contraction: 1 ulp
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes, keep = boxes[order].contiguous(), torch.empty(70, dtype=torch.uint8)
    workspace = torch.empty(emu.module.nms_workspace_words(70), dtype=torch.int64)  # the GPU path's, not the CPU's
    emu.module.nms_sorted(0, native._DTYPE_CODE[torch.float64], 70, native.ptr(sorted_boxes), 0, 0.4,
                          native.ptr(keep), native.ptr(workspace))
    assert torch.equal(order[keep.bool()], roi.nms_reference(boxes, scores, 0.4))
    g = torch.Generator().manual_seed(6)
    for channels in (1, 3):
        mask = pconv.random_mask((2, channels, 7, 8), g)
        check_op(lambda x, w, b: PF.partial_conv2d(x, mask, w, b, 1, 1, 1, return_mask=True),
                 lambda x, w, b: pconv.torch_partial_conv2d(x, mask, w, b, 1, 1, 1),
                 [rand(2, 3, 7, 8, seed=7), rand(4, 3, 3, 3, seed=8), rand(4, seed=9)], dtypes=f64)


def _launch_sites():
    """Every kernel expression launched in csrc/cuda/*.cu (PYCNN_LAUNCH(grid, block, stream, kernel))."""
    sites = set()
    cuda_dir = os.path.join(ROOT, "csrc", "cuda")
    for name in os.listdir(cuda_dir):
        if name.endswith(".cu"):
            with open(os.path.join(cuda_dir, name)) as f:
                sites |= set(re.findall(r"PYCNN_LAUNCH\([^;]*?, stream, ([\w:]+(?:<[^;]*?>)?)\)\(", f.read()))
    return sites


def test_every_launch_site_and_index_width_runs(cuda):
    """The tour with the device limits as they are, then with 32-bit indexing off (every kernel's
    int64 variant), grid-stride loops over a single block, and grid.y/z limited to 2 blocks (the
    GEMM's split launches): each must match torch. Then every launch site in the sources has run."""
    _tour(cuda)
    with cuda.limits(index32=0, grid_x=1, grid_yz=2, device=2):  # smallest GEMM tiles: many per axis
        _tour(cuda)
        for M, N, K, pad, offset in [(70, 45, 19, 0, 0), (130, 129, 31, 1, 0)]:
            _gemm(cuda, False, True, M, N, K, 1.0, 0.5, torch.float64, pad, offset)
    report = cuda.launches()
    assert report["max_grid_y"] >= 2, "no GEMM needed several tile rows"
    launched = {name for key in report if isinstance(key, tuple) for name in [key[0]]}
    sites = _launch_sites()
    assert len(sites) >= 20 and not sites - launched, f"never launched: {sorted(sites - launched)}"
    for name in sites:
        if "int32_t" in name:  # its int64 twin ran as well
            assert name.replace("int32_t", "int64_t") in launched, name
    # the split: with grid.y/z capped at 2, no launch used more (the emulator rejects larger grids)
    assert cuda.failure() == ""


# ---- the driver check (the emulated runtime reports what the test asks) --------------------------

def test_insufficient_driver_is_a_clear_error(emu, monkeypatch):
    monkeypatch.setattr(native, "_C_cuda", emu.module)
    monkeypatch.setattr(native, "_cuda_runtime_ok", False)
    try:
        emu.lib.emu_set_driver(emu.module.ERROR_INSUFFICIENT_DRIVER, 12040)
        with pytest.raises(RuntimeError, match=r"CUDA 13\.0 runtime.*driver >= 580.*supports CUDA 12\.4 only"):
            native.check_cuda_runtime()
        emu.lib.emu_set_driver(emu.module.ERROR_INSUFFICIENT_DRIVER, 0)
        with pytest.raises(RuntimeError, match="no NVIDIA driver was found"):
            native.check_cuda_runtime()
        emu.lib.emu_set_driver(100, 13000)  # cudaErrorNoDevice
        with pytest.raises(RuntimeError, match="cudaErrorNoDevice"):
            native.check_cuda_runtime()
        assert not native._cuda_runtime_ok
    finally:
        emu.lib.emu_set_driver(0, 13000)
    native.check_cuda_runtime()
    assert native._cuda_runtime_ok


# ---- detection ops: RoIAlign / RoIPool (backward passes as gathers), NMS, box IoU -----------

import test_roi_ops as roi  # noqa: E402  (its reference helpers)

ROI_CASES = [(2, 3, 9, 11, 12, 3, 3, 1.0, -1, False, 2.0), (2, 3, 9, 11, 12, 2, 4, 0.5, 2, True, 3.0),
             (1, 2, 7, 6, 9, 5, 5, 0.25, 0, True, 1.5), (1, 4, 5, 5, 8, 7, 7, 1.0, -1, False, 4.0)]


def test_roi_ops(emu):
    """The CUDA kernels give what the CPU kernels give, NaN, huge, empty and reversed boxes included."""
    import pycnn.ops as ops
    from pycnn._ops import native
    for seed, (N, C, H, W, K, ph, pw, scale, ratio, aligned, margin) in enumerate(ROI_CASES):
        x = roi.distinct(N, C, H, W).requires_grad_()
        odd = torch.tensor([[0, roi.NAN, 1, 3, 4], [N - 1, -1e30, 0, 1e30, 5], [0, 3, 3, 3, 3], [0, 4, 4, 2, 2]],
                           dtype=torch.float64)
        rois = torch.cat([roi.random_rois(K, N, H, W, scale, margin, seed=seed, dtype=torch.float64), odd])
        ops_to_check = (lambda: ops.roi_align(x, rois, (ph, pw), scale, ratio, aligned),
                        lambda: torch.ops.pycnn.roi_pool(x, rois, ph, pw, scale))
        for op in ops_to_check:
            def run():
                out = op()
                y = out[0] if isinstance(out, tuple) else out
                gy = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)
                return [t.detach() for t in (out if isinstance(out, tuple) else (out,))] + \
                    list(torch.autograd.grad(y, x, gy))
            want = run()
            with emu.routed():
                got = run()
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
    for n, threshold in ((1, 0.5), (63, 0.3), (64, 0.5), (65, 0.5), (200, 0.4)):
        boxes, scores = roi.random_boxes(n, seed=n, grid=2), torch.rand(n, dtype=torch.float64)
        idxs = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(n))
        for categories in (None, idxs):
            order = torch.sort(scores, descending=True, stable=True).indices
            keep = torch.empty(n, dtype=torch.uint8)
            sorted_boxes = boxes[order].contiguous()
            sorted_categories = None if categories is None else categories[order].contiguous()
            workspace = torch.empty(emu.module.nms_workspace_words(n), dtype=torch.int64)
            emu.module.nms_sorted(0, native._DTYPE_CODE[torch.float64], n, native.ptr(sorted_boxes),
                                  native.ptr(sorted_categories), threshold, native.ptr(keep), native.ptr(workspace))
            want = ops.nms(boxes, scores, threshold) if categories is None else \
                ops.batched_nms(boxes, scores, categories, threshold)
            assert torch.equal(order[keep.bool()], want), (n, threshold, categories is not None)
    a, b = roi.random_boxes(17, seed=1), roi.random_boxes(6, seed=2)
    want = ops.box_iou(a, b)
    with emu.routed():
        got = ops.box_iou(a, b)
    torch.testing.assert_close(got, want, rtol=1e-15, atol=1e-15)  # FMA contraction: 1 ulp
    assert emu.failure() == ""
