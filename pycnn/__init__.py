"""pycnn: convolutional neural networks on our own C++ and CUDA kernels, checked against PyTorch."""
import torch as _torch  # noqa: F401  (torch first: its libraries load before ours)

from pycnn import _ops  # registers torch.ops.pycnn.*
from pycnn._ops.native import cpu_isa, cuda_available, get_workspace_limit, set_workspace_limit, sync_threads
from pycnn import functional  # noqa: F401

__version__ = "0.1.0"

sync_threads()


def load(path: str, model=None, map_location="cpu"):
    """The model in a checkpoint written by ``pycnn train`` or ``pycnn.train.fit``, ready to use:
    eval mode, takes raw images (the input standardisation is a layer), ``.classes`` names the
    labels. ``model``: load into this module instead of rebuilding (models not from
    ``pycnn.models``). Raises ``pycnn.checkpoint.CheckpointError`` (one line) for a missing,
    damaged or mismatched file."""
    from pycnn.checkpoint import load as _load
    return _load(path, model=model, map_location=map_location)


__all__ = ["load", "functional", "cpu_isa", "cuda_available", "set_workspace_limit", "get_workspace_limit", "sync_threads"]
