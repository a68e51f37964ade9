"""Super-resolution data from the photographs and scientific images bundled with scikit-image.

One resize function does every down- and upscaling in pycnn's super-resolution (training pairs,
the bicubic baseline, SRCNN's input, ``pycnn upscale``'s colour channels): :func:`bicubic_resize`,
bicubic interpolation as MATLAB's ``imresize`` does it and SRCNN/ESPCN/FSRCNN were evaluated with:
Keys' cubic convolution kernel with a = -0.5, pixel centres aligned (high-res pixel o sits at
low-res coordinate (o + 0.5) / scale - 0.5). When downscaling, the kernel is **stretched by the
scale** (4 * scale taps, weights K(d / scale) / scale): that is its anti-aliasing, a low-pass
matched to the new sampling rate. Edge pixels are repeated beyond the border (MATLAB mirrors
them; only the outermost 1-2 pixels differ, which the metric's border crop removes). Output
clipped to [0, 1]. A high-resolution image is first cropped at the bottom and right to a
multiple of ``scale`` (:func:`mod_crop`), so its low-resolution version is exactly ``scale``
times smaller and pixel grids line up.

Why not ``skimage.transform.resize(order=3, anti_aliasing=True)`` (used until 2026-11-30): its
Gaussian pre-blur of sigma (scale - 1) / 2 (0.5 at x2) hardly attenuates what the smaller grid
cannot hold, so the low-res images were aliased rather than blurred, and its cubic-*spline*
upsampling is already close to the best linear upsampler for them. Measured on the held-out
images at x2: the best 7x7 linear filter on the upsampled image, fitted on those very images,
gained only +0.31 dB over that baseline (+1.07 dB with this resize), and ESPCN trained for the
same 750 steps gained +0.20 dB there and +1.06 dB here. Aliasing cannot be told apart from
detail, so no amount of training would have reached SRCNN-like gains on that degradation.

Models and metrics work on the luma Y of YCbCr (ITU-R BT.601, studio range:
Y = 16/255 + (65.481 R + 128.553 G + 24.966 B) / 255 for R, G, B in [0, 1], :func:`rgb_to_y`),
where the eye sees detail; grey images are R = G = B. As in SRCNN's evaluation code, the Y channel
is taken first and then resized (:func:`degrade`): high-res Y -> low-res Y -> bicubic Y.

Held-out test images (whole, never used for training or validation, here or in inpainting):
**astronaut, camera, chelsea, coffee, hubble_deep_field** (``TEST_SOURCES``). Training and
validation patches come from other images (``TRAIN_SOURCES``, all offline): scikit-image's brick,
grass, gravel, moon, coins, page, text, rocket, retina, immunohistochemistry, cell, microaneurysms
and the left view of stereo_motorcycle, and three photographs that ship inside other installed
packages (``PHOTO_SOURCES``): scikit-learn's sample images china and flower
(``sklearn/datasets/images``) and matplotlib's grace_hopper (``mpl-data/sample_data``). Left out:
clock (motion-blurred on purpose), checkerboard and logo (synthetic), horse (binary), lfw_subset
(25 x 25), and skimage's ``cat``, which is chelsea.

The default sources (``DEFAULT_SOURCES``) are photographs (``PHOTOGRAPHS``: the three above,
rocket and stereo_motorcycle) with grass, brick and coins for texture. The held-out images are
photographs; the microscopy, text and page images teach detail they do not have. Measured
(ESPCN x2 with ReLU, 300 steps of 32, seed 0, mean PSNR-Y gain over bicubic on the held-out
images): +0.97 dB on the 13 scikit-image images, +1.08 with the three photographs added, +1.19 on
the default sources, +1.19 on ``PHOTOGRAPHS`` alone (+1.14 without grace_hopper, whose JPEG is
coarse). ESPCN's published tanh hardly cares (+1.12 on the 13, +0.96 on ``PHOTOGRAPHS``): it
learns little more than a linear filter in that time, ReLU the photographs' edges. Longer runs
(2500 steps of 16) split by scale: x2 +1.42 dB on ``PHOTOGRAPHS`` vs +1.32 on the default, x3
+0.75 vs +0.92. Those comparisons were scored on the held-out test images; the choice now rests
on the validation images (``VALIDATION_SOURCES``), which prefer the default sources at every scale
(ESPCN with ReLU, trained without the two: x2 +1.54 dB vs +1.21 on the photographs, x3 +0.92 vs
+0.66, x4 +0.63 vs +0.42; README, "Choosing on validation images").
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import TensorDataset

from pycnn.data.datasets import Splits, _check_seed

__all__ = ["super_resolution", "bicubic_resize", "cubic_kernel", "mod_crop", "downscale", "degrade", "rgb_to_y", "load_image",
           "load_photo", "test_images", "whole_images", "without_validation", "TRAIN_SOURCES", "PHOTO_SOURCES", "PHOTOGRAPHS",
           "DEFAULT_SOURCES", "TEST_SOURCES", "VALIDATION_SOURCES"]

TEST_SOURCES = ("astronaut", "camera", "chelsea", "coffee", "hubble_deep_field")
# Photographs that ship inside other installed packages (no download): scikit-learn's sample
# images and matplotlib's sample data. Natural photos like the held-out set.
PHOTO_SOURCES = ("china", "flower", "grace_hopper")
# Every image training and validation patches may come from.
TRAIN_SOURCES = ("brick", "grass", "gravel", "moon", "coins", "page", "text", "rocket", "retina",
                 "immunohistochemistry", "cell", "microaneurysms", "stereo_motorcycle") + PHOTO_SOURCES
# Photographs only: those three with scikit-image's rocket and stereo_motorcycle.
PHOTOGRAPHS = PHOTO_SOURCES + ("rocket", "stereo_motorcycle")
# The default: the photographs and a few textures (see the module's notes for the measurements).
DEFAULT_SOURCES = PHOTOGRAPHS + ("grass", "brick", "coins")
# The validation images for choosing a configuration (sources, activation, steps, model): two of the
# photographs, whole. While choosing, training leaves them out (:func:`without_validation`) and the
# choice is scored on them alone, never on ``TEST_SOURCES``; the chosen configuration is then
# trained on its full sources, these two included, and measured once on the test images.
VALIDATION_SOURCES = ("flower", "rocket")
_PHOTO_FILES = {"china": ("sklearn", "china.jpg"), "flower": ("sklearn", "flower.jpg"),
                "grace_hopper": ("matplotlib", "grace_hopper.jpg")}
SCALES = (2, 3, 4)


def _check_scale(name: str, scale) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale not in SCALES:
        raise ValueError(f"{name}: scale must be one of {SCALES}, got {scale!r}")
    return int(scale)


def cubic_kernel(d: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel at distances ``d`` (a = -0.5: MATLAB's and PIL's bicubic)."""
    d = np.abs(d)
    return np.where(d < 1, (a + 2) * d ** 3 - (a + 3) * d ** 2 + 1,
                    np.where(d < 2, a * (d ** 3 - 5 * d ** 2 + 8 * d - 4), 0.0))


def _cubic_taps(n_in: int, n_out: int):
    """(indices, weights), each n_out x taps: output pixel o of one axis is
    sum_k weights[o, k] * input[indices[o, k]]. Pixel centres aligned; shrinking stretches the
    kernel by n_in / n_out (anti-aliasing); indices past the border repeat the edge pixel."""
    factor = n_out / n_in
    stretch = max(1.0, 1.0 / factor)  # the kernel's width in input pixels is 4 * stretch
    u = (np.arange(n_out) + 0.5) / factor - 0.5  # each output centre in input coordinates
    first = np.floor(u - 2 * stretch).astype(np.int64) + 1
    idx = first[:, None] + np.arange(int(np.ceil(4 * stretch)) + 1)[None, :]
    w = cubic_kernel((u[:, None] - idx) / stretch) / stretch
    w /= w.sum(axis=1, keepdims=True)  # exact for integer factors; keeps flat areas flat otherwise
    return np.clip(idx, 0, n_in - 1), w


def bicubic_resize(image: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``image`` (H x W or H x W x C, float in [0, 1]) resized to ``shape`` (rows, cols) by bicubic
    interpolation (Keys, a = -0.5), the kernel stretched when shrinking (anti-aliasing), rows then
    columns. The one resize of pycnn's super-resolution; float32 out, clipped to [0, 1]."""
    image = np.asarray(image, dtype=np.float32)
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"bicubic_resize: shape must be two positive sizes, got {shape!r}")
    if image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
        raise ValueError(f"bicubic_resize: image must be H x W or H x W x C, got shape {image.shape}")
    x = image.astype(np.float64)
    for axis, n_out in enumerate(shape):
        if n_out == x.shape[axis]:
            continue  # same size: the aligned kernel samples the pixels themselves
        idx, w = _cubic_taps(x.shape[axis], n_out)
        column = (-1,) + (1,) * (x.ndim - 1 - axis)  # broadcasts the weights along this axis
        out = np.zeros(x.shape[:axis] + (n_out,) + x.shape[axis + 1:])
        for k in range(idx.shape[1]):  # one gather per tap: memory stays a few image sizes
            out += np.take(x, idx[:, k], axis=axis) * w[:, k].reshape(column)
        x = out
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def mod_crop(image: np.ndarray, scale: int) -> np.ndarray:
    """``image`` cropped at the bottom and right so both sides are multiples of ``scale``."""
    h, w = image.shape[0] - image.shape[0] % scale, image.shape[1] - image.shape[1] % scale
    if h < scale or w < scale:
        raise ValueError(f"mod_crop: image {image.shape[:2]} is smaller than scale {scale}")
    return image[:h, :w]


def downscale(high_res: np.ndarray, scale: int) -> np.ndarray:
    """The low-resolution input for an image whose sides are multiples of ``scale``."""
    h, w = high_res.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f"downscale: image {h} x {w} is not a multiple of scale {scale}; mod_crop it first")
    return bicubic_resize(high_res, (h // scale, w // scale))


def rgb_to_y(image) -> np.ndarray:
    """BT.601 luma in [16/255, 235/255] of an RGB (H x W x 3) or grey (H x W) image in [0, 1]."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        return (16.0 + 219.0 * image) / 255.0
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"rgb_to_y: expected H x W x 3 or H x W, got shape {image.shape}")
    return (16.0 + image @ np.array([65.481, 128.553, 24.966], np.float32)) / 255.0


def load_image(name: str) -> np.ndarray:
    """A bundled scikit-image image as float32 in [0, 1]: H x W (grey) or H x W x 3 (RGB)."""
    import skimage.data
    if name not in TRAIN_SOURCES + TEST_SOURCES:
        raise ValueError(f"super_resolution: unknown source image {name!r}")
    img = load_photo(name) if name in PHOTO_SOURCES else getattr(skimage.data, name)()
    if name == "stereo_motorcycle":
        img = img[0]  # (left, right, disparity): the right view is nearly the same picture
    return np.asarray(img, dtype=np.float32) / 255.0


def load_photo(name: str) -> np.ndarray:
    """One of ``PHOTO_SOURCES`` as read (uint8 RGB) from the package that ships it (a clear error if
    missing); the inpainting data reads them through here too."""
    import os
    import skimage.io
    package, filename = _PHOTO_FILES[name]
    try:
        if package == "sklearn":
            import sklearn.datasets
            path = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", filename)
        else:
            import matplotlib
            path = os.path.join(matplotlib.get_data_path(), "sample_data", filename)
    except ImportError as e:
        raise ImportError(f"super_resolution: training image {name!r} ships with {package}, which is not "
                          f"installed (pip install pycnn[data])") from e
    return skimage.io.imread(path)


def degrade(high_res_y: np.ndarray, scale: int):
    """(high-resolution Y cropped to a multiple of ``scale``, its low-resolution version, that
    upsampled again: the bicubic baseline and SRCNN's input). The one protocol for training pairs,
    the baseline and the metrics; like SRCNN's evaluation code, it resizes the Y channel."""
    hr = mod_crop(np.asarray(high_res_y, dtype=np.float32), scale)
    lr = downscale(hr, scale)
    return hr, lr, bicubic_resize(lr, hr.shape)


@functools.lru_cache(maxsize=64)
def _pair(name: str, scale: int):
    """(high-resolution Y, bicubic-upsampled Y, low-resolution Y) of one source image, cached: every
    loader call at a scale needs all of them, and resizing the 1411 x 1411 retina takes a second."""
    hr, lr, bic = degrade(rgb_to_y(load_image(name)), scale)
    return hr, bic, lr


def test_images(names: Sequence[str] = TEST_SOURCES) -> list:
    """The held-out images as (name, RGB or grey float32 image in [0, 1]): what
    :func:`pycnn.superres.evaluate` measures on, through :func:`degrade` of their Y."""
    unknown = [n for n in names if n not in TEST_SOURCES]
    if unknown:
        raise ValueError(f"test_images: {unknown} are not held-out test images {TEST_SOURCES}")
    return [(n, load_image(n)) for n in names]


def whole_images(names: Sequence[str]) -> list:
    """Whole images for measuring a model, as (name, RGB or grey float32 image in [0, 1]): the
    held-out test images or the validation images (``VALIDATION_SOURCES``), nothing else."""
    allowed = TEST_SOURCES + VALIDATION_SOURCES
    unknown = [n for n in names if n not in allowed]
    if unknown or not len(names):
        raise ValueError(f"whole_images: {unknown or 'no names'} are not test {TEST_SOURCES} or validation "
                         f"{VALIDATION_SOURCES} images")
    return [(n, load_image(n)) for n in names]


def without_validation(sources) -> tuple:
    """``sources`` (names or a named set, as for :func:`super_resolution`) less the validation
    images: the training sources while a configuration is being chosen on ``VALIDATION_SOURCES``."""
    return tuple(n for n in _named_sources(sources) if n not in VALIDATION_SOURCES)


def _named_sources(sources) -> tuple:
    if isinstance(sources, str):  # a named set (the command line's --data-option sources=photographs) or one image
        sources = {"photographs": PHOTOGRAPHS, "default": DEFAULT_SOURCES, "all": TRAIN_SOURCES}.get(sources, (sources,))
    return tuple(sources)


def _blocks(shape, block: int) -> int:
    return (shape[0] // block) * (shape[1] // block)


def _cut(image: np.ndarray, top: np.ndarray, left: np.ndarray, size: int, factor: int = 1) -> np.ndarray:
    """Patches [N, size // factor, size // factor] at high-res corners (top, left) of a high-res
    (factor 1) or low-res (factor = scale) image."""
    s = size // factor
    windows = np.lib.stride_tricks.sliding_window_view(image, (s, s))  # a view: nothing copied yet
    return windows[top // factor, left // factor]


def super_resolution(scale: int = 2, seed: int = 0, patch: int = 48, n_train: int = 8000, n_val: int = 500,
                     input: str = "low_res", min_std: float = 0.01, sources: Sequence[str] = DEFAULT_SOURCES,
                     test_split: bool = True) -> Splits:
    """Pairs (input, high-resolution Y patch) for learning to upscale ``scale`` times.

    Each training image is tiled into blocks of ``2 * patch`` pixels; about 10 % of the blocks
    (seeded) go to validation, and every patch lies inside one block at a random offset that is a
    multiple of ``scale``, so training and validation never share a pixel. Patches whose
    high-resolution Y has a standard deviation below ``min_std`` (flat sky, the black around the
    retina) are skipped: there is nothing to upscale in them. The patch count is shared equally
    between the images that have room for it.

    input: "low_res" (the downscaled Y, patch // scale on a side: espcn, fsrcnn) or "bicubic" (that
    image upsampled again by :func:`bicubic_resize`, patch on a side: srcnn). Targets: float32
    [N, 1, patch, patch]. Inputs are cut from whole downscaled images, so a patch's borders see
    the same pixels as the whole image's would. ``sources``: a subset of ``TRAIN_SOURCES`` (the quick
    demo uses a few small images; resizing the others takes seconds), or "photographs"
    (``PHOTOGRAPHS``), "default" (``DEFAULT_SOURCES``), "all" (``TRAIN_SOURCES``).

    ``test``: the held-out images (``TEST_SOURCES``) tiled into non-overlapping patches, for a loss;
    the metrics are measured on the whole images (:func:`test_images`); ``test_split=False`` leaves
    it empty and skips resizing those images (the quick demo measures on its own crops). ``info`` holds the scale,
    patch size, input kind, source names (``train_sources`` for train and val, ``test_sources``) and
    ``origins[split]``: int64 rows (index into those names, top, left) of each patch, high-res pixels.
    """
    scale = _check_scale("super_resolution", scale)
    seed = _check_seed("super_resolution", seed)
    if input not in ("low_res", "bicubic"):
        raise ValueError(f"super_resolution: input must be 'low_res' or 'bicubic', got {input!r}")
    if isinstance(patch, bool) or not isinstance(patch, (int, np.integer)) or patch < 4 * scale or patch % scale:
        raise ValueError(f"super_resolution: patch must be a multiple of scale={scale} and >= {4 * scale}, "
                         f"got {patch!r}")
    for label, n in (("n_train", n_train), ("n_val", n_val)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"super_resolution: {label} must be a positive int, got {n!r}")
    if not min_std >= 0:
        raise ValueError(f"super_resolution: min_std must be >= 0, got {min_std!r}")

    sources = _named_sources(sources)
    bad = [n for n in sources if n not in TRAIN_SOURCES]
    if bad or not sources:
        raise ValueError(f"super_resolution: sources must be names from {TRAIN_SOURCES} (never the held-out "
                         f"{TEST_SOURCES}), got {bad or sources!r}")
    rng = np.random.default_rng(seed)
    block = 2 * patch
    offsets = np.arange(0, block - patch + 1, scale)  # multiples of scale: low-res pixels line up
    # An image needs two blocks (one for training, one for validation): at patch 48 that leaves out
    # only microaneurysms (102 x 102).
    usable = [n for n in sources if _blocks(_pair(n, scale)[0].shape, block) >= 2]
    origins = {"train": [], "val": []}  # rows (index in usable, top, left) in high-res pixels
    for i, name in enumerate(usable):
        hr = _pair(name, scale)[0]
        by, bx = hr.shape[0] // block, hr.shape[1] // block
        order = rng.permutation(by * bx)
        n_val_blocks = max(1, round(0.1 * by * bx))
        for split, blocks, total in (("train", order[n_val_blocks:], n_train), ("val", order[:n_val_blocks], n_val)):
            want = total // len(usable) + (i < total % len(usable))
            tops, lefts = [], []
            # Draw in rounds, keeping the patches with detail, until there are enough (or give up
            # on an image that has too few: at most 20 rounds).
            for _ in range(20):
                if sum(len(t) for t in tops) >= want:
                    break
                chosen = blocks[rng.integers(0, len(blocks), size=2 * want)]
                top = (chosen // bx) * block + rng.choice(offsets, size=len(chosen))
                left = (chosen % bx) * block + rng.choice(offsets, size=len(chosen))
                keep = _cut(hr, top, left, patch).std(axis=(1, 2)) >= min_std
                tops.append(top[keep])
                lefts.append(left[keep])
            top, left = np.concatenate(tops)[:want], np.concatenate(lefts)[:want]
            origins[split].append(np.stack([np.full_like(top, i), top, left], axis=1))

    def dataset(names, where):
        """TensorDataset(input, target) of the patches at ``where`` (rows: image index, top, left)."""
        low = input == "low_res"
        side = patch // scale if low else patch
        x = np.empty((len(where), 1, side, side), np.float32)
        y = np.empty((len(where), 1, patch, patch), np.float32)
        for i, name in enumerate(names):
            rows = np.flatnonzero(where[:, 0] == i)
            hr, bic, lr = _pair(name, scale)
            top, left = where[rows, 1], where[rows, 2]
            x[rows, 0] = _cut(lr, top, left, patch, scale) if low else _cut(bic, top, left, patch)
            y[rows, 0] = _cut(hr, top, left, patch)
        return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))

    sets = {}
    for split in ("train", "val"):
        where = np.concatenate(origins[split]).astype(np.int64)
        origins[split] = where[rng.permutation(len(where))]  # shuffled, so any prefix mixes the images
        sets[split] = dataset(usable, origins[split])
    tiles = [np.zeros((0, 3), np.int64)]
    for i, name in enumerate(TEST_SOURCES if test_split else ()):  # the whole held-out images, tiled
        h, w = _pair(name, scale)[0].shape
        top, left = np.meshgrid(np.arange(0, h - patch + 1, patch), np.arange(0, w - patch + 1, patch), indexing="ij")
        tiles.append(np.stack([np.full(top.size, i), top.ravel(), left.ravel()], axis=1))
    origins["test"] = np.concatenate(tiles).astype(np.int64)
    train, val, test = sets["train"], sets["val"], dataset(TEST_SOURCES, origins["test"])
    x = train.tensors[0]
    mean, std = x.mean(dim=(0, 2, 3)), x.std(dim=(0, 2, 3))
    return Splits(train, val, test, classes=(), task="super_resolution", mean=mean, std=std,
                  info={"scale": scale, "patch": patch, "input": input, "train_sources": tuple(usable),
                        "test_sources": TEST_SOURCES, "source": "skimage.data",
                        "origins": {k: torch.from_numpy(v) for k, v in origins.items()}})
