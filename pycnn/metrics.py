"""Detection metrics: COCO mean average precision (pycocotools' definition), and the completeness
and purity astronomers quote for source catalogues.

    coco_ap(preds, targets, iou_type="segm")   # {"map", "map_50", "map_75", ...}
    completeness_purity(preds, targets)        # {"completeness", "purity"} at IoU 0.5

Inputs follow torchmetrics' MeanAveragePrecision: one dict per image; predictions with ``boxes``
[K, 4] (x1, y1, x2, y2), ``scores`` [K], ``labels`` [K] and, for ``iou_type="segm"``, ``masks``
[K, H, W] bool; targets the same without scores.
"""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch

from pycnn.models.mask_rcnn import mask_iou as _pairwise_mask_iou  # the model's Soft-NMS uses it too

__all__ = ["coco_ap", "completeness_purity", "best_score_threshold", "box_iou_xyxy", "mask_iou"]

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)   # pycocotools: np.linspace(.5, .95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)    # pycocotools: 101 recall thresholds


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [len(a), len(b)] of xyxy boxes (areas as (x2 - x1) * (y2 - y1), like pycocotools'
    [x, y, w, h] boxes)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    union = area_a[:, None] + area_b[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [len(a), len(b)] of boolean masks [K, H, W] (0 where both are empty), in float64."""
    a, b = (torch.from_numpy(np.asarray(m, bool).reshape(len(m), -1)) for m in (a, b))
    return _pairwise_mask_iou(a, b, torch.float64).numpy()


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def _check(preds: Sequence[dict], targets: Sequence[dict], iou_type: str) -> None:
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"coco_ap: iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if len(preds) != len(targets):
        raise ValueError(f"coco_ap: {len(preds)} prediction dicts but {len(targets)} target dicts")
    key = "boxes" if iou_type == "bbox" else "masks"
    for i, (p, t) in enumerate(zip(preds, targets)):
        for what, d, need in (("prediction", p, (key, "scores", "labels")), ("target", t, (key, "labels"))):
            missing = [k for k in need if k not in d]
            if missing:
                raise ValueError(f"coco_ap: {what} {i} lacks {missing} (iou_type={iou_type!r})")
        if len(p[key]) != len(p["scores"]) or len(p[key]) != len(p["labels"]):
            raise ValueError(f"coco_ap: prediction {i} has {len(p[key])} {key}, {len(p['scores'])} scores, "
                             f"{len(p['labels'])} labels")


def _match_image(ious: np.ndarray, order: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """pycocotools' greedy matching: detections in score order each take the not yet matched
    ground truth of highest IoU >= the threshold. Returns matched [T, D] bool (in ``order``)."""
    n_gt = ious.shape[1]
    matched = np.zeros((len(thresholds), len(order)), bool)
    for ti, t in enumerate(thresholds):
        taken = np.zeros(n_gt, bool)
        for j, d in enumerate(order):
            best, best_g = min(t, 1 - 1e-10), -1
            for g in range(n_gt):
                # pycocotools: skip if taken; skip if iou < best; ties go to the later gt
                if taken[g] or ious[d, g] < best:
                    continue
                best, best_g = ious[d, g], g
            if best_g >= 0:
                taken[best_g] = True
                matched[ti, j] = True
    return matched


def _evaluate(preds, targets, iou_type: str, thresholds: np.ndarray, max_dets: int):
    """Per class: concatenated (scores, matched [T, D]) over images and the number of gts."""
    key = "boxes" if iou_type == "bbox" else "masks"
    iou_fn = box_iou_xyxy if iou_type == "bbox" else mask_iou
    classes = sorted(set(np.concatenate([_np(t["labels"]).reshape(-1) for t in targets] +
                                        [_np(p["labels"]).reshape(-1) for p in preds]).tolist()))
    per_class = {}
    for c in classes:
        scores, matched, n_gt = [], [], 0
        for p, t in zip(preds, targets):
            pl, tl = _np(p["labels"]).reshape(-1), _np(t["labels"]).reshape(-1)
            d_idx, g_idx = np.flatnonzero(pl == c), np.flatnonzero(tl == c)
            n_gt += len(g_idx)
            if len(d_idx) == 0:
                continue
            s = _np(p["scores"]).reshape(-1)[d_idx].astype(np.float64)
            order = np.argsort(-s, kind="mergesort")[:max_dets]
            dets = _np(p[key])[d_idx]
            gts = _np(t[key])[g_idx]
            ious = iou_fn(dets, gts) if len(g_idx) else np.zeros((len(d_idx), 0))
            scores.append(s[order])
            matched.append(_match_image(ious, order, thresholds))
        per_class[c] = (np.concatenate(scores) if scores else np.zeros(0),
                        np.concatenate(matched, 1) if matched else np.zeros((len(thresholds), 0), bool), n_gt)
    return per_class


def coco_ap(preds: Sequence[Dict[str, torch.Tensor]], targets: Sequence[Dict[str, torch.Tensor]],
            iou_type: str = "bbox", max_dets: int = 100) -> Dict[str, float]:
    """COCO average precision as pycocotools computes it (area range "all", no crowd regions).

    For each class and IoU threshold in 0.50:0.05:0.95: each image's detections (at most
    ``max_dets``, highest scores) are matched greedily in score order to the unmatched ground
    truth of highest IoU; all detections are then ranked by score (stable, image order breaks
    ties), precision is made monotone (the envelope from the right) and read at 101 recall points
    0, 0.01, ..., 1 (0 beyond the highest recall reached). AP averages the points; ``map`` averages
    over thresholds and classes that have ground truth; ``map_50`` / ``map_75`` at IoU 0.5 / 0.75;
    ``mar_100`` is the recall averaged the same way. -1 when no class has ground truth.
    """
    _check(preds, targets, iou_type)
    per_class = _evaluate(preds, targets, iou_type, IOU_THRESHOLDS, max_dets)
    precision, recall = [], []   # per class with gt: [T, R] and [T]
    for c, (scores, matched, n_gt) in per_class.items():
        if n_gt == 0:
            continue
        order = np.argsort(-scores, kind="mergesort")
        tp = np.cumsum(matched[:, order], 1).astype(np.float64)
        fp = np.cumsum(~matched[:, order], 1).astype(np.float64)
        q = np.zeros((len(IOU_THRESHOLDS), len(RECALL_POINTS)))
        rec_c = np.zeros(len(IOU_THRESHOLDS))
        for ti in range(len(IOU_THRESHOLDS)):
            rc = tp[ti] / n_gt
            pr = tp[ti] / (tp[ti] + fp[ti] + np.spacing(1))
            rec_c[ti] = rc[-1] if len(rc) else 0.0
            pr = np.maximum.accumulate(pr[::-1])[::-1] if len(pr) else pr
            idx = np.searchsorted(rc, RECALL_POINTS, side="left")
            ok = idx < len(pr)
            q[ti, ok] = pr[idx[ok]]
        precision.append(q)
        recall.append(rec_c)
    if not precision:
        return {"map": -1.0, "map_50": -1.0, "map_75": -1.0, "mar_100": -1.0}
    p = np.stack(precision)  # [C, T, R]
    r = np.stack(recall)     # [C, T]
    return {"map": float(p.mean()), "map_50": float(p[:, 0].mean()), "map_75": float(p[:, 5].mean()),
            "mar_100": float(r.mean())}


def completeness_purity(preds: Sequence[dict], targets: Sequence[dict], iou_type: str = "segm",
                        iou_threshold: float = 0.5, score_threshold: float = 0.5) -> Dict[str, float]:
    """Completeness (matched true objects / all true objects, i.e. recall) and purity (matched
    detections / all detections, i.e. precision) of the detections scoring >= ``score_threshold``,
    matched one-to-one as in :func:`coco_ap` (same class, greedy by score, IoU >= threshold)."""
    _check(preds, targets, iou_type)
    kept = []
    for p in preds:
        keep = _np(p["scores"]).reshape(-1) >= score_threshold
        kept.append({k: (_np(v)[keep] if k in ("boxes", "masks", "scores", "labels") else v) for k, v in p.items()})
    per_class = _evaluate(kept, targets, iou_type, np.array([iou_threshold]), max_dets=10 ** 9)
    n_true = sum(n for _, _, n in per_class.values())
    n_det = sum(m.shape[1] for _, m, _ in per_class.values())
    n_match = sum(int(m.sum()) for _, m, _ in per_class.values())
    return {"completeness": n_match / n_true if n_true else float("nan"),
            "purity": n_match / n_det if n_det else float("nan"),
            "true_objects": n_true, "detections": n_det, "matched": n_match}


def best_score_threshold(preds: Sequence[dict], targets: Sequence[dict], iou_type: str = "segm",
                         iou_threshold: float = 0.5, candidates: Sequence[float] = tuple(np.arange(1, 20) / 20)
                         ) -> float:
    """The score threshold (of ``candidates``) with the best F1 of completeness and purity: a
    catalogue's operating point, chosen on a validation split and then applied to the test split.
    Scores are not calibrated alike across detectors (a product of class score and predicted mask
    IoU is lower than a class score), so a fixed 0.5 would compare them at arbitrary points."""
    best, best_f1 = float(candidates[0]), -1.0
    for t in candidates:
        cp = completeness_purity(preds, targets, iou_type, iou_threshold, float(t))
        c, p = cp["completeness"], cp["purity"]
        f1 = 0.0 if not (c + p > 0) else 2 * c * p / (c + p)  # nan (no detections) counts as 0
        if f1 > best_f1:
            best, best_f1 = float(t), f1
    return best
