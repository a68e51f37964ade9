"""Attribution: which input pixels drove a model's decision for a class.

Shared convention (Captum's): ``method(model, inputs, target, ...)`` returns a tensor shaped like
``inputs`` on the inputs' device (Grad-CAM: shaped like the layer's map, [N, 1, h, w]). ``target``
is an int, one class per example, or None for each example's top-scoring class. The score of a
class is ``model(x)[n, target[n]]`` (summed over any spatial dims the output has).

Each method runs the model in the train/eval mode it was given, never writes the parameters'
``.grad``, and leaves modes, ``requires_grad`` flags, buffers and hooks as it found them, even
when it raises (see ``_common.model_guard``).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as TF
from torch import Tensor, nn

from pycnn.viz._common import (LayerRef, as_targets, capture, check_inputs, class_scores, find_layer,
                               iter_chunks, leaf, model_guard, relu_backward)

__all__ = ["saliency", "deconvnet", "guided_backprop", "integrated_gradients", "grad_cam", "occlusion",
           "fgsm", "ig_alphas"]


def _input_gradient(fn: str, model: nn.Module, inputs: Tensor, target) -> Tensor:
    """d score_target / d input for each example (examples are independent in eval mode, so the
    gradient of the summed scores is each example's own gradient)."""
    x = leaf(check_inputs(fn, inputs))
    out = model(x)
    t = as_targets(fn, target, x.shape[0], x.device, out)
    (grad,) = torch.autograd.grad(class_scores(fn, out, t).sum(), x)
    return grad


def saliency(model: nn.Module, inputs: Tensor, target=None, abs: bool = True) -> Tensor:
    """Simonyan et al.: the gradient of the class score with respect to the input pixels
    (its absolute value when ``abs``): how much a small change of each pixel moves the score."""
    with model_guard(model):
        grad = _input_gradient("saliency", model, inputs, target)
    return grad.abs() if abs else grad


def deconvnet(model: nn.Module, inputs: Tensor, target=None) -> Tensor:
    """Zeiler & Fergus's deconvnet as a modified backward pass: at every ReLU the incoming signal is
    rectified (``relu(grad)``) regardless of the forward activation; max-pooling routes the signal
    through the argmax recorded in the forward pass (the "switches", which is exactly max-pool's
    ordinary backward); convolutions apply their transposed filters (their ordinary backward).

    Catches ReLU however the model calls it: nn.ReLU, F.relu, torch.relu, Tensor.relu, in place.
    """
    with model_guard(model), relu_backward("deconv"):
        return _input_gradient("deconvnet", model, inputs, target)


def guided_backprop(model: nn.Module, inputs: Tensor, target=None) -> Tensor:
    """Springenberg et al.: backpropagation where each ReLU passes only positive gradients, and only
    where its forward input was positive (the union of backprop's and the deconvnet's masks)."""
    with model_guard(model), relu_backward("guided"):
        return _input_gradient("guided_backprop", model, inputs, target)


# ---- integrated gradients -------------------------------------------------------------------

_IG_METHODS = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def ig_alphas(method: str, n_steps: int) -> Tuple[np.ndarray, np.ndarray]:
    """Quadrature nodes on [0, 1] and their weights for the path integral of integrated gradients."""
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"integrated_gradients: n_steps must be a positive int, got {n_steps!r}")
    n = n_steps
    if method == "gausslegendre":
        # Legendre nodes/weights live on [-1, 1]; map t -> (t + 1) / 2, which halves the weights.
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return (nodes + 1) / 2, weights / 2
    if method == "riemann_trapezoid":
        if n < 2:
            raise ValueError("integrated_gradients: riemann_trapezoid needs n_steps >= 2")
        w = np.full(n, 1.0 / (n - 1))
        w[0] = w[-1] = 0.5 / (n - 1)
        return np.linspace(0, 1, n), w
    w = np.full(n, 1.0 / n)
    if method == "riemann_left":
        return np.arange(n) / n, w
    if method == "riemann_right":
        return np.arange(1, n + 1) / n, w
    if method == "riemann_middle":
        return (np.arange(n) + 0.5) / n, w
    raise ValueError(f"integrated_gradients: method must be one of {_IG_METHODS}, got {method!r}")


def integrated_gradients(model: nn.Module, inputs: Tensor, target=None, baselines=None, n_steps: int = 50,
                         method: str = "gausslegendre", internal_batch_size: Optional[int] = None,
                         return_convergence_delta: bool = False):
    """Sundararajan et al.: (x - x') * integral over a in [0, 1] of grad score(x' + a (x - x')) da,
    by ``n_steps``-point quadrature, for a baseline x' (zeros by default; a scalar or a tensor
    broadcastable to the inputs).

    Completeness: the attributions of an example sum to score(x) - score(x'); with
    ``return_convergence_delta`` also returns that error per example, a check on the quadrature.
    ``internal_batch_size`` caps how many path points go through the model at once.
    """
    fn = "integrated_gradients"
    check_inputs(fn, inputs)
    alphas, weights = ig_alphas(method, n_steps)
    x = inputs.detach()
    if baselines is None:
        base = torch.zeros_like(x)
    else:
        base = torch.as_tensor(baselines, dtype=x.dtype, device=x.device)
        try:
            base = base.expand_as(x)
        except RuntimeError:
            raise ValueError(f"{fn}: baselines of shape {tuple(base.shape)} do not broadcast to inputs "
                             f"{tuple(x.shape)}") from None
    n = x.shape[0]
    diff = x - base
    alpha_t = torch.as_tensor(alphas, dtype=x.dtype, device=x.device)
    weight_t = torch.as_tensor(weights, dtype=x.dtype, device=x.device)
    with model_guard(model):
        if target is None:
            with torch.no_grad():
                t = as_targets(fn, None, n, x.device, model(x))
        else:
            t = as_targets(fn, target, n, x.device)
        total = torch.zeros_like(x)
        # Path points are (step, example) pairs flattened step-major; chunk them for memory.
        points = n_steps * n
        chunk = internal_batch_size if internal_batch_size else points
        if chunk < 1:
            raise ValueError(f"{fn}: internal_batch_size must be positive, got {internal_batch_size}")
        for sl in iter_chunks(points, chunk):
            steps = torch.arange(sl.start, sl.stop, device=x.device) // n
            examples = torch.arange(sl.start, sl.stop, device=x.device) % n
            shape = (-1,) + (1,) * (x.dim() - 1)
            scaled = leaf(base[examples] + alpha_t[steps].view(shape) * diff[examples])
            out = model(scaled)
            (grad,) = torch.autograd.grad(class_scores(fn, out, t[examples]).sum(), scaled)
            total.index_add_(0, examples, grad * weight_t[steps].view(shape))
        attributions = total * diff
        if not return_convergence_delta:
            return attributions
        with torch.no_grad():
            gap = class_scores(fn, model(x), t) - class_scores(fn, model(base.contiguous()), t)
        delta = attributions.reshape(n, -1).sum(1) - gap
    return attributions, delta


# ---- Grad-CAM -------------------------------------------------------------------------------

def grad_cam(model: nn.Module, layer: LayerRef, inputs: Tensor, target=None, relu: bool = True,
             size: Optional[Tuple[int, int]] = None) -> Tensor:
    """Selvaraju et al.: weight each channel of ``layer``'s output A by the spatial mean of
    d score / d A, sum the weighted channels, and keep the positive part (``relu``).

    Returns [N, 1, h, w] for the layer's h x w map; ``size=(H, W)`` upsamples it bilinearly
    (e.g. to the input's size for an overlay). ``layer`` is a submodule or its name.
    """
    fn = "grad_cam"
    check_inputs(fn, inputs)
    with model_guard(model):
        module = find_layer(fn, model, layer)
        x = leaf(inputs)
        with capture([module]) as store:
            out = model(x)
        if 0 not in store:
            raise RuntimeError(f"grad_cam: layer {layer!r} did not run during the forward pass")
        acts = store[0]
        if acts.dim() < 3:
            raise ValueError(f"{fn}: layer output must be [N, C, h, w], got shape {tuple(acts.shape)}")
        t = as_targets(fn, target, x.shape[0], x.device, out)
        (grad,) = torch.autograd.grad(class_scores(fn, out, t).sum(), acts)
    spatial = tuple(range(2, acts.dim()))
    channel_weights = grad.mean(dim=spatial, keepdim=True)
    cam = (channel_weights * acts.detach()).sum(dim=1, keepdim=True)
    if relu:
        cam = cam.clamp(min=0)
    if size is not None:
        cam = TF.interpolate(cam, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
    return cam


# ---- occlusion ------------------------------------------------------------------------------

def _window_starts(extent: int, window: int, stride: int):
    """Window origins 0, s, 2s, ... and one more that reaches the edge when (extent - window) is not
    a multiple of s; that last window is clipped, so every pixel is covered at least once."""
    count = -(-(extent - window) // stride) + 1
    return [i * stride for i in range(count)]


def occlusion(model: nn.Module, inputs: Tensor, target=None, window: Union[int, Tuple[int, int]] = (8, 8),
              stride: Union[int, Tuple[int, int]] = 1, baseline: Union[float, Tensor] = 0.0,
              batch_size: int = 64) -> Tensor:
    """Zeiler & Fergus's occlusion sensitivity: slide a ``window=(h, w)`` patch of ``baseline``
    (across all channels) over the image; each pixel's attribution is the drop of the class score
    (score(x) - score(occluded x)), averaged over the windows that cover it.

    ``batch_size`` is how many occluded images go through the model at once.
    Cost: one forward per window position per image, ((H - h)/s + 1) * ((W - w)/s + 1) of them.
    """
    fn = "occlusion"
    check_inputs(fn, inputs)
    if inputs.dim() != 4:
        raise ValueError(f"{fn}: inputs must be [N, C, H, W], got shape {tuple(inputs.shape)}")
    wh, ww = (window, window) if isinstance(window, int) else tuple(int(v) for v in window)
    sh, sw = (stride, stride) if isinstance(stride, int) else tuple(int(v) for v in stride)
    n, _, height, width = inputs.shape
    if not (1 <= wh <= height and 1 <= ww <= width):
        raise ValueError(f"{fn}: window {(wh, ww)} must fit in the {height}x{width} image")
    if sh < 1 or sw < 1:
        raise ValueError(f"{fn}: stride must be positive, got {(sh, sw)}")
    if batch_size < 1:
        raise ValueError(f"{fn}: batch_size must be positive, got {batch_size}")
    x = inputs.detach()
    fill = torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand_as(x)
    boxes = [(top, left) for top in _window_starts(height, wh, sh) for left in _window_starts(width, ww, sw)]
    total = torch.zeros_like(x[:, :1])
    counts = torch.zeros_like(x[:1, :1])
    with model_guard(model), torch.no_grad():
        out = model(x)
        t = as_targets(fn, target, n, x.device, out)
        reference = class_scores(fn, out, t)
        per_pass = max(1, batch_size // max(1, n))  # window positions per forward pass
        for sl in iter_chunks(len(boxes), per_pass):
            chunk = boxes[sl]
            occluded = x.repeat(len(chunk), 1, 1, 1)
            for i, (top, left) in enumerate(chunk):
                rows, cols = slice(top, top + wh), slice(left, left + ww)
                occluded[i * n:(i + 1) * n, :, rows, cols] = fill[:, :, rows, cols]
            drop = reference.repeat(len(chunk)) - class_scores(fn, model(occluded), t.repeat(len(chunk)))
            for i, (top, left) in enumerate(chunk):
                rows, cols = slice(top, top + wh), slice(left, left + ww)
                total[:, :, rows, cols] += drop[i * n:(i + 1) * n].view(n, 1, 1, 1)
                counts[:, :, rows, cols] += 1
    return (total / counts).expand_as(x).contiguous()


# ---- adversarial examples -------------------------------------------------------------------

def fgsm(model: nn.Module, inputs: Tensor, target, epsilon: float, loss_fn: Optional[Callable] = None,
         targeted: bool = False, clamp: Optional[Tuple[float, float]] = None) -> Tensor:
    """Goodfellow et al.'s fast gradient sign method: x + epsilon * sign(d loss / d x).

    The loss is the cross-entropy of the model's logits with ``target`` (summed over the batch, so
    each example's step is its own); ``loss_fn(outputs, target)`` replaces it. ``targeted`` steps
    *down* the loss of ``target`` instead (towards that class). ``clamp=(lo, hi)`` keeps the
    result a valid image.
    """
    fn = "fgsm"
    check_inputs(fn, inputs)
    with model_guard(model):
        x = leaf(inputs)
        out = model(x)
        t = as_targets(fn, target, x.shape[0], x.device, out)
        if loss_fn is None:
            if out.dim() < 2:
                raise ValueError(f"{fn}: the model must return [N, classes] logits, got {tuple(out.shape)}")
            class_scores(fn, out, t)  # range check with a clear message
            loss = TF.cross_entropy(out, t, reduction="none")
        else:
            loss = loss_fn(out, t)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    step = -epsilon if targeted else epsilon
    adversarial = inputs.detach() + step * grad.sign()
    if clamp is not None:
        lo, hi = clamp
        adversarial = adversarial.clamp(lo, hi)
    return adversarial
