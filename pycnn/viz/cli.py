"""``pycnn viz``: explain one image with a trained checkpoint, from the command line.

    pycnn viz --checkpoint runs/digits/best.pt --image digit.png --method grad_cam --out fig.png
    pycnn viz --checkpoint runs/digits/best.pt --image test:7 --method integrated_gradients

``--image`` is a PNG/JPEG, a .npy/.pt array ([H, W], [H, W, C] or [C, H, W]), or ``SPLIT:INDEX``
for an image of the checkpoint's own dataset. The figure shows the image, the method's map over
it, and the model's prediction. ``main_viz(argv)`` runs it without the ``pycnn`` parser.
"""
from __future__ import annotations

import argparse
import re
import sys
from typing import List, Optional

ATTRIBUTION = ("saliency", "deconvnet", "guided_backprop", "integrated_gradients", "grad_cam", "occlusion")
METHODS = ATTRIBUTION + ("fgsm", "filters", "activations", "class_model", "deep_dream")


def add_viz_parser(sub) -> argparse.ArgumentParser:
    """Adds the ``viz`` subcommand to an argparse subparsers object."""
    v = sub.add_parser("viz", help="explain an image with a checkpoint (saliency, Grad-CAM, ...), save a PNG")
    v.add_argument("--checkpoint", required=True, help="a checkpoint written by `pycnn train`")
    v.add_argument("--image", required=True, help="PNG/JPEG, .npy/.pt array, or SPLIT:INDEX of the checkpoint's data")
    v.add_argument("--method", default="grad_cam", choices=METHODS)
    v.add_argument("--target", type=int, default=None, help="class to explain (default: the predicted one)")
    v.add_argument("--layer", default=None, help="layer for grad_cam/activations/deep_dream (default: last conv)")
    v.add_argument("--out", default="viz.png", help="output PNG (default viz.png)")
    v.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    v.set_defaults(func=cmd_viz)
    return v


def _load_model(path: str, device):
    """The checkpoint's model (raw images in: its standardisation is a layer) and its config."""
    import pycnn.train as T
    from pycnn.checkpoint import model_from_state

    state = T.load_checkpoint(path, map_location="cpu")  # CheckpointError is a ValueError
    model = model_from_state(state, path)
    config = dict(state.get("config") or {})
    arch, data = state.get("arch") or {}, state.get("data") or {}
    if arch.get("name"):  # checkpoints written by fit from Python say it here, not in config
        config.setdefault("model", arch["name"])
        config.setdefault("model_kwargs", arch.get("kwargs") or {})
    if data.get("name"):
        config["data"], config["data_kwargs"] = data["name"], data.get("options") or {}
    return model.to(device).eval(), config


def _load_image(spec: str, config: dict, in_channels: int, size):
    """A [1, C, H, W] float tensor in the model's channel count and input size."""
    import numpy as np
    import torch
    import torch.nn.functional as TF

    m = re.fullmatch(r"(train|val|test):(\d+)", spec)
    if m:
        import pycnn.data as D

        if "data" not in config:
            raise ValueError(f"--image {spec}: the checkpoint does not name its dataset")
        split = getattr(D.get(config["data"], **config.get("data_kwargs", {})), m.group(1))
        index = int(m.group(2))
        if index >= len(split):
            raise ValueError(f"--image {spec}: the {m.group(1)} split has {len(split)} images")
        return split[index][0].unsqueeze(0).float(), (split[index][1] if split[index][1].dim() == 0 else None)
    lower = spec.lower()
    if lower.endswith(".npy"):
        a = np.load(spec)
    elif lower.endswith(".pt"):
        a = torch.load(spec, map_location="cpu", weights_only=True)
    else:
        import matplotlib.image as mpimg

        a = mpimg.imread(spec)  # PNG as float [0, 1]; JPEG as uint8 (needs Pillow)
        if a.dtype == np.uint8:
            a = a / 255.0
    t = torch.as_tensor(np.asarray(a), dtype=torch.float32)
    if t.dim() == 2:
        t = t.unsqueeze(0)
    elif t.dim() == 3 and t.shape[-1] in (1, 3, 4) and t.shape[0] not in (1, 3, 4):
        t = t.permute(2, 0, 1)  # HWC -> CHW
    if t.dim() != 3:
        raise ValueError(f"--image {spec}: expected a 2-D or 3-D image, got shape {tuple(t.shape)}")
    t = t[:3]
    if t.shape[0] != in_channels:
        t = t.mean(0, keepdim=True).expand(in_channels, -1, -1) if in_channels in (1, 3) else t
    t = t.unsqueeze(0)
    if size is not None and tuple(t.shape[-2:]) != tuple(size):
        t = TF.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False)
    return t.contiguous(), None


def cmd_viz(args) -> int:
    import torch

    from pycnn import viz
    from pycnn.viz._common import as_targets, conv_like_layers
    from pycnn.viz.report_section import _grid_figure

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {args.device!r} requested but CUDA is not available")
    device = torch.device(args.device)
    model, config = _load_model(args.checkpoint, device)
    kwargs = config.get("model_kwargs", {})
    size = kwargs.get("image_size")
    size = (size, size) if isinstance(size, int) else size
    x, label = _load_image(args.image, config, int(kwargs.get("in_channels", 1)), size)
    x = x.to(device)
    convs = conv_like_layers(model)
    layer = args.layer or (convs[-1] if convs else None)
    with torch.no_grad():
        out = model(x)
    target = as_targets("viz", args.target, 1, device, out)
    pred = int(as_targets("viz", None, 1, device, out))
    title = f"predicted {pred}" + ("" if label is None else f", true {int(label)}")
    method = args.method
    fig, axes = _grid_figure(1, 2, cell=3.2)
    viz.plot.show_image(x[0], ax=axes[0, 0], title=title)
    name = method.replace("_", " ")
    if method in ATTRIBUTION:
        if method == "grad_cam":
            if layer is None:
                raise ValueError("grad_cam needs a convolution layer (--layer)")
            heat = viz.grad_cam(model, layer, x, target, size=tuple(x.shape[-2:]))
            name = f"Grad-CAM at {layer}"
        elif method == "occlusion":
            w = max(2, x.shape[-1] // 6)
            heat = viz.occlusion(model, x, target, window=(w, w), stride=max(1, w // 2))
        else:
            heat = getattr(viz, method)(model, x, target)
        viz.plot.overlay(x[0], heat[0], ax=axes[0, 1], title=f"{name}, class {int(target)}", colorbar=True)
    elif method == "fgsm":
        lo, hi = float(x.min()), float(x.max())
        adv = viz.fgsm(model, x, target, 0.1 * (hi - lo), clamp=(lo, hi))
        with torch.no_grad():
            new = int(as_targets("viz", None, 1, device, model(adv)))
        viz.plot.show_image(adv[0], ax=axes[0, 1], title=f"FGSM: now predicted {new}")
    elif method == "filters":
        first = dict(model.named_modules())[layer or convs[0]]
        axes[0, 1].imshow(viz.filter_mosaic(first.weight))
        axes[0, 1].set_axis_off()
        axes[0, 1].set_title(f"filters of {layer or convs[0]}", fontsize=9)
    elif method == "activations":
        acts = viz.activations(model, x, layer)
        viz.activation_grid(acts[layer], ax=axes[0, 1], title=f"feature maps of {layer}")
    elif method == "class_model":
        img = viz.class_model(model, target, init=x, steps=100, lr=0.02, clamp=(float(x.min()), float(x.max())))
        viz.plot.show_image(img[0], ax=axes[0, 1], title=f"class model of {int(target)}")
    elif method == "deep_dream":
        img = viz.deep_dream(model, x, [layer], octaves=3, steps=10, lr=0.02)
        viz.plot.show_image(img[0], ax=axes[0, 1], title=f"deep dream at {layer}")
    path = viz.plot.save(fig, args.out)
    print(f"pycnn viz: {method} -> {path}")
    return 0


def main_viz(argv: Optional[List[str]] = None) -> int:
    """``pycnn viz`` without the main parser (same arguments)."""
    parser = argparse.ArgumentParser(prog="pycnn")
    add_viz_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["viz"] + list(sys.argv[1:] if argv is None else argv))
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"pycnn viz: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main_viz())
