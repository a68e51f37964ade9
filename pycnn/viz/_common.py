"""Plumbing shared by every visualisation method: leaving the model as it was found, picking the
class score, finding layers, capturing activations, and swapping ReLU's backward.

Every public method in pycnn.viz runs its model inside ``model_guard`` and registers hooks only
inside ``capture``/``relu_backward``: all three undo themselves in ``finally`` blocks, so an
exception half-way through a forward or backward pass leaves no hook, no mode change, no frozen
parameter and no overwritten running statistic behind.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

LayerRef = Union[str, nn.Module]


# ---- the model is left as it was found -----------------------------------------------------

@contextlib.contextmanager
def model_guard(model: nn.Module, *, eval_mode: Optional[bool] = None):
    """Freezes the parameters for the duration (we only want input gradients, and this keeps the
    parameters' ``.grad`` untouched), and restores on exit, whatever happens: every module's
    train/eval flag, every parameter's ``requires_grad``, and every buffer's value (a model in
    train mode updates batch-norm running statistics on each forward; an explanation must not).

    Gradients are enabled inside, whatever the caller's grad mode.
    ``eval_mode=True`` runs the model in eval mode inside (the optimisation-based methods, whose
    hundreds of forwards would otherwise be batch-statistics dependent); None keeps the mode the
    caller chose, as Captum does.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"pycnn.viz: model must be a torch.nn.Module, got {type(model).__name__}")
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    # Only a module in train mode mutates buffers during forward; snapshot just in that case.
    saved_buffers = ([(b, b.detach().clone()) for b in model.buffers()]
                     if any(t for _, t in modes) else [])
    try:
        for p, _ in grads:
            p.requires_grad_(False)
        if eval_mode:
            model.eval()
        # Gradient-based methods must work when called from a torch.no_grad() block (evaluation
        # code usually is one); the methods that need no gradient open their own no_grad.
        with torch.enable_grad():
            yield model
    finally:
        for m, t in modes:
            m.training = t
        for p, flag in grads:
            p.requires_grad_(flag)
        with torch.no_grad():
            for b, value in saved_buffers:
                b.copy_(value)


# ---- targets and class scores --------------------------------------------------------------

def as_targets(fn: str, target, n: int, device, output: Optional[Tensor] = None) -> Tensor:
    """An int, a sequence/tensor of one class per example, or None (the model's top class)."""
    if target is None:
        if output is None:
            raise ValueError(f"{fn}: target is required")
        return output.detach().reshape(n, output.shape[1], -1).sum(-1).argmax(1)
    if isinstance(target, bool):
        raise TypeError(f"{fn}: target must be an int or one int per example, got {target!r}")
    if isinstance(target, int):
        return torch.full((n,), target, dtype=torch.long, device=device)
    t = torch.as_tensor(target, device=device)
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"{fn}: target must hold integers, got dtype {t.dtype}")
    t = t.long().reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"{fn}: target has {t.numel()} classes for a batch of {n} examples")
    return t


def class_scores(fn: str, output: Tensor, target: Tensor) -> Tensor:
    """One score per example: ``output[n, target[n]]``, summed over any trailing (spatial) dims
    so a segmentation model's score for a class is its total logit over the image."""
    if not isinstance(output, Tensor) or output.dim() < 2:
        shape = tuple(output.shape) if isinstance(output, Tensor) else type(output).__name__
        raise ValueError(f"{fn}: the model must return [N, classes, ...] scores, got {shape}")
    n, k = output.shape[:2]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= k):
        bad = target[(target < 0) | (target >= k)][0].item()
        raise ValueError(f"{fn}: target class {bad} is out of range for a model with {k} outputs")
    index = target.view(n, 1, *([1] * (output.dim() - 2))).expand(n, 1, *output.shape[2:])
    return output.gather(1, index).reshape(n, -1).sum(1)


def check_inputs(fn: str, inputs) -> Tensor:
    if not isinstance(inputs, Tensor):
        raise TypeError(f"{fn}: inputs must be a tensor, got {type(inputs).__name__}")
    if inputs.dim() < 2:
        raise ValueError(f"{fn}: inputs must be a batch [N, ...], got shape {tuple(inputs.shape)}")
    if not inputs.is_floating_point():
        raise TypeError(f"{fn}: inputs must be floating point, got {inputs.dtype}")
    return inputs


def leaf(x: Tensor) -> Tensor:
    """A fresh leaf copy that requires grad: the caller's tensor is never modified."""
    return x.detach().clone().requires_grad_(True)


# ---- layers and activations ----------------------------------------------------------------

def find_layer(fn: str, model: nn.Module, layer: LayerRef) -> nn.Module:
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise ValueError(f"{fn}: layer {type(layer).__name__} is not a submodule of the model")
        return layer
    if isinstance(layer, str):
        modules = dict(model.named_modules())
        if layer not in modules:
            names = [n for n in modules if n][:20]
            raise ValueError(f"{fn}: model has no layer named {layer!r}; layers include {names}")
        return modules[layer]
    raise TypeError(f"{fn}: layer must be a module or a name from model.named_modules(), got {layer!r}")


def layer_name(model: nn.Module, layer: nn.Module) -> str:
    for n, m in model.named_modules():
        if m is layer:
            return n or "model"
    return type(layer).__name__


class StopForward(Exception):
    """Raised by a capture hook once every wanted activation is in hand: the rest of the network
    (a classifier head that only accepts one input size, say) never runs."""


@contextlib.contextmanager
def capture(modules: Sequence[nn.Module], *, stop_after_all: bool = False, detach: bool = False):
    """Records each module's output (its last call) in the yielded dict {index: tensor}."""
    store: Dict[int, Tensor] = {}
    handles = []

    def make_hook(i):
        def hook(_module, _inputs, output):
            # The network continues with a copy: an in-place op downstream (ReLU(inplace=True))
            # then edits the copy, and what we keep is what the layer produced, with its own
            # gradient (not the gradient of whatever overwrote it).
            replace = isinstance(output, Tensor)
            out = output if replace else output[0]
            store[i] = out.detach().clone() if detach else out
            if stop_after_all and len(store) == len(modules):
                raise StopForward
            if replace and not detach:
                return out.clone()
            return None
        return hook

    try:
        for i, m in enumerate(modules):
            handles.append(m.register_forward_hook(make_hook(i)))
        yield store
    finally:
        for h in handles:
            h.remove()


def run_to_layers(model: nn.Module, x: Tensor, store: Dict[int, Tensor]) -> Optional[Tensor]:
    """Runs the model under a ``capture(stop_after_all=True)``; returns its output if it got there."""
    try:
        return model(x)
    except StopForward:
        return None


# ---- ReLU with a modified backward (guided backprop, deconvnet) ------------------------------

class _GuidedReLU(torch.autograd.Function):
    """Forward: relu. Backward: the gradient passes where the input was positive AND the incoming
    gradient is positive (Springenberg et al.)."""

    @staticmethod
    def forward(ctx, x):
        y = x.clamp(min=0)
        ctx.save_for_backward(x > 0)
        return y

    @staticmethod
    def backward(ctx, grad):
        (positive,) = ctx.saved_tensors
        return grad.clamp(min=0) * positive


class _DeconvReLU(torch.autograd.Function):
    """Forward: relu. Backward: relu of the incoming gradient, ignoring the forward's sign pattern
    (Zeiler & Fergus: the deconvnet rectifies the reconstruction signal itself)."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp(min=0)


class _OpenReLU(torch.autograd.Function):
    """Forward: relu. Backward: the identity, so gradients reach every input the unit is wired to
    (used to find receptive fields, which inactive ReLUs would otherwise cut)."""

    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        return grad


_RULES = {"guided": _GuidedReLU, "deconv": _DeconvReLU, "identity": _OpenReLU}
# Every spelling of relu that a model's forward can reach. nn.ReLU calls F.relu(x, inplace=...).
_OUT_OF_PLACE = {torch.relu, torch.nn.functional.relu, Tensor.relu}
_IN_PLACE = {torch.relu_, torch.nn.functional.relu_, Tensor.relu_}


class _ReluOverride(TorchFunctionMode):
    """Intercepts relu wherever it is called (module, functional, tensor method, in-place) and
    computes it with a custom autograd function instead; every other call passes through.
    Inside ``__torch_function__`` the mode is switched off, so the replacement does not recurse."""

    def __init__(self, rule: type):
        super().__init__()
        self.rule = rule

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _OUT_OF_PLACE or func in _IN_PLACE:
            x = args[0]
            inplace = func in _IN_PLACE or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
            y = self.rule.apply(x)
            if inplace:
                # Keep in-place semantics (callers may use x afterwards); the rule saved only a
                # mask, so overwriting x does not invalidate its backward.
                return x.copy_(y)
            return y
        return func(*args, **kwargs)


@contextlib.contextmanager
def relu_backward(rule: str):
    """Within the block, every relu the model computes has the given backward rule."""
    with _ReluOverride(_RULES[rule]):
        yield


def conv_like_layers(model: nn.Module) -> List[str]:
    """Names of the modules holding a 4-D weight (convolutions), in registration order."""
    return [n for n, m in model.named_modules()
            if n and isinstance(getattr(m, "weight", None), Tensor) and m.weight.dim() == 4]


def describe_layer(model: nn.Module, layer: LayerRef) -> str:
    """A layer's name for people: ``conv2 (layer 3)`` for the second convolution of a Sequential
    (the name alone, ``3``, says nothing), ``ReLU (layer 4)`` for other modules, and the model's
    own attribute name when it has one (``conv2 (layer features.conv2)`` reads badly, so a named
    layer is ``features.conv2 (Conv2d)``)."""
    module = find_layer("describe_layer", model, layer)
    name = layer if isinstance(layer, str) else layer_name(model, module)
    kind = type(module).__name__
    if not all(part.isdigit() for part in name.split(".")):
        return f"{name} ({kind})"
    convs = conv_like_layers(model)
    if name in convs:
        return f"conv{convs.index(name) + 1} (layer {name})"
    return f"{kind} (layer {name})"


def class_label(class_names: Optional[Sequence[str]], index) -> str:
    """Class ``index`` by name when names are known (and in range), else the number."""
    i = int(index)
    if class_names is not None and 0 <= i < len(class_names):
        return str(class_names[i])
    return str(i)


def as_layer_list(fn: str, model: nn.Module, layers) -> List[nn.Module]:
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError(f"{fn}: layers must name at least one layer")
    return [find_layer(fn, model, l) for l in layers]


def iter_chunks(n: int, size: Optional[int]) -> Iterable[slice]:
    size = n if not size or size <= 0 else int(size)
    for start in range(0, n, max(1, size)):
        yield slice(start, min(n, start + size))
