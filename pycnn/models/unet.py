"""U-Net (Ronneberger et al. 2015) for segmentation: [N, C, H, W] -> per-pixel logits
[N, num_classes, H, W]."""
from __future__ import annotations

import torch
from torch import nn

import pycnn.nn as pnn


class DoubleConv(nn.Module):
    """(3 x 3 conv, BN, ReLU) twice, keeping the spatial size."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = pnn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = pnn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = pnn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = pnn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        # BN + ReLU as one pycnn kernel where nothing can tell the difference (see batch_norm_add_relu)
        y = pnn.batch_norm_add_relu(self.bn1, self.conv1(x), relu=self.relu1)
        return pnn.batch_norm_add_relu(self.bn2, self.conv2(y), relu=self.relu2)


class UNet(nn.Module):
    """Encoder of ``depth`` DoubleConv + 2 x 2 max-pool levels (width doubling each level), a
    bottleneck, and a decoder that upsamples with a stride-2 transposed convolution, concatenates
    the encoder's feature map of the same level (the skip), and applies a DoubleConv.

    Any input size works: the transposed convolution is asked for the skip's exact size, so odd
    sizes halved by the pooling come back (output_padding 1) instead of being cropped.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, depth: int = 3, width: int = 16):
        super().__init__()
        if depth < 1:
            raise ValueError(f"unet: depth must be at least 1, got {depth}")
        if in_channels < 1 or width < 1:
            raise ValueError(f"unet: in_channels and width must be positive, got {in_channels}, {width}")
        if num_classes < 2:
            raise ValueError(f"unet: num_classes must be at least 2 (background + objects), got {num_classes}")
        chans = [width * 2 ** i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        c = in_channels
        for out in chans[:-1]:
            self.encoders.append(DoubleConv(c, out))
            c = out
        self.pool = pnn.MaxPool2d(2)
        self.bottleneck = DoubleConv(c, chans[-1])
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(depth)):
            self.upsamplers.append(pnn.ConvTranspose2d(chans[level + 1], chans[level], 2, stride=2))
            self.decoders.append(DoubleConv(2 * chans[level], chans[level]))
        self.head = pnn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x):
        depth = len(self.encoders)
        if x.dim() >= 2 and min(x.shape[-2:]) < 2 ** depth:
            raise ValueError(f"unet: input {tuple(x.shape[-2:])} is too small for depth {depth} "
                             f"(each side must be at least 2**depth = {2 ** depth})")
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.upsamplers, self.decoders, reversed(skips)):
            x = up(x, output_size=skip.shape[-2:])
            x = dec(torch.cat([skip, x], dim=1))
        return self.head(x)


def unet(in_channels: int = 1, num_classes: int = 2, image_size=None, depth: int = 3, width: int = 16) -> nn.Module:
    """A U-Net; ``image_size`` is accepted for a uniform signature and not needed."""
    return UNet(in_channels, num_classes, depth=depth, width=width)
