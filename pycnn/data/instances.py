"""Blended galaxies with one mask per galaxy: an instance-segmentation (deblending) data set.

    splits = pycnn.data.get("galaxy_instances", seed=0)
    images, masks = splits.train.tensors       # [N, 1, H, W] in [0, 1], [N, 3, H, W] in {0, 1}
    targets = instance_targets(masks)          # one dict per image: boxes, labels, masks

The galaxies are the ones :func:`pycnn.data.galaxies` cuts from the Hubble eXtreme Deep Field
(same finding, same stamps); here two or three are blended per image, each with its own flux
scale, and every galaxy keeps its own footprint mask, so one pixel may belong to two galaxies.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from pycnn.data.datasets import (Splits, _channel_stats, _check_fractions, _check_seed, _find_galaxies,
                                 _shifted_window, _split_counts)

__all__ = ["galaxy_instances", "galaxy_blends", "instance_targets", "masks_to_boxes", "MAX_INSTANCES"]

MAX_INSTANCES = 3


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Boxes [K, 4] (x1, y1, x2, y2) in pixel-edge coordinates around masks [K, H, W]: a mask
    covering columns 3..5 gives x1 = 3, x2 = 6, so a box's width is the mask's width in pixels.
    An empty mask gives (0, 0, 0, 0)."""
    if masks.ndim != 3:
        raise ValueError(f"masks_to_boxes: masks must be [K, H, W], got {tuple(masks.shape)}")
    m = masks > 0.5 if masks.is_floating_point() else masks.bool()
    k, h, w = m.shape
    boxes = torch.zeros(k, 4)
    if k == 0:
        return boxes
    rows, cols = m.any(2), m.any(1)  # [K, H], [K, W]
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    present = rows.any(1)
    big = max(h, w) + 1
    boxes[:, 0] = torch.where(cols, ar_w, big).amin(1).float()
    boxes[:, 1] = torch.where(rows, ar_h, big).amin(1).float()
    boxes[:, 2] = torch.where(cols, ar_w, -1).amax(1).float() + 1
    boxes[:, 3] = torch.where(rows, ar_h, -1).amax(1).float() + 1
    boxes[~present] = 0.0
    return boxes


def instance_targets(masks: torch.Tensor, label: int = 1) -> list:
    """Per-image target dicts (torchmetrics' MeanAveragePrecision format, also what
    ``pycnn.models.get("mask_rcnn")`` trains on) from padded instance masks [N, K, H, W]:
    ``boxes`` [k, 4] xyxy float, ``labels`` [k] int64 (all ``label``), ``masks`` [k, H, W] bool,
    where the all-zero padding masks are left out."""
    if masks.ndim != 4:
        raise ValueError(f"instance_targets: masks must be [N, K, H, W], got {tuple(masks.shape)}")
    # Every image's boxes in one call (one per image was a large part of making an epoch's new
    # blends), then each image keeps its non-empty slots.
    present = masks.flatten(2).amax(2) > 0.5  # [N, K]
    binary = masks > 0.5
    boxes = masks_to_boxes(binary.flatten(0, 1)).view(*masks.shape[:2], 4)
    out = []
    for keep, b, m in zip(present, boxes, binary):
        out.append({"boxes": b[keep], "labels": torch.full((int(keep.sum()),), label, dtype=torch.int64),
                    "masks": m[keep]})
    return out


def galaxy_instances(seed: int = 0, n: int = 1500, size: int = 64, zoom: int = 2, noise: float = 0.01,
                     threshold: float = 0.1, min_area: int = 40, flux_range: tuple = (0.5, 2.0),
                     three_fraction: float = 0.5, min_pixels: int = 30,
                     val_fraction: float = 0.15, test_fraction: float = 0.15) -> Splits:
    """Two or three Hubble deep-field galaxies blended per image, with a mask, a box and a label
    per galaxy (deterministic from ``seed``, nothing downloaded).

    1. Galaxies as in :func:`pycnn.data.galaxies` (same threshold, area and stamp rules); the list
       is split into train / val / test pools first, so a test galaxy is never seen in training.
    2. Each image takes 2 galaxies, or 3 with probability ``three_fraction``, from its split's
       pool, each randomly rotated/flipped and scaled in flux by a log-uniform factor in
       ``flux_range`` (so flux ratios vary well beyond the catalogue's own). The first sits near
       the centre; each next one is placed at 0.3-1.0 times the sum of its radius and a placed
       neighbour's radius from that neighbour, in a random direction: overlaps from grazing to
       heavy. Light adds; Gaussian noise of std ``noise``; clipped to [0, 1].
    3. A galaxy's mask is its isophotal footprint: its own smoothed, flux-scaled light above
       ``threshold`` (the rule that found it), upsampled smoothly; masks overlap where galaxies
       do. A galaxy pushed mostly out of the frame (fewer than ``min_pixels`` mask pixels left)
       is dropped from image and targets alike.

    Returns :class:`Splits` with task "detection": ``train``/``val``/``test`` are
    TensorDataset(images float32 [N, 1, H, W], masks float32 [N, 3, H, W]), galaxies brightest
    first, all-zero masks padding images with two. :func:`instance_targets` turns masks into
    per-image dicts (boxes xyxy, labels 1 = "galaxy", bool masks). ``extra[split]`` holds
    ``galaxy_ids`` [N, 3] (catalogue index, -1 padding) and ``flux`` [N, 3].
    """
    name = "galaxy_instances"
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 3:
        raise ValueError(f"{name}: n must be an int >= 3, got {n!r}")
    galaxies, pools, rng = _galaxy_pools(name, seed, size, zoom, noise, threshold, min_area, flux_range,
                                         three_fraction, val_fraction, test_fraction)
    sets, extra = [], {}
    for split, pool, count in zip(("train", "val", "test"), pools, _split_counts(n, val_fraction, test_fraction)):
        images, masks, ids, fluxes = _blend(rng, pool, count, galaxies, size, noise, threshold, flux_range,
                                            three_fraction, min_pixels)
        sets.append(TensorDataset(images, masks))
        extra[split] = {"galaxy_ids": ids, "flux": fluxes}
    mean, std = _channel_stats(sets[0].tensors[0])
    return Splits(*sets, classes=("galaxy",), task="detection", mean=mean, std=std, extra=extra,
                  info={"source": "skimage.data.hubble_deep_field", "max_instances": MAX_INSTANCES,
                        "galaxies": {k: int(len(p)) for k, p in zip(("train", "val", "test"), pools)}})


def galaxy_blends(split: str = "train", n: int = 1050, blend_seed: int = 1, seed: int = 0, size: int = 64,
                  zoom: int = 2, noise: float = 0.01, threshold: float = 0.1, min_area: int = 40,
                  flux_range: tuple = (0.5, 2.0), three_fraction: float = 0.5, min_pixels: int = 30,
                  val_fraction: float = 0.15, test_fraction: float = 0.15, any_angle: bool = False,
                  size_range: tuple = (1.0, 1.0), variants: int = 8):
    """``n`` new blends, made as :func:`galaxy_instances` makes them, from the galaxies of one
    split's pool as ``galaxy_instances(seed=seed, ...)`` splits them (so blends of the training
    pool never hold a validation or test galaxy), drawn by a generator seeded with
    (``seed``, ``blend_seed``): fresh training images per epoch at the cost of the blending.
    Returns images [n, 1, H, W] and masks [n, 3, H, W], as in a split's TensorDataset, and the
    galaxy ids [n, 3] (catalogue index, -1 padding) as in its ``extra``.

    Geometric augmentation (off by default, so the blends look like galaxy_instances'): with
    ``any_angle`` each galaxy is also turned by a uniform random angle (not only the quarter turns
    and flips every blend gets), and its size is scaled by a log-uniform factor in ``size_range``
    (surface brightness kept, so the footprint grows with it). The pool's galaxies are resampled
    ``variants`` times each, once per call (one bilinear sampling of the native stamp, as the
    unaugmented galaxies are upsampled), and the blends draw from those variants."""
    name = "galaxy_blends"
    if split not in ("train", "val", "test"):
        raise ValueError(f"{name}: split must be 'train', 'val' or 'test', got {split!r}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name}: n must be a positive int, got {n!r}")
    blend_seed = _check_seed(name, blend_seed)
    lo, hi = (float(v) for v in size_range)
    if not 0 < lo <= hi:
        raise ValueError(f"{name}: size_range must be (low, high) with 0 < low <= high, got {size_range!r}")
    if isinstance(variants, bool) or not isinstance(variants, (int, np.integer)) or variants < 1:
        raise ValueError(f"{name}: variants must be a positive int, got {variants!r}")
    galaxies, pools, _ = _galaxy_pools(name, seed, size, zoom, noise, threshold, min_area, flux_range,
                                       three_fraction, val_fraction, test_fraction)
    rng = np.random.default_rng([seed, blend_seed])
    pool = pools[("train", "val", "test").index(split)]
    augment = any_angle or (lo, hi) != (1.0, 1.0)
    if augment:
        galaxies, source = _varied_galaxies(rng, pool, variants, size, zoom, threshold, min_area, any_angle, (lo, hi))
        pool = np.arange(len(source))
    images, masks, ids, _ = _blend(rng, pool, n, galaxies, size, noise, threshold, flux_range, three_fraction,
                                   min_pixels)
    if augment:  # variant index -> catalogue index
        ids = torch.where(ids >= 0, torch.from_numpy(source)[ids.clamp_min(0)], ids)
    return images, masks, ids


def _varied_galaxies(rng, pool, variants, size, zoom, threshold, min_area, any_angle, size_range):
    """``variants`` resampled copies of each galaxy of ``pool`` (turned by a random angle when
    ``any_angle``, sized by a log-uniform factor in ``size_range``): (light, smooth light, radius)
    as _galaxy_pools gives them, and each copy's catalogue index."""
    stamp = size // zoom
    light, smooth, areas = _find_galaxies(threshold, min_area, max_extent=stamp // 2, stamp=stamp)
    source = np.repeat(np.asarray(pool), variants)
    k = len(source)
    angle = rng.uniform(0.0, 2 * np.pi, k) if any_angle else np.zeros(k)
    lo, hi = size_range
    scale = np.exp(rng.uniform(np.log(lo), np.log(hi), k))
    # affine_grid maps output coordinates to input ones (both normalised to [-1, 1] over the
    # stamp): the inverse of "turn by angle, then scale".
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = torch.from_numpy(np.stack([np.stack([cos, -sin, np.zeros(k)], 1),
                                       np.stack([sin, cos, np.zeros(k)], 1)], 1)).float()
    native = torch.from_numpy(np.stack([light[source], smooth[source]], 1))
    grid = F.affine_grid(theta, [k, 2, size, size], align_corners=False)
    out = F.grid_sample(native, grid, mode="bilinear", padding_mode="zeros", align_corners=False).clamp_min(0.0)
    radius = np.sqrt(areas[source] / np.pi) * zoom * scale
    return (out[:, 0].numpy(), out[:, 1].numpy(), radius), source


def _galaxy_pools(name, seed, size, zoom, noise, threshold, min_area, flux_range, three_fraction,
                  val_fraction, test_fraction):
    """Checks the blending arguments; returns the found galaxies (light and smoothed light
    upsampled by ``zoom``, footprint radius in output pixels), the train / val / test pools of
    their indices, and the generator that drew the pools (galaxy_instances' blends continue it)."""
    seed = _check_seed(name, seed)
    _check_fractions(name, val_fraction, test_fraction)
    if isinstance(zoom, bool) or not isinstance(zoom, (int, np.integer)) or zoom < 1:
        raise ValueError(f"{name}: zoom must be a positive int, got {zoom!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16 or size % (2 * zoom):
        raise ValueError(f"{name}: size must be an int >= 16 divisible by 2*zoom={2 * zoom}, got {size!r}")
    if not noise >= 0:
        raise ValueError(f"{name}: noise must be >= 0, got {noise!r}")
    lo, hi = (float(v) for v in flux_range)
    if not 0 < lo <= hi:
        raise ValueError(f"{name}: flux_range must be (low, high) with 0 < low <= high, got {flux_range!r}")
    if not 0.0 <= three_fraction <= 1.0:
        raise ValueError(f"{name}: three_fraction must be in [0, 1], got {three_fraction!r}")

    stamp = size // zoom
    light, smooth, areas = _find_galaxies(threshold, min_area, max_extent=stamp // 2, stamp=stamp)
    if len(light) < 9:
        raise ValueError(f"{name}: only {len(light)} galaxies pass threshold={threshold}, min_area={min_area}")
    up = lambda a: F.interpolate(torch.from_numpy(a)[:, None], scale_factor=zoom, mode="bilinear",  # noqa: E731
                                 align_corners=False)[:, 0].numpy()
    radius = np.sqrt(areas / np.pi) * zoom  # of the footprint, in output pixels

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(light))
    n_gal = _split_counts(len(light), val_fraction, test_fraction)
    pools = np.split(order, [n_gal[0], n_gal[0] + n_gal[1]])
    return (up(light), up(smooth), radius), pools, rng


def _blend(rng, pool, count, galaxies, size, noise, threshold, flux_range, three_fraction, min_pixels):
    """``count`` images of 2 or 3 galaxies from ``pool`` (steps 2 and 3 of galaxy_instances):
    images [count, 1, H, W], masks [count, 3, H, W], galaxy ids and fluxes [count, 3] as tensors."""
    light_t, smooth_t, radius = galaxies
    lo, hi = (float(v) for v in flux_range)
    images = np.zeros((count, size, size), np.float32)
    masks = np.zeros((count, MAX_INSTANCES, size, size), np.float32)
    ids = np.full((count, MAX_INSTANCES), -1, np.int64)
    fluxes = np.zeros((count, MAX_INSTANCES), np.float32)
    for i in range(count):
        k = 3 if rng.random() < three_fraction else 2
        chosen = rng.choice(pool, size=k, replace=False)
        centres: list = []
        placed = []  # (light, mask, id, flux) of each galaxy in the frame
        for g in chosen:
            rot, flip = rng.integers(0, 4), rng.integers(0, 2)
            scale = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            lg, sg = np.rot90(light_t[g], rot), np.rot90(smooth_t[g], rot)
            if flip:
                lg, sg = lg[:, ::-1], sg[:, ::-1]
            if not centres:
                cy, cx = rng.uniform(-size / 16, size / 16, size=2)
            else:
                j = rng.integers(0, len(centres))
                dist = rng.uniform(0.3, 1.0) * (radius[g] + radius[chosen[j]])
                angle = rng.uniform(0, 2 * np.pi)
                cy, cx = centres[j][0] + dist * np.sin(angle), centres[j][1] + dist * np.cos(angle)
            centres.append((cy, cx))
            # Only the part of the stamp that stays in the frame, added where it lands (the same
            # sums as adding the zero-filled shifted stamp, without the full-frame copies).
            src, dst = _shifted_window(size, size, int(round(cy)), int(round(cx)))
            lg = lg[src] * scale
            mg = sg[src] * scale > threshold
            if mg.sum() >= min_pixels:
                placed.append((lg, mg, dst, g, float(lg.sum())))
        placed.sort(key=lambda p: -p[4])  # brightest first
        for j, (lg, mg, dst, g, flux) in enumerate(placed):
            images[i][dst] += lg
            masks[i, j][dst] = mg
            ids[i, j], fluxes[i, j] = g, flux
    if noise > 0:
        images += rng.normal(0.0, noise, size=images.shape).astype(np.float32)
    np.clip(images, 0.0, 1.0, out=images)
    return (torch.from_numpy(images).unsqueeze(1), torch.from_numpy(masks), torch.from_numpy(ids),
            torch.from_numpy(fluxes))
