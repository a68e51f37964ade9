"""Your own images: a folder with one subfolder per class, read into the same Splits as the
built-in datasets.

    myimgs/cat/001.png            myimgs/train/cat/001.png
    myimgs/cat/002.jpg     or     myimgs/train/dog/...
    myimgs/dog/...                myimgs/val/...    (optional)
                                  myimgs/test/...   (optional)

    splits = pycnn.data.image_folder("myimgs", size=32)     # or pycnn.data.get("myimgs", size=32)
    splits.classes                                          # ("cat", "dog"): label i = classes[i]
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from pycnn.data.datasets import Splits, _channel_stats, _check_seed, _check_size

__all__ = ["image_folder", "load_image", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLIT_FOLDERS = ("train", "val", "test")
# Decoded images are held in memory as float32; past this, ask for a smaller ``size``.
MAX_BYTES = 4 << 30


def _visible_entries(folder: str):
    return sorted(e for e in os.listdir(folder) if not e.startswith("."))


def _class_folders(folder: str) -> list:
    classes = [e for e in _visible_entries(folder) if os.path.isdir(os.path.join(folder, e))]
    if not classes:
        raise ValueError(f"image_folder: {folder} has no class subfolders; put each class's images in a folder "
                         f"named after the class ({os.path.join(folder, 'cat', '001.png')}, ...)")
    return classes


def _image_files(folder: str) -> list:
    return [os.path.join(folder, e) for e in _visible_entries(folder)
            if e.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(folder, e))]


def _list_split(folder: str, classes: Sequence[str], require_all: bool) -> Tuple[list, list]:
    """(paths, labels) of the images in ``folder/<class>/``, sorted by class then file name."""
    present = _class_folders(folder)
    unknown = [c for c in present if c not in classes]
    if unknown:
        raise ValueError(f"image_folder: {folder} has class folder(s) {unknown} that the training images do not "
                         f"have (classes: {list(classes)})")
    paths, labels = [], []
    for label, name in enumerate(classes):
        sub = os.path.join(folder, name)
        files = _image_files(sub) if os.path.isdir(sub) else []
        if require_all and not files:
            raise ValueError(f"image_folder: class folder {sub} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths += files
        labels += [label] * len(files)
    return paths, labels


def _read_image(path: str, grey: bool) -> np.ndarray:
    """float32 [C, H, W] in [0, 1]: C = 1 when ``grey``, else 3 (alpha dropped, palettes expanded)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            if im.mode.startswith("I;16") or im.mode in ("I", "F"):  # 16-bit or float grey
                scale = 1.0 if im.mode == "F" else 65535.0
                a = np.clip(np.asarray(im, dtype=np.float32) / scale, 0.0, 1.0)
                a = a[None] if grey else np.repeat(a[None], 3, axis=0)
            else:
                a = np.asarray(im.convert("L" if grey else "RGB"), dtype=np.float32) / 255.0
                a = a[None] if grey else a.transpose(2, 0, 1)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    return np.ascontiguousarray(a)


def _stratified_split(labels: np.ndarray, rng: np.random.Generator, val: float, test: float):
    """Index arrays (train, val, test) keeping each class's share; a fraction > 0 gives a class
    of 3+ images at least one image in that split, and train always keeps one."""
    parts = [[], [], []]
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        n_val, n_test = int(round(n * val)), int(round(n * test))
        if n >= 3:
            n_val, n_test = max(n_val, int(val > 0)), max(n_test, int(test > 0))
        n_val = min(n_val, max(0, n - 1))
        n_test = min(n_test, max(0, n - 1 - n_val))
        parts[1].append(idx[:n_val])
        parts[2].append(idx[n_val:n_val + n_test])
        parts[0].append(idx[n_val + n_test:])
    return [np.concatenate(p)[rng.permutation(sum(len(q) for q in p))] for p in parts]


def image_folder(root: str, size: Optional[int | Tuple[int, int]] = None, grayscale: Optional[bool] = None,
                 val: float = 0.15, test: float = 0.15, seed: int = 0) -> Splits:
    """Splits of the images under ``root``, one class per subfolder (sorted names: label i is
    ``classes[i]``).

    Layout: ``root/<class>/*.png`` (split here: stratified, seeded, ``val`` and ``test`` of each
    class), or ``root/train/<class>/...`` with ``root/val/`` and ``root/test/`` when present (a
    missing val/ or test/ is cut from train/ by its fraction). Files: PNG, JPEG, BMP, GIF, TIFF,
    WebP (read with Pillow); hidden files and other extensions are skipped.

    size: resize every image to ``size`` (int or (H, W); bilinear, antialiased, aspect ratio not
    kept); needed when the images differ in size. grayscale: True -> 1 channel, False -> 3 (RGB),
    None -> 1 channel when every image is grey, else 3. Images are float32 [0, 1], NCHW, held in
    memory (``Splits.mean``/``std``: training-split statistics).
    """
    seed = _check_seed("image_folder", seed)
    size = _check_size("image_folder", size)
    if grayscale not in (None, True, False):
        raise ValueError(f"image_folder: grayscale must be True, False or None, got {grayscale!r}")
    for label, f in (("val", val), ("test", test)):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f < 1.0:
            raise ValueError(f"image_folder: {label} must be a fraction in [0, 1), got {f!r}")
    if val + test >= 1.0:
        raise ValueError(f"image_folder: val + test must be < 1, got {val} + {test}")
    if not isinstance(root, (str, os.PathLike)) or not os.path.isdir(root):
        raise ValueError(f"image_folder: {root!r} is not a folder")
    root = os.path.abspath(os.fspath(root))

    given = [s for s in SPLIT_FOLDERS if os.path.isdir(os.path.join(root, s))]
    if given and "train" not in given:
        raise ValueError(f"image_folder: {root} has {'/, '.join(given)}/ but no train/ folder")
    if given:
        classes = _class_folders(os.path.join(root, "train"))
        listed = {s: _list_split(os.path.join(root, s), classes, require_all=(s == "train")) for s in given}
    else:
        classes = _class_folders(root)
        listed = {"all": _list_split(root, classes, require_all=True)}

    paths = [p for ps, _ in listed.values() for p in ps]
    if grayscale is None:  # grey when every image is: by mode, or RGB with equal channels
        decoded = [_read_image(p, grey=False) for p in paths]
        grey = all(bool((a[0] == a[1]).all() and (a[0] == a[2]).all()) for a in decoded)
        if grey:
            decoded = [a[:1] for a in decoded]
    else:
        grey = grayscale
        decoded = [_read_image(p, grey=grey) for p in paths]
    if size is None:
        shapes = {a.shape[1:] for a in decoded}
        if len(shapes) > 1:
            odd = next(i for i, a in enumerate(decoded) if a.shape[1:] != decoded[0].shape[1:])
            raise ValueError(f"image_folder: images differ in size ({decoded[0].shape[2]}x{decoded[0].shape[1]} "
                             f"{paths[0]}, {decoded[odd].shape[2]}x{decoded[odd].shape[1]} {paths[odd]}); "
                             f"pass size=")
    channels = 1 if grey else 3
    h, w = size if size is not None else decoded[0].shape[1:]
    if len(decoded) * channels * h * w * 4 > MAX_BYTES:
        raise ValueError(f"image_folder: {len(decoded)} images of {channels}x{h}x{w} need more than "
                         f"{MAX_BYTES >> 30} GiB as float32; pass a smaller size=")
    images = torch.empty(len(decoded), channels, h, w)
    for i, a in enumerate(decoded):
        t = torch.from_numpy(a)
        if t.shape[1:] != (h, w):
            t = F.interpolate(t[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
        images[i] = t.clamp_(0.0, 1.0)
    del decoded

    rng = np.random.default_rng(seed)
    parts, offset = {}, 0
    for key, (ps, ls) in listed.items():
        parts[key] = (torch.arange(offset, offset + len(ps)), np.asarray(ls, np.int64))
        offset += len(ps)
    if given:
        pool_idx, pool_labels = parts["train"]
        carve_val = 0.0 if "val" in given else val
        carve_test = 0.0 if "test" in given else test
        # Fractions of the whole; train/ holds 1 - (the given splits' share), so rescale.
        share = 1.0 - (val if "val" in given else 0.0) - (test if "test" in given else 0.0)
        tr, va, te = _stratified_split(pool_labels, rng, carve_val / share, carve_test / share)
        split_idx = {"train": pool_idx[tr], "val": pool_idx[va], "test": pool_idx[te]}
        for s in ("val", "test"):
            if s in given:
                idx, _ = parts[s]
                split_idx[s] = idx[torch.from_numpy(rng.permutation(len(idx)))]
    else:
        all_idx, all_labels = parts["all"]
        tr, va, te = _stratified_split(all_labels, rng, val, test)
        split_idx = {"train": all_idx[tr], "val": all_idx[va], "test": all_idx[te]}

    labels = torch.as_tensor(np.concatenate([ls for _, ls in parts.values()]), dtype=torch.int64)
    sets = [TensorDataset(images[split_idx[s]].contiguous(), labels[split_idx[s]]) for s in SPLIT_FOLDERS]
    if len(sets[0]) == 0:
        raise ValueError(f"image_folder: no training images under {root}")
    mean, std = _channel_stats(sets[0].tensors[0])
    files = {s: [os.path.relpath(paths[int(i)], root) for i in split_idx[s]] for s in SPLIT_FOLDERS}
    options = {"size": None if size is None else list(size), "grayscale": grayscale, "val": val, "test": test,
               "seed": seed}
    return Splits(*sets, classes=tuple(classes), task="classification", mean=mean, std=std,
                  info={"source": root, "layout": "split folders" if given else "class folders", "files": files},
                  name=root, options=options)


def load_image(path: str, size: Optional[int | Tuple[int, int]] = None, grayscale: bool = False) -> torch.Tensor:
    """One image file as a batch of one, float32 [1, C, H, W] in [0, 1], read and resized as
    :func:`image_folder` reads its images (C = 1 when ``grayscale``, else 3): what a model
    trained on an image folder takes, e.g. ``pycnn.load(path)(load_image("new.png", size=32))``."""
    size = _check_size("load_image", size)
    if not os.path.isfile(path):
        raise ValueError(f"load_image: no such file {path!r}")
    t = torch.from_numpy(_read_image(path, grey=bool(grayscale)))[None]
    if size is not None and tuple(t.shape[-2:]) != size:
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True).clamp_(0.0, 1.0)
    return t.contiguous()
