"""Super-resolution with pycnn: train an upscaler, measure it against bicubic, upscale images.

    import pycnn.data as D, pycnn.models as M, pycnn.superres as SR
    splits = D.get("super_resolution", scale=2)                # Y patches, low-res -> high-res
    model = M.get("espcn", scale=2)
    SR.fit(model, splits, epochs=20, out="runs/espcn-x2")
    SR.evaluate(model)                   # PSNR / SSIM on the held-out images, and bicubic's
    rgb = SR.upscale_image(model, low_res_rgb)                 # any size, RGB or grey

Metric protocol (one for training pairs, baseline and model; see ``pycnn.data.superres``): the
held-out image's Y (BT.601) is cropped to a multiple of ``scale``, downscaled by the one bicubic
resize, and upscaled back by bicubic (the baseline) or by the model. PSNR and SSIM are measured on
Y in [0, 1] (peak 1, i.e. 255 on the 8-bit scale) after cropping ``scale`` pixels from each
border (``skimage.metrics``; SSIM with the Gaussian 11 x 11 window, sigma 1.5, of Wang et al.
2004, as SR papers report it). Outputs are clipped to [0, 1], not rounded to 8 bits.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from pycnn.data.superres import TEST_SOURCES, VALIDATION_SOURCES, bicubic_resize, degrade, rgb_to_y, whole_images

__all__ = ["psnr", "ssim", "crop_border", "upscale_y", "upscale_image", "evaluate", "fit", "evaluate_patches"]


# ---- metrics --------------------------------------------------------------------------------

def crop_border(image: np.ndarray, border: int) -> np.ndarray:
    """``image`` without ``border`` pixels on each side (SR metrics ignore the edge)."""
    if border < 0 or 2 * border >= min(image.shape[:2]):
        raise ValueError(f"crop_border: cannot crop {border} pixels from each side of {image.shape[:2]}")
    return image[border:image.shape[0] - border, border:image.shape[1] - border] if border else image


def _pair_for_metric(name: str, pred, truth, border: int):
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"{name}: expected two Y images of the same shape, got {pred.shape} and {truth.shape}")
    return crop_border(np.clip(pred, 0.0, 1.0), border), crop_border(truth, border)


def psnr(pred_y, truth_y, border: int = 0) -> float:
    """PSNR in dB of Y images in [0, 1] (peak 1), ``border`` pixels cropped from each side:
    10 log10(1 / mean squared error). ``pred_y`` is clipped to [0, 1] first."""
    from skimage.metrics import peak_signal_noise_ratio
    p, t = _pair_for_metric("psnr", pred_y, truth_y, border)
    return float(peak_signal_noise_ratio(t, p, data_range=1.0))


def ssim(pred_y, truth_y, border: int = 0) -> float:
    """SSIM of Y images in [0, 1], ``border`` pixels cropped from each side; Gaussian window
    (sigma 1.5), population covariances, as Wang et al. 2004 and SR papers compute it."""
    from skimage.metrics import structural_similarity
    p, t = _pair_for_metric("ssim", pred_y, truth_y, border)
    return float(structural_similarity(t, p, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


# ---- inference ------------------------------------------------------------------------------

def _model_scale(model: nn.Module) -> int:
    scale = getattr(model, "scale", None)
    if scale is None or getattr(model, "input_kind", None) not in ("low_res", "bicubic"):
        raise ValueError(f"{type(model).__name__} is not a super-resolution model (needs .scale and .input_kind)")
    return int(scale)


def _symmetry(image: np.ndarray, k: int, inverse: bool = False) -> np.ndarray:
    """One of the 8 flips/transposes of the square (k in 0..7; the bits as in ``_random_symmetry``),
    or its inverse."""
    ops = [(k & 1, lambda a: a[:, ::-1]), (k & 2, lambda a: a[::-1]), (k & 4, lambda a: a.T)]
    for on, op in (reversed(ops) if inverse else ops):
        if on:
            image = op(image)
    return np.ascontiguousarray(image)


def upscale_y(model: nn.Module, low_res_y: np.ndarray, tile: int = 256, device="cpu",
              ensemble: bool = False) -> np.ndarray:
    """``low_res_y`` (H x W, float in [0, 1]) upscaled ``model.scale`` times by ``model``: float32
    (H * scale) x (W * scale), clipped to [0, 1].

    The networks are fully convolutional, so any size works; large images are cut into tiles of
    ``tile`` low-res pixels that overlap by more than the networks' reach (12 low-res pixels on each
    side; SRCNN, FSRCNN and ESPCN see at most 8), so the result equals a whole-image pass, with
    bounded memory. The model's train/eval mode is left as it was found.

    ``ensemble=True``: the mean of the model's upscalings of the 8 flips/transposes of the
    image, each turned back (Lim et al. 2017's "self-ensemble"): 8 times the inference cost, no
    training. The model was trained on all 8 orientations (``fit``'s augmentation), and its errors
    in them are partly independent, so the mean is closer to the truth."""
    if not ensemble:
        return _upscale_y(model, low_res_y, tile, device)
    lr = np.asarray(low_res_y, dtype=np.float32)
    if lr.ndim != 2 or min(lr.shape) < 1:
        raise ValueError(f"upscale_y: expected an H x W image, got shape {lr.shape}")
    total = None
    for k in range(8):
        out = _symmetry(_upscale_y(model, _symmetry(lr, k), tile, device), k, inverse=True).astype(np.float64)
        total = out if total is None else total + out
    return (total / 8).astype(np.float32)


@torch.no_grad()
def _upscale_y(model: nn.Module, low_res_y: np.ndarray, tile: int = 256, device="cpu") -> np.ndarray:
    """One pass of :func:`upscale_y` (tiled)."""
    scale = _model_scale(model)
    lr = np.asarray(low_res_y, dtype=np.float32)
    if lr.ndim != 2 or min(lr.shape) < 1:
        raise ValueError(f"upscale_y: expected an H x W image, got shape {lr.shape}")
    h, w = lr.shape
    if model.input_kind == "bicubic":
        x, factor = bicubic_resize(lr, (h * scale, w * scale)), 1
    else:
        x, factor = lr, scale
    step, margin = tile * scale // factor, 12 * scale // factor  # in the model's input pixels
    out = np.empty((h * scale, w * scale), np.float32)
    was_training = model.training
    model.eval()
    try:
        for top in range(0, x.shape[0], step):
            for left in range(0, x.shape[1], step):
                t0, l0 = max(0, top - margin), max(0, left - margin)
                t1, l1 = min(x.shape[0], top + step + margin), min(x.shape[1], left + step + margin)
                piece = torch.from_numpy(np.ascontiguousarray(x[t0:t1, l0:l1]))[None, None].to(device)
                y = model(piece)[0, 0].clamp_(0.0, 1.0).cpu().numpy()
                f = factor
                oy, ox = (top - t0) * f, (left - l0) * f
                rows, cols = min(step, x.shape[0] - top) * f, min(step, x.shape[1] - left) * f
                out[top * f:top * f + rows, left * f:left * f + cols] = y[oy:oy + rows, ox:ox + cols]
    finally:
        model.train(was_training)
    return out


def _ycbcr(rgb: np.ndarray):
    from skimage.color import rgb2ycbcr
    return rgb2ycbcr(rgb) / 255.0  # Y in [16, 235] / 255, Cb and Cr in [16, 240] / 255


def upscale_image(model: nn.Module, low_res: np.ndarray, device="cpu", ensemble: bool = False) -> np.ndarray:
    """An RGB (H x W x 3) or grey (H x W) image in [0, 1] upscaled ``model.scale`` times: Y by the
    model, the colour difference channels Cb and Cr by bicubic (the eye resolves little colour
    detail; SRCNN does the same). RGBA: the alpha channel is resized by bicubic too. ``ensemble``:
    see :func:`upscale_y`."""
    from skimage.color import ycbcr2rgb
    scale = _model_scale(model)
    img = np.asarray(low_res, dtype=np.float32)
    if img.ndim == 2:
        y = upscale_y(model, rgb_to_y(img), device=device, ensemble=ensemble)
        return np.clip((y * 255.0 - 16.0) / 219.0, 0.0, 1.0)  # back from Y's studio range
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"upscale_image: expected H x W, H x W x 3 or H x W x 4, got shape {img.shape}")
    shape = (img.shape[0] * scale, img.shape[1] * scale)
    ycc = _ycbcr(img[..., :3])
    y = upscale_y(model, ycc[..., 0], device=device, ensemble=ensemble)
    chroma = bicubic_resize(ycc[..., 1:], shape)
    rgb = np.clip(ycbcr2rgb(np.concatenate([y[..., None], chroma], axis=-1) * 255.0), 0.0, 1.0).astype(np.float32)
    if img.shape[2] == 4:
        rgb = np.concatenate([rgb, bicubic_resize(img[..., 3:], shape)], axis=-1)
    return rgb


def evaluate(model: nn.Module, names: Sequence[str] = TEST_SOURCES, crop: Optional[int] = None,
             device="cpu", ensemble: bool = False) -> dict:
    """PSNR and SSIM of ``model`` and of bicubic on the held-out images (whole, or a centred
    ``crop`` x ``crop`` high-res window of each: the quick demo); ``names=VALIDATION_SOURCES``
    (or ``"validation"``) measures on the validation images instead, for choosing a configuration. Returns per-image rows and
    their means: {"images": [{name, psnr, ssim, bicubic_psnr, bicubic_ssim}], "psnr", "ssim",
    "bicubic_psnr", "bicubic_ssim", "gain" (PSNR dB over bicubic), "scale", "seconds"}."""
    scale = _model_scale(model)
    if isinstance(names, str):
        names = {"test": TEST_SOURCES, "validation": VALIDATION_SOURCES}.get(names, (names,))
    t0 = time.perf_counter()
    rows = []
    for name, image in whole_images(names):
        y = rgb_to_y(image)
        if crop is not None:
            top, left = max(0, (y.shape[0] - crop) // 2), max(0, (y.shape[1] - crop) // 2)
            y = y[top:top + crop, left:left + crop]
        hr, lr, bic = degrade(y, scale)
        sr = upscale_y(model, lr, device=device, ensemble=ensemble)
        rows.append({"name": name, "psnr": psnr(sr, hr, scale), "ssim": ssim(sr, hr, scale),
                     "bicubic_psnr": psnr(bic, hr, scale), "bicubic_ssim": ssim(bic, hr, scale)})
    means = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")}
    return {"images": rows, **means, "gain": means["psnr"] - means["bicubic_psnr"], "scale": scale,
            "seconds": time.perf_counter() - t0}


# ---- training -------------------------------------------------------------------------------

_LOSSES = {"mse": nn.functional.mse_loss, "l1": nn.functional.l1_loss}


def _loss(loss: Union[str, Callable]) -> Callable:
    if callable(loss):
        return loss
    if loss not in _LOSSES:
        raise ValueError(f"super-resolution loss must be one of {sorted(_LOSSES)}, got {loss!r}")
    return _LOSSES[loss]


@torch.no_grad()
def evaluate_patches(model: nn.Module, data, loss="mse", batch_size: int = 256, device="cpu") -> dict:
    """Mean loss and the PSNR (dB, peak 1) of the mean squared error over a patch dataset
    (input, high-res target); no border crop, patches are small. The model's mode is kept."""
    loss_fn = _loss(loss)
    was_training = model.training
    model.eval()
    total, sq, count, pixels = 0.0, 0.0, 0, 0
    try:
        x_all, y_all = data.tensors
        for b in torch.arange(len(data)).split(batch_size):
            x, y = x_all[b].to(device), y_all[b].to(device)
            pred = model(x)
            total += float(loss_fn(pred, y)) * len(b)
            sq += float(((pred.clamp(0, 1) - y) ** 2).sum())
            count, pixels = count + len(b), pixels + y.numel()
    finally:
        model.train(was_training)
    mse = sq / max(1, pixels)
    return {"loss": total / max(1, count), "psnr": 10 * math.log10(1.0 / mse) if mse > 0 else math.inf,
            "num_samples": count}


def fit(model: nn.Module, splits, *, epochs: int = 20, batch_size: int = 32, optimizer="adam", lr: float = 1e-3,
        weight_decay: float = 0.0, schedule: Optional[str] = "cosine", warmup_steps: int = 0,
        loss: Union[str, Callable] = "mse", augment: bool = True, device="cpu", out: Optional[str] = None,
        resume: bool = True, config: Optional[dict] = None, seed: int = 0, progress: bool = True,
        max_steps: Optional[int] = None, max_seconds: Optional[float] = None,
        on_epoch: Optional[Callable[[dict], None]] = None):
    """Trains an upscaler on ``splits`` (``pycnn.data.get("super_resolution", ...)``, whose input kind
    must be the model's) and returns a ``pycnn.train.History`` with per-epoch train loss, val loss
    and val PSNR.

    The loop is pycnn.train.fit's (the same optimizers, schedules, seeded shuffling and
    checkpoint files: ``out/last.pt`` every epoch, ``out/best.pt`` on a better validation PSNR,
    resumed from ``last.pt`` when ``resume``), with a regression loss (``"mse"`` or ``"l1"``) in
    place of classification. augment: each batch is flipped and transposed at random (the 8
    symmetries of the square, the same on input and target). ``max_seconds`` ends training after
    the epoch that passes it (the demo's time budget); the cosine schedule still spans ``epochs``.
    """
    import pycnn.train as T
    scale = _model_scale(model)
    info = getattr(splits, "info", {}) or {}
    if info.get("scale", scale) != scale:
        raise ValueError(f"fit: the model upscales x{scale} but the data is x{info['scale']}")
    if info.get("input", model.input_kind) != model.input_kind:
        raise ValueError(f"fit: {type(model).__name__} takes {model.input_kind!r} input but the data holds "
                         f"{info['input']!r} (pycnn.data.get('super_resolution', input={model.input_kind!r}))")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"fit: epochs and batch_size must be at least 1, got {epochs}, {batch_size}")
    loss_fn = _loss(loss)
    device = torch.device(device)
    train, val = splits.train, splits.val
    torch.manual_seed(seed)
    model.to(device)
    opt = T._make_optimizer(optimizer, [p for p in model.parameters() if p.requires_grad], lr, 0.9, weight_decay)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    sched = T._make_schedule(schedule, opt, epochs * steps_per_epoch, warmup_steps)
    history, start_epoch, step, best = T.History(), 0, 0, -math.inf
    last_path = os.path.join(out, "last.pt") if out else None
    if last_path and resume and os.path.exists(last_path):
        state = T.load_checkpoint(last_path, map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        history = T.History.from_dict(state.get("history", {}))
        best = float(state.get("best", -math.inf))
        if "rng" in state:
            torch.set_rng_state(state["rng"].cpu())
    x_all, y_all = train.tensors
    t_start = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        if max_steps is not None and step >= max_steps:
            break
        t0 = time.perf_counter()
        model.train()
        batches = list(T._epoch_indices(len(train), epoch, seed, 0, 1).split(batch_size))
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(batches), desc=f"epoch {epoch + 1}/{epochs}", unit="batch", dynamic_ncols=True)
        loss_sum, seen, done = 0.0, 0, 0
        for b in batches:
            if max_steps is not None and step >= max_steps:
                break
            x, y = x_all[b], y_all[b]
            if augment:
                x, y = _random_symmetry(x, y)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            batch_loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            opt.step()
            sched.step()
            step, done = step + 1, done + 1
            value = float(batch_loss.detach())
            history.steps.append(value)
            loss_sum, seen = loss_sum + value * len(b), seen + len(b)
            if bar is not None:
                bar.set_postfix({"loss": f"{loss_sum / seen:.5f}"})
                bar.update(1)
        record = {"epoch": epoch + 1, "step": step, "lr": opt.param_groups[0]["lr"],
                  "train_loss": loss_sum / max(1, seen)}
        if val is not None and len(val):
            v = evaluate_patches(model, val, loss_fn, device=device)
            record.update({"val_loss": v["loss"], "val_psnr": v["psnr"]})
        record["seconds"] = time.perf_counter() - t0
        history.epochs.append(record)
        if bar is not None:
            bar.set_postfix({k: f"{record[k]:.5f}" if k.endswith("loss") else f"{record[k]:.2f}"
                             for k in ("train_loss", "val_loss", "val_psnr") if k in record})
            bar.close()
        score = record.get("val_psnr", -record["train_loss"])
        improved, best = score > best, max(best, score)
        if out and done == len(batches):
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "epoch": epoch + 1, "step": step, "history": history.to_dict(), "best": best,
                     "metrics": record, "task": "super_resolution", "config": dict(config or {}),
                     "rng": torch.get_rng_state()}
            T.save_checkpoint(last_path, state)
            if improved:
                T.save_checkpoint(os.path.join(out, "best.pt"), state)
        if on_epoch is not None:
            on_epoch(record)
        if max_seconds is not None and time.perf_counter() - t_start >= max_seconds:
            break
    return history


def _random_symmetry(x: Tensor, y: Tensor):
    """One of the 8 flips/transposes of the square, drawn per batch (torch's global generator) and
    applied to input and target alike: all are exact for scale-aligned patches."""
    k = int(torch.randint(0, 8, ()))
    if k & 1:
        x, y = x.flip(-1), y.flip(-1)
    if k & 2:
        x, y = x.flip(-2), y.flip(-2)
    if k & 4:
        x, y = x.transpose(-1, -2), y.transpose(-1, -2)
    return x.contiguous(), y.contiguous()
