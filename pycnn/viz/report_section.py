"""The "Seeing inside the CNN" section of the ``pycnn demo`` report: every pycnn.viz method and the
convolution matrix of pycnn.explain, run on a trained model and a few of its test images.

    html = add_viz_section(report_dir, model, images, labels, class_names=names)

writes PNGs under ``report_dir/viz/`` and returns an HTML fragment referring to them by relative
path. A method that fails shows its error in the report (visible, not hidden) and the other
methods still run.
"""
from __future__ import annotations

import html
import os
import time
import traceback
from typing import Callable, List, Optional, Sequence

import torch
from torch import Tensor, nn

from pycnn import explain
from pycnn.viz import attribution as A
from pycnn.viz import features as Fe
from pycnn.viz import plot
from pycnn.viz import synthesis as S
from pycnn.viz._common import as_targets, class_label, class_scores, conv_like_layers, describe_layer

__all__ = ["add_viz_section"]


def _device(model: nn.Module):
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _grid_figure(rows: int, cols: int, cell: float = 1.6):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(cell * cols, cell * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def add_viz_section(report_dir: str, model: nn.Module, images: Tensor, labels=None, *,
                    class_names: Optional[Sequence[str]] = None, layer: Optional[str] = None,
                    style_image: Optional[Tensor] = None, tsne_images: Optional[Tensor] = None,
                    tsne_labels=None, max_examples: int = 4, quick: bool = False,
                    subdir: str = "viz", heading: bool = True) -> str:
    """Runs every visualisation on ``model`` and returns the report's HTML fragment.

    ``images`` [N, C, H, W] (and their ``labels``) are test examples: the first ``max_examples``
    are explained, all of them feed top patches and t-SNE (or ``tsne_images``/``tsne_labels``).
    ``layer`` is the layer for Grad-CAM, top patches and t-SNE (default: the last convolution).
    ``style_image`` is the style for style transfer (default: the last image). ``quick`` uses
    fewer optimisation steps (for tests and CPU-only demos). ``heading=False`` leaves out the
    fragment's own <h2> title (for reports that title their sections themselves).
    """
    fragment = _add_viz_section(report_dir, model, images, labels, class_names, layer, style_image, tsne_images,
                                tsne_labels, max_examples, quick, subdir)
    return fragment if heading else fragment.replace(HEADING, "", 1)


HEADING = "<h2>Seeing inside the CNN</h2>"


def _add_viz_section(report_dir, model, images, labels, class_names, layer, style_image, tsne_images, tsne_labels,
                     max_examples, quick, subdir) -> str:
    out_dir = os.path.join(report_dir, subdir)
    os.makedirs(out_dir, exist_ok=True)
    device = _device(model)
    images = images.detach().to(device)
    n = min(max_examples, images.shape[0])
    x = images[:n]
    convs = conv_like_layers(model)
    if not convs:
        return HEADING + "<p>The model has no convolution layer to look inside.</p>"
    cam_layer = layer or convs[-1]
    was_training = model.training
    model.eval()  # explanations of the trained model as it predicts; restored at the end
    try:
        return _sections(out_dir, subdir, model, images, labels, x, n, device, convs, cam_layer, class_names,
                         style_image, tsne_images, tsne_labels, quick)
    finally:
        model.train(was_training)


def _sections(out_dir, subdir, model, images, labels, x, n, device, convs, cam_layer, class_names, style_image,
              tsne_images, tsne_labels, quick) -> str:
    labels_t = None if labels is None else torch.as_tensor(labels).reshape(-1).to(device)
    with torch.no_grad():
        logits = model(x)
    segmentation = logits.dim() > 2
    predicted = as_targets("report", None, n, device, logits)
    confidence = torch.softmax(logits.reshape(n, logits.shape[1], -1).mean(-1).float(), 1)
    name = (lambda c: class_label(class_names, c))  # noqa: E731
    layer_text = (lambda lname: describe_layer(model, lname))  # noqa: E731
    cam_text = html.escape(layer_text(cam_layer))
    steps = (lambda full, small: small if quick else full)
    parts: List[str] = [HEADING]

    def section(title: str, note: str, filename: str, make: Callable):
        start = time.perf_counter()
        try:
            fig = make()
            plot.save(fig, os.path.join(out_dir, filename))
            seconds = time.perf_counter() - start
            parts.append(f"<h3>{html.escape(title)}</h3><p>{note} <small>({seconds:.1f} s)</small></p>"
                         f'<img src="{subdir}/{filename}" alt="{html.escape(title)}" style="max-width:100%">')
        except Exception as e:  # shown in the report, never swallowed silently
            detail = html.escape("".join(traceback.format_exception_only(type(e), e)).strip())
            parts.append(f"<h3>{html.escape(title)}</h3><p style='color:#b00'>failed: {detail}</p>")

    # -- attribution ---------------------------------------------------------------------------
    def attributions():
        maps = [
            ("saliency", A.saliency(model, x, predicted)),
            ("deconvnet", A.deconvnet(model, x, predicted)),
            ("guided backprop", A.guided_backprop(model, x, predicted)),
            ("integrated grad.", A.integrated_gradients(model, x, predicted, n_steps=steps(50, 16),
                                                        internal_batch_size=64)),
            (f"Grad-CAM {layer_text(cam_layer).split(' (')[0]}",
             A.grad_cam(model, cam_layer, x, predicted, size=tuple(x.shape[-2:]))),
            ("occlusion", A.occlusion(model, x, predicted, window=(max(2, x.shape[-2] // 6),) * 2,
                                      stride=max(1, x.shape[-2] // 12))),
        ]
        fig, axes = _grid_figure(n, len(maps) + 1)
        for i in range(n):
            truth = "" if labels_t is None or segmentation else f" (true {name(labels_t[i])})"
            pct = 100 * float(confidence[i, predicted[i]])
            plot.show_image(x[i], ax=axes[i, 0], title=f"pred {name(predicted[i])} {pct:.0f}%{truth}")
            for j, (title, m) in enumerate(maps, start=1):
                plot.overlay(x[i], m[i], ax=axes[i, j], title=title if i == 0 else None, alpha=0.6)
        return fig

    section("Attribution: which pixels drove the decision",
            "Heatmaps for the predicted class: gradient (saliency), Zeiler-Fergus deconvnet, guided "
            f"backpropagation, integrated gradients from a black baseline, Grad-CAM at {cam_text}, and the "
            "score drop under a sliding occluder. Left: the prediction, its softmax confidence and the true class.",
            "attribution.png", attributions)

    def adversarial():
        epsilon = 0.1 * float(x.max() - x.min())
        if segmentation:
            loss = lambda out, t: -class_scores("fgsm", out, t)  # noqa: E731
            adv = A.fgsm(model, x, predicted, epsilon, loss_fn=loss)
        else:
            adv = A.fgsm(model, x, predicted, epsilon, clamp=(float(x.min()), float(x.max())))
        with torch.no_grad():
            out = model(adv)
            adv_pred = out.reshape(n, out.shape[1], -1).sum(-1).argmax(1)
            probs = torch.softmax(out.reshape(n, out.shape[1], -1).mean(-1), 1)
        fig, axes = _grid_figure(2, n)
        for i in range(n):
            plot.show_image(x[i], ax=axes[0, i], title=f"{name(predicted[i])}")
            plot.show_image(adv[i], ax=axes[1, i],
                            title=f"-> {name(adv_pred[i])} ({100 * float(probs[i, adv_pred[i]]):.0f}%)")
        return fig

    section("Adversarial examples (FGSM)",
            "Top: original and prediction. Bottom: x + &epsilon; sign(&nabla;<sub>x</sub> loss), "
            "&epsilon; = 10% of the pixel range, and what the network now says.", "fgsm.png", adversarial)

    # -- features ------------------------------------------------------------------------------
    first = dict(model.named_modules())[convs[0]]

    def filters():
        fig, ax = plot.new_figure(figsize=(4, 4))
        ax.imshow(Fe.filter_mosaic(first.weight), interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(f"filters of {layer_text(convs[0])} {tuple(first.weight.shape)}", fontsize=9)
        return fig

    section("Learned filters", "Each tile is one filter of the first convolution (stretched to black-white).",
            "filters.png", filters)

    def feature_maps():
        chosen = convs[:1] + convs[-1:] if len(convs) > 1 else convs
        acts = Fe.activations(model, x[:1], chosen)
        fig, axes = _grid_figure(1, len(chosen) + 1, cell=3)
        plot.show_image(x[0], ax=axes[0, 0], title="input")
        for j, (lname, a) in enumerate(acts.items(), start=1):
            Fe.activation_grid(a, ax=axes[0, j], title=f"{layer_text(lname)}: {a.shape[1]} maps", max_channels=32)
        return fig

    section("Feature maps", "The outputs of the first and last convolutions for one image: early maps "
            "follow edges, late ones are sparse and abstract.", "activations.png", feature_maps)

    def patches():
        module = dict(model.named_modules())[cam_layer]
        channels = min(4, getattr(module, "out_channels", 4))
        fig, axes = _grid_figure(1, channels, cell=2.2)
        for c in range(channels):
            res = Fe.top_patches(model, cam_layer, c, images, k=9)
            plot.image_grid(res.patches, ncols=3, ax=axes[0, c], title=f"channel {c}")
        return fig

    section("Top patches", f"For four channels of {cam_text}: the nine image "
            "crops (the peak unit's receptive field) that excite it most (Zeiler &amp; Fergus).",
            "top_patches.png", patches)

    def embedding():
        imgs = images if tsne_images is None else tsne_images.to(device)
        labs = (labels if tsne_images is None else tsne_labels)
        if segmentation or labs is None:
            labs = None
        _, fig, _ = Fe.tsne(model, cam_layer, imgs, labs, class_names=class_names,
                            max_iter=steps(1000, 250))
        return fig

    section("t-SNE of the learned representation", f"Each image's features at {cam_text} embedded in 2-D "
            "(scikit-learn), coloured by label: well-separated clusters mean "
            "the layer already tells the classes apart.", "tsne.png", embedding)

    # -- synthesis -----------------------------------------------------------------------------
    shape = tuple(x.shape[1:])
    lo, hi = float(images.min()), float(images.max())

    def class_models():
        k = int(logits.shape[1])
        classes = list(range(min(k, 6)))
        fig, axes = _grid_figure(1, len(classes))
        init = images.mean(0, keepdim=True).expand(len(classes), *shape)
        made = S.class_model(model, classes, init=init, steps=steps(150, 30), lr=0.02 * (hi - lo),
                             clamp=(lo, hi))
        for j, c in enumerate(classes):
            plot.show_image(made[j], ax=axes[0, j], title=name(c))
        return fig

    section("Class models", "Images optimised to maximise each class score from the mean image, with L2 "
            "decay, jitter and blur (Simonyan et al.).", "class_model.png", class_models)

    def dream():
        dreamed = S.deep_dream(model, x[0], [cam_layer], octaves=3, steps=steps(20, 5), lr=0.02 * (hi - lo),
                               clamp=(lo, hi), min_size=8)
        fig, axes = _grid_figure(1, 2, cell=3)
        plot.show_image(x[0], ax=axes[0, 0], title="input")
        plot.show_image(dreamed, ax=axes[0, 1], title=f"dream at {layer_text(cam_layer)}")
        return fig

    section("Deep dream", "The image nudged, over octaves, to amplify whatever the last convolution "
            "already sees in it.", "deep_dream.png", dream)

    def style():
        content = x[0]
        style_img = (images[-1] if style_image is None else style_image.to(device))
        out = S.style_transfer(content, style_img, model, convs[-1:], convs, steps=steps(200, 10),
                               clamp=(lo, hi))
        fig, axes = _grid_figure(1, 3, cell=3)
        plot.show_image(content, ax=axes[0, 0], title="content")
        plot.show_image(style_img, ax=axes[0, 1], title="style")
        plot.show_image(out, ax=axes[0, 2], title="result")
        return fig

    section("Style transfer", "Gatys et al. with this network as the feature extractor: content from "
            "the last convolution's activations, style from every convolution's Gram matrices, L-BFGS.",
            "style_transfer.png", style)

    # -- convolution as a matrix ---------------------------------------------------------------
    def matrix():
        kernel = first.weight.detach()[:1, :1].cpu()
        size = max(kernel.shape[-1] + 1, 4)
        fig, _ = explain.conv_matrix_figure(kernel, (size, size))
        return fig

    section("Convolution as a matrix", "The first filter (one input channel) as the matrix C with "
            "conv2d(x).flatten() = C x.flatten(); the transposed convolution multiplies by C<sup>T</sup>.",
            "conv_matrix.png", matrix)

    return "\n".join(parts)
