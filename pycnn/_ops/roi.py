"""RoIAlign, RoIPool, NMS and box IoU on pycnn's kernels (torch.ops.pycnn.*).

torchvision.ops semantics (the geometry lives in csrc/common/roi_math.h, shared by the CPU and
CUDA kernels). RoIs arrive here as one Tensor[K, 5] (batch index, x1, y1, x2, y2) in the input's
dtype; pycnn/ops.py converts torchvision's other form (a list of Tensor[L, 4]). Same pattern as
pycnn/_ops/pool.py: custom op with checks -> fake -> backward custom op -> register_autograd.
The boxes get no gradient (as in torchvision).
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor

from pycnn._ops import native


def _check_rois(op: str, x: Tensor, rois: Tensor) -> None:
    native.check_tensor(op, "boxes", rois, dims=2)
    if rois.shape[1] != 5:
        raise ValueError(f"{op}: boxes must be a Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of "
                         f"Tensor[L, 4], got shape {tuple(rois.shape)}")
    native.check_float_tensors(op, input=x, boxes=rois)


def _check_roi_args(op: str, x: Tensor, rois: Tensor, pooled_h: int, pooled_w: int, spatial_scale: float) -> None:
    native.check_tensor(op, "input", x, dims=4)
    _check_rois(op, x, rois)
    if pooled_h <= 0 or pooled_w <= 0:
        raise ValueError(f"{op}: output_size must be positive, got ({pooled_h}, {pooled_w})")
    if not (spatial_scale > 0 and spatial_scale < float("inf")):
        raise ValueError(f"{op}: spatial_scale must be a positive finite number, got {spatial_scale}")
    N, C, H, W = x.shape
    if (H == 0 or W == 0) and C > 0:
        raise ValueError(f"{op}: input must have a non-empty height and width, got shape {tuple(x.shape)}")


def _check_batch_indices(op: str, rois: Tensor, N: int) -> None:
    """Every batch index an integer in [0, N). Data-dependent, so only on real tensors (on CUDA it
    waits for the device; torchvision reads out of bounds instead)."""
    if rois.shape[0] == 0:
        return
    b = rois[:, 0]
    bad = ~((b >= 0) & (b < N) & (b == torch.trunc(b)))
    if bool(bad.any()):
        k = int(bad.nonzero()[0, 0])
        raise ValueError(f"{op}: box {k} has batch index {float(b[k])}, which is not an integer in [0, {N}) "
                         f"(input batch size {N})")


def _shape(x_shape, K: int, pooled_h: int, pooled_w: int) -> List[int]:
    N, C, H, W = x_shape
    return [N, C, H, W, K, pooled_h, pooled_w]  # RoiShape


# ---- roi_align ------------------------------------------------------------------------------

# Samples per bin side: the cap of the adaptive grid (csrc/common/roi_math.h, kMaxAdaptiveGrid)
# also bounds an explicit sampling_ratio, whose per-RoI tap tables the kernels allocate.
MAX_SAMPLING_RATIO = 1 << 16


def _check_sampling_ratio(sampling_ratio: int) -> None:
    if sampling_ratio > MAX_SAMPLING_RATIO:
        raise ValueError(f"roi_align: sampling_ratio must be at most {MAX_SAMPLING_RATIO}, got {sampling_ratio}")


@native.custom_op("roi_align")
def roi_align(x: Tensor, rois: Tensor, pooled_h: int, pooled_w: int, spatial_scale: float,
              sampling_ratio: int, aligned: bool) -> Tensor:
    """x [N, C, H, W], rois [K, 5] -> [K, C, pooled_h, pooled_w]: bilinear samples averaged per bin."""
    op = "roi_align"
    _check_roi_args(op, x, rois, pooled_h, pooled_w, spatial_scale)
    _check_sampling_ratio(sampling_ratio)
    _check_batch_indices(op, rois, x.shape[0])
    x, rois = x.contiguous(), rois.contiguous()
    K, C = rois.shape[0], x.shape[1]
    y = x.new_empty(K, C, pooled_h, pooled_w)
    if y.numel():
        native.call("roi_align_forward", x, _shape(x.shape, K, pooled_h, pooled_w), float(spatial_scale),
                    int(sampling_ratio), bool(aligned), native.ptr(x), native.ptr(rois), native.ptr(y))
    return y


@roi_align.register_fake
def _(x, rois, pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned):
    _check_roi_args("roi_align", x, rois, pooled_h, pooled_w, spatial_scale)
    _check_sampling_ratio(sampling_ratio)
    return x.new_empty(rois.shape[0], x.shape[1], pooled_h, pooled_w)


def _check_align_backward(op: str, grad: Tensor, rois: Tensor, input_shape: List[int]) -> None:
    native.check_tensor(op, "grad_out", grad, dims=4)
    _check_rois(op, grad, rois)
    if len(input_shape) != 4 or tuple(grad.shape[:2]) != (rois.shape[0], input_shape[1]):
        raise ValueError(f"{op}: grad_out has shape {tuple(grad.shape)}, expected [{rois.shape[0]}, "
                         f"{input_shape[1] if len(input_shape) == 4 else '?'}, PH, PW] for input shape "
                         f"{tuple(input_shape)}")


@native.custom_op("roi_align_backward")
def roi_align_backward(grad: Tensor, rois: Tensor, input_shape: List[int], spatial_scale: float,
                       sampling_ratio: int, aligned: bool) -> Tensor:
    """grad_in [N, C, H, W] (deterministic: see csrc/cpu/roi.cpp)."""
    _check_align_backward("roi_align_backward", grad, rois, input_shape)
    _check_sampling_ratio(sampling_ratio)
    grad, rois = grad.contiguous(), rois.contiguous()
    gx = grad.new_empty(input_shape)
    if gx.numel():
        K, _, PH, PW = grad.shape
        native.call("roi_align_backward", grad, _shape(input_shape, K, PH, PW), float(spatial_scale),
                    int(sampling_ratio), bool(aligned), native.ptr(grad), native.ptr(rois), native.ptr(gx))
    return gx


@roi_align_backward.register_fake
def _(grad, rois, input_shape, spatial_scale, sampling_ratio, aligned):
    _check_align_backward("roi_align_backward", grad, rois, input_shape)
    return grad.new_empty(input_shape)


def _align_setup_context(ctx, inputs, output):
    x, rois, _, _, spatial_scale, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.args = (list(x.shape), spatial_scale, sampling_ratio, aligned)


def _align_backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    gx = native.run("roi_align_backward", grad, rois, *ctx.args)
    return gx, None, None, None, None, None, None


native.register_autograd("roi_align", _align_backward, _align_setup_context)


# ---- roi_pool -------------------------------------------------------------------------------

@native.custom_op("roi_pool")
def roi_pool(x: Tensor, rois: Tensor, pooled_h: int, pooled_w: int, spatial_scale: float) -> Tuple[Tensor, Tensor]:
    """x [N, C, H, W], rois [K, 5] -> (max per bin [K, C, pooled_h, pooled_w], int64 argmax h * W + w
    within the input plane, -1 for an empty bin)."""
    op = "roi_pool"
    _check_roi_args(op, x, rois, pooled_h, pooled_w, spatial_scale)
    _check_batch_indices(op, rois, x.shape[0])
    x, rois = x.contiguous(), rois.contiguous()
    K, C = rois.shape[0], x.shape[1]
    y = x.new_empty(K, C, pooled_h, pooled_w)
    argmax = x.new_empty(K, C, pooled_h, pooled_w, dtype=torch.int64)
    if y.numel():
        native.call("roi_pool_forward", x, _shape(x.shape, K, pooled_h, pooled_w), float(spatial_scale),
                    native.ptr(x), native.ptr(rois), native.ptr(y), native.ptr(argmax))
    return y, argmax


@roi_pool.register_fake
def _(x, rois, pooled_h, pooled_w, spatial_scale):
    _check_roi_args("roi_pool", x, rois, pooled_h, pooled_w, spatial_scale)
    K, C = rois.shape[0], x.shape[1]
    return x.new_empty(K, C, pooled_h, pooled_w), x.new_empty(K, C, pooled_h, pooled_w, dtype=torch.int64)


def _check_pool_backward(op: str, grad: Tensor, rois: Tensor, argmax: Tensor, input_shape: List[int]) -> None:
    _check_align_backward(op, grad, rois, input_shape)
    if argmax.dtype != torch.int64 or argmax.shape != grad.shape or argmax.device != grad.device:
        raise ValueError(f"{op}: argmax must be int64 on {grad.device} with shape {tuple(grad.shape)}, got "
                         f"{argmax.dtype} on {argmax.device} with shape {tuple(argmax.shape)}")


@native.custom_op("roi_pool_backward")
def roi_pool_backward(grad: Tensor, rois: Tensor, argmax: Tensor, input_shape: List[int],
                      spatial_scale: float) -> Tensor:
    """grad_in [N, C, H, W]: each output gradient added at its argmax (deterministic). The CPU
    kernel scatters through the argmax; the CUDA one gathers, and finds the bins that may hold a
    pixel from the RoI's geometry, hence spatial_scale."""
    _check_pool_backward("roi_pool_backward", grad, rois, argmax, input_shape)
    grad, rois, argmax = grad.contiguous(), rois.contiguous(), argmax.contiguous()
    gx = grad.new_empty(input_shape)
    if gx.numel():
        K, _, PH, PW = grad.shape
        native.call("roi_pool_backward", grad, _shape(input_shape, K, PH, PW), float(spatial_scale), native.ptr(grad),
                    native.ptr(rois), native.ptr(argmax), native.ptr(gx))
    return gx


@roi_pool_backward.register_fake
def _(grad, rois, argmax, input_shape, spatial_scale):
    _check_pool_backward("roi_pool_backward", grad, rois, argmax, input_shape)
    return grad.new_empty(input_shape)


def _pool_setup_context(ctx, inputs, output):
    x, rois = inputs[:2]
    _, argmax = output
    ctx.mark_non_differentiable(argmax)
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(rois, argmax)
    ctx.input_shape = list(x.shape)
    ctx.spatial_scale = float(inputs[4])


def _pool_backward(ctx, grad, grad_argmax):
    if grad is None:
        return None, None, None, None, None
    rois, argmax = ctx.saved_tensors
    gx = native.run("roi_pool_backward", grad, rois, argmax, ctx.input_shape, ctx.spatial_scale)
    return gx, None, None, None, None


native.register_autograd("roi_pool", _pool_backward, _pool_setup_context)


# ---- nms, batched_nms, box_iou ------------------------------------------------------------

def _check_boxes(op: str, name: str, boxes: Tensor) -> None:
    native.check_tensor(op, name, boxes, dims=2)
    if boxes.shape[1] != 4:
        raise ValueError(f"{op}: {name} must be a Tensor[N, 4] (x1, y1, x2, y2), got shape {tuple(boxes.shape)}")


def _check_nms(op: str, boxes: Tensor, scores: Tensor, idxs: Tensor | None) -> None:
    _check_boxes(op, "boxes", boxes)
    native.check_tensor(op, "scores", scores, dims=1)
    native.check_float_tensors(op, boxes=boxes, scores=scores)
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"{op}: {boxes.shape[0]} boxes but {scores.shape[0]} scores")
    if idxs is not None:
        native.check_tensor(op, "idxs", idxs, dims=1)
        if idxs.dtype != torch.int64 or idxs.device != boxes.device or idxs.shape[0] != boxes.shape[0]:
            raise ValueError(f"{op}: idxs must be int64 on {boxes.device} with {boxes.shape[0]} entries, got "
                             f"{idxs.dtype} on {idxs.device} with shape {tuple(idxs.shape)}")


def _nms(boxes: Tensor, scores: Tensor, idxs: Tensor | None, iou_threshold: float) -> Tensor:
    # Stable sort: equal scores keep their input order (NaN scores sort first, as torch.sort).
    order = torch.sort(scores.detach(), descending=True, stable=True).indices
    n = order.shape[0]
    if n == 0:
        return order
    sorted_boxes = boxes.detach()[order].contiguous()
    categories = idxs[order].contiguous() if idxs is not None else None
    keep = torch.empty(n, dtype=torch.uint8, device=boxes.device)
    args = [n, native.ptr(sorted_boxes), native.ptr(categories), float(iou_threshold), native.ptr(keep)]
    if boxes.is_cuda:  # the CUDA kernel's overlap bitmask (see csrc/cuda/nms.cu)
        workspace = torch.empty(native._C_cuda.nms_workspace_words(n), dtype=torch.int64, device=boxes.device)
        args.append(native.ptr(workspace))
    native.call("nms_sorted", boxes, *args)
    return order[keep.bool()]


def _nms_fake(boxes, scores, idxs):
    n = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty(n, dtype=torch.int64)


@native.custom_op("nms")
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Indices (int64) of the boxes greedy NMS keeps, by descending score."""
    _check_nms("nms", boxes, scores, None)
    return _nms(boxes, scores, None, iou_threshold)


@nms.register_fake
def _(boxes, scores, iou_threshold):
    _check_nms("nms", boxes, scores, None)
    return _nms_fake(boxes, scores, None)


@native.custom_op("batched_nms")
def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each category idxs[i] (boxes of different categories never suppress each other)."""
    _check_nms("batched_nms", boxes, scores, idxs)
    return _nms(boxes, scores, idxs, iou_threshold)


@batched_nms.register_fake
def _(boxes, scores, idxs, iou_threshold):
    _check_nms("batched_nms", boxes, scores, idxs)
    return _nms_fake(boxes, scores, idxs)


def _check_box_iou(a: Tensor, b: Tensor) -> None:
    _check_boxes("box_iou", "boxes1", a)
    _check_boxes("box_iou", "boxes2", b)
    native.check_float_tensors("box_iou", boxes1=a, boxes2=b)


@native.custom_op("box_iou")
def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """[N, M] IoU of every pair (same formula as nms)."""
    _check_box_iou(a, b)
    a, b = a.contiguous(), b.contiguous()
    out = a.new_empty(a.shape[0], b.shape[0])
    if out.numel():
        native.call("box_iou", a, a.shape[0], b.shape[0], native.ptr(a), native.ptr(b), native.ptr(out))
    return out


@box_iou.register_fake
def _(a, b):
    _check_box_iou(a, b)
    return a.new_empty(a.shape[0], b.shape[0])
