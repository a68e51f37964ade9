"""Datasets that ship inside installed packages (no downloads) and batched, seeded augmentation.

>>> import pycnn.data as D
>>> splits = D.get("digits", seed=0, size=28)   # or D.digits(seed=0, size=28)
>>> images, labels = splits.train.tensors       # float32 [N, 1, 28, 28] in [0, 1], int64 [N]
"""
from pycnn.data.datasets import NAMES, Splits, digits, faces, galaxies, galaxy_class_map, get, textures
from pycnn.data import augment  # noqa: F401
from pycnn.data.superres import super_resolution

__all__ = ["NAMES", "Splits", "digits", "faces", "textures", "galaxies", "galaxy_class_map", "get", "augment",
           "super_resolution"]
