"""What pycnn's ops do under torch.autocast: what torch's own ops do.

Like torch.nn.functional's ops, conv2d, depthwise_conv2d, conv_transpose2d and linear run in the
autocast dtype (their floating inputs, float64 aside, are cast to it; the weights' gradients
come back in the weights' own dtype); max_unpool2d runs in float32 on CPU (torch's CPU autocast
lists it so); max_pool2d and batch_norm have no autocast rule and run in their input's dtype.
Where the kernels lack the dtype (bfloat16 and float16 on CPU), pycnn computes in float32 and
rounds the result to it (pycnn/_ops/native.py: computed_in_float32): the dtypes are torch's,
the values those of a float32 computation rounded once.

torch.library.register_autocast would fix one dtype per device; these kernels read the dtype
the autocast region asks for (torch.autocast("cpu", dtype=torch.float16) works too).
"""
from __future__ import annotations

import torch

_LOWER_PRECISION = ("conv2d", "depthwise_conv2d", "conv_transpose2d", "linear")
_FLOAT32 = {"cpu": ("max_unpool2d",), "cuda": ()}

_lib = torch.library.Library("pycnn", "FRAGMENT")


def _autocast_dtype(device: str) -> torch.dtype:
    if hasattr(torch, "get_autocast_dtype"):
        return torch.get_autocast_dtype(device)
    return torch.get_autocast_cpu_dtype() if device == "cpu" else torch.get_autocast_gpu_dtype()


def _cast(value, device: str, dtype: torch.dtype):
    """autocast's rule: floating tensors on this device, except float64, go to `dtype`."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and value.device.type == device and value.dtype != torch.float64:
            return value.to(dtype)
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, device, dtype) for v in value)
    return value


def _register(name: str, device: str, lower_precision: bool) -> None:
    key = "AutocastCPU" if device == "cpu" else "AutocastCUDA"
    excluded = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))
    op = getattr(torch.ops.pycnn, name).default

    def kernel(_keyset, *args):
        dtype = _autocast_dtype(device) if lower_precision else torch.float32
        with torch._C._ExcludeDispatchKeyGuard(excluded):  # run the op itself below autocast
            return op(*_cast(args, device, dtype))

    _lib.impl(name, kernel, key, with_keyset=True)


for _device in ("cpu", "cuda"):
    for _name in _LOWER_PRECISION:
        _register(_name, _device, True)
    for _name in _FLOAT32[_device]:
        _register(_name, _device, False)
