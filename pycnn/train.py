"""Training and evaluation loops for classification and segmentation.

    history = fit(model, splits.train, splits.val, epochs=10, optimizer="adam", lr=1e-3, out="runs/x")
    metrics = evaluate(model, splits.test)

- Data: any map-style dataset of (image, target) pairs; TensorDatasets are batched by indexing
  their tensors directly (no per-sample collation). A target with spatial dimensions (a mask)
  makes the task segmentation, a scalar label classification.
- Checkpoints: after every epoch ``out/last.pt`` (and ``out/best.pt`` on a better validation
  metric) are written to a temporary file and renamed, so a crash never leaves half a file;
  ``fit(..., out=same, resume=True)`` continues after the last completed epoch.
- Distributed: when torch.distributed is initialised, each rank trains on its own shard of every
  epoch's permutation (padded so all ranks take the same number of steps) and only rank 0 writes
  checkpoints and shows progress. Wrap the model in DistributedDataParallel before calling fit.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["fit", "evaluate", "History", "cross_entropy", "multiclass_hinge_loss", "get_loss", "accuracy",
           "confusion_matrix", "segmentation_scores", "per_class_scores", "save_checkpoint", "load_checkpoint",
           "CheckpointError"]

CHECKPOINT_FORMAT = "pycnn-checkpoint-v1"


# ---- losses ---------------------------------------------------------------------------------

def cross_entropy(scores: Tensor, target: Tensor) -> Tensor:
    """Softmax cross-entropy, mean over samples (and pixels): scores [N, C, ...], target [N, ...]."""
    return torch.nn.functional.cross_entropy(scores, target)


def multiclass_hinge_loss(scores: Tensor, target: Tensor, margin: float = 1.0) -> Tensor:
    """Multiclass SVM loss (Weston & Watkins): sum over wrong classes j of max(0, s_j - s_y + margin),
    mean over samples (and pixels). scores [N, C, ...], target [N, ...] of class indices."""
    true_score = scores.gather(1, target.unsqueeze(1))
    margins = (scores - true_score + margin).clamp_min(0)
    # The true class contributes exactly `margin`; remove it rather than masking.
    return (margins.sum(dim=1) - margin).mean()


_LOSSES = {"cross_entropy": cross_entropy, "hinge": multiclass_hinge_loss, "svm": multiclass_hinge_loss}


def get_loss(loss: Union[str, Callable]) -> Callable[[Tensor, Tensor], Tensor]:
    if callable(loss):
        return loss
    if loss not in _LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of: {', '.join(sorted(_LOSSES))}")
    return _LOSSES[loss]


# ---- metrics --------------------------------------------------------------------------------

def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """[num_classes, num_classes] int64 counts; row = true class, column = predicted class."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    if pred.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"confusion_matrix: targets must be in [0, {num_classes}), got "
                         f"[{int(target.min())}, {int(target.max())}]")
    flat = target * num_classes + pred
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy(scores_or_pred: Tensor, target: Tensor) -> float:
    """Fraction of correct predictions; accepts scores [N, C, ...] or predicted classes [N, ...]."""
    pred = scores_or_pred.argmax(1) if scores_or_pred.dim() == target.dim() + 1 else scores_or_pred
    return float((pred == target).float().mean()) if target.numel() else float("nan")


def segmentation_scores(confusion: Tensor) -> Dict[str, float]:
    """IoU = TP / (TP + FP + FN) and Dice = 2 TP / (2 TP + FP + FN) from a pixel confusion matrix,
    averaged over the foreground classes (1 .. C-1; for a binary mask, class 1)."""
    cm = confusion.double()
    tp = cm.diag()
    true_count, pred_count = cm.sum(1), cm.sum(0)
    union = true_count + pred_count - tp
    fg = slice(1, None) if cm.shape[0] > 1 else slice(None)
    iou = (tp / union.clamp_min(1))[fg]
    dice = (2 * tp / (true_count + pred_count).clamp_min(1))[fg]
    return {"iou": float(iou.mean()), "dice": float(dice.mean())}


def per_class_scores(confusion: Tensor) -> Dict[str, Tensor]:
    """Per class (row = true class, column = predicted, as ``confusion_matrix``): precision
    TP / predicted, recall TP / true, F1 (their harmonic mean, = Dice) and support (true count),
    float64 [C] each (support int64). A class never predicted (or never present) scores 0."""
    cm = confusion.double()
    tp, true_count, pred_count = cm.diag(), cm.sum(1), cm.sum(0)
    precision = tp / pred_count.clamp_min(1)
    recall = tp / true_count.clamp_min(1)
    f1 = 2 * tp / (true_count + pred_count).clamp_min(1)
    return {"precision": precision, "recall": recall, "f1": f1, "support": confusion.sum(1).long()}


# ---- data -----------------------------------------------------------------------------------

def _infer_task(dataset) -> str:
    _, target = dataset[0]
    return "segment" if torch.as_tensor(target).dim() >= 2 else "classify"


def _as_target(y: Tensor) -> Tensor:
    """Labels [N] or masks [N, H, W] as int64; a mask [N, 1, H, W] loses its channel."""
    if y.dim() == 4 and y.shape[1] == 1:
        y = y[:, 0]
    if y.is_floating_point():
        y = y.round()
    return y.long()


def _batch(dataset, idx: Tensor):
    if isinstance(dataset, torch.utils.data.TensorDataset):
        x, y = dataset.tensors[0][idx], dataset.tensors[1][idx]
    else:
        items = [dataset[int(i)] for i in idx]
        x = torch.stack([torch.as_tensor(a) for a, _ in items])
        y = torch.stack([torch.as_tensor(b) for _, b in items])
    return x, _as_target(y)


def _num_classes(datasets, task: str) -> int:
    top = 0
    for d in datasets:
        if d is None or len(d) == 0:
            continue
        if isinstance(d, torch.utils.data.TensorDataset):
            top = max(top, int(d.tensors[1].max()))
        else:
            top = max(top, max(int(torch.as_tensor(d[i][1]).max()) for i in range(len(d))))
    return max(2, top + 1)


def _dist_info():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _epoch_indices(n: int, epoch: int, seed: int, rank: int, world: int) -> Tensor:
    """This rank's share of epoch ``epoch``'s permutation, the same on every rank and every run."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    perm = torch.randperm(n, generator=g)
    per_rank = math.ceil(n / world)
    if per_rank * world > n:  # pad by wrapping so each rank takes the same number of steps
        perm = torch.cat([perm, perm[: per_rank * world - n]])
    return perm[rank::world]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


# ---- checkpoints ----------------------------------------------------------------------------

class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable or not pycnn's."""


def save_checkpoint(path: str, state: dict) -> None:
    """Writes ``state`` to ``path`` atomically: a temporary file in the same folder, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": CHECKPOINT_FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """Reads a checkpoint written by ``save_checkpoint``; CheckpointError when missing or corrupt."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickles we refuse to run...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
        raise CheckpointError(f"{path} is not a pycnn checkpoint")
    return state


# ---- training -------------------------------------------------------------------------------

@dataclass
class History:
    """Per-step training losses and per-epoch records (train/val loss and metrics, lr, seconds)."""
    steps: List[float] = field(default_factory=list)
    epochs: List[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"steps": list(self.steps), "epochs": [dict(e) for e in self.epochs]}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(list(d.get("steps", [])), [dict(e) for e in d.get("epochs", [])])


def _make_optimizer(optimizer, params, lr: float, momentum: float, weight_decay: float):
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    if callable(optimizer):
        return optimizer(params)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=momentum > 0)
    if optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {optimizer!r}; choose one of: adam, adamw, sgd")


def _make_schedule(schedule, opt, total_steps: int, warmup_steps: int):
    """Per-step learning-rate factor: linear warm-up, then 'cosine' decay to 0, 'step' (x0.1 at 50%
    and 75% of training) or 'constant'."""
    if schedule in (None, "constant", "none"):
        decay = lambda t: 1.0  # noqa: E731
    elif schedule == "cosine":
        decay = lambda t: 0.5 * (1 + math.cos(math.pi * t))  # noqa: E731
    elif schedule == "step":
        decay = lambda t: 0.1 ** ((t >= 0.5) + (t >= 0.75))  # noqa: E731
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of: constant, cosine, step")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return decay((step - warmup_steps) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _apply_augment(augment, x: Tensor, y: Tensor, task: str):
    if augment is None:
        return x, y
    if task == "segment":
        out = augment(x, mask=y)
        return out if isinstance(out, tuple) else (out, y)
    out = augment(x)
    return (out[0], y) if isinstance(out, tuple) else (out, y)


class _EpochLine:
    """Progress where a bar would not work (a log file, a pipe, CI): nothing while the epoch
    runs, then one line on stderr when it ends, with the bar's last numbers and the time. The
    subset of tqdm's interface ``fit`` uses."""

    def __init__(self, desc: str, stream=None):
        self.desc, self.stream, self.postfix, self.t0 = desc, stream, {}, time.perf_counter()

    def set_postfix(self, values: dict) -> None:
        self.postfix = dict(values)

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        numbers = ", ".join(f"{k}={v}" for k, v in self.postfix.items())  # as tqdm writes them
        stream = self.stream or sys.stderr
        print(f"{self.desc}: {numbers}  ({time.perf_counter() - self.t0:.1f} s)", file=stream, flush=True)


def _progress(total: int, desc: str):
    """A tqdm bar on a terminal or in a notebook; one line per epoch anywhere else, where a bar's
    every redraw would stay in the log (and without tqdm installed)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _EpochLine(desc)
    if sys.stderr.isatty() or "notebook" in tqdm.__module__:
        return tqdm(total=total, desc=desc, unit="batch", leave=True, dynamic_ncols=True)
    return _EpochLine(desc)


def fit(model: nn.Module, train, val=None, *, epochs: int = 10, batch_size: int = 64,
        optimizer: Union[str, torch.optim.Optimizer, Callable] = "adam", lr: float = 1e-3, momentum: float = 0.9,
        weight_decay: float = 0.0, schedule: Optional[str] = "cosine", warmup_steps: int = 0,
        loss: Union[str, Callable] = "cross_entropy", task: Optional[str] = None, num_classes: Optional[int] = None,
        augment: Optional[Callable] = None, device: Union[str, torch.device] = "cpu", out: Optional[str] = None,
        resume: bool = True, config: Optional[dict] = None, seed: int = 0, progress: bool = True,
        max_steps: Optional[int] = None, on_epoch: Optional[Callable[[dict], None]] = None) -> History:
    """Trains ``model`` on ``train`` for ``epochs`` epochs, validating on ``val`` after each.

    optimizer: 'adam', 'adamw', 'sgd' (with ``momentum``, Nesterov), an Optimizer, or a callable
    params -> Optimizer. schedule: 'cosine', 'step' or 'constant', stepped every batch after
    ``warmup_steps`` of linear warm-up. loss: 'cross_entropy', 'hinge' (multiclass SVM) or a
    callable (scores, target) -> loss. augment: a transform ``t(images, mask=None)`` applied to
    each training batch. out: checkpoint folder (``last.pt``, ``best.pt``); with ``resume`` an
    existing ``last.pt`` there is loaded and training continues after its epoch. config: saved in
    the checkpoint (the CLI stores the model/data names there). max_steps stops early (tests).
    progress: a tqdm bar on a terminal, one line per epoch on stderr when it is a file or pipe.
    Returns the History (also stored in every checkpoint).
    """
    if epochs < 1:
        raise ValueError(f"fit: epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"fit: batch_size must be at least 1, got {batch_size}")
    if len(train) == 0:
        raise ValueError("fit: the training set is empty")
    device = torch.device(device)
    task = task or _infer_task(train)
    if task not in ("classify", "segment"):
        raise ValueError(f"fit: task must be 'classify' or 'segment', got {task!r}")
    num_classes = num_classes or _num_classes([train, val], task)
    loss_fn = get_loss(loss)
    rank, world = _dist_info()
    torch.manual_seed(seed)  # augmentation randomness; shuffling has its own generator

    model.to(device)
    core = _unwrap(model)
    opt = _make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad], lr, momentum,
                          weight_decay)
    steps_per_epoch = math.ceil(math.ceil(len(train) / world) / batch_size)
    total_steps = epochs * steps_per_epoch
    sched = _make_schedule(schedule, opt, total_steps, warmup_steps)
    history = History()
    start_epoch, step = 0, 0
    best = -math.inf
    metric_name = "iou" if task == "segment" else "accuracy"

    last_path = os.path.join(out, "last.pt") if out else None
    if last_path and resume and os.path.exists(last_path):
        state = load_checkpoint(last_path, map_location=device)
        core.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        history = History.from_dict(state.get("history", {}))
        best = float(state.get("best", -math.inf))
        if "rng" in state:
            torch.set_rng_state(state["rng"].cpu())

    show = progress and rank == 0
    for epoch in range(start_epoch, epochs):
        if max_steps is not None and step >= max_steps:
            break
        t0 = time.perf_counter()
        model.train()
        idx = _epoch_indices(len(train), epoch, seed, rank, world)
        batches = list(idx.split(batch_size))
        bar = _progress(len(batches), f"epoch {epoch + 1}/{epochs}") if show else None
        loss_sum, seen, correct, cm = 0.0, 0, 0, torch.zeros(num_classes, num_classes, dtype=torch.long)
        done = 0
        for b in batches:
            if max_steps is not None and step >= max_steps:
                break
            done += 1
            x, y = _batch(train, b)
            x, y = _apply_augment(augment, x, y, task)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            scores = model(x)
            batch_loss = loss_fn(scores, y)
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            opt.step()
            sched.step()
            step += 1
            value = float(batch_loss.detach())
            history.steps.append(value)
            loss_sum += value * len(b)
            seen += len(b)
            with torch.no_grad():
                pred = scores.argmax(1)
                if task == "segment":
                    cm += confusion_matrix(pred.cpu(), y.cpu(), num_classes)
                else:
                    correct += int((pred == y).sum())
            if bar is not None:
                metric = (segmentation_scores(cm)["iou"] if task == "segment" else correct / seen)
                bar.set_postfix({"loss": f"{loss_sum / seen:.4f}", metric_name: f"{metric:.4f}"})
                bar.update(1)
        record = {"epoch": epoch + 1, "step": step, "lr": opt.param_groups[0]["lr"],
                  "train_loss": loss_sum / max(1, seen),
                  f"train_{metric_name}": (segmentation_scores(cm)["iou"] if task == "segment"
                                           else correct / max(1, seen))}
        if val is not None and len(val):
            # Every rank evaluates the full validation set on the unwrapped model: identical
            # weights give identical numbers, and no rank waits on a collective the others skip.
            v = evaluate(core, val, task=task, num_classes=num_classes, loss=loss_fn, batch_size=max(256, batch_size),
                         device=device)
            record.update({"val_loss": v["loss"], f"val_{metric_name}": v[metric_name]})
            if task == "segment":
                record["val_dice"] = v["dice"]
        record["seconds"] = time.perf_counter() - t0
        history.epochs.append(record)
        if bar is not None:
            shown = {"loss": f"{record['train_loss']:.4f}",
                     metric_name: f"{record[f'train_{metric_name}']:.4f}"}
            if "val_loss" in record:
                shown.update({"val_loss": f"{record['val_loss']:.4f}",
                              f"val_{metric_name}": f"{record[f'val_{metric_name}']:.4f}"})
            bar.set_postfix(shown)
            bar.close()
        score = record.get(f"val_{metric_name}", record[f"train_{metric_name}"])
        improved = score > best
        best = max(best, score)
        # A checkpoint marks a whole epoch done; one cut short by max_steps is not resumable.
        if out and rank == 0 and done == len(batches):
            state = {"model": core.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "epoch": epoch + 1, "step": step, "history": history.to_dict(), "best": best,
                     "metrics": record, "task": task, "num_classes": num_classes, "config": dict(config or {}),
                     "rng": torch.get_rng_state()}
            save_checkpoint(last_path, state)
            if improved:
                save_checkpoint(os.path.join(out, "best.pt"), state)
        if on_epoch is not None:
            on_epoch(record)
    return history


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 256, device="cpu") -> Tensor:
    """Scores for ``images`` in eval mode (the model's mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    try:
        outs = [model(x.to(device)).cpu() for x in images.split(batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs) if outs else images.new_empty(0)


@torch.no_grad()
def evaluate(model: nn.Module, data, *, task: Optional[str] = None, num_classes: Optional[int] = None,
             loss: Union[str, Callable] = "cross_entropy", batch_size: int = 256,
             device: Union[str, torch.device] = "cpu") -> dict:
    """Loss, accuracy and confusion matrix (and IoU, Dice for segmentation) of ``model`` on ``data``,
    in eval mode; the model's train/eval mode is left as it was found."""
    if len(data) == 0:
        raise ValueError("evaluate: the dataset is empty")
    task = task or _infer_task(data)
    num_classes = num_classes or _num_classes([data], task)
    loss_fn = get_loss(loss)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    try:
        for b in torch.arange(len(data)).split(batch_size):
            x, y = _batch(data, b)
            x, y = x.to(device), y.to(device)
            scores = model(x)
            total += float(loss_fn(scores, y)) * len(b)
            count += len(b)
            cm += confusion_matrix(scores.argmax(1).cpu(), y.cpu(), num_classes)
    finally:
        model.train(was_training)
    result = {"loss": total / count, "accuracy": float(cm.diag().sum()) / max(1, int(cm.sum())), "confusion": cm,
              "num_samples": count}
    if task == "segment":
        result.update(segmentation_scores(cm))
    return result
