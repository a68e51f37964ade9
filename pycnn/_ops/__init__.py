"""pycnn's native kernels registered as torch custom ops (namespace ``torch.ops.pycnn``).

One module per op family; importing this package registers them all.
"""
from pycnn._ops import native  # noqa: F401
from pycnn._ops import linear  # noqa: F401
from pycnn._ops.native import get_workspace_limit, set_workspace_limit  # noqa: F401

for _family in ("conv", "depthwise", "pool", "batch_norm"):
    try:
        __import__(f"pycnn._ops.{_family}")
    except ModuleNotFoundError as _e:  # a family still being written
        if _e.name != f"pycnn._ops.{_family}":
            raise
