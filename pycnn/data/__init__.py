"""Datasets that ship inside installed packages (no downloads) and batched, seeded augmentation.

>>> import pycnn.data as D
>>> splits = D.get("digits", seed=0, size=28)   # or D.digits(seed=0, size=28)
>>> images, labels = splits.train.tensors       # float32 [N, 1, 28, 28] in [0, 1], int64 [N]
>>> mine = D.image_folder("myimgs", size=32)   # your own images, one subfolder per class
"""
from pycnn.data.datasets import NAMES, Splits, digits, faces, galaxies, galaxy_class_map, get, textures
from pycnn.data import augment  # noqa: F401
from pycnn.data.folder import IMAGE_EXTENSIONS, image_folder, load_image
from pycnn.data.superres import super_resolution
from pycnn.data.instances import galaxy_blends, galaxy_instances, instance_targets, masks_to_boxes

__all__ = ["NAMES", "Splits", "digits", "faces", "textures", "galaxies", "galaxy_class_map", "get", "augment",
           "image_folder", "load_image", "IMAGE_EXTENSIONS", "galaxy_instances", "galaxy_blends", "instance_targets",
           "masks_to_boxes", "super_resolution"]
