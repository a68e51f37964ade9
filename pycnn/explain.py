"""Convolution as a matrix product (the lecture's "convolution matrix").

A 2-D convolution is linear in its input, so for a fixed kernel there is a sparse matrix C with
``conv2d(x, w).flatten() == C @ x.flatten()``: each row holds the kernel laid over one output
pixel's window, zeros elsewhere. The transposed convolution is then multiplication by C.T, which
is why it maps the output's shape back to the input's ("going backward of convolution") and why
it is exactly conv2d's input-gradient.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = ["conv_matrix", "conv_output_shape", "conv_transpose_output_padding", "conv_matrix_figure"]

IntPair = Union[int, Sequence[int]]


def _pair(name: str, v) -> Tuple[int, int]:
    if isinstance(v, bool):
        raise TypeError(f"conv_matrix: {name} must be an int or a pair, got {v!r}")
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(i) for i in v)
    if len(t) != 2:
        raise ValueError(f"conv_matrix: {name} must be an int or a pair, got {v!r}")
    return t


def _input_hw(weight: Tensor, input_shape, groups: int) -> Tuple[int, int, int]:
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) == 2:
        shape = (weight.shape[1] * groups,) + shape
    if len(shape) != 3:
        raise ValueError(f"conv_matrix: input_shape must be (H, W), (C, H, W) or (N, C, H, W), got {input_shape}")
    if shape[0] != weight.shape[1] * groups:
        raise ValueError(f"conv_matrix: input has {shape[0]} channels, weight expects "
                         f"{weight.shape[1] * groups} (weight {tuple(weight.shape)}, groups={groups})")
    return shape


def conv_output_shape(weight: Tensor, input_shape, stride: IntPair = 1, padding: IntPair = 0,
                      dilation: IntPair = 1, groups: int = 1) -> Tuple[int, int, int]:
    """(C_out, H_out, W_out) of conv2d(x, weight) for an input of ``input_shape``."""
    cin, h, w = _input_hw(weight, input_shape, groups)
    (sh, sw), (ph, pw), (dh, dw) = _pair("stride", stride), _pair("padding", padding), _pair("dilation", dilation)
    kh, kw = weight.shape[2:]
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"conv_matrix: kernel {(kh, kw)} (dilation {(dh, dw)}) does not fit the padded "
                         f"{h}x{w} input (padding {(ph, pw)})")
    return weight.shape[0], ho, wo


def conv_transpose_output_padding(weight: Tensor, input_shape, stride: IntPair = 1, padding: IntPair = 0,
                                  dilation: IntPair = 1, groups: int = 1) -> Tuple[int, int]:
    """The ``output_padding`` that makes conv_transpose2d of conv2d's output return ``input_shape``
    (a strided convolution drops the last (H + 2p - d(k-1) - 1) mod s rows; this puts them back)."""
    _, h, w = _input_hw(weight, input_shape, groups)
    _, ho, wo = conv_output_shape(weight, input_shape, stride, padding, dilation, groups)
    (sh, sw), (ph, pw), (dh, dw) = _pair("stride", stride), _pair("padding", padding), _pair("dilation", dilation)
    kh, kw = weight.shape[2:]
    return (h - ((ho - 1) * sh - 2 * ph + dh * (kh - 1) + 1), w - ((wo - 1) * sw - 2 * pw + dw * (kw - 1) + 1))


def conv_matrix(weight: Tensor, input_shape, stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                groups: int = 1) -> Tensor:
    """The matrix C with ``conv2d(x, weight, stride=..., padding=..., dilation=..., groups=...)
    .flatten() == C @ x.flatten()`` for one input of ``input_shape`` ((C, H, W) or (H, W)).

    Shape [C_out * H_out * W_out, C_in * H * W], same dtype and device as ``weight``. Built
    directly from the weights: row (o, i, j) holds w[o, c, ki, kj] at column
    (c, i * s - p + ki * d, j * s - p + kj * d) for every tap that lands inside the image (taps on
    the zero padding contribute nothing and are dropped). Multiplying by C.T is conv_transpose2d
    with the same stride, padding and dilation (and ``conv_transpose_output_padding``).
    """
    if not isinstance(weight, Tensor) or weight.dim() != 4:
        raise ValueError(f"conv_matrix: weight must be a 4-D [out, in/groups, kh, kw] tensor, got "
                         f"{tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or weight.shape[0] % groups:
        raise ValueError(f"conv_matrix: groups={groups!r} must be a positive int dividing out channels "
                         f"{weight.shape[0]}")
    cin, h, w = _input_hw(weight, input_shape, groups)
    cout, ho, wo = conv_output_shape(weight, input_shape, stride, padding, dilation, groups)
    (sh, sw), (ph, pw), (dh, dw) = _pair("stride", stride), _pair("padding", padding), _pair("dilation", dilation)
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"conv_matrix: stride and dilation must be >= 1 and padding >= 0, got stride "
                         f"{(sh, sw)}, padding {(ph, pw)}, dilation {(dh, dw)}")
    cin_g, kh, kw = weight.shape[1:]
    dev = weight.device
    # Index grids over [out, c, ki, kj, i, j]: one entry per multiply-add of the convolution.
    o = torch.arange(cout, device=dev).view(-1, 1, 1, 1, 1, 1)
    c = (o // (cout // groups)) * cin_g + torch.arange(cin_g, device=dev).view(1, -1, 1, 1, 1, 1)
    ki = torch.arange(kh, device=dev).view(1, 1, -1, 1, 1, 1)
    kj = torch.arange(kw, device=dev).view(1, 1, 1, -1, 1, 1)
    i = torch.arange(ho, device=dev).view(1, 1, 1, 1, -1, 1)
    j = torch.arange(wo, device=dev).view(1, 1, 1, 1, 1, -1)
    y = i * sh - ph + ki * dh
    x = j * sw - pw + kj * dw
    full = (cout, cin_g, kh, kw, ho, wo)
    rows = (o * ho * wo + i * wo + j).expand(full)
    cols = (c * h * w + y * w + x).expand(full)
    inside = ((y >= 0) & (y < h) & (x >= 0) & (x < w)).expand(full)
    values = weight.detach().view(cout, cin_g, kh, kw, 1, 1).expand(full)
    matrix = torch.zeros(cout * ho * wo, cin * h * w, dtype=weight.dtype, device=dev)
    matrix.index_put_((rows[inside], cols[inside]), values[inside], accumulate=True)
    return matrix


def conv_matrix_figure(weight: Tensor, input_shape, stride: IntPair = 1, padding: IntPair = 0,
                       dilation: IntPair = 1, ax=None, annotate: Optional[bool] = None):
    """Draws the convolution matrix: one row per output pixel, one column per input pixel, the
    kernel's values sliding along the diagonal band, zeros blank. Values are written in the cells
    when the matrix is small (``annotate``). Returns (fig, ax)."""
    from pycnn.viz.plot import new_figure

    m = conv_matrix(weight, input_shape, stride, padding, dilation).detach().float().cpu()
    rows, cols = m.shape
    fig, ax = new_figure(ax, figsize=(max(3.0, 0.35 * cols), max(1.5, 0.35 * rows + 0.8)))
    limit = float(m.abs().max()) or 1.0
    shown = m.numpy().copy()
    shown[shown == 0] = float("nan")  # blank cells for structural zeros
    ax.imshow(shown, cmap="coolwarm", vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_xticks([x - 0.5 for x in range(cols + 1)], minor=True)
    ax.set_yticks([y - 0.5 for y in range(rows + 1)], minor=True)
    ax.grid(which="minor", color="0.85", linewidth=0.5)
    ax.tick_params(which="both", length=0, labelsize=6)
    ax.set_xlabel(f"input pixel (flattened {tuple(int(s) for s in input_shape)})", fontsize=8)
    ax.set_ylabel("output pixel", fontsize=8)
    if annotate is None:
        annotate = rows * cols <= 400
    if annotate:
        for (r, c_), v in zip(torch.nonzero(m).tolist(), m[m != 0].tolist()):
            ax.text(c_, r, f"{v:.2g}", ha="center", va="center", fontsize=6)
    ax.set_title(f"convolution matrix {rows}x{cols}: conv2d(x) = C @ x", fontsize=9)
    return fig, ax
