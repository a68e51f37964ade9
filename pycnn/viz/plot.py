"""Pictures: images, heatmap overlays, grids, scatter plots, saved as PNG (or JPEG, PDF, SVG, ...).

Conventions: images handed to matplotlib are RGB, HWC, float in [0, 1] (``to_image`` converts a
torch CHW tensor, a grey [H, W] map or an out-of-range array). Every drawing function accepts an
``ax`` to draw into and returns ``(fig, ax)``. Figures are made with ``matplotlib.figure.Figure``
directly, never pyplot: no window opens, no global figure list grows, any backend works
(PNG output is rendered by Agg).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["to_image", "attribution_map", "new_figure", "show_image", "overlay", "image_grid",
           "scatter_by_label", "save", "image_format", "IMAGE_FORMATS"]


def _numpy(a) -> np.ndarray:
    if isinstance(a, Tensor):
        return a.detach().float().cpu().numpy()
    return np.asarray(a, dtype=np.float32)


def to_image(img, channels_first: Optional[bool] = None) -> np.ndarray:
    """Any image-like value as RGB, HWC, float32 in [0, 1].

    Accepts [H, W], [C, H, W] or [H, W, C] with C in {1, 3, 4}, or a batch of one. A torch tensor
    is read channels-first (torch's layout), a numpy array channels-last, unless
    ``channels_first`` says otherwise. Values outside [0, 1] are stretched min-max into it.
    """
    is_tensor = isinstance(img, Tensor)
    a = _numpy(img)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3:
        first = is_tensor if channels_first is None else channels_first
        if first:
            a = a.transpose(1, 2, 0)
        if a.shape[2] == 4:
            a = a[:, :, :3]
        if a.shape[2] == 1:
            a = a[:, :, 0]
        elif a.shape[2] != 3:
            raise ValueError(f"to_image: expected 1, 3 or 4 channels, got shape {tuple(np.shape(img))}")
    if a.ndim != 2 and a.ndim != 3:
        raise ValueError(f"to_image: expected an image [H, W], [C, H, W] or [H, W, C], got shape {a.shape}")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.size and (a.min() < 0 or a.max() > 1):
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return np.ascontiguousarray(a, dtype=np.float32)


def attribution_map(attr, reduce: str = "abs_sum") -> np.ndarray:
    """An attribution [C, H, W] (or [1, C, H, W], or [H, W]) as one [H, W] map.

    ``abs_sum``: total magnitude over channels (saliency, IG); ``sum``: signed total;
    ``abs_max``: the strongest channel; ``positive``: the positive part of the sum.
    """
    a = _numpy(attr)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 2:
        return a
    if a.ndim != 3:
        raise ValueError(f"attribution_map: expected [C, H, W], got shape {a.shape}")
    if reduce == "abs_sum":
        return np.abs(a).sum(0)
    if reduce == "sum":
        return a.sum(0)
    if reduce == "abs_max":
        return np.abs(a).max(0)
    if reduce == "positive":
        return np.clip(a.sum(0), 0, None)
    raise ValueError(f"attribution_map: reduce must be abs_sum, sum, abs_max or positive, got {reduce!r}")


def new_figure(ax=None, figsize=(4, 4)):
    """(fig, ax): the given axes and their figure, or a new Agg-rendered figure with one axes."""
    if ax is not None:
        return ax.figure, ax
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot(1, 1, 1)


def show_image(img, ax=None, title: Optional[str] = None, cmap: Optional[str] = None):
    """Draws one image (see ``to_image``), axes off. A 2-D array drawn with ``cmap`` keeps its
    values (a feature map); otherwise it is converted to RGB."""
    fig, ax = new_figure(ax)
    if cmap is not None and _numpy(img).squeeze().ndim == 2:
        ax.imshow(_numpy(img).squeeze(), cmap=cmap, interpolation="nearest")
    else:
        ax.imshow(to_image(img), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return fig, ax


def _resize(a: np.ndarray, shape) -> np.ndarray:
    if a.shape == tuple(shape):
        return a
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False)[0, 0].numpy()


def overlay(image, heatmap, alpha: float = 0.5, cmap: str = "jet", ax=None, title: Optional[str] = None,
            colorbar: bool = False, reduce: str = "abs_sum"):
    """Draws ``heatmap`` over ``image``: the heatmap (an attribution [C, H, W] is reduced with
    ``attribution_map``; a Grad-CAM [1, h, w] is upsampled) is scaled to [0, 1], coloured with
    ``cmap`` and blended with weight ``alpha``. Returns (fig, ax)."""
    from matplotlib import colormaps

    base = to_image(image)
    h = _numpy(heatmap)
    while h.ndim > 2 and h.shape[0] == 1:
        h = h[0]
    if h.ndim == 3:
        h = attribution_map(h, reduce)
    h = _resize(h, base.shape[:2])
    lo, hi = float(h.min()), float(h.max())
    norm = (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)
    coloured = colormaps[cmap](norm)[:, :, :3]
    fig, ax = new_figure(ax)
    ax.imshow(np.clip((1 - alpha) * base + alpha * coloured, 0, 1), interpolation="nearest")
    ax.set_axis_off()
    if colorbar:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        fig.colorbar(ScalarMappable(Normalize(lo, hi), cmap), ax=ax, fraction=0.046)
    if title:
        ax.set_title(title, fontsize=9)
    return fig, ax


def image_grid(images: Sequence, ncols: Optional[int] = None, titles: Optional[Sequence[str]] = None, ax=None,
               title: Optional[str] = None, cmap: Optional[str] = None, padding: int = 1):
    """Tiles images (a [N, C, H, W] tensor or a list of images, sizes may differ) into one picture
    drawn in one axes, white gaps between tiles, optional per-tile titles. With ``cmap`` the tiles
    are 2-D maps drawn in that colormap. Returns (fig, ax)."""
    from matplotlib import colormaps

    items = list(images) if not isinstance(images, Tensor) else list(images.unbind(0))
    if not items:
        raise ValueError("image_grid: no images")
    if cmap is not None:
        tiles = [colormaps[cmap](np.clip(_numpy(t).squeeze(), 0, 1))[:, :, :3] for t in items]
    else:
        tiles = [to_image(t) for t in items]
    cols = ncols or math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    grid = np.ones((rows * (th + padding) + padding, cols * (tw + padding) + padding, 3), dtype=np.float32)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        top, left = padding + r * (th + padding), padding + c * (tw + padding)
        grid[top:top + t.shape[0], left:left + t.shape[1]] = t
    fig, ax = new_figure(ax, figsize=(max(2.0, 1.2 * cols), max(2.0, 1.2 * rows + (0.3 if titles else 0))))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    if titles:
        for i, text in enumerate(titles[:len(tiles)]):
            r, c = divmod(i, cols)
            ax.text(padding + c * (tw + padding) + tw / 2, padding + r * (th + padding) - 0.5, str(text),
                    ha="center", va="bottom", fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    return fig, ax


def scatter_by_label(points, labels=None, ax=None, class_names: Optional[Sequence[str]] = None,
                     title: Optional[str] = None):
    """A 2-D scatter plot, one colour per label, with a legend. Returns (fig, ax)."""
    p = _numpy(points)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"scatter_by_label: points must be [N, 2], got shape {p.shape}")
    fig, ax = new_figure(ax, figsize=(5, 5))
    if labels is None:
        ax.scatter(p[:, 0], p[:, 1], s=8)
    else:
        labels = np.asarray(labels).reshape(-1)
        for value in np.unique(labels):
            pick = labels == value
            name = class_names[int(value)] if class_names is not None else str(value)
            ax.scatter(p[pick, 0], p[pick, 1], s=8, label=name)
        ax.legend(fontsize=7, markerscale=2, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return fig, ax


# The formats ``save`` writes, by file extension. A fixed list (not whatever matplotlib offers)
# so that every one of them works without LaTeX or extra packages (JPEG/WebP/TIFF through Pillow,
# a matplotlib dependency).
IMAGE_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".pdf": "pdf", ".svg": "svg",
                 ".tif": "tiff", ".tiff": "tiff", ".webp": "webp"}


def image_format(path: str) -> str:
    """The format ``save`` writes for ``path``, from its extension (none: PNG); a ValueError
    naming the extension when it is not one of ``IMAGE_FORMATS``. Call it before long work."""
    ext = os.path.splitext(str(path))[1].lower()
    if not ext:
        return "png"
    if ext not in IMAGE_FORMATS:
        raise ValueError(f"cannot write {path!r}: unknown image format {ext!r}; "
                         f"use one of {', '.join(IMAGE_FORMATS)}")
    return IMAGE_FORMATS[ext]


def save(fig, path: str, dpi: int = 100) -> str:
    """Writes the figure in the format its extension names (.png, .jpg, .pdf, .svg, ...; no
    extension: PNG), directories created; returns the path."""
    fmt = image_format(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # savefig picks the renderer by format (Agg for the bitmaps), whatever the figure's canvas is.
    fig.savefig(path, dpi=dpi, format=fmt)
    return path
