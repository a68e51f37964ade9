"""Inpainting: training, metrics against the classical baseline, and filling the user's images.

    import pycnn.data as D, pycnn.models as M
    from pycnn.restoration import inpainting as I
    splits = D.get("inpainting")
    model = M.get("pconv_unet")
    I.fit(model, splits, epochs=12)
    table = I.evaluate(model, splits)          # by hole fraction: ours, the fill alone, biharmonic
    print(I.format_table(table))

Loss: L1 on the hole pixels (weight 6) plus L1 on the known ones (weight 1), the two pixel terms
of Liu et al. 2018, plus minus each image's hole PSNR (``PSNR_WEIGHT``, in units of 10 dB, floored
at 40 dB), the quantity the table averages. The model (pconv_unet) adds its output to a classical
fill (``pycnn.models.pconv_unet.smooth_fill``), so what it learns is a correction; the table
scores that fill alone too. Metrics (scikit-image): PSNR and mean absolute error inside the hole; PSNR and
SSIM on the whole image, after pasting the known pixels back (``composite``). Baseline:
``skimage.restoration.inpaint_biharmonic`` on the same images and masks.
"""
from __future__ import annotations

import math
import os
import time
from typing import Dict, Optional

import numpy as np
import torch

from pycnn.models.pconv_unet import composite

HOLE_WEIGHT = 6.0
VALID_WEIGHT = 1.0
PSNR_WEIGHT = 0.3
PSNR_FLOOR = 1e-4  # the hole MSE floor of the PSNR term (40 dB): a near-perfect fill is not chased further

# The demo's runs ("full" = the README's `pycnn train` command).
RECIPES = {
    "full": dict(data_kwargs={"train_patches": 2000}, model_kwargs={"depth": 4, "width": 16, "max_width": 64},
                 epochs=4, batch_size=16, lr=2e-3),  # the README's command
    "quick": dict(data_kwargs={"train_patches": 64, "test_per_image": 1},
                  model_kwargs={"depth": 4, "width": 8, "max_width": 32}, epochs=1, batch_size=16, lr=1e-3),
}


def loss_fn(prediction: torch.Tensor, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    err = (prediction - image).abs()
    hole = (1 - mask).expand_as(err)
    l1 = (HOLE_WEIGHT * err * hole + VALID_WEIGHT * err * (1 - hole)).mean()
    if not PSNR_WEIGHT:
        return l1
    # minus the hole PSNR of each image (in units of 10 dB), as the metric averages it over images: an
    # image the fill already gets right (a flat sky) counts as much as a hard one, so the network
    # learns to leave such holes alone instead of adding a small error that costs them 10+ dB
    mse = (err.square() * hole).sum((1, 2, 3)) / hole.sum((1, 2, 3)).clamp_min(1)
    return l1 + PSNR_WEIGHT * torch.log10(mse + PSNR_FLOOR).mean()


def _shuffled_batches(splits, epoch: int, seed: int, batch_size: int):
    """Each epoch pairs every image with another image's mask, both flipped at random: the masks
    are not tied to the images, so the pairs change from epoch to epoch."""
    images, masks = splits.train.tensors
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    order, mask_order = torch.randperm(len(images), generator=g), torch.randperm(len(masks), generator=g)
    for b in range(0, len(order) - batch_size + 1, batch_size):
        x, m = images[order[b:b + batch_size]], masks[mask_order[b:b + batch_size]]
        flips = torch.rand(4, generator=g) < 0.5
        x = x.flip(-1) if flips[0] else x
        x = x.flip(-2) if flips[1] else x
        m = m.flip(-1) if flips[2] else m
        m = m.transpose(-1, -2) if flips[3] and m.shape[-1] == m.shape[-2] else m
        yield x, m


def fit(model, splits, *, epochs: int = 12, batch_size: int = 16, lr: float = 2e-3, seed: int = 0,
        device="cpu", out: Optional[str] = None, config: Optional[dict] = None, progress: bool = True,
        time_limit: Optional[float] = None) -> dict:
    """Trains ``model`` (image, mask -> image) on ``splits.train``; returns the history (loss per
    epoch, validation L1 inside the hole). Writes ``out/last.pt`` each epoch when ``out`` is given.
    ``time_limit`` (seconds) stops after the epoch that passes it."""
    torch.manual_seed(seed)
    config = dict(config or {})
    if hasattr(model, "normalize"):  # saved as built: checkpoints from before the option load without it
        config["model_kwargs"] = dict(config.get("model_kwargs") or {}, normalize=model.normalize)
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * (len(splits.train) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, steps), pct_start=0.15)
    history = {"epochs": [], "seconds": 0.0}
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        total, n = 0.0, 0
        for x, m in _shuffled_batches(splits, epoch, seed, batch_size):
            x, m = x.to(device), m.to(device)
            loss = loss_fn(model(x * m, m), x, m)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, n = total + loss.item() * len(x), n + len(x)
        val = hole_l1(model, splits.val.tensors[0], splits.val.tensors[1], device)
        record = {"epoch": epoch + 1, "loss": total / max(n, 1), "val_hole_l1": val,
                  "seconds": time.perf_counter() - t0}
        history["epochs"].append(record)
        if progress:
            print(f"epoch {epoch + 1}/{epochs}: loss {record['loss']:.4f}  val hole L1 {val:.4f}  "
                  f"({record['seconds']:.0f} s)", flush=True)
        if out:
            from pycnn.train import save_checkpoint
            save_checkpoint(os.path.join(out, "last.pt"), {
                "model": model.state_dict(), "epoch": epoch + 1, "task": "inpaint", "config": config,
                "metrics": record})
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            break
    history["seconds"] = time.perf_counter() - t0
    return history


@torch.no_grad()
def predict(model, images: torch.Tensor, masks: torch.Tensor, device="cpu", batch_size: int = 64) -> torch.Tensor:
    """The composited result (known pixels kept) for images [N, C, H, W] and masks [N, 1, H, W]."""
    was_training = model.training
    model.eval()
    try:
        outs = []
        for b in range(0, len(images), batch_size):
            x, m = images[b:b + batch_size].to(device), masks[b:b + batch_size].to(device)
            outs.append(composite(x, m, model(x * m, m)).cpu())
        return torch.cat(outs) if outs else images.clone()
    finally:
        model.train(was_training)


def hole_l1(model, images, masks, device="cpu") -> float:
    filled = predict(model, images, masks, device)
    hole = 1 - masks
    return float(((filled - images).abs() * hole).sum() / hole.sum().clamp_min(1))


def biharmonic(images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """skimage.restoration.inpaint_biharmonic on each image (per channel), masks 1 = known."""
    from skimage.restoration import inpaint_biharmonic
    out = images.clone()
    for i in range(len(images)):
        hole = masks[i, 0].numpy() < 0.5
        for c in range(images.shape[1]):
            out[i, c] = torch.from_numpy(inpaint_biharmonic(images[i, c].numpy().astype(np.float64), hole)
                                         .astype(np.float32)).clamp(0, 1)
    return out


def image_metrics(truth: np.ndarray, result: np.ndarray, hole: np.ndarray) -> Dict[str, float]:
    """PSNR and L1 inside the hole, PSNR and SSIM of the whole image (grey [H, W] in [0, 1])."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    diff = (result - truth)[hole]
    mse = float(np.mean(diff ** 2)) if diff.size else 0.0
    whole_mse = float(np.mean((result - truth) ** 2))
    return {"hole_psnr": 10 * math.log10(1 / max(mse, 1e-10)), "hole_l1": float(np.mean(np.abs(diff))) if diff.size else 0.0,
            # identical images: 100 dB (the cap of the hole PSNR) instead of skimage's inf
            "psnr": float(peak_signal_noise_ratio(truth, result, data_range=1.0)) if whole_mse > 0 else 100.0,
            "ssim": float(structural_similarity(truth, result, data_range=1.0))}


def fill_only(model, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The classical fill the model starts from (``smooth_fill`` with its settings), known pixels kept."""
    from pycnn.models.pconv_unet import smooth_fill
    return composite(images, masks, smooth_fill(images * masks, masks, model.fill_iters, model.biharmonic_iters))


def evaluate(model, splits, split: str = "test", device="cpu", baseline: bool = True, limit: Optional[int] = None) -> dict:
    """Metrics by hole fraction for the model, the classical fill it starts from alone ("fill", when
    it has one) and (``baseline``) biharmonic inpainting:
    ``{fraction: {"count": n, "ours": {metric: mean}, "fill": {...}, "biharmonic": {...}}}`` plus key "all"."""
    images, masks = getattr(splits, split).tensors
    fractions = splits.extra[split]["hole_fraction"]
    if limit is not None:
        images, masks, fractions = images[:limit], masks[:limit], fractions[:limit]
    methods = {"ours": predict(model, images, masks, device)}
    if getattr(model, "fill_iters", 0):
        methods["fill"] = fill_only(model, images, masks)
    if baseline:
        methods["biharmonic"] = biharmonic(images, masks)
    per = {name: [] for name in methods}
    for name, filled in methods.items():
        for i in range(len(images)):
            truth, hole = images[i].mean(0).numpy(), masks[i, 0].numpy() < 0.5
            per[name].append(image_metrics(truth, filled[i].mean(0).numpy(), hole))
    table = {}
    groups = [(round(float(f), 4), fractions == f) for f in sorted(set(fractions.tolist()))] + [("all", torch.ones_like(fractions, dtype=torch.bool))]
    for key, sel in groups:
        idx = torch.nonzero(sel).flatten().tolist()
        row = {"count": len(idx)}
        for name in methods:
            row[name] = {k: float(np.mean([per[name][i][k] for i in idx])) for k in per[name][0]}
        table[key] = row
    return table


METHODS = (("ours", "ours"), ("fill", "fill"), ("biharmonic", "biharm"))  # table columns: key, short name


def format_table(table: dict) -> str:
    """The metrics table as text: one line per hole fraction; ours, the fill alone and biharmonic side by side."""
    names = [(k, short) for k, short in METHODS if any(k in row for row in table.values())]
    w = 8 * len(names) - 1
    head = f"{'hole':>6} {'n':>4} | " + " | ".join(f"{t:>{w}}" for t in ("hole PSNR", "hole L1", "PSNR", "SSIM"))
    sub = f"{'':>6} {'':>4} | " + " | ".join(" ".join(f"{short:>7}" for _, short in names) for _ in range(4))
    lines = [head, sub]
    for key, row in table.items():
        label = "all" if key == "all" else f"{100 * key:.0f}%"
        cells = []
        for metric, fmt in (("hole_psnr", "{:7.2f}"), ("hole_l1", "{:7.4f}"), ("psnr", "{:7.2f}"), ("ssim", "{:7.4f}")):
            cells.append(" ".join(fmt.format(row[k][metric]) if k in row else f"{'':>7}" for k, _ in names))
        lines.append(f"{label:>6} {row['count']:>4} | " + " | ".join(cells))
    return "\n".join(lines)


# ---- the user's own images --------------------------------------------------------------------

def load_model(checkpoint: str, device="cpu"):
    from pycnn.train import load_checkpoint
    import pycnn.models as M
    state = load_checkpoint(checkpoint, map_location="cpu")
    config = state.get("config") or {}
    if config.get("model") != "pconv_unet":
        raise ValueError(f"{checkpoint} holds model {config.get('model')!r}, not an inpainting model (pconv_unet)")
    kwargs = dict(config.get("model_kwargs", {}))
    first = state["model"].get("encoders.0.weight")
    if "fill_iters" not in kwargs and first is not None and first.shape[1] == kwargs.get("in_channels", 1):
        kwargs["fill_iters"] = 0  # a checkpoint from before the classical fill input: the plain U-Net
    kwargs.setdefault("normalize", False)  # a checkpoint from before contrast normalisation (fit records it)
    model = M.get("pconv_unet", **kwargs)
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def inpaint_array(model, image: np.ndarray, hole: np.ndarray, device="cpu") -> np.ndarray:
    """Fills ``hole`` (bool [H, W], True = missing) in ``image`` ([H, W] or [H, W, C] float in [0, 1]).
    A grey model fills each colour channel on its own. Any size: the model is fully convolutional."""
    img = image[..., None] if image.ndim == 2 else image
    x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float()
    m = torch.from_numpy((~hole).astype(np.float32))[None, None]
    if model.in_channels == 1:
        x, m = x[:, None], m.expand(x.shape[0], 1, -1, -1)
    else:
        x = x[None]
    out = predict(model, x, m, device, batch_size=4)
    out = out[:, 0] if model.in_channels == 1 else out[0]
    result = out.numpy().transpose(1, 2, 0)
    return result[..., 0] if image.ndim == 2 else result


def inpaint_file(checkpoint: str, image_path: str, mask_path: str, out_path: str, device="cpu") -> None:
    """Reads an image and a mask (white / nonzero = hole, any format skimage.io reads), writes the result."""
    from skimage import io, util
    model = load_model(checkpoint, device)
    image = util.img_as_float32(io.imread(image_path))
    if image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    mask = io.imread(mask_path)
    if mask.ndim == 3:
        mask = mask[..., :3].max(-1)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"inpaint: mask {mask_path} is {mask.shape[1]}x{mask.shape[0]}, image {image_path} is "
                         f"{image.shape[1]}x{image.shape[0]}; they must be the same size")
    result = inpaint_array(model, image, mask > 0, device)
    io.imsave(out_path, util.img_as_ubyte(np.clip(result, 0, 1)), check_contrast=False)
