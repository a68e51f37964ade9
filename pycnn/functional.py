"""Drop-in twins of torch.nn.functional, computed by pycnn's kernels.

Same signatures, defaults, return values, in-place side effects and unbatched-input handling as
their torch namesakes: ``import pycnn.functional as F`` works in existing code. This module only
normalises arguments (ints to pairs, 'same' padding, unbatched inputs); the custom ops in
pycnn._ops check them and run the native kernels.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from pycnn._ops import native
from pycnn._ops.batch_norm import check_eps as _check_batch_norm_eps

__all__ = ["conv2d", "conv_transpose2d", "max_pool2d", "max_unpool2d", "batch_norm", "linear",
           "depthwise_conv2d", "pixel_shuffle", "partial_conv2d"]

IntPair = Union[int, Sequence[int]]


def _pair(op: str, name: str, v) -> Tuple[int, int]:
    if type(v) is tuple and len(v) == 2 and type(v[0]) is int and type(v[1]) is int:
        return v  # what nn modules store: nothing to convert (this runs several times per layer call)
    if isinstance(v, (bool, str)):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    if isinstance(v, int):
        return (v, v)
    try:
        t = tuple(int(i) for i in v)
    except TypeError:
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {v!r}") from None
    if len(t) == 1:
        return (t[0], t[0])
    if len(t) != 2:
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    return t


def _batched(op: str, x: Tensor) -> Tuple[Tensor, bool]:
    """Accepts [C, H, W] (unbatched) or [N, C, H, W]; returns a 4-D tensor and whether to squeeze."""
    native.check_tensor(op, "input", x, dims=(3, 4))
    return (x.unsqueeze(0), True) if x.dim() == 3 else (x, False)


def _conv_padding(op: str, padding, weight: Tensor, stride, dilation) -> List[int]:
    """Padding as [top, bottom, left, right]; 'same' may pad one more at the bottom/right."""
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0, 0, 0]
        if padding != "same":
            raise ValueError(f"{op}: padding must be 'valid', 'same', an int or a pair, got {padding!r}")
        if stride != (1, 1):
            raise ValueError(f"{op}: padding='same' is not supported for strided convolutions (stride={stride})")
        if weight.dim() != 4:
            raise ValueError(f"{op}: weight must be 4-D, got shape {tuple(weight.shape)}")
        pads = []
        for d, k in zip(dilation, weight.shape[2:]):
            total = d * (int(k) - 1)  # int(): under torch.jit.trace a size is a traced value
            pads += [total // 2, total - total // 2]
        return pads
    ph, pw = _pair(op, "padding", padding)
    return [ph, ph, pw, pw]


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntPair = 1,
           padding: Union[IntPair, str] = 0, dilation: IntPair = 1, groups: int = 1) -> Tensor:
    """2-D convolution by im2col + GEMM; routed to the direct depthwise kernel when groups == in_channels."""
    op = "conv2d"
    x, squeeze = _batched(op, input)
    stride, dilation = _pair(op, "stride", stride), _pair(op, "dilation", dilation)
    pad = _conv_padding(op, padding, weight, stride, dilation)
    native.check_tensor(op, "weight", weight, dims=4)
    if groups == x.shape[1] and weight.shape[1] == 1 and groups >= 1:
        y = native.run("depthwise_conv2d", x, weight, bias, list(stride), pad, list(dilation))
    else:
        y = native.run("conv2d", x, weight, bias, list(stride), pad, list(dilation), groups)
    return y.squeeze(0) if squeeze else y


def depthwise_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntPair = 1,
                     padding: Union[IntPair, str] = 0, dilation: IntPair = 1) -> Tensor:
    """Depthwise convolution (groups = in_channels): weight [C * multiplier, 1, kh, kw].

    Equals ``conv2d(input, weight, bias, stride, padding, dilation, groups=input.shape[-3])``.
    """
    op = "depthwise_conv2d"
    x, squeeze = _batched(op, input)
    stride, dilation = _pair(op, "stride", stride), _pair(op, "dilation", dilation)
    pad = _conv_padding(op, padding, weight, stride, dilation)
    y = native.run("depthwise_conv2d", x, weight, bias, list(stride), pad, list(dilation))
    return y.squeeze(0) if squeeze else y


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntPair = 1,
                     padding: IntPair = 0, output_padding: IntPair = 0, groups: int = 1,
                     dilation: IntPair = 1) -> Tensor:
    """Transposed convolution: the input-gradient of conv2d (GEMM + col2im) used as a forward pass."""
    op = "conv_transpose2d"
    x, squeeze = _batched(op, input)
    y = native.run("conv_transpose2d", 
        x, weight, bias, list(_pair(op, "stride", stride)), list(_pair(op, "padding", padding)),
        list(_pair(op, "output_padding", output_padding)), groups, list(_pair(op, "dilation", dilation)))
    return y.squeeze(0) if squeeze else y


def max_pool2d(input: Tensor, kernel_size: IntPair, stride: Optional[IntPair] = None, padding: IntPair = 0,
               dilation: IntPair = 1, ceil_mode: bool = False, return_indices: bool = False):
    """Max pooling that records the argmax (flat index h * W + w in each input plane)."""
    op = "max_pool2d"
    x, squeeze = _batched(op, input)
    kernel = _pair(op, "kernel_size", kernel_size)
    stride = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else _pair(op, "stride", stride)
    y, idx = native.run("max_pool2d", x, list(kernel), list(stride), list(_pair(op, "padding", padding)),
                                        list(_pair(op, "dilation", dilation)), bool(ceil_mode))
    if squeeze:
        y, idx = y.squeeze(0), idx.squeeze(0)
    return (y, idx) if return_indices else y


def _unpool_output_size(op, x: Tensor, kernel, stride, padding, output_size) -> List[int]:
    default = [(x.shape[-2 + i] - 1) * stride[i] - 2 * padding[i] + kernel[i] for i in range(2)]
    if output_size is None:
        return default
    size = [int(s) for s in output_size]
    if len(size) == x.dim():
        size = size[-2:]
    if len(size) != 2:
        raise ValueError(f"{op}: output_size must have 2 or {x.dim()} elements, got {list(output_size)}")
    for i in range(2):
        lo, hi = default[i] - stride[i], default[i] + stride[i]
        if not lo < size[i] < hi:
            raise ValueError(f"{op}: invalid output_size {list(output_size)} (dim {i} must be between "
                             f"{lo + 1} and {hi - 1})")
    return size


def max_unpool2d(input: Tensor, indices: Tensor, kernel_size: IntPair, stride: Optional[IntPair] = None,
                 padding: IntPair = 0, output_size: Optional[Sequence[int]] = None) -> Tensor:
    """Places each input value at its recorded argmax; zeros elsewhere."""
    op = "max_unpool2d"
    x, squeeze = _batched(op, input)
    native.check_tensor(op, "indices", indices, dims=input.dim())
    idx = indices.unsqueeze(0) if squeeze else indices
    kernel = _pair(op, "kernel_size", kernel_size)
    stride = kernel if stride is None else _pair(op, "stride", stride)
    padding = _pair(op, "padding", padding)
    size = _unpool_output_size(op, x, kernel, stride, padding, output_size)
    y = native.run("max_unpool2d", x, idx, size)
    return y.squeeze(0) if squeeze else y


def batch_norm(input: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
               weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, *, residual: Optional[Tensor] = None,
               relu: bool = False) -> Tensor:
    """Batch normalisation over dim 1 of an input of rank >= 2.

    pycnn's extras (keyword-only): ``relu(batch_norm(input) + residual)`` in one kernel, with
    ``residual`` (input's shape) and ``relu`` each optional: a ResNet block's end.

    training=True normalises with the batch statistics and, when running_mean/running_var are
    given, updates them in place with `momentum` (running_var with the unbiased variance).
    training=False normalises with the running statistics. As in torch, momentum must be a
    number (``nn.BatchNorm2d(momentum=None)``'s cumulative average is the module's business),
    eps must be positive when training (non-negative otherwise), and a 1-D input is accepted
    only when it is empty.
    """
    op = "batch_norm"
    native.check_tensor(op, "input", input)
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
        raise TypeError(f"{op}: momentum must be a float, got {momentum!r} (torch.nn.functional.batch_norm "
                        "takes a number too; nn.BatchNorm2d(momentum=None) is the cumulative average)")
    if input.dim() == 1 and input.numel() == 0 and residual is None and not relu:  # torch returns an empty
        _check_batch_norm_eps(op, eps, training)                                     # result (its OpInfo samples this)
        return input.clone()
    if input.dim() < 2:
        raise ValueError(f"{op}: input must have at least 2 dimensions (N, C, ...), got shape {tuple(input.shape)}")
    if training:
        per_channel = input.numel() // max(1, input.shape[1])
        if per_channel == 1:
            raise ValueError(f"{op}: expected more than 1 value per channel when training, got input size "
                             f"{tuple(input.shape)}")
    elif running_mean is None or running_var is None:
        raise ValueError(f"{op}: running_mean and running_var are required when training=False")
    y, _, _ = native.run("batch_norm", input, running_mean, running_var, weight, bias, bool(training),
                         float(momentum), float(eps), residual, bool(relu))
    return y


def linear(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """y = input @ weight^T + bias over the last dimension (any leading dimensions).

    As in torch, bias may be anything that broadcasts to the output's shape (0-d, [1, out], ...)."""
    op = "linear"
    native.check_tensor(op, "input", input)
    if input.dim() == 0:
        raise ValueError(f"{op}: input must have at least 1 dimension, got a scalar")
    native.check_tensor(op, "weight", weight, dims=(1, 2))
    w = weight if weight.dim() == 2 else weight.unsqueeze(0)
    fused = bias is None or (isinstance(bias, Tensor) and bias.dim() == 1 and bias.shape[0] == w.shape[0])
    if input.dim() == 2 and weight.dim() == 2 and fused:  # the common case, without the reshapes
        return native.run("linear", input, w, bias)
    lead = input.shape[:-1]
    out_shape = (*lead, w.shape[0]) if weight.dim() == 2 else tuple(lead)
    extra = None  # a bias that is not one value per output feature is added after the GEMM
    if not fused:
        native.check_tensor(op, "bias", bias)
        try:
            broadcasts = torch.broadcast_shapes(bias.shape, out_shape) == torch.Size(out_shape)
        except RuntimeError:
            broadcasts = False
        if not broadcasts:
            raise ValueError(f"{op}: bias of shape {tuple(bias.shape)} does not broadcast to the output shape "
                             f"{tuple(out_shape)}")
        if bias.numel() == 1 or (bias.shape[-1] == w.shape[0] and bias.numel() == w.shape[0]):
            bias = bias.reshape(-1).expand(w.shape[0])  # [1, out], 0-d, ...: still one value per feature
        else:
            bias, extra = None, bias
    # reshape(-1, K) is ambiguous when K == 0 (no input features): name the row count.
    y = native.run("linear", input.reshape(math.prod(lead), input.shape[-1]), w, bias)
    y = y.reshape(out_shape)
    return y if extra is None else y + extra


def pixel_shuffle(input: Tensor, upscale_factor: int) -> Tensor:
    """[*, C * r^2, H, W] -> [*, C, H * r, W * r]: output pixel (y*r + i, x*r + j) of channel c is
    input channel c*r^2 + i*r + j at (y, x) (torch's order). The sub-pixel convolution's last step
    (ESPCN): pure data movement, a reshape and a permute, so no kernel of its own."""
    r = upscale_factor
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"pixel_shuffle: upscale_factor must be a positive int, got {r!r}")
    if input.dim() < 3:
        raise ValueError(f"pixel_shuffle: input must have at least 3 dimensions [*, C, H, W], got {tuple(input.shape)}")
    *batch, c, h, w = input.shape
    if c % (r * r):
        raise ValueError(f"pixel_shuffle: {c} channels are not divisible by upscale_factor**2 = {r * r}")
    x = input.reshape(-1, c // (r * r), r, r, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(*batch, c // (r * r), h * r, w * r)


def partial_conv2d(input: Tensor, mask: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: IntPair = 1,
                   padding: IntPair = 0, dilation: IntPair = 1, return_mask: bool = False):
    """Partial convolution (Liu et al. 2018, inpainting): a convolution over the valid pixels only.

    ``mask`` is [N, 1, H, W] (shared by the channels) or [N, C, H, W], values in [0, 1] (1 = valid).
    ``out = conv2d(input * mask, weight) * sum(1) / sum(mask) + bias`` where the window's mask sum
    is > 0, else 0 (sums over the window and the mask's channels). With ``return_mask=True`` also
    returns the updated mask, 1 where the window saw any valid pixel: [N, 1, OH, OW] for a
    single-channel mask, [N, K, OH, OW] (the same plane per channel) for a per-channel one, so it
    feeds the next partial convolution either way. The mask gets no gradient.
    """
    op = "partial_conv2d"
    x, squeeze = _batched(op, input)
    native.check_tensor(op, "mask", mask, dims=(3, 4))
    m = mask.unsqueeze(0) if mask.dim() == 3 else mask
    stride, dilation = _pair(op, "stride", stride), _pair(op, "dilation", dilation)
    pad = _conv_padding(op, padding, weight, stride, dilation)
    y, mask_out = native.run("partial_conv2d", x, m, weight, bias, list(stride), pad, list(dilation))
    if not return_mask:
        return y.squeeze(0) if squeeze else y
    if m.shape[1] > 1 and m.shape[1] == x.shape[1]:
        mask_out = mask_out.expand(-1, y.shape[1], -1, -1)
    return (y.squeeze(0), mask_out.squeeze(0)) if squeeze else (y, mask_out)
