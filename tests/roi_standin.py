"""A slow pure-torch stand-in for pycnn.ops (roi_align, roi_pool, nms, batched_nms, box_iou), with
torchvision.ops semantics, used only to develop the Mask R-CNN before the native ops land.
Never imported by pycnn itself; ``install()`` puts it in place of ``pycnn.ops`` for a session."""
from __future__ import annotations

import sys
import types

import torch


def _rois(boxes):
    if isinstance(boxes, (list, tuple)):
        return torch.cat([torch.cat([torch.full((len(b), 1), i, dtype=b.dtype), b], 1)
                          for i, b in enumerate(boxes)]) if boxes else torch.zeros(0, 5)
    return boxes


def _bilinear(flat, base, y, x, h, w):
    """flat [N*H*W, C]; base [K] (image offset b*H*W); y, x [K, ...] -> [K, ..., C] with
    torchvision's border rules (0 beyond one pixel outside, clamped to the edge inside)."""
    valid = ((y >= -1) & (y <= h) & (x >= -1) & (x <= w)).to(flat.dtype)
    y, x = y.clamp(min=0), x.clamp(min=0)
    y0, x0 = y.floor().long().clamp(max=h - 1), x.floor().long().clamp(max=w - 1)
    y1, x1 = (y0 + 1).clamp(max=h - 1), (x0 + 1).clamp(max=w - 1)
    y = torch.where(y0 >= h - 1, y0.to(y.dtype), y)
    x = torch.where(x0 >= w - 1, x0.to(x.dtype), x)
    ly, lx = (y - y0)[..., None], (x - x0)[..., None]
    hy, hx = 1 - ly, 1 - lx
    shape = (-1,) + (1,) * (y.ndim - 1)
    g = lambda yy, xx: flat[(base.view(shape) + yy * w + xx).reshape(-1)].reshape(*yy.shape, -1)  # noqa: E731
    out = hy * hx * g(y0, x0) + hy * lx * g(y0, x1) + ly * hx * g(y1, x0) + ly * lx * g(y1, x1)
    return out * valid[..., None]


def roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    rois = _rois(boxes).to(input.dtype)
    n, c, h, w = input.shape
    if len(rois) == 0:
        return input.new_zeros(0, c, ph, pw)
    if sampling_ratio <= 0:  # adaptive: the sample count differs per RoI, one at a time
        return torch.cat([_roi_align_fixed(input, r[None], ph, pw, spatial_scale, aligned, r) for r in rois])
    return _roi_align_fixed(input, rois, ph, pw, spatial_scale, aligned, None, sampling_ratio)


def _roi_align_fixed(input, rois, ph, pw, spatial_scale, aligned, one=None, sampling_ratio=None):
    n, c, h, w = input.shape
    dt = input.dtype
    off = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, i] * spatial_scale - off for i in range(1, 5))
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    bh, bw = rh / ph, rw / pw
    if one is not None:
        sy, sx = max(int(torch.ceil(rh[0] / ph)), 1), max(int(torch.ceil(rw[0] / pw)), 1)
    else:
        sy = sx = sampling_ratio
    iy = (torch.arange(ph, dtype=dt)[:, None] + (torch.arange(sy, dtype=dt) + 0.5) / sy)  # [ph, sy]
    ix = (torch.arange(pw, dtype=dt)[:, None] + (torch.arange(sx, dtype=dt) + 0.5) / sx)
    y = y1[:, None, None] + iy[None] * bh[:, None, None]  # [K, ph, sy]
    x = x1[:, None, None] + ix[None] * bw[:, None, None]  # [K, pw, sx]
    k = len(rois)
    yy = y[:, :, :, None, None].expand(k, ph, sy, pw, sx)
    xx = x[:, None, None].expand(k, ph, sy, pw, sx)
    flat = input.permute(0, 2, 3, 1).reshape(-1, c)
    base = rois[:, 0].long() * (h * w)
    v = _bilinear(flat, base, yy, xx, h, w)  # [K, ph, sy, pw, sx, C]
    return v.mean((2, 4)).permute(0, 3, 1, 2).contiguous()


def roi_pool(input, boxes, output_size, spatial_scale=1.0):
    raise NotImplementedError("roi_pool: not part of the stand-in")


def box_iou(a, b):
    area = lambda t: (t[:, 2] - t[:, 0]).clamp(min=0) * (t[:, 3] - t[:, 1]).clamp(min=0)  # noqa: E731
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def nms(boxes, scores, iou_threshold):
    order = scores.argsort(descending=True)
    keep = []
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    iou = box_iou(boxes, boxes)
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def batched_nms(boxes, scores, idxs, iou_threshold):
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    offsets = idxs.to(boxes) * (boxes.max() + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


def install():
    """Makes ``import pycnn.ops`` give this module (when pycnn has no ops module of its own)."""
    import pycnn
    try:
        import pycnn.ops  # noqa: F401
        return sys.modules["pycnn.ops"]
    except ImportError:
        pass
    mod = types.ModuleType("pycnn.ops")
    for name in ("roi_align", "roi_pool", "nms", "batched_nms", "box_iou"):
        setattr(mod, name, globals()[name])
    sys.modules["pycnn.ops"] = mod
    pycnn.ops = mod
    return mod
