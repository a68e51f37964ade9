"""The ``pycnn`` command (also ``python -m pycnn``).

    pycnn train --model lenet5 --data digits --epochs 10 --out runs/digits
    pycnn evaluate --checkpoint runs/digits/best.pt
    pycnn demo [--quick]          # trains two models, writes pycnn-demo/index.html
    pycnn viz --checkpoint runs/digits/best.pt --image test:0 --method grad_cam --out fig.png

Bad arguments (unknown model, data or device; a missing or corrupt checkpoint; a model that does
not fit the data) end with one line on stderr and exit status 2, never a traceback.
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
_SIZE_KEYWORD = {"digits": "size", "faces": "size", "galaxies": "size", "textures": "patch", "inpainting": "patch"}


class UsageError(Exception):
    """A bad command line: reported in one line, exit status 2."""


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


def _load_data(name: str, image_size: Optional[int], seed: int, extra: Optional[dict] = None):
    import pycnn.data as D
    if name not in D.NAMES:
        raise UsageError(f"unknown data {name!r}; choose one of: {', '.join(D.NAMES)}")
    kwargs = dict(_DEFAULT_DATA_KWARGS.get(name, {}))
    if image_size is not None:
        kwargs[_SIZE_KEYWORD[name]] = image_size
    kwargs["seed"] = seed
    kwargs.update(extra or {})
    try:
        return D.get(name, **kwargs), kwargs
    except TypeError as e:  # an unknown --data-option
        raise UsageError(f"data {name!r}: {e}") from None


def _standardize(splits, mean=None, std=None):
    """Splits with images standardised per channel by the training split's mean and std (or the
    given ones, stored in a checkpoint). Zero-mean, unit-variance inputs train faster and more
    stably than raw [0, 1] pixels."""
    import dataclasses
    import torch
    from torch.utils.data import TensorDataset
    mean = torch.as_tensor(splits.mean if mean is None else mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(splits.std if std is None else std, dtype=torch.float32).clamp_min(1e-6).view(1, -1, 1, 1)
    parts = {k: TensorDataset((getattr(splits, k).tensors[0] - mean) / std, *getattr(splits, k).tensors[1:])
             for k in ("train", "val", "test")}
    return dataclasses.replace(splits, **parts), {"mean": mean.flatten().tolist(), "std": std.flatten().tolist()}


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
    return M.get(model_name, **kwargs)


def _print_metrics(prefix: str, metrics: dict) -> None:
    keys = [k for k in ("loss", "accuracy", "iou", "dice") if k in metrics]
    print(prefix + "  ".join(f"{k} {metrics[k]:.4f}" for k in keys) + f"  ({metrics['num_samples']} samples)")


# ---- commands -------------------------------------------------------------------------------

def cmd_train(args) -> int:
    if args.model == "pconv_unet" or args.data == "inpainting":  # image in, image out: its own loop
        from pycnn.restoration.cli import train as train_inpainting
        return train_inpainting(args)
    import pycnn.train as T
    device = _device(args.device)
    _threads(args.threads)
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UsageError(f"{flag} must be positive, got {value}")
    if not args.lr > 0:
        raise UsageError(f"--lr must be positive, got {args.lr}")
    data_options = _options(args.data_option, "--data-option")
    model_options = _options(args.model_option, "--model-option")
    splits, data_kwargs = _load_data(args.data, args.image_size, args.data_seed, data_options)
    task = _check_fit(args.model, splits)
    splits, normalize = _standardize(splits)
    model_kwargs = dict(_model_kwargs(args.model, splits, task), **model_options)
    model = _build_model(args.model, model_kwargs, args.seed)
    config = {"model": args.model, "model_kwargs": model_kwargs, "data": args.data, "data_kwargs": data_kwargs,
              "epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": args.lr,
              "schedule": args.schedule, "loss": args.loss, "seed": args.seed, "normalize": normalize,
              "augment": args.augment}
    n_params = sum(p.numel() for p in model.parameters())
    print(f"training {args.model} ({n_params:,} parameters) on {args.data} {splits.sizes()} for {args.epochs} epochs "
          f"on {device}; checkpoints in {args.out}")
    t0 = time.perf_counter()
    history = T.fit(model, splits.train, splits.val, epochs=args.epochs, batch_size=args.batch_size,
                    optimizer=args.optimizer, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                    schedule=args.schedule, loss=args.loss, task=task, num_classes=model_kwargs["num_classes"],
                    device=device, out=args.out, resume=not args.no_resume, config=config, seed=args.seed,
                    progress=not args.quiet,
                    augment=_augmentation(task, splits.image_size, args.seed) if args.augment else None)
    seconds = time.perf_counter() - t0
    if history.epochs:
        last = history.epochs[-1]
        print(f"trained {last['epoch']} epochs ({last['step']} steps) in {seconds:.1f} s")
    test = T.evaluate(model, splits.test, task=task, num_classes=model_kwargs["num_classes"], loss=args.loss,
                      device=device)
    _print_metrics("test: ", test)
    return 0


def cmd_evaluate(args) -> int:
    import torch
    import pycnn.train as T
    device = _device(args.device)
    _threads(args.threads)
    try:
        state = T.load_checkpoint(args.checkpoint, map_location="cpu")
    except T.CheckpointError as e:
        raise UsageError(str(e)) from None
    config = state.get("config") or {}
    if "model" not in config or "data" not in config:
        raise UsageError(f"{args.checkpoint} does not say which model and data it was trained on "
                         "(it was not written by `pycnn train`)")
    if config["model"] == "pconv_unet":
        from pycnn.restoration.cli import evaluate as evaluate_inpainting
        return evaluate_inpainting(args, state)
    data_name = args.data or config["data"]
    data_kwargs = dict(config.get("data_kwargs", {}))
    import pycnn.data as D
    if data_name not in D.NAMES:
        raise UsageError(f"unknown data {data_name!r}; choose one of: {', '.join(D.NAMES)}")
    splits = D.get(data_name, **data_kwargs)
    task = _check_fit(config["model"], splits)
    norm = config.get("normalize") or {}
    splits, _ = _standardize(splits, norm.get("mean"), norm.get("std"))
    model = _build_model(config["model"], config.get("model_kwargs", {}), 0)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UsageError(f"{args.checkpoint}: weights do not fit model {config['model']!r}: "
                         f"{str(e).splitlines()[0]}") from None
    model.to(device)
    data = getattr(splits, args.split)
    loss = config.get("loss", "cross_entropy")
    metrics = T.evaluate(model, data, task=task, num_classes=int(state.get("num_classes") or 0) or None, loss=loss,
                         device=device)
    print(f"{config['model']} on {data_name}/{args.split} (checkpoint epoch {state.get('epoch')}):")
    _print_metrics("  ", metrics)
    if task == "classify" and args.confusion:
        torch.set_printoptions(linewidth=200)
        print(metrics["confusion"])
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
    splits, normalize = _standardize(splits)
    model_kwargs = dict(_model_kwargs(spec["model"], splits, task), **spec.get("model_kwargs", {}))
    model = _build_model(spec["model"], model_kwargs, seed)
    config = {"model": spec["model"], "model_kwargs": model_kwargs, "data": name, "data_kwargs": data_kwargs,
              "epochs": spec["epochs"], "batch_size": spec["batch_size"], "optimizer": spec["optimizer"],
              "lr": spec["lr"], "schedule": "cosine", "loss": "cross_entropy", "seed": seed,
              "normalize": normalize, "image_size": splits.image_size[0], **spec.get("model_kwargs", {})}
    print(f"[demo] {spec['model']} on {name} {splits.sizes()}, {spec['epochs']} epochs")
    t0 = time.perf_counter()
    history = T.fit(model, splits.train, splits.val, epochs=spec["epochs"], batch_size=spec["batch_size"],
                    optimizer=spec["optimizer"], lr=spec["lr"], task=task, num_classes=model_kwargs["num_classes"],
                    device=device, out=os.path.join(out_dir, name), resume=False, config=config, seed=seed,
                    progress=progress)
    seconds = time.perf_counter() - t0
    metrics = T.evaluate(model, splits.test, task=task, num_classes=model_kwargs["num_classes"], device=device)
    _print_metrics(f"[demo] {name} test: ", metrics)
    return {"model": model.cpu(), "splits": splits, "history": history, "metrics": metrics, "seconds": seconds,
            "config": config, "sizes": splits.sizes()}


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
    rep = R.Report(args.out, "pycnn demo" + (" (quick)" if args.quick else ""))
    R.build_sections(results, rep)
    path = rep.write()
    print(f"[demo] finished in {time.perf_counter() - t0:.0f} s; report: {os.path.abspath(path)}")
    return 0


# ---- argument parsing -----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pycnn", description="Train and evaluate CNNs on pycnn's own kernels.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def common(sp):
        sp.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
        sp.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")

    t = sub.add_parser("train", help="train a model on a dataset")
    t.add_argument("--model", required=True, help="linear_classifier, mlp, lenet5, simple_cnn, resnet, "
                                                  "separable_cnn or unet")
    t.add_argument("--data", required=True, help="digits, faces, textures or galaxies")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--schedule", default="cosine", choices=["cosine", "step", "constant"])
    t.add_argument("--loss", default="cross_entropy", choices=["cross_entropy", "hinge"])
    t.add_argument("--image-size", type=int, default=None,
                   help="resize images (digits default 28; textures: the patch size)")
    t.add_argument("--model-option", action="append", metavar="KEY=VALUE",
                   help="extra model argument, e.g. depth=14 (resnet) or width=8 (unet); repeatable")
    t.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help="extra dataset argument, e.g. n=400 (galaxies); repeatable")
    t.add_argument("--augment", action="store_true",
                   help="random shifts (classification) or flips (segmentation) of each training batch")
    t.add_argument("--seed", type=int, default=0, help="initial weights, shuffling")
    t.add_argument("--data-seed", type=int, default=0, help="the dataset's train/val/test split")
    t.add_argument("--out", default="runs/latest", help="checkpoint folder (last.pt, best.pt)")
    t.add_argument("--no-resume", action="store_true", help="start over even if OUT/last.pt exists")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    common(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint written by `pycnn train`")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--data", default=None, help="override the dataset stored in the checkpoint")
    e.add_argument("--confusion", action="store_true", help="print the confusion matrix")
    common(e)
    e.set_defaults(func=cmd_evaluate)

    d = sub.add_parser("demo", help="train a digits classifier and a galaxy U-Net, write an HTML report")
    d.add_argument("--quick", action="store_true", help="smaller runs, about a minute on 2 CPU cores")
    d.add_argument("--out", default="pycnn-demo", help="report folder (default pycnn-demo)")
    d.add_argument("--quiet", action="store_true", help="no progress bars")
    common(d)
    d.set_defaults(func=cmd_demo)

    from pycnn.restoration.cli import add_parser as add_inpaint_parser  # `pycnn inpaint`
    add_inpaint_parser(sub, common)

    from pycnn.viz.cli import add_viz_parser  # `pycnn viz`: explain an image with a checkpoint
    add_viz_parser(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 with a one-line error on bad syntax
    try:
        return args.func(args)
    except UsageError as e:
        print(f"pycnn {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError, FileNotFoundError, PermissionError, ImportError) as e:
        # Raised by the library on bad values (a model argument, a dataset option, a path):
        # the message names the problem; a traceback would add nothing for the user.
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"pycnn {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"pycnn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
