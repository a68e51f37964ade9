"""Small real datasets that ship inside installed packages: nothing is downloaded, nothing is cached.

Every loader returns a :class:`Splits` whose ``train``/``val``/``test`` are
``torch.utils.data.TensorDataset(images, target)``:

* images: float32, NCHW, values in [0, 1] (not standardised; ``Splits.mean``/``Splits.std`` hold the
  training-split statistics for anyone who wants to standardise);
* target: int64 class labels for classification, float32 {0, 1} masks for segmentation.

Splits are deterministic functions of ``seed``. Classification splits are stratified, so every class
keeps the same share in each split.

Only images that scikit-image ships inside its wheel are used (``skimage/data/*.png`` etc.). Many
other ``skimage.data`` images are fetched with pooch on first use; those are never touched here, and
the test suite checks that no loader opens a socket.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

__all__ = ["Splits", "digits", "faces", "textures", "galaxies", "galaxy_class_map", "get", "NAMES"]


@dataclasses.dataclass(eq=False)  # tensors inside: element-wise == would not give a bool
class Splits:
    """Train / validation / test splits of one dataset.

    ``classes`` names the label values (index i is label i). For segmentation it names the mask
    channels. ``mean``/``std`` are per-channel statistics of the training images. ``extra`` holds
    additional per-split tensors keyed by split name (e.g. per-galaxy masks), aligned with the
    samples of that split.
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    classes: tuple[str, ...]
    task: str  # "classification" or "segmentation"
    mean: torch.Tensor
    std: torch.Tensor
    extra: dict[str, dict[str, torch.Tensor]] = dataclasses.field(default_factory=dict)
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    # What rebuilds these splits: ``get(name, **options)`` (a loader's name, or an image folder's path).
    name: str | None = None
    options: dict[str, Any] | None = None

    def __post_init__(self):
        # Each split carries its description (as torchvision's ImageFolder carries ``classes``), so
        # pycnn.train.fit can write it into checkpoints from the dataset alone, through
        # DataLoaders and Subsets too.
        for ds in (self.train, self.val, self.test):
            ds.classes = list(self.classes)
            ds.data_name = self.name
            ds.data_options = None if self.options is None else dict(self.options)

    @property
    def in_channels(self) -> int:
        return int(self.train.tensors[0].shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.train.tensors[0].shape[2:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


# --------------------------------------------------------------------------- helpers

def _described(name: str):
    """Decorator for a loader: the Splits it returns record ``name`` and every argument (defaults
    filled in), so that ``get(name, **splits.options)`` builds them again."""
    def wrap(loader):
        signature = inspect.signature(loader)

        @functools.wraps(loader)
        def build(*args, **kwargs):
            splits = loader(*args, **kwargs)
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return dataclasses.replace(splits, name=name, options=dict(bound.arguments))
        return build
    return wrap


def _check_fractions(name: str, val_fraction: float, test_fraction: float) -> None:
    for label, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not isinstance(f, (int, float)) or not 0.0 < f < 1.0:
            raise ValueError(f"{name}: {label} must be a number in (0, 1), got {f!r}")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"{name}: val_fraction + test_fraction must be < 1, got "
                         f"{val_fraction} + {test_fraction} = {val_fraction + test_fraction}")


def _check_seed(name: str, seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name}: seed must be a non-negative int, got {seed!r}")
    return int(seed)


def _check_size(name: str, size) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    if (not isinstance(size, (tuple, list)) or len(size) != 2
            or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size)):
        raise ValueError(f"{name}: size must be a positive int or a pair of positive ints, got {size!r}")
    return int(size[0]), int(size[1])


def _split_counts(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """Counts (train, val, test) summing to n; val and test get at least one item when n >= 3."""
    n_val = int(round(n * val_fraction))
    n_test = int(round(n * test_fraction))
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    return n - n_val - n_test, n_val, n_test


def _stratified_indices(labels: np.ndarray, seed: int, val_fraction: float, test_fraction: float
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays (train, val, test), disjoint, each keeping every class's share."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n_train, n_val, _ = _split_counts(len(idx), val_fraction, test_fraction)
        parts[0].append(idx[:n_train])
        parts[1].append(idx[n_train:n_train + n_val])
        parts[2].append(idx[n_train + n_val:])
    # Shuffle within each split so classes are interleaved (a DataLoader without shuffle still
    # sees mixed batches).
    return tuple(np.sort(np.concatenate(p))[rng.permutation(sum(len(q) for q in p))] for p in parts)


def _resize(images: torch.Tensor, size: tuple[int, int] | None, mode: str, name: str) -> torch.Tensor:
    if size is None or tuple(images.shape[-2:]) == size:
        return images
    if mode not in ("bilinear", "nearest", "bicubic", "area"):
        raise ValueError(f"{name}: mode must be 'bilinear', 'nearest', 'bicubic' or 'area', got {mode!r}")
    kwargs = {} if mode in ("nearest", "area") else {"align_corners": False}
    out = F.interpolate(images, size=size, mode=mode, **kwargs)
    return out.clamp_(0.0, 1.0)  # bicubic overshoots; keep the documented [0, 1] range


def _channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = images.double()
    return x.mean(dim=(0, 2, 3)).float(), x.std(dim=(0, 2, 3)).float()


def _classification_splits(images: torch.Tensor, labels: np.ndarray, classes: Sequence[str], seed: int,
                           val_fraction: float, test_fraction: float, info: dict) -> Splits:
    idx = _stratified_indices(labels, seed, val_fraction, test_fraction)
    y = torch.as_tensor(labels, dtype=torch.int64)
    sets = [TensorDataset(images[torch.as_tensor(i)].contiguous(), y[torch.as_tensor(i)]) for i in idx]
    mean, std = _channel_stats(sets[0].tensors[0])
    info = dict(info, indices={k: torch.as_tensor(i) for k, i in zip(("train", "val", "test"), idx)})
    return Splits(*sets, classes=tuple(classes), task="classification", mean=mean, std=std, info=info)


# --------------------------------------------------------------------------- digits

@_described("digits")
def digits(seed: int = 0, size: int | tuple[int, int] | None = None, mode: str = "bilinear",
           val_fraction: float = 0.15, test_fraction: float = 0.15) -> Splits:
    """scikit-learn's handwritten digits: 1797 grey images, 8x8, 10 classes ("0".."9").

    Pixel values 0..16 are scaled to [0, 1]. ``size`` (e.g. 28 or 32, for LeNet-5) upsamples with
    ``torch.nn.functional.interpolate(mode=mode)``. Stratified split, default 1257 / 270 / 270.
    """
    seed = _check_seed("digits", seed)
    size = _check_size("digits", size)
    _check_fractions("digits", val_fraction, test_fraction)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = _resize(images, size, mode, "digits")
    return _classification_splits(images, np.asarray(bunch.target), [str(d) for d in range(10)], seed,
                                  val_fraction, test_fraction, {"source": "sklearn.datasets.load_digits"})


# --------------------------------------------------------------------------- faces

@_described("faces")
def faces(seed: int = 0, size: int | tuple[int, int] | None = None, mode: str = "bilinear",
          val_fraction: float = 0.15, test_fraction: float = 0.15) -> Splits:
    """Faces vs non-faces from ``skimage.data.lfw_subset()``: 200 grey images, 25x25.

    The skimage documentation states the first 100 images are faces and the last 100 non-faces
    (background patches from the same photographs). Labels: 0 = "non_face", 1 = "face".
    Stratified split, default 140 / 30 / 30.
    """
    seed = _check_seed("faces", seed)
    size = _check_size("faces", size)
    _check_fractions("faces", val_fraction, test_fraction)
    from skimage.data import lfw_subset

    raw = np.asarray(lfw_subset(), dtype=np.float32)
    if raw.max() > 1.0:  # documented as uint8 in some versions, float in [0, 1] in others
        raw = raw / 255.0
    images = _resize(torch.from_numpy(raw).unsqueeze(1), size, mode, "faces")
    labels = np.r_[np.ones(100, np.int64), np.zeros(len(raw) - 100, np.int64)]
    return _classification_splits(images, labels, ("non_face", "face"), seed, val_fraction, test_fraction,
                                  {"source": "skimage.data.lfw_subset"})


# --------------------------------------------------------------------------- textures

# Grey 512x512 images shipped in the scikit-image wheel (no pooch). "moon" is a lunar-surface
# photograph: mostly smooth regolith with craters, a fourth, distinct texture.
TEXTURE_SOURCES = ("brick", "grass", "gravel", "moon")


@_described("textures")
def textures(seed: int = 0, patch: int = 32, per_class: int = 300, sources: Sequence[str] = TEXTURE_SOURCES,
             val_fraction: float = 0.15, test_fraction: float = 0.15) -> Splits:
    """Texture patches (patch x patch, grey) cut from scikit-image's brick, grass, gravel, moon images.

    One class per source image. To keep the splits free of leakage, each image is tiled into
    blocks of side ``2 * patch``; the blocks are dealt to train / val / test (seeded, by the
    fractions), and every patch lies entirely inside one block, at a random offset. Patches of
    different splits therefore never share a pixel. ``per_class`` patches per class in total,
    shared out by the fractions (default 210 / 45 / 45 per class).
    """
    seed = _check_seed("textures", seed)
    _check_fractions("textures", val_fraction, test_fraction)
    if isinstance(patch, bool) or not isinstance(patch, (int, np.integer)) or patch < 4:
        raise ValueError(f"textures: patch must be an int >= 4, got {patch!r}")
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 3:
        raise ValueError(f"textures: per_class must be an int >= 3, got {per_class!r}")
    sources = tuple(sources)
    unknown = [s for s in sources if s not in TEXTURE_SOURCES]
    if unknown or len(sources) < 2 or len(set(sources)) != len(sources):
        raise ValueError(f"textures: sources must be >= 2 distinct names from {TEXTURE_SOURCES}, got {sources!r}")
    import skimage.data

    block = 2 * patch
    rng = np.random.default_rng(seed)
    counts = _split_counts(per_class, val_fraction, test_fraction)
    split_images: list[list[np.ndarray]] = [[], [], []]
    split_labels: list[list[np.ndarray]] = [[], [], []]
    split_origins: list[list[np.ndarray]] = [[], [], []]  # (top, left) of each patch in its image
    for label, name in enumerate(sources):
        img = np.asarray(getattr(skimage.data, name)(), dtype=np.float32)
        if img.ndim == 3:
            img = img[..., :3].mean(-1)
        img = img / 255.0
        by, bx = img.shape[0] // block, img.shape[1] // block
        if by * bx < 3:
            raise ValueError(f"textures: patch={patch} too large for the {img.shape} '{name}' image "
                             f"(needs at least 3 blocks of {block}x{block})")
        order = rng.permutation(by * bx)
        n_blocks = _split_counts(by * bx, val_fraction, test_fraction)
        start = 0
        for s in range(3):
            blocks = order[start:start + n_blocks[s]]
            start += n_blocks[s]
            # Round-robin over the split's blocks, random offset inside each block.
            chosen = blocks[np.arange(counts[s]) % len(blocks)]
            oy = (chosen // bx) * block + rng.integers(0, block - patch + 1, size=counts[s])
            ox = (chosen % bx) * block + rng.integers(0, block - patch + 1, size=counts[s])
            rows = oy[:, None, None] + np.arange(patch)[None, :, None]
            cols = ox[:, None, None] + np.arange(patch)[None, None, :]
            split_images[s].append(img[rows, cols])
            split_labels[s].append(np.full(counts[s], label, np.int64))
            split_origins[s].append(np.stack([oy, ox], 1).astype(np.int64))

    sets, origins = [], {}
    for s, split in enumerate(("train", "val", "test")):
        x = torch.from_numpy(np.concatenate(split_images[s])).unsqueeze(1)
        y = torch.from_numpy(np.concatenate(split_labels[s]))
        perm = torch.from_numpy(rng.permutation(len(y)))
        sets.append(TensorDataset(x[perm].contiguous(), y[perm]))
        origins[split] = torch.from_numpy(np.concatenate(split_origins[s]))[perm]
    mean, std = _channel_stats(sets[0].tensors[0])
    return Splits(*sets, classes=sources, task="classification", mean=mean, std=std,
                  info={"source": "skimage.data." + "/".join(sources), "patch": patch, "block": block,
                        "origins": origins})


# --------------------------------------------------------------------------- galaxies

def galaxy_class_map(masks: torch.Tensor) -> torch.Tensor:
    """Per-pixel classes from per-galaxy masks [N, 2, H, W] -> int64 [N, H, W]:
    0 background, 1 galaxy A only, 2 galaxy B only, 3 both (overlap)."""
    if masks.ndim != 4 or masks.shape[1] != 2:
        raise ValueError(f"galaxy_class_map: masks must be [N, 2, H, W], got {tuple(masks.shape)}")
    m = masks > 0.5
    return m[:, 0].long() + 2 * m[:, 1].long()


def deep_field_grey() -> np.ndarray:
    """The Hubble eXtreme Deep Field (``skimage.data.hubble_deep_field``) as grey float32 [H, W] in
    [0, 1]: the channel mean, as the galaxy data sets and the detection demo's field figure read it."""
    import skimage.data
    return (np.asarray(skimage.data.hubble_deep_field(), dtype=np.float32) / 255.0).mean(-1)


@functools.lru_cache(maxsize=4)  # seconds of image analysis; galaxies and galaxy_instances share it
def _find_galaxies(threshold: float, min_area: int, max_extent: int, stamp: int):
    """Isolated galaxy stamps (light, footprint) from the Hubble eXtreme Deep Field image (cached:
    callers must not modify the arrays).

    light: the galaxy's background-subtracted grey light, zero outside its footprint grown by a few
    pixels (so neighbours are removed but faint wings are kept). footprint: the smoothed light of
    the connected component above ``threshold`` (its isophotal area), see below.
    """
    from scipy import ndimage
    from skimage import filters, measure

    grey = deep_field_grey()
    # The sky is not black (median ~0.05 with noise); subtract it so galaxy light adds linearly.
    light = np.clip(grey - np.median(grey), 0.0, None)
    smooth = filters.gaussian(light, sigma=1.0, preserve_range=True)
    labels = measure.label(smooth > threshold)
    half = stamp // 2
    halo = ndimage.generate_binary_structure(2, 1)
    ring = ndimage.generate_binary_structure(2, 2)  # 8-connected, like measure.label's default
    lights, footprints, areas = [], [], []
    for region in measure.regionprops(labels):
        y0, x0, y1, x1 = region.bbox
        if region.area < min_area or max(y1 - y0, x1 - x0) > max_extent:
            continue
        cy, cx = (int(round(c)) for c in region.centroid)
        if cy - half < 0 or cx - half < 0 or cy + half > grey.shape[0] or cx + half > grey.shape[1]:
            continue  # stamp would leave the image
        win = (slice(cy - half, cy + half), slice(cx - half, cx + half))
        foot = labels[win] == region.label
        others = (labels[win] > 0) & ~foot
        keep = ndimage.binary_dilation(foot, structure=halo, iterations=3) & ~ndimage.binary_dilation(
            others, structure=halo, iterations=1)
        lights.append(np.where(keep, light[win], 0.0))
        # The smoothed light of this galaxy alone, in its footprint plus a one-pixel ring. Every ring
        # pixel is <= threshold (else the 8-connected component would include it), so thresholding
        # this at native resolution gives back the footprint exactly, and thresholding its bilinear
        # upsampling gives the same footprint with smooth, not blocky, edges.
        footprints.append(np.where(ndimage.binary_dilation(foot, structure=ring), smooth[win], 0.0))
        areas.append(region.area)
    return np.stack(lights).astype(np.float32), np.stack(footprints).astype(np.float32), np.asarray(areas)


def _shifted_window(h: int, w: int, dy: int, dx: int) -> tuple:
    """(source, destination) slices of an h x w plane moved by (dy, dx) pixels: the part that stays
    in the frame, and where it lands."""
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    return (ys, xs), (yd, xd)


def _shift(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """a moved by (dy, dx) pixels, zero filled (no wrap-around)."""
    out = np.zeros_like(a)
    src, dst = _shifted_window(*a.shape[-2:], dy, dx)
    out[(..., *dst)] = a[(..., *src)]
    return out


@_described("galaxies")
def galaxies(seed: int = 0, n: int = 1200, size: int = 64, zoom: int = 2, noise: float = 0.01,
             target: str = "union", threshold: float = 0.1, min_area: int = 40,
             val_fraction: float = 0.15, test_fraction: float = 0.15) -> Splits:
    """Blended galaxy pairs for segmentation (deblending), built from ``skimage.data.hubble_deep_field``.

    Construction (deterministic from ``seed``):

    1. Grey Hubble image, sky median subtracted, Gaussian-smoothed (sigma 1) and thresholded at
       ``threshold``; connected components (``skimage.measure``) with area >= ``min_area`` that fit
       in half a stamp are the galaxies (189 with the defaults: 133 / 28 / 28 per split). Each is
       cut out as a ``size // zoom`` stamp around its centroid; neighbours are blanked; its footprint (the
       thresholded component) is its mask. Stamps are upsampled ``zoom`` times (bilinear light;
       mask re-thresholded from the upsampled smoothed light, so its edges are smooth, not
       blocky) so galaxies span ~10-60 pixels of a ``size`` image.
    2. The galaxy list is split into train / val / test pools first, so test galaxies are never seen
       in training.
    3. Each sample blends two distinct galaxies of its pool, each randomly flipped/rotated by a
       multiple of 90 degrees, with centres offset by 0.3-1.0 times the sum of their radii in a
       random direction (so they usually overlap), added, plus Gaussian noise of std ``noise``,
       clipped to [0, 1]. Galaxy A is the one with more total light.

    Targets (``target``): "union" (default) -> float32 [N, 1, H, W] foreground = A or B: binary
    segmentation, the simple learnable task. "masks" -> float32 [N, 2, H, W] (A, B). "class_map"
    -> int64 [N, H, W] with 0 background, 1 A only, 2 B only, 3 overlap. Whatever ``target`` is,
    ``Splits.extra[split]["masks"]`` holds the per-galaxy masks (class map:
    :func:`galaxy_class_map`) and ``["galaxy_ids"]`` the [N, 2] catalogue indices blended (A, B).
    Images are float32 [N, 1, H, W] in [0, 1].

    Why union by default: a fixed 5x5-ish smoothing plus a threshold already reaches test IoU ~0.94
    on it, so a small U-Net clears 0.85 comfortably; telling A from B in the overlap is the harder,
    optional task.
    """
    seed = _check_seed("galaxies", seed)
    _check_fractions("galaxies", val_fraction, test_fraction)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 3:
        raise ValueError(f"galaxies: n must be an int >= 3, got {n!r}")
    if isinstance(zoom, bool) or not isinstance(zoom, (int, np.integer)) or zoom < 1:
        raise ValueError(f"galaxies: zoom must be a positive int, got {zoom!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 16 or size % (2 * zoom):
        raise ValueError(f"galaxies: size must be an int >= 16 divisible by 2*zoom={2 * zoom}, got {size!r}")
    if target not in ("union", "masks", "class_map"):
        raise ValueError(f"galaxies: target must be 'union', 'masks' or 'class_map', got {target!r}")
    if not noise >= 0:
        raise ValueError(f"galaxies: noise must be >= 0, got {noise!r}")

    stamp = size // zoom
    light, foot, areas = _find_galaxies(threshold, min_area, max_extent=stamp // 2, stamp=stamp)
    if len(light) < 6:
        raise ValueError(f"galaxies: only {len(light)} galaxies pass threshold={threshold}, min_area={min_area}")
    light_t = F.interpolate(torch.from_numpy(light)[:, None], scale_factor=zoom, mode="bilinear",
                            align_corners=False)[:, 0].numpy()
    foot_t = F.interpolate(torch.from_numpy(foot.astype(np.float32))[:, None], scale_factor=zoom,
                           mode="bilinear", align_corners=False)[:, 0].numpy()
    foot_t = (foot_t > threshold).astype(np.float32)
    radius = np.sqrt(areas / np.pi) * zoom  # of the footprint, in output pixels

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(light))
    n_gal = _split_counts(len(light), val_fraction, test_fraction)
    pools = np.split(order, [n_gal[0], n_gal[0] + n_gal[1]])
    n_pairs = _split_counts(n, val_fraction, test_fraction)

    sets, extra = [], {}
    for split, pool, count in zip(("train", "val", "test"), pools, n_pairs):
        images = np.empty((count, size, size), np.float32)
        masks = np.empty((count, 2, size, size), np.float32)
        members = np.empty((count, 2), np.int64)  # which catalogue galaxies were blended
        for i in range(count):
            a, b = rng.choice(pool, size=2, replace=False)
            pair_light, pair_mask = [], []
            for g in (a, b):
                k, flip = rng.integers(0, 4), rng.integers(0, 2)
                lg, mg = np.rot90(light_t[g], k), np.rot90(foot_t[g], k)
                if flip:
                    lg, mg = lg[:, ::-1], mg[:, ::-1]
                pair_light.append(lg)
                pair_mask.append(mg)
            # Offset between centres, split evenly around a jittered image centre.
            dist = rng.uniform(0.3, 1.0) * (radius[a] + radius[b])
            angle = rng.uniform(0, 2 * np.pi)
            jy, jx = rng.integers(-size // 16, size // 16 + 1, size=2)
            dy, dx = dist * np.sin(angle) / 2, dist * np.cos(angle) / 2
            shifts = [(int(round(jy - dy)), int(round(jx - dx))), (int(round(jy + dy)), int(round(jx + dx)))]
            moved_l = [_shift(np.ascontiguousarray(l), *s) for l, s in zip(pair_light, shifts)]
            moved_m = [_shift(np.ascontiguousarray(m), *s) for m, s in zip(pair_mask, shifts)]
            if moved_l[1].sum() > moved_l[0].sum():  # A = the brighter galaxy
                moved_l, moved_m, (a, b) = moved_l[::-1], moved_m[::-1], (b, a)
            members[i] = a, b
            images[i] = moved_l[0] + moved_l[1]
            masks[i, 0], masks[i, 1] = moved_m
        if noise > 0:
            images += rng.normal(0.0, noise, size=images.shape).astype(np.float32)
        np.clip(images, 0.0, 1.0, out=images)
        x = torch.from_numpy(images).unsqueeze(1)
        m = torch.from_numpy(masks)
        if target == "union":
            y = m.amax(dim=1, keepdim=True)
        elif target == "masks":
            y = m
        else:
            y = galaxy_class_map(m)
        sets.append(TensorDataset(x, y))
        extra[split] = {"masks": m, "galaxy_ids": torch.from_numpy(members)}
    mean, std = _channel_stats(sets[0].tensors[0])
    classes = {"union": ("galaxy",), "masks": ("galaxy_a", "galaxy_b"),
               "class_map": ("background", "a_only", "b_only", "overlap")}[target]
    return Splits(*sets, classes=classes, task="segmentation", mean=mean, std=std, extra=extra,
                  info={"source": "skimage.data.hubble_deep_field", "galaxies": {
                      k: int(len(p)) for k, p in zip(("train", "val", "test"), pools)}, "target": target})


# --------------------------------------------------------------------------- registry

def _inpainting(**kwargs) -> Splits:
    from pycnn.data.inpainting import inpainting  # its own module: masks, held-out images
    return inpainting(**kwargs)


_LOADERS: dict[str, Callable[..., Splits]] = {
    "digits": digits, "faces": faces, "textures": textures, "galaxies": galaxies,
    "inpainting": _inpainting,
}


def _super_resolution(**kwargs) -> Splits:
    from pycnn.data.superres import super_resolution  # imports this module: loaded on first use
    return super_resolution(**kwargs)


_LOADERS["super_resolution"] = _super_resolution

from pycnn.data.instances import galaxy_instances  # noqa: E402  (built on the galaxy helpers above)
_LOADERS["galaxy_instances"] = galaxy_instances
NAMES: tuple[str, ...] = tuple(_LOADERS)


def get(name: str, **kwargs) -> Splits:
    """Build a dataset by name (one of :data:`NAMES`) or from a folder of images (a path:
    :func:`pycnn.data.image_folder`); keyword arguments go to its loader. A name wins over a
    folder of the same name in the working directory: write ``./digits`` for the folder."""
    if name in _LOADERS:
        return _LOADERS[name](**kwargs)
    if isinstance(name, (str, os.PathLike)) and os.path.isdir(name):
        from pycnn.data.folder import image_folder
        return image_folder(name, **kwargs)
    raise ValueError(f"pycnn.data.get: unknown dataset {name!r}; choose from {NAMES} or give a folder of images")
