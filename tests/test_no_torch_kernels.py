"""pycnn ops must run pycnn's kernels: under torch.profiler, no torch convolution, pooling,
batch-norm or matrix-multiply kernel may appear while they run forward and backward."""
import re

import pytest
import torch

import pycnn.functional as PF
import pycnn.ops as ops

BANNED = re.compile(
    r"^aten::(.*conv.*|.*convolution.*|max_pool.*|max_unpool.*|.*batch_norm.*|mm|addmm|bmm|baddbmm|"
    r"matmul|linear|_mkldnn.*|mkldnn_.*|cudnn_.*|einsum|tensordot|dot|vdot|mv|addmv|"
    r"grid_sampler.*|adaptive_.*pool.*|avg_pool.*|.*roi_.*)$")

x4 = lambda *s: torch.randn(*s, requires_grad=True)

CASES = {
    "conv2d": lambda: PF.conv2d(x4(2, 4, 9, 9), x4(6, 2, 3, 3), x4(6), stride=2, padding=1, groups=2),
    "conv2d_depthwise": lambda: PF.conv2d(x4(2, 4, 9, 9), x4(8, 1, 3, 3), x4(8), padding=1, groups=4),
    "conv_transpose2d": lambda: PF.conv_transpose2d(x4(2, 4, 5, 5), x4(4, 3, 2, 2), x4(3), stride=2),
    "max_pool2d": lambda: PF.max_pool2d(x4(2, 3, 8, 8), 2),
    "max_unpool2d": lambda: PF.max_unpool2d(*PF.max_pool2d(x4(2, 3, 8, 8), 2, return_indices=True), 2),
    "batch_norm": lambda: PF.batch_norm(x4(4, 3, 5, 5), torch.zeros(3), torch.ones(3), x4(3), x4(3), training=True),
    "linear": lambda: PF.linear(x4(5, 7), x4(3, 7), x4(3)),
    "roi_align": lambda: ops.roi_align(x4(2, 3, 8, 8), [torch.tensor([[1, 1, 6, 5.0]]), torch.tensor([[0, 2, 7, 7.0]])], 3),
    "roi_pool": lambda: ops.roi_pool(x4(2, 3, 8, 8), torch.tensor([[0, 1, 1, 6, 5], [1, 0, 2, 7, 7.0]]), 3),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_runs_no_torch_kernel(name):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        out = CASES[name]()
        out.sum().backward()
    names = {e.name for e in prof.events()}
    assert any(n.startswith("pycnn::") for n in names), f"no pycnn op seen for {name}: {sorted(names)[:20]}"
    hits = sorted(n for n in names if BANNED.match(n))
    assert not hits, f"{name} ran torch kernels: {hits}"


def test_banned_pattern_catches_torch_ops():
    # The check above is only worth something if it sees torch's own kernels when they run.
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.nn.functional.conv2d(torch.randn(1, 1, 5, 5), torch.randn(1, 1, 3, 3))
        torch.nn.functional.max_pool2d(torch.randn(1, 1, 4, 4), 2)
        torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3))
    names = {e.name for e in prof.events()}
    assert {"aten::conv2d", "aten::max_pool2d", "aten::linear"} <= {n for n in names if BANNED.match(n)}
