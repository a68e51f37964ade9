"""Single-image super-resolution networks: a low-resolution image in, one ``scale`` times larger out.

Three classic designs, all fully convolutional (any input size) and all on pycnn layers:

* ``srcnn`` (Dong et al. 2014): 9x9 -> 1x1 -> 5x5 convolutions on the **bicubic-upsampled** image;
  it only sharpens, the upsampling itself is bicubic. Cost: ~8k multiply-adds per output pixel.
* ``fsrcnn`` (Dong et al. 2016): works on the low-resolution image (feature extraction, shrink,
  ``m`` 3x3 mapping layers, expand) and ends in a 9x9 **transposed convolution with stride =
  scale** that does the upsampling. ~3k multiply-adds per output pixel at x2.
* ``espcn`` (Shi et al. 2016): works on the low-resolution image and ends in a convolution with
  ``scale**2`` output channels per colour channel, rearranged into the larger image by a **pixel
  shuffle** (sub-pixel convolution). ~5k multiply-adds per output pixel at x2, ~1.5k at x4.

Each model says what it takes in ``model.input_kind``: "bicubic" (an image already upsampled to the
output size with ``pycnn.data.superres.bicubic_resize``) or "low_res". ``model.scale`` is the
factor. The models see one channel by default (the Y of YCbCr, where the metric is measured);
``in_channels=3`` gives RGB models.

Residual learning (``residual=True``, the default for all three): the network adds its output to
the **baseline's own bicubic upsampling** of its input (SRCNN: its input, already that; FSRCNN,
ESPCN: :class:`CubicUpsample`, a fixed transposed convolution equal to
``pycnn.data.superres.bicubic_resize``), and its last layer starts near zero. So an untrained model
*is* the bicubic baseline and training can only add the detail interpolation misses. From
scratch, the published designs spend their first thousands of steps learning to interpolate at
all (measured: ESPCN x2 without the skip was 0.4 dB *below* bicubic on the validation patches
after 750 steps). The skip is not trained: a trainable one (tried until 2026-11-30) drifted under
Adam with ReLU or a higher learning rate and cost 0.3-0.4 dB at x3 (ESPCN, 750 steps: +0.29 dB
over bicubic trainable vs +0.69 fixed, ReLU). ``residual=False`` gives the published networks.

The networks see ``x - 0.5`` (Y lies in [16, 235] / 255; without the skip they add 0.5 back to
their output): centred inputs let the first layer's
ReLU/tanh start in their useful range (measured ESPCN x3, 750 steps: +0.74 dB vs +0.68 uncentred).

Convolutions pad by replicating the border pixels rather than with zeros: a zero border reads as a
dark frame, which the network would otherwise learn to undo only on the training patches' edges.
"""
from __future__ import annotations

import math

import torch
from torch import nn

import pycnn.functional as PF
import pycnn.nn as pnn

SCALES = (2, 3, 4)


def _check(name: str, scale, in_channels) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale not in SCALES:
        raise ValueError(f"{name}: scale must be one of {SCALES}, got {scale!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"{name}: in_channels must be a positive int, got {in_channels!r}")


def _conv(cin: int, cout: int, k: int) -> pnn.Conv2d:
    return pnn.Conv2d(cin, cout, k, padding=k // 2, padding_mode="replicate")


def _keys_cubic(t: float, a: float = -0.5) -> float:
    """Keys' cubic convolution kernel (a = -0.5: the "bicubic" of most image libraries)."""
    t = abs(t)
    if t < 1:
        return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    if t < 2:
        return a * (t ** 3 - 5 * t ** 2 + 8 * t - 4)
    return 0.0


class CubicUpsample(nn.Module):
    """Upsampling by ``scale`` as a transposed convolution with stride ``scale`` on pycnn's kernel,
    its kernel Keys' cubic convolution: the (fixed) skip path of the residual models, equal to
    ``pycnn.data.superres.bicubic_resize`` upscaling (the baseline) with the default ``a=-0.5``.

    High-res pixel o sits at low-res coordinate u = (o + 0.5) / scale - 0.5 (pixel centres, as in
    ``bicubic_resize``), so out[o] = sum_j x[j] * K(u - j). A transposed convolution computes
    out[o] = sum_j x[j] * W[o + p - j * scale]: hence W[t] = K((t - p + 0.5) / scale - 0.5) over the
    taps where K is non-zero, and the padding p that makes the output exactly scale times larger.
    The input is first padded by 2 pixels that repeat its border (K reaches 2 pixels), and the
    matching 2 * scale output pixels are cut off again, so edges are handled as the baseline does.
    With ``a=-0.75`` this is torch's ``interpolate(mode="bicubic")``, which the tests check.
    """

    def __init__(self, scale: int, channels: int = 1, a: float = -0.5):
        super().__init__()
        lo = math.ceil(scale * (0.5 - 2) - 0.5)
        hi = math.floor(scale * (0.5 + 2) - 0.5)
        taps = torch.tensor([_keys_cubic((t + 0.5) / scale - 0.5, a) for t in range(lo, hi + 1)], dtype=torch.float64)
        self.scale, self.channels, self.padding = scale, channels, -lo
        self.register_buffer("weight", torch.outer(taps, taps).float().expand(channels, 1, -1, -1).contiguous())

    def forward(self, x):
        s = self.scale
        x = nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")  # data movement, not a kernel
        y = PF.conv_transpose2d(x, self.weight.to(x.dtype), None, s, self.padding, 0, self.channels)
        return y[..., 2 * s:y.shape[-2] - 2 * s, 2 * s:y.shape[-1] - 2 * s]


def _he_init(layers, negative_slope: float = 0.0, nonlinearity: str = "leaky_relu") -> None:
    """He (MSRA) normal initialisation of the convolutions in ``layers`` for the (P)ReLU after them,
    zero biases, as FSRCNN's paper does: torch's default (uniform, 1/3 of that variance) shrinks
    the signal at each layer, and through FSRCNN's 7 layers to almost nothing, so the last layer,
    and through it the rest, hardly learned (measured FSRCNN x3, 750 steps: +0.00 dB over bicubic
    with the default, see the tests)."""
    for m in layers:
        if isinstance(m, pnn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=negative_slope, nonlinearity=nonlinearity)
            nn.init.zeros_(m.bias)


# Inputs are Y in [16, 235] / 255; the layers see them centred (see the module's notes).
_MID = 0.5


class SRCNN(nn.Module):
    """Patch extraction (f1 x f1, n1 filters), non-linear mapping (1x1, n2), reconstruction (f3 x f3).

    ``residual=True`` adds the input back (the network predicts the missing detail, as in VDSR):
    the same layers train several times faster, which is what a few minutes of CPU allow. The
    published SRCNN is ``residual=False``. Torch's default initialisation, not He's: with He's, the
    quick demo's 30 steps (Adam, lr 1e-3) ended 2.3 dB *below* bicubic (-0.04 dB with the default),
    the larger features making the first steps on the last layer noisy.
    """

    input_kind = "bicubic"

    def __init__(self, scale: int, in_channels: int = 1, n1: int = 64, n2: int = 32, f1: int = 9, f3: int = 5,
                 residual: bool = True):
        super().__init__()
        _check("srcnn", scale, in_channels)
        self.scale, self.residual = scale, residual
        self.extract = _conv(in_channels, n1, f1)
        self.map = _conv(n1, n2, 1)
        self.reconstruct = _conv(n2, in_channels, f3)
        self.relu = nn.ReLU()
        if residual:  # start at the identity: the output is the bicubic input until trained
            nn.init.normal_(self.reconstruct.weight, std=1e-3)
            nn.init.zeros_(self.reconstruct.bias)

    def forward(self, x):
        y = self.reconstruct(self.relu(self.map(self.relu(self.extract(x - _MID)))))
        return x + y if self.residual else y + _MID


class FSRCNN(nn.Module):
    """FSRCNN(d, s, m): 5x5 conv to d features, 1x1 shrink to s, m 3x3 convs, 1x1 expand to d
    (PReLU after each), then a 9x9 transposed convolution with stride = scale to the output.
    ``residual=True`` adds the baseline's bicubic upsampling of the input (:class:`CubicUpsample`), see the
    module's notes; the published FSRCNN is ``residual=False``.

    The transposed convolution's padding p and output_padding o are chosen so the output is
    exactly scale times the input: (n - 1) * scale - 2p + 9 + o = scale * n.
    """

    input_kind = "low_res"

    def __init__(self, scale: int, in_channels: int = 1, d: int = 56, s: int = 12, m: int = 4,
                 residual: bool = True):
        super().__init__()
        _check("fsrcnn", scale, in_channels)
        self.scale = scale
        self.skip = CubicUpsample(scale, in_channels) if residual else None
        layers = [_conv(in_channels, d, 5), nn.PReLU(d), _conv(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            layers += [_conv(s, s, 3), nn.PReLU(s)]
        layers += [_conv(s, d, 1), nn.PReLU(d)]
        self.body = nn.Sequential(*layers)
        _he_init(self.body, 0.25)  # PReLU starts at slope 0.25
        k = 9
        output_padding = (k - scale) % 2
        padding = (k - scale + output_padding) // 2
        self.upsample = pnn.ConvTranspose2d(d, in_channels, k, stride=scale, padding=padding,
                                            output_padding=output_padding)
        nn.init.normal_(self.upsample.weight, std=1e-3)  # as the paper: the deconvolution starts near zero
        nn.init.zeros_(self.upsample.bias)

    def forward(self, x):
        y = self.upsample(self.body(x - _MID))
        return y + (_MID if self.skip is None else self.skip(x))


class ESPCN(nn.Module):
    """5x5 conv (n1), 3x3 conv (n2), 3x3 conv to in_channels * scale**2, pixel shuffle.
    ``residual=True`` adds the baseline's bicubic upsampling of the input (:class:`CubicUpsample`), see the
    module's notes; the published ESPCN is ``residual=False``."""

    input_kind = "low_res"

    def __init__(self, scale: int, in_channels: int = 1, n1: int = 64, n2: int = 32, activation: str = "tanh",
                 residual: bool = True, mid_layers: int = 0):
        super().__init__()
        _check("espcn", scale, in_channels)
        acts = {"tanh": nn.Tanh, "relu": nn.ReLU}
        if activation not in acts:
            raise ValueError(f"espcn: activation must be 'tanh' or 'relu', got {activation!r}")
        # at most 6: the network then sees 10 low-res pixels around each output, within the margin
        # of pycnn.superres.upscale_y's tiles (12)
        if isinstance(mid_layers, bool) or not isinstance(mid_layers, int) or not 0 <= mid_layers <= 6:
            raise ValueError(f"espcn: mid_layers must be an int in 0..6, got {mid_layers!r}")
        self.scale = scale
        layers = [_conv(in_channels, n1, 5), acts[activation](), _conv(n1, n2, 3), acts[activation]()]
        for _ in range(mid_layers):
            layers += [_conv(n2, n2, 3), acts[activation]()]
        self.body = nn.Sequential(*layers, _conv(n2, in_channels * scale * scale, 3))
        _he_init(self.body, nonlinearity=activation)
        self.shuffle = pnn.PixelShuffle(scale)
        self.skip = CubicUpsample(scale, in_channels) if residual else None
        if residual:  # start at cubic interpolation: the detail path begins near zero
            nn.init.normal_(self.body[-1].weight, std=1e-3)
            nn.init.zeros_(self.body[-1].bias)

    def forward(self, x):
        y = self.shuffle(self.body(x - _MID))
        return y + (_MID if self.skip is None else self.skip(x))


def srcnn(scale: int = 2, in_channels: int = 1, **kwargs) -> nn.Module:
    return SRCNN(scale, in_channels, **kwargs)


def fsrcnn(scale: int = 2, in_channels: int = 1, **kwargs) -> nn.Module:
    return FSRCNN(scale, in_channels, **kwargs)


def espcn(scale: int = 2, in_channels: int = 1, **kwargs) -> nn.Module:
    return ESPCN(scale, in_channels, **kwargs)
