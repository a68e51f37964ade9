"""ONNX export of models that run on pycnn's ops: each ``torch.ops.pycnn.*`` op becomes the
standard ONNX operator (Conv, ConvTranspose, MaxPool with indices, MaxUnpool,
BatchNormalization, Gemm), so the file runs anywhere ONNX does, without pycnn.

Both of torch's exporters are covered:

* ``dynamo=True`` (torch's default): pass ``custom_translation_table=pycnn.onnx.translation_table()``
  (onnxscript functions; torch.onnx has no global registry for this path), or call
  ``pycnn.onnx.export``, which does it for you.
* ``dynamo=False`` (TorchScript): importing this module registers symbolic functions with
  ``torch.onnx.register_custom_op_symbolic``; ``torch.onnx.export(..., dynamo=False)`` then works.

Needs the ``onnx`` and ``onnxscript`` packages (``pip install onnx onnxscript``); onnxruntime runs
the result. Indices: pycnn (like torch) numbers a pooling argmax within its own H x W plane, ONNX
within the whole N x C x H x W tensor, so the translations add / subtract the plane offsets.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch
import torch.onnx
from torch.onnx import symbolic_helper as _sh

import pycnn._ops  # noqa: F401  (registers torch.ops.pycnn.*)

__all__ = ["translation_table", "export"]

_TS_OPSET = 15  # the TorchScript symbolics use CastLike (opset 15) and Slice/Range inputs (10, 11)


def _conv_pads(padding):
    """pycnn's conv padding is [top, bottom, left, right]; ONNX wants [top, left, bottom, right]."""
    top, bottom, left, right = padding
    return [top, left, bottom, right]


def _static_channels(op: str, shape) -> int:
    c = shape[1] if shape is not None and len(shape) > 1 else None
    if not isinstance(c, int):
        raise ValueError(f"pycnn.onnx: {op} needs a static channel count to set ONNX Conv's group, got {c!r}")
    return c


# ---- dynamo=True: onnxscript translations -------------------------------------------------

def translation_table() -> Dict[Callable, Callable]:
    """{torch.ops.pycnn.<op>.default: onnxscript function} for torch.onnx.export(...,
    dynamo=True, custom_translation_table=...)."""
    from onnxscript import opset18 as op

    i64 = lambda values: op.Constant(value_ints=list(values))  # noqa: E731

    def conv2d(x, weight, bias, stride, padding, dilation, groups):
        return op.Conv(x, weight, bias, strides=list(stride), pads=_conv_pads(padding),
                       dilations=list(dilation), group=groups)

    def depthwise_conv2d(x, weight, bias, stride, padding, dilation):
        return conv2d(x, weight, bias, stride, padding, dilation, _static_channels("depthwise_conv2d", x.shape))

    def conv_transpose2d(x, weight, bias, stride, padding, output_padding, groups, dilation):
        return op.ConvTranspose(x, weight, bias, strides=list(stride), pads=[*padding, *padding],
                                output_padding=list(output_padding), dilations=list(dilation), group=groups)

    def plane_offsets(x, plane_size):
        """[N, C, 1, 1] int64: (n * C + c) * plane_size, ONNX's flat index of each plane's start."""
        nc = op.Slice(op.Shape(x), i64([0]), i64([2]))
        planes = op.Range(op.Constant(value_int=0), op.ReduceProd(nc, keepdims=0), op.Constant(value_int=1))
        return op.Reshape(op.Mul(planes, plane_size), op.Concat(nc, i64([1, 1]), axis=0))

    def max_pool2d(x, kernel, stride, padding, dilation, ceil_mode):
        y, flat = op.MaxPool(x, kernel_shape=list(kernel), strides=list(stride), pads=[*padding, *padding],
                             dilations=list(dilation), ceil_mode=int(ceil_mode))
        hw = op.ReduceProd(op.Slice(op.Shape(x), i64([2]), i64([4])), keepdims=0)
        return y, op.Sub(flat, plane_offsets(x, hw))

    def max_unpool2d(x, indices, output_size):
        flat = op.Add(indices, plane_offsets(x, op.Constant(value_int=output_size[0] * output_size[1])))
        shape = op.Concat(op.Slice(op.Shape(x), i64([0]), i64([2])), i64(output_size), axis=0)
        # With output_shape given, kernel_shape only sets a default size that output_shape overrides.
        return op.MaxUnpool(x, flat, shape, kernel_shape=[1, 1], strides=[1, 1])

    def batch_norm_forward(x, running_mean, running_var, weight, bias, training, eps, residual=None, relu=False):
        channels = op.Slice(op.Shape(x), i64([1]), i64([2]))
        if weight is None:
            weight = op.Expand(op.CastLike(op.Constant(value_float=1.0), x), channels)
        if bias is None:
            bias = op.Expand(op.CastLike(op.Constant(value_float=0.0), x), channels)
        if training:  # batch statistics (e.g. track_running_stats=False): biased variance, as in torch
            axes = i64([0, *range(2, len(x.shape))])
            mean_k = op.ReduceMean(x, axes, keepdims=1)
            diff = op.Sub(x, mean_k)
            mean = op.Reshape(mean_k, i64([-1]))
            var = op.Reshape(op.ReduceMean(op.Mul(diff, diff), axes, keepdims=1), i64([-1]))
        else:  # new values: the exporter names each node output, and these are graph inputs
            mean, var = op.Identity(running_mean), op.Identity(running_var)
        y = op.BatchNormalization(x, weight, bias, mean, var, epsilon=eps)
        if residual is not None:
            y = op.Add(y, residual)
        if relu:
            y = op.Relu(y)
        invstd = op.Reciprocal(op.Sqrt(op.Add(var, op.CastLike(op.Constant(value_float=eps), var))))
        return y, mean, invstd, var

    def batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, residual=None, relu=False):
        # The running-statistics update is a training-time side effect, not part of the model.
        y, mean, invstd, _ = batch_norm_forward(x, running_mean, running_var, weight, bias, training, eps,
                                                residual, relu)
        return y, mean, invstd

    def linear(x, weight, bias):
        return op.Gemm(x, weight, bias, transB=1)

    ops = torch.ops.pycnn
    return {
        ops.conv2d.default: conv2d,
        ops.depthwise_conv2d.default: depthwise_conv2d,
        ops.conv_transpose2d.default: conv_transpose2d,
        ops.max_pool2d.default: max_pool2d,
        ops.max_unpool2d.default: max_unpool2d,
        ops.batch_norm_forward.default: batch_norm_forward,
        ops.batch_norm.default: batch_norm,
        ops.linear.default: linear,
    }


def export(model, args, f=None, **kwargs):
    """torch.onnx.export with pycnn's translations: ``custom_translation_table`` gets
    ``translation_table()`` merged in for the dynamo exporter (torch's default), and the
    TorchScript exporter (``dynamo=False``) finds the symbolics this module registered."""
    if kwargs.get("dynamo", True):
        kwargs["custom_translation_table"] = {**translation_table(), **(kwargs.get("custom_translation_table") or {})}
    return torch.onnx.export(model, args, f, **kwargs)


# ---- dynamo=False: TorchScript symbolic functions -----------------------------------------

def _ts_ints(g, values):
    return g.op("Constant", value_t=torch.tensor(list(values), dtype=torch.int64))


def _ts_plane_offsets(g, x, plane_size):
    nc = g.op("Slice", g.op("Shape", x), _ts_ints(g, [0]), _ts_ints(g, [2]))
    count = g.op("ReduceProd", nc, keepdims_i=0)
    planes = g.op("Range", g.op("Constant", value_t=torch.tensor(0)), count, g.op("Constant", value_t=torch.tensor(1)))
    return g.op("Reshape", g.op("Mul", planes, plane_size), g.op("Concat", nc, _ts_ints(g, [1, 1]), axis_i=0))


def _ts_optional(*values):
    return [v for v in values if not _sh._is_none(v)]


@_sh.parse_args("v", "v", "v", "is", "is", "is", "i")
def _ts_conv2d(g, x, weight, bias, stride, padding, dilation, groups):
    return g.op("Conv", x, weight, *_ts_optional(bias), strides_i=stride, pads_i=_conv_pads(padding),
                dilations_i=dilation, group_i=groups)


@_sh.parse_args("v", "v", "v", "is", "is", "is")
def _ts_depthwise_conv2d(g, x, weight, bias, stride, padding, dilation):
    groups = _static_channels("depthwise_conv2d", _sh._get_tensor_sizes(x))
    return g.op("Conv", x, weight, *_ts_optional(bias), strides_i=stride, pads_i=_conv_pads(padding),
                dilations_i=dilation, group_i=groups)


@_sh.parse_args("v", "v", "v", "is", "is", "is", "i", "is")
def _ts_conv_transpose2d(g, x, weight, bias, stride, padding, output_padding, groups, dilation):
    return g.op("ConvTranspose", x, weight, *_ts_optional(bias), strides_i=stride, pads_i=[*padding, *padding],
                output_padding_i=output_padding, dilations_i=dilation, group_i=groups)


@_sh.parse_args("v", "is", "is", "is", "is", "i")
def _ts_max_pool2d(g, x, kernel, stride, padding, dilation, ceil_mode):
    y, flat = g.op("MaxPool", x, outputs=2, kernel_shape_i=kernel, strides_i=stride, pads_i=[*padding, *padding],
                   dilations_i=dilation, ceil_mode_i=ceil_mode)
    hw = g.op("ReduceProd", g.op("Slice", g.op("Shape", x), _ts_ints(g, [2]), _ts_ints(g, [4])), keepdims_i=0)
    return y, g.op("Sub", flat, _ts_plane_offsets(g, x, hw))


@_sh.parse_args("v", "v", "is")
def _ts_max_unpool2d(g, x, indices, output_size):
    size = g.op("Constant", value_t=torch.tensor(output_size[0] * output_size[1]))
    flat = g.op("Add", indices, _ts_plane_offsets(g, x, size))
    shape = g.op("Concat", g.op("Slice", g.op("Shape", x), _ts_ints(g, [0]), _ts_ints(g, [2])),
                 _ts_ints(g, output_size), axis_i=0)
    return g.op("MaxUnpool", x, flat, shape, kernel_shape_i=[1, 1], strides_i=[1, 1])


def _ts_batch_norm_core(g, x, running_mean, running_var, weight, bias, training, eps, residual, relu):
    channels = g.op("Slice", g.op("Shape", x), _ts_ints(g, [1]), _ts_ints(g, [2]))
    like = lambda value: g.op("CastLike", g.op("Constant", value_t=torch.tensor(value)), x)  # noqa: E731
    weight = g.op("Expand", like(1.0), channels) if _sh._is_none(weight) else weight
    bias = g.op("Expand", like(0.0), channels) if _sh._is_none(bias) else bias
    if training:
        rank = _sh._get_tensor_rank(x)
        if rank is None:
            raise ValueError("pycnn.onnx: batch_norm with batch statistics needs an input of known rank")
        axes = [0, *range(2, rank)]
        if _sh.GLOBALS.export_onnx_opset_version >= 18:
            reduce_mean = lambda t: g.op("ReduceMean", t, _ts_ints(g, axes), keepdims_i=1)  # noqa: E731
        else:
            reduce_mean = lambda t: g.op("ReduceMean", t, axes_i=axes, keepdims_i=1)  # noqa: E731
        mean_k = reduce_mean(x)
        diff = g.op("Sub", x, mean_k)
        mean = g.op("Reshape", mean_k, _ts_ints(g, [-1]))
        var = g.op("Reshape", reduce_mean(g.op("Mul", diff, diff)), _ts_ints(g, [-1]))
    else:
        mean, var = running_mean, running_var
    y = g.op("BatchNormalization", x, weight, bias, mean, var, epsilon_f=eps)
    if not _sh._is_none(residual):
        y = g.op("Add", y, residual)
    if relu:
        y = g.op("Relu", y)
    invstd = g.op("Reciprocal", g.op("Sqrt", g.op("Add", var, g.op("CastLike", g.op("Constant", value_t=torch.tensor(eps)), var))))
    return y, mean, invstd, var


@_sh.parse_args("v", "v", "v", "v", "v", "i", "f", "v", "i")
def _ts_batch_norm_forward(g, x, running_mean, running_var, weight, bias, training, eps, residual, relu):
    return _ts_batch_norm_core(g, x, running_mean, running_var, weight, bias, training, eps, residual, relu)


@_sh.parse_args("v", "v", "v", "v", "v", "i", "f", "f", "v", "i")
def _ts_batch_norm(g, x, running_mean, running_var, weight, bias, training, momentum, eps, residual, relu):
    return _ts_batch_norm_core(g, x, running_mean, running_var, weight, bias, training, eps, residual, relu)[:3]


@_sh.parse_args("v", "v", "v")
def _ts_linear(g, x, weight, bias):
    return g.op("Gemm", x, weight, *_ts_optional(bias), transB_i=1)


for _name, _fn in (("conv2d", _ts_conv2d), ("depthwise_conv2d", _ts_depthwise_conv2d),
                   ("conv_transpose2d", _ts_conv_transpose2d), ("max_pool2d", _ts_max_pool2d),
                   ("max_unpool2d", _ts_max_unpool2d), ("batch_norm_forward", _ts_batch_norm_forward),
                   ("batch_norm", _ts_batch_norm), ("linear", _ts_linear)):
    torch.onnx.register_custom_op_symbolic(f"pycnn::{_name}", _fn, _TS_OPSET)
