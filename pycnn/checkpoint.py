"""Checkpoints that describe themselves and reject damage.

File format (``pycnn-checkpoint-v2``): ``torch.save`` of a small envelope

    {"format": "pycnn-checkpoint-v2", "sha256": hex digest, "payload": uint8 tensor}

where ``payload`` holds the bytes of ``torch.save(state)``. Loading recomputes the digest before
unpickling anything, so a flipped byte anywhere in the state (weights, optimizer moments, RNG)
is "checksum mismatch", never a silently different run. Both levels load with
``weights_only=True``: no code runs from a checkpoint. The file is written to a temporary name
in the same folder and renamed, so a crash never leaves half a file.

The state (what ``pycnn.train.fit`` writes) describes itself:

- ``model``: the state_dict of the model as trained (its ``normalize.*`` input standardisation
  included when the model has one, see ``pycnn.nn.normalized``);
- ``arch``: ``{"name", "kwargs", "normalize", "class"}``: the ``pycnn.models`` name and keyword
  arguments that rebuild it (``name`` None for a model not built by ``pycnn.models.get``);
- ``data``: ``{"name", "options", "task"}``: the dataset (a ``pycnn.data`` name or an image
  folder's path) and the keyword arguments that rebuild its splits;
- ``classes``: list of str, the name of label i at index i (``num_classes`` long);
- ``task``, ``num_classes``, ``epoch``, ``step``, ``history``, ``best``, ``metrics``, ``config``
  (the run's settings), and for resuming ``optimizer``, ``scheduler``, ``rng``.

``pycnn.load(path)`` rebuilds the model from that, ready to use: eval mode, raw images in,
``.classes`` set. Version-1 checkpoints (no checksum, written before 2026-11-30) still load with
``pycnn.load`` and ``pycnn evaluate``; they cannot be resumed.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from typing import Optional

import torch
from torch import nn

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "describe_model", "describe_data",
           "class_names", "build_model", "load_weights", "load", "model_from_state"]

CHECKPOINT_FORMAT = "pycnn-checkpoint-v2"
LEGACY_FORMAT = "pycnn-checkpoint-v1"  # the payload itself, no envelope, no checksum


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, not pycnn's, or does not fit the model or run."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def save_checkpoint(path: str, state: dict) -> None:
    """Writes ``state`` (a dict of tensors, numbers, strings, lists and dicts) to ``path``
    atomically, with the sha256 of its bytes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    envelope = {"format": CHECKPOINT_FORMAT, "sha256": hashlib.sha256(payload).hexdigest(),
                "payload": torch.frombuffer(bytearray(payload), dtype=torch.uint8)}
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(envelope, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """The state saved by :func:`save_checkpoint`, after checking its sha256. CheckpointError
    (one line, naming the file) when it is missing, damaged or not a pycnn checkpoint."""
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, random bytes, pickles we refuse to run...
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(e)}") from None
    if not isinstance(outer, dict):
        raise CheckpointError(f"{path} is not a pycnn checkpoint")
    if outer.get("format") == LEGACY_FORMAT and isinstance(outer.get("model"), dict):
        return outer
    if outer.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a pycnn checkpoint")
    payload, digest = outer.get("payload"), outer.get("sha256")
    if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or not isinstance(digest, str):
        raise CheckpointError(f"cannot read checkpoint {path}: no payload or checksum")
    data = payload.contiguous().numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(f"cannot read checkpoint {path}: checksum mismatch (the file is damaged)")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(e)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"cannot read checkpoint {path}: the payload is not a dict")
    weights = state.get("model")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"cannot read checkpoint {path}: missing key 'model' (a state_dict)")
    return dict(state, format=CHECKPOINT_FORMAT)


def require(state: dict, path: str, *keys: str) -> None:
    """CheckpointError naming the first of ``keys`` the state lacks."""
    for key in keys:
        if key not in state:
            raise CheckpointError(f"cannot read checkpoint {path}: missing key {key!r}")


# ---- what a checkpoint says about its model and data ---------------------------------------

def describe_model(model: nn.Module) -> dict:
    """``{"name", "kwargs", "normalize", "class"}`` of a model (DDP wrappers looked through).
    ``name`` is the pycnn.models name when the model came from ``pycnn.models.get`` (possibly
    wrapped by ``pycnn.nn.normalized``), else None."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    spec = getattr(model, "pycnn_spec", None) or {}
    cls = type(model)
    return {"name": spec.get("name"), "kwargs": dict(spec["kwargs"]) if "kwargs" in spec else None,
            "normalize": bool(spec.get("normalize", False)), "class": f"{cls.__module__}.{cls.__qualname__}"}


def _base_dataset(data):
    """The dataset under DataLoaders and Subsets (where the description attributes live)."""
    seen = 0
    while hasattr(data, "dataset") and seen < 8:
        data, seen = data.dataset, seen + 1
    return data


def describe_data(data) -> dict:
    """``{"name", "options", "classes"}`` from the attributes ``pycnn.data.Splits`` gives its
    datasets (``data_name``, ``data_options``, ``classes``); None where unknown. Looks through
    DataLoaders and Subsets."""
    base = _base_dataset(data)
    classes = getattr(base, "classes", None)
    options = getattr(base, "data_options", None)
    return {"name": getattr(base, "data_name", None), "options": dict(options) if options is not None else None,
            "classes": [str(c) for c in classes] if classes is not None else None}


def class_names(classes, num_classes: int, task: str) -> list:
    """``num_classes`` names, name i for label i. A segmentation dataset that names only its
    foreground classes (galaxies: "galaxy") gets "background" for label 0; unknown names are
    the label's digits."""
    names = [str(c) for c in classes] if classes else []
    if task == "segment" and len(names) == num_classes - 1:
        names = ["background"] + names
    return (names + [str(i) for i in range(len(names), num_classes)])[:num_classes]


# ---- rebuilding the model -------------------------------------------------------------------

def load_weights(model: nn.Module, weights: dict, path: str, what: str = "the model") -> None:
    """``model.load_state_dict(weights)`` after checking names and shapes: a CheckpointError in
    one line saying what differs (nothing is loaded then)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [f"{k} {list(weights[k].shape)} vs {list(v.shape)}" for k, v in expected.items()
              if k in weights and tuple(weights[k].shape) != tuple(v.shape)]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape (checkpoint vs model)", shapes)):
        if items:
            problems.append(f"{label}: {', '.join(items[:3])}" + (f" (+{len(items) - 3} more)" if len(items) > 3 else ""))
    if problems:
        raise CheckpointError(f"cannot read checkpoint {path}: weights do not fit {what}: {'; '.join(problems)}")
    model.load_state_dict(weights)


def build_model(state: dict, path: str) -> nn.Module:
    """The model a checkpoint describes, with untrained weights (``load`` fills them in)."""
    import pycnn.models as M
    from pycnn.nn import normalized

    if not state.get("arch"):  # version 1 (or a hand-written state): the model is named in config
        config = state.get("config") or {}
        if "model" not in config:
            raise CheckpointError(f"{path} does not say which model it holds: build the model and pass it, "
                                  "pycnn.load(path, model=...)")
        model = M.get(config["model"], **config.get("model_kwargs", {}))
        norm = config.get("normalize")
        if norm:  # version 1 kept the standardisation beside the model; make it a layer now
            load_weights(model, state["model"], path, f"model {config['model']!r}")
            return normalized(model, norm["mean"], norm["std"])
        return model
    arch = state["arch"]
    if not isinstance(arch, dict) or not arch.get("name"):
        cls = arch.get("class") if isinstance(arch, dict) else None
        raise CheckpointError(f"{path} holds a model not built by pycnn.models ({cls}): build it and pass it, "
                              "pycnn.load(path, model=...)")
    try:
        model = M.get(arch["name"], **(arch.get("kwargs") or {}))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: cannot build model {arch['name']!r}: "
                              f"{_first_line(e)}") from None
    if arch.get("normalize"):
        weights = state["model"]
        if "normalize.mean" not in weights or "normalize.std" not in weights:
            raise CheckpointError(f"cannot read checkpoint {path}: missing key 'normalize.mean' (the input "
                                  "standardisation)")
        model = normalized(model, weights["normalize.mean"].float(), weights["normalize.std"].float())
    return model


def load(path: str, model: Optional[nn.Module] = None, map_location="cpu") -> nn.Module:
    """The model in checkpoint ``path``, ready to use: eval mode, takes raw images (its input
    standardisation is a layer), ``model.classes`` lists the class names (index = label).

    ``model``: load the weights into this module instead of rebuilding one (for models not built
    by ``pycnn.models.get``). CheckpointError, in one line, when the file is missing, damaged, or
    does not fit the model.
    """
    return model_from_state(load_checkpoint(path, map_location=map_location), path, model, map_location)


def model_from_state(state: dict, path: str, model: Optional[nn.Module] = None, map_location="cpu") -> nn.Module:
    """``load`` for a state already read by ``load_checkpoint``."""
    if model is None:
        model = build_model(state, path)
        # build_model loads a version-1 model's weights itself (before adding its Normalize layer)
        already = not state.get("arch") and bool((state.get("config") or {}).get("normalize"))
        if not already:
            load_weights(model, state["model"], path, _model_label(state))
    else:
        load_weights(model, state["model"], path, "the given model")
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.eval()
    num_classes = int(state.get("num_classes") or 0)
    classes = state.get("classes")
    if not classes and num_classes:
        classes = class_names(None, num_classes, state.get("task", "classify"))
    model.classes = [str(c) for c in classes] if classes else None
    return model


def _model_label(state: dict) -> str:
    arch = state.get("arch") or {}
    name = arch.get("name") or (state.get("config") or {}).get("model")
    return f"model {name!r}" if name else "the model"
