"""Features: what the network learned, read from its weights and its activations on data.

- ``filter_mosaic``: the filters of a convolution as one grid image.
- ``activations`` / ``activation_grid``: the feature maps of named layers, and a drawing of them.
- ``top_patches``: the image crops (receptive fields) that excite a channel most (Zeiler & Fergus).
- ``tsne``: a 2-D t-SNE map of a layer's features, coloured by label.
"""
from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from pycnn.viz._common import (LayerRef, as_layer_list, capture, check_inputs, describe_layer, find_layer,
                               iter_chunks, layer_name, leaf, model_guard, relu_backward, run_to_layers)

__all__ = ["filter_mosaic", "activations", "activation_grid", "top_patches", "TopPatches", "tsne",
           "layer_features"]


def _unit_range(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    return np.zeros_like(a) if hi - lo < 1e-12 else (a - lo) / (hi - lo)


def filter_mosaic(weight, ncols: Optional[int] = None, padding: int = 1, normalize: str = "each",
                  max_filters: int = 256) -> np.ndarray:
    """A conv layer's filters as one image: an RGB [H, W, 3] array in [0, 1].

    ``weight`` is a [out, in, kh, kw] tensor or a module with such a ``.weight``. Filters with
    3 input channels are drawn in colour, one tile each; otherwise each (filter, input channel)
    pair is a grey tile, one row per filter. ``normalize="each"`` stretches every tile to [0, 1]
    (shows each filter's pattern); ``"all"`` uses one range for the whole layer (shows which
    filters are strong). Grid gaps are white.
    """
    w = weight.weight if isinstance(weight, nn.Module) else weight
    if not isinstance(w, Tensor) or w.dim() != 4:
        raise ValueError(f"filter_mosaic: weight must be a 4-D [out, in, kh, kw] tensor, got "
                         f"{tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__}")
    if normalize not in ("each", "all"):
        raise ValueError(f"filter_mosaic: normalize must be 'each' or 'all', got {normalize!r}")
    w = w.detach().float().cpu().numpy()[:max_filters]
    out, cin, kh, kw = w.shape
    if cin == 3:
        tiles = [f.transpose(1, 2, 0) for f in w]  # HWC colour tiles
        cols = ncols or math.ceil(math.sqrt(len(tiles)))
    else:
        tiles = [np.repeat(f[c][:, :, None], 3, axis=2) for f in w for c in range(cin)]
        cols = ncols or (cin if cin > 1 else math.ceil(math.sqrt(out)))
    if normalize == "all":
        tiles = list(_unit_range(np.stack(tiles)))
    else:
        tiles = [_unit_range(t) for t in tiles]
    rows = math.ceil(len(tiles) / cols)
    step_h, step_w = kh + padding, kw + padding
    grid = np.ones((rows * step_h + padding, cols * step_w + padding, 3), dtype=np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[padding + r * step_h: padding + r * step_h + kh, padding + c * step_w: padding + c * step_w + kw] = tile
    return grid


def activations(model: nn.Module, inputs: Tensor, layers) -> Dict[str, Tensor]:
    """The outputs of the given layers (names or modules) for ``inputs``: {name: tensor}, detached.
    The forward stops once the last requested layer has run."""
    fn = "activations"
    check_inputs(fn, inputs)
    with model_guard(model), torch.no_grad():
        modules = as_layer_list(fn, model, layers)
        with capture(modules, stop_after_all=True, detach=True) as store:
            run_to_layers(model, inputs, store)
        missing = [layer_name(model, m) for i, m in enumerate(modules) if i not in store]
        if missing:
            raise RuntimeError(f"{fn}: layers {missing} did not run during the forward pass")
        return {layer_name(model, m): store[i] for i, m in enumerate(modules)}


def activation_grid(feature_maps: Tensor, index: int = 0, max_channels: int = 64, ncols: Optional[int] = None,
                    ax=None, title: Optional[str] = None, cmap: str = "viridis"):
    """Draws the channels of one example's feature maps ([N, C, h, w] or [C, h, w]) as a grid.
    Returns (fig, ax)."""
    from pycnn.viz import plot

    fm = feature_maps.detach().float().cpu()
    if fm.dim() == 4:
        fm = fm[index]
    if fm.dim() != 3:
        raise ValueError(f"activation_grid: feature maps must be [N, C, h, w] or [C, h, w], got {tuple(fm.shape)}")
    maps = [_unit_range(m.numpy()) for m in fm[:max_channels]]
    return plot.image_grid(maps, ncols=ncols, ax=ax, title=title, cmap=cmap)


# ---- top patches ----------------------------------------------------------------------------

class TopPatches(NamedTuple):
    """The k strongest responses of one channel over a set of images (one per image)."""
    patches: List[Tensor]                 # crops [C, h, w] of the input images, strongest first
    scores: Tensor                        # [k] the channel's peak activation in each image
    image_indices: Tensor                 # [k] which image each crop is from
    positions: List[Tuple[int, int]]      # (row, col) of the peak in the layer's map
    boxes: List[Tuple[int, int, int, int]]  # (top, left, bottom, right) of each crop in its image, exclusive


def _support_boxes(model: nn.Module, module: nn.Module, channel: int, images: Tensor,
                   positions: Sequence[Tuple[int, int]]) -> List[Tuple[int, int, int, int]]:
    """The input region each unit sees: the bounding box of the nonzero gradient of that unit's
    activation w.r.t. the image, with every ReLU made transparent to gradients (so dead units do
    not hide part of the field). Pooling still follows its argmax, which is the region the unit
    actually read for this image. One backward for all k units: the images are independent."""
    x = leaf(images)
    with relu_backward("identity"), capture([module], stop_after_all=True) as store:
        run_to_layers(model, x, store)
    acts = store[0]
    rows = torch.tensor([p[0] for p in positions], device=x.device)
    cols = torch.tensor([p[1] for p in positions], device=x.device)
    picked = acts[torch.arange(len(positions), device=x.device), channel, rows, cols]
    (grad,) = torch.autograd.grad(picked.sum(), x)
    boxes = []
    for g in grad.abs().sum(1):
        nz = torch.nonzero(g > 0)
        if nz.numel() == 0:  # a unit with no input dependence (e.g. zero weights): the whole image
            boxes.append((0, 0, g.shape[0], g.shape[1]))
        else:
            (top, left), (bottom, right) = nz.min(0).values.tolist(), nz.max(0).values.tolist()
            boxes.append((top, left, bottom + 1, right + 1))
    return boxes


def top_patches(model: nn.Module, layer: LayerRef, channel: int, images: Tensor, k: int = 9,
                batch_size: int = 256) -> TopPatches:
    """Zeiler & Fergus: the ``k`` image crops that activate ``channel`` of ``layer`` most.

    Each image contributes its peak response (the max over the channel's map); the k images with
    the highest peaks are kept, and each is cropped to the receptive field of the peak unit.
    """
    fn = "top_patches"
    check_inputs(fn, images)
    if images.dim() != 4:
        raise ValueError(f"{fn}: images must be [N, C, H, W], got shape {tuple(images.shape)}")
    if k < 1:
        raise ValueError(f"{fn}: k must be positive, got {k}")
    with model_guard(model):
        module = find_layer(fn, model, layer)
        peaks, where = [], []
        with torch.no_grad():
            for sl in iter_chunks(images.shape[0], batch_size):
                with capture([module], stop_after_all=True, detach=True) as store:
                    run_to_layers(model, images[sl], store)
                if 0 not in store:
                    raise RuntimeError(f"{fn}: layer {layer!r} did not run during the forward pass")
                acts = store[0]
                if acts.dim() != 4:
                    raise ValueError(f"{fn}: layer output must be [N, C, h, w], got {tuple(acts.shape)}")
                if not 0 <= channel < acts.shape[1]:
                    raise ValueError(f"{fn}: channel {channel} is out of range for a layer with "
                                     f"{acts.shape[1]} channels")
                flat = acts[:, channel].reshape(acts.shape[0], -1)
                value, arg = flat.max(1)
                peaks.append(value)
                where.append(torch.stack([arg // acts.shape[3], arg % acts.shape[3]], 1))
        peaks, where = torch.cat(peaks), torch.cat(where)
        scores, order = peaks.topk(min(k, peaks.numel()))
        positions = [tuple(p) for p in where[order].tolist()]
        boxes = _support_boxes(model, module, channel, images[order], positions)
    patches = [images[i, :, t:b, l:r].detach() for i, (t, l, b, r) in zip(order.tolist(), boxes)]
    return TopPatches(patches, scores, order, positions, boxes)


# ---- t-SNE ----------------------------------------------------------------------------------

def layer_features(model: nn.Module, layer: LayerRef, images: Tensor, batch_size: int = 256) -> Tensor:
    """A layer's output for each image, flattened to [N, features] (on the images' device)."""
    fn = "layer_features"
    check_inputs(fn, images)
    with model_guard(model), torch.no_grad():
        module = find_layer(fn, model, layer)
        chunks = []
        for sl in iter_chunks(images.shape[0], batch_size):
            with capture([module], stop_after_all=True, detach=True) as store:
                run_to_layers(model, images[sl], store)
            if 0 not in store:
                raise RuntimeError(f"{fn}: layer {layer!r} did not run during the forward pass")
            chunks.append(store[0].reshape(store[0].shape[0], -1))
    return torch.cat(chunks)


def tsne(model: nn.Module, layer: LayerRef, images: Tensor, labels=None, perplexity: float = 30.0,
         random_state: int = 0, ax=None, plot: bool = True, class_names: Optional[Sequence[str]] = None,
         batch_size: int = 256, **tsne_kwargs):
    """van der Maaten & Hinton's t-SNE (scikit-learn) of ``layer``'s features, one point per image,
    coloured by ``labels``. Returns (embedding [N, 2] numpy array, fig, ax); fig and ax are None
    when ``plot=False``. Other keywords go to ``sklearn.manifold.TSNE``. Perplexity is lowered to (N - 1) / 3 for small sets (t-SNE needs it < N).
    """
    from sklearn.manifold import TSNE

    feats = layer_features(model, layer, images, batch_size).double().cpu().numpy()
    n = feats.shape[0]
    if n < 3:
        raise ValueError(f"tsne: needs at least 3 images, got {n}")
    if labels is not None:
        labels = np.asarray(torch.as_tensor(labels).cpu()).reshape(-1)
        if labels.shape[0] != n:
            raise ValueError(f"tsne: got {labels.shape[0]} labels for {n} images")
    perplexity = float(min(perplexity, max(1.0, (n - 1) / 3)))
    init = "pca" if feats.shape[1] >= 2 else "random"
    embedding = TSNE(n_components=2, perplexity=perplexity, init=init, random_state=random_state,
                     **tsne_kwargs).fit_transform(feats)
    if not plot:
        return embedding, None, None
    from pycnn.viz import plot as vplot

    fig, ax = vplot.scatter_by_label(embedding, labels, ax=ax, class_names=class_names,
                                     title=f"t-SNE of {describe_layer(model, layer)}")
    return embedding, fig, ax
