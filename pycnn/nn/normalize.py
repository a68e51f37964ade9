"""Input standardisation as a layer, so a trained model carries its own preprocessing.

    model = pnn.normalized(M.get("lenet5", ...), mean=splits.mean, std=splits.std)
    model(raw_images)          # raw [0, 1] pixels in; (x - mean) / std happens inside

A checkpoint of such a model holds ``normalize.mean`` and ``normalize.std`` in its state_dict, so
whoever loads it feeds raw images and gets the scores the model was trained to give.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence, Union

import torch
from torch import Tensor, nn

__all__ = ["Normalize", "normalized"]


class Normalize(nn.Module):
    """(x - mean[c]) / std[c] per channel of an [N, C, ...] input; mean and std are buffers
    (saved in the state_dict, moved by ``.to()``, never trained)."""

    def __init__(self, mean: Union[Sequence[float], Tensor], std: Union[Sequence[float], Tensor]):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).detach().clone().reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).detach().clone().reshape(-1)
        if mean.numel() == 0 or mean.shape != std.shape:
            raise ValueError(f"Normalize: mean and std need one value per channel, got {mean.numel()} and "
                             f"{std.numel()}")
        if not bool(torch.isfinite(mean).all()) or not bool((std > 0).all()) or not bool(torch.isfinite(std).all()):
            raise ValueError(f"Normalize: std must be positive and finite and mean finite, got mean "
                             f"{mean.tolist()}, std {std.tolist()}")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, input: Tensor) -> Tensor:
        if input.dim() < 2 or input.shape[1] != self.mean.numel():
            raise ValueError(f"Normalize: expected input [N, {self.mean.numel()}, ...], got {tuple(input.shape)}")
        shape = (1, -1) + (1,) * (input.dim() - 2)
        return (input - self.mean.view(shape).to(input.dtype)) / self.std.view(shape).to(input.dtype)

    def extra_repr(self) -> str:
        return f"mean={[round(v, 4) for v in self.mean.tolist()]}, std={[round(v, 4) for v in self.std.tolist()]}"


def normalized(model: nn.Module, mean, std) -> nn.Sequential:
    """``model`` with a :class:`Normalize` layer named ``normalize`` in front.

    A Sequential model keeps its layers and their names (LeNet's second convolution is still
    ``"3"``, for Grad-CAM and the state_dict); any other model follows as ``"model"``. A model
    built by ``pycnn.models.get`` keeps its description (``pycnn_spec``), marked as normalised,
    so checkpoints can rebuild it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"normalized: model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(model, nn.Sequential):
        if "normalize" in model._modules:
            raise ValueError("normalized: the model already has a layer named 'normalize'")
        layers = [("normalize", Normalize(mean, std))] + list(model.named_children())
    else:
        layers = [("normalize", Normalize(mean, std)), ("model", model)]
    out = nn.Sequential(OrderedDict(layers))
    out.train(model.training)
    spec = getattr(model, "pycnn_spec", None)
    if spec is not None:
        out.pycnn_spec = dict(spec, normalize=True)
    return out
