"""The benchmark cases: each pycnn op against its torch.nn.functional twin, with its target.

Targets are the issues' goals for the median ratio pycnn time / torch time (float32, NCHW):
CPU ones from "CPU speed", CUDA ones from the CUDA issue. FLOP and byte counts are napkin math
written next to each case; bytes count every tensor read once and written once (a lower bound).
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from typing import List

import torch
import torch.nn.functional as F

from bench.harness import (Case, Mismatch, Pair, Peaks, Result, Settings, Skip, Target,
                           TOLERANCE, compare, op_pair, time_pair)


def _ratio(op: str, v: float) -> Target:
    return Target("ratio", op, v)


BANDWIDTH_60 = Target("pct_peak", ">=", 60)


def _randn(settings: Settings, *shape, grad: bool = False, scale: float = 1.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(settings.device, settings.dtype)
    return t.requires_grad_(grad)


def _pf():
    import pycnn.functional as PF
    return PF


def _conv_flops(n, cout, oh, ow, cin_per_group, kh, kw) -> float:
    # one multiply-add per (output element, input channel in its group, kernel tap)
    return 2.0 * n * cout * oh * ow * cin_per_group * kh * kw


# ---- convolutions ------------------------------------------------------------------------

def conv2d_case(name, n, cin, cout, hw, k, *, pad, backward, targets) -> Case:
    oh = hw + 2 * pad - k + 1

    def build(s: Settings) -> Pair:
        PF = _pf()
        fan_in = cin * k * k
        args = [_randn(s, n, cin, hw, hw, grad=backward, seed=1),
                _randn(s, cout, cin, k, k, grad=backward, scale=fan_in ** -0.5, seed=2),
                _randn(s, cout, grad=backward, seed=3)]
        fwd = _conv_flops(n, cout, oh, oh, cin, k, k)
        # backward = input gradient + weight gradient, each as many FLOPs as the forward
        return op_pair(s, lambda x, w, b: PF.conv2d(x, w, b, padding=pad),
                       lambda x, w, b: F.conv2d(x, w, b, padding=pad), args,
                       backward=backward, flops=fwd * (3 if backward else 1))

    shape = f"N{n} {cin}->{cout} {hw}x{hw} k{k}"
    return Case(name, shape, build, targets=targets)


def conv_transpose2d_case(name, n, cin, cout, hw, k, stride, *, targets) -> Case:
    def build(s: Settings) -> Pair:
        PF = _pf()
        args = [_randn(s, n, cin, hw, hw, grad=True, seed=1),
                _randn(s, cin, cout, k, k, grad=True, scale=(cin * k * k) ** -0.5, seed=2),
                _randn(s, cout, grad=True, seed=3)]
        fwd = _conv_flops(n, cin, hw, hw, cout, k, k)  # one MAC per (input pixel, out channel, tap)
        return op_pair(s, lambda x, w, b: PF.conv_transpose2d(x, w, b, stride=stride),
                       lambda x, w, b: F.conv_transpose2d(x, w, b, stride=stride), args,
                       backward=True, flops=3 * fwd)

    return Case(name, f"N{n} {cin}->{cout} {hw}x{hw} k{k} s{stride}", build, targets=targets)


def depthwise_case(name, n, c, hw, k, *, targets) -> Case:
    def build(s: Settings) -> Pair:
        PF = _pf()
        args = [_randn(s, n, c, hw, hw, grad=True, seed=1),
                _randn(s, c, 1, k, k, grad=True, scale=1 / k, seed=2),
                _randn(s, c, grad=True, seed=3)]
        es = args[0].element_size()
        act = n * c * hw * hw * es
        # fwd: read x, write y; bwd: read gy and x, write gx (weights are tiny)
        return op_pair(s, lambda x, w, b: PF.conv2d(x, w, b, padding=k // 2, groups=c),
                       lambda x, w, b: F.conv2d(x, w, b, padding=k // 2, groups=c), args,
                       backward=True, nbytes=5 * act)

    return Case(name, f"N{n} C{c} {hw}x{hw} k{k}", build, targets=targets)


def torch_partial_conv2d(x, mask, w, b, padding):
    """Partial convolution composed of torch ops: conv2d of x * mask, conv2d of the mask with ones."""
    kh, kw = w.shape[2:]
    ones = torch.ones(1, mask.shape[1], kh, kw, dtype=mask.dtype, device=mask.device)
    msum = F.conv2d(mask, ones, padding=padding)
    valid = msum > 0
    ratio = torch.where(valid, mask.shape[1] * kh * kw / msum.clamp_min(1e-30), torch.zeros_like(msum))
    y = F.conv2d(x * mask, w, padding=padding) * ratio + b.view(1, -1, 1, 1)
    return torch.where(valid, y, torch.zeros_like(y))


def partial_conv2d_case(name, n, cin, cout, hw, k, *, targets) -> Case:
    """Single-channel mask with a square hole (a quarter of the image) and random missing pixels."""
    def build(s: Settings) -> Pair:
        PF = _pf()
        g = torch.Generator().manual_seed(4)
        mask = (torch.rand(n, 1, hw, hw, generator=g) > 0.2).double()
        mask[:, :, : hw // 2, : hw // 2] = 0
        args = [_randn(s, n, cin, hw, hw, grad=True, seed=1), mask.to(s.device, s.dtype),
                _randn(s, cout, cin, k, k, grad=True, scale=(cin * k * k) ** -0.5, seed=2),
                _randn(s, cout, grad=True, seed=3)]
        # the conv and its two gradients; the mask's box sum is k*k reads per output pixel (small)
        flops = 3 * _conv_flops(n, cout, hw, hw, cin, k, k)
        return op_pair(s, lambda x, m, w, b: PF.partial_conv2d(x, m, w, b, padding=k // 2),
                       lambda x, m, w, b: torch_partial_conv2d(x, m, w, b, k // 2), args,
                       backward=True, flops=flops)

    return Case(name, f"N{n} {cin}->{cout} {hw}x{hw} k{k} mask 1ch", build, targets=targets)


# ---- pooling, batch norm -----------------------------------------------------------------

def max_pool2d_case(name, n, c, hw, *, targets) -> Case:
    def build(s: Settings) -> Pair:
        PF = _pf()
        x = _randn(s, n, c, hw, hw, grad=True, seed=1)
        es, inp, out = x.element_size(), n * c * hw * hw, n * c * (hw // 2) ** 2
        # fwd: read x, write y + int64 indices; bwd: read gy + indices, write gx
        nbytes = inp * es + out * (es + 8) + out * (es + 8) + inp * es
        return op_pair(s, lambda x: PF.max_pool2d(x, 2, return_indices=True),
                       lambda x: F.max_pool2d(x, 2, return_indices=True), [x],
                       backward=True, nbytes=nbytes)

    return Case(name, f"N{n} C{c} {hw}x{hw} k2 s2", build, targets=targets)


def max_unpool2d_case(name, n, c, hw, *, targets) -> Case:
    """Unpools a 2x2 max-pool of a random tensor (indices from torch, shared by both sides)."""
    def build(s: Settings) -> Pair:
        PF = _pf()
        full = _randn(s, n, c, 2 * hw, 2 * hw, seed=1)
        values, idx = F.max_pool2d(full, 2, return_indices=True)
        values = values.detach().requires_grad_(True)
        es, inp, out = values.element_size(), n * c * hw * hw, n * c * 4 * hw * hw
        # fwd: read x + indices, write y (zeros included); bwd: read gy at indices + indices, write gx
        nbytes = inp * (es + 8) + out * es + inp * (2 * es + 8)
        return op_pair(s, lambda v, i: PF.max_unpool2d(v, i, 2),
                       lambda v, i: F.max_unpool2d(v, i, 2), [values, idx],
                       backward=True, nbytes=nbytes)

    return Case(name, f"N{n} C{c} {hw}x{hw} -> {2 * hw}x{2 * hw}", build, targets=targets)


# ---- detection: RoI ops against torch compositions ----------------------------------------

def _inside_rois(s: Settings, n: int, per_image: int, hw: int, seed: int) -> torch.Tensor:
    """per_image boxes on each of n images, inside [0.5, hw - 0.5] (where grid_sample's zero
    padding and roi_align's edge clamping agree), sorted by image: Tensor[K, 5]."""
    g = torch.Generator().manual_seed(seed)
    lo = 0.5 + torch.rand(n * per_image, 2, generator=g, dtype=torch.float64) * (hw / 2)
    size = 2 + torch.rand(n * per_image, 2, generator=g, dtype=torch.float64) * (hw / 2 - 3)
    batch = torch.arange(n, dtype=torch.float64).repeat_interleave(per_image)[:, None]
    return torch.cat([batch, lo, lo + size], dim=1).to(s.device, s.dtype)


def _grid_sample_roi_align(x, rois, n, per_image, size, ratio):
    """roi_align(aligned=True, scale 1, fixed sampling ratio) as torch ops: one grid_sample of
    every sample point of an image's RoIs, then avg_pool2d over each bin's ratio x ratio samples."""
    N, C, H, W = x.shape
    t = (torch.arange(size * ratio, device=x.device, dtype=x.dtype) + 0.5) / (size * ratio)
    x1, y1, x2, y2 = (rois[:, i, None] for i in range(1, 5))
    ys = y1 - 0.5 + t * (y2 - y1)                             # [K, S]
    xs = x1 - 0.5 + t * (x2 - x1)
    gy = (2 * ys + 1) / H - 1
    gx = (2 * xs + 1) / W - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # [K, S, S, 2]
    S = size * ratio
    grid = grid.reshape(n, per_image * S, S, 2)
    samples = F.grid_sample(x, grid, mode="bilinear", align_corners=False)  # [N, C, per_image*S, S]
    samples = samples.reshape(n, C, per_image, S, S).transpose(1, 2).reshape(n * per_image, C, S, S)
    return F.avg_pool2d(samples, ratio)


def roi_align_case(name, n, c, hw, per_image, size, ratio, *, targets) -> Case:
    def build(s: Settings) -> Pair:
        import pycnn.ops as ops
        x = _randn(s, n, c, hw, hw, grad=True, seed=1)
        rois = _inside_rois(s, n, per_image, hw, seed=2)
        k = n * per_image
        # fwd: 4 taps x 2 multiply-adds per sample; bwd the same as scattered adds
        flops = 2 * (k * c * size * size * ratio * ratio * 4 * 2)
        return op_pair(s, lambda x: ops.roi_align(x, rois, size, 1.0, ratio, True),
                       lambda x: _grid_sample_roi_align(x, rois, n, per_image, size, ratio), [x],
                       backward=True, flops=flops)

    return Case(name, f"N{n} C{c} {hw}x{hw} {n * per_image} RoIs {size}x{size} s{ratio}", build, targets=targets)


def roi_pool_case(name, n, c, hw, size, *, targets) -> Case:
    """roi_pool with one whole-image box per image == adaptive_max_pool2d (hw divisible by size)."""
    def build(s: Settings) -> Pair:
        import pycnn.ops as ops
        x = _randn(s, n, c, hw, hw, grad=True, seed=1)
        rois = torch.tensor([[i, 0, 0, hw - 1, hw - 1] for i in range(n)], dtype=s.dtype, device=s.device)
        es, inp, out = x.element_size(), n * c * hw * hw, n * c * size * size
        nbytes = inp * es + out * (es + 8) + out * (es + 8) + inp * es
        return op_pair(s, lambda x: ops.roi_pool(x, rois, size), lambda x: F.adaptive_max_pool2d(x, size), [x],
                       backward=True, nbytes=nbytes)

    return Case(name, f"N{n} C{c} {hw}x{hw} -> {size}x{size}", build, targets=targets)


def batch_norm_case(name, n, c, hw, *, targets) -> Case:
    def build(s: Settings) -> Pair:
        PF = _pf()
        args = [_randn(s, n, c, hw, hw, grad=True, seed=1),
                torch.zeros(c, device=s.device, dtype=s.dtype), torch.ones(c, device=s.device, dtype=s.dtype),
                _randn(s, c, grad=True, seed=2), _randn(s, c, grad=True, seed=3)]
        act = n * c * hw * hw * args[0].element_size()

        def ours(x, rm, rv, w, b):
            return PF.batch_norm(x, rm, rv, w, b, training=True)

        def theirs(x, rm, rv, w, b):
            return F.batch_norm(x, rm, rv, w, b, training=True)

        # fwd: read x, write y; bwd: read gy and x, write gx (a lower bound: stats need a pass)
        return op_pair(s, ours, theirs, args, backward=True, mutated=(1, 2), nbytes=5 * act)

    return Case(name, f"N{n} C{c} {hw}x{hw} training", build, targets=targets)


# ---- matrix products ---------------------------------------------------------------------

def linear_case(name, m, k, n, *, targets=()) -> Case:
    def build(s: Settings) -> Pair:
        PF = _pf()
        args = [_randn(s, m, k, grad=True, seed=1), _randn(s, n, k, grad=True, scale=k ** -0.5, seed=2),
                _randn(s, n, grad=True, seed=3)]
        return op_pair(s, PF.linear, F.linear, args, backward=True, flops=3 * 2.0 * m * n * k)

    return Case(name, f"{m}x{k} @ ({n}x{k})^T", build, targets=targets)


def gemm_case(name, size, *, targets) -> Case:
    """Our GEMM through the raw binding (pycnn._C / _C_cuda) against torch.mm, C = A @ B."""
    def build(s: Settings) -> Pair:
        from pycnn._ops import native
        M = N = K = size
        a, b = _randn(s, M, K, seed=1), _randn(s, K, N, seed=2)
        c_ours = torch.empty(M, N, device=s.device, dtype=s.dtype)
        c_ref = torch.empty_like(c_ours)

        def ours():
            # row-major C[M,N] = 1 * A[M,K] @ B[K,N] + 0 * C  (beta 0: C not read)
            native.call("gemm", a, False, False, M, N, K, 1.0, a.data_ptr(), K, b.data_ptr(), N,
                        0.0, c_ours.data_ptr(), N)

        def theirs():
            torch.mm(a, b, out=c_ref)

        def validate():
            ours()
            theirs()
            compare("C", c_ours, c_ref, TOLERANCE[s.dtype])

        return Pair(ours, theirs, validate, flops=2.0 * M * N * K)

    return Case(name, f"{size}x{size}x{size}", build, targets=targets)


# ---- the end-to-end case: a ResNet training step --------------------------------------

class BasicBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(cout)
        self.conv2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(cout)
        self.shortcut = torch.nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 1, stride, bias=False),
                                                torch.nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class SmallResNet(torch.nn.Module):
    """CIFAR-style ResNet (He et al. 2016, sec. 4.2) with one block per stage: 16, 32, 64 channels."""

    def __init__(self, num_classes=10, widths=(16, 32, 64)):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                                        torch.nn.BatchNorm2d(widths[0]), torch.nn.ReLU())
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(cin, w, 1 if i == 0 else 2))
            cin = w
        self.blocks = torch.nn.Sequential(*blocks)
        self.fc = torch.nn.Linear(cin, num_classes)

    def forward(self, x):
        y = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def _resnet_models(s: Settings, hw: int):
    """(pycnn model, torch model) with the same weights, or Skip saying what is missing.

    Preferred: pycnn.models' ResNet-20 (the CIFAR one) against its torch twin from pycnn.nn.to_torch (a deep
    copy with every pycnn layer turned back into its torch.nn base class). Fallback: the
    SmallResNet above on torch.nn layers, against a copy converted by pycnn.nn.convert.
    """
    reasons = []
    try:
        import pycnn.models as models
        from pycnn.nn import to_torch
        torch.manual_seed(0)
        ours = models.get("resnet", in_channels=3, num_classes=10, image_size=hw, depth=20)
        return ours, to_torch(copy.deepcopy(ours))
    except ImportError as e:
        reasons.append(f"pycnn.models / pycnn.nn.to_torch not available ({e})")
    try:
        from pycnn.nn import convert
    except ImportError as e:
        reasons.append(f"pycnn.nn.convert not available ({e})")
        raise Skip("; ".join(reasons)) from None
    torch.manual_seed(0)
    theirs = SmallResNet()
    return convert(copy.deepcopy(theirs)), theirs


def _count_forward_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    total = [0.0]

    def hook(m, inp, out):
        if isinstance(m, torch.nn.Conv2d):
            kh, kw = m.kernel_size
            total[0] += 2.0 * out.numel() * (m.in_channels // m.groups) * kh * kw
        elif isinstance(m, torch.nn.Linear):
            total[0] += 2.0 * out.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total[0]


def resnet_case(name, n, hw, *, targets) -> Case:
    def build(s: Settings) -> Pair:
        ours, theirs = _resnet_models(s, hw)
        ours.to(s.device, s.dtype).train()
        theirs.to(s.device, s.dtype).train()
        g = torch.Generator().manual_seed(5)
        x = torch.randn(n, 3, hw, hw, generator=g).to(s.device, s.dtype)
        y = torch.randint(0, 10, (n,), generator=g).to(s.device)
        # the flop count runs the twin in train mode: put its running stats back afterwards
        state = copy.deepcopy(theirs.state_dict())
        fwd = _count_forward_flops(theirs, x)
        theirs.load_state_dict(state)
        opts = [torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for m in (ours, theirs)]

        def stepper(model, opt, inputs=x, labels=y):
            def step():
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(inputs), labels)
                loss.backward()
                opt.step()
                return loss
            return step

        ours_step, theirs_step = stepper(ours, opts[0]), stepper(theirs, opts[1])

        def validate():
            # Checked in float64 on copies: through ~20 layers of batch norm, float32 rounding
            # alone moves some gradients by ~1e-2 relative (measured), which would hide a small
            # kernel error; in float64 they must agree to 1e-7 of each tensor's max (a wrong kernel: O(1)).
            check_dtype = torch.float64
            mo, mt = (copy.deepcopy(m).to(check_dtype) for m in (ours, theirs))
            # 8 samples suffice to check the arithmetic (float64 steps are slow on CPU)
            xd, yd = x[:8].to(check_dtype), y[:8]
            so = stepper(mo, torch.optim.SGD(mo.parameters(), lr=0.01, momentum=0.9), xd, yd)
            st = stepper(mt, torch.optim.SGD(mt.parameters(), lr=0.01, momentum=0.9), xd, yd)
            tol = max(TOLERANCE[check_dtype], 1e-7)
            a, b = so(), st()
            compare("loss", a.detach().reshape(1), b.detach().reshape(1), tol)
            pa, pb = dict(mo.named_parameters()), dict(mt.named_parameters())
            if pa.keys() != pb.keys():
                raise Mismatch(f"parameter names differ: {sorted(pa.keys() ^ pb.keys())[:4]}")
            for k in pb:
                compare(f"gradient of {k}", pa[k].grad, pb[k].grad, tol)
            for k in pb:
                compare(f"{k} after the SGD step", pa[k], pb[k], tol)
            ours_step()  # and the timed float32 models run once (errors surface here, not timing)
            theirs_step()

        return Pair(ours_step, theirs_step, validate, flops=3 * fwd)

    return Case(name, f"N{n} 3x{hw}x{hw} ResNet-20 SGD", build, targets=targets)


# ---- peak memory and per-call overhead -------------------------------------------------

_MEMORY_SCRIPT = r"""
import json, re, resource, sys
import torch
impl, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
if impl == "pycnn":
    import pycnn, pycnn.functional as F
    pycnn.sync_threads()
else:
    import torch.nn.functional as F
def status(key):
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
g = torch.Generator().manual_seed(0)
x = torch.randn(n, 64, 32, 32, generator=g)
w = torch.randn(64, 64, 3, 3, generator=g) * 0.04
b = torch.zeros(64)
F.conv2d(x[:2], w, b, padding=1)  # one-time library set-up is not the op's memory
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak-RSS mark (VmHWM) to the current RSS
    method, base = "VmHWM", status("VmRSS")
except OSError:
    method, base = "ru_maxrss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
y = F.conv2d(x, w, b, padding=1)
peak = status("VmHWM") if method == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"delta": peak - base, "output": y.numel() * y.element_size(), "method": method}))
"""


def _memory_cpu(impl: str, n: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, impl, str(n), str(torch.get_num_threads())],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        err = proc.stderr.strip().splitlines()
        raise RuntimeError(f"{impl} subprocess failed: {err[-1] if err else proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _memory_cuda(impl: str, n: int) -> dict:
    PF = _pf() if impl == "pycnn" else F
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 64, 32, 32, generator=g).cuda()
    w = (torch.randn(64, 64, 3, 3, generator=g) * 0.04).cuda()
    b = torch.zeros(64, device="cuda")
    PF.conv2d(x[:2], w, b, padding=1)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    y = PF.conv2d(x, w, b, padding=1)
    torch.cuda.synchronize()
    return {"delta": torch.cuda.max_memory_allocated() - base, "output": y.numel() * y.element_size(),
            "method": "torch.cuda.max_memory_allocated"}


def memory_case(name, n, *, targets) -> Case:
    """Peak memory growth of one conv2d forward (output included), pycnn / torch.

    CPU: each side in a fresh subprocess, the peak-RSS mark reset just before the call.
    """
    def run(s: Settings, peaks: Peaks) -> Result:
        if s.dtype != torch.float32:
            raise Skip("measured in float32 only")
        measure = _memory_cuda if s.cuda else _memory_cpu
        try:
            ours = measure("pycnn", n)
        except RuntimeError as e:
            if "not implemented" in str(e) or "has no attribute" in str(e):
                raise Skip(str(e)) from None
            raise
        theirs = measure("torch", n)
        note = f"output alone {ours['output'] / 1e6:.0f} MB; {ours['method']}"
        return Result(name, f"N{n} 64->64 32x32 k3", ours=ours["delta"], theirs=theirs["delta"],
                      ratio=ours["delta"] / max(theirs["delta"], 1), unit="MB", message=note)

    return Case(name, f"N{n} 64->64 32x32 k3", run=run, targets=targets)


def overhead_case(name, *, backward: bool) -> Case:
    """Microseconds per call of linear on 1x1 tensors: nothing but the Python/dispatch path."""
    def run(s: Settings, peaks: Peaks) -> Result:
        PF = _pf()
        shape = "x 1x1, w 1x1, b 1" + (" fwd+bwd" if backward else " fwd")
        pair = op_pair(s, PF.linear, F.linear,
                       [_randn(s, 1, 1, grad=backward), _randn(s, 1, 1, grad=backward, seed=1),
                        _randn(s, 1, grad=backward, seed=2)], backward=backward)
        pair.validate()
        ours, theirs, ratio, pairs = time_pair(s, pair.ours, pair.theirs, calls=200 if s.quick else 1000)
        return Result(name, shape, ours=ours, theirs=theirs, ratio=ratio, unit="us", pairs=pairs,
                      message=f"+{(ours - theirs) * 1e6:.1f} us/call")

    return Case(name, "1x1", run=run)


# ---- the lists ---------------------------------------------------------------------------

# The "fast on every CPU" issue's targets, by pycnn's CPU target (avx2 and avx512; neon and
# generic keep the earlier, looser ones).
_CPU_TARGETS = {
    "avx512": {"resnet": 0.7, "conv fwd": 0.5, "conv fwd+bwd": 0.6, "lenet": 0.5},
    "avx2": {"resnet": 0.8, "conv fwd": 0.6, "conv fwd+bwd": 0.7, "lenet": 0.6},
}
_CPU_TARGETS_OTHER = {"resnet": 1.0, "conv fwd": 1.0, "conv fwd+bwd": 0.8, "lenet": 0.8}


def cpu_cases(isa: str | None = None) -> List[Case]:
    if isa is None:
        import pycnn
        isa = pycnn.cpu_isa()
    t = _CPU_TARGETS.get(isa, _CPU_TARGETS_OTHER)
    return [
        conv2d_case("conv2d 3x3 fwd", 32, 64, 64, 32, 3, pad=1, backward=False, targets=[_ratio("<=", t["conv fwd"])]),
        conv2d_case("conv2d 3x3 fwd+bwd", 32, 64, 64, 32, 3, pad=1, backward=True,
                    targets=[_ratio("<=", t["conv fwd+bwd"])]),
        conv2d_case("conv2d 5x5 1->6 fwd+bwd", 64, 1, 6, 28, 5, pad=0, backward=True, targets=[_ratio("<=", t["lenet"])]),
        # Mask R-CNN's mask head (46 RoIs of 14x14): rows that are not whole cache lines
        conv2d_case("conv2d 3x3 14x14 fwd+bwd", 46, 16, 32, 14, 3, pad=1, backward=True, targets=()),
        conv_transpose2d_case("conv_transpose2d 2x2 s2 fwd+bwd", 16, 64, 32, 32, 2, 2, targets=[_ratio("<=", 1.0)]),
        max_pool2d_case("max_pool2d 2x2 fwd+bwd", 32, 64, 64, targets=[_ratio("<=", 0.3)]),
        batch_norm_case("batch_norm train fwd+bwd", 32, 64, 64, targets=[_ratio("<=", 0.5)]),
        depthwise_case("depthwise conv2d 3x3 fwd+bwd", 32, 64, 64, 3, targets=[_ratio("<=", 0.3)]),
        gemm_case("gemm vs torch.mm", 1024, targets=[_ratio("<=", 1.05)]),  # >= 0.95 of torch's GFLOP/s
        linear_case("linear fwd+bwd", 256, 1024, 1024),
        max_unpool2d_case("max_unpool2d 2x2 fwd+bwd", 32, 64, 32, targets=()),
        roi_align_case("roi_align fwd+bwd", 2, 64, 50, 128, 7, 2, targets=()),
        roi_pool_case("roi_pool fwd+bwd", 8, 64, 56, 7, targets=()),
        partial_conv2d_case("partial_conv2d 3x3 fwd+bwd", 16, 32, 32, 64, 3, targets=()),
        resnet_case("resnet train step", 32, 32, targets=[_ratio("<=", t["resnet"])]),
        memory_case("memory conv2d fwd", 256, targets=[_ratio("<=", 1.5)]),
        overhead_case("overhead linear fwd", backward=False),
        overhead_case("overhead linear fwd+bwd", backward=True),
    ]


def cuda_cases() -> List[Case]:
    conv_target = [_ratio("<=", 2.0)]
    mem_targets = [_ratio("<=", 1.0), BANDWIDTH_60]
    return [
        conv2d_case("conv2d 3x3 C64 fwd+bwd", 32, 64, 64, 32, 3, pad=1, backward=True, targets=conv_target),
        conv2d_case("conv2d 3x3 C128 fwd+bwd", 32, 128, 128, 32, 3, pad=1, backward=True, targets=conv_target),
        conv2d_case("conv2d 3x3 C256 fwd+bwd", 32, 256, 256, 32, 3, pad=1, backward=True, targets=conv_target),
        conv2d_case("conv2d 3x3 C64 fwd", 32, 64, 64, 32, 3, pad=1, backward=False, targets=()),
        conv_transpose2d_case("conv_transpose2d 2x2 s2 fwd+bwd", 16, 64, 32, 32, 2, 2, targets=()),
        # 128 x 64 x 64 x 64 floats = 134 MB per activation: large enough that launch latency
        # (~5 us) is small against ~40 us of traffic at 3 TB/s
        max_pool2d_case("max_pool2d 2x2 fwd+bwd", 128, 64, 64, targets=mem_targets),
        batch_norm_case("batch_norm train fwd+bwd", 128, 64, 64, targets=mem_targets),
        depthwise_case("depthwise conv2d 3x3 fwd+bwd", 128, 64, 64, 3, targets=mem_targets),
        max_unpool2d_case("max_unpool2d 2x2 fwd+bwd", 128, 64, 32, targets=[BANDWIDTH_60]),
        roi_align_case("roi_align fwd+bwd", 2, 256, 50, 256, 7, 2, targets=()),
        roi_pool_case("roi_pool fwd+bwd", 32, 256, 56, 7, targets=()),
        partial_conv2d_case("partial_conv2d 3x3 fwd+bwd", 32, 64, 64, 64, 3, targets=()),
        gemm_case("gemm vs torch.mm", 4096, targets=()),
        linear_case("linear fwd+bwd", 4096, 1024, 1024),
        resnet_case("resnet train step", 128, 32, targets=()),
        memory_case("memory conv2d fwd", 256, targets=[_ratio("<=", 1.5)]),
        overhead_case("overhead linear fwd", backward=False),
        overhead_case("overhead linear fwd+bwd", backward=True),
    ]


def all_cases(device: str, isa: str | None = None) -> List[Case]:
    return cuda_cases() if device == "cuda" else cpu_cases(isa)


def select(cases: List[Case], pattern: str | None) -> List[Case]:
    if not pattern:
        return cases
    p = pattern.lower()
    return [c for c in cases if p in c.name.lower() or p in c.shape.lower()]


__all__ = ["all_cases", "cpu_cases", "cuda_cases", "select", "SmallResNet"]
