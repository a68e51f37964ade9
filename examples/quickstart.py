"""A first look: pycnn.functional is a drop-in for torch.nn.functional, computed by our kernels."""
import torch
import torch.nn.functional as F

import pycnn.functional as PF

torch.manual_seed(0)
x = torch.randn(8, 3, 32, 32, requires_grad=True)
w = torch.randn(16, 3, 3, 3, requires_grad=True)
b = torch.randn(16, requires_grad=True)

y = PF.conv2d(x, w, b, padding=1)                      # im2col + our GEMM
p, idx = PF.max_pool2d(y, 2, return_indices=True)      # argmax recorded
u = PF.max_unpool2d(p, idx, 2)                         # values back at their argmax
n = PF.batch_norm(u, None, None, training=True)
out = PF.linear(n.flatten(1), torch.randn(10, 16 * 32 * 32))
out.sum().backward()                                    # native backward kernels

print("conv2d output", tuple(y.shape), "pooled", tuple(p.shape), "logits", tuple(out.shape))
print("max |pycnn - torch| conv2d:", (y - F.conv2d(x, w, b, padding=1)).abs().max().item())
print("input gradient shape:", tuple(x.grad.shape))
