"""Inpainting data: grey patches cut from scikit-image's bundled photographs, each with a hole mask.

    splits = pycnn.data.get("inpainting", seed=0)
    images, masks = splits.train.tensors     # float32 [N, 1, 64, 64] in [0, 1]; masks 1 = known, 0 = hole

Training and validation patches come from the pictures in ``TRAIN_SOURCES`` (scikit-learn's
china and flower, matplotlib's grace_hopper, scikit-image's clock, rocket, motorcycle_left, coins
and textures; all installed, never downloaded); the test split is cut from ``HELD_OUT`` (astronaut, camera, chelsea, coffee, hubble_deep_field: the same
held-out images as pycnn's super-resolution data), which are never used for training. Images are
converted to grey (ITU-R 601 luma, ``skimage.color.rgb2gray``) and patches are cut at several
scales (the image downscaled by 1, 2 and 4 with anti-aliasing).

Masks: irregular strokes (random walks of discs, as drawn by hand) and square holes, each made
to cover a chosen fraction of the patch (``HOLE_FRACTIONS``); ``extra[split]["hole_fraction"]``
and ``extra[split]["kind"]`` (0 strokes, 1 square) say which. The test split holds every test
patch with every fraction and both kinds, drawn from its own generator (the same test split
whatever the training sources and sizes). Everything is a deterministic function of ``seed``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

HELD_OUT = ("astronaut", "camera", "chelsea", "coffee", "hubble_deep_field")
# photographs first (the held-out images are photographs), then scikit-image's textures; documents
# and microscopy (page, text, retina, cell, ...) were dropped from the default: no measured change
TRAIN_SOURCES = ("china", "flower", "grace_hopper", "clock", "rocket", "motorcycle_left", "coins", "brick",
                 "grass", "gravel", "moon")
HOLE_FRACTIONS = (0.1, 0.25, 0.4, 0.5)
MASK_KINDS = ("strokes", "square")


def load_grey(name: str) -> np.ndarray:
    """A bundled picture (scikit-image's, or a photograph of ``pycnn.data.superres.PHOTO_SOURCES``:
    scikit-learn's china and flower, matplotlib's grace_hopper) as float32 grey in [0, 1] (never a
    download). scikit-image's ``cat`` is chelsea, a held-out image, and is never used."""
    import skimage.data as sd
    from skimage import color, util
    from pycnn.data.superres import PHOTO_SOURCES, load_photo
    if name == "motorcycle_left":
        img = sd.stereo_motorcycle()[0]
    elif name in PHOTO_SOURCES:
        img = load_photo(name)
    else:
        img = getattr(sd, name)()
    img = util.img_as_float32(img)
    if img.ndim == 3:
        img = color.rgb2gray(img[..., :3]).astype(np.float32)
    return img


def _pyramid(img: np.ndarray, scales=(1, 2, 4)):
    from skimage.transform import rescale
    return [img if s == 1 else rescale(img, 1 / s, anti_aliasing=True).astype(np.float32) for s in scales]


def _cut_patches(img: np.ndarray, patch: int, count: int, rng: np.random.Generator) -> np.ndarray:
    H, W = img.shape
    if H < patch or W < patch:
        return np.empty((0, patch, patch), np.float32)
    ys = rng.integers(0, H - patch + 1, count)
    xs = rng.integers(0, W - patch + 1, count)
    return np.stack([img[y:y + patch, x:x + patch] for y, x in zip(ys, xs)])


def stroke_mask(size, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """1 = known, 0 = hole: random walks of discs (varying width) until the hole covers `fraction`.

    Each walk is rasterised at once (its discs as a stack, OR-accumulated along the walk), and the
    last walk is cut at the first disc that reaches the fraction, so holes hit it within a disc."""
    H, W = size
    yy, xx = np.mgrid[0:H, 0:W]
    hole = np.zeros((H, W), bool)
    target = fraction * H * W
    scale = min(H, W) / 64
    while hole.sum() < target:
        steps = int(rng.integers(4, 12))
        angles = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.6, steps))
        ys = np.clip(rng.uniform(0, H) + np.cumsum(3 * scale * np.sin(angles)), 0, H - 1)
        xs = np.clip(rng.uniform(0, W) + np.cumsum(3 * scale * np.cos(angles)), 0, W - 1)
        radius = rng.uniform(1.5, 5.0) * scale
        discs = (yy - ys[:, None, None]) ** 2 + (xx - xs[:, None, None]) ** 2 <= radius ** 2
        grown = np.logical_or.accumulate(discs | hole, axis=0)
        reached = np.nonzero(grown.sum(axis=(1, 2)) >= target)[0]
        hole = grown[reached[0] if len(reached) else -1]
    return (~hole).astype(np.float32)


def square_mask(size, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """1 = known, 0 = hole: one square hole of `fraction` of the area at a random place."""
    H, W = size
    side = max(1, int(round(np.sqrt(fraction * H * W))))
    side = min(side, H, W)
    y, x = rng.integers(0, H - side + 1), rng.integers(0, W - side + 1)
    m = np.ones((H, W), np.float32)
    m[y:y + side, x:x + side] = 0
    return m


def make_mask(size, fraction: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind not in MASK_KINDS:
        raise ValueError(f"inpainting: mask kind must be one of {MASK_KINDS}, got {kind!r}")
    return stroke_mask(size, fraction, rng) if kind == "strokes" else square_mask(size, fraction, rng)


def _dihedral(m: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of a square mask (k in 0..7)."""
    m = np.rot90(m, k % 4)
    return np.ascontiguousarray(m.T if k >= 4 else m)


def _with_masks(patches: np.ndarray, combos, rng: np.random.Generator, bank: int = 0,
                fractions=HOLE_FRACTIONS):
    """Each patch with each (fraction, kind) of `combos`, or with one drawn at random if combos is
    None. bank > 0: stroke masks come from `bank` drawn per fraction, each in one of its 8 flips
    and rotations (drawing strokes is the slow part of building the data)."""
    images, masks, fracs, kinds = [], [], [], []
    square = patches.shape[1] == patches.shape[2]
    banks = {f: [stroke_mask(patches.shape[1:], f, rng) for _ in range(bank)] for f in fractions} if bank else {}
    for p in patches:
        choices = combos if combos is not None else [(fractions[rng.integers(len(fractions))],
                                                      MASK_KINDS[rng.integers(len(MASK_KINDS))])]
        for f, k in choices:
            images.append(p)
            if k == "strokes" and banks:
                m = banks[f][rng.integers(bank)]
                masks.append(_dihedral(m, int(rng.integers(8 if square else 1))) if square else m)
            else:
                masks.append(make_mask(p.shape, f, k, rng))
            fracs.append(f)
            kinds.append(MASK_KINDS.index(k))
    t = lambda a: torch.from_numpy(np.stack(a)).unsqueeze(1)
    return TensorDataset(t(images), t(masks)), {"hole_fraction": torch.tensor(fracs, dtype=torch.float32),
                                                 "kind": torch.tensor(kinds, dtype=torch.int64)}


def inpainting(seed: int = 0, patch: int = 64, train_patches: int = 3000, test_per_image: int = 24,
               val_fraction: float = 0.1, mask_bank: int = 64, sources=TRAIN_SOURCES, held_out=HELD_OUT,
               hole_fractions=HOLE_FRACTIONS):
    """Inpainting splits (see the module docstring). ``test_per_image`` patches per held-out image
    (24: 960 test pairs; with 8 the 25 % row of the table swung by 0.4 dB from one draw to another),
    each with every hole fraction and both mask kinds (every test mask drawn afresh); training
    stroke masks come from a bank of ``mask_bank`` per fraction, flipped and rotated.
    ``hole_fractions`` picks a subset of HOLE_FRACTIONS (the quick demo's smaller test set)."""
    from pycnn.data.datasets import Splits, _check_seed
    seed = _check_seed("inpainting", seed)
    if not isinstance(patch, int) or patch < 16:
        raise ValueError(f"inpainting: patch must be an int >= 16, got {patch!r}")
    if train_patches < 2 or test_per_image < 1:
        raise ValueError(f"inpainting: train_patches must be >= 2 and test_per_image >= 1, got "
                         f"{train_patches}, {test_per_image}")
    hole_fractions = tuple(float(f) for f in hole_fractions)
    if not hole_fractions or not set(hole_fractions) <= set(HOLE_FRACTIONS):
        raise ValueError(f"inpainting: hole_fractions must be a non-empty subset of {HOLE_FRACTIONS}, "
                         f"got {hole_fractions}")
    same = {"cat": "chelsea"}  # scikit-image's cat() is chelsea(): one picture, two names
    overlap = {same.get(n, n) for n in sources} & {same.get(n, n) for n in held_out}
    if overlap:
        raise ValueError(f"inpainting: {sorted(overlap)} are held out for testing and cannot be training sources")
    rng = np.random.default_rng(seed)
    levels = [lvl for name in sources for lvl in _pyramid(load_grey(name)) if min(lvl.shape) >= patch]
    per_level = -(-train_patches // len(levels))
    pool = np.concatenate([_cut_patches(lvl, patch, per_level, rng) for lvl in levels])
    pool = pool[rng.permutation(len(pool))[:train_patches]]
    n_val = max(1, int(round(val_fraction * len(pool))))
    train, train_extra = _with_masks(pool[n_val:], None, rng, bank=mask_bank, fractions=hole_fractions)
    combos = [(f, k) for f in hole_fractions for k in MASK_KINDS]
    val, val_extra = _with_masks(pool[:n_val], None, rng, fractions=hole_fractions)
    # the test split draws from its own generator: it does not change with the training sources or sizes
    test_rng = np.random.default_rng([seed, 1])
    test_patches = np.concatenate([_cut_patches(load_grey(name), patch, test_per_image, test_rng)
                                   for name in held_out])
    test, test_extra = _with_masks(test_patches, combos, test_rng)
    images = train.tensors[0]
    mean, std = images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3))
    return Splits(train, val, test, classes=("image",), task="inpainting", mean=mean, std=std,
                  extra={"train": train_extra, "val": val_extra, "test": test_extra},
                  info={"sources": tuple(sources), "held_out": tuple(held_out), "patch": patch,
                        "hole_fractions": hole_fractions, "mask_kinds": MASK_KINDS})
