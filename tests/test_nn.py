"""pycnn.nn layers against their torch.nn namesakes: outputs, gradients, state_dicts, init,
BatchNorm's running statistics, and convert()/to_torch()."""
import copy
import re

import pytest
import torch
from torch import nn

import pycnn.nn as pnn

TOL = dict(rtol=1e-4, atol=1e-5)
BANNED = re.compile(r"^aten::(.*conv.*|.*convolution.*|max_pool.*|max_unpool.*|.*batch_norm.*|mm|addmm|bmm|"
                    r"matmul|linear|_mkldnn.*|mkldnn_.*|einsum)$")


def twins(torch_cls, pycnn_cls, *args, **kwargs):
    """The same layer built by torch and by pycnn from the same seed."""
    torch.manual_seed(0)
    ref = torch_cls(*args, **kwargs)
    torch.manual_seed(0)
    ours = pycnn_cls(*args, **kwargs)
    return ref, ours


def assert_same_layer(ref, ours, *inputs, dtype=torch.float64):
    """Same state_dict, same output, same input and parameter gradients."""
    ref, ours = ref.to(dtype), ours.to(dtype)
    sd_ref, sd_ours = ref.state_dict(), ours.state_dict()
    assert list(sd_ref) == list(sd_ours)
    for k in sd_ref:  # running statistics may differ in the last bits after training steps
        torch.testing.assert_close(sd_ours[k], sd_ref[k], rtol=1e-12, atol=1e-12, msg=lambda m: f"{k}: {m}")
    xs_ref = [x.to(dtype).requires_grad_() if x.is_floating_point() else x for x in inputs]
    xs_ours = [x.detach().clone().requires_grad_() if x.is_floating_point() else x for x in xs_ref]
    out_ref, out_ours = ref(*xs_ref), ours(*xs_ours)
    if isinstance(out_ref, tuple):
        assert torch.equal(out_ref[1], out_ours[1])  # pooling indices
        out_ref, out_ours = out_ref[0], out_ours[0]
    torch.testing.assert_close(out_ours, out_ref, **TOL)
    g = torch.randn_like(out_ref)
    out_ref.backward(g)
    out_ours.backward(g)
    for a, b in zip(xs_ours, xs_ref):
        if a.is_floating_point():
            torch.testing.assert_close(a.grad, b.grad, **TOL)
    for (name, p_ref), p_ours in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(p_ours.grad, p_ref.grad, **TOL, msg=lambda m: f"{name}: {m}")
    # buffers after the step (BatchNorm running stats) too
    for (name, b_ref), b_ours in zip(ref.named_buffers(), ours.buffers()):
        torch.testing.assert_close(b_ours, b_ref, **TOL, msg=lambda m: f"buffer {name}: {m}")
    return out_ours


@pytest.mark.parametrize("kwargs", [
    dict(in_channels=3, out_channels=5, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=1, bias=False),
    dict(in_channels=4, out_channels=6, kernel_size=3, dilation=2, groups=2, padding=2),
    dict(in_channels=4, out_channels=8, kernel_size=3, groups=4, padding=1),  # depthwise route
    dict(in_channels=3, out_channels=4, kernel_size=3, padding="same", dilation=(1, 2)),
    dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, padding_mode="reflect"),
    dict(in_channels=3, out_channels=4, kernel_size=3, padding=(2, 1), padding_mode="circular"),
    dict(in_channels=3, out_channels=4, kernel_size=3, padding=1, padding_mode="replicate", stride=2),
])
def test_conv2d(kwargs):
    assert_same_layer(*twins(nn.Conv2d, pnn.Conv2d, **kwargs), torch.randn(2, kwargs["in_channels"], 9, 8))


def test_conv2d_unbatched_and_float32():
    ref, ours = twins(nn.Conv2d, pnn.Conv2d, 2, 3, 3, padding=1)
    assert_same_layer(ref, ours, torch.randn(2, 7, 7), dtype=torch.float32)


@pytest.mark.parametrize("kwargs,output_size", [
    (dict(in_channels=4, out_channels=3, kernel_size=2, stride=2), None),
    (dict(in_channels=4, out_channels=3, kernel_size=2, stride=2), (11, 9)),  # odd sizes via output_padding
    (dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, output_padding=1, groups=2), None),
    (dict(in_channels=2, out_channels=3, kernel_size=3, dilation=2, bias=False), None),
])
def test_conv_transpose2d(kwargs, output_size):
    ref, ours = twins(nn.ConvTranspose2d, pnn.ConvTranspose2d, **kwargs)
    x = torch.randn(2, kwargs["in_channels"], 5, 4)
    if output_size is None:
        assert_same_layer(ref, ours, x)
    else:
        out = assert_same_layer(lambda_module(ref, output_size), lambda_module(ours, output_size), x)
        assert out.shape[-2:] == output_size


class lambda_module(nn.Module):
    """Wraps a layer so its forward gets a fixed extra argument."""

    def __init__(self, layer, *extra):
        super().__init__()
        self.layer, self.extra = layer, extra

    def forward(self, *xs):
        return self.layer(*xs, *self.extra)


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=(2, 3), dilation=2), dict(kernel_size=2, return_indices=True),
])
def test_max_pool2d(kwargs):
    x = torch.randn(2, 3, 9, 10)
    assert_same_layer(*twins(nn.MaxPool2d, pnn.MaxPool2d, **kwargs), x)


@pytest.mark.parametrize("output_size", [None, (9, 11)])
def test_max_unpool2d(output_size):
    x = torch.randn(2, 3, *(output_size or (8, 10)), dtype=torch.float64)
    y, idx = nn.MaxPool2d(2, return_indices=True)(x)
    ref, ours = twins(nn.MaxUnpool2d, pnn.MaxUnpool2d, 2)
    out = assert_same_layer(lambda_module(ref, idx, output_size), lambda_module(ours, idx, output_size), y)
    assert out.shape[-2:] == (output_size or (8, 10))


@pytest.mark.parametrize("kwargs", [
    dict(), dict(momentum=None), dict(momentum=0.3, eps=1e-3), dict(affine=False),
    dict(track_running_stats=False),
])
def test_batch_norm2d_train_steps_then_eval(kwargs):
    ref, ours = twins(nn.BatchNorm2d, pnn.BatchNorm2d, 3, **kwargs)
    with torch.no_grad():  # non-trivial affine parameters
        for m in (ref, ours):
            if m.affine:
                m.weight.copy_(torch.linspace(0.5, 2, 3))
                m.bias.copy_(torch.linspace(-1, 1, 3))
    for step in range(3):  # several steps: cumulative averages (momentum=None) differ from step 1
        assert_same_layer(ref, ours, torch.randn(4, 3, 5, 6) * (step + 1) + step)
    if ours.track_running_stats:
        assert int(ours.num_batches_tracked) == 3
    ref.eval(), ours.eval()
    assert_same_layer(ref, ours, torch.randn(2, 3, 4, 4))


def test_batch_norm2d_rejects_wrong_rank():
    with pytest.raises(ValueError, match="4D"):
        pnn.BatchNorm2d(3)(torch.randn(2, 3, 4))


@pytest.mark.parametrize("shape", [(7, 5), (2, 3, 7)])
def test_linear(shape):
    assert_same_layer(*twins(nn.Linear, pnn.Linear, 7 if shape[-1] == 7 else 5, 4), torch.randn(*shape[:-1], 7)
                      if shape[-1] == 7 else torch.randn(*shape))


@pytest.mark.parametrize("multiplier,stride,padding_mode", [(1, 1, "zeros"), (2, 2, "zeros"), (1, 1, "reflect")])
def test_depthwise_conv2d_is_a_grouped_conv(multiplier, stride, padding_mode):
    torch.manual_seed(0)
    ref = nn.Conv2d(4, 4 * multiplier, 3, stride=stride, padding=1, groups=4, padding_mode=padding_mode)
    torch.manual_seed(0)
    ours = pnn.DepthwiseConv2d(4, 3, stride=stride, padding=1, padding_mode=padding_mode,
                               depth_multiplier=multiplier)
    assert ours.depth_multiplier == multiplier
    assert_same_layer(ref, ours, torch.randn(2, 4, 8, 7))


def test_separable_conv2d_is_depthwise_then_pointwise():
    torch.manual_seed(0)
    ours = pnn.SeparableConv2d(3, 5, 3, padding=1, depth_multiplier=2)
    ref = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, groups=3, bias=False), nn.Conv2d(6, 5, 1))
    ref.load_state_dict({"0.weight": ours.depthwise.weight, "1.weight": ours.pointwise.weight,
                         "1.bias": ours.pointwise.bias})
    assert sorted(ours.state_dict()) == ["depthwise.weight", "pointwise.bias", "pointwise.weight"]
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(ours.double()(x), ref.double()(x))


def test_global_avg_pool():
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(pnn.GlobalAvgPool2d()(x), nn.AdaptiveAvgPool2d(1)(x).flatten(1))


def test_state_dicts_load_both_ways():
    torch.manual_seed(1)
    ref = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    ours = nn.Sequential(pnn.Conv2d(1, 4, 3), pnn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), pnn.Linear(4 * 6 * 6, 3))
    ours.load_state_dict(ref.state_dict())
    ref.load_state_dict(ours.state_dict())
    ref.eval(), ours.eval()
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(ours(x), ref(x), **TOL)


def test_depthwise_rejects_bad_multiplier():
    with pytest.raises(ValueError, match="depth_multiplier"):
        pnn.DepthwiseConv2d(3, 3, depth_multiplier=0)


# ---- convert ------------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.branches = nn.ModuleList([nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.ReLU()),
                                       nn.Identity()])
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 16 * 16, 3))

    def forward(self, x):
        y = self.bn(self.conv(x))
        y = sum(b(y) for b in self.branches)
        p, idx = self.pool(y)
        y = self.unpool(p, idx)
        p, _ = self.pool(y)
        return self.head(self.up(p))


class MyConv(nn.Conv2d):
    """A user's subclass with its own forward: convert must leave it alone."""

    def forward(self, x):
        return super().forward(x) * 2


def test_convert_nested_model_in_place():
    torch.manual_seed(0)
    model = Block().double()
    ref = copy.deepcopy(model)
    params_before = [id(p) for p in model.parameters()]
    model.bn.eval()  # a mixed-mode model keeps its modes
    ref.bn.eval()
    out = pnn.convert(model, inplace=True)
    assert out is model
    assert [id(p) for p in model.parameters()] == params_before
    assert type(model.conv) is pnn.Conv2d and type(model.bn) is pnn.BatchNorm2d
    assert type(model.branches[0][0]) is pnn.Conv2d and type(model.pool) is pnn.MaxPool2d
    assert type(model.unpool) is pnn.MaxUnpool2d and type(model.up) is pnn.ConvTranspose2d
    assert type(model.head[1]) is pnn.Linear and type(model.branches[0][1]) is nn.ReLU
    assert model.training and not model.bn.training
    x = torch.randn(2, 2, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(model(x), ref(x))
    model.eval(), ref.eval()
    torch.testing.assert_close(model(x), ref(x))
    # and it really runs our kernels now
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(x).sum().backward()
    hits = sorted({e.name for e in prof.events() if BANNED.match(e.name)})
    assert not hits, hits


def test_convert_keeps_subclasses_and_converts_top_level():
    m = nn.Sequential(MyConv(1, 1, 1))
    pnn.convert(m, inplace=True)
    assert type(m[0]) is MyConv
    layer = pnn.convert(nn.Linear(3, 2))
    assert type(layer) is pnn.Linear


def test_to_torch_inverts_convert():
    torch.manual_seed(0)
    model = nn.Sequential(pnn.DepthwiseConv2d(2, 3, padding=1), pnn.BatchNorm2d(2), pnn.SeparableConv2d(2, 3, 3))
    x = torch.randn(2, 2, 7, 7)
    ours = model(x)
    pnn.to_torch(model, inplace=True)
    assert type(model[0]) is nn.Conv2d and type(model[1]) is nn.BatchNorm2d
    assert type(model[2].depthwise) is nn.Conv2d and type(model[2].pointwise) is nn.Conv2d
    model[1].num_batches_tracked.zero_()
    model[1].running_mean.zero_(), model[1].running_var.fill_(1)
    torch.testing.assert_close(model(x), ours, **TOL)


def test_convert_rejects_non_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        pnn.convert("resnet")
