"""The eager fast path (pycnn/_ops/native.py: run): plain eager calls skip the custom-op dispatch
and run the op's own body under an autograd.Function. Results must be bit-identical to the
custom-op path, and every situation the dispatch exists for must still take it."""
import pytest
import torch
from torch.overrides import TorchFunctionMode

import pycnn.functional as PF
import pycnn.ops as ops
from pycnn._ops import native

x4 = lambda *s: torch.randn(*s, requires_grad=True)

CASES = {
    "conv2d": lambda: PF.conv2d(x4(2, 4, 9, 9), x4(6, 2, 3, 3), x4(6), stride=2, padding=1, groups=2),
    "conv2d_winograd": lambda: PF.conv2d(x4(2, 8, 8, 8), x4(8, 8, 3, 3), x4(8), padding=1),
    "conv2d_depthwise": lambda: PF.conv2d(x4(2, 4, 9, 9), x4(8, 1, 3, 3), x4(8), padding=1, groups=4),
    "conv_transpose2d": lambda: PF.conv_transpose2d(x4(2, 4, 5, 5), x4(4, 3, 2, 2), x4(3), stride=2),
    "max_pool2d": lambda: PF.max_pool2d(x4(2, 3, 8, 8), 2, return_indices=True),
    "max_unpool2d": lambda: PF.max_unpool2d(*PF.max_pool2d(x4(2, 3, 8, 8), 2, return_indices=True), 2),
    "batch_norm": lambda: PF.batch_norm(x4(4, 3, 5, 5), torch.zeros(3), torch.ones(3), x4(3), x4(3), training=True),
    "batch_norm_residual_relu": lambda: PF.batch_norm(x4(4, 3, 5, 5), torch.zeros(3), torch.ones(3), x4(3), x4(3),
                                                      training=True, residual=x4(4, 3, 5, 5), relu=True),
    "batch_norm_eval": lambda: PF.batch_norm(x4(4, 3, 5, 5), torch.randn(3), torch.rand(3) + 0.5, x4(3), x4(3)),
    "linear": lambda: PF.linear(x4(5, 7), x4(3, 7), x4(3)),
    "roi_align": lambda: ops.roi_align(x4(2, 3, 8, 8), torch.tensor([[0, 1, 1, 6, 5], [1, 0, 2, 7, 7.0]]), 3, 1.0, 2, True),
    "roi_pool": lambda: ops.roi_pool(x4(2, 3, 8, 8), [torch.tensor([[1, 1, 6, 5.0]]), torch.tensor([[0, 2, 7, 7.0]])], 3),
}


def _run(name, fast):
    previous = native.set_fast_path(fast)
    try:
        torch.manual_seed(0)
        out = CASES[name]()
        outs = out if isinstance(out, tuple) else (out,)
        leaves = [t for t in _leaves(outs[0])]
        grads = torch.autograd.grad(outs[0], leaves, torch.linspace(-1, 1, outs[0].numel()).view_as(outs[0]))
        return outs, grads, _node_names(outs[0])
    finally:
        native.set_fast_path(previous)


def _graph(t):
    seen, stack = [], [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.append(fn)
        stack.extend(f for f, _ in fn.next_functions)
    return seen


def _leaves(t):
    return [fn.variable for fn in _graph(t) if hasattr(fn, "variable")]


def _node_names(t):
    return " ".join(type(fn).__name__ for fn in _graph(t))


@pytest.mark.parametrize("name", sorted(CASES))
def test_fast_path_matches_the_custom_op_bitwise(name):
    fast_outs, fast_grads, fast_fn = _run(name, True)
    op_outs, op_grads, op_fn = _run(name, False)
    # each path really ran: the fast path's autograd.Function, the custom op's generated node
    assert "_functionBackward" in fast_fn and "pycnn" not in fast_fn, fast_fn
    assert "pycnn" in op_fn and "_functionBackward" not in op_fn, op_fn
    assert len(fast_grads) == len(op_grads) > 0
    for a, b in zip(fast_outs + fast_grads, op_outs + op_grads):
        assert torch.equal(a, b)


def test_fast_path_only_for_plain_eager_calls():
    x = torch.randn(2, 3)
    assert native.fast_path_applies((x, torch.nn.Parameter(torch.randn(4, 3)), None, [1]))
    assert not native.fast_path_applies((torch.randn(2, 3, device="meta"),))
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        assert not native.fast_path_applies((x,))
    with TorchFunctionMode():
        assert not native.fast_path_applies((x,))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        assert not native.fast_path_applies((x,))

    class Sub(torch.Tensor):
        pass
    assert not native.fast_path_applies((x.as_subclass(Sub),))
    previous = native.set_fast_path(False)
    try:
        assert not native.fast_path_applies((x,))
    finally:
        native.set_fast_path(previous)


def test_fast_path_rejects_double_backward_like_the_op():
    # Under create_graph the gradient must stay attached to the graph (a gradient penalty needs
    # its dependence on w) and differentiating it must raise, on both paths.
    for fast in (True, False):
        previous = native.set_fast_path(fast)
        try:
            x, w = x4(2, 3), x4(4, 3)
            g, = torch.autograd.grad(PF.linear(x, w).sum(), x, create_graph=True)
            assert g.requires_grad
            with pytest.raises(RuntimeError, match="pycnn.*(double backward|no autograd formula)"):
                g.sum().backward()
        finally:
            native.set_fast_path(previous)
