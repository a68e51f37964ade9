"""batch_norm: per-channel normalisation of an input of rank >= 2, viewed as [N, C, S].

torch.library's register_autograd refuses operators that mutate their arguments, and
``pycnn::batch_norm`` must update running_mean / running_var in place (as
torch.nn.functional.batch_norm does). So the work is split in two:

* ``pycnn::batch_norm_forward`` - a functional custom op (native stats + apply kernels) with a
  fake implementation and an autograd formula whose backward is the custom op
  ``pycnn::batch_norm_backward``;
* ``pycnn::batch_norm`` - the public op, schema with ``Tensor(a!)? running_mean`` and
  ``Tensor(b!)? running_var``, registered as CompositeImplicitAutograd: it calls the
  functional op and then updates the running statistics (elementwise glue on [C] vectors).
  Autograd, fake tensors and torch.compile see through it to the functional op.

Both take an optional ``residual`` and a ``relu`` flag: y = relu(BN(x) + residual), ResNet's
block end, in the one pass over memory that writes y (and, backward, one pass for the ReLU's
mask instead of a separate add, ReLU and threshold_backward with their fresh tensors).
"""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from pycnn._ops import native

OP = "batch_norm"


def _split(x: Tensor) -> Tuple[int, int, int]:
    return x.shape[0], x.shape[1], math.prod(x.shape[2:])


def check_eps(op: str, eps: float, training: bool) -> None:
    """torch's rule: eps > 0 when training (eps = 0 would divide by a zero batch variance), >= 0 otherwise."""
    if training and not eps > 0:
        raise ValueError(f"{op}: eps must be positive when training, got {eps}")
    if not eps >= 0:
        raise ValueError(f"{op}: eps must be non-negative, got {eps}")


def check_running_stats_grad(op: str, running_mean: Optional[Tensor], running_var: Optional[Tensor]) -> None:
    """Running statistics are buffers: torch refuses ones that require grad (while grad mode is on)."""
    if not torch.is_grad_enabled():
        return
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is not None and t.requires_grad:
            raise RuntimeError(f"{op}: {name} requires grad; running statistics are buffers, not "
                               f"differentiable inputs (pass {name}.detach(), or run under torch.no_grad())")


def _check_dtypes(op: str, x: Tensor, **params) -> None:
    """One floating dtype for the input and the parameters, except that (as in torch) float32
    parameters may go with a bfloat16 / float16 input."""
    given = {k: t for k, t in params.items() if t is not None}
    if x.dtype in native._REDUCED and given and all(t.dtype == torch.float32 for t in given.values()):
        native.check_float_tensors(op, input=x)
        native.check_float_tensors(op, **given)
    else:
        native.check_float_tensors(op, input=x, **given)


def _plain_cpu(x, params, same_shape) -> bool:
    """The common eager call in a few attribute reads: plain CPU tensors of one kernel dtype, 1-D
    ``params`` of C = x.shape[1] elements, ``same_shape`` tensors of x's shape. False sends the
    call through the full checks, which accept or name the problem (they cost ~15 us a call)."""
    if type(x) not in native._PLAIN or not x.is_cpu or x.dtype not in native._DTYPE_CODE or x.dim() < 2:
        return False
    dtype, C = x.dtype, x.shape[1]
    for t in params:
        if t is not None and (type(t) not in native._PLAIN or not t.is_cpu or t.dtype is not dtype
                              or t.dim() != 1 or t.shape[0] != C):
            return False
    for t in same_shape:
        if t is not None and (type(t) not in native._PLAIN or not t.is_cpu or t.dtype is not dtype
                              or t.shape != x.shape):
            return False
    return True


def _check(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor], weight: Optional[Tensor],
           bias: Optional[Tensor], training: bool, residual: Optional[Tensor] = None) -> None:
    if (_plain_cpu(x, (running_mean, running_var, weight, bias), (residual,))
            and (running_mean is None) == (running_var is None) and (training or running_mean is not None)
            and not (training and x.numel() <= x.shape[1])):
        return
    native.check_tensor(OP, "input", x)
    native.check_tensor(OP, "residual", residual, optional=True)
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"{OP}: residual shape {tuple(residual.shape)} must equal input shape {tuple(x.shape)}")
        native.check_float_tensors(OP, input=x, residual=residual)
    if x.dim() < 2:
        raise ValueError(f"{OP}: input must have at least 2 dimensions (N, C, ...), got shape {tuple(x.shape)}")
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        native.check_tensor(OP, name, t, dims=1, optional=True)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{OP}: running_mean and running_var must either both be None or neither be None")
    if not training and running_mean is None:
        raise ValueError(f"{OP}: running_mean and running_var are required when training=False")
    _check_dtypes(OP, x, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias)
    C = x.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if t is not None and t.shape[0] != C:
            raise ValueError(f"{OP}: {name} has {t.shape[0]} elements but input has {C} channels "
                             f"(input shape {tuple(x.shape)})")
    N, _, S = _split(x)
    if training and N * S == 1:
        raise ValueError(f"{OP}: expected more than 1 value per channel when training, got input size "
                         f"{tuple(x.shape)}")


@native.custom_op("batch_norm_forward")
def batch_norm_forward(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor],
                       weight: Optional[Tensor], bias: Optional[Tensor], training: bool,
                       eps: float, residual: Optional[Tensor] = None,
                       relu: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, mean, invstd, biased var): batch statistics when training, running ones otherwise;
    y = relu(BN(x) + residual) with the optional parts."""
    _check(x, running_mean, running_var, weight, bias, training, residual)
    layout = native.output_format(x)  # y (and the input gradient) keep the input's layout
    x = x.contiguous()
    residual = None if residual is None else residual.contiguous()
    weight = None if weight is None else weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    N, C, S = _split(x)
    if training:  # the kernel also gives invstd = 1 / sqrt(var + eps): two tensor ops' dispatch saved
        mean, var, invstd = x.new_empty(C), x.new_empty(C), x.new_empty(C)
        if C > 0:  # an empty batch gives mean 0 and variance 0 (both kernels, CPU and CUDA)
            native.call("batch_norm_stats", x, N, C, S, native.ptr(x), native.ptr(mean), native.ptr(var),
                        native.ptr(invstd), float(eps))
    else:
        mean, var = running_mean.contiguous().clone(), running_var.contiguous().clone()
        invstd = torch.rsqrt(var + eps)
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if y.numel():
        native.call("batch_norm_apply", x, N, C, S, native.ptr(x), native.ptr(mean), native.ptr(invstd),
                    native.ptr(weight), native.ptr(bias), native.ptr(residual), bool(relu), native.ptr(y))
    return native.in_format(y, layout), mean, invstd, var


@batch_norm_forward.register_fake
def _(x, running_mean, running_var, weight, bias, training, eps, residual=None, relu=False):
    _check(x, running_mean, running_var, weight, bias, training, residual)
    C = x.shape[1]
    return native.empty(x, x.shape, native.output_format(x)), x.new_empty(C), x.new_empty(C), x.new_empty(C)


def _check_backward(grad_out: Tensor, x: Tensor, weight: Optional[Tensor], mean: Tensor, invstd: Tensor,
                    relu_output: Optional[Tensor] = None) -> None:
    if mean is not None and invstd is not None and _plain_cpu(x, (weight, mean, invstd), (grad_out, relu_output)):
        return
    op = "batch_norm_backward"
    native.check_tensor(op, "input", x)
    native.check_tensor(op, "grad_out", grad_out)
    native.check_tensor(op, "relu_output", relu_output, optional=True)
    if x.dim() < 2 or grad_out.shape != x.shape:
        raise ValueError(f"{op}: grad_out shape {tuple(grad_out.shape)} must equal input shape {tuple(x.shape)} "
                         "(rank >= 2)")
    if relu_output is not None:
        if relu_output.shape != x.shape:
            raise ValueError(f"{op}: relu_output shape {tuple(relu_output.shape)} must equal input shape "
                             f"{tuple(x.shape)}")
        native.check_float_tensors(op, input=x, relu_output=relu_output)
    native.check_float_tensors(op, input=x, grad_out=grad_out, save_mean=mean, save_invstd=invstd)
    _check_dtypes(op, x, weight=weight)
    for name, t in (("weight", weight), ("save_mean", mean), ("save_invstd", invstd)):
        if t is not None and (t.dim() != 1 or t.shape[0] != x.shape[1]):
            raise ValueError(f"{op}: {name} must have shape ({x.shape[1]},), got {tuple(t.shape)}")


@native.custom_op("batch_norm_backward")
def batch_norm_backward(grad_out: Tensor, x: Tensor, weight: Optional[Tensor], save_mean: Tensor,
                        save_invstd: Tensor, training: bool, output_mask: List[bool],
                        relu_output: Optional[Tensor] = None) -> List[Tensor]:
    """Gradients (input, weight, bias, and the gradient behind the fused ReLU: that of the
    residual); an unwanted or absent one comes back as an empty tensor. ``relu_output``: the
    forward's y when it ended in a ReLU (its mask), else None. ``output_mask``: which of the
    first three are wanted, and optionally a fourth entry for the one behind the ReLU (default:
    wanted when there is a ReLU). The kernel masks grad_out as it reads it: no pass of its own."""
    _check_backward(grad_out, x, weight, save_mean, save_invstd, relu_output)
    want_act = _wants_act(output_mask, relu_output)
    layout = native.output_format(x)
    grad_out, x = grad_out.contiguous(), x.contiguous()
    relu_output = None if relu_output is None else relu_output.contiguous()
    weight = None if weight is None else weight.contiguous()
    save_mean, save_invstd = save_mean.contiguous(), save_invstd.contiguous()
    N, C, S = _split(x)
    gx = torch.empty_like(x, memory_format=torch.contiguous_format) if output_mask[0] else x.new_empty(0)
    gw = x.new_empty(C) if output_mask[1] else x.new_empty(0)
    gb = x.new_empty(C) if output_mask[2] else x.new_empty(0)
    g_act = torch.empty_like(x, memory_format=torch.contiguous_format) if want_act else x.new_empty(0)
    if C > 0 and (any(output_mask[:3]) or want_act):
        native.call("batch_norm_backward", x, N, C, S, native.ptr(x), native.ptr(grad_out), native.ptr(relu_output),
                    native.ptr(save_mean), native.ptr(save_invstd), native.ptr(weight), bool(training),
                    native.ptr(gx), native.ptr(gw), native.ptr(gb), native.ptr(g_act))
    return [native.in_format(gx, layout) if output_mask[0] else gx, gw, gb,
            native.in_format(g_act, layout) if want_act else g_act]


def _wants_act(output_mask, relu_output) -> bool:
    return relu_output is not None and (len(output_mask) < 4 or bool(output_mask[3]))


@batch_norm_backward.register_fake
def _(grad_out, x, weight, save_mean, save_invstd, training, output_mask, relu_output=None):
    _check_backward(grad_out, x, weight, save_mean, save_invstd, relu_output)
    C = x.shape[1]
    return [native.empty(x, x.shape, native.output_format(x)) if output_mask[0] else x.new_empty(0),
            x.new_empty(C) if output_mask[1] else x.new_empty(0),
            x.new_empty(C) if output_mask[2] else x.new_empty(0),
            native.empty(x, x.shape, native.output_format(x)) if _wants_act(output_mask, relu_output)
            else x.new_empty(0)]


def _setup_context(ctx, inputs, output):
    x, _, _, weight, bias, training, _ = inputs[:7]
    residual, relu = (inputs[7:] + (None, False))[:2]
    y, mean, invstd, var = output
    ctx.save_for_backward(x, weight, mean, invstd, y if relu else None)
    ctx.training = training
    ctx.has_weight = weight is not None
    ctx.has_bias = bias is not None
    ctx.has_residual = residual is not None
    # The statistics are returned for the running-stat update and for inspection, not as a
    # differentiable function of the input.
    ctx.mark_non_differentiable(mean, invstd, var)


def _backward(ctx, grad_out, _g_mean, _g_invstd, _g_var):
    x, weight, mean, invstd, relu_output = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.has_weight and ctx.needs_input_grad[3],
            ctx.has_bias and ctx.needs_input_grad[4]]
    want_residual = ctx.has_residual and len(ctx.needs_input_grad) > 7 and ctx.needs_input_grad[7]
    if grad_out is None or not (any(mask) or want_residual):
        return None, None, None, None, None, None, None, None, None
    if any(mask) or (want_residual and relu_output is not None):
        gx, gw, gb, g_act = native.run("batch_norm_backward", grad_out, x, weight, mean, invstd, ctx.training,
                                       mask + [want_residual], relu_output)
    g_residual = (g_act if relu_output is not None else grad_out) if want_residual else None
    return (gx if mask[0] else None, None, None, gw if mask[1] else None, gb if mask[2] else None, None, None,
            g_residual, None)


native.register_autograd("batch_norm_forward", _backward, _setup_context)


# ---- the public, mutating op ----------------------------------------------------------------

_lib = torch.library.Library("pycnn", "FRAGMENT")
_lib.define("batch_norm(Tensor input, Tensor(a!)? running_mean, Tensor(b!)? running_var, Tensor? weight, "
            "Tensor? bias, bool training, float momentum, float eps, Tensor? residual=None, bool relu=False) "
            "-> (Tensor, Tensor, Tensor)")


def _batch_norm(x: Tensor, running_mean: Optional[Tensor], running_var: Optional[Tensor], weight: Optional[Tensor],
                bias: Optional[Tensor], training: bool, momentum: float,
                eps: float, residual: Optional[Tensor] = None, relu: bool = False, *,
                run=native.run) -> Tuple[Tensor, Tensor, Tensor]:
    """(y, save_mean, save_invstd); when training, updates running_mean/running_var in place like
    torch: running = (1 - momentum) * running + momentum * batch (the variance unbiased, n / (n - 1)).
    y = relu(BN(x) + residual) with the optional parts. ``run``: how the functional op is called
    (native.run_eager when this body itself runs on the fast path)."""
    _check(x, running_mean, running_var, weight, bias, training, residual)
    check_eps(OP, eps, training)
    check_running_stats_grad(OP, running_mean, running_var)
    if training:
        # The running stats are not read in training; passing None keeps them out of autograd.
        y, mean, invstd, var = run("batch_norm_forward", x, None, None, weight, bias, True, eps, residual, relu)
        N, _, S = _split(x)
        n = N * S
        if running_mean is not None and n > 0:  # torch leaves them alone for an empty batch
            if (running_mean.dtype is mean.dtype is running_var.dtype and running_mean.device == mean.device
                    and mean.dtype in native._DTYPE_CODE and running_mean.is_contiguous()
                    and running_var.is_contiguous() and not running_mean.requires_grad
                    and not running_var.requires_grad
                    and (run is native.run_eager or native.fast_path_applies((running_mean, running_var)))):
                # One native call instead of four tensor ops (their dispatch is the cost here). On the
                # fast path (run_eager) the running stats already passed fast_path_applies as arguments.
                native.call("batch_norm_update_running", mean, mean.shape[0], native.ptr(mean), native.ptr(var),
                            float(momentum), n / (n - 1), native.ptr(running_mean), native.ptr(running_var))
                torch.autograd.graph.increment_version((running_mean, running_var))  # as an in-place op would
            else:
                with torch.no_grad():
                    running_mean.mul_(1.0 - momentum).add_(mean, alpha=momentum)
                    running_var.mul_(1.0 - momentum).add_(var, alpha=momentum * n / (n - 1))
    else:
        y, mean, invstd, _ = run("batch_norm_forward", x, running_mean, running_var, weight, bias,
                                 False, eps, residual, relu)
    return y, mean, invstd


_lib.impl("batch_norm", _batch_norm, "CompositeImplicitAutograd")
native.register_body("batch_norm", functools.partial(_batch_norm, run=native.run_eager))
