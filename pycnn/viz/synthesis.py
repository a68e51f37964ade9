"""Synthesis: images optimised through a fixed network (its weights frozen, the image learned).

- ``class_model``: Simonyan et al.'s class model, argmax_I S_c(I) - lambda ||I||^2, regularised
  as in Yosinski et al. (L2 decay, jitter, occasional blur); or a channel's mean activation.
- ``deep_dream``: Mordvintsev et al.: amplify whatever chosen layers already see (the gradient of
  ||A||^2 / 2 is A itself: "set the gradients equal to the activations"), over octaves.
- ``style_transfer``: Gatys et al.: match a content image's activations and a style image's Gram
  matrices, by L-BFGS on the pixels.

All three run the network in eval mode (hundreds of forwards must not depend on batch statistics
or update them) and leave it as they found it. Pass ``return_history=True`` to also get the
objective at every step.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as TF
from torch import Tensor, nn

from pycnn.viz._common import (as_layer_list, as_targets, capture, class_scores, find_layer, model_guard,
                               run_to_layers)

__all__ = ["class_model", "deep_dream", "style_transfer", "gram_matrix", "gaussian_blur"]


def _device_dtype(model: nn.Module):
    for p in model.parameters():
        return p.device, p.dtype
    return torch.device("cpu"), torch.float32


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [N, C, H, W] as a weighted sum of shifted copies (a few pixels
    wide: no convolution kernel needed), edges replicated."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(2 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    taps = torch.exp(-offsets ** 2 / (2 * sigma ** 2))
    taps = taps / taps.sum()
    padded = TF.pad(x, (radius, radius, radius, radius), mode="replicate")
    h, w = x.shape[-2:]
    rows = sum(taps[i] * padded[:, :, i:i + h, :] for i in range(2 * radius + 1))
    return sum(taps[i] * rows[:, :, :, i:i + w] for i in range(2 * radius + 1))


def _jitter(x: Tensor, amount: int, generator: torch.Generator) -> Tuple[Tensor, Tuple[int, int]]:
    if amount <= 0:
        return x, (0, 0)
    dy, dx = (torch.randint(-amount, amount + 1, (2,), generator=generator)).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(-2, -1)), (dy, dx)


def _normalised(grad: Tensor) -> Tensor:
    """Each example's gradient divided by its mean magnitude: steps of the same size whatever the
    layer's scale, so one learning rate suits every network."""
    scale = grad.abs().reshape(grad.shape[0], -1).mean(1).clamp(min=1e-12)
    return grad / scale.view(-1, *([1] * (grad.dim() - 1)))


# ---- class model ----------------------------------------------------------------------------

def class_model(model: nn.Module, target, shape: Optional[Sequence[int]] = None, *, layer=None,
                init: Optional[Tensor] = None, steps: int = 100, lr: float = 0.05, l2: float = 1e-3,
                jitter: int = 2, blur_every: int = 4, blur_sigma: float = 0.5,
                clamp: Optional[Tuple[float, float]] = None, seed: int = 0, return_history: bool = False):
    """An image that maximises the score of class ``target`` (or, with ``layer``, the mean
    activation of channel ``target`` of that layer), by normalised gradient ascent.

    Starts from ``init`` or small noise of ``shape`` ([C, H, W] or [N, C, H, W]); each step rolls
    the image by up to ``jitter`` pixels, steps along the gradient, decays it by (1 - ``l2``)
    (the L2 penalty), blurs it every ``blur_every`` steps (suppresses the high-frequency patterns
    that fool the network without looking like anything) and clamps it to ``clamp``.
    ``target`` may give one class per image of a batch. History: the objective at each step.
    """
    fn = "class_model"
    device, dtype = _device_dtype(model)
    generator = torch.Generator().manual_seed(seed)
    if init is not None:
        x = init.detach().clone().to(device=device, dtype=dtype)
        if x.dim() == 3:
            x = x.unsqueeze(0)
    elif shape is not None:
        shape = tuple(int(s) for s in shape)
        if len(shape) == 3:
            shape = (1,) + shape
        if len(shape) != 4:
            raise ValueError(f"{fn}: shape must be [C, H, W] or [N, C, H, W], got {shape}")
        x = (0.01 * torch.randn(shape, generator=generator, dtype=dtype)).to(device)
    else:
        raise ValueError(f"{fn}: give the image shape ([C, H, W]) or an init image")
    if steps < 1:
        raise ValueError(f"{fn}: steps must be positive, got {steps}")
    history: List[float] = []
    with model_guard(model, eval_mode=True):
        module = find_layer(fn, model, layer) if layer is not None else None
        t = as_targets(fn, target, x.shape[0], device)

        def objective(img: Tensor) -> Tensor:
            if module is None:
                return class_scores(fn, model(img), t)
            with capture([module], stop_after_all=True) as store:
                run_to_layers(model, img, store)
            if 0 not in store:
                raise RuntimeError(f"{fn}: layer {layer!r} did not run during the forward pass")
            acts = store[0]
            if not (acts.dim() >= 2 and 0 <= int(t.min()) and int(t.max()) < acts.shape[1]):
                raise ValueError(f"{fn}: channel {t.tolist()} out of range for a layer of shape "
                                 f"{tuple(acts.shape)}")
            picked = acts[torch.arange(acts.shape[0], device=acts.device), t]
            return picked.reshape(acts.shape[0], -1).mean(1)

        for step in range(steps):
            x.requires_grad_(True)
            shifted, _ = _jitter(x, jitter, generator)
            score = objective(shifted)
            (grad,) = torch.autograd.grad(score.sum(), x)
            history.append(float(score.detach().mean()))
            with torch.no_grad():
                x = x.detach() + lr * _normalised(grad)
                x = x * (1 - l2)
                if blur_every and (step + 1) % blur_every == 0:
                    x = gaussian_blur(x, blur_sigma)
                if clamp is not None:
                    x = x.clamp(*clamp)
        x = x.detach()
    return (x, history) if return_history else x


# ---- deep dream -----------------------------------------------------------------------------

def _dream_objective(fn: str, model: nn.Module, modules, img: Tensor) -> Tensor:
    """Per example: the sum over layers of the mean squared activation, halved (its gradient
    w.r.t. the activations is the activations themselves, divided by their count)."""
    with capture(modules, stop_after_all=True) as store:
        run_to_layers(model, img, store)
    if len(store) != len(modules):
        raise RuntimeError(f"{fn}: some layers did not run during the forward pass")
    return sum(0.5 * a.pow(2).reshape(a.shape[0], -1).mean(1) for a in store.values())


def deep_dream(model: nn.Module, image: Tensor, layers, octaves: int = 4, octave_scale: float = 1.4,
               steps: int = 10, lr: float = 0.01, jitter: int = 2, clamp: Optional[Tuple[float, float]] = None,
               min_size: int = 8, seed: int = 0, return_history: bool = False):
    """Amplifies what ``layers`` (names or modules) respond to in ``image`` ([C, H, W] or a batch).

    Works from coarse to fine: the image is shrunk by ``octave_scale`` per octave (octaves whose
    smaller side would fall under ``min_size`` pixels are skipped); at each scale ``steps``
    jittered, normalised gradient-ascent steps of size ``lr`` are taken, and the detail they added
    is upsampled into the next scale. The network runs only up to the last of ``layers``, so a
    classifier head that needs one fixed input size is never reached. Returns the dreamed image
    shaped like ``image``.
    """
    fn = "deep_dream"
    if not isinstance(image, Tensor) or image.dim() not in (3, 4):
        raise ValueError(f"{fn}: image must be a [C, H, W] or [N, C, H, W] tensor")
    if octaves < 1 or octave_scale <= 0 or steps < 1:
        raise ValueError(f"{fn}: octaves and steps must be >= 1 and octave_scale > 0, got "
                         f"octaves={octaves}, octave_scale={octave_scale}, steps={steps}")
    squeeze = image.dim() == 3
    base = (image.unsqueeze(0) if squeeze else image).detach()
    height, width = base.shape[-2:]
    sizes = []
    for k in reversed(range(octaves)):
        size = (round(height / octave_scale ** k), round(width / octave_scale ** k))
        if k == 0 or min(size) >= min_size:
            sizes.append(size)
    generator = torch.Generator().manual_seed(seed)
    history: List[float] = []
    with model_guard(model, eval_mode=True):
        modules = as_layer_list(fn, model, layers)
        detail = torch.zeros_like(base[..., :sizes[0][0], :sizes[0][1]])
        for size in sizes:
            scaled = base if size == (height, width) else TF.interpolate(base, size=size, mode="bilinear",
                                                                         align_corners=False)
            detail = TF.interpolate(detail, size=size, mode="bilinear", align_corners=False)
            x = scaled + detail
            for _ in range(steps):
                x.requires_grad_(True)
                shifted, _ = _jitter(x, jitter, generator)
                objective = _dream_objective(fn, model, modules, shifted)
                (grad,) = torch.autograd.grad(objective.sum(), x)
                history.append(float(objective.detach().mean()))
                with torch.no_grad():
                    x = x.detach() + lr * _normalised(grad)
                    if clamp is not None:
                        x = x.clamp(*clamp)
            detail = (x - scaled).detach()
        out = x.detach()
    out = out.squeeze(0) if squeeze else out
    return (out, history) if return_history else out


# ---- style transfer -------------------------------------------------------------------------

def gram_matrix(feature_maps: Tensor) -> Tensor:
    """[N, C, H, W] -> [N, C, C]: the correlations of the channels' responses, F F^T, divided by
    C * H * W so layers of different sizes weigh alike (and image size does not matter)."""
    n, c = feature_maps.shape[:2]
    f = feature_maps.reshape(n, c, -1)
    # A [C, HW] x [HW, C] product per example written as a broadcast multiply-sum (elementwise glue,
    # no matmul): C^2 * HW multiply-adds, small for the feature maps of the networks used here.
    return (f.unsqueeze(2) * f.unsqueeze(1)).sum(-1) / (c * f.shape[-1])


def style_transfer(content: Tensor, style: Tensor, features: nn.Module, content_layers, style_layers,
                   steps: int = 300, content_weight: float = 1.0, style_weight: float = 1e6,
                   init: str = "content", clamp: Optional[Tuple[float, float]] = None, seed: int = 0,
                   return_history: bool = False):
    """Gatys et al.: an image with the activations of ``content`` at ``content_layers`` and the
    Gram matrices of ``style`` at ``style_layers`` of the CNN ``features`` (any network: e.g. a
    pycnn model trained on the textures data when no pretrained network is at hand).

    Minimises content_weight * sum MSE(A(x), A(content)) + style_weight * sum MSE(G(x), G(style))
    with L-BFGS (``steps`` iterations, strong-Wolfe line search) on the pixels, starting from the
    content image (``init="content"``) or noise (``"noise"``). ``style`` may be one image for a
    batch of contents, and may differ from it in size. ``clamp`` is applied to the result.
    """
    fn = "style_transfer"
    for name, t in (("content", content), ("style", style)):
        if not isinstance(t, Tensor) or t.dim() not in (3, 4):
            raise ValueError(f"{fn}: {name} must be a [C, H, W] or [N, C, H, W] tensor")
    squeeze = content.dim() == 3
    device, dtype = _device_dtype(features)
    c = (content.unsqueeze(0) if squeeze else content).detach().to(device=device, dtype=dtype)
    s = (style.unsqueeze(0) if style.dim() == 3 else style).detach().to(device=device, dtype=dtype)
    if s.shape[0] not in (1, c.shape[0]):
        raise ValueError(f"{fn}: style batch {s.shape[0]} must be 1 or match content batch {c.shape[0]}")
    if init == "content":
        x = c.clone()
    elif init == "noise":
        x = torch.rand(c.shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)
    else:
        raise ValueError(f"{fn}: init must be 'content' or 'noise', got {init!r}")
    history: List[float] = []
    with model_guard(features, eval_mode=True):
        content_modules = as_layer_list(fn, features, content_layers)
        style_modules = as_layer_list(fn, features, style_layers)
        wanted = content_modules + [m for m in style_modules if not any(m is k for k in content_modules)]

        def run(img: Tensor):
            with capture(wanted, stop_after_all=True) as store:
                run_to_layers(features, img, store)
            if len(store) != len(wanted):
                raise RuntimeError(f"{fn}: some layers did not run during the forward pass")
            index = {id(m): i for i, m in enumerate(wanted)}
            return ([store[index[id(m)]] for m in content_modules], [store[index[id(m)]] for m in style_modules])

        with torch.no_grad():
            content_targets, _ = run(c)
            _, style_acts = run(s)
            style_targets = [gram_matrix(a).expand(c.shape[0], -1, -1) for a in style_acts]
        x.requires_grad_(True)
        optimizer = torch.optim.LBFGS([x], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            acts_c, acts_s = run(x)
            loss = content_weight * sum(TF.mse_loss(a, t) for a, t in zip(acts_c, content_targets))
            loss = loss + style_weight * sum(TF.mse_loss(gram_matrix(a), g) for a, g in zip(acts_s, style_targets))
            loss.backward()
            history.append(float(loss.detach()))
            return loss

        optimizer.step(closure)
        out = x.detach()
    if clamp is not None:
        out = out.clamp(*clamp)
    out = out.squeeze(0) if squeeze else out
    return (out, history) if return_history else out
