"""The demo report's "Restoration: inpainting" section: trains pconv_unet (the quick recipe in
``pycnn demo --quick``, the full one otherwise), then shows masked / biharmonic / ours / truth on
held-out images with the metric table by hole size."""
from __future__ import annotations

import html
import time

import torch

QUICK_DATA = {"train_patches": 64, "test_per_image": 1, "mask_bank": 2, "sources": ("moon",),
              "hole_fractions": (0.25, 0.5)}


def _table_html(table: dict) -> str:
    from pycnn.restoration.inpainting import METHODS
    cols = (("hole_psnr", "hole PSNR (dB)", "{:.2f}"), ("hole_l1", "hole L1", "{:.4f}"),
            ("psnr", "PSNR (dB)", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"))
    names = [k for k, _ in METHODS if any(k in row for row in table.values())]
    label = {"ours": "ours", "fill": "fill alone", "biharmonic": "biharmonic"}
    head = "<tr><th>hole (of area)</th><th>images</th>" + "".join(
        "".join(f"<th>{html.escape(t) + ': ' if j == 0 else ''}{label[k]}</th>" for j, k in enumerate(names))
        for _, t, _ in cols) + "</tr>"
    rows = []
    for key, row in table.items():
        name = "all" if key == "all" else f"{100 * key:.0f}%"
        cells = "".join(f'<td class="num">{f.format(row[k][m]) if k in row else ""}</td>' for m, _, f in cols for k in names)
        rows.append(f"<tr><td>{name}</td><td class=\"num\">{row['count']}</td>{cells}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _examples_figure(images, masks, ours, base, n: int):
    from pycnn.report import require_matplotlib
    from pycnn.restoration.inpainting import image_metrics
    plt = require_matplotlib()
    fig, axes = plt.subplots(n, 4, figsize=(8, 2.1 * n), squeeze=False)
    for i in range(n):
        truth, hole = images[i, 0].numpy(), masks[i, 0].numpy() < 0.5
        masked = truth.copy()
        masked[hole] = 1.0
        panels = [("masked", masked, None), ("biharmonic", base[i, 0].numpy(), None), ("ours", ours[i, 0].numpy(), None),
                  ("truth", truth, None)]
        for j, (name, img, _) in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if name in ("biharmonic", "ours"):
                ax.set_title(f"{name}: hole {image_metrics(truth, img, hole)['hole_psnr']:.1f} dB", fontsize=8)
            else:
                ax.set_title(name if name != "masked" else f"masked ({100 * hole.mean():.0f}% hole)", fontsize=8)
    fig.tight_layout()
    return fig


def section(results: dict, report):
    import pycnn.data as D
    import pycnn.models as M
    from pycnn.report import Section
    from pycnn.restoration import inpainting as I
    quick = bool(results.get("quick"))
    recipe = I.RECIPES["quick" if quick else "full"]
    data_kwargs = dict(QUICK_DATA) if quick else dict(recipe["data_kwargs"])
    t0 = time.perf_counter()
    splits = D.get("inpainting", **data_kwargs)
    torch.manual_seed(0)
    model = M.get("pconv_unet", **recipe["model_kwargs"])
    print(f"[demo] pconv_unet on inpainting {splits.sizes()}, {recipe['epochs']} epochs")
    history = I.fit(model, splits, epochs=recipe["epochs"], batch_size=recipe["batch_size"], lr=recipe["lr"],
                    progress=False)
    table = I.evaluate(model, splits)
    images, masks = splits.test.tensors
    # one square and one stroke hole of the largest size from different held-out images
    fractions = splits.extra["test"]["hole_fraction"]
    big = torch.nonzero(fractions >= 0.25).flatten()
    picks = big[torch.linspace(0, len(big) - 1, min(4, len(big))).long()]
    ours = I.predict(model, images[picks], masks[picks])
    base = I.biharmonic(images[picks], masks[picks])
    fig = report.figure(_examples_figure(images[picks], masks[picks], ours, base, len(picks)), "inpainting_examples.png",
                        "Held-out images: masked (holes white), skimage's biharmonic inpainting, ours, truth")
    seconds = time.perf_counter() - t0
    text = (f"<p>A U-Net of partial convolutions (<code>pycnn.nn.PartialConv2d</code>, our native kernel) fills "
            f"holes in grey {splits.info['patch']}&times;{splits.info['patch']} patches, as a correction added to a "
            f"classical fill (<code>smooth_fill</code>: multigrid harmonic, then a few conjugate-gradient steps "
            f"towards the biharmonic fill) that it also sees as an input, in units of each image's known "
            f"pixels (mean and standard deviation). Trained on "
            f"{len(splits.train)} patches of pictures installed with scikit-image, scikit-learn and matplotlib "
            f"({', '.join(splits.info['sources'])}) with stroke and square holes, "
            f"{len(history['epochs'])} epochs ({history['seconds']:.0f} s); tested on patches of the held-out "
            f"{', '.join(splits.info['held_out'])} against <code>skimage.restoration.inpaint_biharmonic</code> on "
            f"the same images and masks; the table also scores the classical fill alone (<i>fill alone</i>), so "
            f"the network's own gain is the difference between <i>ours</i> and it. Metrics: PSNR and L1 inside the hole, PSNR and SSIM on the whole image "
            f"(known pixels pasted back), by hole size. Section built in {seconds:.0f} s"
            + (" (quick demo: a few seconds of training, not the trained model's quality; "
               "see README for the full recipe)." if quick else ".") + "</p>")
    return Section("Restoration: inpainting", text + _table_html(table), [fig])
