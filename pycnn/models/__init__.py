"""Ready-made models on pycnn layers, by name:

    model = pycnn.models.get("lenet5", in_channels=1, num_classes=10, image_size=8)

Classifiers map [N, C, H, W] to logits [N, num_classes]; ``unet`` maps it to per-pixel logits
[N, num_classes, H, W]; ``mask_rcnn`` takes images and per-image targets and returns losses
(training) or detections (eval); ``srcnn``, ``fsrcnn`` and ``espcn`` map an image to one ``scale`` times
larger (``task(name)`` tells which).
"""
from __future__ import annotations

from typing import Callable, Dict

from torch import nn

from pycnn.models.classifiers import BasicBlock, lenet5, linear_classifier, mlp, resnet, separable_cnn, simple_cnn
from pycnn.models.mask_rcnn import MaskRCNN, mask_rcnn
from pycnn.models.unet import UNet, unet
from pycnn.models.superres import ESPCN, FSRCNN, SRCNN, espcn, fsrcnn, srcnn
from pycnn.models.pconv_unet import PConvUNet, pconv_unet

_BUILDERS: Dict[str, Callable[..., nn.Module]] = {
    "linear_classifier": linear_classifier,
    "mlp": mlp,
    "lenet5": lenet5,
    "simple_cnn": simple_cnn,
    "resnet": resnet,
    "separable_cnn": separable_cnn,
    "unet": unet,
    "mask_rcnn": mask_rcnn,
    "srcnn": srcnn,
    "fsrcnn": fsrcnn,
    "espcn": espcn,
    "pconv_unet": pconv_unet,
}
_SEGMENTATION = {"unet"}
_DETECTION = {"mask_rcnn"}
_SUPER_RESOLUTION = {"srcnn", "fsrcnn", "espcn"}
_INPAINTING = {"pconv_unet"}

__all__ = ["get", "names", "task", "linear_classifier", "mlp", "lenet5", "simple_cnn", "resnet", "separable_cnn",
           "unet", "UNet", "BasicBlock", "mask_rcnn", "MaskRCNN", "srcnn", "fsrcnn", "espcn", "SRCNN", "FSRCNN", "ESPCN",
           "pconv_unet", "PConvUNet"]


def names() -> list:
    return sorted(_BUILDERS)


def task(name: str) -> str:
    """'segment' for per-pixel models, 'detect' for instance detection/segmentation (mask_rcnn),
    'super_resolution' for image upscalers, 'inpaint' for image restorers, 'classify' for the others."""
    _check_name(name)
    if name in _DETECTION:
        return "detect"
    if name in _SUPER_RESOLUTION:
        return "super_resolution"
    if name in _INPAINTING:
        return "inpaint"
    return "segment" if name in _SEGMENTATION else "classify"


def _check_name(name) -> None:
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(names())}")


def get(name: str, **kwargs) -> nn.Module:
    """Builds model ``name`` with the builder's keyword arguments (in_channels, num_classes,
    image_size, and model-specific ones such as resnet's depth)."""
    _check_name(name)
    try:
        model = _BUILDERS[name](**kwargs)
    except TypeError as e:  # an unknown keyword: say which model rejected it
        raise TypeError(f"model {name!r}: {e}") from None
    # What a checkpoint needs to rebuild this model (pycnn.checkpoint, pycnn.load).
    model.pycnn_spec = {"name": name, "kwargs": dict(kwargs)}
    return model
