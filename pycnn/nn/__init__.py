"""Neural-network layers on pycnn's kernels, with torch.nn's names, arguments and state_dicts.

    import pycnn.nn as pnn
    layer = pnn.Conv2d(3, 16, 3, padding=1)        # same as torch.nn.Conv2d, our kernels
    model = pnn.convert(torchvision_like_model)    # a copy with every supported torch layer swapped
    print(pnn.summary(model))                      # which modules run on pycnn, which on torch

Layers without weights worth rewriting (ReLU, Flatten, Identity, ...) are torch.nn's own and
are re-exported here so a model can be written against ``pycnn.nn`` alone. ``Sequential`` is
torch's with one addition: a BatchNorm2d followed by a ReLU inside it runs as one kernel.
"""
from torch.nn import Dropout, Flatten, Identity, Module, ModuleList, ReLU  # noqa: F401

from pycnn.nn.convert import ConversionSummary, convert, summary, to_torch
from pycnn.nn.normalize import Normalize, normalized
from pycnn.nn.modules import (BatchNorm2d, Conv2d, ConvTranspose2d, DepthwiseConv2d, GlobalAvgPool2d, Linear,
                              MaxPool2d, MaxUnpool2d, PartialConv2d, PixelShuffle,
                              SeparableConv2d, Sequential, batch_norm_add_relu)

__all__ = ["Conv2d", "ConvTranspose2d", "MaxPool2d", "MaxUnpool2d", "BatchNorm2d", "DepthwiseConv2d",
           "SeparableConv2d", "PartialConv2d", "Linear", "GlobalAvgPool2d", "PixelShuffle", "convert", "to_torch", "summary", "ConversionSummary",
           "Normalize", "normalized", "batch_norm_add_relu",
           "ReLU", "Flatten", "Sequential", "Identity", "Dropout", "Module", "ModuleList"]
