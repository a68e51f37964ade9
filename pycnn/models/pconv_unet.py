"""A U-Net of partial convolutions for inpainting (after Liu et al. 2018, scaled down for CPUs).

    model = pycnn.models.get("pconv_unet")
    filled = model(image, mask)     # image [N, C, H, W] in [0, 1], mask 1 = known, 0 = hole

The encoder halves the size with stride-2 partial convolutions; each layer's updated mask shrinks
the hole, so the deepest layers see (almost) no hole. The decoder upsamples features and masks
(nearest), concatenates the encoder's features and masks of the same level (a per-channel mask),
and applies a 3x3 partial convolution. The last layer sees the masked input image itself. Any
input size works: each upsampling is asked for the skip's exact size. The output is the model's
estimate of the whole image; ``composite`` keeps the known pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import pycnn.nn as pnn


class PConvUNet(nn.Module):
    def __init__(self, in_channels: int = 1, depth: int = 4, width: int = 16, max_width: int = 64):
        super().__init__()
        if depth < 1 or width < 1 or in_channels < 1:
            raise ValueError(f"pconv_unet: depth, width and in_channels must be positive, got {depth}, {width}, "
                             f"{in_channels}")
        chans = [min(width * 2 ** i, max_width) for i in range(depth)]
        self.encoders = nn.ModuleList()
        c = in_channels
        for i, out in enumerate(chans):
            k = 5 if i == 0 else 3  # a wider first window reaches across thin strokes
            self.encoders.append(pnn.PartialConv2d(c, out, k, stride=2, padding=k // 2))
            c = out
        self.decoders = nn.ModuleList()
        skips = [in_channels] + chans[:-1]
        for level in reversed(range(depth)):
            out = in_channels if level == 0 else skips[level]
            self.decoders.append(pnn.PartialConv2d(c + skips[level], out, 3, padding=1))
            c = out
        self.in_channels = in_channels

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mask.shape[1] == 1 and image.shape[1] > 1:
            mask = mask.expand(-1, image.shape[1], -1, -1)
        x, m = image - 0.5, mask  # centred: a hole's zero is then the mid grey
        feats, masks = [x], [m]
        for enc in self.encoders:
            x, m = enc(x, m)
            x = F.leaky_relu(x, 0.2)
            feats.append(x)
            masks.append(m)
        feats.pop()
        masks.pop()
        for i, dec in enumerate(self.decoders):
            skip, skip_mask = feats.pop(), masks.pop()
            size = skip.shape[-2:]
            x = torch.cat([F.interpolate(x, size=size, mode="nearest"), skip], 1)
            m = torch.cat([_per_channel(F.interpolate(m, size=size, mode="nearest"), x.shape[1] - skip.shape[1]),
                           _per_channel(skip_mask, skip.shape[1])], 1)
            x, m = dec(x, m)
            if i + 1 < len(self.decoders):
                x = F.leaky_relu(x, 0.2)
        return x + 0.5


def _per_channel(mask: torch.Tensor, channels: int) -> torch.Tensor:
    """A single-channel mask as one per feature channel (for concatenating with other masks)."""
    return mask.expand(-1, channels, -1, -1) if mask.shape[1] == 1 else mask


def composite(image: torch.Tensor, mask: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Known pixels from ``image``, hole pixels from ``prediction`` (clipped to [0, 1])."""
    return image * mask + prediction.clamp(0, 1) * (1 - mask)


def pconv_unet(in_channels: int = 1, num_classes=None, image_size=None, depth: int = 4, width: int = 16,
               max_width: int = 64) -> nn.Module:
    """The inpainting U-Net; ``num_classes`` and ``image_size`` are accepted for the uniform signature."""
    return PConvUNet(in_channels, depth=depth, width=width, max_width=max_width)
