"""A static HTML report: a folder with ``index.html`` and its figures as PNG files beside it.

    report = Report("runs/demo", "pycnn demo")
    report.add(Section("Digits", html=metrics_table({...}), figures=[report.figure(fig, "curves.png")]))
    report.write()    # -> runs/demo/index.html, opens in any browser, no scripts, no network

The demo builds its report from the section builders in ``DEMO_SECTIONS``, called in order with
the demo's results; other parts of pycnn (e.g. visualisation) add theirs with
``register_demo_section``. Figures use matplotlib's Agg backend (no display needed).
"""
from __future__ import annotations

import datetime
import html
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch

__all__ = ["Report", "Section", "Figure", "metrics_table", "plot_training_curves", "plot_confusion_matrix",
           "plot_segmentations", "per_class_text", "per_class_table", "confusion_text", "DEMO_SECTIONS", "register_demo_section",
           "require_matplotlib"]


def require_matplotlib():
    """matplotlib.pyplot on the Agg backend, or an ImportError saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the report needs matplotlib: pip install 'pycnn[viz]'") from None
    matplotlib.use("Agg")  # files only; never open a window or need a display
    import matplotlib.pyplot as plt
    return plt


@dataclass
class Figure:
    path: str        # file name relative to the report folder
    caption: str = ""


@dataclass
class Section:
    """One part of the report: a title, an HTML body (already escaped) and figures."""
    title: str
    html: str = ""
    figures: List[Figure] = field(default_factory=list)


class Report:
    def __init__(self, out_dir: str, title: str = "pycnn report"):
        self.out_dir = out_dir
        self.title = title
        self.sections: List[Section] = []
        os.makedirs(out_dir, exist_ok=True)

    def add(self, section: Section) -> Section:
        self.sections.append(section)
        return section

    def figure(self, fig, name: str, caption: str = "", dpi: int = 110) -> Figure:
        """Saves a matplotlib figure as ``name`` (a PNG) in the report folder and closes it."""
        if os.path.basename(name) != name or not name.endswith(".png"):
            raise ValueError(f"Report.figure: name must be a plain file name ending in .png, got {name!r}")
        plt = require_matplotlib()
        fig.savefig(os.path.join(self.out_dir, name), dpi=dpi, bbox_inches="tight")
        plt.close(fig)
        return Figure(name, caption)

    def write(self) -> str:
        """Writes index.html (atomically) and returns its path."""
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        toc = "".join(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(self.sections))
        body = []
        for i, s in enumerate(self.sections):
            figs = "".join(
                f'<figure><img src="{html.escape(f.path)}" alt="{html.escape(f.caption or f.path)}">'
                f"<figcaption>{html.escape(f.caption)}</figcaption></figure>" for f in s.figures)
            body.append(f'<section id="s{i}"><h2>{html.escape(s.title)}</h2>{s.html}'
                        f'<div class="figs">{figs}</div></section>')
        page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(self.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
h1 {{ margin-bottom: 0.2em; }} .meta {{ color: #666; }}
section {{ border-top: 1px solid #ddd; margin-top: 2em; padding-top: 0.5em; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; }}
th {{ background: #f4f4f4; }} td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.figs {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; }} figure img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption {{ color: #555; font-size: 0.9em; }}
code {{ background: #f4f4f4; padding: 0 0.2em; }}
</style></head><body>
<h1>{html.escape(self.title)}</h1>
<p class="meta">Generated {stamp} by pycnn.</p>
<ul>{toc}</ul>
{''.join(body)}
</body></html>
"""
        path = os.path.join(self.out_dir, "index.html")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, path)
        return path


# ---- building blocks ------------------------------------------------------------------------

def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return str(v)


def metrics_table(rows: dict, header: Tuple[str, str] = ("metric", "value")) -> str:
    """An HTML table of name -> value (floats to 4 decimals)."""
    cells = "".join(f'<tr><td>{html.escape(str(k))}</td><td class="num">{html.escape(_fmt(v))}</td></tr>'
                    for k, v in rows.items())
    return (f"<table><tr><th>{html.escape(header[0])}</th><th>{html.escape(header[1])}</th></tr>"
            f"{cells}</table>")


def plot_training_curves(history, title: str = "", metric: str = "accuracy"):
    """Per-step training loss (and its epoch means), validation loss, and the metric per epoch."""
    plt = require_matplotlib()
    steps, epochs = history.steps, history.epochs
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.6))
    if steps:
        ax_loss.plot(range(1, len(steps) + 1), steps, color="#9bbbd9", lw=0.8, label="train (per step)")
    ends = [e["step"] for e in epochs]
    ax_loss.plot(ends, [e["train_loss"] for e in epochs], "o-", color="#1f77b4", label="train (epoch mean)")
    if epochs and "val_loss" in epochs[0]:
        ax_loss.plot(ends, [e["val_loss"] for e in epochs], "s-", color="#d62728", label="validation")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.legend()
    ax_loss.set_title(f"{title} loss".strip())
    x = [e["epoch"] for e in epochs]
    for key, style, label in ((f"train_{metric}", "o-", "train"), (f"val_{metric}", "s-", "validation")):
        if epochs and key in epochs[0]:
            ax_metric.plot(x, [e[key] for e in epochs], style, label=label)
    ax_metric.set_xlabel("epoch")
    ax_metric.set_ylabel(metric)
    ax_metric.legend()
    ax_metric.grid(alpha=0.3)
    ax_metric.set_title(f"{title} {metric}".strip())
    fig.tight_layout()
    return fig


# ---- the same numbers as text (``pycnn evaluate``) -------------------------------------------

def _names(classes: Sequence, k: int) -> List[str]:
    names = [str(c) for c in classes] if classes is not None and len(classes) == k else []
    return names or [str(i) for i in range(k)]


def per_class_text(confusion: torch.Tensor, classes: Sequence[str], unit: str = "images") -> str:
    """Precision, recall, F1 and support per class, then their macro average (each class
    counts once) and the support-weighted average: a plain-text table."""
    from pycnn.train import per_class_scores
    s = per_class_scores(confusion)
    k = confusion.shape[0]
    names = _names(classes, k)
    w = max(12, *(len(n) for n in names))
    lines = [f"{'class':<{w}}  precision  recall      f1  {unit:>7}"]
    for i, n in enumerate(names):
        lines.append(f"{n:<{w}}  {float(s['precision'][i]):9.4f}  {float(s['recall'][i]):6.4f}  "
                     f"{float(s['f1'][i]):6.4f}  {int(s['support'][i]):7d}")
    total = int(s["support"].sum())
    weights = s["support"].double() / max(1, total)
    averages = (("macro avg", lambda t: float(t.mean())), ("weighted avg", lambda t: float((t * weights).sum())))
    for label, avg in averages:
        lines.append(f"{label:<{w}}  {avg(s['precision']):9.4f}  {avg(s['recall']):6.4f}  {avg(s['f1']):6.4f}  "
                     f"{total:7d}")
    return "\n".join(lines)


def per_class_table(confusion: torch.Tensor, classes: Sequence[str]) -> str:
    """``per_class_text`` as an HTML table."""
    from pycnn.train import per_class_scores
    s = per_class_scores(confusion)
    names = _names(classes, confusion.shape[0])
    head = "".join(f"<th>{h}</th>" for h in ("class", "precision", "recall", "F1", "support"))
    rows = "".join(f"<tr><td>{html.escape(n)}</td>" + "".join(f'<td class="num">{float(s[k][i]):.4f}</td>'
                                                               for k in ("precision", "recall", "f1"))
                   + f'<td class="num">{int(s["support"][i])}</td></tr>' for i, n in enumerate(names))
    return f"<table><tr>{head}</tr>{rows}</table>"


def confusion_text(confusion: torch.Tensor, classes: Sequence[str], column_width: int = 10) -> str:
    """The confusion matrix with class names on both axes (rows: true class, columns: predicted;
    column headings cut to ``column_width`` characters)."""
    k = confusion.shape[0]
    names = _names(classes, k)
    cm = confusion.long().tolist()
    corner = "true \\ predicted"
    w = max(len(n) for n in names + [corner])
    cw = max(min(column_width, max(len(n) for n in names)), len(str(max(max(r) for r in cm))), 3)
    head = f"{corner:<{w}}" + "".join(f" {n[:cw]:>{cw}}" for n in names)
    rows = [f"{n:<{w}}" + "".join(f" {v:>{cw}d}" for v in r) for n, r in zip(names, cm)]
    return "\n".join(["confusion matrix (rows: true class, columns: predicted class)", head, *rows])


def plot_confusion_matrix(confusion: torch.Tensor, classes: Sequence[str], title: str = "confusion matrix"):
    """Counts with row = true class, column = predicted class."""
    plt = require_matplotlib()
    cm = confusion.cpu().numpy()
    k = len(classes)
    fig, ax = plt.subplots(figsize=(0.45 * k + 2.5, 0.45 * k + 2))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), classes)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = cm.max() if cm.size else 0
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > top / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def plot_segmentations(images: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor, n: int = 6,
                       title: str = "example segmentations"):
    """Rows: input, true mask, predicted mask, errors (red = missed, blue = false alarm)."""
    plt = require_matplotlib()
    n = min(n, len(images))
    fig, axes = plt.subplots(4, n, figsize=(1.8 * n, 7.4), squeeze=False)
    labels = ("input", "truth", "prediction", "errors")
    for j in range(n):
        img = images[j, 0].cpu().numpy()
        t, p = truth[j].cpu().numpy() > 0, pred[j].cpu().numpy() > 0
        err = torch.zeros(*t.shape, 3).numpy() + 1.0
        err[t & ~p] = (0.85, 0.1, 0.1)
        err[~t & p] = (0.1, 0.3, 0.9)
        for i, shown in enumerate((img, t, p, err)):
            ax = axes[i, j]
            ax.imshow(shown, cmap="gray" if i < 3 else None, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(labels[i])
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---- the demo's sections --------------------------------------------------------------------

# Each builder: fn(results: dict, report: Report) -> Section | list of Section | None.
# ``results`` holds the demo's runs by name ("digits", "galaxies"), each a dict with the keys
# model, splits, history, metrics (test), seconds, config; plus "quick" and "device".
DEMO_SECTIONS: List[Callable[[dict, Report], Optional[object]]] = []


def register_demo_section(builder: Callable[[dict, Report], Optional[object]]):
    """Adds a section builder to the demo report (usable as a decorator)."""
    DEMO_SECTIONS.append(builder)
    return builder


def build_sections(results: dict, report: Report) -> Report:
    for builder in DEMO_SECTIONS:
        made = builder(results, report)
        for section in (made if isinstance(made, (list, tuple)) else [made]):
            if section is not None:
                report.add(section)
    return report


@register_demo_section
def _summary_section(results: dict, report: Report):
    rows = {}
    if "digits" in results:
        r = results["digits"]
        rows["digits: lenet5 test accuracy"] = r["metrics"]["accuracy"]
        rows["digits: training seconds"] = round(r["seconds"], 1)
    if "galaxies" in results:
        r = results["galaxies"]
        rows["galaxies: unet test IoU"] = r["metrics"]["iou"]
        rows["galaxies: unet test Dice"] = r["metrics"]["dice"]
        rows["galaxies: training seconds"] = round(r["seconds"], 1)
    mode = "quick" if results.get("quick") else "full"
    intro = (f"<p>Both models are built from pycnn layers and trained with pycnn's kernels "
             f"(device <code>{html.escape(str(results.get('device', 'cpu')))}</code>, {mode} demo, "
             f"{torch.get_num_threads()} threads). Scores are on held-out test splits.</p>")
    return Section("Summary", intro + metrics_table(rows))


@register_demo_section
def _digits_section(results: dict, report: Report):
    if "digits" not in results:
        return None
    r = results["digits"]
    cfg = r["config"]
    text = (f"<p>LeNet-5 on scikit-learn's handwritten digits (8&times;8, upsampled to "
            f"{cfg['image_size']}&times;{cfg['image_size']}), {r['sizes']['train']} training images, "
            f"{cfg['epochs']} epochs of {html.escape(cfg['optimizer'])} (lr {cfg['lr']}, batch {cfg['batch_size']}, "
            f"cosine schedule).</p>")
    figs = [report.figure(plot_training_curves(r["history"], "digits"), "digits_curves.png", "Training curves"),
            report.figure(plot_confusion_matrix(r["metrics"]["confusion"], r["splits"].classes,
                                                "digits test confusion"),
                          "digits_confusion.png", "Confusion matrix on the test split")]
    table = metrics_table({"test accuracy": r["metrics"]["accuracy"], "test loss": r["metrics"]["loss"],
                           "test images": r["metrics"]["num_samples"]})
    per_class = "<p>Per class, on the test split:</p>" + per_class_table(r["metrics"]["confusion"],
                                                                         r["splits"].classes)
    return Section("Digits classifier (LeNet-5)", text + table + per_class, figs)


@register_demo_section
def _galaxies_section(results: dict, report: Report):
    if "galaxies" not in results:
        return None
    from pycnn.train import predict
    r = results["galaxies"]
    cfg = r["config"]
    images, masks = r["splits"].test.tensors
    n = min(8, len(images))
    pred = predict(r["model"], images[:n]).argmax(1)
    text = (f"<p>U-Net (depth {cfg['depth']}, width {cfg['width']}) separating blended galaxy pairs cut from "
            f"the Hubble eXtreme Deep Field from the sky: per-pixel galaxy / background. "
            f"{r['sizes']['train']} training images of {images.shape[-1]}&times;{images.shape[-2]}, "
            f"{cfg['epochs']} epochs.</p>")
    figs = [report.figure(plot_training_curves(r["history"], "galaxies", metric="iou"), "galaxies_curves.png",
                          "Training curves (IoU of the galaxy class)"),
            report.figure(plot_segmentations(images[:n], masks[:n, 0], pred, n, "test-split segmentations"),
                          "galaxies_examples.png", "Test images, true and predicted masks")]
    table = metrics_table({"test IoU": r["metrics"]["iou"], "test Dice": r["metrics"]["dice"],
                           "pixel accuracy": r["metrics"]["accuracy"], "test images": r["metrics"]["num_samples"]})
    return Section("Galaxy segmentation (U-Net)", text + table, figs)


@register_demo_section
def _detection_section(results: dict, report: Report):
    """Mask R-CNN against the watershed baseline on blended galaxies (pycnn.detection)."""
    if "detection" not in results:
        return None
    from pycnn.detection import demo_section
    return demo_section(results["detection"], report)


@register_demo_section
def _viz_section(results: dict, report: Report):
    """Every pycnn.viz method and the convolution matrix, run on the trained digits classifier."""
    if "digits" not in results:
        return None
    from pycnn.viz.report_section import add_viz_section
    r = results["digits"]
    images, labels = r["splits"].test.tensors
    fragment = add_viz_section(report.out_dir, r["model"], images[:200], labels[:200],
                               class_names=[str(c) for c in r["splits"].classes], quick=bool(results.get("quick")),
                               heading=False)
    return Section("Seeing inside the CNN (LeNet-5 on digits)", fragment)


@register_demo_section
def _super_resolution_section(results: dict, report: Report):
    """Trains the demo's upscalers (x2, x3, x4; x2 only when quick) and compares them with bicubic."""
    from pycnn.superres.report_section import section
    return section(results, report)


@register_demo_section
def _inpainting_section(results: dict, report: Report):
    """Trains its own model (pycnn.restoration.demo): the partial-convolution U-Net against biharmonic."""
    from pycnn.restoration.demo import section
    return section(results, report)
