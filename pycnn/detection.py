"""Training, evaluation and drawing for instance detection/segmentation (Mask R-CNN), beside
pycnn.train's classification/segmentation loop, plus the classical watershed baseline.

    history = fit_detection(model, train_images, train_targets, val_images, val_targets, epochs=12)
    scores = evaluate_detection(model, test_images, test_targets)   # mask/box AP, completeness...
    baseline = watershed_instances(raw_test_images)                 # local maxima + watershed

Targets are one dict per image (``pycnn.data.instance_targets``); images are normalised tensors
[N, C, H, W]. Checkpoints use pycnn.train's format, so ``pycnn evaluate`` reads them too.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from pycnn.metrics import coco_ap, completeness_purity
from pycnn.train import History, load_checkpoint, save_checkpoint

__all__ = ["fit_detection", "detect", "evaluate_detection", "watershed_instances", "flip_targets",
           "format_scores", "draw_detections"]


def flip_targets(images: Tensor, targets: List[dict], horizontal: Tensor, vertical: Tensor):
    """Images and their targets flipped per image (bool [N] each): galaxies have no up or left,
    so flips are free extra data."""
    images = images.clone()
    out = []
    h, w = images.shape[-2:]
    for i, t in enumerate(targets):
        boxes, masks = t["boxes"].clone(), t["masks"]
        if horizontal[i]:
            images[i] = images[i].flip(-1)
            masks = masks.flip(-1)
            boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
        if vertical[i]:
            images[i] = images[i].flip(-2)
            masks = masks.flip(-2)
            boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
        out.append(dict(t, boxes=boxes, masks=masks))
    return images, out


def fit_detection(model: nn.Module, images: Tensor, targets: List[dict], val_images: Optional[Tensor] = None,
                  val_targets: Optional[List[dict]] = None, *, epochs: int = 10, batch_size: int = 8,
                  lr: float = 2e-3, weight_decay: float = 1e-4, warmup_steps: int = 50, augment: bool = True,
                  out: Optional[str] = None, config: Optional[dict] = None, seed: int = 0, progress: bool = True,
                  max_steps: Optional[int] = None, val_every: int = 1,
                  on_epoch: Optional[Callable[[dict], None]] = None) -> History:
    """Trains a detection model (``model(images, targets)`` -> dict of losses) with AdamW, linear
    warm-up and cosine decay, random flips when ``augment``. After every ``val_every`` epochs the
    validation mask AP is measured; ``out/last.pt`` and ``out/best.pt`` (best validation mask AP)
    are written in pycnn.train's checkpoint format. History.steps holds the summed loss per step,
    History.epochs per-epoch means of each loss and the validation APs."""
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"fit_detection: epochs and batch_size must be positive, got {epochs}, {batch_size}")
    if len(images) == 0 or len(images) != len(targets):
        raise ValueError(f"fit_detection: need one target per image, got {len(images)} images, {len(targets)} targets")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the samplers' randomness
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warmup_steps if s < warmup_steps else
                                              0.5 * (1 + math.cos(math.pi * (s - warmup_steps) / max(1, total - warmup_steps))))
    history, best, step = History(), -math.inf, 0
    for epoch in range(epochs):
        if max_steps is not None and step >= max_steps:
            break
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(images), generator=gen)
        sums: Dict[str, float] = {}
        batches = list(perm.split(batch_size))
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(batches), desc=f"epoch {epoch + 1}/{epochs}", unit="batch", dynamic_ncols=True)
        n_done = 0
        for b in batches:
            if max_steps is not None and step >= max_steps:
                break
            x, t = images[b], [targets[int(i)] for i in b]
            if augment:
                x, t = flip_targets(x, t, torch.rand(len(b), generator=gen) < 0.5,
                                    torch.rand(len(b), generator=gen) < 0.5)
            losses = model(x, t)
            loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            n_done += 1
            history.steps.append(float(loss.detach()))
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            if bar is not None:
                bar.set_postfix(loss=f"{history.steps[-1]:.3f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        record = {"epoch": epoch + 1, "step": step, "lr": opt.param_groups[0]["lr"],
                  "train_loss": sum(sums.values()) / max(1, n_done), **{k: v / max(1, n_done) for k, v in sums.items()}}
        if val_images is not None and len(val_images) and ((epoch + 1) % val_every == 0 or epoch + 1 == epochs):
            v = evaluate_detection(model, val_images, val_targets)
            record.update({"val_mask_map": v["segm"]["map"], "val_mask_map_50": v["segm"]["map_50"],
                           "val_box_map": v["bbox"]["map"]})
        record["seconds"] = time.perf_counter() - t0
        history.epochs.append(record)
        if progress:
            shown = ", ".join(f"{k} {record[k]:.4f}" for k in ("train_loss", "val_mask_map", "val_mask_map_50")
                              if k in record)
            print(f"epoch {epoch + 1}: {shown} ({record['seconds']:.0f} s)")
        score = record.get("val_mask_map", -record["train_loss"])
        if out and n_done == len(batches):
            state = {"model": model.state_dict(), "epoch": epoch + 1, "step": step, "history": history.to_dict(),
                     "metrics": record, "task": "detect", "num_classes": getattr(model, "num_classes", None),
                     "config": dict(config or {})}
            save_checkpoint(os.path.join(out, "last.pt"), state)
            if score > best:
                save_checkpoint(os.path.join(out, "best.pt"), state)
        best = max(best, score)
        if on_epoch is not None:
            on_epoch(record)
    return history


@torch.no_grad()
def detect(model: nn.Module, images: Tensor, batch_size: int = 32) -> List[dict]:
    """Detections per image in eval mode (the model's mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        return [d for x in images.split(batch_size) for d in model(x)]
    finally:
        model.train(was_training)


def evaluate_detection(model_or_preds, images: Optional[Tensor], targets: Sequence[dict],
                       score_threshold: float = 0.5) -> dict:
    """Box and mask AP (``bbox``, ``segm``: map, map_50, map_75, mar_100) and mask completeness and
    purity at IoU 0.5 (detections scoring >= ``score_threshold``) of a model on ``images``, or of
    ready-made predictions (pass the list and ``images=None``)."""
    preds = model_or_preds if isinstance(model_or_preds, (list, tuple)) else detect(model_or_preds, images)
    return {"bbox": coco_ap(preds, targets, "bbox"), "segm": coco_ap(preds, targets, "segm"),
            **completeness_purity(preds, targets, "segm", score_threshold=score_threshold),
            "num_images": len(preds)}


def format_scores(name: str, s: dict) -> str:
    return (f"{name}: mask AP {s['segm']['map']:.3f}  AP50 {s['segm']['map_50']:.3f}  AP75 {s['segm']['map_75']:.3f}"
            f"  | box AP {s['bbox']['map']:.3f}  AP50 {s['bbox']['map_50']:.3f}"
            f"  | completeness {s['completeness']:.3f}  purity {s['purity']:.3f}  ({s['num_images']} images)")


# ---- classical baseline ---------------------------------------------------------------------------

def watershed_instances(images: Tensor, threshold: float = 0.1, sigma: float = 2.0, min_distance: int = 4,
                        min_area: int = 30) -> List[dict]:
    """Deblending without learning: smooth each (raw, [0, 1]) image with a Gaussian of ``sigma``,
    take the foreground above ``threshold`` (the isophote the galaxy masks use), seed one marker at
    each local maximum (``skimage.feature.peak_local_max``, ``min_distance`` apart) and grow them
    by watershed on the inverted smoothed light inside the foreground. Each region of at least
    ``min_area`` pixels is one detection, scored by its share of the image's peak brightness (so
    the brightest galaxy ranks first). Returns torchmetrics-style prediction dicts."""
    from scipy import ndimage
    from skimage import feature, filters, segmentation

    from pycnn.data.instances import masks_to_boxes
    out = []
    for img in images:
        a = img[0].detach().cpu().numpy().astype(np.float64) if img.ndim == 3 else img.detach().cpu().numpy()
        smooth = filters.gaussian(a, sigma=sigma, preserve_range=True)
        fg = smooth > threshold
        peaks = feature.peak_local_max(smooth, min_distance=min_distance, labels=ndimage.label(fg)[0],
                                       exclude_border=False)
        markers = np.zeros(a.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        regions = segmentation.watershed(-smooth, markers, mask=fg)
        masks, scores = [], []
        top = smooth.max() if smooth.max() > 0 else 1.0
        for r in range(1, len(peaks) + 1):
            m = regions == r
            if m.sum() >= min_area:
                masks.append(m)
                scores.append(float(smooth[m].max() / top))
        m = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, *a.shape, dtype=torch.bool)
        out.append({"boxes": masks_to_boxes(m), "scores": torch.tensor(scores, dtype=torch.float32),
                    "labels": torch.ones(len(m), dtype=torch.int64), "masks": m})
    return out


# ---- drawing ----------------------------------------------------------------------------------------

def draw_detections(ax, image, det: dict, score_threshold: float = 0.5, title: str = "", show_scores: bool = True):
    """Draws a grey image with each detection's mask in its own colour, its box and its score."""
    import matplotlib.patches as patches
    img = image.detach().cpu().float()
    if img.ndim == 3:
        img = img.mean(0) if img.shape[0] != 1 else img[0]
    lo, hi = float(img.min()), float(img.max())
    grey = ((img - lo) / (hi - lo if hi > lo else 1.0)).numpy()
    rgb = np.stack([grey] * 3, -1)
    keep = [i for i in range(len(det["boxes"])) if "scores" not in det or float(det["scores"][i]) >= score_threshold]
    colours = [np.array(c) for c in ((0.95, 0.3, 0.2), (0.2, 0.6, 1.0), (0.3, 0.9, 0.3), (1.0, 0.8, 0.1),
                                     (0.8, 0.3, 0.9), (0.1, 0.9, 0.9))]
    for n, i in enumerate(keep):
        if "masks" in det:
            m = det["masks"][i].detach().cpu().numpy().astype(bool)
            rgb[m] = 0.5 * rgb[m] + 0.5 * colours[n % len(colours)]
    ax.imshow(rgb, interpolation="nearest")
    for n, i in enumerate(keep):
        x1, y1, x2, y2 = (float(v) - 0.5 for v in det["boxes"][i])  # pixel edges on imshow's pixel centres
        ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, lw=1.2,
                                       edgecolor=colours[n % len(colours)]))
        if show_scores and "scores" in det:
            ax.text(x1, y1 - 0.5, f"{float(det['scores'][i]):.2f}", color="white", fontsize=7,
                    bbox=dict(facecolor=colours[n % len(colours)], alpha=0.7, pad=0.5, lw=0))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
