"""Detection ops with torchvision.ops's names, signatures and semantics, on pycnn's kernels.

    import pycnn.ops as ops
    feats = ops.roi_align(features, [boxes_img0, boxes_img1], output_size=7, spatial_scale=1 / 8,
                          sampling_ratio=2, aligned=True)
    keep = ops.batched_nms(boxes, scores, labels, iou_threshold=0.5)

Boxes are (x1, y1, x2, y2) in image coordinates; RoI boxes are either one Tensor[K, 5] whose
first column is the batch index, or a list of Tensor[L, 4], one per image. Each op is also a
custom op, torch.ops.pycnn.<name> (pycnn/_ops/roi.py), with fake kernels and autograd.
Differences from torchvision: roi_pool propagates NaN and reports an all -inf bin's first pixel
(torch's max-pooling rule, so it equals adaptive_max_pool2d on whole images), a NaN/infinite box
gives zeros instead of reading anywhere, and a bad batch index raises instead of reading out of
bounds. Backward passes are deterministic on CPU and CUDA.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from pycnn._ops import native
from pycnn._ops import roi as _roi  # noqa: F401  (registers torch.ops.pycnn.roi_*)

BoxesLike = Union[Tensor, Sequence[Tensor]]

__all__ = ["roi_align", "roi_pool", "nms", "batched_nms", "box_iou", "box_area", "RoIAlign", "RoIPool"]


def _output_size(op: str, output_size) -> Tuple[int, int]:
    if isinstance(output_size, (int, torch.SymInt)) and not isinstance(output_size, bool):
        size = (output_size, output_size)
    elif isinstance(output_size, (list, tuple)) and len(output_size) == 2:
        size = tuple(output_size)
    else:
        raise ValueError(f"{op}: output_size must be an int or a pair of ints, got {output_size!r}")
    if not all(isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool) for v in size):
        raise ValueError(f"{op}: output_size must be an int or a pair of ints, got {output_size!r}")
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"{op}: output_size must be positive, got {output_size!r}")
    return size


def to_roi_format(op: str, boxes: BoxesLike, like: Tensor) -> Tensor:
    """A Tensor[K, 5] (batch index, x1, y1, x2, y2) from either RoI box form."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"{op}: boxes must be a Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of "
                             f"Tensor[L, 4], got a tensor of shape {tuple(boxes.shape)}")
        return boxes
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(f"{op}: boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")
    parts = []
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
            shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise ValueError(f"{op}: boxes[{i}] must be a Tensor[L, 4] (x1, y1, x2, y2), got {shape}")
        native.check_float_tensors(op, input=like, **{f"boxes[{i}]": b})
        parts.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))
    if not parts:
        return like.new_empty(0, 5)
    return torch.cat(parts, dim=0)


def roi_align(input: Tensor, boxes: BoxesLike, output_size, spatial_scale: float = 1.0,
              sampling_ratio: int = -1, aligned: bool = False) -> Tensor:
    """RoIAlign (Mask R-CNN): [K, C, *output_size], each bin the average of bilinear samples.

    sampling_ratio: samples per bin side; <= 0 takes ceil(roi size / bins) (adaptive).
    aligned: shift the box by -0.5 pixel, so pixel centres sit at integer + 0.5 (Detectron2)."""
    ph, pw = _output_size("roi_align", output_size)
    rois = to_roi_format("roi_align", boxes, input)
    return native.run("roi_align", input, rois, ph, pw, float(spatial_scale), int(sampling_ratio), bool(aligned))


def roi_pool(input: Tensor, boxes: BoxesLike, output_size, spatial_scale: float = 1.0) -> Tensor:
    """RoIPool (Fast R-CNN): [K, C, *output_size], the max over each bin of the box rounded to
    whole pixels; the gradient is routed through each bin's argmax (an empty bin gives 0)."""
    ph, pw = _output_size("roi_pool", output_size)
    rois = to_roi_format("roi_pool", boxes, input)
    return native.run("roi_pool", input, rois, ph, pw, float(spatial_scale))[0]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: int64 indices of the kept boxes, by descending score
    (ties keep input order). A box is dropped when its IoU with a kept box is > iou_threshold."""
    return native.run("nms", boxes, scores, float(iou_threshold))


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """nms within each category idxs (int64): boxes of different categories never suppress each other."""
    return native.run("batched_nms", boxes, scores, idxs, float(iou_threshold))


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """[N, M] IoU of boxes1[i] and boxes2[j] (x1, y1, x2, y2)."""
    return native.run("box_iou", boxes1, boxes2)


def box_area(boxes: Tensor) -> Tensor:
    """(x2 - x1) * (y2 - y1) of each box."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


class RoIAlign(nn.Module):
    """torchvision.ops.RoIAlign: roi_align with fixed arguments."""

    def __init__(self, output_size, spatial_scale: float, sampling_ratio: int, aligned: bool = False):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale
        self.sampling_ratio, self.aligned = sampling_ratio, aligned

    def forward(self, input: Tensor, rois: BoxesLike) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")


class RoIPool(nn.Module):
    """torchvision.ops.RoIPool: roi_pool with fixed arguments."""

    def __init__(self, output_size, spatial_scale: float):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale

    def forward(self, input: Tensor, rois: BoxesLike) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"
