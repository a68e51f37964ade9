"""The demo report's "Restoration: super-resolution" section: trains the demo's upscalers, measures
them on the held-out images against bicubic, and shows crops.

Full demo: ESPCN (ReLU, one more 3x3 layer) at x2, x3, x4 (``DEMO_RUNS``), 2500 /
2500 / 2000 steps of 16 patches, all chosen on the validation images, scored in one pass and with
the self-ensemble: about 250 s of one core's CPU time of training in all (measured on a shared
core, 2026-11-30).
Quick demo: 30 steps of SRCNN x2 on a few small images, measured on a centred 128 x 128 window of
each held-out image (about 13 s of CPU time measured on the loaded machine, data and metrics
included).
"""
from __future__ import annotations

import html
import time

import numpy as np
import torch

# Which model per scale, and how long: chosen by measurement (README, "Super-resolution").
DEMO_RUNS = {
    # Chosen on the validation images (flower, rocket; pycnn.data.superres.VALIDATION_SOURCES), never
    # on the test images: scripts/superres_select.py, README "Choosing on validation images".
    # ESPCN on the default sources (photographs + grass, brick, coins) at every scale, batches of
    # 16, epochs of 500 steps, Adam lr 2e-3 with a cosine schedule; x2 and x4 with ReLU and one
    # more 3x3 layer (mid_layers=1: validation +1.80 vs +1.54 dB at x2, +0.75 vs +0.70 at x4); x3
    # too, at lr 1e-3 (at 2e-3 one of two seeds ended at +0.50 dB: +1.13 mean of two seeds vs +0.92
    # without the layer). lr 1e-3 at x2 too (+1.89 vs +1.80, two seeds each), not at x4 (+0.69 vs
    # +0.75). Scored in one pass and with the self-ensemble (8 passes at test time).
    "full": [dict(model="espcn", scale=scale, epochs=epochs, n_train=8000, lr=lr, batch_size=16,
                  model_options={"activation": "relu", "mid_layers": 1}, ensemble=True)
             for scale, epochs, lr in ((2, 5, 1e-3), (3, 5, 1e-3), (4, 4, 2e-3))],
    # SRCNN starts exactly at its bicubic input (identity skip, last layer near zero), so a few
    # dozen steps cannot fall below bicubic (all three residual models now start there; SRCNN
    # works on the full-size image, which suits the quick demo's small crops).
    "quick": [dict(model="srcnn", scale=2, epochs=1, n_train=480, n_val=100, lr=1e-3, batch_size=16, crop=128,
                   sources=("brick", "grass", "coins", "page", "text", "cell"))],
}
# A detailed window of a held-out image for the figure: (image, top, left, size) in high-res pixels.
FIGURE_CROP = ("chelsea", 84, 150, 96)


def run(spec: dict, device="cpu", progress: bool = False, seed: int = 0) -> dict:
    """Trains one demo upscaler and evaluates it; returns model, history, metrics and seconds."""
    import pycnn.data as D
    import pycnn.models as M
    import pycnn.superres as SR
    torch.manual_seed(seed)
    model = M.get(spec["model"], scale=spec["scale"], **spec.get("model_options", {}))
    data_kwargs = {"scale": spec["scale"], "n_train": spec["n_train"], "n_val": spec.get("n_val", 500),
                   "input": model.input_kind, "seed": seed}
    if "sources" in spec:
        data_kwargs["sources"] = spec["sources"]
    if spec.get("crop"):  # measured on crops: the tiled test split would go unused
        data_kwargs["test_split"] = False
    splits = D.get("super_resolution", **data_kwargs)
    print(f"[demo] {spec['model']} x{spec['scale']} on {splits.sizes()} super-resolution patches, "
          f"{spec['epochs']} epochs")
    t0, c0 = time.perf_counter(), time.process_time()
    history = SR.fit(model, splits, epochs=spec["epochs"], batch_size=spec["batch_size"], lr=spec["lr"],
                     device=device, progress=progress, seed=seed)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    model = model.cpu().eval()
    one_pass = SR.evaluate(model, crop=spec.get("crop"))
    metrics = SR.evaluate(model, crop=spec.get("crop"), ensemble=True) if spec.get("ensemble") else one_pass
    print(f"[demo] {spec['model']} x{spec['scale']}: PSNR {metrics['psnr']:.2f} dB vs bicubic "
          f"{metrics['bicubic_psnr']:.2f} ({metrics['gain']:+.2f} dB; one pass {one_pass['gain']:+.2f}), "
          f"trained in {seconds:.0f} s")
    return {"spec": spec, "model": model, "history": history, "metrics": metrics, "one_pass": one_pass,
            "seconds": seconds, "cpu_seconds": cpu_seconds}


def crops(model, name: str, top: int, left: int, size: int, ensemble: bool = False) -> dict:
    """Colour crops of one held-out image: low-res (pixels repeated), bicubic, the model, truth, and
    PSNR-Y of the last three against the truth. Y through the metric's protocol; Cb, Cr by bicubic."""
    from skimage.color import rgb2ycbcr, ycbcr2rgb
    import pycnn.superres as SR
    from pycnn.data.superres import degrade, load_image
    s = model.scale
    rgb = load_image(name)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    ycc = rgb2ycbcr(rgb) / 255.0
    planes = [degrade(ycc[..., c], s) for c in range(3)]  # (hr, lr, bicubic) per channel
    top, left, size = top - top % s, left - left % s, size - size % s
    hr_win = (slice(top, top + size), slice(left, left + size))
    # The model on a low-res window with a margin wider than its reach gives the whole image's pixels.
    m = 12
    lt, ll = max(0, top // s - m), max(0, left // s - m)
    lr_y = planes[0][1]
    piece = lr_y[lt:top // s + size // s + m, ll:left // s + size // s + m]
    ours_y = SR.upscale_y(model, piece, ensemble=ensemble)[(top // s - lt) * s:(top // s - lt) * s + size,
                                        (left // s - ll) * s:(left // s - ll) * s + size]
    lr_rep = np.kron(lr_y[top // s:(top + size) // s, left // s:(left + size) // s], np.ones((s, s), np.float32))
    truth_y, bic_y = planes[0][0][hr_win], planes[0][2][hr_win]
    chroma = [p[2][hr_win] for p in planes[1:]]

    def colour(y):
        return np.clip(ycbcr2rgb(np.stack([y, *chroma], axis=-1) * 255.0), 0, 1)

    lr_chroma = [np.kron(p[1][top // s:(top + size) // s, left // s:(left + size) // s], np.ones((s, s)))
                 for p in planes[1:]]
    low = np.clip(ycbcr2rgb(np.stack([lr_rep, *lr_chroma], axis=-1) * 255.0), 0, 1)
    return {"low-res": (low, None), "bicubic": (colour(bic_y), SR.psnr(bic_y, truth_y)),
            "ours": (colour(ours_y), SR.psnr(ours_y, truth_y)), "truth": (colour(planes[0][0][hr_win]), None),
            "name": name}


def plot_crops(rows: list):
    """One row per scale: low-res / bicubic / ours / truth with PSNR-Y on each upscaled crop."""
    from pycnn.report import require_matplotlib
    plt = require_matplotlib()
    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 2.7 * len(rows)), squeeze=False)
    for i, (label, model_name, c) in enumerate(rows):
        for j, key in enumerate(("low-res", "bicubic", "ours", "truth")):
            img, value = c[key]
            ax = axes[i, j]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            title = {"ours": model_name, "low-res": f"low-res ({label})"}.get(key, key)
            ax.set_title(title + (f"\n{value:.2f} dB" if value is not None else "\n "), fontsize=9)
    fig.suptitle(f"held-out image '{rows[0][2]['name']}' (PSNR on Y of the crop)")
    fig.tight_layout()
    return fig


def section(results: dict, report):
    """The report section (a pycnn.report.Section); trains its own models."""
    from pycnn.report import Section
    quick = bool(results.get("quick"))
    device = results.get("device", "cpu")
    runs = [run(spec, device=device) for spec in DEMO_RUNS["quick" if quick else "full"]]
    results["super_resolution"] = runs  # for anyone building on the demo's results
    rows = "".join(
        f"<tr><td>x{r['spec']['scale']}</td><td>{html.escape(r['spec']['model'])}</td>"
        f"<td class='num'>{r['metrics']['psnr']:.2f}</td><td class='num'>{r['metrics']['bicubic_psnr']:.2f}</td>"
        f"<td class='num'>{r['one_pass']['gain']:+.2f}</td>"
        f"<td class='num'>{r['metrics']['gain']:+.2f}</td><td class='num'>{r['metrics']['ssim']:.4f}</td>"
        f"<td class='num'>{r['metrics']['bicubic_ssim']:.4f}</td><td class='num'>{r['seconds']:.0f}</td></tr>"
        for r in runs)
    ens = any(r["spec"].get("ensemble") for r in runs)
    table = ("<table><tr><th>scale</th><th>model</th><th>PSNR-Y (dB)</th><th>bicubic</th><th>gain, one pass</th>"
             f"<th>gain{', self-ensemble' if ens else ''}</th>"
             "<th>SSIM-Y</th><th>bicubic</th><th>training s</th></tr>" + rows + "</table>")
    per_image = "".join(
        f"<tr><td>x{r['spec']['scale']}</td><td>{html.escape(i['name'])}</td><td class='num'>{i['psnr']:.2f}</td>"
        f"<td class='num'>{i['bicubic_psnr']:.2f}</td><td class='num'>{i['psnr'] - i['bicubic_psnr']:+.2f}</td>"
        f"<td class='num'>{i['ssim']:.4f}</td><td class='num'>{i['bicubic_ssim']:.4f}</td></tr>"
        for r in runs for i in r["metrics"]["images"])
    per_image = ("<details><summary>per image</summary><table><tr><th>scale</th><th>image</th><th>PSNR-Y</th>"
                 "<th>bicubic</th><th>gain</th><th>SSIM-Y</th><th>bicubic</th></tr>" + per_image + "</table></details>")
    where = ("a centred 128&times;128 window of each" if quick else "the whole")
    scales = " and ".join(f"{r['spec']['scale']}" for r in runs)
    text = (f"<p>Upscaling by {scales}: the network sees the low-resolution luma (Y, BT.601) and "
            f"predicts the high-resolution one. Training patches come from photographs bundled with "
            f"scikit-learn, matplotlib and scikit-image and a few of scikit-image's textures; the configuration was "
            f"chosen on two validation photographs (flower, rocket), never on the test images; the scores are on {where} held-out image "
            f"({', '.join(i['name'] for i in runs[0]['metrics']['images'])}), "
            f"never seen in training. Low-resolution images are made by one bicubic downscale with "
            f"anti-aliasing (bicubic as MATLAB's <code>imresize</code> does it: Keys' kernel, a = -0.5, "
            f"stretched by the scale when shrinking), and the baseline upscales them back the same way. PSNR and SSIM on Y, with <i>scale</i> pixels cropped from each "
            f"border."
            + (" Ours is the mean of the network's upscalings of the 8 flips/transposes of the input "
               "(self-ensemble), each turned back." if any(r["spec"].get("ensemble") for r in runs) else "")
            + "</p>")
    name, top, left, size = FIGURE_CROP
    fig_rows = [(f"x{r['spec']['scale']}", r["spec"]["model"],
                 crops(r["model"], name, top, left, size, ensemble=r["spec"].get("ensemble", False))) for r in runs]
    figs = [report.figure(plot_crops(fig_rows), "superres_crops.png",
                          "Low-res input (pixels repeated) / bicubic / ours / truth, with PSNR-Y of the crop")]
    return Section("Restoration: super-resolution", text + table + per_image, figs)
