"""partial_conv2d (Liu et al. 2018) as a torch custom op, following pycnn/_ops/conv.py.

    y = conv2d(x * mask, weight) * window_size / sum(mask over the window) + bias   where that sum > 0
    y = 0                                                                          elsewhere
    mask_out = 1 where the window saw any mask value > 0

The mask is [N, 1, H, W] (one mask for every channel) or [N, C, H, W] (one per channel); its
values must lie in [0, 1]. It gets no gradient. The native kernels (csrc/cpu/partial_conv.cpp,
csrc/cuda/partial_conv.cu) run the convolution of x * mask through conv2d's own im2col + GEMM
and the mask's window sums as a box sum.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from torch import Tensor

from pycnn._ops import native
from pycnn._ops.conv import _check_bias, _conv_shape, _workspace

OP = "partial_conv2d"


def _check_common(x: Tensor, mask: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    native.check_tensor(OP, "input", x, dims=4)
    native.check_tensor(OP, "mask", mask, dims=4)
    native.check_tensor(OP, "weight", weight, dims=4)
    native.check_tensor(OP, "bias", bias, dims=1, optional=True)
    native.check_float_tensors(OP, input=x, mask=mask, weight=weight, bias=bias)
    N, C, H, W = x.shape
    if mask.shape[0] != N or mask.shape[1] not in (1, C) or tuple(mask.shape[2:]) != (H, W):
        raise ValueError(f"{OP}: mask has shape {tuple(mask.shape)}; for input {tuple(x.shape)} it must be "
                         f"[{N}, 1, {H}, {W}] or [{N}, {C}, {H}, {W}]")


def _shape(x: Tensor, weight: Tensor, stride: List[int], padding: List[int], dilation: List[int]) -> List[int]:
    """Checks the arguments and returns the native Conv2dShape (16 ints, groups 1): conv2d's checks."""
    return _conv_shape(x, weight, stride, padding, dilation, 1, op=OP)


def _raise_bad_mask(mask: Tensor, position: int) -> None:
    idx = []
    for size in reversed(mask.shape):
        idx.append(position % size)
        position //= size
    idx = tuple(reversed(idx))
    raise ValueError(f"{OP}: mask values must lie in [0, 1]; mask{list(idx)} = {mask[idx].item()}")


@native.custom_op(OP)
def partial_conv2d(x: Tensor, mask: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                   padding: List[int], dilation: List[int]) -> Tuple[Tensor, Tensor]:
    """x [N, C, H, W], mask [N, 1 or C, H, W], weight [K, C, kh, kw] (+ bias [K]) ->
    (y [N, K, OH, OW], mask_out [N, 1, OH, OW]). padding is [top, bottom, left, right]."""
    _check_common(x, mask, weight, bias)
    shape = _shape(x, weight, stride, padding, dilation)
    _check_bias(OP, bias, weight.shape[0])
    x, mask, weight = x.contiguous(), mask.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    N, K, OH, OW = shape[0], shape[4], shape[5], shape[6]
    y = x.new_empty(N, K, OH, OW)
    mask_out = x.new_empty(N, 1, OH, OW)
    if mask_out.numel() == 0:
        return y, mask_out
    xm = x.new_empty(x.shape)
    ws = _workspace(x, shape)
    bad = native.call("partial_conv2d_forward", x, shape, mask.shape[1], native.ptr(x), native.ptr(mask),
                      native.ptr(weight), native.ptr(bias), native.ptr(y), native.ptr(mask_out), native.ptr(xm),
                      native.ptr(ws), ws.numel())
    if bad >= 0:
        _raise_bad_mask(mask, bad)
    return y, mask_out


@partial_conv2d.register_fake
def _(x, mask, weight, bias, stride, padding, dilation):
    _check_common(x, mask, weight, bias)
    shape = _shape(x, weight, stride, padding, dilation)
    _check_bias(OP, bias, weight.shape[0])
    N, K, OH, OW = shape[0], shape[4], shape[5], shape[6]
    return x.new_empty(N, K, OH, OW), x.new_empty(N, 1, OH, OW)


@native.custom_op("partial_conv2d_backward")
def partial_conv2d_backward(grad_out: Tensor, x: Tensor, mask: Tensor, weight: Tensor, stride: List[int],
                            padding: List[int], dilation: List[int], output_mask: List[bool]) -> List[Tensor]:
    """Gradients (input, weight, bias); an unwanted one comes back as an empty tensor."""
    _check_common(x, mask, weight, None)
    shape = _shape(x, weight, stride, padding, dilation)
    N, K, OH, OW = shape[0], shape[4], shape[5], shape[6]
    native.check_tensor(OP, "grad_out", grad_out)
    native.check_float_tensors(OP, input=x, grad_out=grad_out)
    if tuple(grad_out.shape) != (N, K, OH, OW):
        raise ValueError(f"{OP}: grad_out has shape {tuple(grad_out.shape)}, the output shape is {(N, K, OH, OW)}")
    grad_out, x, mask, weight = grad_out.contiguous(), x.contiguous(), mask.contiguous(), weight.contiguous()
    gx = x.new_empty(x.shape) if output_mask[0] else x.new_empty(0)
    gw = weight.new_empty(weight.shape) if output_mask[1] else x.new_empty(0)
    gb = weight.new_empty(K) if output_mask[2] else x.new_empty(0)
    if grad_out.numel() == 0 or x.numel() == 0:  # empty batch or no channels: the sums are empty
        return [g.zero_() for g in (gx, gw, gb)]
    xm = x.new_empty(x.shape) if output_mask[1] else x.new_empty(0)
    gys = x.new_empty(grad_out.shape)
    ratio = x.new_empty(N, OH, OW)
    ws = _workspace(x, shape) if output_mask[0] or output_mask[1] else x.new_empty(0)
    native.call("partial_conv2d_backward", x, shape, mask.shape[1], native.ptr(x), native.ptr(mask),
                native.ptr(weight), native.ptr(grad_out), native.ptr(gx) if output_mask[0] else 0,
                native.ptr(gw) if output_mask[1] else 0, native.ptr(gb) if output_mask[2] else 0,
                native.ptr(xm), native.ptr(gys), native.ptr(ratio), native.ptr(ws), ws.numel())
    return [gx, gw, gb]


@partial_conv2d_backward.register_fake
def _(grad_out, x, mask, weight, stride, padding, dilation, output_mask):
    _check_common(x, mask, weight, None)
    _shape(x, weight, stride, padding, dilation)
    K = weight.shape[0]
    return [x.new_empty(x.shape) if output_mask[0] else x.new_empty(0),
            weight.new_empty(weight.shape) if output_mask[1] else x.new_empty(0),
            weight.new_empty(K) if output_mask[2] else x.new_empty(0)]


def _setup_context(ctx, inputs, output):
    x, mask, weight, bias, stride, padding, dilation = inputs
    ctx.save_for_backward(x, mask, weight)
    ctx.args = (stride, padding, dilation)
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_out, grad_mask_out):
    x, mask, weight = ctx.saved_tensors
    want = [ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.has_bias and ctx.needs_input_grad[3]]
    gx, gw, gb = native.run("partial_conv2d_backward", grad_out, x, mask, weight, *ctx.args, want)
    return (gx if want[0] else None, None, gw if want[1] else None, gb if want[2] else None, None, None, None)


native.register_autograd(OP, _backward, _setup_context)
