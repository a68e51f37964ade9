"""Super-resolution on the ``pycnn`` command line.

    pycnn train --model espcn --data super_resolution --data-option scale=2 --augment --out runs/espcn-x2
    pycnn evaluate --checkpoint runs/espcn-x2/best.pt --ensemble  # PSNR / SSIM against bicubic, per image
    pycnn upscale --checkpoint runs/espcn-x2/best.pt --image photo.png --out photo-x2.png

``pycnn train`` and ``pycnn evaluate`` hand super-resolution models and checkpoints to
:func:`train` and :func:`evaluate` here; ``upscale`` is added by :func:`add_upscale_parser`.
"""
from __future__ import annotations

import argparse
import os
import time


def _usage(msg: str):
    from pycnn.cli import UsageError
    return UsageError(msg)


def _kwargs(args):
    """(model kwargs, data kwargs) from the command line: the scale is the data's (default 2) and
    the model's, the data's input kind is whatever the model takes."""
    import pycnn.cli as C
    import pycnn.models as M
    if args.model not in M.names():
        raise _usage(f"unknown model {args.model!r}; choose one of: {', '.join(M.names())}")
    if M.task(args.model) != "super_resolution":
        raise _usage(f"model {args.model!r} is not a super-resolution model; use srcnn, fsrcnn or espcn "
                     f"with --data super_resolution")
    if args.data != "super_resolution":
        raise _usage(f"model {args.model!r} upscales images; train it with --data super_resolution")
    data_kwargs = C._options(args.data_option, "--data-option")
    model_kwargs = C._options(args.model_option, "--model-option")
    scale = data_kwargs.setdefault("scale", model_kwargs.get("scale", 2))
    if model_kwargs.setdefault("scale", scale) != scale:
        raise _usage(f"--model-option scale={model_kwargs['scale']} differs from --data-option scale={scale}")
    if args.image_size is not None:
        data_kwargs["patch"] = args.image_size
    data_kwargs["seed"] = args.data_seed
    model = M.get(args.model, **model_kwargs)
    data_kwargs["input"] = model.input_kind
    return model_kwargs, data_kwargs


def print_evaluation(result: dict, title: str) -> None:
    print(f"{title}: PSNR-Y / SSIM-Y on the held-out images, {result['scale']} pixels cropped from each border")
    print(f"  {'image':<18} {'model PSNR':>10} {'bicubic':>8} {'gain':>6}   {'model SSIM':>10} {'bicubic':>8}")
    for r in result["images"] + [dict(result, name="mean")]:
        print(f"  {r['name']:<18} {r['psnr']:>10.2f} {r['bicubic_psnr']:>8.2f} {r['psnr'] - r['bicubic_psnr']:>+6.2f}"
              f"   {r['ssim']:>10.4f} {r['bicubic_ssim']:>8.4f}")


def train(args) -> int:
    """``pycnn train`` for srcnn / fsrcnn / espcn on super_resolution data."""
    import torch
    import pycnn.cli as C
    import pycnn.data as D
    import pycnn.models as M
    import pycnn.superres as SR
    device = C._device(args.device)
    C._threads(args.threads)
    loss = args.loss or "mse"
    if loss not in ("mse", "l1"):
        raise _usage(f"--loss {loss} is for classification; super-resolution trains with mse or l1")
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise _usage(f"{flag} must be positive, got {value}")
    if not args.lr > 0:
        raise _usage(f"--lr must be positive, got {args.lr}")
    if getattr(args, "resume", None):
        raise _usage("--resume: super-resolution runs cannot be resumed yet; start a new run")
    import pycnn.train as T
    if args.out:
        T.check_run_folder(args.out)  # a run never writes over another
    model_kwargs, data_kwargs = _kwargs(args)
    try:
        splits = D.get("super_resolution", **data_kwargs)
    except TypeError as e:  # an unknown --data-option
        raise _usage(f"data 'super_resolution': {e}") from None
    torch.manual_seed(args.seed)  # the initial weights are a function of the seed
    model = M.get(args.model, **model_kwargs)
    config = {"model": args.model, "model_kwargs": model_kwargs, "data": "super_resolution",
              "data_kwargs": data_kwargs, "task": "super_resolution", "epochs": args.epochs,
              "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": args.lr, "schedule": args.schedule,
              "loss": loss, "seed": args.seed, "augment": args.augment}
    args.out = args.out or T.new_run_folder("runs", args.model, "super_resolution")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"training {args.model} x{model.scale} ({n_params:,} parameters) on super_resolution {splits.sizes()} "
          f"patches for {args.epochs} epochs on {device}; checkpoints in {args.out}")
    t0, c0 = time.perf_counter(), time.process_time()
    history = SR.fit(model, splits, epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer,
                     lr=args.lr, weight_decay=args.weight_decay, schedule=args.schedule, loss=loss,
                     augment=args.augment, device=device, out=args.out, resume=False, config=config,
                     seed=args.seed, progress=not args.quiet)
    if history.epochs:
        last = history.epochs[-1]
        print(f"trained {last['epoch']} epochs ({last['step']} steps) in {time.perf_counter() - t0:.1f} s "
              f"({time.process_time() - c0:.1f} s of CPU time); val PSNR {last.get('val_psnr', float('nan')):.2f} dB")
    print_evaluation(SR.evaluate(model, device=device), f"{args.model} x{model.scale} (last epoch)")
    return 0


def evaluate(args, state: dict, config: dict) -> int:
    """``pycnn evaluate`` of a super-resolution checkpoint: whole held-out images for --split test,
    the patch split's loss and PSNR otherwise."""
    import pycnn.cli as C
    import pycnn.data as D
    import pycnn.superres as SR
    device = C._device(args.device)
    model = load_model(args.checkpoint, state, config).to(device)
    if args.split == "test":
        print_evaluation(SR.evaluate(model, device=device),
                         f"{config['model']} x{model.scale} (checkpoint epoch {state.get('epoch')})")
        if getattr(args, "ensemble", False):
            print_evaluation(SR.evaluate(model, device=device, ensemble=True),
                             f"{config['model']} x{model.scale}, self-ensemble (mean of 8 flips/transposes)")
        return 0
    splits = D.get("super_resolution", **config.get("data_kwargs", {}))
    m = SR.evaluate_patches(model, getattr(splits, args.split), config.get("loss", "mse"), device=device)
    print(f"{config['model']} x{model.scale} on super_resolution/{args.split} patches "
          f"(checkpoint epoch {state.get('epoch')}):")
    print(f"  loss {m['loss']:.6f}  PSNR {m['psnr']:.2f} dB  ({m['num_samples']} patches)")
    return 0


def load_model(path: str, state: dict, config: dict):
    import pycnn.models as M
    try:
        model = M.get(config["model"], **config.get("model_kwargs", {}))
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise _usage(f"{path}: weights do not fit model {config.get('model')!r}: "
                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return model.eval()


# ---- pycnn upscale --------------------------------------------------------------------------

def add_upscale_parser(sub) -> argparse.ArgumentParser:
    from pycnn.cli import HelpFormatter
    u = sub.add_parser("upscale", help="upscale an image with a super-resolution checkpoint",
                       formatter_class=HelpFormatter)
    u.add_argument("--checkpoint", required=True, help="a checkpoint of srcnn, fsrcnn or espcn from `pycnn train`")
    u.add_argument("--image", required=True, help="the image to upscale (PNG, JPEG, TIFF...: grey, RGB or RGBA)")
    u.add_argument("--out", required=True, help="where to write the upscaled image (format from the extension)")
    u.add_argument("--device", default="cpu", help="cpu or cuda")
    u.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    u.add_argument("--ensemble", action="store_true",
                   help="average the model over the 8 flips/transposes of the image (8x the time; "
                        "+0.1 dB on the held-out images)")
    u.set_defaults(func=cmd_upscale)
    return u


def cmd_upscale(args) -> int:
    import pycnn.cli as C
    import pycnn.superres as SR
    import pycnn.train as T
    device = C._device(args.device)
    C._threads(args.threads)
    try:
        state = T.load_checkpoint(args.checkpoint, map_location="cpu")
    except T.CheckpointError as e:
        raise _usage(str(e)) from None
    config = state.get("config") or {}
    if config.get("task") != "super_resolution":
        raise _usage(f"{args.checkpoint} is not a super-resolution checkpoint "
                     f"(it holds {config.get('model', 'an unknown model')!r})")
    model = load_model(args.checkpoint, state, config).to(device)
    image, peak = _read_image(args.image)
    t0 = time.perf_counter()
    out = SR.upscale_image(model, image, device=device, ensemble=args.ensemble)
    seconds = time.perf_counter() - t0
    _write_image(args.out, out, peak)
    print(f"upscaled {image.shape[1]}x{image.shape[0]} -> {out.shape[1]}x{out.shape[0]} "
          f"({config['model']} x{model.scale}) in {seconds:.1f} s: {args.out}")
    return 0


def _read_image(path: str):
    """(float32 image in [0, 1], the integer peak of its file format: 255 or 65535)."""
    import numpy as np
    from skimage import io
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        img = io.imread(path)
    except Exception as e:  # not an image, truncated, unknown format
        raise _usage(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 2:  # grey + alpha: keep the grey
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)) or min(img.shape[:2]) < 1:
        raise _usage(f"{path}: expected a grey, RGB or RGBA image, got an array of shape {img.shape}")
    if img.dtype == np.bool_:
        img = img.astype(np.uint8) * 255
    if np.issubdtype(img.dtype, np.integer):
        peak = 65535 if img.dtype.itemsize >= 2 else 255
        return img.astype(np.float32) / peak, peak
    return np.clip(img.astype(np.float32), 0.0, 1.0), 255


def _write_image(path: str, image, peak: int) -> None:
    import numpy as np
    from skimage import io
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    dtype = np.uint16 if peak == 65535 else np.uint8
    io.imsave(path, np.round(image * peak).astype(dtype), check_contrast=False)
