"""linear: y = x @ weight^T + bias, on our GEMM. The pattern every op in pycnn/_ops follows:

1. a custom op (native.custom_op: torch.library) whose body checks its arguments, makes inputs
   contiguous, allocates outputs with torch and calls the native kernel;
2. a fake implementation giving output shapes, so torch.compile / export work;
3. a backward that is itself a custom op calling native backward kernels;
4. native.register_autograd tying them together;
5. callers go through native.run(name, ...), which takes the eager fast path when it can.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from pycnn._ops import native

OP = "linear"


def _check(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> None:
    native.check_tensor(OP, "input", x, dims=2)
    native.check_tensor(OP, "weight", weight, dims=2)
    native.check_tensor(OP, "bias", bias, dims=1, optional=True)
    native.check_float_tensors(OP, input=x, weight=weight, bias=bias)
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"{OP}: input has {x.shape[1]} features but weight expects {weight.shape[1]} "
                         f"(weight shape {tuple(weight.shape)})")
    if bias is not None and bias.shape[0] != weight.shape[0]:
        raise ValueError(f"{OP}: bias has {bias.shape[0]} elements, weight has {weight.shape[0]} outputs")


@native.custom_op("linear")
def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """x [M, K] @ weight[N, K]^T + bias[N] -> [M, N]."""
    _check(x, weight, bias)
    x, weight = x.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    M, K = x.shape
    N = weight.shape[0]
    y = x.new_empty(M, N)
    if M and N:
        native.call("linear_forward", x, M, N, K, native.ptr(x), native.ptr(weight), native.ptr(bias), native.ptr(y))
    return y


@linear.register_fake
def _(x, weight, bias):
    _check(x, weight, bias)
    return x.new_empty(x.shape[0], weight.shape[0])


@native.custom_op("linear_backward")
def linear_backward(grad_out: Tensor, x: Tensor, weight: Tensor, output_mask: List[bool]) -> List[Tensor]:
    """Gradients (input, weight, bias); an unwanted one comes back as an empty tensor."""
    grad_out, x, weight = grad_out.contiguous(), x.contiguous(), weight.contiguous()
    M, K = x.shape
    N = weight.shape[0]
    gx = x.new_empty(M, K) if output_mask[0] else x.new_empty(0)
    gw = weight.new_empty(N, K) if output_mask[1] else x.new_empty(0)
    gb = weight.new_empty(N) if output_mask[2] else x.new_empty(0)
    # An empty reduction (M == 0) must give zeros, which the kernel would not write.
    if M == 0 or K == 0 or N == 0:
        for g in (gx, gw, gb):
            g.zero_()
        if output_mask[2] and M and N:  # no input features: the bias gradient is still the column sums
            native.call("channel_sum", x, M, N, 1, native.ptr(grad_out), native.ptr(gb))
        return [gx, gw, gb]
    native.call("linear_backward", x, M, N, K, native.ptr(x), native.ptr(weight), native.ptr(grad_out),
                native.ptr(gx), native.ptr(gw), native.ptr(gb))
    return [gx, gw, gb]


@linear_backward.register_fake
def _(grad_out, x, weight, output_mask):
    M, K = x.shape
    N = weight.shape[0]
    return [x.new_empty(M, K) if output_mask[0] else x.new_empty(0),
            weight.new_empty(N, K) if output_mask[1] else x.new_empty(0),
            weight.new_empty(N) if output_mask[2] else x.new_empty(0)]


def _setup_context(ctx, inputs, output):
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    gx, gw, gb = native.run("linear_backward", grad_out, x, weight, mask)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None)


native.register_autograd("linear", _backward, _setup_context)
