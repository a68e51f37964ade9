"""Swapping torch.nn layers for pycnn's (``convert``) and back (``to_torch``), in place.

pycnn's layers subclass their torch namesakes and add no state, so a layer is converted by
changing its class: the parameters stay the very same tensors (an optimizer built before the
conversion keeps working), and hooks, train/eval mode and devices are untouched.
"""
from __future__ import annotations

from torch import nn

from pycnn.nn import modules as M

# Exact types only: a user's subclass of nn.Conv2d may have its own forward, which we must keep.
_TO_PYCNN = {
    nn.Conv2d: M.Conv2d,
    nn.ConvTranspose2d: M.ConvTranspose2d,
    nn.MaxPool2d: M.MaxPool2d,
    nn.MaxUnpool2d: M.MaxUnpool2d,
    nn.BatchNorm2d: M.BatchNorm2d,
    nn.Linear: M.Linear,
}
_TO_TORCH = {v: k for k, v in _TO_PYCNN.items()}
_TO_TORCH[M.DepthwiseConv2d] = nn.Conv2d  # same state as Conv2d(groups=in_channels)


def _swap(model: nn.Module, table: dict) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert: model must be a torch.nn.Module, got {type(model).__name__}")
    for module in model.modules():
        new_cls = table.get(type(module))
        if new_cls is not None:
            module.__class__ = new_cls
    return model


def convert(model: nn.Module) -> nn.Module:
    """Replaces every torch.nn Conv2d, ConvTranspose2d, MaxPool2d, MaxUnpool2d, BatchNorm2d and
    Linear in ``model`` (nested at any depth, the model itself included) by pycnn's layer, in
    place, keeping weights, buffers and train/eval mode. Returns ``model``."""
    return _swap(model, _TO_PYCNN)


def to_torch(model: nn.Module) -> nn.Module:
    """The inverse of ``convert``: pycnn layers become their torch.nn namesakes, in place
    (DepthwiseConv2d becomes a grouped nn.Conv2d). Useful as a reference to compare against."""
    return _swap(model, _TO_TORCH)
