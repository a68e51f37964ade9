"""Batched, seeded data augmentation on tensors, on whatever device the batch is on.

Every transform is a callable ``t(images, mask=None)``:

* ``images``: floating tensor [N, C, H, W] (float32, float64, half ...);
* ``mask`` (optional): [N, H, W] or [N, K, H, W], any dtype (bool, int64 class map, float masks);
* returns ``images`` alone when no mask is given, else ``(images, mask)``.

Each sample draws its own random parameters. Geometric transforms (crop, flip, translation,
rotation, zoom) move the mask exactly as they move the image; the mask is resampled with nearest
neighbour, so its values stay in its original set (a class map stays a class map). Photometric
transforms (contrast, brightness) return the mask untouched.

Randomness: pass ``seed=`` (or a CPU ``torch.Generator`` as ``generator=``) for a private stream;
with neither, the global torch RNG is used (so ``torch.manual_seed`` reproduces it). Parameters
are always drawn on the CPU, so the same seed gives the same augmentation on CPU and GPU.

Rotation and zoom use ``torch.nn.functional.affine_grid`` + ``grid_sample``: this is data
preparation, not one of the operations pycnn implements.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

__all__ = ["Transform", "Compose", "RandomCrop", "RandomFlip", "RandomTranslation", "RandomRotation",
           "RandomZoom", "RandomContrast", "RandomBrightness"]


def _pair(name: str, value, what: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise ValueError(f"{name}: {what} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name}: {what} must be an int or a pair of ints, got {value!r}")


def _interval(name: str, value, what: str, symmetric_about: float) -> tuple[float, float]:
    """A scalar a means [c - a, c + a] around ``symmetric_about`` = c; a pair is taken as is."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"{name}: {what} must be >= 0 when given as one number, got {value!r}")
        return symmetric_about - float(value), symmetric_about + float(value)
    if (isinstance(value, (tuple, list)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        lo, hi = float(value[0]), float(value[1])
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise ValueError(f"{name}: {what} must be finite with low <= high, got {value!r}")
        return lo, hi
    raise ValueError(f"{name}: {what} must be a number or a (low, high) pair, got {value!r}")


class Transform:
    """Base class: holds the random stream and checks the arguments of every call."""

    def __init__(self, seed: int | None = None, generator: torch.Generator | None = None):
        if seed is not None and generator is not None:
            raise ValueError(f"{type(self).__name__}: give seed or generator, not both")
        if generator is not None and (not isinstance(generator, torch.Generator)
                                      or generator.device.type != "cpu"):
            raise ValueError(f"{type(self).__name__}: generator must be a CPU torch.Generator, got {generator!r}")
        self.generator = generator
        if seed is not None:
            self.manual_seed(seed)

    def manual_seed(self, seed: int) -> "Transform":
        """Restart this transform's private random stream from ``seed``."""
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"{type(self).__name__}: seed must be an int, got {seed!r}")
        self.generator = torch.Generator().manual_seed(seed)
        return self

    # Per-sample uniform numbers in [lo, hi), float64 on the CPU.
    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=self.generator, dtype=torch.float64)

    def _integers(self, n: int, lo: int, hi: int) -> torch.Tensor:
        """Per-sample ints in [lo, hi] inclusive."""
        return torch.randint(lo, hi + 1, (n,), generator=self.generator)

    def _check(self, images, mask):
        name = type(self).__name__
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{name}: images must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(f"{name}: images must be [N, C, H, W], got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"{name}: images must be floating point, got {images.dtype}")
        if mask is not None:
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"{name}: mask must be a torch.Tensor or None, got {type(mask).__name__}")
            if mask.ndim not in (3, 4) or mask.shape[0] != images.shape[0] or mask.shape[-2:] != images.shape[-2:]:
                raise ValueError(f"{name}: mask must be [N, H, W] or [N, K, H, W] matching images "
                                 f"{tuple(images.shape)}, got {tuple(mask.shape)}")
            if mask.device != images.device:
                raise ValueError(f"{name}: mask is on {mask.device}, images on {images.device}")

    def __call__(self, images: torch.Tensor, mask: torch.Tensor | None = None):
        self._check(images, mask)
        out_images, out_mask = self.apply(images, mask)
        return out_images if mask is None else (out_images, out_mask)

    def apply(self, images, mask):  # pragma: no cover - abstract
        raise NotImplementedError


class Compose(Transform):
    """Apply transforms in order; the mask (if any) goes through each of them."""

    def __init__(self, transforms: Sequence[Transform], seed: int | None = None):
        transforms = list(transforms)
        for t in transforms:
            if not callable(t):
                raise TypeError(f"Compose: every transform must be callable, got {t!r}")
        self.transforms = transforms
        super().__init__(seed=seed)

    def manual_seed(self, seed: int) -> "Compose":
        """Give every child a private stream derived from ``seed`` (distinct per child)."""
        super().manual_seed(seed)
        for t in self.transforms:
            if hasattr(t, "manual_seed"):
                t.manual_seed(int(torch.randint(0, 2**62, (1,), generator=self.generator)))
        return self

    def __call__(self, images, mask=None):
        for t in self.transforms:
            if mask is None:
                images = t(images)
            else:
                images, mask = t(images, mask)
        return images if mask is None else (images, mask)

    def __repr__(self):
        return "Compose([" + ", ".join(type(t).__name__ for t in self.transforms) + "])"


# --------------------------------------------------------------------------- geometry helpers

def _mask_as_float(mask: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """[N, K, H, W] floating copy for resampling (float64 keeps int64 class ids exact)."""
    squeeze = mask.ndim == 3
    m = mask.unsqueeze(1) if squeeze else mask
    dtype = like.dtype if mask.is_floating_point() else torch.float64
    if dtype == torch.float64 and like.device.type == "mps":  # no float64 there
        dtype = torch.float32
    return m.to(dtype), squeeze


def _mask_back(m: torch.Tensor, mask: torch.Tensor, squeeze: bool) -> torch.Tensor:
    m = m.squeeze(1) if squeeze else m
    if mask.dtype == torch.bool:
        return m > 0.5
    return m.round().to(mask.dtype) if not mask.is_floating_point() else m.to(mask.dtype)


def _pad(x: torch.Tensor, pad: tuple[int, int], mode: str) -> torch.Tensor:
    py, px = pad
    if py == 0 and px == 0:
        return x
    return F.pad(x, (px, px, py, py), mode=mode)


def _windows(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Per-sample windows x[n, :, top[n]:top[n]+h, left[n]:left[n]+w] -> [N, C, h, w] (exact copy)."""
    dev = x.device
    rows = top.to(dev)[:, None] + torch.arange(h, device=dev)
    cols = left.to(dev)[:, None] + torch.arange(w, device=dev)
    n = torch.arange(x.shape[0], device=dev)[:, None, None]
    # Advanced indices around a slice put the indexed dims first: [N, h, w, C].
    return x[n, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def _crop_both(images, mask, top, left, h, w, pad, mode):
    out = _windows(_pad(images, pad, mode), top, left, h, w)
    if mask is None:
        return out, None
    m, squeeze = _mask_as_float(mask, images)
    # Reflect padding copies image pixels into the border; copy the mask the same way. With
    # constant padding, the mask border is 0 (background).
    m = _windows(_pad(m, pad, mode), top, left, h, w)
    return out, _mask_back(m, mask, squeeze)


def _affine_both(images, mask, theta: torch.Tensor, padding_mode: str):
    """Resample images (bilinear) and mask (nearest) through the same per-sample affine map.

    theta: [N, 2, 3] float64, mapping output to input in normalised [-1, 1] coordinates.
    """
    n, _, h, w = images.shape
    if n == 0:
        return images.clone(), None if mask is None else mask.clone()
    grid = F.affine_grid(theta.to(device=images.device, dtype=images.dtype), [n, 1, h, w], align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    if mask is None:
        return out, None
    m, squeeze = _mask_as_float(mask, images)
    m = F.grid_sample(m, grid.to(m.dtype), mode="nearest", padding_mode=padding_mode, align_corners=False)
    return out, _mask_back(m, mask, squeeze)


def _check_padding_mode(name: str, mode: str, allowed: Sequence[str]) -> str:
    if mode not in allowed:
        raise ValueError(f"{name}: padding_mode must be one of {tuple(allowed)}, got {mode!r}")
    return mode


# --------------------------------------------------------------------------- geometric transforms

class RandomCrop(Transform):
    """Crop a random ``size`` window per sample, after padding each side by ``padding`` pixels
    (``padding_mode`` "constant" = zeros, "reflect" or "replicate"). The classic CIFAR recipe is
    ``RandomCrop(32, padding=4)``."""

    def __init__(self, size, padding=0, padding_mode: str = "constant", seed=None, generator=None):
        super().__init__(seed, generator)
        self.size = _pair("RandomCrop", size, "size")
        self.padding = _pair("RandomCrop", padding, "padding")
        if min(self.size) < 1 or min(self.padding) < 0:
            raise ValueError(f"RandomCrop: size must be >= 1 and padding >= 0, got size={size!r}, padding={padding!r}")
        self.padding_mode = _check_padding_mode("RandomCrop", padding_mode, ("constant", "reflect", "replicate"))

    def apply(self, images, mask):
        n, _, h, w = images.shape
        ph, pw = h + 2 * self.padding[0], w + 2 * self.padding[1]
        ch, cw = self.size
        if ch > ph or cw > pw:
            raise ValueError(f"RandomCrop: crop size {self.size} larger than padded image ({ph}, {pw})")
        top, left = self._integers(n, 0, ph - ch), self._integers(n, 0, pw - cw)
        return _crop_both(images, mask, top, left, ch, cw, self.padding, self.padding_mode)


class RandomTranslation(Transform):
    """Shift each sample by a random whole number of pixels in [-max_shift, max_shift] per axis
    (``max_shift`` int or (dy, dx)); vacated pixels are filled with zeros (mask: background).
    Whole pixels keep it exact: no interpolation blur."""

    def __init__(self, max_shift, padding_mode: str = "constant", seed=None, generator=None):
        super().__init__(seed, generator)
        self.max_shift = _pair("RandomTranslation", max_shift, "max_shift")
        if min(self.max_shift) < 0:
            raise ValueError(f"RandomTranslation: max_shift must be >= 0, got {max_shift!r}")
        self.padding_mode = _check_padding_mode("RandomTranslation", padding_mode, ("constant", "reflect", "replicate"))

    def apply(self, images, mask):
        n, _, h, w = images.shape
        sy, sx = self.max_shift
        dy, dx = self._integers(n, -sy, sy), self._integers(n, -sx, sx)
        # Output pixel (i, j) = input (i - dy, j - dx) = padded (i - dy + sy, j - dx + sx).
        return _crop_both(images, mask, sy - dy, sx - dx, h, w, (sy, sx), self.padding_mode)


class RandomFlip(Transform):
    """Mirror each sample left-right (``horizontal``) and/or up-down (``vertical``), each axis
    independently with probability ``p``. Exact: flipping twice gives back the input."""

    def __init__(self, horizontal: bool = True, vertical: bool = False, p: float = 0.5, seed=None, generator=None):
        super().__init__(seed, generator)
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomFlip: p must be in [0, 1], got {p!r}")
        self.horizontal, self.vertical, self.p = bool(horizontal), bool(vertical), float(p)

    def apply(self, images, mask):
        n = images.shape[0]
        for enabled, dim in ((self.horizontal, -1), (self.vertical, -2)):
            if not enabled:
                continue
            flip = (torch.rand(n, generator=self.generator, dtype=torch.float64) < self.p).to(images.device)
            images = torch.where(flip[:, None, None, None], images.flip(dim), images)
            if mask is not None:
                sel = flip.view(-1, *([1] * (mask.ndim - 1)))
                mask = torch.where(sel, mask.flip(dim), mask)
        return images, mask


class RandomRotation(Transform):
    """Rotate each sample about its centre by an angle drawn uniformly from [-degrees, degrees]
    (or from a (low, high) pair); corners are filled per ``padding_mode`` ("zeros", "border",
    "reflection"). Image bilinear, mask nearest."""

    def __init__(self, degrees, padding_mode: str = "zeros", seed=None, generator=None):
        super().__init__(seed, generator)
        self.degrees = _interval("RandomRotation", degrees, "degrees", 0.0)
        self.padding_mode = _check_padding_mode("RandomRotation", padding_mode, ("zeros", "border", "reflection"))

    def apply(self, images, mask):
        n, _, h, w = images.shape
        angle = torch.deg2rad(self._uniform(n, *self.degrees))
        cos, sin = torch.cos(angle), torch.sin(angle)
        # Rotate in pixel units, then express in normalised coordinates (x / (w/2), y / (h/2)), so
        # non-square images rotate rigidly instead of shearing.
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
        theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
        return _affine_both(images, mask, theta, self.padding_mode)


class RandomZoom(Transform):
    """Scale each sample about its centre by a factor drawn from ``scale`` = (low, high):
    > 1 magnifies (zoom in), < 1 shrinks with a zero border. Image bilinear, mask nearest."""

    def __init__(self, scale=(0.9, 1.1), padding_mode: str = "zeros", seed=None, generator=None):
        super().__init__(seed, generator)
        self.scale = _interval("RandomZoom", scale, "scale", 1.0)
        if self.scale[0] <= 0:
            raise ValueError(f"RandomZoom: scale must be > 0, got {scale!r}")
        self.padding_mode = _check_padding_mode("RandomZoom", padding_mode, ("zeros", "border", "reflection"))

    def apply(self, images, mask):
        n = images.shape[0]
        s = self._uniform(n, *self.scale)
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / s  # output point x samples the input at x / s
        return _affine_both(images, mask, theta, self.padding_mode)


# --------------------------------------------------------------------------- photometric transforms

class RandomContrast(Transform):
    """Scale each sample's deviation from its own per-channel mean by a factor drawn from
    ``factor`` ((low, high), or a number a for [1 - a, 1 + a]). ``clamp`` = (low, high) clips the
    result (e.g. (0, 1) for images in [0, 1]); None leaves it (standardised data). Mask untouched."""

    def __init__(self, factor=(0.8, 1.2), clamp=None, seed=None, generator=None):
        super().__init__(seed, generator)
        self.factor = _interval("RandomContrast", factor, "factor", 1.0)
        if self.factor[0] < 0:
            raise ValueError(f"RandomContrast: factor must be >= 0, got {factor!r}")
        self.clamp = None if clamp is None else _interval("RandomContrast", clamp, "clamp", 0.0)

    def apply(self, images, mask):
        c = self._uniform(images.shape[0], *self.factor).to(images.device, images.dtype)[:, None, None, None]
        mean = images.mean(dim=(2, 3), keepdim=True)
        out = (images - mean) * c + mean
        return (out if self.clamp is None else out.clamp(*self.clamp)), mask


class RandomBrightness(Transform):
    """Add to each sample a value drawn from ``delta`` ((low, high), or a number a for [-a, a]).
    ``clamp`` as in :class:`RandomContrast`. Mask untouched."""

    def __init__(self, delta=(-0.1, 0.1), clamp=None, seed=None, generator=None):
        super().__init__(seed, generator)
        self.delta = _interval("RandomBrightness", delta, "delta", 0.0)
        self.clamp = None if clamp is None else _interval("RandomBrightness", clamp, "clamp", 0.0)

    def apply(self, images, mask):
        d = self._uniform(images.shape[0], *self.delta).to(images.device, images.dtype)[:, None, None, None]
        out = images + d
        return (out if self.clamp is None else out.clamp(*self.clamp)), mask
