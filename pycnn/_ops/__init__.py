"""pycnn's native kernels registered as torch custom ops (namespace ``torch.ops.pycnn``).

One module per op family (split so each family's checks, fake and autograd stay together);
importing this package registers them all.
"""
from pycnn._ops import native  # noqa: F401
from pycnn._ops import batch_norm, conv, depthwise, linear, partial_conv, pool, roi  # noqa: F401
from pycnn._ops import autocast  # noqa: F401  (after the ops it registers kernels for)
from pycnn._ops.native import get_workspace_limit, set_workspace_limit  # noqa: F401
