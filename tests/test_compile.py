"""The ops are torch custom ops with fake kernels, so torch.compile traces them as single nodes
(fullgraph: no graph breaks) and the compiled function matches eager mode, side effects included."""
import torch

import pycnn.functional as PF


def every_op(x, w, rm, rv):
    y = PF.conv2d(x, w, padding=1)
    y = PF.batch_norm(y, rm, rv, training=True)          # updates rm, rv in place
    p, idx = PF.max_pool2d(y, 2, return_indices=True)
    u = PF.max_unpool2d(p, idx, 2)
    d = PF.conv2d(u, torch.ones(4, 1, 3, 3), groups=4, padding=1)   # depthwise kernel
    t = PF.conv_transpose2d(d, torch.ones(4, 2, 2, 2), stride=2)
    return PF.linear(t.flatten(1), torch.ones(3, t[0].numel()))


def test_torch_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    rm_e, rv_e, rm_c, rv_c = torch.zeros(4), torch.ones(4), torch.zeros(4), torch.ones(4)
    eager = every_op(x, w, rm_e, rv_e)
    (gx_e, gw_e) = torch.autograd.grad(eager.sum(), (x, w))
    compiled = torch.compile(every_op, fullgraph=True, backend="aot_eager")(x, w, rm_c, rv_c)
    (gx_c, gw_c) = torch.autograd.grad(compiled.sum(), (x, w))
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(gx_c, gx_e)
    torch.testing.assert_close(gw_c, gw_e)
    torch.testing.assert_close(rm_c, rm_e)
    torch.testing.assert_close(rv_c, rv_e)
    assert rm_c.abs().sum() > 0  # the running statistics really were updated
