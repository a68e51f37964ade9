"""Training and evaluation loops for classification and segmentation.

    history = fit(model, splits.train, splits.val, epochs=10, optimizer="adam", lr=1e-3, out="runs/x")
    metrics = evaluate(model, splits.test)

- Data: any map-style dataset of (image, target) pairs (TensorDatasets are batched by indexing
  their tensors directly, no per-sample collation), or any iterable of (images, targets)
  batches: a DataLoader (workers included), an IterableDataset, a list. A target with spatial
  dimensions (a mask) makes the task segmentation, a scalar label classification.
- Checkpoints (``pycnn.checkpoint``): after every epoch ``out/last.pt`` (and ``out/best.pt`` on a
  better validation metric), written atomically with a checksum, describing model, data and
  classes. ``out`` must be new or empty; ``fit(..., resume=folder)`` continues after the last
  completed epoch of a run with the same model, data and settings.
- Distributed: when torch.distributed is initialised, each rank trains on its own shard of every
  epoch's permutation (padded so all ranks take the same number of steps) and only rank 0 writes
  checkpoints and shows progress. Wrap the model in DistributedDataParallel before calling fit.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["fit", "evaluate", "History", "cross_entropy", "multiclass_hinge_loss", "get_loss", "accuracy",
           "confusion_matrix", "segmentation_scores", "per_class_scores", "save_checkpoint", "load_checkpoint",
           "CheckpointError", "check_run_folder", "new_run_folder"]

# Checkpoints (format, checksum, self-description) live in pycnn.checkpoint; re-exported here.
from pycnn.checkpoint import (CHECKPOINT_FORMAT, CheckpointError, class_names, describe_data,  # noqa: E402
                              describe_model, load_checkpoint, load_weights, require, save_checkpoint)
from pycnn.checkpoint import _first_line  # noqa: E402


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


def _is_map_style(data) -> bool:
    """A dataset of samples (indexed here, batched by fit) rather than an iterable of batches.

    Samples: a torch Dataset that is not an IterableDataset, or any object with __getitem__ and
    __len__ other than a list or tuple. Batches: a DataLoader, an IterableDataset, a list or
    tuple of (x, y) batches, or any other re-iterable object."""
    from torch.utils.data import DataLoader, Dataset, IterableDataset
    if isinstance(data, (DataLoader, IterableDataset, list, tuple)):
        return False
    if isinstance(data, Dataset):
        return True
    return hasattr(data, "__getitem__") and hasattr(data, "__len__")


def _as_batch(item, fn: str):
    """(x, y) of one batch from a DataLoader-like iterable."""
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        raise ValueError(f"{fn}: each batch must be an (images, targets) pair, got {type(item).__name__}")
    x, y = torch.as_tensor(item[0]), torch.as_tensor(item[1])
    if y.dim() == 0 or x.dim() < 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"{fn}: a batch must be images [N, ...] and targets [N, ...], got {tuple(x.shape)} and "
                         f"{tuple(y.shape)} (a list of single samples? wrap it in a Dataset)")
    return x, _as_target(y)


def _num_batches(data) -> Optional[int]:
    try:
        return len(data)
    except TypeError:  # an iterable without a length (IterableDataset)
        return None


class _Source:
    """One way to walk ``data`` batch by batch for either kind (see ``_is_map_style``)."""

    def __init__(self, data, fn: str, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        self.data, self.fn, self.batch_size, self.seed, self.rank, self.world = data, fn, batch_size, seed, rank, world
        self.map_style = _is_map_style(data)
        if not self.map_style and not hasattr(data, "__iter__"):
            raise TypeError(f"{fn}: data must be a map-style dataset or an iterable of (x, y) batches, "
                            f"got {type(data).__name__}")

    def __len__(self):  # batches per epoch, or None when the iterable does not say
        if self.map_style:
            return math.ceil(math.ceil(len(self.data) / self.world) / self.batch_size)
        return _num_batches(self.data)

    def empty(self) -> bool:
        if self.map_style:
            return len(self.data) == 0
        n = _num_batches(self.data)
        return n == 0

    def task(self) -> Optional[str]:
        """Inferred from one sample for datasets; None for iterables (decided on the first batch)."""
        return _infer_task(self.data) if self.map_style else None

    def batches(self, epoch: int = 0, shuffle: bool = True):
        if self.map_style:
            idx = (_epoch_indices(len(self.data), epoch, self.seed, self.rank, self.world) if shuffle
                   else torch.arange(len(self.data)))
            for b in idx.split(self.batch_size):
                yield _batch(self.data, b)
        else:
            for item in self.data:
                yield _as_batch(item, self.fn)


def _task_of(y: Tensor) -> str:
    return "segment" if y.dim() >= 2 else "classify"


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


# ---- run folders and resuming ---------------------------------------------------------------

def _resume_file(resume, out: Optional[str]) -> Optional[str]:
    """The checkpoint to resume from: ``resume`` names a checkpoint or its folder (last.pt);
    True means ``out/last.pt`` if it exists (a restartable job); None/False: none."""
    if resume is None or resume is False:
        return None
    if resume is True:
        if not out:
            raise ValueError("fit: resume=True needs out= (the folder to continue in)")
        path = os.path.join(out, "last.pt")
        return path if os.path.exists(path) else None
    path = os.fspath(resume)
    if os.path.isdir(path):
        path = os.path.join(path, "last.pt")
    if not os.path.isfile(path):
        raise CheckpointError(f"cannot resume: checkpoint not found: {path}")
    return path


def check_run_folder(out: str, resume_file: Optional[str] = None) -> None:
    """A run writes into a new or empty folder, or into the folder of the checkpoint it resumes;
    anything else is a one-line FileExistsError (a run never overwrites another)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"output folder {out} is a file")
    if not os.path.isdir(out) or not os.listdir(out):
        return
    if resume_file and os.path.samefile(os.path.dirname(os.path.abspath(resume_file)), out):
        return
    held = ", ".join(sorted(os.listdir(out))[:3])
    raise FileExistsError(f"output folder {out} already holds a run ({held}); resume it (--resume {out} / "
                          f"fit(resume={out!r})) or choose a new folder")


def new_run_folder(parent: str, model_name: str, data_name: str) -> str:
    """Creates and returns ``parent/<model>-<data>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... when
    that exists): every run gets its own folder, even several in one second."""
    data = os.path.basename(os.path.normpath(data_name)) or "data"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{model_name}-{data}")
    base = os.path.join(parent, f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(parent, exist_ok=True)
    for n in range(1, 1000):
        path = base if n == 1 else f"{base}-{n}"
        try:
            os.mkdir(path)  # atomic: two runs never get the same folder
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a new run folder like {base}")


def _canonical(v):
    """Tuples as lists, so settings compare equal after a round trip through a checkpoint."""
    if isinstance(v, dict):
        return {k: _canonical(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_canonical(x) for x in v]
    return v


def _arch_label(arch: dict) -> str:
    if not arch.get("name"):
        return f"a {arch.get('class')}"
    kw = ", ".join(f"{k}={v}" for k, v in (arch.get("kwargs") or {}).items())
    return f"{arch['name']}({kw})" + (" with input normalisation" if arch.get("normalize") else "")


def _data_label(data: dict) -> str:
    if not data.get("name"):
        return "unnamed data"
    kw = ", ".join(f"{k}={v}" for k, v in (data.get("options") or {}).items())
    return f"{data['name']}({kw})"


# Settings a resumed run must share with the checkpoint (epochs may grow: training continues).
_RUN_SETTINGS = ("optimizer", "lr", "momentum", "weight_decay", "schedule", "warmup_steps", "batch_size", "loss",
                 "seed")


def _check_same_run(state: dict, path: str, arch: dict, data: dict, task: str, settings: dict) -> None:
    """CheckpointError (one line) when the checkpoint holds another model, data or run settings."""
    saved_arch, saved_data = state["arch"], state["data"]
    if saved_arch.get("name") or arch.get("name"):
        same_model = (saved_arch.get("name") == arch.get("name") and bool(saved_arch.get("normalize")) ==
                      bool(arch.get("normalize")) and _canonical(saved_arch.get("kwargs")) == _canonical(arch.get("kwargs")))
    else:
        same_model = saved_arch.get("class") == arch.get("class")
    if not same_model:
        raise CheckpointError(f"cannot resume from {path}: it holds model {_arch_label(saved_arch)}, this run trains "
                              f"{_arch_label(arch)}")
    if saved_data.get("name") and data.get("name") and (
            saved_data["name"] != data["name"] or _canonical(saved_data.get("options")) != _canonical(data.get("options"))):
        raise CheckpointError(f"cannot resume from {path}: it was trained on {_data_label(saved_data)}, this run uses "
                              f"{_data_label(data)}")
    if state.get("classes") and data.get("classes") and list(state["classes"]) != list(data["classes"]):
        raise CheckpointError(f"cannot resume from {path}: its classes {list(state['classes'])} differ from this "
                              f"data's {list(data['classes'])}")
    if state.get("task") != task:
        raise CheckpointError(f"cannot resume from {path}: it was trained to {state.get('task')}, this run to {task}")
    saved = state.get("config") or {}
    for key in _RUN_SETTINGS:
        if key in saved and key in settings and _canonical(saved[key]) != _canonical(settings[key]):
            raise CheckpointError(f"cannot resume from {path}: {key} is {settings[key]!r} here, {saved[key]!r} in the "
                                  f"checkpoint (a resumed run keeps its settings; only epochs may change)")


def _restore_optimizer(opt, saved: dict, path: str) -> None:
    """``opt.load_state_dict(saved)`` after checking that every state tensor fits its parameter
    (torch checks only the parameter counts; a wrong shape would fail mid-step)."""
    try:
        groups, state = saved["param_groups"], saved["state"]
        if len(groups) != len(opt.param_groups):
            raise ValueError(f"{len(groups)} parameter groups, the optimizer has {len(opt.param_groups)}")
        for g_saved, g in zip(groups, opt.param_groups):
            if len(g_saved["params"]) != len(g["params"]):
                raise ValueError(f"a group of {len(g_saved['params'])} parameters, the optimizer's has "
                                 f"{len(g['params'])}")
            for pid, p in zip(g_saved["params"], g["params"]):
                for name, v in state.get(pid, {}).items():
                    if isinstance(v, Tensor) and v.dim() > 0 and tuple(v.shape) != tuple(p.shape):
                        raise ValueError(f"{name} of parameter {pid} has shape {list(v.shape)}, the parameter "
                                         f"{list(p.shape)}")
        opt.load_state_dict(saved)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"cannot resume from {path}: optimizer state does not fit: {_first_line(e)}") from None


def _check_rng(rng, path: str) -> Tensor:
    expected = torch.get_rng_state()
    if not isinstance(rng, Tensor) or rng.dtype != torch.uint8 or rng.shape != expected.shape:
        got = f"{rng.dtype} {list(rng.shape)}" if isinstance(rng, Tensor) else type(rng).__name__
        raise CheckpointError(f"cannot resume from {path}: bad RNG state ({got}, expected uint8 {list(expected.shape)})")
    return rng.cpu()


def _setting_name(v) -> str:
    """A setting as saved in the checkpoint: names stay names, objects become their class name."""
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return getattr(v, "__name__", None) or type(v).__name__


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
        resume: Union[None, bool, str] = None, config: Optional[dict] = None, classes: Optional[Sequence[str]] = None,
        seed: int = 0, progress: bool = True, max_steps: Optional[int] = None,
        on_epoch: Optional[Callable[[dict], None]] = None) -> History:
    """Trains ``model`` on ``train`` for ``epochs`` epochs, validating on ``val`` after each.

    train, val: a map-style dataset of (image, target) samples (batched here, shuffled by a
    seeded per-epoch permutation), or an iterable of (images, targets) batches: a DataLoader
    (workers included), an IterableDataset, a list of batches.
    optimizer: 'adam', 'adamw', 'sgd' (with ``momentum``, Nesterov), an Optimizer, or a callable
    params -> Optimizer. schedule: 'cosine', 'step' or 'constant', stepped every batch after
    ``warmup_steps`` of linear warm-up. loss: 'cross_entropy', 'hinge' (multiclass SVM) or a
    callable (scores, target) -> loss. augment: a transform ``t(images, mask=None)`` applied to
    each training batch. num_classes: default, the width of the model's output.

    out: checkpoint folder (``last.pt`` each epoch, ``best.pt``); it must be new or empty: a run
    never writes over another (FileExistsError). resume: a checkpoint or its folder to continue
    from (the model, data and settings must be the same: CheckpointError otherwise); it prints
    what it resumes and writes on in its folder (or ``out``). ``resume=True`` continues from
    ``out/last.pt`` when it exists and starts there afresh otherwise (restartable jobs).
    Checkpoints describe themselves (``pycnn.checkpoint``): model name and options when the model
    came from ``pycnn.models.get``, data name and ``classes`` (default: the dataset's ``classes``
    attribute, which pycnn.data's splits carry), and ``config`` (the settings, plus yours).
    max_steps stops early (tests). progress: a tqdm bar on a terminal, one line per epoch on stderr
    when it is a file or pipe. Returns the History (also stored in every checkpoint).
    """
    if epochs < 1:
        raise ValueError(f"fit: epochs must be at least 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"fit: batch_size must be at least 1, got {batch_size}")
    rank, world = _dist_info()
    source = _Source(train, "fit", batch_size, seed, rank, world)
    if source.empty():
        raise ValueError("fit: the training set is empty")
    if not source.map_style and epochs > 1 and hasattr(train, "__next__"):  # an iterator (a DataLoader is not)
        raise ValueError("fit: train is a one-pass iterator; pass a DataLoader, a Dataset or a list of batches")
    steps_per_epoch = len(source)
    if steps_per_epoch is None and schedule not in (None, "constant", "none"):
        raise ValueError(f"fit: schedule={schedule!r} needs the number of batches per epoch, and train has no len(); "
                         "use schedule='constant' or a DataLoader over a map-style dataset")
    device = torch.device(device)
    task = task or source.task()
    if task not in (None, "classify", "segment"):
        raise ValueError(f"fit: task must be 'classify' or 'segment', got {task!r}")
    loss_fn = get_loss(loss)
    resume_file = _resume_file(resume, out)
    if out is None and resume_file is not None:
        out = os.path.dirname(os.path.abspath(resume_file))
    if out:
        check_run_folder(out, resume_file)
        if rank == 0:
            os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)  # augmentation randomness; shuffling has its own generator

    model.to(device)
    core = _unwrap(model)
    opt = _make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad], lr, momentum,
                          weight_decay)
    total_steps = epochs * (steps_per_epoch or 1)
    sched = _make_schedule(schedule, opt, total_steps, warmup_steps)
    history = History()
    start_epoch, step = 0, 0
    best = -math.inf
    arch = describe_model(core)
    data = describe_data(train)
    if classes is not None:
        data["classes"] = [str(c) for c in classes]
    settings = {"epochs": epochs, "batch_size": batch_size, "optimizer": _setting_name(optimizer), "lr": lr,
                "momentum": momentum, "weight_decay": weight_decay, "schedule": schedule,
                "warmup_steps": warmup_steps, "loss": _setting_name(loss), "seed": seed,
                "augment": _setting_name(augment) if augment is not None else None}
    run_config = dict(settings, **(config or {}))

    if resume_file:
        state = load_checkpoint(resume_file, map_location=device)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"cannot resume from {resume_file}: a version-1 checkpoint (no checksum) can be "
                                  "loaded (pycnn.load) but not resumed; start a new run")
        require(state, resume_file, "arch", "data", "task", "optimizer", "scheduler", "epoch", "step", "rng")
        resumed_task = task or state["task"]
        _check_same_run(state, resume_file, arch, data, resumed_task, run_config)
        task = resumed_task
        rng = _check_rng(state["rng"], resume_file)
        try:
            start_epoch, step = int(state["epoch"]), int(state["step"])
        except (TypeError, ValueError):
            raise CheckpointError(f"cannot resume from {resume_file}: bad epoch/step {state['epoch']!r}") from None
        load_weights(core, state["model"], resume_file, f"model {_arch_label(arch)}")
        _restore_optimizer(opt, state["optimizer"], resume_file)
        try:
            sched.load_state_dict(state["scheduler"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"cannot resume from {resume_file}: bad scheduler state: {_first_line(e)}") from None
        torch.set_rng_state(rng)
        history = History.from_dict(state.get("history", {}))
        best = float(state.get("best", -math.inf))
        num_classes = num_classes or state.get("num_classes")
        if rank == 0:
            saved = state.get("config") or {}
            shown = ", ".join(f"{k} {saved[k]}" for k in ("optimizer", "lr", "batch_size", "schedule", "loss", "seed")
                              if k in saved)
            print(f"resuming {resume_file}: epoch {start_epoch} of {epochs} done; {_arch_label(arch)} on "
                  f"{data.get('name') or 'unnamed data'}; {shown}", flush=True)

    show = progress and rank == 0
    metric_name = "iou" if task == "segment" else "accuracy"
    for epoch in range(start_epoch, epochs):
        if max_steps is not None and step >= max_steps:
            break
        t0 = time.perf_counter()
        model.train()
        bar = _progress(steps_per_epoch, f"epoch {epoch + 1}/{epochs}") if show else None
        loss_sum, seen, correct, cm = 0.0, 0, 0, None
        complete = True
        for x, y in source.batches(epoch):
            if max_steps is not None and step >= max_steps:
                complete = False
                break
            if task is None:  # an iterable of batches: the first one tells
                task = _task_of(y)
                metric_name = "iou" if task == "segment" else "accuracy"
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
            loss_sum += value * len(y)
            seen += len(y)
            num_classes = num_classes or max(2, int(scores.shape[1]))
            with torch.no_grad():
                pred = scores.argmax(1)
                if task == "segment":
                    batch_cm = confusion_matrix(pred.cpu(), y.cpu(), num_classes)
                    cm = batch_cm if cm is None else cm + batch_cm
                else:
                    correct += int((pred == y).sum())
            if bar is not None:
                metric = (segmentation_scores(cm)["iou"] if task == "segment" else correct / seen)
                bar.set_postfix({"loss": f"{loss_sum / seen:.4f}", metric_name: f"{metric:.4f}"})
                bar.update(1)
        if seen == 0:
            if bar is not None:
                bar.close()
            break
        record = {"epoch": epoch + 1, "step": step, "lr": opt.param_groups[0]["lr"],
                  "train_loss": loss_sum / max(1, seen),
                  f"train_{metric_name}": (segmentation_scores(cm)["iou"] if task == "segment"
                                           else correct / max(1, seen))}
        if val is not None and not _Source(val, "fit", batch_size).empty():
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
        if out and rank == 0 and complete:
            state = {"model": core.state_dict(), "arch": arch,
                     "data": {"name": data["name"], "options": data["options"], "task": task},
                     "classes": class_names(data["classes"], num_classes, task), "task": task,
                     "num_classes": num_classes, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "epoch": epoch + 1, "step": step, "history": history.to_dict(), "best": best,
                     "metrics": record, "config": run_config, "rng": torch.get_rng_state()}
            save_checkpoint(os.path.join(out, "last.pt"), state)
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
    """Loss, accuracy and confusion matrix (and IoU, Dice for segmentation) of ``model`` on ``data``
    (a map-style dataset or an iterable of (x, y) batches, as for ``fit``), in eval mode; the
    model's train/eval mode is left as it was found. num_classes: default, the model's output width."""
    source = _Source(data, "evaluate", batch_size)
    if source.empty():
        raise ValueError("evaluate: the dataset is empty")
    task = task or source.task()
    loss_fn = get_loss(loss)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    cm = None
    try:
        for x, y in source.batches(shuffle=False):
            task = task or _task_of(y)
            x, y = x.to(device), y.to(device)
            scores = model(x)
            num_classes = num_classes or max(2, int(scores.shape[1]))
            total += float(loss_fn(scores, y)) * len(y)
            count += len(y)
            batch_cm = confusion_matrix(scores.argmax(1).cpu(), y.cpu(), num_classes)
            cm = batch_cm if cm is None else cm + batch_cm
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate: the data gave no batches")
    result = {"loss": total / count, "accuracy": float(cm.diag().sum()) / max(1, int(cm.sum())), "confusion": cm,
              "num_samples": count}
    if task == "segment":
        result.update(segmentation_scores(cm))
    return result
