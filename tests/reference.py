"""The one reference check: any pycnn op against its torch twin, forward and every gradient.

    check_op(pycnn_fn, torch_fn, [x, w, b], grad=(True, True, True))

runs both functions on the same inputs in float32 and float64, compares outputs (tensors or
tuples; integer outputs such as pooling indices must match exactly), then back-propagates the
same random output gradient through both and compares every input gradient. That is done twice
per dtype: once with contiguous output gradients, once with non-contiguous ones (strided,
transposed views, see noncontiguous_randn), as autograd hands a backward whatever layout the
next op produced.
"""
from __future__ import annotations

import torch

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-7, atol=1e-7)}
DTYPES = (torch.float32, torch.float64)


def _as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _prepare(inputs, dtype, grad, device):
    prepared = []
    for t, g in zip(inputs, grad):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            t = t.detach().to(device=device, dtype=dtype).clone().requires_grad_(bool(g))
        elif isinstance(t, torch.Tensor):
            t = t.to(device)
        prepared.append(t)
    return prepared


def noncontiguous_randn(shape, generator, dtype, device="cpu"):
    """Standard normal values of `shape` as a view that is not contiguous whenever it can be (any
    dimension > 1): every other element of a buffer twice as large in each dimension, laid out
    with the dimensions reversed (so also transposed)."""
    n = len(shape)
    if n == 0:
        return torch.randn((), generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)
    big = torch.randn([2 * s for s in reversed(shape)], generator=generator, dtype=torch.float64)
    big = big.to(device=device, dtype=dtype)  # cast the dense buffer: .to() on a view could copy it dense
    view = big[(slice(None, None, 2),) * n].permute(*reversed(range(n)))
    assert tuple(view.shape) == tuple(shape) and (view.numel() <= 1 or not view.is_contiguous())
    return view


def check_op(our_fn, torch_fn, inputs, grad=None, dtypes=DTYPES, device="cpu", tol=None, seed=0):
    """Asserts our_fn(*inputs) == torch_fn(*inputs) and equal gradients for each requested input.

    inputs: tensors (float ones are cast to each dtype) or other arguments passed through.
    grad: per input, whether its gradient is checked (default: every float tensor).
    Returns the float64 outputs of our_fn, for further checks.
    """
    if grad is None:
        grad = [isinstance(t, torch.Tensor) and t.is_floating_point() for t in inputs]
    grad = list(grad) + [False] * (len(inputs) - len(grad))
    result = None
    for dtype in dtypes:
        kw = tol[dtype] if tol else TOL[dtype]
        ours_in = _prepare(inputs, dtype, grad, device)
        ref_in = _prepare(inputs, dtype, grad, device)
        ours = _as_tuple(our_fn(*ours_in))
        ref = _as_tuple(torch_fn(*ref_in))
        assert len(ours) == len(ref), f"{len(ours)} outputs, torch gives {len(ref)}"
        for i, (o, r) in enumerate(zip(ours, ref)):
            assert o.shape == r.shape, f"output {i}: shape {tuple(o.shape)}, torch {tuple(r.shape)}"
            assert o.dtype == r.dtype, f"output {i}: dtype {o.dtype}, torch {r.dtype}"
            assert o.device == r.device
            if r.is_floating_point():
                torch.testing.assert_close(o, r, **kw, equal_nan=True, msg=lambda m: f"{dtype} output {i}: {m}")
            else:
                assert torch.equal(o, r), f"output {i} (integer) differs from torch"
        float_outs = [(o, r) for o, r in zip(ours, ref) if r.is_floating_point() and r.requires_grad]
        wants = [t for t, g in zip(ours_in, grad) if g]
        if float_outs and wants:
            gen = torch.Generator().manual_seed(seed)
            contiguous = [torch.randn(r.shape, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
                          for _, r in float_outs]
            strided = [noncontiguous_randn(r.shape, gen, dtype, device) for _, r in float_outs]
            ref_wants = [t for t, g in zip(ref_in, grad) if g]
            for layout, seeds in (("contiguous", contiguous), ("non-contiguous", strided)):
                last = layout == "non-contiguous"
                ours_grads = torch.autograd.grad([o for o, _ in float_outs], wants, seeds, allow_unused=True,
                                                 retain_graph=not last)
                ref_grads = torch.autograd.grad([r for _, r in float_outs], ref_wants, seeds, allow_unused=True,
                                                retain_graph=not last)
                for j, (go, gr) in enumerate(zip(ours_grads, ref_grads)):
                    where = f"{dtype} gradient of input {j} ({layout} output gradient)"
                    if gr is None:
                        assert go is None or not go.any(), f"{where}: torch has none, ours is nonzero"
                        continue
                    assert go is not None, f"{where}: torch has one, ours is None"
                    torch.testing.assert_close(go, gr, **kw, msg=lambda m, where=where: f"{where}: {m}")
        if dtype == torch.float64:
            result = ours
    return result


def gradcheck(fn, inputs, **kw):
    """torch.autograd.gradcheck in float64 on fresh leaf copies of the float inputs."""
    prepared = [t.detach().double().clone().requires_grad_(True) if isinstance(t, torch.Tensor) and t.is_floating_point()
                else t for t in inputs]
    return torch.autograd.gradcheck(fn, prepared, **kw)


def assert_same_bits_across_threads(fn, counts=(1, 2, 3)):
    """fn() (a tuple of tensors) at each torch thread count gives bitwise-equal results; the
    thread count is restored afterwards."""
    import pycnn
    old = torch.get_num_threads()
    results = []
    try:
        for n in counts:
            torch.set_num_threads(n)
            pycnn.sync_threads()
            results.append(fn())
    finally:
        torch.set_num_threads(old)
        pycnn.sync_threads()
    for n, other in zip(counts[1:], results[1:]):
        for i, (a, c) in enumerate(zip(results[0], other)):
            assert torch.equal(a, c), f"result {i} at {n} threads differs from {counts[0]} thread(s)"
