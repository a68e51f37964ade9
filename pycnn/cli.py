"""The ``pycnn`` command (also ``python -m pycnn``).

    pycnn train --model lenet5 --data digits --epochs 10 --out runs/digits
    pycnn train --model simple_cnn --data ./myimgs --image-size 32     # a folder of your images
    pycnn train --resume runs/digits --epochs 20                        # continue a run
    pycnn evaluate --checkpoint runs/digits/best.pt
    pycnn predict --checkpoint runs/digits/best.pt --image new.png   # top classes of new images
    pycnn demo [--quick]          # trains two models, writes pycnn-demo/index.html
    pycnn viz --checkpoint runs/digits/best.pt --image test:0 --method grad_cam --out fig.png
    pycnn train --model mask_rcnn --data galaxy_instances --epochs 7 --batch-size 8 --lr 2e-3 --out runs/mrcnn
    pycnn detect --checkpoint runs/mrcnn/best.pt --image test:0 --out detections.png
    pycnn train --model espcn --data super_resolution --data-option scale=2 --out runs/espcn-x2
    pycnn upscale --checkpoint runs/espcn-x2/best.pt --image photo.png --out photo-x2.png

Bad arguments (unknown model, data or device; a missing or corrupt checkpoint; a model that does
not fit the data; a file that is not an image) end with one line on stderr and exit status 2,
never a traceback. Anything else is a bug in pycnn and keeps its traceback. ``PYCNN_DEBUG=1``
shows the traceback of the one-line errors too.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

EXIT_USAGE = 2

# Datasets small enough to look at by eye are upsampled for the conv nets; the CLI's default sizes.
_DEFAULT_DATA_KWARGS = {"digits": {"size": 28}}
_SIZE_KEYWORD = {"digits": "size", "faces": "size", "galaxies": "size", "textures": "patch",
                 "galaxy_instances": "size", "inpainting": "patch"}


class UsageError(Exception):
    """A bad command line: reported in one line, exit status 2."""


# What a user can cause, reported in one line: a bad command line (UsageError, argparse); a value
# pycnn's functions refuse (ValueError, with a message naming the value; CheckpointError is one);
# a file that cannot be read or written (OSError); a missing optional package (ImportError).
# TypeError is not among them: from the command line it is a bug (the few places where a user's
# KEY=VALUE option can cause one turn it into a UsageError).
USER_ERRORS = (UsageError, ValueError, OSError, ImportError)


def _debug() -> bool:
    return os.environ.get("PYCNN_DEBUG", "").strip() not in ("", "0")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors in one line (argparse prints the whole usage first), exit 2."""

    def error(self, message):
        if _debug():
            self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows every option's default, except where there is none (None) or it is a flag's
    False, or the help text already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def _device(name: str):
    import torch
    import pycnn
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use cpu or cuda (or cuda:N)") from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device {name!r}; pycnn runs on cpu and cuda")
    if dev.type == "cuda":
        if not pycnn.cuda_available():
            raise UsageError("device cuda: this pycnn build has no CUDA kernels (rebuild with nvcc, PYCNN_CUDA=ON)")
        if not torch.cuda.is_available():
            raise UsageError("device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"device {name}: only {torch.cuda.device_count()} GPU(s) visible")
    return dev


def _threads(n: Optional[int]) -> None:
    if n is None:
        return
    if n < 1:
        raise UsageError(f"--threads must be positive, got {n}")
    import torch
    import pycnn
    torch.set_num_threads(n)
    pycnn.sync_threads()


def _options(pairs: Optional[List[str]], flag: str) -> dict:
    """KEY=VALUE strings to a dict; values are Python literals when they parse as one (3, 0.5,
    (4, 8), True), else strings."""
    import ast
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"{flag} takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _is_folder(name: str) -> bool:
    """--data names a built-in dataset, or else a folder of images (``./digits`` for a folder
    named like a built-in one)."""
    import pycnn.data as D
    return name not in D.NAMES and os.path.isdir(name)


def _load_data(name: str, image_size: Optional[int], seed: int, extra: Optional[dict] = None):
    kwargs = {}
    if _is_folder(name):
        if image_size is not None:
            kwargs["size"] = image_size
    else:
        import pycnn.data as D
        if name not in D.NAMES:
            raise UsageError(f"unknown data {name!r}; choose one of: {', '.join(D.NAMES)}, or a folder of images")
        kwargs.update(_DEFAULT_DATA_KWARGS.get(name, {}))
        if image_size is not None:
            kwargs[_SIZE_KEYWORD[name]] = image_size
    kwargs["seed"] = seed
    kwargs.update(extra or {})
    return _get_data(name, kwargs), kwargs


def _get_data(name: str, kwargs: dict):
    import pycnn.data as D
    try:
        return D.get(name, **kwargs)
    except TypeError as e:  # an unknown --data-option
        raise UsageError(f"data {name!r}: {e}") from None


def _normalized(model, splits):
    """``model`` behind a Normalize layer with the training split's per-channel mean and std:
    zero-mean, unit-variance inputs train faster and more stably than raw [0, 1] pixels, and as
    a layer the standardisation travels with the checkpoint (``pycnn.load`` takes raw images)."""
    import pycnn.nn as pnn
    return pnn.normalized(model, splits.mean, splits.std.clamp_min(1e-6))


def _augmentation(task: str, image_size, seed: int):
    """A label-preserving default: small shifts for classification (flips would turn a 2 into
    a mirrored 2), flips both ways for segmentation (galaxies have no up or left)."""
    from pycnn.data import augment as A
    if task == "segment":
        return A.RandomFlip(horizontal=True, vertical=True, seed=seed)
    return A.RandomTranslation(max_shift=max(1, min(image_size) // 14), seed=seed)


def _check_fit(model_name: str, splits) -> str:
    import pycnn.models as M
    if model_name not in M.names():
        raise UsageError(f"unknown model {model_name!r}; choose one of: {', '.join(M.names())}")
    task = M.task(model_name)
    if task == "detect" or splits.task == "detection":  # instance detection: mask_rcnn on galaxy_instances
        if task != "detect" or splits.task != "detection":
            raise UsageError(f"model {model_name!r} and the data do not fit: detection needs a detection model "
                             f"and data set together (mask_rcnn with galaxy_instances)")
        return task
    data_task = "segment" if splits.task == "segmentation" else "classify"
    if task != data_task:
        kind = {"segment": "a segmentation", "classify": "a classification"}
        raise UsageError(f"model {model_name!r} is {kind[task]} model but the data is {kind[data_task]} dataset; "
                         f"use unet with galaxies and a classifier with digits, faces or textures")
    return task


def _model_kwargs(model_name: str, splits, task: str) -> dict:
    import pycnn.train as T
    if task == "segment":
        num_classes = T._num_classes([splits.train, splits.val, splits.test], task)
    else:
        num_classes = splits.num_classes
    kw = {"in_channels": splits.in_channels, "num_classes": num_classes}
    if model_name != "unet":
        kw["image_size"] = list(splits.image_size)
    return kw


def _build_model(model_name: str, kwargs: dict, seed: int):
    import torch
    import pycnn.models as M
    torch.manual_seed(seed)  # the initial weights are a function of the seed
    try:
        return M.get(model_name, **kwargs)
    except TypeError as e:  # an unknown --model-option (or one stored in a checkpoint)
        raise UsageError(_first_line(e)) from None


# Settings a resumed run takes from its checkpoint unless the command line changes them (fit
# then refuses the change in one line: a resumed run keeps its settings).
_RESUMED_SETTINGS = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "schedule", "loss",
                     "seed", "augment")
# `pycnn train`'s defaults for the settings left unset (None) on the command line; detection
# training fills them from the demo's recipe instead (pycnn.detection.train_command).
TRAIN_DEFAULTS = {"epochs": 10, "batch_size": 64, "lr": 3e-3, "weight_decay": 0.0}


def settle_defaults(args, defaults: Optional[dict] = None) -> None:
    """Gives every training setting the command line left unset its default (``defaults``, then
    TRAIN_DEFAULTS)."""
    for key, value in TRAIN_DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, (defaults or {}).get(key, value))


def _from_checkpoint(args, state: dict, path: str) -> tuple:
    """Fills the arguments a resumed run did not give from its checkpoint; returns the saved
    (model_kwargs, data_kwargs) to reuse when the model and data are the checkpoint's."""
    import pycnn.train as T
    if state.get("format") != T.CHECKPOINT_FORMAT:
        raise UsageError(f"cannot resume from {path}: a version-1 checkpoint (no checksum) cannot be resumed; "
                         "start a new run")
    T.require(state, path, "arch", "data", "config")
    arch, data, config = state["arch"], state["data"], state["config"]
    defaults = getattr(args, "parser_defaults", {})
    if args.model is None:
        if not arch.get("name"):
            raise UsageError(f"cannot resume {path} here: it holds a model not built by pycnn.models "
                             f"({arch.get('class')}); resume it from Python with fit(resume=...)")
        args.model = arch["name"]
    if args.data is None:
        if not data.get("name"):
            raise UsageError(f"cannot resume {path}: it does not name its data; pass --data")
        args.data = data["name"]
    for key in _RESUMED_SETTINGS:
        if key in config and getattr(args, key) == defaults.get(key):
            setattr(args, key, config[key])
    same_data = args.data == data.get("name") or (_is_folder(args.data) and os.path.abspath(args.data) == data.get("name"))
    model_kwargs = arch.get("kwargs") if args.model == arch.get("name") and not args.model_option else None
    data_kwargs = (data.get("options") if same_data and not args.data_option and args.image_size is None
                   and args.data_seed == defaults.get("data_seed") else None)
    return model_kwargs, data_kwargs


def _print_metrics(prefix: str, metrics: dict) -> None:
    keys = [k for k in ("loss", "accuracy", "iou", "dice") if k in metrics]
    print(prefix + "  ".join(f"{k} {metrics[k]:.4f}" for k in keys) + f"  ({metrics['num_samples']} samples)")


# ---- commands -------------------------------------------------------------------------------

def cmd_train(args) -> int:
    if args.model == "pconv_unet" or args.data == "inpainting":  # image in, image out: its own loop
        from pycnn.restoration.cli import train as train_inpainting
        settle_defaults(args)
        return train_inpainting(args)
    import pycnn.train as T
    import pycnn.models as M
    if args.data == "super_resolution" or (args.model in M.names() and M.task(args.model) == "super_resolution"):
        from pycnn.superres.cli import train as train_super_resolution
        settle_defaults(args)
        return train_super_resolution(args)
    if args.loss is None:
        args.loss = "cross_entropy"
    device = _device(args.device)
    _threads(args.threads)
    resume_file, saved_model_kwargs, saved_data_kwargs = None, None, None
    if args.resume:
        resume_file = T._resume_file(args.resume, None)
        saved_model_kwargs, saved_data_kwargs = _from_checkpoint(args, T.load_checkpoint(resume_file), resume_file)
    if args.model is None or args.data is None:
        raise UsageError("--model and --data are required (unless --resume names a run to continue)")
    detecting = args.model in M.names() and M.task(args.model) == "detect"
    if detecting:
        from pycnn.detection import DEMO_TRAINING, check_training_args
        check_training_args(args)
        settle_defaults(args, DEMO_TRAINING)
    else:
        settle_defaults(args)
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UsageError(f"{flag} must be positive, got {value}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    if args.out:
        T.check_run_folder(args.out, resume_file)  # before the data is loaded: fail fast
    data_options = _options(args.data_option, "--data-option")
    model_options = _options(args.model_option, "--model-option")
    if saved_data_kwargs is not None:
        data_kwargs = dict(saved_data_kwargs)
        splits = _get_data(args.data, data_kwargs)
    else:
        splits, data_kwargs = _load_data(args.data, args.image_size, args.data_seed, data_options)
    data_name = splits.name or args.data  # an image folder is named by its absolute path
    task = _check_fit(args.model, splits)
    out = args.out or (os.path.dirname(os.path.abspath(resume_file)) if resume_file else
                       T.new_run_folder("runs", args.model, data_name))
    if args.new_blends and task != "detect":
        raise UsageError("--new-blends: only for detection training (mask_rcnn on galaxy_instances)")
    if task == "detect":
        if resume_file:
            raise UsageError("--resume: detection runs cannot be resumed yet; start a new run")
        from pycnn.detection import train_command
        args.out = out
        return train_command(args, splits, data_kwargs, model_options)
    model_kwargs = (dict(saved_model_kwargs) if saved_model_kwargs is not None
                    else dict(_model_kwargs(args.model, splits, task), **model_options))
    model = _normalized(_build_model(args.model, model_kwargs, args.seed), splits)
    config = {"model": args.model, "model_kwargs": model_kwargs, "data": data_name, "data_kwargs": data_kwargs,
              "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": args.lr,
              "momentum": args.momentum, "weight_decay": args.weight_decay, "schedule": args.schedule,
              "loss": args.loss, "seed": args.seed, "augment": args.augment}
    n_params = sum(p.numel() for p in model.parameters())
    print(f"training {args.model} ({n_params:,} parameters) on {args.data} {splits.sizes()} for {args.epochs} epochs "
          f"on {device}; checkpoints in {out}")
    t0 = time.perf_counter()
    history = T.fit(model, splits.train, splits.val, epochs=args.epochs, batch_size=args.batch_size,
                    optimizer=args.optimizer, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                    schedule=args.schedule, loss=args.loss, task=task, num_classes=model_kwargs["num_classes"],
                    device=device, out=out, resume=resume_file, config=config, seed=args.seed,
                    progress=not args.quiet,
                    augment=_augmentation(task, splits.image_size, args.seed) if args.augment else None)
    seconds = time.perf_counter() - t0
    if history.epochs:
        last = history.epochs[-1]
        print(f"trained {last['epoch']} epochs ({last['step']} steps) in {seconds:.1f} s")
    if len(splits.test):
        test = T.evaluate(model, splits.test, task=task, num_classes=model_kwargs["num_classes"], loss=args.loss,
                          device=device)
        _print_metrics("test: ", test)
    print(f"checkpoints: {os.path.join(out, 'last.pt')}, {os.path.join(out, 'best.pt')}")
    return 0


def _evaluation_data(args, state: dict):
    """(name, splits) to evaluate on: the checkpoint's own data, or --data (a name or a folder,
    read at the model's input size and channels)."""
    config = state.get("config") or {}  # version 1 named its data only there
    saved = state.get("data") or {"name": config.get("data"), "options": config.get("data_kwargs", {})}
    name = args.data or saved.get("name")
    if not name:
        raise UsageError(f"{args.checkpoint} does not name its data; pass --data NAME or --data FOLDER")
    if _is_folder(name) and os.path.abspath(name) == saved.get("name"):
        name = saved["name"]  # the training folder: the same splits
    if name == saved.get("name"):
        return name, _get_data(name, dict(saved.get("options") or {}))
    import pycnn.data as D
    arch_kwargs = (state.get("arch") or {}).get("kwargs") or config.get("model_kwargs") or {}
    size = arch_kwargs.get("image_size")
    size = list(size) if isinstance(size, (list, tuple)) else size
    if _is_folder(name):
        kwargs = {"size": size, "grayscale": arch_kwargs.get("in_channels") == 1}
    elif name in D.NAMES:
        square = size[0] if isinstance(size, list) and size[0] == size[1] else size
        kwargs = {_SIZE_KEYWORD[name]: square} if square is not None else {}
    else:
        raise UsageError(f"unknown data {name!r}; choose one of: {', '.join(D.NAMES)}, or a folder of images")
    return name, _get_data(name, kwargs)


# `pycnn evaluate` prints the confusion matrix up to this many classes (wider ones on --confusion).
CONFUSION_MAX_CLASSES = 20


def _check_model_fits_data(checkpoint: str, state: dict, splits, data_name: str) -> List[str]:
    """Refuses data the checkpoint's model cannot be scored on (scores of a 10-class model on
    2-class data would be a silent, meaningless number); returns the class names."""
    config, arch = state.get("config") or {}, state.get("arch") or {}
    kw = arch.get("kwargs") or config.get("model_kwargs") or {}
    where = f"{checkpoint}: model {arch.get('name') or config.get('model')!r}"
    names = [str(c) for c in (state.get("classes") or config.get("classes") or [])]
    data_names = [str(c) for c in splits.classes]
    if splits.task == "classification":
        k = int(state.get("num_classes") or kw.get("num_classes") or len(names) or 0)
        if k and k != len(data_names):
            raise UsageError(f"{where} has {k} classes but data {data_name!r} has {len(data_names)} "
                             f"({', '.join(data_names)}); evaluate on data with the model's classes")
        if names and names != data_names:
            raise UsageError(f"{where} was trained on classes ({', '.join(names)}) but data {data_name!r} has "
                             f"({', '.join(data_names)})")
    in_channels = kw.get("in_channels")
    if in_channels and int(in_channels) != splits.in_channels:
        raise UsageError(f"{where} takes {in_channels}-channel images but data {data_name!r} has "
                         f"{splits.in_channels}")
    size = kw.get("image_size")
    if size:
        size = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(size) != tuple(splits.image_size):
            raise UsageError(f"{where} takes {size[0]}x{size[1]} images but data {data_name!r} has "
                             f"{splits.image_size[0]}x{splits.image_size[1]}")
    return names or data_names


def cmd_evaluate(args) -> int:
    import pycnn.train as T
    from pycnn.checkpoint import model_from_state
    device = _device(args.device)
    _threads(args.threads)
    state = T.load_checkpoint(args.checkpoint, map_location="cpu")
    if state.get("task") == "detect":
        from pycnn.detection import evaluate_command
        return evaluate_command(args, state)
    config = state.get("config") or {}
    if config.get("task") == "super_resolution":
        from pycnn.superres.cli import evaluate as evaluate_super_resolution
        return evaluate_super_resolution(args, state, config)
    if config.get("model") == "pconv_unet":
        from pycnn.restoration.cli import evaluate as evaluate_inpainting
        return evaluate_inpainting(args, state)
    model = model_from_state(state, args.checkpoint)
    model_name = (state.get("arch") or {}).get("name") or (state.get("config") or {}).get("model")
    data_name, splits = _evaluation_data(args, state)
    if model_name:
        task = _check_fit(model_name, splits)
    else:
        task = state.get("task") or ("segment" if splits.task == "segmentation" else "classify")
    classes = _check_model_fits_data(args.checkpoint, state, splits, data_name)
    model.to(device)
    data = getattr(splits, args.split)
    loss = (state.get("config") or {}).get("loss", "cross_entropy")
    loss = loss if loss in ("cross_entropy", "hinge", "svm") else "cross_entropy"
    metrics = T.evaluate(model, data, task=task, num_classes=int(state.get("num_classes") or 0) or None, loss=loss,
                         device=device)
    print(f"{model_name or 'model'} on {data_name}/{args.split} (checkpoint epoch {state.get('epoch')}):")
    _print_metrics("  ", metrics)
    from pycnn import report as R
    cm = metrics["confusion"]
    if task == "segment":  # the mask's pixel classes: 0 is the background
        classes = list(classes) if len(classes) == cm.shape[0] else ["background", *classes]
    unit = "pixels" if task == "segment" else "images"
    print()
    print(R.per_class_text(cm, classes, unit=unit))
    if args.confusion or cm.shape[0] <= CONFUSION_MAX_CLASSES:
        print()
        print(R.confusion_text(cm, classes))
    else:
        print(f"\n(confusion matrix of {cm.shape[0]} classes not shown; --confusion shows it)")
    return 0


# The demo's two runs. "quick" is sized to finish in about a minute on 2 CPU cores.
DEMO_RUNS = {
    "digits": {
        "full": dict(model="lenet5", data_kwargs={"size": 28}, epochs=15, batch_size=32, optimizer="adam", lr=3e-3),
        "quick": dict(model="lenet5", data_kwargs={"size": 28}, epochs=8, batch_size=32, optimizer="adam", lr=3e-3),
    },
    "galaxies": {
        "full": dict(model="unet", data_kwargs={"n": 1200, "size": 64}, model_kwargs={"depth": 3, "width": 8},
                     epochs=8, batch_size=16, optimizer="adam", lr=3e-3),
        "quick": dict(model="unet", data_kwargs={"n": 400, "size": 64}, model_kwargs={"depth": 3, "width": 8},
                      epochs=3, batch_size=16, optimizer="adam", lr=3e-3),
    },
}


def run_demo_task(name: str, device, quick: bool, out_dir: str, progress: bool = True, seed: int = 0) -> dict:
    """Trains and tests one demo model; returns what the report needs."""
    import pycnn.data as D
    import pycnn.train as T
    spec = DEMO_RUNS[name]["quick" if quick else "full"]
    data_kwargs = dict(spec["data_kwargs"], seed=seed)
    splits = D.get(name, **data_kwargs)
    task = _check_fit(spec["model"], splits)
    model_kwargs = dict(_model_kwargs(spec["model"], splits, task), **spec.get("model_kwargs", {}))
    model = _normalized(_build_model(spec["model"], model_kwargs, seed), splits)
    config = {"model": spec["model"], "model_kwargs": model_kwargs, "data": name, "data_kwargs": data_kwargs,
              "epochs": spec["epochs"], "batch_size": spec["batch_size"], "optimizer": spec["optimizer"],
              "lr": spec["lr"], "schedule": "cosine", "loss": "cross_entropy", "seed": seed,
              "image_size": splits.image_size[0], **spec.get("model_kwargs", {})}
    run_dir = os.path.join(out_dir, name)
    for old in ("last.pt", "best.pt"):  # the demo folder is the demo's own: a rerun replaces its run
        if os.path.isfile(os.path.join(run_dir, old)):
            os.unlink(os.path.join(run_dir, old))
    print(f"[demo] {spec['model']} on {name} {splits.sizes()}, {spec['epochs']} epochs")
    t0 = time.perf_counter()
    history = T.fit(model, splits.train, splits.val, epochs=spec["epochs"], batch_size=spec["batch_size"],
                    optimizer=spec["optimizer"], lr=spec["lr"], task=task, num_classes=model_kwargs["num_classes"],
                    device=device, out=run_dir, config=config, seed=seed,
                    progress=progress)
    seconds = time.perf_counter() - t0
    metrics = T.evaluate(model, splits.test, task=task, num_classes=model_kwargs["num_classes"], device=device)
    _print_metrics(f"[demo] {name} test: ", metrics)
    return {"model": model.cpu(), "splits": splits, "history": history, "metrics": metrics, "seconds": seconds,
            "config": config, "sizes": splits.sizes()}


def cmd_predict(args) -> int:
    """`pycnn predict --checkpoint C --image FILE...`: each image's top classes and probabilities,
    the image read as the checkpoint's data was (size, grey or colour)."""
    import torch
    import pycnn.data as D
    import pycnn.train as T
    from pycnn.checkpoint import model_from_state
    _threads(args.threads)
    if args.top < 1:
        raise UsageError(f"--top must be positive, got {args.top}")
    state = T.load_checkpoint(args.checkpoint, map_location="cpu")
    if (state.get("task") or "classify") != "classify":
        raise UsageError(f"{args.checkpoint} holds a {state.get('task')} model; predict takes classifiers "
                         "(use pycnn viz, detect, upscale or inpaint)")
    model = model_from_state(state, args.checkpoint)
    kwargs = (state.get("arch") or {}).get("kwargs") or (state.get("config") or {}).get("model_kwargs") or {}
    size, channels = kwargs.get("image_size"), kwargs.get("in_channels", 1)
    classes = model.classes or [str(i) for i in range(int(state.get("num_classes") or 0))]
    for path in args.image:
        x = D.load_image(path, size=tuple(size) if isinstance(size, list) else size, grayscale=channels == 1)
        with torch.no_grad():
            p = torch.softmax(model(x), dim=1)[0]
        top = p.topk(min(args.top, p.numel()))
        ranked = ", ".join(f"{classes[int(i)] if int(i) < len(classes) else int(i)} {float(v):.1%}"
                           for v, i in zip(top.values, top.indices))
        print(f"{path}: {ranked}")
    return 0


def cmd_demo(args) -> int:
    from pycnn import report as R
    device = _device(args.device)
    _threads(args.threads)
    try:
        R.require_matplotlib()
    except ImportError as e:
        raise UsageError(str(e)) from None
    t0 = time.perf_counter()
    results = {"quick": args.quick, "device": str(device)}
    for name in ("digits", "galaxies"):
        results[name] = run_demo_task(name, device, args.quick, args.out, progress=not args.quiet)
    from pycnn.detection import run_detection_demo
    results["detection"] = run_detection_demo(args.quick, args.out, progress=not args.quiet)
    rep = R.Report(args.out, "pycnn demo" + (" (quick)" if args.quick else ""))
    R.build_sections(results, rep)
    path = rep.write()
    print(f"[demo] finished in {time.perf_counter() - t0:.0f} s; report: {os.path.abspath(path)}")
    return 0


# ---- argument parsing -----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="pycnn", description="Train and evaluate CNNs on pycnn's own kernels.",
                       epilog="Errors are one line on stderr, exit status 2; PYCNN_DEBUG=1 shows their traceback.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")  # subcommands are ArgumentParsers too
    sub.required = True

    def common(sp):
        sp.add_argument("--device", default="cpu", help="cpu or cuda")
        sp.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")

    t = sub.add_parser("train", help="train a model on a dataset", formatter_class=HelpFormatter)
    t.add_argument("--model", default=None, help="linear_classifier, mlp, lenet5, simple_cnn, resnet, "
                                                 "separable_cnn, unet or mask_rcnn (required unless --resume)")
    t.add_argument("--data", default=None, help="digits, faces, textures, galaxies, galaxy_instances, or a folder of images with one "
                                                "subfolder per class (required unless --resume)")
    # None = not given: mask_rcnn trains with the demo's recipe, everything else with TRAIN_DEFAULTS.
    t.add_argument("--epochs", type=int, default=None,
                   help="passes over the training split (default 10; mask_rcnn: 20, the demo's)")
    t.add_argument("--batch-size", type=int, default=None, help="images per step (default 64; mask_rcnn: 8)")
    t.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"],
                   help="optimizer (mask_rcnn: always AdamW)")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (default 3e-3; mask_rcnn: 2e-3)")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    t.add_argument("--weight-decay", type=float, default=None,
                   help="L2 penalty, decoupled for adamw (default 0; mask_rcnn: 1e-4)")
    t.add_argument("--schedule", default="cosine", choices=["cosine", "step", "constant"],
                   help="learning-rate schedule, stepped every batch")
    t.add_argument("--loss", default=None, choices=["cross_entropy", "hinge", "mse", "l1"],
                   help="cross_entropy (softmax) or hinge (multiclass SVM); mse or l1 for super-resolution "
                        "(default: cross_entropy, mse for super-resolution)")
    t.add_argument("--image-size", type=int, default=None,
                   help="resize images (digits default 28; textures: the patch size; a folder: N x N, needed when its images differ in size)")
    t.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help="extra model argument, e.g. depth=14 (resnet) or width=8 (unet); repeatable")
    t.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help="extra dataset argument, e.g. n=400 (galaxies), grayscale=True or val=0.2 (a folder); repeatable")
    t.add_argument("--augment", action="store_true",
                   help="random shifts (classification) or flips (segmentation) of each training batch")
    t.add_argument("--new-blends", action=argparse.BooleanOptionalAction, default=None,
                   help="galaxy_instances only: new blends of the training galaxies every epoch "
                        "(detection; on by default there, as in the demo)")
    t.add_argument("--seed", type=int, default=0, help="initial weights, shuffling")
    t.add_argument("--data-seed", type=int, default=0, help="the dataset's train/val/test split")
    t.add_argument("--out", default=None, help="checkpoint folder (last.pt, best.pt), new or empty "
                                               "(default: a new runs/MODEL-DATA-TIME)")
    t.add_argument("--resume", default=None, metavar="DIR",
                   help="continue the run in DIR (or a checkpoint file); model, data and settings come from it")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    common(t)
    # The defaults, so a resumed run can tell which settings the command line changed.
    t.set_defaults(func=cmd_train, parser_defaults={a.dest: a.default for a in t._actions})

    e = sub.add_parser("evaluate", help="evaluate a checkpoint written by `pycnn train`",
                       description="Loss and accuracy (IoU and Dice for segmentation), per-class precision, "
                                   "recall and F1, and the confusion matrix.",
                       formatter_class=HelpFormatter)
    e.add_argument("--checkpoint", required=True, help="a checkpoint written by `pycnn train`")
    e.add_argument("--split", default="test", choices=["train", "val", "test"], help="which split to score")
    e.add_argument("--data", default=None, help="a dataset name or image folder instead of the checkpoint's own")
    e.add_argument("--confusion", action="store_true",
                   help=f"print the confusion matrix even for more than {CONFUSION_MAX_CLASSES} classes")
    e.add_argument("--ensemble", action="store_true",
                   help="super-resolution: also score the self-ensemble (mean over the 8 flips/transposes)")
    common(e)
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="classify image files with a checkpoint (top classes and probabilities)",
                        formatter_class=HelpFormatter)
    pr.add_argument("--checkpoint", required=True, help="a classifier checkpoint written by `pycnn train`")
    pr.add_argument("--image", required=True, nargs="+", help="one or more image files (PNG, JPEG, ...)")
    pr.add_argument("--top", type=int, default=3, help="how many classes to print per image")
    pr.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    pr.set_defaults(func=cmd_predict)

    d = sub.add_parser("demo", help="train a digits classifier and a galaxy U-Net, write an HTML report",
                       formatter_class=HelpFormatter)
    d.add_argument("--quick", action="store_true", help="smaller runs, about a minute on 2 CPU cores")
    d.add_argument("--out", default="pycnn-demo", help="report folder")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    common(d)
    d.set_defaults(func=cmd_demo)

    from pycnn.restoration.cli import add_parser as add_inpaint_parser  # `pycnn inpaint`
    add_inpaint_parser(sub, common)

    from pycnn.viz.cli import add_viz_parser  # `pycnn viz`: explain an image with a checkpoint
    add_viz_parser(sub)
    from pycnn.detection import add_detect_parser  # `pycnn detect`: boxes and masks on an image
    add_detect_parser(sub)
    from pycnn.superres.cli import add_upscale_parser  # `pycnn upscale`: a super-resolution checkpoint on an image
    add_upscale_parser(sub)
    return p


def run_command(args) -> int:
    """Runs a parsed command: USER_ERRORS end in one line on stderr and exit status 2 (their
    message names the problem; a traceback would add nothing for the user), everything else
    raises. With PYCNN_DEBUG=1 the one-line errors raise too, traceback and all."""
    try:
        return args.func(args)
    except USER_ERRORS as e:
        if _debug():
            raise
        print(f"pycnn {args.command}: error: {_first_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"pycnn {args.command}: interrupted", file=sys.stderr)
        return 130


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # a bad command line: one line from ArgumentParser.error, exit 2
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
