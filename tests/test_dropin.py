"""Drop-in edges, each against what torch does: batch_norm's eps / momentum / running-stat
checks and 1-D empty input, linear with no input features and broadcast biases, clear errors for
bad padding, memory formats (channels_last in, channels_last out, gradients too), and
pycnn.nn.convert's copy / summary."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pycnn.functional as PF
import pycnn.nn as pnn

CL = torch.channels_last


# ---- batch_norm -------------------------------------------------------------------------------

@pytest.mark.parametrize("training,eps", [(True, 0.0), (True, -1.0), (False, -1.0)])
def test_batch_norm_bad_eps_raises_like_torch(training, eps):
    x, rm, rv = torch.randn(4, 3, 5), torch.zeros(3), torch.ones(3)
    with pytest.raises(ValueError):
        F.batch_norm(x, rm, rv, training=training, eps=eps)
    with pytest.raises(ValueError, match=f"batch_norm: eps must be .*{eps}"):
        PF.batch_norm(x, rm, rv, training=training, eps=eps)


def test_batch_norm_eps_zero_in_eval_is_accepted_like_torch():
    x, rm, rv = torch.randn(4, 3, 5), torch.randn(3), torch.rand(3) + 0.5
    torch.testing.assert_close(PF.batch_norm(x, rm, rv, eps=0.0), F.batch_norm(x, rm, rv, eps=0.0))


@pytest.mark.parametrize("training", [True, False])
def test_functional_batch_norm_momentum_none_raises_like_torch(training):
    x, rm, rv = torch.randn(4, 3), torch.zeros(3), torch.ones(3)
    with pytest.raises(TypeError):
        F.batch_norm(x, rm, rv, training=training, momentum=None)
    with pytest.raises(TypeError, match="batch_norm: momentum must be a float, got None"):
        PF.batch_norm(x, rm, rv, training=training, momentum=None)
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))


def test_batch_norm2d_momentum_none_is_a_cumulative_average_like_torch():
    torch.manual_seed(0)
    ref = nn.BatchNorm2d(3, momentum=None)
    ours = pnn.BatchNorm2d(3, momentum=None)
    for i in range(4):
        x = torch.randn(5, 3, 4, 4) * (i + 1) + i
        torch.testing.assert_close(ours(x), ref(x))
    assert int(ours.num_batches_tracked) == 4
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    assert not torch.allclose(ours.running_mean, torch.zeros(3))  # the stats did move


@pytest.mark.parametrize("which", ["running_mean", "running_var"])
@pytest.mark.parametrize("training", [True, False])
def test_running_stats_that_require_grad_are_refused_like_torch(which, training):
    x = torch.randn(4, 3, 2)
    stats = dict(running_mean=torch.zeros(3), running_var=torch.ones(3))
    stats[which].requires_grad_()
    with pytest.raises(RuntimeError):
        F.batch_norm(x, stats["running_mean"], stats["running_var"], training=training)
    with pytest.raises(RuntimeError, match=f"batch_norm: {which} requires grad"):
        PF.batch_norm(x, stats["running_mean"], stats["running_var"], training=training)
    with torch.no_grad():  # torch accepts them there
        torch.testing.assert_close(PF.batch_norm(x, stats["running_mean"], stats["running_var"], training=training),
                                   F.batch_norm(x, stats["running_mean"], stats["running_var"], training=training))


@pytest.mark.parametrize("training,stats", [(True, False), (True, True), (False, True)])
def test_batch_norm_accepts_an_empty_1d_input_like_torch(training, stats):
    x = torch.randn(0, requires_grad=True)
    rm, rv = (torch.zeros(0), torch.ones(0)) if stats else (None, None)
    ref = F.batch_norm(x, rm, rv, training=training)
    ours = PF.batch_norm(x, rm, rv, training=training)
    assert ours.shape == ref.shape == (0,) and ours.dtype == ref.dtype
    ours.sum().backward()
    assert x.grad.shape == (0,)


def test_batch_norm_refuses_a_nonempty_1d_input_like_torch():
    with pytest.raises(IndexError):
        F.batch_norm(torch.randn(3), None, None, training=True)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        PF.batch_norm(torch.randn(3), None, None, training=True)


# ---- linear ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape_in", [(3, 0), (2, 3, 0), (0,), (0, 0)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_with_no_input_features_returns_the_bias_like_torch(shape_in, bias):
    w = torch.randn(4, 0, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True) if bias else None
    x = torch.randn(*shape_in, dtype=torch.float64, requires_grad=True)
    ours, ref = PF.linear(x, w, b), F.linear(x, w, b)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref)
    if bias and ref.numel():
        gy = torch.randn_like(ref)
        torch.testing.assert_close(torch.autograd.grad(ours, b, gy)[0], torch.autograd.grad(ref, b, gy)[0])


@pytest.mark.parametrize("x_shape,bias_shape", [((2, 3), ()), ((2, 3), (1, 4)), ((2, 3), (1,)), ((2, 3), (2, 4)),
                                                ((5, 2, 3), (2, 4)), ((5, 2, 3), (1, 4)), ((3,), ())])
def test_linear_broadcasts_the_bias_like_torch(x_shape, bias_shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(x_shape, generator=g, dtype=torch.float64)
    w = torch.randn(4, 3, generator=g, dtype=torch.float64)
    b = torch.randn(bias_shape, generator=g, dtype=torch.float64)
    tensors = [t.clone().requires_grad_() for t in (x, w, b)]
    ours = PF.linear(*tensors)
    refs = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = F.linear(*refs)
    torch.testing.assert_close(ours, ref)
    gy = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for a, r in zip(torch.autograd.grad(ours, tensors, gy), torch.autograd.grad(ref, refs, gy)):
        torch.testing.assert_close(a, r)


def test_linear_refuses_a_bias_that_does_not_broadcast_like_torch():
    x, w, b = torch.randn(2, 3), torch.randn(4, 3), torch.randn(3, 4)
    with pytest.raises(RuntimeError):
        F.linear(x, w, b)
    with pytest.raises(ValueError, match=r"linear: bias of shape \(3, 4\) does not broadcast"):
        PF.linear(x, w, b)


# ---- clear messages -------------------------------------------------------------------------

def test_conv_transpose2d_string_padding_names_the_op_and_value():
    with pytest.raises(TypeError):
        F.conv_transpose2d(torch.randn(1, 3, 4, 4), torch.randn(3, 2, 3, 3), padding="same")
    with pytest.raises(TypeError, match="conv_transpose2d: padding must be an int or a pair of ints, got 'same'"):
        PF.conv_transpose2d(torch.randn(1, 3, 4, 4), torch.randn(3, 2, 3, 3), padding="same")


@pytest.mark.parametrize("call", [
    lambda: PF.conv2d(torch.randn(1, 3, 4, 4), torch.randn(2, 3, 3, 3), padding=2 ** 62),
    lambda: PF.conv2d(torch.randn(1, 3, 4, 4), torch.randn(2, 3, 3, 3), padding=2 ** 40),
    lambda: PF.conv2d(torch.randn(1, 3, 4, 4), torch.randn(3, 1, 3, 3), padding=2 ** 62, groups=3),
    lambda: PF.conv_transpose2d(torch.randn(1, 3, 4, 4), torch.randn(3, 2, 3, 3), stride=2 ** 62),
], ids=["conv", "conv-2**40", "depthwise", "transpose-stride"])
def test_huge_padding_or_stride_is_a_clear_error(call):
    with pytest.raises(ValueError, match=r"conv.*2d: output shape .* is too large \(.*(4611686018427387904|1099511627776)"):
        call()


# ---- memory formats -------------------------------------------------------------------------

def _layout(t):
    """The two facts torch's memory-format rules are about (strides of size-1 dims aside)."""
    return t.is_contiguous(), t.is_contiguous(memory_format=CL)


def _cl(t):
    return t.to(memory_format=CL)


def _pool_then_unpool(fn_pool, fn_unpool):
    def run(x):
        y, idx = fn_pool(x, 2, return_indices=True)
        return fn_unpool(y, idx, 2)
    return run


# (name, pycnn fn, torch fn, inputs): every 4-D op, with the input, the weight or both channels_last,
# ambiguous shapes (one channel, 1x1 planes) and an empty batch.
def _cases():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    conv = (PF.conv2d, F.conv2d)
    yield "conv2d x", lambda x, w, b: PF.conv2d(x, w, b, padding=1), lambda x, w, b: F.conv2d(x, w, b, padding=1), \
        [_cl(r(2, 3, 6, 5)), r(4, 3, 3, 3), r(4)]
    yield "conv2d w", lambda x, w: conv[0](x, w, stride=2), lambda x, w: conv[1](x, w, stride=2), [r(2, 3, 7, 7), _cl(r(4, 3, 3, 3))]
    yield "conv2d both 1x1", lambda x, w: conv[0](x, w), lambda x, w: conv[1](x, w), [_cl(r(2, 8, 4, 4)), _cl(r(4, 8, 1, 1))]
    yield "conv2d one channel", lambda x, w: conv[0](x, w), lambda x, w: conv[1](x, w), [_cl(r(2, 1, 5, 5)), r(3, 1, 2, 2)]
    yield "conv2d 1x1 planes", lambda x, w: conv[0](x, w, padding=1), lambda x, w: conv[1](x, w, padding=1), \
        [_cl(r(2, 3, 1, 1)), r(4, 3, 3, 3)]
    yield "conv2d empty batch", lambda x, w: conv[0](x, w), lambda x, w: conv[1](x, w), [_cl(r(0, 3, 4, 4)), r(2, 3, 3, 3)]
    yield "conv2d grouped", lambda x, w: conv[0](x, w, groups=2), lambda x, w: conv[1](x, w, groups=2), \
        [_cl(r(2, 4, 5, 5)), r(6, 2, 3, 3)]
    yield "depthwise x", lambda x, w, b: PF.conv2d(x, w, b, padding=1, groups=3), \
        lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=3), [_cl(r(2, 3, 6, 6)), r(6, 1, 3, 3), r(6)]
    yield "depthwise w", lambda x, w: PF.depthwise_conv2d(x, w), lambda x, w: F.conv2d(x, w, groups=3), \
        [r(2, 3, 6, 6), _cl(r(3, 1, 3, 3))]
    yield "conv_transpose2d x", lambda x, w, b: PF.conv_transpose2d(x, w, b, stride=2, output_padding=1), \
        lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, output_padding=1), [_cl(r(2, 3, 4, 5)), r(3, 2, 3, 3), r(2)]
    yield "conv_transpose2d w", lambda x, w: PF.conv_transpose2d(x, w), lambda x, w: F.conv_transpose2d(x, w), \
        [r(2, 3, 4, 4), _cl(r(3, 2, 3, 3))]
    pool = lambda f: (lambda x: f(x, 3, 2, 1, return_indices=True))  # noqa: E731
    yield "max_pool2d", pool(PF.max_pool2d), pool(F.max_pool2d), [_cl(r(2, 3, 7, 6))]
    yield "max_pool2d contiguous", pool(PF.max_pool2d), pool(F.max_pool2d), [r(2, 3, 7, 6)]
    yield "max_pool2d one channel", pool(PF.max_pool2d), pool(F.max_pool2d), [_cl(r(2, 1, 7, 6))]
    yield "max_unpool2d", _pool_then_unpool(PF.max_pool2d, PF.max_unpool2d), \
        _pool_then_unpool(F.max_pool2d, F.max_unpool2d), [_cl(r(2, 3, 6, 6))]
    bn = lambda f, training: (lambda x, w, b: f(x, torch.zeros(3, dtype=x.dtype), torch.ones(3, dtype=x.dtype),  # noqa: E731
                                                 w, b, training=training))
    yield "batch_norm train", bn(PF.batch_norm, True), bn(F.batch_norm, True), [_cl(r(4, 3, 5, 5)), r(3), r(3)]
    yield "batch_norm eval", bn(PF.batch_norm, False), bn(F.batch_norm, False), [_cl(r(4, 3, 5, 5)), r(3), r(3)]
    yield "batch_norm 5-D", bn(PF.batch_norm, True), bn(F.batch_norm, True), \
        [r(2, 3, 3, 4, 4).to(memory_format=torch.channels_last_3d), r(3), r(3)]
    yield "linear on channels_last", lambda x, w: PF.linear(x, w), lambda x, w: F.linear(x, w), [_cl(r(2, 3, 4, 5)), r(6, 5)]


@pytest.mark.parametrize("name,ours_fn,torch_fn,inputs", list(_cases()), ids=[c[0] for c in _cases()])
def test_outputs_and_gradients_keep_torchs_memory_format(name, ours_fn, torch_fn, inputs):
    ours_in = [t.detach().clone(memory_format=torch.preserve_format).requires_grad_() for t in inputs]
    ref_in = [t.detach().clone(memory_format=torch.preserve_format).requires_grad_() for t in inputs]
    assert [t.stride() for t in ours_in] == [t.stride() for t in inputs]
    ours, ref = ours_fn(*ours_in), torch_fn(*ref_in)
    ours, ref = (ours if isinstance(ours, tuple) else (ours,)), (ref if isinstance(ref, tuple) else (ref,))
    for o, t in zip(ours, ref):
        assert _layout(o) == _layout(t), f"output layout {_layout(o)}, torch {_layout(t)}"
        torch.testing.assert_close(o, t)
    # Raw gradients (autograd.grad: leaves' .grad would be re-laid by AccumulateGrad), for an output
    # gradient in either layout.
    for grad_layout in (torch.contiguous_format, CL):
        gy = torch.randn_like(ref[0], memory_format=torch.contiguous_format)
        if gy.dim() == 4:
            gy = gy.to(memory_format=grad_layout)
        g_ours = torch.autograd.grad(ours[0], ours_in, gy, retain_graph=True)
        g_ref = torch.autograd.grad(ref[0], ref_in, gy, retain_graph=True)
        for i, (a, b) in enumerate(zip(g_ours, g_ref)):
            # (an empty gradient's channels_last flag only echoes strides nothing reads)
            assert _layout(a) == _layout(b) or a.numel() == 0, f"gradient {i}: layout {_layout(a)}, torch {_layout(b)}"
            torch.testing.assert_close(a, b)


def test_channels_last_model_stays_channels_last():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8)).to(memory_format=CL)
    ours = pnn.convert(model)
    x = torch.randn(2, 3, 8, 8).to(memory_format=CL)
    y_ours, y_ref = ours(x), model(x)
    assert _layout(y_ours) == _layout(y_ref) == (False, True)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-4, atol=1e-5)


# ---- convert ------------------------------------------------------------------------------

class _Custom(nn.Conv2d):
    def forward(self, x):
        return super().forward(x) + 1


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), _Custom(2, 2, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))


def test_convert_returns_a_converted_copy_by_default_like_torch_ao():
    model = _model()
    before = copy.deepcopy(model)
    converted = pnn.convert(model)
    assert converted is not model
    assert [type(m) for m in model.modules()] == [type(m) for m in before.modules()]  # untouched
    assert type(converted[0]) is pnn.Conv2d and type(converted[1]) is pnn.BatchNorm2d
    assert type(converted[6]) is pnn.Linear and type(converted[3]) is _Custom
    assert not {id(p) for p in converted.parameters()} & {id(p) for p in model.parameters()}
    x = torch.randn(2, 1, 6, 6)
    torch.testing.assert_close(converted(x), model(x))
    back = pnn.to_torch(converted)
    assert back is not converted and type(back[0]) is nn.Conv2d and type(converted[0]) is pnn.Conv2d


def test_convert_inplace_keeps_the_parameters():
    model = _model()
    params = [id(p) for p in model.parameters()]
    assert pnn.convert(model, inplace=True) is model
    assert type(model[0]) is pnn.Conv2d and [id(p) for p in model.parameters()] == params


def test_convert_summary_says_what_was_swapped_and_what_stays_on_torch(capsys):
    converted = pnn.convert(_model(), verbose=True)
    printed = capsys.readouterr().out
    assert "3 modules swapped to pycnn" in printed
    for line in ("pycnn  0: Conv2d  (swapped)", "pycnn  1: BatchNorm2d  (swapped)", "pycnn  6: Linear  (swapped)",
                 "torch  2: torch.nn.ReLU", "torch  4: torch.nn.AdaptiveAvgPool2d",
                 f"torch  3: {_Custom.__module__}._Custom  (a subclass of nn.Conv2d, kept for its own forward)"):
        assert line in printed, printed
    assert pnn.convert(_model()) is not None and capsys.readouterr().out == ""  # quiet by default
    s = pnn.summary(converted)
    assert s.on_pycnn == (("0", "Conv2d"), ("1", "BatchNorm2d"), ("6", "Linear")) and s.swapped == ()
    assert [name for name, _ in s.on_torch] == ["2", "3", "4", "5"] and list(s.not_swapped) == ["3"]


# ---- autocast and reduced-precision inputs --------------------------------------------------

def _dtype_cases():
    g = torch.Generator().manual_seed(1)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = r(2, 3, 6, 6)
    p, idx = F.max_pool2d(x, 2, return_indices=True)
    stats = lambda: (torch.zeros(3), torch.ones(3))  # noqa: E731
    yield "conv2d", lambda M, x, w, b: M.conv2d(x, w, b, padding=1), [x, r(4, 3, 3, 3), r(4)]
    yield "depthwise", lambda M, x, w: M.conv2d(x, w, groups=3), [x, r(6, 1, 3, 3)]
    yield "conv_transpose2d", lambda M, x, w, b: M.conv_transpose2d(x, w, b, stride=2), [x, r(3, 2, 3, 3), r(2)]
    yield "max_pool2d", lambda M, x: M.max_pool2d(x, 2, return_indices=True), [x]
    yield "max_unpool2d", lambda M, p: M.max_unpool2d(p, idx, 2), [p]
    yield "batch_norm", lambda M, x, w, b: M.batch_norm(x, *stats(), w, b, training=True), [x, r(3), r(3)]
    yield "linear", lambda M, x, w, b: M.linear(x, w, b), [r(5, 6), r(4, 6), r(4)]


def _assert_close_at_low_precision(ours, ref):
    """Within a few roundings of the 8-bit (bfloat16) mantissa, relative to the output's scale:
    torch rounds inside its reduced-precision kernels, pycnn once at the end."""
    for o, r in zip(ours, ref):
        if r.is_floating_point():
            scale = float(r.detach().float().abs().max()) if r.numel() else 1.0
            torch.testing.assert_close(o.float(), r.float(), rtol=2e-2, atol=2e-2 * max(scale, 1.0))
        else:
            assert torch.equal(o, r)


def _run_both(fn, inputs, cast_inputs=None, autocast=None):
    results = []
    for M in (PF, F):
        leaves = [t.clone().requires_grad_() for t in inputs]
        args = [t.to(cast_inputs) if cast_inputs is not None and t.dim() > 1 else t for t in leaves]
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            out = fn(M, *args)
        out = out if isinstance(out, tuple) else (out,)
        grads = torch.autograd.grad(out[0].float().sum(), leaves)
        results.append((out, grads))
    return results


@pytest.mark.parametrize("autocast", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,fn,inputs", list(_dtype_cases()), ids=[c[0] for c in _dtype_cases()])
def test_autocast_gives_torchs_dtypes(name, fn, inputs, autocast):
    """float32 inputs under torch.autocast("cpu"): conv/linear come back in the autocast dtype,
    max_unpool2d in float32, pooling and batch norm in their input's dtype; gradients in the
    leaves' dtype. Values within the autocast dtype's rounding of torch's."""
    (ours, g_ours), (ref, g_ref) = _run_both(fn, inputs, autocast=autocast)
    assert [o.dtype for o in ours] == [r.dtype for r in ref]
    _assert_close_at_low_precision(ours, ref)
    assert [g.dtype for g in g_ours] == [g.dtype for g in g_ref]
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name,fn,inputs", list(_dtype_cases()), ids=[c[0] for c in _dtype_cases()])
def test_reduced_precision_inputs_give_torchs_dtypes(name, fn, inputs, dtype):
    """bfloat16 / float16 tensors without autocast: computed in float32 by pycnn, returned (and
    differentiated) in the input's dtype like torch's ops. batch_norm keeps float32 parameters."""
    cast = lambda t: t.to(dtype) if t.dim() > 1 or name != "batch_norm" else t  # noqa: E731
    (ours, g_ours), (ref, g_ref) = _run_both(fn, [cast(t) for t in inputs])
    assert [o.dtype for o in ours] == [r.dtype for r in ref]
    _assert_close_at_low_precision(ours, ref)
    assert [g.dtype for g in g_ours] == [g.dtype for g in g_ref]


def test_converted_model_under_autocast_matches_torchs_dtype():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    ours = pnn.convert(model)
    x = torch.randn(4, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ours, y_ref = ours(x), model(x)
    assert y_ours.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y_ours.float(), y_ref.float(), rtol=5e-2, atol=5e-2)
    y_ours.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in ours.parameters())


def test_mixed_dtypes_are_refused_like_torch():
    x, w = torch.randn(1, 3, 4, 4, dtype=torch.bfloat16), torch.randn(2, 3, 3, 3)
    with pytest.raises(RuntimeError):
        F.conv2d(x, w)
    with pytest.raises(TypeError, match="conv2d: weight has dtype torch.float32 but the input has torch.bfloat16"):
        PF.conv2d(x, w)


def test_opcheck_channels_last_and_bfloat16():
    """The fake implementations give the same layouts and dtypes as the real ones
    (torch.compile and export rely on it)."""
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 6, 6, generator=g)
    w = torch.randn(4, 4, 3, 3, generator=g)
    fake = ("test_faketensor",)  # fake vs real outputs; the full opcheck (compiling) is in test_compile.py
    for xx, ww in ((_cl(x), w), (x, _cl(w)), (x.bfloat16(), w.bfloat16())):
        conv_args = (xx, ww, None, [1, 1], [1, 1, 1, 1], [1, 1], 1)
        torch.library.opcheck(torch.ops.pycnn.conv2d.default, conv_args, test_utils=fake)
        gy = torch.ops.pycnn.conv2d(*conv_args)
        torch.library.opcheck(torch.ops.pycnn.conv2d_backward.default,
                              (gy, xx, ww, [1, 1], [1, 1, 1, 1], [1, 1], 1, [True, True, True]), test_utils=fake)
        torch.library.opcheck(torch.ops.pycnn.max_pool2d.default, (xx, [2, 2], [2, 2], [0, 0], [1, 1], False),
                              test_utils=fake)
        torch.library.opcheck(torch.ops.pycnn.batch_norm_forward.default, (xx, None, None, None, None, True, 1e-5),
                              test_utils=fake)
