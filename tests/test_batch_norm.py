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
