"""Swapping torch.nn layers for pycnn's (``convert``) and back (``to_torch``), and which layers of a
model run on which (``summary``).

Like ``torch.ao.quantization.convert``, both return a converted deep copy unless ``inplace=True``.
pycnn's layers subclass their torch namesakes and add no state, so a layer is converted by
changing its class: in place, the parameters stay the very same tensors (an optimizer built
before the conversion keeps working), and hooks, train/eval mode and devices are untouched.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Dict, List, Tuple

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
_TO_TORCH[M.Sequential] = nn.Sequential  # (convert leaves containers alone: only to_torch maps it)
_PYCNN_TYPES = tuple(t for t in (getattr(M, name) for name in M.__all__) if isinstance(t, type))


@dataclasses.dataclass(frozen=True)
class ConversionSummary:
    """Which modules of a model compute on pycnn's kernels and which on torch's.

    on_pycnn / on_torch: (qualified name, class name) of every module that computes something
    itself (leaves, and modules with their own parameters); containers are left out, and the
    model itself is named "" . swapped: the names ``convert`` changed in this call (empty for
    ``summary``). not_swapped: on_torch entries that subclass a layer pycnn has, with the reason.
    """
    on_pycnn: Tuple[Tuple[str, str], ...]
    on_torch: Tuple[Tuple[str, str], ...]
    swapped: Tuple[str, ...] = ()
    not_swapped: Dict[str, str] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"pycnn.nn.convert: {len(self.swapped)} modules swapped to pycnn, "
                 f"{len(self.on_pycnn)} on pycnn, {len(self.on_torch)} on torch"]
        swapped = set(self.swapped)
        for name, cls in self.on_pycnn:
            lines.append(f"  pycnn  {name or '(model)'}: {cls}{'  (swapped)' if name in swapped else ''}")
        for name, cls in self.on_torch:
            why = self.not_swapped.get(name)
            lines.append(f"  torch  {name or '(model)'}: {cls}{f'  ({why})' if why else ''}")
        return "\n".join(lines)


def _computing_modules(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules(remove_duplicate=True)
            if not list(m.children()) or list(m.parameters(recurse=False))]


def summary(model: nn.Module, swapped=()) -> ConversionSummary:
    """Which modules of `model` run on pycnn's kernels and which stay on torch (nothing changes)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"summary: model must be a torch.nn.Module, got {type(model).__name__}")
    on_pycnn, on_torch, not_swapped = [], [], {}
    for name, m in _computing_modules(model):
        cls = type(m)
        if isinstance(m, _PYCNN_TYPES):
            on_pycnn.append((name, cls.__name__))
            continue
        public = getattr(nn, cls.__name__, None) is cls  # torch.nn.ReLU, not torch.nn.modules.activation.ReLU
        on_torch.append((name, f"torch.nn.{cls.__name__}" if public else f"{cls.__module__}.{cls.__qualname__}"))
        base = next((t for t in _TO_PYCNN if isinstance(m, t)), None)
        if base is not None:  # a user's subclass: its forward may differ from the layer's
            not_swapped[name] = f"a subclass of nn.{base.__name__}, kept for its own forward"
    return ConversionSummary(tuple(on_pycnn), tuple(on_torch), tuple(swapped), not_swapped)


def _swap(op: str, model: nn.Module, table: dict, inplace: bool) -> Tuple[nn.Module, List[str]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{op}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    changed = []
    for name, module in model.named_modules():
        new_cls = table.get(type(module))
        if new_cls is not None:
            module.__class__ = new_cls
            changed.append(name)
    return model, changed


def convert(model: nn.Module, inplace: bool = False, verbose: bool = False) -> nn.Module:
    """Returns ``model`` with every torch.nn Conv2d, ConvTranspose2d, MaxPool2d, MaxUnpool2d,
    BatchNorm2d and Linear (nested at any depth, the model itself included) replaced by pycnn's
    layer, keeping weights, buffers, hooks and train/eval mode.

    Like ``torch.ao.quantization.convert``: a converted deep copy by default; ``inplace=True``
    changes ``model`` itself (its parameters stay the same tensors). Subclasses of these layers
    are kept (they may have their own forward). ``verbose=True`` prints which modules were
    swapped and which stay on torch; ``pycnn.nn.summary(model)`` gives the same at any time.
    """
    model, changed = _swap("convert", model, _TO_PYCNN, inplace)
    if verbose:
        print(summary(model, swapped=changed))
    return model


def to_torch(model: nn.Module, inplace: bool = False) -> nn.Module:
    """The inverse of ``convert`` (a copy unless ``inplace=True``): pycnn layers become their
    torch.nn namesakes (DepthwiseConv2d becomes a grouped nn.Conv2d). A reference to compare
    against, or a model for code that needs stock torch layers."""
    return _swap("to_torch", model, _TO_TORCH, inplace)[0]
