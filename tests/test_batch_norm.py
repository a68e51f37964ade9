import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import pycnn.functional as PF
from pycnn import _C
from reference import check_op, gradcheck


def _bn_pair(training, momentum=0.1, eps=1e-5):
    """(ours, torch) functions of (x, running_mean, running_var, weight, bias) that also return the
    running statistics after the call, so check_op compares torch's in-place side effects too."""
    def make(fn):
        def run(x, rm, rv, w, b):
            y = fn(x, rm, rv, w, b, training, momentum, eps)
            return (y,) if rm is None else (y, rm, rv)
        return run
    return make(PF.batch_norm), make(F.batch_norm)


def _inputs(shape, running=True, affine=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = shape[1]
    x = torch.randn(shape, generator=g) * 2 + 0.5
    rm = torch.randn(C, generator=g) if running else None
    rv = torch.rand(C, generator=g) + 0.5 if running else None
    w = torch.randn(C, generator=g) if affine else None
    b = torch.randn(C, generator=g) if affine else None
    return [x, rm, rv, w, b]


def _grad(inputs):
    """Gradients checked for x, weight and bias (when given); running stats are buffers."""
    return [True, False, False, inputs[3] is not None, inputs[4] is not None]

SHAPES = [
    (6, 5),             # rank 2: column path (S = 1)
    (4, 3, 7),          # rank 3, short rows: column path
    (3, 5, 66),         # rows just above the column-path threshold
    (4, 3, 5, 6),       # rank 4, few channels: block-parallel path
    (2, 9, 9, 10),      # rank 4, enough channels to split by channel
    (2, 3, 2, 3, 4),    # rank 5
    (2, 2, 4100),       # several 4096-element blocks per row, with a tail, few channels
    (2, 8, 4099),       # the same, split by channel
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_matches_torch(shape, training, affine):
    ours, ref = _bn_pair(training, momentum=0.1)
    inputs = _inputs(shape, running=True, affine=affine)
    check_op(ours, ref, inputs, grad=_grad(inputs))


@pytest.mark.parametrize("shape", [(6, 5), (4, 3, 5, 6), (2, 9, 70)])
@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_training_without_running_stats(shape, affine):
    ours, ref = _bn_pair(True)
    inputs = _inputs(shape, running=False, affine=affine)
    check_op(ours, ref, inputs, grad=_grad(inputs))


@pytest.mark.parametrize("momentum", [0.0, 0.1, 0.5, 1.0])
def test_batch_norm_momentum_updates_running_stats_like_torch(momentum):
    ours, ref = _bn_pair(True, momentum=momentum, eps=1e-3)
    out = check_op(ours, ref, _inputs((5, 4, 3, 3)), grad=(True, False, False, True, True))
    # The update must actually happen (or not, for momentum 0): the check above could pass
    # vacuously if neither side touched the buffers.
    rm0 = _inputs((5, 4, 3, 3))[1].double()
    assert torch.equal(out[1], rm0) == (momentum == 0.0)


def test_batch_norm_returns_batch_statistics():
    x = torch.randn(4, 3, 10, dtype=torch.float64)
    y, mean, invstd = torch.ops.pycnn.batch_norm(x, None, None, None, None, True, 0.1, 1e-5)
    torch.testing.assert_close(mean, x.mean(dim=(0, 2)))
    torch.testing.assert_close(invstd, (x.var(dim=(0, 2), unbiased=False) + 1e-5).rsqrt())


def test_batch_norm_variance_is_numerically_stable():
    # A large common offset defeats E[x^2] - E[x]^2 in float32 (1e6 * 6e-8 = 0.06 error on a
    # variance of 1); two-pass / Chan merging keeps it at float32 rounding.
    g = torch.Generator().manual_seed(1)
    x64 = torch.randn(8, 3, 5000, generator=g, dtype=torch.float64) + 1000.0
    x = x64.float()
    # eps 1e-12 (training refuses 0, as torch does) is far below float32 rounding of a unit variance
    _, mean, invstd = torch.ops.pycnn.batch_norm(x, None, None, None, None, True, 0.1, 1e-12)
    exact = x.double().var(dim=(0, 2), unbiased=False)
    torch.testing.assert_close(invstd.double(), exact.rsqrt(), rtol=1e-4, atol=0)
    torch.testing.assert_close(mean.double(), x.double().mean(dim=(0, 2)), rtol=1e-6, atol=0)


def test_batch_norm_non_contiguous_input():
    x = torch.randn(5, 6, 7, 4).permute(0, 3, 2, 1)  # [5, 4, 7, 6], channels strided
    assert not x.is_contiguous()
    for training in (True, False):
        ours, ref = _bn_pair(training)
        check_op(ours, ref, [x, torch.zeros(4), torch.ones(4), torch.randn(4), torch.randn(4)], grad=(True, False, False, True, True))


def test_batch_norm_empty_batch_leaves_running_stats():
    ours, ref = _bn_pair(True)
    out = check_op(ours, ref, [torch.randn(0, 3, 4), torch.zeros(3), torch.ones(3), torch.randn(3), torch.randn(3)],
                   grad=(True, False, False, True, True))
    assert out[0].shape == (0, 3, 4)
    assert torch.equal(out[1], torch.zeros(3, dtype=torch.float64))


def test_batch_norm_one_value_per_channel_raises():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        PF.batch_norm(torch.randn(1, 3), None, None, training=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        PF.batch_norm(torch.randn(1, 3, 1, 1), torch.zeros(3), torch.ones(3), training=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        torch.ops.pycnn.batch_norm(torch.randn(1, 3), None, None, None, None, True, 0.1, 1e-5)
    PF.batch_norm(torch.randn(1, 3), torch.zeros(3), torch.ones(3), training=False)  # eval is fine


@pytest.mark.parametrize("shape", [(3, 20, 64, 64), (2, 3, 9000), (64, 40)])
def test_batch_norm_is_deterministic_across_thread_counts(shape):
    x = torch.randn(shape)
    w, b, gy = torch.randn(shape[1]), torch.randn(shape[1]), torch.randn(shape)
    results = []
    before = _C.get_num_threads()
    try:
        for threads in (1, 2, 3):
            _C.set_num_threads(threads)
            xx = x.clone().requires_grad_()
            ww = w.clone().requires_grad_()
            y = PF.batch_norm(xx, None, None, ww, b, training=True)
            gx, gw = torch.autograd.grad(y, (xx, ww), gy)
            results.append((y, gx, gw))
    finally:
        _C.set_num_threads(before)
    for other in results[1:]:
        for a, c in zip(results[0], other):
            assert torch.equal(a, c)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 5), c=st.integers(1, 6), spatial=st.lists(st.integers(1, 9), min_size=0, max_size=3),
       training=st.booleans(), affine=st.booleans(), momentum=st.floats(0.0, 1.0))
def test_batch_norm_property(n, c, spatial, training, affine, momentum):
    shape = (n, c, *spatial)
    per_channel = n * torch.Size(spatial).numel()
    if training and per_channel == 1:
        return
    ours, ref = _bn_pair(training, momentum=momentum)
    inputs = _inputs(shape, running=True, affine=affine)
    check_op(ours, ref, inputs, grad=_grad(inputs))


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradcheck(training):
    rm, rv = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5

    def fn(x, w, b):
        return PF.batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5)

    assert gradcheck(fn, [torch.randn(4, 3, 5), torch.randn(3), torch.randn(3)])


def test_batch_norm_opcheck():
    f64 = dict(dtype=torch.float64)
    x = torch.randn(4, 3, 5, **f64, requires_grad=True)
    w = torch.randn(3, **f64, requires_grad=True)
    b = torch.randn(3, **f64, requires_grad=True)
    for training in (True, False):
        torch.library.opcheck(torch.ops.pycnn.batch_norm.default,
                              (x, torch.zeros(3, **f64), torch.ones(3, **f64), w, b, training, 0.1, 1e-5))
    torch.library.opcheck(torch.ops.pycnn.batch_norm.default, (x, None, None, None, None, True, 0.1, 1e-5))
    torch.library.opcheck(torch.ops.pycnn.batch_norm_forward.default, (x, None, None, w, b, True, 1e-5))
    torch.library.opcheck(torch.ops.pycnn.batch_norm_backward.default,
                          (torch.randn(4, 3, 5, **f64), x.detach(), w.detach(), torch.randn(3, **f64),
                           torch.rand(3, **f64) + 0.5, True, [True, True, True]))


def _bad(**kw):
    args = dict(input=torch.randn(4, 3, 5), running_mean=torch.zeros(3), running_var=torch.ones(3),
                weight=torch.ones(3), bias=torch.zeros(3), training=True)
    args.update(kw)
    return args


@pytest.mark.parametrize("kwargs,exc,match", [
    (_bad(running_mean=torch.zeros(4)), ValueError, "running_mean has 4 elements"),
    (_bad(running_var=torch.ones(2)), ValueError, "running_var has 2 elements"),
    (_bad(weight=torch.ones(5)), ValueError, "weight has 5 elements"),
    (_bad(bias=torch.ones(2, 3)), ValueError, "bias must be 1-D"),
    (_bad(weight=torch.ones(3, dtype=torch.float64)), TypeError, "float64"),
    (_bad(running_mean=None), ValueError, "both be None"),
    (_bad(training=False, running_mean=None, running_var=None), ValueError, "required when training=False"),
    (_bad(input=torch.randn(5)), ValueError, "at least 2 dimensions"),
    (_bad(input=torch.ones(4, 3, dtype=torch.int64), running_mean=None, running_var=None, weight=None, bias=None),
     TypeError, "int64"),
    (_bad(input=torch.randn(4, 3, device="meta")), RuntimeError, "meta"),
])
def test_batch_norm_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        PF.batch_norm(**kwargs)


def test_batch_norm_backward_op_bad_input():
    x = torch.randn(4, 3, 5)
    with pytest.raises(ValueError, match="grad_out shape"):
        torch.ops.pycnn.batch_norm_backward(torch.randn(4, 3, 6), x, None, torch.zeros(3), torch.ones(3), True,
                                            [True, True, True])
    with pytest.raises(ValueError, match="save_mean must have shape"):
        torch.ops.pycnn.batch_norm_backward(torch.randn(4, 3, 5), x, None, torch.zeros(2), torch.ones(3), True,
                                            [True, True, True])


# ---- fused with the residual add and ReLU (a ResNet block's end) --------------------------------

FUSED_SHAPES = [(4, 3, 7), (3, 5, 66), (4, 3, 5, 6), (2, 9, 9, 10), (2, 8, 4099)]


@pytest.mark.parametrize("shape", FUSED_SHAPES)
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_fused_residual_relu_matches_torch(shape, residual, training):
    inputs = _inputs(shape, running=True, affine=True, seed=3)
    r = torch.randn(shape, generator=torch.Generator().manual_seed(4)) if residual else None

    def ours(x, rm, rv, w, b, r):
        return PF.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, residual=r, relu=True), rm, rv

    def ref(x, rm, rv, w, b, r):
        y = F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)
        return F.relu(y + r if r is not None else y), rm, rv

    check_op(ours, ref, inputs + [r], grad=_grad(inputs) + [residual])


def test_fused_residual_without_relu_and_its_gradient():
    x, rm, rv, w, b = _inputs((3, 4, 5, 5), seed=5)
    r = torch.randn(3, 4, 5, 5)
    check_op(lambda x, w, b, r: PF.batch_norm(x, None, None, w, b, True, residual=r),
             lambda x, w, b, r: F.batch_norm(x, None, None, w, b, True) + r, [x, w, b, r])


def test_fused_relu_passes_nan_like_torch():
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    r = torch.zeros_like(x)
    r[0, 1, 2, 3] = float("nan")
    x.requires_grad_(True)
    r.requires_grad_(True)
    y = PF.batch_norm(x, None, None, None, None, True, residual=r, relu=True)
    x2, r2 = x.detach().clone().requires_grad_(True), r.detach().clone().requires_grad_(True)
    y2 = F.relu(F.batch_norm(x2, None, None, None, None, True) + r2)
    torch.testing.assert_close(y, y2, equal_nan=True)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, r, g)[0], torch.autograd.grad(y2, r2, g)[0], equal_nan=True)


def test_fused_non_contiguous_and_channels_last():
    x = torch.randn(3, 6, 8, 9).to(memory_format=torch.channels_last)
    r = torch.randn(3, 9, 8, 6).permute(0, 3, 2, 1)  # non-contiguous, same shape as x
    w, b = torch.randn(6), torch.randn(6)
    check_op(lambda x, r, w, b: PF.batch_norm(x, None, None, w, b, True, residual=r, relu=True),
             lambda x, r, w, b: F.relu(F.batch_norm(x, None, None, w, b, True) + r), [x, r, w, b])
    y = PF.batch_norm(x, None, None, w, b, True, residual=r, relu=True)
    assert y.is_contiguous(memory_format=torch.channels_last)  # the input's layout, as torch keeps it


def test_fused_gradcheck_and_opcheck():
    g = torch.Generator().manual_seed(8)
    x, r = (torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    w = torch.rand(3, generator=g, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x, r, w: PF.batch_norm(x, None, None, w, None, True, residual=r, relu=True), (x, r, w))
    xd, rd, wd = x.detach(), r.detach(), w.detach()
    torch.library.opcheck(torch.ops.pycnn.batch_norm_forward.default, (xd, None, None, wd, None, True, 1e-5, rd, True))
    y = F.relu(xd)
    mean, invstd = xd.mean((0, 2, 3)), torch.ones(3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.pycnn.batch_norm_backward.default,
                          (torch.randn_like(xd), xd, wd, mean, invstd, True, [True, True, False], y))


def test_fused_bad_residual_is_a_clear_error():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"batch_norm: residual shape \(2, 3, 4, 5\) must equal input shape"):
        PF.batch_norm(x, None, None, None, None, True, residual=torch.randn(2, 3, 4, 5))
    with pytest.raises(TypeError, match="batch_norm"):
        PF.batch_norm(x, None, None, None, None, True, residual=torch.randn(2, 3, 4, 4, dtype=torch.float64))


def test_resnet_block_fuses_only_where_nothing_can_tell():
    """BasicBlock runs BN + add + ReLU as one kernel on the eager path: same values and gradients
    as its torch twin; with a hook on a ReLU (or a torch-function mode) it runs layer by layer so
    the hook sees the ReLU."""
    import copy
    import pycnn.models as models
    import pycnn.nn as pnn
    from pycnn._ops import native
    torch.manual_seed(0)
    model = models.get("resnet", in_channels=3, num_classes=4, image_size=8, depth=8).double().train()
    twin = pnn.to_torch(copy.deepcopy(model))
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    calls = []
    original = native.call
    try:
        native.call = lambda name, *a: (calls.append((name, *a[-3:-1])), original(name, *a))[1]
        out = model(x)
    finally:
        native.call = original
    applies = [(residual != 0, act) for name, residual, act in calls if name == "batch_norm_apply"]
    # stem (BN and the ReLU after it in pnn.Sequential: fused), then per block: BN + ReLU fused,
    # BN + shortcut + ReLU fused, and (stages 2, 3) the shortcut's own BN
    assert type(model) is pnn.Sequential and type(twin) is torch.nn.Sequential
    assert applies == [(False, True), (False, True), (True, True), (False, True), (False, False), (True, True),
                       (False, True), (False, False), (True, True)]
    out.sum().backward()
    twin(x).sum().backward()
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-10, msg=name)
    seen = []
    block = model[3]
    handle = block.relu2.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        torch.testing.assert_close(model(x), twin(x), rtol=1e-10, atol=1e-10)
    finally:
        handle.remove()
    assert len(seen) == 1  # unfused: the ReLU module ran and its hook saw it
    stem_seen = []
    handle = model[2].register_forward_hook(lambda m, i, o: stem_seen.append(o))  # the stem's ReLU
    try:
        torch.testing.assert_close(model(x), twin(x), rtol=1e-10, atol=1e-10)
    finally:
        handle.remove()
    assert len(stem_seen) == 1 and bool((stem_seen[0] >= 0).all())
