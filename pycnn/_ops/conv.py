"""conv2d (im2col + GEMM) and conv_transpose2d (GEMM + col2im) as torch custom ops.

Follows pycnn/_ops/linear.py: custom op (checks, contiguous inputs, torch-allocated outputs,
native kernel) + register_fake + a backward custom op + register_autograd.

conv_transpose2d is conv2d's input gradient used as a forward pass, so both ops describe their
work with one conv2d shape (the 16 integers of Conv2dShape). For a transposed conv the "conv
input" is the transposed conv's output and the "conv output" its input:
    transposed forward      = conv2d_backward_input
    transposed input grad   = conv2d_forward (of grad_out, no bias)
    transposed weight grad  = conv2d_backward_weight with x = grad_out and gy = input
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from pycnn._ops import native

CONV = "conv2d"
CONV_T = "conv_transpose2d"


def _check_list(op: str, name: str, v, n: int) -> None:
    if not isinstance(v, (list, tuple)) or len(v) != n or not all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        raise ValueError(f"{op}: {name} must be a list of {n} ints, got {v!r}")


def _check_groups(op: str, groups) -> None:
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"{op}: groups must be a positive int, got {groups!r}")


def _check_common(op: str, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    native.check_tensor(op, "input", x, dims=4)
    native.check_tensor(op, "weight", weight, dims=4)
    native.check_tensor(op, "bias", bias, dims=1, optional=True)
    native.check_float_tensors(op, input=x, weight=weight, bias=bias)


def _conv_out_size(size: int, k: int, s: int, pad_before: int, pad_after: int, d: int) -> int:
    return (size + pad_before + pad_after - d * (k - 1) - 1) // s + 1


# ---- conv2d -------------------------------------------------------------------------------

# Arguments already checked -> their Conv2dShape. A layer calls with the same sizes every step,
# and the checks below cost ~7 us a call (twice per forward + backward): a dict lookup skips them.
_checked_shapes: dict = {}


def _conv_shape(x: Tensor, weight: Tensor, stride: List[int], padding: List[int], dilation: List[int],
                groups: int, op: str = CONV) -> Tuple[int, ...]:
    """Checks the arguments and returns the native Conv2dShape (16 ints); errors name `op` (conv2d
    and the ops built on its kernels, such as partial_conv2d)."""
    try:
        key = (op, x.shape, weight.shape, tuple(stride), tuple(padding), tuple(dilation), groups)
        shape = _checked_shapes.get(key)
    except TypeError:  # a malformed argument: the checks below name it
        key = shape = None
    if shape is not None:
        return shape
    shape = tuple(_check_conv_shape(x, weight, stride, padding, dilation, groups, op))
    if key is not None and all(type(v) is int for v in shape):  # not symbolic sizes (torch.compile)
        if len(_checked_shapes) >= 4096:
            _checked_shapes.clear()
        _checked_shapes[key] = shape
    return shape


def _check_conv_shape(x: Tensor, weight: Tensor, stride: List[int], padding: List[int], dilation: List[int],
                      groups: int, op: str) -> List[int]:
    _check_list(op, "stride", stride, 2)
    _check_list(op, "padding", padding, 4)
    _check_list(op, "dilation", dilation, 2)
    _check_groups(op, groups)
    native.check_positive(op, "stride", stride)
    native.check_positive(op, "dilation", dilation)
    native.check_non_negative(op, "padding", padding)
    N, C, H, W = x.shape
    K, Cg, kh, kw = weight.shape
    if C % groups != 0:
        raise ValueError(f"{op}: input channels {C} are not divisible by groups={groups}")
    if K % groups != 0:
        raise ValueError(f"{op}: output channels {K} (weight shape {tuple(weight.shape)}) are not divisible "
                         f"by groups={groups}")
    if Cg * groups != C:
        raise ValueError(f"{op}: weight has {Cg} input channels per group, input has {C} channels "
                         f"(groups={groups}; expected weight.shape[1] == {C // groups})")
    if kh < 1 or kw < 1:
        raise ValueError(f"{op}: kernel size must be positive, got weight shape {tuple(weight.shape)}")
    top, bottom, left, right = padding
    OH = _conv_out_size(H, kh, stride[0], top, bottom, dilation[0])
    OW = _conv_out_size(W, kw, stride[1], left, right, dilation[1])
    if OH < 1 or OW < 1:
        raise ValueError(f"{op}: kernel {kh}x{kw} (dilation {tuple(dilation)}) is larger than the padded input "
                         f"{H + top + bottom}x{W + left + right}; output size would be {OH}x{OW}")
    native.check_size(op, (N, K, OH, OW), padding=padding, stride=stride)
    native.check_size(op, (C * kh * kw, OH, OW), padding=padding, stride=stride)  # one sample's columns
    return [N, C, H, W, K, OH, OW, kh, kw, stride[0], stride[1], top, left, dilation[0], dilation[1], groups]


def _check_bias(op: str, bias: Optional[Tensor], channels: int) -> None:
    if bias is not None and bias.shape[0] != channels:
        raise ValueError(f"{op}: bias has {bias.shape[0]} elements, expected {channels} (output channels)")


def _check_grad_out(op: str, grad_out: Tensor, x: Tensor, expected) -> None:
    native.check_tensor(op, "grad_out", grad_out)
    native.check_float_tensors(op, input=x, grad_out=grad_out)
    if tuple(grad_out.shape) != tuple(expected):
        raise ValueError(f"{op}: grad_out has shape {tuple(grad_out.shape)}, the output shape is {tuple(expected)}")


def _grads_in_format(grads: List[Tensor], output_mask: List[bool], layout) -> List[Tensor]:
    """(input, weight, bias) gradients: the first two in the layout of the forward's output, as
    torch gives them (channels_last when the input or the weight was); empty placeholders and
    the bias gradient as they are."""
    gx, gw, gb = grads
    return [native.in_format(gx, layout) if output_mask[0] else gx,
            native.in_format(gw, layout) if output_mask[1] else gw, gb]


def _fake_grads(x: Tensor, weight: Tensor, bias_size, output_mask: List[bool]) -> List[Tensor]:
    layout = native.output_format(x, weight)
    return [native.empty(x, x.shape, layout) if output_mask[0] else x.new_empty(0),
            native.empty(weight, weight.shape, layout) if output_mask[1] else x.new_empty(0),
            weight.new_empty(bias_size) if output_mask[2] else x.new_empty(0)]


def _is_pointwise(shape: List[int]) -> bool:
    N, C, H, W, K, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw, g = shape
    return kh == 1 and kw == 1 and sh == 1 and sw == 1 and ph == 0 and pw == 0 and OH == H and OW == W


def _workspace(like: Tensor, shape: List[int], one_sample: bool = False) -> Tensor:
    """Column buffer for whole samples: C*kh*kw*OH*OW elements each (none for pointwise convs).

    The forward and input-gradient kernels give each thread one sample's slot, so they need at
    most one sample per thread (a fresh 64 MB buffer per call would cost more in page faults
    than the convolution); the weight gradient walks the batch one sample at a time.
    """
    N, C, H, W, K, OH, OW, kh, kw = shape[:9]
    per_sample = 0 if _is_pointwise(shape) else C * kh * kw * OH * OW
    samples = 1 if one_sample else native._C.get_num_threads()
    return native.workspace(like, per_sample, min(N, samples))


@native.custom_op("conv2d")
def conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
           dilation: List[int], groups: int) -> Tensor:
    """x [N, C, H, W] * weight [K, C/groups, kh, kw] (+ bias [K]) -> [N, K, OH, OW].

    padding is [top, bottom, left, right].
    """
    _check_common(CONV, x, weight, bias)
    shape = _conv_shape(x, weight, stride, padding, dilation, groups)
    _check_bias(CONV, bias, weight.shape[0])
    layout = native.output_format(x, weight)  # torch's: channels_last if input or weight is
    x, weight = x.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    y = x.new_empty(shape[0], shape[4], shape[5], shape[6])
    if y.numel():
        ws = _workspace(x, shape)
        native.call("conv2d_forward", x, shape, native.ptr(x), native.ptr(weight), native.ptr(bias),
                    native.ptr(y), native.ptr(ws), ws.numel())
    return native.in_format(y, layout)


@conv2d.register_fake
def _(x, weight, bias, stride, padding, dilation, groups):
    _check_common(CONV, x, weight, bias)
    shape = _conv_shape(x, weight, stride, padding, dilation, groups)
    _check_bias(CONV, bias, weight.shape[0])
    return native.empty(x, (shape[0], shape[4], shape[5], shape[6]), native.output_format(x, weight))


@native.custom_op("conv2d_backward")
def conv2d_backward(grad_out: Tensor, x: Tensor, weight: Tensor, stride: List[int], padding: List[int],
                    dilation: List[int], groups: int, output_mask: List[bool]) -> List[Tensor]:
    """Gradients (input, weight, bias); an unwanted one comes back as an empty tensor."""
    _check_common(CONV, x, weight, None)
    shape = _conv_shape(x, weight, stride, padding, dilation, groups)
    _check_grad_out(CONV, grad_out, x, (shape[0], shape[4], shape[5], shape[6]))
    layout = native.output_format(x, weight)
    grad_out, x, weight = grad_out.contiguous(), x.contiguous(), weight.contiguous()
    K = shape[4]
    gx = x.new_empty(x.shape) if output_mask[0] else x.new_empty(0)
    gw = weight.new_empty(weight.shape) if output_mask[1] else x.new_empty(0)
    gb = weight.new_empty(K) if output_mask[2] else x.new_empty(0)
    if grad_out.numel() == 0:  # empty batch or no output channels: the sums are empty
        return _grads_in_format([g.zero_() for g in (gx, gw, gb)], output_mask, layout)
    if output_mask[0] and gx.numel():
        ws = _workspace(x, shape)
        native.call("conv2d_backward_input", x, shape, native.ptr(grad_out), native.ptr(weight), native.ptr(gx),
                    native.ptr(ws), ws.numel())
    if (output_mask[1] and gw.numel()) or output_mask[2]:
        ws = _workspace(x, shape, one_sample=True) if output_mask[1] else x.new_empty(0)
        native.call("conv2d_backward_weight", x, shape, native.ptr(x), native.ptr(grad_out),
                    native.ptr(gw) if output_mask[1] else 0, native.ptr(gb) if output_mask[2] else 0,
                    native.ptr(ws), ws.numel())
    return _grads_in_format([gx, gw, gb], output_mask, layout)


@conv2d_backward.register_fake
def _(grad_out, x, weight, stride, padding, dilation, groups, output_mask):
    _check_common(CONV, x, weight, None)
    shape = _conv_shape(x, weight, stride, padding, dilation, groups)
    _check_grad_out(CONV, grad_out, x, (shape[0], shape[4], shape[5], shape[6]))
    return _fake_grads(x, weight, weight.shape[0], output_mask)


def _conv_setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, groups = inputs
    ctx.save_for_backward(x, weight)
    ctx.args = (stride, padding, dilation, groups)
    ctx.has_bias = bias is not None


def _conv_backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    gx, gw, gb = native.run("conv2d_backward", grad_out, x, weight, *ctx.args, mask)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None, None, None, None, None)


native.register_autograd("conv2d", _conv_backward, _conv_setup_context)


# ---- conv_transpose2d ---------------------------------------------------------------------

def _transpose_shape(x: Tensor, weight: Tensor, stride: List[int], padding: List[int], output_padding: List[int],
                     groups: int, dilation: List[int]) -> List[int]:
    """Checks the arguments; returns the Conv2dShape of the conv whose input gradient this is."""
    _check_list(CONV_T, "stride", stride, 2)
    _check_list(CONV_T, "padding", padding, 2)
    _check_list(CONV_T, "output_padding", output_padding, 2)
    _check_list(CONV_T, "dilation", dilation, 2)
    _check_groups(CONV_T, groups)
    native.check_positive(CONV_T, "stride", stride)
    native.check_positive(CONV_T, "dilation", dilation)
    native.check_non_negative(CONV_T, "padding", padding)
    native.check_non_negative(CONV_T, "output_padding", output_padding)
    N, Cin, H, W = x.shape
    wc, Cout_g, kh, kw = weight.shape
    if wc != Cin:
        raise ValueError(f"{CONV_T}: weight has {wc} input channels (weight.shape[0]), input has {Cin} "
                         f"(weight shape {tuple(weight.shape)})")
    if Cin % groups != 0:
        raise ValueError(f"{CONV_T}: input channels {Cin} are not divisible by groups={groups}")
    if kh < 1 or kw < 1:
        raise ValueError(f"{CONV_T}: kernel size must be positive, got weight shape {tuple(weight.shape)}")
    for i in range(2):
        if output_padding[i] >= stride[i] and output_padding[i] >= dilation[i]:
            raise ValueError(f"{CONV_T}: output_padding {tuple(output_padding)} must be smaller than either stride "
                             f"{tuple(stride)} or dilation {tuple(dilation)}")
    Cout = Cout_g * groups
    OH = (H - 1) * stride[0] - 2 * padding[0] + dilation[0] * (kh - 1) + output_padding[0] + 1
    OW = (W - 1) * stride[1] - 2 * padding[1] + dilation[1] * (kw - 1) + output_padding[1] + 1
    if OH < 1 or OW < 1:
        raise ValueError(f"{CONV_T}: output size would be {OH}x{OW} (input {H}x{W}, kernel {kh}x{kw}, "
                         f"stride {tuple(stride)}, padding {tuple(padding)}); it must be positive")
    native.check_size(CONV_T, (N, Cout, OH, OW), stride=stride, dilation=dilation, output_padding=output_padding)
    native.check_size(CONV_T, (Cout * kh * kw, H, W), stride=stride)  # one sample's columns
    # The conv from the [N, Cout, OH, OW] output back to [N, Cin, H, W].
    return [N, Cout, OH, OW, Cin, H, W, kh, kw, stride[0], stride[1], padding[0], padding[1],
            dilation[0], dilation[1], groups]


@native.custom_op("conv_transpose2d")
def conv_transpose2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
                     output_padding: List[int], groups: int, dilation: List[int]) -> Tensor:
    """x [N, Cin, H, W], weight [Cin, Cout/groups, kh, kw] (+ bias [Cout]) -> [N, Cout, OH, OW]."""
    _check_common(CONV_T, x, weight, bias)
    shape = _transpose_shape(x, weight, stride, padding, output_padding, groups, dilation)
    _check_bias(CONV_T, bias, shape[1])
    layout = native.output_format(x, weight)
    x, weight = x.contiguous(), weight.contiguous()
    y = x.new_empty(shape[0], shape[1], shape[2], shape[3])
    if y.numel() == 0:
        return native.in_format(y, layout)
    if x.shape[1] == 0:  # no input channels: only the bias
        y.zero_()
    else:
        ws = _workspace(x, shape)
        native.call("conv2d_backward_input", x, shape, native.ptr(x), native.ptr(weight), native.ptr(y),
                    native.ptr(ws), ws.numel())
    if bias is not None:
        y.add_(bias.view(1, -1, 1, 1))  # per-channel elementwise glue
    return native.in_format(y, layout)


@conv_transpose2d.register_fake
def _(x, weight, bias, stride, padding, output_padding, groups, dilation):
    _check_common(CONV_T, x, weight, bias)
    shape = _transpose_shape(x, weight, stride, padding, output_padding, groups, dilation)
    _check_bias(CONV_T, bias, shape[1])
    return native.empty(x, shape[:4], native.output_format(x, weight))


@native.custom_op("conv_transpose2d_backward")
def conv_transpose2d_backward(grad_out: Tensor, x: Tensor, weight: Tensor, stride: List[int], padding: List[int],
                              output_padding: List[int], groups: int, dilation: List[int],
                              output_mask: List[bool]) -> List[Tensor]:
    """Gradients (input, weight, bias); an unwanted one comes back as an empty tensor."""
    _check_common(CONV_T, x, weight, None)
    shape = _transpose_shape(x, weight, stride, padding, output_padding, groups, dilation)
    _check_grad_out(CONV_T, grad_out, x, shape[:4])
    layout = native.output_format(x, weight)
    grad_out, x, weight = grad_out.contiguous(), x.contiguous(), weight.contiguous()
    N, Cout, OH, OW = shape[:4]
    gx = x.new_empty(x.shape) if output_mask[0] else x.new_empty(0)
    gw = weight.new_empty(weight.shape) if output_mask[1] else x.new_empty(0)
    gb = weight.new_empty(Cout) if output_mask[2] else x.new_empty(0)
    if grad_out.numel() == 0:  # empty batch: the sums are empty
        return _grads_in_format([g.zero_() for g in (gx, gw, gb)], output_mask, layout)
    if output_mask[0] and gx.numel():
        ws = _workspace(grad_out, shape)
        native.call("conv2d_forward", x, shape, native.ptr(grad_out), native.ptr(weight), 0, native.ptr(gx),
                    native.ptr(ws), ws.numel())
    if output_mask[1] and gw.numel():
        ws = _workspace(grad_out, shape, one_sample=True)
        native.call("conv2d_backward_weight", x, shape, native.ptr(grad_out), native.ptr(x), native.ptr(gw), 0,
                    native.ptr(ws), ws.numel())
    if output_mask[2]:
        native.call("channel_sum", x, N, Cout, OH * OW, native.ptr(grad_out), native.ptr(gb))
    return _grads_in_format([gx, gw, gb], output_mask, layout)


@conv_transpose2d_backward.register_fake
def _(grad_out, x, weight, stride, padding, output_padding, groups, dilation, output_mask):
    _check_common(CONV_T, x, weight, None)
    shape = _transpose_shape(x, weight, stride, padding, output_padding, groups, dilation)
    _check_grad_out(CONV_T, grad_out, x, shape[:4])
    return _fake_grads(x, weight, shape[1], output_mask)


def _transpose_setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, output_padding, groups, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.args = (stride, padding, output_padding, groups, dilation)
    ctx.has_bias = bias is not None


def _transpose_backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    gx, gw, gb = native.run("conv_transpose2d_backward", grad_out, x, weight, *ctx.args, mask)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None,
            None, None, None, None, None)


native.register_autograd("conv_transpose2d", _transpose_backward, _transpose_setup_context)
