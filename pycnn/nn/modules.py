"""Layers computed by pycnn's kernels, twins of their torch.nn namesakes.

Each subclasses the torch.nn layer of the same name and only replaces ``forward``: constructor
arguments, parameter and buffer names, initialisation and ``state_dict`` layout are torch's by
construction, so weights load both ways and ``convert`` can swap a layer's class in place.
The functional ops are looked up on ``pycnn.functional`` at call time (``PF.conv2d``), never bound
at import, so the layers follow whatever that module provides.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.modules.module as _module
from torch import Tensor, nn

import pycnn.functional as PF
from pycnn._ops import native

__all__ = ["Conv2d", "ConvTranspose2d", "MaxPool2d", "MaxUnpool2d", "BatchNorm2d", "Linear",
           "DepthwiseConv2d", "SeparableConv2d", "GlobalAvgPool2d", "PixelShuffle", "PartialConv2d",
           "Sequential", "batch_norm_add_relu"]


class Conv2d(nn.Conv2d):
    """torch.nn.Conv2d on pycnn's im2col + GEMM (or direct depthwise) kernels."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if self.padding_mode != "zeros":
            # reflect/replicate/circular padding is data movement, not convolution: torch pads,
            # our kernel convolves with zero extra padding (torch.nn.Conv2d does the same).
            padded = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return PF.conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups)
        return PF.conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, input: Tensor) -> Tensor:
        return self._conv_forward(input, self.weight, self.bias)


class ConvTranspose2d(nn.ConvTranspose2d):
    """torch.nn.ConvTranspose2d (including ``forward(input, output_size)``) on pycnn's kernels."""

    def forward(self, input: Tensor, output_size: Optional[Sequence[int]] = None) -> Tensor:
        if self.padding_mode != "zeros":
            raise ValueError(f"ConvTranspose2d: only padding_mode='zeros' is supported, got {self.padding_mode!r}")
        # torch's own helper turns a requested output size into output_padding (and checks it).
        output_padding = self._output_padding(input, output_size, list(self.stride), list(self.padding),
                                              list(self.kernel_size), 2, list(self.dilation))
        return PF.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                  self.groups, self.dilation)


class MaxPool2d(nn.MaxPool2d):
    """torch.nn.MaxPool2d (``return_indices`` too) on pycnn's pooling kernel."""

    def forward(self, input: Tensor):
        return PF.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class MaxUnpool2d(nn.MaxUnpool2d):
    """torch.nn.MaxUnpool2d on pycnn's unpooling kernel."""

    def forward(self, input: Tensor, indices: Tensor, output_size: Optional[Sequence[int]] = None) -> Tensor:
        return PF.max_unpool2d(input, indices, self.kernel_size, self.stride, self.padding, output_size)


class BatchNorm2d(nn.BatchNorm2d):
    """torch.nn.BatchNorm2d on pycnn's kernels, with torch's running-statistics semantics.

    momentum=None means a cumulative average (factor 1 / num_batches_tracked);
    track_running_stats=False normalises with batch statistics in eval mode too.
    """

    def forward(self, input: Tensor) -> Tensor:
        return self.normalize(input)

    def normalize(self, input: Tensor, residual: Optional[Tensor] = None, relu: bool = False) -> Tensor:
        """forward's computation, optionally followed by ``+ residual`` and ReLU in the same kernel
        (no hooks run: see ``batch_norm_add_relu``, which calls this only when none are set)."""
        self._check_input_dim(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        # Running stats are passed (and updated) only while they are being tracked.
        keep = not self.training or self.track_running_stats
        return PF.batch_norm(input, self.running_mean if keep else None, self.running_var if keep else None,
                            self.weight, self.bias, use_batch_stats, factor, self.eps, residual=residual, relu=relu)


_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")
_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hooked(*modules) -> bool:
    return (any(getattr(_module, name, None) for name in _GLOBAL_HOOKS)
            or any(getattr(mod, name, None) for mod in modules for name in _MODULE_HOOKS))


def batch_norm_add_relu(bn: nn.Module, input: Tensor, residual: Optional[Tensor] = None,
                        relu: Optional[nn.Module] = None) -> Tensor:
    """``relu(bn(input) + residual)``, residual and relu optional: the end of a ResNet block.

    One pycnn kernel pass (``BatchNorm2d.normalize``) when nothing could tell it from the separate
    layers: ``bn`` is pycnn's BatchNorm2d and ``relu`` an ``nn.ReLU``, none of them has a hook (nor
    is a global module hook set), the shapes and dtypes match, and the eager fast path applies (no
    tracing, torch.compile, autocast, profiler, or torch-function mode such as the viz tools' ReLU
    override). Otherwise the layers run one by one, so hooks, to_torch copies, exports and
    guided backprop see every step. Same numbers either way (up to the rounding of the add)."""
    if (type(bn) is BatchNorm2d and (relu is None or type(relu) is nn.ReLU) and not _hooked(bn, relu)
            and (residual is None or (residual.shape == input.shape and residual.dtype == input.dtype))
            and native.fast_path_applies((input, residual))):
        return bn.normalize(input, residual=residual, relu=relu is not None)
    y = bn(input)
    if residual is not None:
        y = y + residual
    return relu(y) if relu is not None else y


class Sequential(nn.Sequential):
    """torch.nn.Sequential that runs a BatchNorm2d followed by an nn.ReLU as one pycnn kernel.

    The stem of a ResNet (and many CNNs) is ``Conv2d, BatchNorm2d, ReLU``: as separate layers the
    ReLU reads and writes the whole activation once more forward and once more backward
    (threshold_backward). Each pycnn BatchNorm2d directly followed by an nn.ReLU goes through
    ``batch_norm_add_relu``, which fuses them only when nothing could tell (no hooks, eager
    fast path) and otherwise calls both layers as before. Same children, same state_dict keys and
    same numbers as torch.nn.Sequential; ``to_torch`` turns it back into one."""

    def forward(self, input):
        layers = list(self._modules.values())
        i = 0
        while i < len(layers):
            layer = layers[i]
            if type(layer) is BatchNorm2d and i + 1 < len(layers) and type(layers[i + 1]) is nn.ReLU:
                input = batch_norm_add_relu(layer, input, relu=layers[i + 1])
                i += 2
            else:
                input = layer(input)
                i += 1
        return input


class Linear(nn.Linear):
    """torch.nn.Linear on pycnn's GEMM."""

    def forward(self, input: Tensor) -> Tensor:
        return PF.linear(input, self.weight, self.bias)


class DepthwiseConv2d(nn.Conv2d):
    """Depthwise convolution: each input channel convolved with its own ``depth_multiplier`` filters.

    Same parameters and state_dict as ``torch.nn.Conv2d(in_channels, in_channels * depth_multiplier,
    kernel_size, ..., groups=in_channels)``; computed by pycnn's direct depthwise kernel.
    """

    def __init__(self, in_channels: int, kernel_size, stride=1, padding=0, dilation=1, bias: bool = True,
                 padding_mode: str = "zeros", depth_multiplier: int = 1, device=None, dtype=None):
        if isinstance(depth_multiplier, bool) or not isinstance(depth_multiplier, int) or depth_multiplier < 1:
            raise ValueError(f"DepthwiseConv2d: depth_multiplier must be a positive int, got {depth_multiplier!r}")
        super().__init__(in_channels, in_channels * depth_multiplier, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=in_channels, bias=bias, padding_mode=padding_mode,
                         device=device, dtype=dtype)

    @property
    def depth_multiplier(self) -> int:
        return self.out_channels // self.in_channels

    def forward(self, input: Tensor) -> Tensor:
        if self.padding_mode != "zeros":
            padded = torch.nn.functional.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return PF.depthwise_conv2d(padded, self.weight, self.bias, self.stride, 0, self.dilation)
        return PF.depthwise_conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation)


class SeparableConv2d(nn.Module):
    """Depthwise-separable convolution (MobileNet, Xception): a depthwise k x k convolution per
    channel, then a pointwise 1 x 1 convolution mixing channels.

    Costs 1/out_channels + 1/k^2 of a full convolution: for 3 x 3 with 64 -> 128 channels,
    64*9 + 64*128 = 8.8k weights (and multiply-adds per pixel) against 64*128*9 = 74k.
    The depthwise step has no bias (the pointwise bias absorbs it: both are linear).
    state_dict: ``depthwise.weight``, ``pointwise.weight``, ``pointwise.bias``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, padding_mode: str = "zeros", depth_multiplier: int = 1, device=None, dtype=None):
        super().__init__()
        self.depthwise = DepthwiseConv2d(in_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                                         bias=False, padding_mode=padding_mode, depth_multiplier=depth_multiplier,
                                         device=device, dtype=dtype)
        self.pointwise = Conv2d(in_channels * depth_multiplier, out_channels, 1, bias=bias, device=device, dtype=dtype)

    def forward(self, input: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(input))


class GlobalAvgPool2d(nn.Module):
    """[N, C, H, W] -> [N, C]: the mean over each channel's plane (a reduction, not a kernel)."""

    def forward(self, input: Tensor) -> Tensor:
        return input.mean(dim=(-2, -1))


class PixelShuffle(nn.PixelShuffle):
    """torch.nn.PixelShuffle through ``pycnn.functional.pixel_shuffle`` (a reshape and a permute)."""

    def forward(self, input: Tensor) -> Tensor:
        return PF.pixel_shuffle(input, self.upscale_factor)


class PartialConv2d(nn.Conv2d):
    """Partial convolution (Liu et al. 2018) on pycnn's kernel: torch.nn.Conv2d's arguments and
    parameters (groups 1, zero padding), ``forward(input, mask=None)``.

    The mask ([N, 1, H, W] or [N, C, H, W], 1 = valid; None = all valid) is renormalised over each
    window (see ``pycnn.functional.partial_conv2d``). With ``return_mask=True`` (the default)
    forward returns ``(output, updated_mask)``, ready for the next partial convolution.
    """

    def __init__(self, *args, return_mask: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.padding_mode != "zeros":
            raise ValueError(f"PartialConv2d: only groups=1 and padding_mode='zeros' are supported, got "
                             f"groups={self.groups}, padding_mode={self.padding_mode!r}")
        self.return_mask = return_mask

    def forward(self, input: Tensor, mask: Optional[Tensor] = None):
        if mask is None:
            shape = (input.shape[0], 1, *input.shape[2:]) if input.dim() == 4 else (1, *input.shape[1:])
            mask = input.new_ones(shape)
        return PF.partial_conv2d(input, mask, self.weight, self.bias, self.stride, self.padding, self.dilation,
                                 return_mask=self.return_mask)
