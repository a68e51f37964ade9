"""pycnn: convolutional neural networks on our own C++ and CUDA kernels, checked against PyTorch."""
import torch as _torch  # noqa: F401  (torch first: its libraries load before ours)

from pycnn import _ops  # registers torch.ops.pycnn.*
from pycnn._ops.native import cpu_isa, cuda_available, get_workspace_limit, set_workspace_limit, sync_threads
from pycnn import functional, ops  # noqa: F401

__version__ = "0.1.0"

sync_threads()

__all__ = ["functional", "ops", "cpu_isa", "cuda_available", "set_workspace_limit", "get_workspace_limit", "sync_threads"]
