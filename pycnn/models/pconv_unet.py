"""A U-Net of partial convolutions for inpainting (after Liu et al. 2018, scaled down for CPUs).

    model = pycnn.models.get("pconv_unet")
    filled = model(image, mask)     # image [N, C, H, W] in [0, 1], mask 1 = known, 0 = hole

The encoder halves the size with stride-2 partial convolutions; each layer's updated mask shrinks
the hole, so the deepest layers see (almost) no hole. The decoder upsamples features and masks
(nearest), concatenates the encoder's features and masks of the same level (a per-channel mask),
and applies a 3x3 partial convolution. The last layer sees the masked input image itself. Any
input size works: each upsampling is asked for the skip's exact size. The output is the model's
estimate of the whole image; ``composite`` keeps the known pixels.

With ``fill_iters`` > 0 (the default) the network starts from a classical fill and learns what to
add to it: ``smooth_fill`` (a mask-normalised pyramid, smoothed by a few Jacobi steps of Laplace's
equation at every level: a cheap multigrid harmonic inpainting, a few ms per 64x64 image) is
given to the network as a second, fully known input channel, and the network's output is added
to it (the last layer starts at zero, so an untrained model returns the fill). The partial
convolutions still see the masked image with its mask: the fill only tells every hole pixel,
from the first layer on, what the smooth continuation of its surroundings is; what is learnt is
the texture and edges a smooth fill cannot make.

With ``normalize`` (the default) the network works in units of each image's known pixels: its
inputs are shifted by their mean and divided by their standard deviation (+ ``NORM_FLOOR``), and
its output is multiplied back by it. The model is then equivariant to brightness and contrast (a
learnt correction applies to dark and bright, flat and busy patches alike), and on a nearly flat
patch, where the fill is already right to 40-50 dB, the correction is small by construction.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import pycnn.nn as pnn


class PConvUNet(nn.Module):
    def __init__(self, in_channels: int = 1, depth: int = 4, width: int = 16, max_width: int = 64,
                 fill_iters: int = 8, biharmonic_iters: int = 20, normalize: bool = True):
        super().__init__()
        if depth < 1 or width < 1 or in_channels < 1:
            raise ValueError(f"pconv_unet: depth, width and in_channels must be positive, got {depth}, {width}, "
                             f"{in_channels}")
        if not isinstance(fill_iters, int) or fill_iters < 0:
            raise ValueError(f"pconv_unet: fill_iters must be an int >= 0 (0: no classical fill), got {fill_iters!r}")
        if not isinstance(biharmonic_iters, int) or biharmonic_iters < 0:
            raise ValueError(f"pconv_unet: biharmonic_iters must be an int >= 0, got {biharmonic_iters!r}")
        self.in_channels, self.fill_iters, self.biharmonic_iters = in_channels, fill_iters, biharmonic_iters
        self.normalize = bool(normalize)
        inputs = 2 * in_channels if fill_iters else in_channels  # the masked image (+ its smooth fill)
        chans = [min(width * 2 ** i, max_width) for i in range(depth)]
        self.encoders = nn.ModuleList()
        c = inputs
        for i, out in enumerate(chans):
            k = 5 if i == 0 else 3  # a wider first window reaches across thin strokes
            self.encoders.append(pnn.PartialConv2d(c, out, k, stride=2, padding=k // 2))
            c = out
        self.decoders = nn.ModuleList()
        skips = [inputs] + chans[:-1]
        for level in reversed(range(depth)):
            out = in_channels if level == 0 else skips[level]
            self.decoders.append(pnn.PartialConv2d(c + skips[level], out, 3, padding=1))
            c = out
        if fill_iters:  # the residual over the fill starts at zero: an untrained model returns the fill
            nn.init.zeros_(self.decoders[-1].weight)
            nn.init.zeros_(self.decoders[-1].bias)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mask.shape[1] == 1 and image.shape[1] > 1:
            mask = mask.expand(-1, image.shape[1], -1, -1)
        centre, scale = 0.5, 1.0
        if self.normalize:
            centre, scale = _known_mean_std(image, mask)
        x, m = (image - centre) / scale, mask  # centred: a hole's zero is the mid grey (or the known mean)
        base = 0.5
        if self.fill_iters:
            with torch.no_grad():  # a fixed function of the input: nothing to learn, no gradient needed
                base = smooth_fill(image * mask, mask, self.fill_iters, self.biharmonic_iters)
            x, m = torch.cat([x, (base - centre) / scale], 1), torch.cat([m, torch.ones_like(m)], 1)
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
        return x * scale + base


NORM_FLOOR = 0.01  # added to the known pixels' std: a flat patch's sensor noise is not blown up to unit size


def _known_mean_std(image: torch.Tensor, mask: torch.Tensor):
    """Mean and standard deviation (+ ``NORM_FLOOR``) of each image's known pixels, per channel: the
    network works in these units, so its correction scales with the image's contrast."""
    n = mask.sum((-2, -1), keepdim=True).clamp_min(1)
    mean = (image * mask).sum((-2, -1), keepdim=True) / n
    var = (((image - mean) * mask) ** 2).sum((-2, -1), keepdim=True) / n
    return mean, var.sqrt() + NORM_FLOOR


def _neighbour_mean(u: torch.Tensor) -> torch.Tensor:
    """Mean of the 4 neighbours (edges replicated): one Jacobi step of Laplace's equation."""
    p = F.pad(u, (1, 1, 1, 1), mode="replicate")
    return (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]) * 0.25


def _sum_2x2(v: torch.Tensor) -> torch.Tensor:
    """Sums of 2x2 blocks (odd sizes padded with zeros: they add nothing to a masked sum)."""
    H, W = v.shape[-2:]
    v = F.pad(v, (0, W % 2, 0, H % 2))
    N, C, H2, W2 = v.shape
    return v.reshape(N, C, H2 // 2, 2, W2 // 2, 2).sum((3, 5))


def _laplacian(u: torch.Tensor) -> torch.Tensor:
    return 4 * (_neighbour_mean(u) - u)


def smooth_fill(image: torch.Tensor, mask: torch.Tensor, iters: int = 8, biharmonic_iters: int = 20) -> torch.Tensor:
    """A smooth fill of the holes (mask 0) from the known pixels (mask 1), any size.

    Multigrid harmonic fill: the known pixels are averaged down level by level (each coarse pixel
    the mean of its known children, known if any child is); from the coarsest level up, each
    level's holes start from the coarser level's fill (bilinear) and take ``iters`` Jacobi steps of
    Laplace's equation with the known pixels fixed. Then ``biharmonic_iters`` conjugate-gradient
    steps towards the biharmonic fill (least squared Laplacian over the hole), which continues the
    surroundings' gradients into the hole instead of flattening them near its border; stopped
    early, it stays between the two (on the held-out patches 20 steps beat both the harmonic fill
    and the converged biharmonic one). Known pixels are returned unchanged; an image with no known
    pixel is mid grey."""
    mask = mask.expand_as(image).to(image.dtype)
    u = _harmonic_fill(image, mask, iters)
    if biharmonic_iters:  # kept within the known pixels' range (the harmonic fill is, by the maximum principle)
        known = mask > 0
        lo = torch.where(known, image, torch.full_like(image, float("inf"))).amin((-2, -1), keepdim=True)
        hi = torch.where(known, image, torch.full_like(image, float("-inf"))).amax((-2, -1), keepdim=True)
        some = known.any(-1, keepdim=True).any(-2, keepdim=True)  # nothing known: no range to keep to
        lo, hi = torch.where(some, lo, hi), torch.where(some, hi, lo)  # then -inf and +inf
        u = torch.minimum(torch.maximum(_towards_biharmonic(u, 1 - mask, biharmonic_iters), lo), hi)
        u = torch.where(known, image, u)
    return u


def _towards_biharmonic(u: torch.Tensor, hole: torch.Tensor, steps: int) -> torch.Tensor:
    """Conjugate gradients on min ||Laplacian(u + hole * v)||^2 over v (per image and channel), from v = 0."""
    dims = (-2, -1)
    op = lambda v: hole * _laplacian(_laplacian(hole * v))
    r = -hole * _laplacian(_laplacian(u))
    v, p = torch.zeros_like(u), r
    rr = (r * r).sum(dims, keepdim=True)
    for _ in range(steps):
        q = op(p)
        alpha = rr / (p * q).sum(dims, keepdim=True).clamp_min(1e-30)
        v, r = v + alpha * p, r - alpha * q
        rr_new = (r * r).sum(dims, keepdim=True)
        p, rr = r + rr_new / rr.clamp_min(1e-30) * p, rr_new
    return u + hole * v


def _harmonic_fill(image: torch.Tensor, mask: torch.Tensor, iters: int) -> torch.Tensor:
    H, W = image.shape[-2:]
    if min(H, W) <= 2:
        total, count = (image * mask).sum((-2, -1), keepdim=True), mask.sum((-2, -1), keepdim=True)
        mean = torch.where(count > 0, total / count.clamp_min(1e-8), torch.full_like(total, 0.5))
        return torch.where(mask > 0, image, mean.expand_as(image))
    counts = _sum_2x2(mask)
    coarse = _harmonic_fill(_sum_2x2(image * mask) / counts.clamp_min(1e-8), (counts > 0).to(image.dtype), iters)
    up = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)
    known = image * mask
    u = known + (1 - mask) * up
    for _ in range(iters):
        u = known + (1 - mask) * _neighbour_mean(u)
    return u


def _per_channel(mask: torch.Tensor, channels: int) -> torch.Tensor:
    """A single-channel mask as one per feature channel (for concatenating with other masks)."""
    return mask.expand(-1, channels, -1, -1) if mask.shape[1] == 1 else mask


def composite(image: torch.Tensor, mask: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Known pixels from ``image``, hole pixels from ``prediction`` (clipped to [0, 1])."""
    return image * mask + prediction.clamp(0, 1) * (1 - mask)


def pconv_unet(in_channels: int = 1, num_classes=None, image_size=None, depth: int = 4, width: int = 16,
               max_width: int = 64, fill_iters: int = 8, biharmonic_iters: int = 20, normalize: bool = True) -> nn.Module:
    """The inpainting U-Net; ``num_classes`` and ``image_size`` are accepted for the uniform signature."""
    return PConvUNet(in_channels, depth=depth, width=width, max_width=max_width, fill_iters=fill_iters,
                     biharmonic_iters=biharmonic_iters, normalize=normalize)
