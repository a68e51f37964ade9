"""Seeing inside a CNN: attribution, features and synthesis for any torch model.

Every method takes a model built from pycnn layers or torch.nn layers (or both), works on a batch,
on CPU or CUDA, and leaves the model as it found it: train/eval mode, ``requires_grad`` flags,
buffers, and no hooks left behind, even when it raises.

- Attribution (which pixels drove a decision): ``saliency``, ``deconvnet``, ``guided_backprop``,
  ``integrated_gradients``, ``grad_cam``, ``occlusion``, and the adversarial ``fgsm``.
- Features (what the network learned): ``filter_mosaic``, ``activations``/``activation_grid``,
  ``top_patches``, ``tsne``.
- Synthesis (images optimised through the network): ``class_model``, ``deep_dream``,
  ``style_transfer``.
- Pictures: ``pycnn.viz.plot`` (overlays, grids, PNG files).
"""
from pycnn.viz import plot
from pycnn.viz.attribution import (deconvnet, fgsm, grad_cam, guided_backprop, integrated_gradients, occlusion,
                                   saliency)
from pycnn.viz.features import (TopPatches, activation_grid, activations, filter_mosaic, layer_features,
                                top_patches, tsne)
from pycnn.viz.plot import image_grid, overlay, save, show_image, to_image
from pycnn.viz.synthesis import class_model, deep_dream, gram_matrix, style_transfer

__all__ = [
    "saliency", "deconvnet", "guided_backprop", "integrated_gradients", "grad_cam", "occlusion", "fgsm",
    "filter_mosaic", "activations", "activation_grid", "top_patches", "TopPatches", "tsne", "layer_features",
    "class_model", "deep_dream", "style_transfer", "gram_matrix",
    "plot", "overlay", "image_grid", "show_image", "to_image", "save",
]
