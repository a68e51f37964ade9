"""A small, faithful Mask R-CNN (He et al. 2017) on pycnn layers and pycnn.ops.

    model = pycnn.models.get("mask_rcnn", in_channels=1, num_classes=2)
    losses = model(images, targets)       # training: dict of the five standard losses
    detections = model(images)            # eval: per image {boxes, labels, scores, masks}

images: float [N, C, H, W] (already normalised); targets: one dict per image with ``boxes``
[K, 4] (x1, y1, x2, y2 in pixel-edge coordinates: a box around pixels 3..5 spans 3 to 6),
``labels`` [K] int64 in 1..num_classes-1 (0 is background) and ``masks`` [K, H, W].

The parts, as in the paper and torchvision's reference implementation, at one feature level:
backbone (conv/BN, stride ``stride``) -> RPN (3x3 conv, objectness and box deltas per anchor;
IoU matcher, balanced sampler, box coder, NMS of proposals) -> RoIAlign 7x7 box head (two FC
layers, class scores and class-specific box deltas) and RoIAlign 14x14 mask head (four 3x3 convs,
a 2x2 stride-2 transposed conv to 28x28, one mask logit map per class). Inference keeps scores
above ``score_thresh``, runs class-wise NMS and pastes each 28x28 mask back into the image; with
``mask_rescore`` each score is then multiplied by its mask's mean probability inside the mask.
Options (off by default): ``mask_iou_head`` (Mask Scoring R-CNN's MaskIoU head; scores times the
predicted mask IoU), ``soft_nms_sigma`` (Gaussian Soft-NMS on mask IoU instead of box NMS),
``tta`` (proposals pooled over the 8 flips/transposes, up to ``tta_proposals`` per image, and the
heads averaged over them), ``mask_roi_scale`` / ``box_roi_scale``
(enlarged RoIs for the mask / box head), ``mask_head_bn`` (batch norm after each of the mask
head's four convs) and ``mask_dice_weight`` (the mask loss adds that weight times the soft Dice
loss of each positive RoI's mask, 1 - (2 sum(p t) + 1) / (sum p + sum t + 1), to the per-pixel
binary cross-entropy: an overlap loss that counts a small galaxy's edge as much as a large one's);
``box_loss_weight`` scales the box head's regression loss (the backbone is shared, so a heavy box
loss costs the masks); ``mask_batch_size`` caps the positive RoIs per image that train the mask
(and MaskIoU) head (0: all of them).

RoIAlign runs with ``aligned=True`` (half-pixel shift) everywhere: boxes are in pixel-edge
coordinates, so pixel i's centre is i + 0.5 and the shift makes samples land on it.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import pycnn.nn as pnn
from pycnn import ops

__all__ = ["MaskRCNN", "mask_rcnn", "BoxCoder", "Matcher", "sample_balanced", "AnchorGenerator", "paste_masks",
           "scale_boxes", "mask_iou", "soft_nms", "pasted_mask_iou", "Dihedral"]


# ---- box utilities ----------------------------------------------------------------------------

class BoxCoder:
    """Boxes <-> deltas (dx, dy, dw, dh) relative to reference boxes, R-CNN's parametrisation:
    centre offsets in units of the reference size, log size ratios; each scaled by ``weights``."""

    def __init__(self, weights: Sequence[float], clip: float = math.log(1000.0 / 16)):
        self.weights = tuple(float(w) for w in weights)
        self.clip = clip  # the largest log size ratio decoded (exp would overflow otherwise)

    @staticmethod
    def _centres(b: Tensor):
        w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        return b[:, 0] + 0.5 * w, b[:, 1] + 0.5 * h, w, h

    def encode(self, gt: Tensor, ref: Tensor) -> Tensor:
        wx, wy, ww, wh = self.weights
        gx, gy, gw, gh = self._centres(gt)
        rx, ry, rw, rh = self._centres(ref)
        return torch.stack([wx * (gx - rx) / rw, wy * (gy - ry) / rh,
                            ww * torch.log(gw / rw), wh * torch.log(gh / rh)], 1)

    def decode(self, deltas: Tensor, ref: Tensor) -> Tensor:
        """deltas [K, 4 * C] against ref [K, 4] -> boxes [K, 4 * C]."""
        wx, wy, ww, wh = self.weights
        rx, ry, rw, rh = (t[:, None] for t in self._centres(ref.to(deltas.dtype)))
        dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
        dw, dh = (deltas[:, 2::4] / ww).clamp(max=self.clip), (deltas[:, 3::4] / wh).clamp(max=self.clip)
        cx, cy = dx * rw + rx, dy * rh + ry
        w, h = torch.exp(dw) * rw, torch.exp(dh) * rh
        return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], 2).flatten(1)


class Matcher:
    """Each prediction (anchor or proposal) to its best ground-truth box by IoU: the gt index when
    IoU >= ``high``, BELOW (-1) when IoU < ``low``, BETWEEN (-2, ignored) otherwise. With
    ``allow_low_quality`` (the RPN's rule) every gt also keeps the predictions it overlaps most,
    so a gt box no anchor covers well still gets a positive."""
    BELOW, BETWEEN = -1, -2

    def __init__(self, high: float, low: float, allow_low_quality: bool = False):
        if low > high:
            raise ValueError(f"Matcher: low ({low}) must be <= high ({high})")
        self.high, self.low, self.allow_low_quality = high, low, allow_low_quality

    def __call__(self, iou: Tensor) -> Tensor:
        """iou [G, P] -> matched gt index per prediction [P] (or BELOW / BETWEEN). Also batched:
        iou [B, G, P] -> [B, P], each image's rows padded with IoU -1 up to G (a padding row never
        matches: every real IoU is >= 0, and it keeps no low-quality match)."""
        if iou.shape[-2] == 0:
            return torch.full(iou.shape[:-2] + iou.shape[-1:], self.BELOW, dtype=torch.int64)
        best, idx = iou.max(-2)
        matches = idx.clone()
        matches[best < self.high] = self.BETWEEN
        matches[best < self.low] = self.BELOW
        if self.allow_low_quality:
            best_per_gt = iou.max(-1, keepdim=True).values
            where = torch.nonzero((iou == best_per_gt) & (best_per_gt > 0), as_tuple=True)
            pred = (*where[:-2], where[-1])  # (image,) prediction
            matches[pred] = idx[pred]
        return matches


def sample_balanced(matches: Tensor, batch_size: int, positive_fraction: float,
                    generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """Random positive (matched) and negative (BELOW) indices, at most ``batch_size`` in all and
    at most ``positive_fraction`` of them positive; negatives fill what positives leave."""
    pos = torch.nonzero(matches >= 0).flatten()
    neg = torch.nonzero(matches == Matcher.BELOW).flatten()
    n_pos = min(len(pos), int(batch_size * positive_fraction))
    n_neg = min(len(neg), batch_size - n_pos)
    pos = pos[torch.randperm(len(pos), generator=generator)[:n_pos]]
    neg = neg[torch.randperm(len(neg), generator=generator)[:n_neg]]
    return pos, neg


def _clip_boxes(boxes: Tensor, size: Tuple[int, int]) -> Tensor:
    h, w = size
    x = boxes[..., 0::2].clamp(0, w)
    y = boxes[..., 1::2].clamp(0, h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)


def _remove_small(boxes: Tensor, min_size: float) -> Tensor:
    return torch.nonzero(((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
                         ).flatten()


def scale_boxes(boxes: Tensor, factor: float) -> Tensor:
    """Boxes [K, 4] scaled by ``factor`` about their centres (not clipped: RoIAlign reads zeros
    outside the image and paste_masks places any box)."""
    if factor == 1.0:
        return boxes
    centre = 0.5 * (boxes[:, :2] + boxes[:, 2:])
    half = 0.5 * factor * (boxes[:, 2:] - boxes[:, :2])
    return torch.cat([centre - half, centre + half], 1)


def mask_iou(a: Tensor, b: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """IoU of every pair of binary masks, a [K, H, W] x b [L, H, W] -> [K, L] (0 where both are
    empty), computed in ``dtype`` (pycnn.metrics' mask IoU is this one in float64)."""
    a, b = a.flatten(1).to(dtype), b.flatten(1).to(dtype)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    return inter / union.clamp(min=1.0)


def soft_nms(iou: Tensor, scores: Tensor, sigma: float) -> Tuple[Tensor, Tensor]:
    """Gaussian Soft-NMS (Bodla et al. 2017) on a precomputed pairwise ``iou`` [K, K]: repeatedly
    take the highest-scoring detection left and multiply every other remaining score by
    exp(-iou^2 / sigma). Nothing is dropped: returns (order, decayed scores in that order), the
    order being descending in the decayed scores. Overlapping galaxies whose boxes or masks
    overlap a lot keep a (lowered) score instead of vanishing as in hard NMS."""
    if sigma <= 0:
        raise ValueError(f"soft_nms: sigma must be > 0, got {sigma}")
    k = len(scores)
    current = scores.detach().clone().to(torch.float64)
    decay = torch.exp(-iou.detach().to(torch.float64) ** 2 / sigma)
    alive = torch.ones(k, dtype=torch.bool)
    order, final = [], []
    for _ in range(k):
        i = int(torch.where(alive, current, torch.tensor(-math.inf, dtype=torch.float64)).argmax())
        order.append(i)
        final.append(float(current[i]))
        alive[i] = False
        current = torch.where(alive, current * decay[i], current)
    return torch.tensor(order, dtype=torch.int64), torch.tensor(final, dtype=scores.dtype)


class Dihedral:
    """One of the image's flips/transposes (transpose first, then horizontal, then vertical flip;
    the transpose needs a square image), applied to images or maps [..., H, W] and to boxes
    [K, 4], and undone. Test-time augmentation averages the heads' outputs over these views."""

    def __init__(self, transpose: bool, horizontal: bool, vertical: bool, size: Tuple[int, int]):
        self.transpose, self.horizontal, self.vertical, self.size = transpose, horizontal, vertical, size

    @staticmethod
    def all(size: Tuple[int, int]) -> List["Dihedral"]:
        """The identity first; all 8 views of a square image, the 4 flips otherwise."""
        transposes = (False, True) if size[0] == size[1] else (False,)
        return [Dihedral(t, h, v, size) for t in transposes for h in (False, True) for v in (False, True)]

    def image(self, x: Tensor) -> Tensor:
        if self.transpose:
            x = x.transpose(-1, -2)
        if self.horizontal:
            x = x.flip(-1)
        if self.vertical:
            x = x.flip(-2)
        return x

    def unimage(self, x: Tensor) -> Tensor:
        if self.vertical:
            x = x.flip(-2)
        if self.horizontal:
            x = x.flip(-1)
        if self.transpose:
            x = x.transpose(-1, -2)
        return x

    def _flip_boxes(self, b: Tensor) -> Tensor:
        h, w = self.size  # square whenever transposed, so the sizes hold in either frame
        if self.horizontal:
            b = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
        if self.vertical:
            b = torch.stack([b[:, 0], h - b[:, 3], b[:, 2], h - b[:, 1]], 1)
        return b

    def boxes(self, b: Tensor) -> Tensor:
        return self._flip_boxes(b[:, [1, 0, 3, 2]] if self.transpose else b)

    def unboxes(self, b: Tensor) -> Tensor:
        b = self._flip_boxes(b)
        return b[:, [1, 0, 3, 2]] if self.transpose else b


def _rois(boxes: List[Tensor]) -> Tensor:
    """[K, 5] (batch index, x1, y1, x2, y2) from one box list per image."""
    return torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], 1) for i, b in enumerate(boxes)])


# ---- anchors and RPN ----------------------------------------------------------------------------

class AnchorGenerator(nn.Module):
    """Anchors of every ``size`` x ``aspect_ratio`` (height / width) centred on each feature cell
    (cell j of a stride-s map covers pixels [j s, (j + 1) s), centre (j + 0.5) s). Ordered
    (y, x, anchor), matching the RPN head's output layout."""

    def __init__(self, sizes: Sequence[float], aspect_ratios: Sequence[float], stride: int):
        super().__init__()
        self.stride = stride
        base = []
        for r in aspect_ratios:
            for s in sizes:  # area s^2, height / width = r
                w, h = s / math.sqrt(r), s * math.sqrt(r)
                base.append([-w / 2, -h / 2, w / 2, h / 2])
        self.register_buffer("base", torch.tensor(base), persistent=False)

    @property
    def num_anchors(self) -> int:
        return self.base.shape[0]

    def forward(self, feature_size: Tuple[int, int]) -> Tensor:
        fh, fw = feature_size
        ys = (torch.arange(fh, dtype=torch.float32, device=self.base.device) + 0.5) * self.stride
        xs = (torch.arange(fw, dtype=torch.float32, device=self.base.device) + 0.5) * self.stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx, cy, cx, cy], -1).reshape(-1, 1, 4)
        return (centres + self.base[None]).reshape(-1, 4)


class RPNHead(nn.Module):
    """3x3 conv + ReLU, then per anchor one objectness logit and four box deltas (1x1 convs)."""

    def __init__(self, channels: int, num_anchors: int):
        super().__init__()
        self.conv = pnn.Conv2d(channels, channels, 3, padding=1)
        self.objectness = pnn.Conv2d(channels, num_anchors, 1)
        self.deltas = pnn.Conv2d(channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        t = F.relu(self.conv(x))
        n = x.shape[0]
        logits = self.objectness(t).permute(0, 2, 3, 1).reshape(n, -1)          # [N, H*W*A]
        deltas = self.deltas(t).permute(0, 2, 3, 1).reshape(n, -1, 4)           # [N, H*W*A, 4]
        return logits, deltas


# ---- backbone -------------------------------------------------------------------------------------

def _conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    # pnn.Sequential: its BN + ReLU run as one kernel (torch.nn.Sequential's children and state_dict)
    return pnn.Sequential(pnn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), pnn.BatchNorm2d(cout),
                          nn.ReLU(inplace=True))


class Backbone(nn.Module):
    """Conv/BN/ReLU stages down to stride 4 (for context: a galaxy spans up to ~60 pixels), then
    one transposed-conv step back up to stride 2 added to the stride-2 stage, so the single
    feature level the heads read is both fine (masks) and wide in view (RPN)."""

    def __init__(self, in_channels: int, width: int):
        super().__init__()
        w = width
        self.stem = _conv_bn(in_channels, w // 2)
        self.down2 = nn.Sequential(_conv_bn(w // 2, w, 2), _conv_bn(w, w))
        self.down4 = nn.Sequential(_conv_bn(w, 2 * w, 2), _conv_bn(2 * w, 2 * w), _conv_bn(2 * w, 2 * w))
        self.up = pnn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.merge = _conv_bn(w, w)
        self.stride = 2
        self.out_channels = w

    def forward(self, x: Tensor) -> Tensor:
        c2 = self.down2(self.stem(x))
        c4 = self.down4(c2)
        up = self.up(c4)
        up = up[..., :c2.shape[-2], :c2.shape[-1]]  # odd sizes: the stride-4 map rounds up
        return self.merge(c2 + up)


# ---- the model ----------------------------------------------------------------------------------

class MaskRCNN(nn.Module):
    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 32,
                 anchor_sizes: Sequence[float] = (8, 16, 32, 64), aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
                 rpn_pre_nms_top_n: Tuple[int, int] = (600, 300), rpn_post_nms_top_n: Tuple[int, int] = (150, 50),
                 rpn_nms_thresh: float = 0.7, rpn_batch_size: int = 256, rpn_positive_fraction: float = 0.5,
                 rpn_fg_iou: float = 0.7, rpn_bg_iou: float = 0.3, box_batch_size: int = 64,
                 box_positive_fraction: float = 0.25, box_fg_iou: float = 0.5, box_bg_iou: float = 0.5,
                 representation: int = 256, mask_channels: int = 32, score_thresh: float = 0.05,
                 nms_thresh: float = 0.5, detections_per_img: int = 100, mask_threshold: float = 0.5,
                 sampling_ratio: int = 2, mask_rescore: bool = False, mask_roi_scale: float = 1.0,
                 soft_nms_sigma: float = 0.0, box_roi_scale: float = 1.0, tta: bool = False,
                 mask_iou_head: bool = False, mask_iou_train_iou: float = 0.5, mask_head_bn: bool = False,
                 mask_dice_weight: float = 0.0, box_loss_weight: float = 1.0, mask_batch_size: int = 0,
                 tta_proposals: int = 100):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"mask_rcnn: num_classes must be >= 2 (background + objects), got {num_classes}")
        if not mask_roi_scale >= 1.0 or not box_roi_scale >= 1.0 or not soft_nms_sigma >= 0.0:
            raise ValueError(f"mask_rcnn: mask_roi_scale and box_roi_scale must be >= 1 and soft_nms_sigma >= 0, "
                             f"got {mask_roi_scale}, {box_roi_scale}, {soft_nms_sigma}")
        if not mask_dice_weight >= 0.0 or not box_loss_weight >= 0.0:
            raise ValueError(f"mask_rcnn: mask_dice_weight and box_loss_weight must be >= 0, "
                             f"got {mask_dice_weight}, {box_loss_weight}")
        if isinstance(mask_batch_size, bool) or int(mask_batch_size) != mask_batch_size or mask_batch_size < 0:
            raise ValueError(f"mask_rcnn: mask_batch_size must be an int >= 0 (0: every positive RoI), "
                             f"got {mask_batch_size!r}")
        if isinstance(tta_proposals, bool) or int(tta_proposals) != tta_proposals or tta_proposals < 1:
            raise ValueError(f"mask_rcnn: tta_proposals must be an int >= 1, got {tta_proposals!r}")
        if in_channels < 1 or width < 2 or width % 2:
            raise ValueError(f"mask_rcnn: in_channels must be >= 1 and width an even number >= 2, "
                             f"got {in_channels}, {width}")
        self.num_classes = num_classes
        self.backbone = Backbone(in_channels, width)
        c = self.backbone.out_channels
        self.anchors = AnchorGenerator(anchor_sizes, aspect_ratios, self.backbone.stride)
        self.rpn_head = RPNHead(c, self.anchors.num_anchors)
        self.box_head = nn.Sequential(nn.Flatten(), pnn.Linear(c * 7 * 7, representation), nn.ReLU(inplace=True),
                                      pnn.Linear(representation, representation), nn.ReLU(inplace=True))
        self.cls_score = pnn.Linear(representation, num_classes)
        self.bbox_pred = pnn.Linear(representation, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        layers, cin = [], c
        for _ in range(4):
            layers += [pnn.Conv2d(cin, mask_channels, 3, padding=1)]
            if mask_head_bn:
                layers += [pnn.BatchNorm2d(mask_channels)]
            layers += [nn.ReLU(inplace=True)]
            cin = mask_channels
        layers += [pnn.ConvTranspose2d(mask_channels, mask_channels, 2, stride=2), nn.ReLU(inplace=True),
                   pnn.Conv2d(mask_channels, num_classes, 1)]
        self.mask_head = pnn.Sequential(*layers)  # its BN + ReLU pairs as one kernel (same numbers)
        for m in self.mask_head.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

        # Mask Scoring R-CNN's MaskIoU head (Huang et al. 2019): from the mask RoI's features and the
        # predicted mask (max-pooled to 14x14) it predicts the IoU of that mask with its galaxy's,
        # per class; detections are then ranked by class score x predicted mask IoU.
        self.maskiou_head = None
        if mask_iou_head:
            self.maskiou_head = nn.Sequential(
                pnn.Conv2d(c + 1, mask_channels, 3, padding=1), nn.ReLU(inplace=True),
                pnn.Conv2d(mask_channels, mask_channels, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                nn.Flatten(), pnn.Linear(mask_channels * 7 * 7, 128), nn.ReLU(inplace=True),
                pnn.Linear(128, num_classes))
            self.mask_pool = pnn.MaxPool2d(2, 2)

        self.rpn_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.rpn_matcher = Matcher(rpn_fg_iou, rpn_bg_iou, allow_low_quality=True)
        self.box_matcher = Matcher(box_fg_iou, box_bg_iou)
        self.rpn_pre_nms_top_n, self.rpn_post_nms_top_n = tuple(rpn_pre_nms_top_n), tuple(rpn_post_nms_top_n)
        self.rpn_nms_thresh, self.rpn_batch_size, self.rpn_positive_fraction = (
            rpn_nms_thresh, rpn_batch_size, rpn_positive_fraction)
        self.box_batch_size, self.box_positive_fraction = box_batch_size, box_positive_fraction
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.mask_threshold, self.sampling_ratio, self.mask_rescore = mask_threshold, sampling_ratio, mask_rescore
        self.mask_roi_scale, self.soft_nms_sigma = float(mask_roi_scale), float(soft_nms_sigma)
        self.box_roi_scale, self.tta = float(box_roi_scale), bool(tta)
        self.use_mask_iou = mask_iou_head  # rank by class score x predicted mask IoU
        self.mask_iou_train_iou = float(mask_iou_train_iou)
        self.mask_dice_weight = float(mask_dice_weight)
        self.box_loss_weight = float(box_loss_weight)
        self.mask_batch_size = int(mask_batch_size)
        self.tta_proposals = int(tta_proposals)
        self.spatial_scale = 1.0 / self.backbone.stride

    # -- pieces ----------------------------------------------------------------------------------

    def _roi_align(self, features: Tensor, boxes: List[Tensor], size: int) -> Tensor:
        return ops.roi_align(features, _rois(boxes), size, spatial_scale=self.spatial_scale,
                                sampling_ratio=self.sampling_ratio, aligned=True)

    def _candidates(self, logits: Tensor, deltas: Tensor, anchors: Tensor, size: Tuple[int, int],
                    pre: int) -> Tuple[Tensor, Tensor]:
        """The ``pre`` top-scoring anchors of every image, decoded and clipped to ``size``, in one
        go: boxes [N, pre, 4] and their objectness logits [N, pre]."""
        n = logits.shape[0]
        top, idx = logits.detach().topk(min(pre, logits.shape[1]), dim=1)
        picked = deltas.detach()[torch.arange(n)[:, None], idx].reshape(-1, 4)
        boxes = _clip_boxes(self.rpn_coder.decode(picked, anchors[idx.flatten()]), size).reshape(n, -1, 4)
        return boxes, top

    def _select(self, boxes: Sequence[Tensor], objectness: Sequence[Tensor], post: int) -> List[Tensor]:
        """Per image: candidates without the empty ones, NMS'd, the ``post`` best kept."""
        out = []
        for b, obj in zip(boxes, objectness):
            keep = _remove_small(b, 1e-3)
            b, obj = b[keep], obj[keep]
            keep = ops.nms(b, obj, self.rpn_nms_thresh)[:post]
            out.append(b[keep])
        return out

    def _proposals(self, logits: Tensor, deltas: Tensor, anchors: Tensor, size: Tuple[int, int]) -> List[Tensor]:
        pre, post = (self.rpn_pre_nms_top_n, self.rpn_post_nms_top_n)
        pre, post = (pre[0], post[0]) if self.training else (pre[1], post[1])
        return self._select(*self._candidates(logits, deltas, anchors, size, pre), post)

    def _tta_proposals(self, views, size: Tuple[int, int]) -> List[Tensor]:
        """Test-time augmentation's proposals: every view's candidates mapped back into the image,
        pooled per image and NMS'd together, the ``tta_proposals`` best kept. A faint companion
        the RPN misses in one orientation is often found in another (validation, six trained
        models: mask AP50 +0.006 on average, +0.000 to +0.011, against the identity view's 50)."""
        boxes, objectness = [], []
        for view, features in views:
            logits, deltas = self.rpn_head(features)
            vsize = size[::-1] if view.transpose else size
            b, obj = self._candidates(logits, deltas, self.anchors(tuple(features.shape[-2:])), vsize,
                                      self.rpn_pre_nms_top_n[1])
            boxes.append(view.unboxes(b.reshape(-1, 4)).reshape(b.shape))
            objectness.append(obj)
        return self._select(torch.cat(boxes, 1), torch.cat(objectness, 1), self.tta_proposals)

    def _rpn_loss(self, logits, deltas, anchors, targets) -> Tuple[Tensor, Tensor]:
        labels, index = [], []
        # Every image's anchors matched at once: the IoUs of all true boxes with the anchors, each
        # image's rows padded with -1 to the most boxes an image has.
        gts = [t["boxes"].to(anchors) for t in targets]
        counts = [len(g) for g in gts]
        g_max = max(counts, default=0)
        gt_pad = anchors.new_zeros(len(gts), g_max, 4)
        iou = anchors.new_full((len(gts), g_max, len(anchors)), -1.0)
        if sum(counts):
            img = torch.repeat_interleave(torch.arange(len(gts)), torch.tensor(counts))
            slot = torch.cat([torch.arange(c) for c in counts])
            gt_pad[img, slot] = torch.cat(gts)
            iou[img, slot] = ops.box_iou(torch.cat(gts), anchors)
        matches = self.rpn_matcher(iou)
        for i in range(len(targets)):
            pos, neg = sample_balanced(matches[i], self.rpn_batch_size, self.rpn_positive_fraction)
            index += [torch.stack([torch.full_like(pos, i), pos], 1), torch.stack([torch.full_like(neg, i), neg], 1)]
            labels += [torch.ones(len(pos)), torch.zeros(len(neg))]
        index = torch.cat(index)
        labels = torch.cat(labels).to(logits)
        pos_index = index[labels > 0]
        matched_gt = gt_pad[pos_index[:, 0], matches[pos_index[:, 0], pos_index[:, 1]]]
        reg_targets = self.rpn_coder.encode(matched_gt, anchors[pos_index[:, 1]])
        obj_loss = F.binary_cross_entropy_with_logits(logits[index[:, 0], index[:, 1]], labels)
        box_loss = F.smooth_l1_loss(deltas[pos_index[:, 0], pos_index[:, 1]], reg_targets.to(deltas),
                                    beta=1 / 9, reduction="sum") / max(1, len(index))
        return obj_loss, box_loss

    def _sample_rois(self, proposals: List[Tensor], targets: List[dict]):
        """Per image: proposals plus the gt boxes, matched and sampled; returns the sampled boxes,
        their matched gt index (or -1) and class labels (0 = background)."""
        boxes_out, matched_out, labels_out = [], [], []
        for props, t in zip(proposals, targets):
            props = torch.cat([props, t["boxes"].to(props)])
            matches = self.box_matcher(ops.box_iou(t["boxes"].to(props), props))
            pos, neg = sample_balanced(matches, self.box_batch_size, self.box_positive_fraction)
            keep = torch.cat([pos, neg])
            matched = matches[keep].clamp(min=-1)
            matched[len(pos):] = -1
            labels = torch.zeros(len(keep), dtype=torch.int64)
            if len(pos):
                labels[:len(pos)] = t["labels"][matches[pos]]
            boxes_out.append(props[keep])
            matched_out.append(matched)
            labels_out.append(labels)
        return boxes_out, matched_out, labels_out

    def _mask_targets(self, rois: List[Tensor], matched: List[Tensor], targets: List[dict], size: int) -> Tensor:
        """Each positive RoI's gt mask cut by RoIAlign at ``size`` x ``size`` (torchvision's rule)."""
        boxes = torch.cat(rois) if rois else torch.zeros(0, 4)
        if len(boxes) == 0:
            return torch.zeros(0, size, size)
        # One RoIAlign over every image's masks stacked: RoI i reads the plane of its own galaxy.
        first = 0
        planes, which = [], []
        for m, t in zip(matched, targets):
            planes.append(t["masks"])
            which.append(m + first)
            first += len(t["masks"])
        gt = torch.cat(planes)[:, None].to(boxes.dtype)
        cut = ops.roi_align(gt, torch.cat([torch.cat(which)[:, None].to(boxes), boxes], 1), size, spatial_scale=1.0,
                            sampling_ratio=self.sampling_ratio, aligned=True)
        return cut[:, 0]

    # -- forward ---------------------------------------------------------------------------------

    def forward(self, images: Tensor, targets: Optional[List[Dict[str, Tensor]]] = None):
        if images.ndim != 4:
            raise ValueError(f"mask_rcnn: images must be [N, C, H, W], got {tuple(images.shape)}")
        if self.training:
            if targets is None or len(targets) != len(images):
                raise ValueError("mask_rcnn: training needs one target dict per image "
                                 f"(got {None if targets is None else len(targets)} for {len(images)} images)")
            for t in targets:
                if not {"boxes", "labels", "masks"} <= set(t):
                    raise ValueError(f"mask_rcnn: a target needs boxes, labels and masks, got {sorted(t)}")
        size = tuple(images.shape[-2:])
        features = self.backbone(images)
        if self.tta and not self.training:  # each view's features, for the RPN and heads to pool over
            views = [(Dihedral(False, False, False, size), features)]
            views += [(v, self.backbone(v.image(images))) for v in Dihedral.all(size)[1:]]
            return self._detect(views, self._tta_proposals(views, size), size)
        logits, deltas = self.rpn_head(features)
        anchors = self.anchors(tuple(features.shape[-2:]))
        proposals = self._proposals(logits, deltas, anchors, size)
        if self.training:
            return self._losses(features, logits, deltas, anchors, proposals, targets)
        return self._detect([(Dihedral(False, False, False, size), features)], proposals, size)

    def _losses(self, features, logits, deltas, anchors, proposals, targets) -> Dict[str, Tensor]:
        rpn_obj, rpn_box = self._rpn_loss(logits, deltas, anchors, targets)
        rois, matched, labels = self._sample_rois(proposals, targets)
        # With box_roi_scale > 1 the box head reads a margin around each proposal (its deltas stay
        # relative to the proposal): a proposal that cuts a galaxy off shows where it continues.
        x = self.box_head(self._roi_align(features, [scale_boxes(r, self.box_roi_scale) for r in rois], 7))
        class_logits, box_deltas = self.cls_score(x), self.bbox_pred(x)
        labels_all = torch.cat(labels)
        cls_loss = F.cross_entropy(class_logits, labels_all)
        gt_boxes = torch.cat([t["boxes"][m.clamp(min=0)] if len(t["boxes"]) else torch.zeros(len(m), 4)
                              for t, m in zip(targets, matched)]).to(x)
        pos = torch.nonzero(labels_all > 0).flatten()
        reg_targets = self.box_coder.encode(gt_boxes[pos], torch.cat(rois)[pos])
        pred = box_deltas.reshape(len(x), -1, 4)[pos, labels_all[pos]]
        box_loss = self.box_loss_weight * F.smooth_l1_loss(pred, reg_targets, beta=1 / 9, reduction="sum") / max(1, len(labels_all))
        # Mask branch: positive RoIs only, the mask of the gt class; with mask_batch_size, the first
        # that many of each image's positives (sample_balanced put them first, in random order):
        # they are jittered copies of a few galaxies, and the mask and MaskIoU heads cost a third
        # of a step at 8 per image.
        # With mask_roi_scale > 1 the mask RoI is the box enlarged about its centre, in training and
        # inference alike, so a box that is a little too small does not cut the galaxy's mask off.
        trains_mask = [(lab > 0) & (torch.arange(len(lab)) < self.mask_batch_size) if self.mask_batch_size
                       else lab > 0 for lab in labels]
        pos_rois = [scale_boxes(r[q], self.mask_roi_scale) for r, q in zip(rois, trains_mask)]
        pos_matched = [m[q] for m, q in zip(matched, trains_mask)]
        pos = torch.nonzero(torch.cat(trains_mask)).flatten()  # from here on: the mask branch's positives
        if len(pos) == 0:
            mask_loss = self.mask_head[0].weight.sum() * 0.0  # keeps the graph connected
        else:
            mask_features = self._roi_align(features, pos_rois, 14)
            mask_logits = self.mask_head(mask_features)
            m = mask_logits.shape[-1]
            mask_targets = self._mask_targets(pos_rois, pos_matched, targets, m)
            chosen = mask_logits[torch.arange(len(pos)), labels_all[pos]]
            mask_loss = F.binary_cross_entropy_with_logits(chosen, mask_targets.to(chosen))
            if self.mask_dice_weight:
                p, t = torch.sigmoid(chosen).flatten(1), mask_targets.to(chosen).flatten(1)
                dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
                mask_loss = mask_loss + self.mask_dice_weight * dice.mean()
        losses = {"loss_objectness": rpn_obj, "loss_rpn_box_reg": rpn_box, "loss_classifier": cls_loss,
                  "loss_box_reg": box_loss, "loss_mask": mask_loss}
        if self.maskiou_head is not None:
            if len(pos) == 0:
                losses["loss_mask_iou"] = sum(p.sum() for p in self.maskiou_head.parameters()) * 0.0
            else:
                probs = torch.sigmoid(chosen.detach())
                gt = torch.cat([t["masks"][mm] for t, mm in zip(targets, pos_matched)])
                iou_target = pasted_mask_iou(probs, torch.cat(pos_rois), gt, self.mask_threshold)
                pred = self._predict_mask_iou(mask_features, probs, labels_all[pos])
                if self.mask_iou_train_iou < self.box_matcher.low:
                    # Also the sampled negatives that overlap a galaxy by at least mask_iou_train_iou:
                    # at inference the head has to rank such poorly placed boxes low as well.
                    near, gts, labs = [], [], []  # one box list per image (maybe empty): the batch index
                    for r, lab, t in zip(rois, labels, targets):
                        neg = r[lab == 0]
                        if len(t["boxes"]) == 0 or len(neg) == 0:
                            near.append(r.new_zeros(0, 4))
                            continue
                        best, idx = ops.box_iou(neg, t["boxes"].to(neg)).max(1)
                        ok = best >= self.mask_iou_train_iou
                        near.append(scale_boxes(neg[ok], self.mask_roi_scale))
                        gts.append(t["masks"][idx[ok]])
                        labs.append(t["labels"][idx[ok]])
                    if sum(len(b) for b in near):
                        near_features = self._roi_align(features, near, 14)
                        near_labels = torch.cat(labs)
                        with torch.no_grad():  # the mask head learns from positives only, as before
                            near_logits = self.mask_head(near_features)
                            near_probs = torch.sigmoid(near_logits[torch.arange(len(near_labels)), near_labels])
                        near_target = pasted_mask_iou(near_probs, torch.cat(near), torch.cat(gts), self.mask_threshold)
                        pred = torch.cat([pred, self._predict_mask_iou(near_features, near_probs, near_labels)])
                        iou_target = torch.cat([iou_target, near_target])
                losses["loss_mask_iou"] = F.mse_loss(pred, iou_target)
        return losses

    def _predict_mask_iou(self, mask_features: Tensor, probs: Tensor, labels: Tensor) -> Tensor:
        """MaskIoU head: predicted IoU [K] of each mask (probabilities [K, 28, 28]) of class ``labels``."""
        binary = self.mask_pool((probs > self.mask_threshold).to(mask_features)[:, None])
        out = self.maskiou_head(torch.cat([mask_features, binary], 1))
        return out[torch.arange(len(labels)), labels]

    def _box_head_view(self, view: "Dihedral", features: Tensor, proposals: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """Class probabilities [K, C] and decoded boxes [K, C, 4] (image frame) of the proposals
        seen in one view."""
        props = [view.boxes(p) for p in proposals]
        x = self.box_head(self._roi_align(features, [scale_boxes(p, self.box_roi_scale) for p in props], 7))
        boxes = self.box_coder.decode(self.bbox_pred(x), torch.cat(props)).reshape(-1, 4)
        return F.softmax(self.cls_score(x), -1), view.unboxes(boxes).reshape(len(x), -1, 4)

    def _mask_probs_view(self, view: "Dihedral", features: Tensor, dets: List[Tensor], labels: Tensor,
                         size: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """Mask probabilities of the detections pasted into the image [K, H, W] in one view, and
        each mask's "maskness" [K]: its mean probability where it is above ``mask_threshold``
        (SOLOv2's rule, on the 28x28 map)."""
        rois = [scale_boxes(view.boxes(d), self.mask_roi_scale) for d in dets]
        mask_features = self._roi_align(features, rois, 14)
        logits = self.mask_head(mask_features)
        probs = torch.sigmoid(logits[torch.arange(len(labels)), labels])
        inside = (probs > self.mask_threshold).to(probs)
        maskness = (probs * inside).flatten(1).sum(1) / inside.flatten(1).sum(1).clamp(min=1.0)
        if self.maskiou_head is not None:
            maskness = torch.stack([maskness, self._predict_mask_iou(mask_features, probs, labels).clamp(0.0, 1.0)], 1)
        vsize = size[::-1] if view.transpose else size
        return view.unimage(paste_masks(probs, torch.cat(rois), vsize)), maskness

    def _detect(self, views, proposals, size) -> List[Dict[str, Tensor]]:
        # Test-time augmentation (``tta``): the box head's probabilities and boxes, and then the
        # masks, are averaged over the views (the proposals: see _tta_proposals).
        outs = [self._box_head_view(v, f, proposals) for v, f in views]
        scores_all = torch.stack([o[0] for o in outs]).mean(0)
        boxes_all = _clip_boxes(torch.stack([o[1] for o in outs]).mean(0), size)
        results = []
        start = 0
        c = self.num_classes
        soft = self.soft_nms_sigma > 0
        for props in proposals:
            n = len(props)
            scores = scores_all[start:start + n, 1:].reshape(-1)
            boxes = boxes_all[start:start + n, 1:].reshape(-1, 4)
            labels = torch.arange(1, c).repeat(n)
            start += n
            keep = torch.nonzero(scores > self.score_thresh).flatten()
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = _remove_small(boxes, 1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            if soft:  # every candidate gets a mask; Soft-NMS on the masks below decides
                keep = scores.argsort(descending=True)
            else:
                keep = ops.batched_nms(boxes, scores, labels, self.nms_thresh)[:self.detections_per_img]
            results.append({"boxes": boxes[keep], "labels": labels[keep], "scores": scores[keep]})
        dets = [r["boxes"] for r in results]
        labels = torch.cat([r["labels"] for r in results])
        if len(labels):
            outs = [self._mask_probs_view(v, f, dets, labels, size) for v, f in views]
            pasted_all = torch.stack([o[0] for o in outs]).mean(0)
            maskness_all = torch.stack([o[1] for o in outs]).mean(0)
        else:
            pasted_all = views[0][1].new_zeros(0, *size)
            maskness_all = views[0][1].new_zeros((0, 2) if self.maskiou_head is not None else (0,))
        start = 0
        for r in results:
            n = len(r["boxes"])
            pasted = pasted_all[start:start + n]
            r["masks"] = pasted > self.mask_threshold
            r["mask_probs"] = pasted
            order = None
            if self.maskiou_head is not None:  # [K, 2]: maskness, predicted mask IoU
                mask_iou_pred = maskness_all[start:start + n, 1]
                r["mask_iou"] = mask_iou_pred
                if self.use_mask_iou and n:
                    r["scores"] = r["scores"] * mask_iou_pred
                    order = r["scores"].argsort(descending=True)
                maskness_now = maskness_all[start:start + n, 0]
            else:
                maskness_now = maskness_all[start:start + n]
            if self.mask_rescore and n:
                # The class score says "a galaxy is here", not how well this box and mask fit it;
                # the mean mask probability inside the mask does (SOLOv2's "maskness"), so sharp,
                # confident masks rank above blurred ones covering two galaxies.
                r["scores"] = r["scores"] * maskness_now
                order = r["scores"].argsort(descending=True)
            if soft and n:
                # Soft-NMS on mask IoU, class-wise: blended galaxies can share much of a box while
                # their masks differ; duplicates of one galaxy overlap in both and sink in rank.
                iou = mask_iou(r["masks"], r["masks"]) * (r["labels"][:, None] == r["labels"][None]).to(torch.float32)
                order, decayed = soft_nms(iou, r["scores"], self.soft_nms_sigma)
                order = order[:self.detections_per_img]
                r["scores"] = decayed[:self.detections_per_img]
                for key in ("boxes", "labels", "masks", "mask_probs", "mask_iou"):
                    if key in r:
                        r[key] = r[key][order]
            elif order is not None:
                for key in ("boxes", "labels", "scores", "masks", "mask_probs", "mask_iou"):
                    if key in r:
                        r[key] = r[key][order]
            start += n
        return results


def paste_masks(masks: Tensor, boxes: Tensor, size: Tuple[int, int]) -> Tensor:
    """Masks [K, M, M] (each covering its box) -> [K, H, W] in image coordinates: each image pixel
    centre inside a box samples the box's mask bilinearly; outside the box, 0 (the mask's edge
    fades over half a mask cell, as if padded with zeros, like torchvision's paste)."""
    k = len(masks)
    h, w = size
    if k == 0:
        return masks.new_zeros(0, h, w)
    ys = torch.arange(h, dtype=masks.dtype, device=masks.device) + 0.5
    xs = torch.arange(w, dtype=masks.dtype, device=masks.device) + 0.5
    b = boxes.to(masks.dtype)
    bw = (b[:, 2] - b[:, 0]).clamp(min=1e-3)
    bh = (b[:, 3] - b[:, 1]).clamp(min=1e-3)
    m_h, m_w = masks.shape[-2:]
    # Mask-cell coordinates of each pixel centre (cell i's centre at i), per detection.
    u = (xs[None] - b[:, 0:1]) / bw[:, None] * m_w - 0.5      # [K, W]
    v = (ys[None] - b[:, 1:2]) / bh[:, None] * m_h - 0.5      # [K, H]
    # Bilinear interpolation on the mask padded by one zero cell; indices past the padding read
    # the padding (0), so pixels away from the box get exactly 0.
    padded = F.pad(masks, (1, 1, 1, 1))
    x0, y0 = u.floor(), v.floor()
    fx, fy = (u - x0)[:, None, :], (v - y0)[:, :, None]
    xi0, xi1 = (x0.long() + 1).clamp(0, m_w + 1), (x0.long() + 2).clamp(0, m_w + 1)
    yi0, yi1 = (y0.long() + 1).clamp(0, m_h + 1), (y0.long() + 2).clamp(0, m_h + 1)
    # Separably (the same operations in the same order as interpolating each pixel from its four
    # cells, so the same bits): along x for every mask row, then along y.
    rows = lambda xi: padded.gather(2, xi[:, None, :].expand(k, m_h + 2, w))  # noqa: E731  [K, M+2, W]
    across = (1 - fx) * rows(xi0) + fx * rows(xi1)
    cols = lambda yi: across.gather(1, yi[:, :, None].expand(k, h, w))  # noqa: E731  [K, H, W]
    return (1 - fy) * cols(yi0) + fy * cols(yi1)


def pasted_mask_iou(probs: Tensor, boxes: Tensor, gt_masks: Tensor, threshold: float = 0.5) -> Tensor:
    """IoU [K], in the whole image, of each RoI mask (probabilities [K, M, M] over ``boxes``
    [K, 4]) pasted and thresholded, with its own true mask ``gt_masks`` [K, H, W]: the MaskIoU
    head's target (a mask the RoI cuts off counts as the miss it is)."""
    pasted = paste_masks(probs, boxes, tuple(gt_masks.shape[-2:])) > threshold
    gt = gt_masks.bool()
    inter = (pasted & gt).flatten(1).sum(1)
    union = (pasted | gt).flatten(1).sum(1)
    return inter.to(probs) / union.clamp(min=1).to(probs)


def mask_rcnn(in_channels: int = 1, num_classes: int = 2, **kwargs) -> MaskRCNN:
    """The Mask R-CNN above; ``width`` sets the backbone's channels, other keywords as MaskRCNN."""
    return MaskRCNN(in_channels=in_channels, num_classes=num_classes, **kwargs)
