"""depthwise_conv2d: groups == in_channels convolution on direct (non-im2col) kernels.

x [N, C, H, W], weight [C * multiplier, 1, kh, kw], output channel k reads input channel
k // multiplier. padding is [top, bottom, left, right]; the kernels take top/left and the
output size, so asymmetric ('same' with an even kernel) padding needs nothing special.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from pycnn._ops import native

OP = "depthwise_conv2d"


def _geometry(x: Tensor, weight: Tensor, stride: List[int], padding: List[int],
              dilation: List[int]) -> Tuple[int, int]:
    """Checks the integer arguments and returns the output size (OH, OW)."""
    if len(stride) != 2 or len(dilation) != 2:
        raise ValueError(f"{OP}: stride and dilation must have 2 elements, got stride={list(stride)}, "
                         f"dilation={list(dilation)}")
    if len(padding) != 4:
        raise ValueError(f"{OP}: padding must have 4 elements (top, bottom, left, right), got {list(padding)}")
    native.check_positive(OP, "stride", stride)
    native.check_positive(OP, "dilation", dilation)
    native.check_non_negative(OP, "padding", padding)
    H, W = x.shape[2], x.shape[3]
    kh, kw = weight.shape[2], weight.shape[3]
    OH = (H + padding[0] + padding[1] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    OW = (W + padding[2] + padding[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if OH < 1 or OW < 1:
        raise ValueError(f"{OP}: output size ({OH}, {OW}) is too small: input {H}x{W}, padding {list(padding)}, "
                         f"kernel {kh}x{kw}, dilation {list(dilation)}, stride {list(stride)}")
    native.check_size(OP, (x.shape[0], weight.shape[0], OH, OW), padding=padding, stride=stride)
    return OH, OW


def _check(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
           dilation: List[int]) -> Tuple[int, int]:
    native.check_tensor(OP, "input", x, dims=4)
    native.check_tensor(OP, "weight", weight, dims=4)
    native.check_tensor(OP, "bias", bias, dims=1, optional=True)
    native.check_float_tensors(OP, input=x, weight=weight, bias=bias)
    C, K = x.shape[1], weight.shape[0]
    if C < 1:
        raise ValueError(f"{OP}: input must have at least one channel, got shape {tuple(x.shape)}")
    if weight.shape[1] != 1 or K == 0 or K % C != 0:
        raise ValueError(f"{OP}: weight must have shape [C * multiplier, 1, kh, kw] with C = {C} input channels, "
                         f"got {tuple(weight.shape)}")
    if weight.shape[2] < 1 or weight.shape[3] < 1:
        raise ValueError(f"{OP}: kernel size must be positive, got weight shape {tuple(weight.shape)}")
    if bias is not None and bias.shape[0] != K:
        raise ValueError(f"{OP}: bias has {bias.shape[0]} elements, weight has {K} output channels")
    return _geometry(x, weight, stride, padding, dilation)


def _shape(x: Tensor, weight: Tensor, OH: int, OW: int, stride, padding, dilation) -> List[int]:
    """Conv2dShape's 16 integers (padding: top/left; bottom/right follow from OH/OW)."""
    N, C, H, W = x.shape
    K, _, kh, kw = weight.shape
    return [N, C, H, W, K, OH, OW, kh, kw, stride[0], stride[1], padding[0], padding[2], dilation[0],
            dilation[1], C]


@native.custom_op("depthwise_conv2d")
def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
                     dilation: List[int]) -> Tensor:
    """[N, C, H, W] * [K, 1, kh, kw] (+ bias[K]) -> [N, K, OH, OW], groups = C."""
    OH, OW = _check(x, weight, bias, stride, padding, dilation)
    layout = native.output_format(x, weight)  # torch's: channels_last if input or weight is
    x, weight = x.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    y = x.new_empty(x.shape[0], weight.shape[0], OH, OW)
    if y.numel():
        native.call("depthwise_conv2d_forward", x, _shape(x, weight, OH, OW, stride, padding, dilation),
                    native.ptr(x), native.ptr(weight), native.ptr(bias), native.ptr(y))
    return native.in_format(y, layout)


@depthwise_conv2d.register_fake
def _(x, weight, bias, stride, padding, dilation):
    OH, OW = _check(x, weight, bias, stride, padding, dilation)
    return native.empty(x, (x.shape[0], weight.shape[0], OH, OW), native.output_format(x, weight))


def _check_backward(grad_out, x, weight, stride, padding, dilation) -> Tuple[int, int]:
    OH, OW = _check(x, weight, None, stride, padding, dilation)
    native.check_tensor("depthwise_conv2d_backward", "grad_out", grad_out, dims=4)
    native.check_float_tensors("depthwise_conv2d_backward", input=x, grad_out=grad_out)
    want = (x.shape[0], weight.shape[0], OH, OW)
    if tuple(grad_out.shape) != want:
        raise ValueError(f"depthwise_conv2d_backward: grad_out has shape {tuple(grad_out.shape)}, expected {want}")
    return OH, OW


@native.custom_op("depthwise_conv2d_backward")
def depthwise_conv2d_backward(grad_out: Tensor, x: Tensor, weight: Tensor, stride: List[int], padding: List[int],
                              dilation: List[int], output_mask: List[bool]) -> List[Tensor]:
    """Gradients (input, weight, bias); an unwanted one comes back as an empty tensor."""
    OH, OW = _check_backward(grad_out, x, weight, stride, padding, dilation)
    layout = native.output_format(x, weight)
    grad_out, x, weight = grad_out.contiguous(), x.contiguous(), weight.contiguous()
    shape = _shape(x, weight, OH, OW, stride, padding, dilation)
    gx = x.new_empty(x.shape) if output_mask[0] else x.new_empty(0)
    gw = weight.new_empty(weight.shape) if output_mask[1] else x.new_empty(0)
    gb = weight.new_empty(weight.shape[0]) if output_mask[2] else x.new_empty(0)
    if output_mask[0] and gx.numel():
        native.call("depthwise_conv2d_backward_input", x, shape, native.ptr(grad_out), native.ptr(weight),
                    native.ptr(gx))
    if output_mask[1] or output_mask[2]:
        # An empty batch gives zero weight/bias gradients (the kernel writes them).
        native.call("depthwise_conv2d_backward_weight", x, shape, native.ptr(x), native.ptr(grad_out),
                    native.ptr(gw), native.ptr(gb))
    return [native.in_format(gx, layout) if output_mask[0] else gx,
            native.in_format(gw, layout) if output_mask[1] else gw, gb]


@depthwise_conv2d_backward.register_fake
def _(grad_out, x, weight, stride, padding, dilation, output_mask):
    _check_backward(grad_out, x, weight, stride, padding, dilation)
    layout = native.output_format(x, weight)
    return [native.empty(x, x.shape, layout) if output_mask[0] else x.new_empty(0),
            native.empty(weight, weight.shape, layout) if output_mask[1] else x.new_empty(0),
            weight.new_empty(weight.shape[0]) if output_mask[2] else x.new_empty(0)]


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    ctx.geometry = (list(stride), list(padding), list(dilation))


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    if not any(mask):
        return None, None, None, None, None, None
    gx, gw, gb = native.run("depthwise_conv2d_backward", grad_out, x, weight, *ctx.geometry, mask)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None, None, None, None)


native.register_autograd("depthwise_conv2d", _backward, _setup_context)
