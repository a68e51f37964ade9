"""max_pool2d (values + argmax indices) and max_unpool2d on pycnn's kernels.

Same pattern as pycnn/_ops/linear.py: custom op with checks -> fake -> backward custom op ->
register_autograd. Indices are flat positions h * W + w within each input plane, exactly as
torch returns them, so torch's max_unpool2d accepts ours and ours accepts torch's.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from pycnn._ops import native

POOL = "max_pool2d"
UNPOOL = "max_unpool2d"


def _check_pair(op: str, name: str, v) -> None:
    if not isinstance(v, (list, tuple)) or len(v) != 2 or not all(isinstance(i, (int, torch.SymInt)) and not isinstance(i, bool) for i in v):
        raise ValueError(f"{op}: {name} must be a list of 2 ints, got {v!r}")


def _pooled_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's pooling_output_shape: floor (or ceil) of the window count, where in ceil_mode
    the last window must start inside the input or the left padding."""
    span = size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = span // s + 1  # Python's // rounds down, like torch's div_rtn, also for negative spans
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_output_hw(x: Tensor, kernel, stride, padding, dilation, ceil_mode) -> Tuple[int, int]:
    """Checks a max_pool2d call as torch does; returns (OH, OW)."""
    native.check_tensor(POOL, "input", x, dims=4)
    native.check_float_tensors(POOL, input=x)
    for name, v in (("kernel_size", kernel), ("stride", stride), ("padding", padding), ("dilation", dilation)):
        _check_pair(POOL, name, v)
    native.check_positive(POOL, "kernel_size", kernel)
    native.check_positive(POOL, "stride", stride)
    native.check_positive(POOL, "dilation", dilation)
    native.check_non_negative(POOL, "padding", padding)
    if any(p > k // 2 for p, k in zip(padding, kernel)):
        raise ValueError(f"{POOL}: padding {tuple(padding)} must be at most half the kernel size "
                         f"{tuple(kernel)}")
    N, C, H, W = x.shape
    if C == 0 or H == 0 or W == 0:
        raise ValueError(f"{POOL}: input must have non-zero channels, height and width (only the batch "
                         f"may be empty), got shape {tuple(x.shape)}")
    oh, ow = (_pooled_size(n, k, s, p, d, ceil_mode)
              for n, k, s, p, d in zip((H, W), kernel, stride, padding, dilation))
    if oh < 1 or ow < 1:
        raise ValueError(f"{POOL}: output size {oh}x{ow} is too small for input {H}x{W} (kernel_size "
                         f"{tuple(kernel)}, stride {tuple(stride)}, padding {tuple(padding)}, dilation "
                         f"{tuple(dilation)}, ceil_mode={ceil_mode})")
    return oh, ow


def _shape_args(N, C, H, W, OH, OW, kernel, stride, padding, dilation) -> List[int]:
    # Pool2dShape: planes, H, W, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw
    return [N * C, H, W, OH, OW, *kernel, *stride, *padding, *dilation]


@native.custom_op("max_pool2d")
def max_pool2d(x: Tensor, kernel: List[int], stride: List[int], padding: List[int], dilation: List[int],
               ceil_mode: bool) -> Tuple[Tensor, Tensor]:
    """x [N, C, H, W] -> (max values [N, C, OH, OW], int64 argmax indices h * W + w)."""
    OH, OW = _pool_output_hw(x, kernel, stride, padding, dilation, ceil_mode)
    layout = native.output_format(x)  # values and indices keep the input's layout, as in torch
    x = x.contiguous()
    N, C, H, W = x.shape
    y = x.new_empty(N, C, OH, OW)
    indices = x.new_empty(N, C, OH, OW, dtype=torch.int64)
    if N:
        native.call("max_pool2d_forward", x, _shape_args(N, C, H, W, OH, OW, kernel, stride, padding, dilation),
                    native.ptr(x), native.ptr(y), native.ptr(indices))
    return native.in_format(y, layout), native.in_format(indices, layout)


@max_pool2d.register_fake
def _(x, kernel, stride, padding, dilation, ceil_mode):
    OH, OW = _pool_output_hw(x, kernel, stride, padding, dilation, ceil_mode)
    N, C = x.shape[:2]
    layout = native.output_format(x)
    return native.empty(x, (N, C, OH, OW), layout), native.empty(x, (N, C, OH, OW), layout, torch.int64)


def _check_pool_backward(grad_out: Tensor, indices: Tensor, input_hw: List[int]) -> None:
    op = "max_pool2d_backward"
    native.check_tensor(op, "grad_out", grad_out, dims=4)
    native.check_float_tensors(op, grad_out=grad_out)
    if indices.dtype != torch.int64 or indices.shape != grad_out.shape or indices.device != grad_out.device:
        raise ValueError(f"{op}: indices must be int64 on {grad_out.device} with shape {tuple(grad_out.shape)}, "
                         f"got {indices.dtype} on {indices.device} with shape {tuple(indices.shape)}")
    _check_pair(op, "input_hw", input_hw)


@native.custom_op("max_pool2d_backward")
def max_pool2d_backward(grad_out: Tensor, indices: Tensor, input_hw: List[int], kernel: List[int],
                        stride: List[int], padding: List[int], dilation: List[int]) -> Tensor:
    """grad_in [N, C, H, W]: each output gradient added at its argmax (one thread per plane)."""
    _check_pool_backward(grad_out, indices, input_hw)
    # The input gradient takes the input's layout, which the forward gave its indices.
    layout = native.output_format(indices)
    grad_out, indices = grad_out.contiguous(), indices.contiguous()
    N, C, OH, OW = grad_out.shape
    H, W = input_hw
    gx = grad_out.new_empty(N, C, H, W)
    if N:
        native.call("max_pool2d_backward", grad_out, _shape_args(N, C, H, W, OH, OW, kernel, stride, padding, dilation),
                    native.ptr(grad_out), native.ptr(indices), native.ptr(gx))
    return native.in_format(gx, layout)


@max_pool2d_backward.register_fake
def _(grad_out, indices, input_hw, kernel, stride, padding, dilation):
    _check_pool_backward(grad_out, indices, input_hw)
    return native.empty(grad_out, (grad_out.shape[0], grad_out.shape[1], *input_hw), native.output_format(indices))


def _pool_setup_context(ctx, inputs, output):
    x, kernel, stride, padding, dilation, _ = inputs
    _, indices = output
    ctx.mark_non_differentiable(indices)
    # Without this, autograd hands backward a zero-filled gradient for the int64 indices:
    # a 16.8 MB allocation + fill per step in the 32x64x64x64 benchmark, a third of our time.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(indices)
    ctx.args = (list(x.shape[2:]), kernel, stride, padding, dilation)


def _pool_backward(ctx, grad_y, grad_indices):
    if grad_y is None:  # only the indices were used downstream: no gradient flows to x
        return None, None, None, None, None, None
    (indices,) = ctx.saved_tensors
    gx = native.run("max_pool2d_backward", grad_y, indices, *ctx.args)
    return gx, None, None, None, None, None


native.register_autograd("max_pool2d", _pool_backward, _pool_setup_context)


# ---- max_unpool2d ------------------------------------------------------------------------

def _check_unpool(x: Tensor, indices: Tensor, output_size: Sequence[int]) -> None:
    native.check_tensor(UNPOOL, "input", x, dims=4)
    native.check_tensor(UNPOOL, "indices", indices, dims=4)
    native.check_float_tensors(UNPOOL, input=x)
    if indices.dtype != torch.int64:
        raise TypeError(f"{UNPOOL}: indices must be int64, got {indices.dtype}")
    if indices.device != x.device:
        raise RuntimeError(f"{UNPOOL}: indices are on {indices.device} but input is on {x.device}")
    if indices.shape != x.shape:
        raise ValueError(f"{UNPOOL}: indices have shape {tuple(indices.shape)} but input has {tuple(x.shape)}")
    _check_pair(UNPOOL, "output_size", output_size)
    native.check_positive(UNPOOL, "output_size", output_size)


@native.custom_op("max_unpool2d")
def max_unpool2d(x: Tensor, indices: Tensor, output_size: List[int]) -> Tensor:
    """y [N, C, *output_size], zero except y[n, c].flat[indices[n, c, i]] = x[n, c].flat[i]."""
    _check_unpool(x, indices, output_size)
    layout = native.output_format(x)  # torch: the input's layout (its gradient is contiguous)
    x, indices = x.contiguous(), indices.contiguous()
    N, C, H, W = x.shape
    OH, OW = output_size
    y = x.new_empty(N, C, OH, OW)
    if N * C:
        bad = native.call("max_unpool2d_forward", x, N * C, H * W, OH * OW, native.ptr(x), native.ptr(indices),
                          native.ptr(y))
        if bad >= 0:
            value = int(indices.reshape(-1)[bad])
            raise ValueError(f"{UNPOOL}: found an invalid max index {value} at position "
                             f"{tuple(int(i) for i in torch.unravel_index(torch.tensor(bad), indices.shape))} "
                             f"(output plane has {OH}x{OW} = {OH * OW} elements)")
    return native.in_format(y, layout)


@max_unpool2d.register_fake
def _(x, indices, output_size):
    _check_unpool(x, indices, output_size)
    return native.empty(x, (x.shape[0], x.shape[1], *output_size), native.output_format(x))


def _check_unpool_backward(grad_out: Tensor, indices: Tensor) -> None:
    op = "max_unpool2d_backward"
    native.check_tensor(op, "grad_out", grad_out, dims=4)
    native.check_tensor(op, "indices", indices, dims=4)
    native.check_float_tensors(op, grad_out=grad_out)
    if indices.dtype != torch.int64 or indices.device != grad_out.device or indices.shape[:2] != grad_out.shape[:2]:
        raise ValueError(f"{op}: indices must be int64 on {grad_out.device} with the planes of grad_out "
                         f"{tuple(grad_out.shape[:2])}, got {indices.dtype} on {indices.device} with shape "
                         f"{tuple(indices.shape)}")


@native.custom_op("max_unpool2d_backward")
def max_unpool2d_backward(grad_out: Tensor, indices: Tensor) -> Tensor:
    """grad_in[n, c].flat[i] = grad_out[n, c].flat[indices[n, c, i]] (a gather)."""
    _check_unpool_backward(grad_out, indices)
    grad_out, indices = grad_out.contiguous(), indices.contiguous()
    N, C, H, W = indices.shape
    OH, OW = grad_out.shape[2:]
    gx = grad_out.new_empty(N, C, H, W)
    if N * C:
        native.call("max_unpool2d_backward", grad_out, N * C, H * W, OH * OW, native.ptr(grad_out),
                    native.ptr(indices), native.ptr(gx))
    return gx


@max_unpool2d_backward.register_fake
def _(grad_out, indices):
    _check_unpool_backward(grad_out, indices)
    return grad_out.new_empty(indices.shape)


def _unpool_setup_context(ctx, inputs, output):
    _, indices, _ = inputs
    ctx.save_for_backward(indices)


def _unpool_backward(ctx, grad_y):
    (indices,) = ctx.saved_tensors
    return native.run("max_unpool2d_backward", grad_y, indices), None, None


native.register_autograd("max_unpool2d", _unpool_backward, _unpool_setup_context)
