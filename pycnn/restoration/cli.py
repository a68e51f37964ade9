"""The command line of inpainting: `pycnn train/evaluate` for pconv_unet on the inpainting data,
and `pycnn inpaint` on the user's own image and mask. Called from pycnn/cli.py."""
from __future__ import annotations

import os
import time


def train(args) -> int:
    """`pycnn train --model pconv_unet --data inpainting [...]`: fit, save, print the test table."""
    from pycnn import cli
    from pycnn.restoration import inpainting as I
    if args.model != "pconv_unet" or args.data != "inpainting":
        raise cli.UsageError(f"inpainting trains model pconv_unet on data inpainting, got --model {args.model} "
                             f"--data {args.data}")
    device = cli._device(args.device)
    cli._threads(args.threads)
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size)):
        if value < 1:
            raise cli.UsageError(f"{flag} must be positive, got {value}")
    if not args.lr > 0:
        raise cli.UsageError(f"--lr must be positive, got {args.lr}")
    if getattr(args, "resume", None):
        raise cli.UsageError("--resume: inpainting runs cannot be resumed yet; start a new run")
    import pycnn.train as T
    if args.out:
        T.check_run_folder(args.out)  # a run never writes over another
    splits, data_kwargs = cli._load_data(args.data, args.image_size, args.data_seed,
                                         cli._options(args.data_option, "--data-option"))
    model_kwargs = cli._options(args.model_option, "--model-option")
    model = cli._build_model(args.model, dict(model_kwargs), args.seed)
    config = {"model": args.model, "model_kwargs": model_kwargs, "data": args.data, "data_kwargs": data_kwargs,
              "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
              "task": "inpaint"}
    args.out = args.out or T.new_run_folder("runs", args.model, args.data)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"training {args.model} ({n_params:,} parameters) on {args.data} {splits.sizes()} for {args.epochs} epochs "
          f"on {device}; checkpoint in {args.out}/last.pt")
    history = I.fit(model, splits, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                    device=device, out=args.out, config=config, progress=not args.quiet)
    print(f"trained {len(history['epochs'])} epochs in {history['seconds']:.1f} s")
    _print_table(model, splits, "test", device)
    return 0


def _print_table(model, splits, split: str, device) -> None:
    from pycnn.restoration import inpainting as I
    t0 = time.perf_counter()
    table = I.evaluate(model, splits, split, device=device)
    print(f"{split}: by hole fraction (of the image area); ours, the classical fill it starts from (smooth_fill) "
          f"alone and skimage's inpaint_biharmonic "
          f"({time.perf_counter() - t0:.0f} s)")
    print(I.format_table(table))


def evaluate(args, state: dict) -> int:
    """`pycnn evaluate --checkpoint run/last.pt` for an inpainting checkpoint."""
    import pycnn.data as D
    from pycnn import cli
    from pycnn.restoration import inpainting as I
    device = cli._device(args.device)
    config = state.get("config") or {}
    model = I.load_model(args.checkpoint, device)
    splits = D.get("inpainting", **config.get("data_kwargs", {}))
    print(f"{config['model']} on inpainting/{args.split} (checkpoint epoch {state.get('epoch')}):")
    _print_table(model, splits, args.split, device)
    return 0


def cmd_inpaint(args) -> int:
    from pycnn import cli
    from pycnn.restoration import inpainting as I
    device = cli._device(args.device)
    cli._threads(args.threads)
    for flag, path in (("--image", args.image), ("--mask", args.mask), ("--checkpoint", args.checkpoint)):
        if not os.path.isfile(path):
            raise cli.UsageError(f"{flag}: no such file: {path}")
    t0 = time.perf_counter()
    I.inpaint_file(args.checkpoint, args.image, args.mask, args.out, device)
    print(f"wrote {args.out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def add_parser(sub, common) -> None:
    from pycnn import cli
    p = sub.add_parser("inpaint", help="fill the holes of an image with a pconv_unet checkpoint",
                       formatter_class=cli.HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="written by `pycnn train --model pconv_unet --data inpainting`")
    p.add_argument("--image", required=True, help="the image (grey or colour, any size)")
    p.add_argument("--mask", required=True, help="same size; white (nonzero) pixels are the holes")
    p.add_argument("--out", required=True, help="where to write the result (PNG, JPEG, ...)")
    common(p)
    p.set_defaults(func=cmd_inpaint)
