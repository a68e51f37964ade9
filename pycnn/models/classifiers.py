"""Image classifiers built from pycnn layers: input [N, C, H, W], output logits [N, num_classes].

Every builder takes ``in_channels``, ``num_classes`` and ``image_size`` (an int or (H, W)) so one
call signature fits all of them; sizes of the flattened features are worked out from
``image_size`` here rather than by a trial forward pass.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

from torch import nn

import pycnn.nn as pnn

Size = Union[int, Sequence[int]]


def _hw(image_size: Size) -> Tuple[int, int]:
    if isinstance(image_size, int):
        h = w = image_size
    else:
        h, w = (int(s) for s in image_size)
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return h, w


def _check_common(name: str, in_channels: int, num_classes: int) -> None:
    if in_channels < 1:
        raise ValueError(f"{name}: in_channels must be positive, got {in_channels}")
    if num_classes < 2:
        raise ValueError(f"{name}: num_classes must be at least 2, got {num_classes}")


def linear_classifier(in_channels: int = 1, num_classes: int = 10, image_size: Size = 28) -> nn.Module:
    """Softmax (or SVM, with the hinge loss) regression on raw pixels: one Linear layer."""
    _check_common("linear_classifier", in_channels, num_classes)
    h, w = _hw(image_size)
    return nn.Sequential(nn.Flatten(), pnn.Linear(in_channels * h * w, num_classes))


def mlp(in_channels: int = 1, num_classes: int = 10, image_size: Size = 28, hidden: int = 256) -> nn.Module:
    """Two fully connected layers with a ReLU between them."""
    _check_common("mlp", in_channels, num_classes)
    h, w = _hw(image_size)
    return nn.Sequential(nn.Flatten(), pnn.Linear(in_channels * h * w, hidden), nn.ReLU(),
                         pnn.Linear(hidden, num_classes))


def lenet5(in_channels: int = 1, num_classes: int = 10, image_size: Size = 32) -> nn.Module:
    """LeNet-5 (LeCun et al. 1998) with ReLU and max pooling: conv5-6, pool, conv5-16, pool,
    fc120, fc84, fc.

    The first convolution pads by 2 (as LeNet on 28 x 28 MNIST). The second is unpadded, as in
    the original, when the image is big enough for it (>= 28 px); on small images (8 x 8 digits)
    it pads too, since an unpadded 5 x 5 filter would not fit a 4 x 4 feature map.
    """
    _check_common("lenet5", in_channels, num_classes)
    h, w = _hw(image_size)
    h, w = (h + 4 - 4) // 2, (w + 4 - 4) // 2          # conv 5x5 pad 2 keeps size, pool halves
    pad2 = 0 if min(h, w) >= 14 else 2
    h, w = (h + 2 * pad2 - 4) // 2, (w + 2 * pad2 - 4) // 2
    if h < 1 or w < 1:
        raise ValueError(f"lenet5: image_size {image_size!r} is too small (needs at least 2 x 2)")
    return nn.Sequential(
        pnn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), pnn.MaxPool2d(2),
        pnn.Conv2d(6, 16, 5, padding=pad2), nn.ReLU(), pnn.MaxPool2d(2),
        nn.Flatten(),
        pnn.Linear(16 * h * w, 120), nn.ReLU(),
        pnn.Linear(120, 84), nn.ReLU(),
        pnn.Linear(84, num_classes),
    )


def simple_cnn(in_channels: int = 1, num_classes: int = 10, image_size: Size = 28, width: int = 32,
               hidden: int = 128) -> nn.Module:
    """Two 3 x 3 conv + ReLU + 2 x 2 max-pool stages (width, 2 * width channels), then two Linears."""
    _check_common("simple_cnn", in_channels, num_classes)
    h, w = _hw(image_size)
    layers = []
    c = in_channels
    for out in (width, 2 * width):
        layers += [pnn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
        if min(h, w) >= 2:
            layers.append(pnn.MaxPool2d(2))
            h, w = h // 2, w // 2
        c = out
    return nn.Sequential(*layers, nn.Flatten(), pnn.Linear(c * h * w, hidden), nn.ReLU(),
                         pnn.Linear(hidden, num_classes))


class BasicBlock(nn.Module):
    """ResNet basic block: conv3-BN-ReLU-conv3-BN, plus the input (1 x 1 conv + BN when the shape
    changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = pnn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = pnn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = pnn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = pnn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(pnn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          pnn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        # relu(bn(.)) and relu(bn(.) + shortcut) as single pycnn kernels where nothing can tell the
        # difference (no hooks, eager; see pnn.batch_norm_add_relu), else layer by layer.
        y = pnn.batch_norm_add_relu(self.bn1, self.conv1(x), relu=self.relu1)
        return pnn.batch_norm_add_relu(self.bn2, self.conv2(y), residual=self.shortcut(x), relu=self.relu2)


def resnet(in_channels: int = 3, num_classes: int = 10, image_size: Size = 32, depth: int = 20,
           width: int = 16) -> nn.Module:
    """CIFAR-style ResNet (He et al. 2016, section 4.2): a 3 x 3 stem, three stages of
    (depth - 2) / 6 basic blocks with width, 2 * width, 4 * width channels (stride 2 between
    stages), global average pooling and a Linear. depth = 8, 14, 20, 32, 44, 56, 110, ..."""
    _check_common("resnet", in_channels, num_classes)
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet: depth must be 6n + 2 with n >= 1 (8, 14, 20, 32, ...), got {depth}")
    _hw(image_size)  # validated; global pooling makes the head independent of it
    n = (depth - 2) // 6
    layers = [pnn.Conv2d(in_channels, width, 3, padding=1, bias=False), pnn.BatchNorm2d(width), nn.ReLU()]
    c = width
    for stage, out in enumerate((width, 2 * width, 4 * width)):
        for i in range(n):
            layers.append(BasicBlock(c, out, stride=2 if stage > 0 and i == 0 else 1))
            c = out
    return pnn.Sequential(*layers, pnn.GlobalAvgPool2d(), pnn.Linear(c, num_classes))


def separable_cnn(in_channels: int = 3, num_classes: int = 10, image_size: Size = 32,
                  widths: Sequence[int] = (32, 64, 128)) -> nn.Module:
    """Depthwise-separable CNN in the MobileNet / Xception style: a full 3 x 3 stem conv, then per
    width two SeparableConv2d-BN-ReLU and a 2 x 2 max-pool, global average pooling and a Linear."""
    _check_common("separable_cnn", in_channels, num_classes)
    h, w = _hw(image_size)
    stem = widths[0]
    layers = [pnn.Conv2d(in_channels, stem, 3, padding=1, bias=False), pnn.BatchNorm2d(stem), nn.ReLU()]
    c = stem
    for out in widths:
        for _ in range(2):
            layers += [pnn.SeparableConv2d(c, out, 3, padding=1, bias=False), pnn.BatchNorm2d(out), nn.ReLU()]
            c = out
        if min(h, w) >= 2:
            layers.append(pnn.MaxPool2d(2))
            h, w = h // 2, w // 2
    return pnn.Sequential(*layers, pnn.GlobalAvgPool2d(), pnn.Linear(c, num_classes))
