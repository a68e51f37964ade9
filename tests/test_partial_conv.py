"""partial_conv2d (pycnn.functional, pycnn.nn.PartialConv2d) against a composition of torch ops:
conv2d of x * mask, and conv2d of the mask with a kernel of ones for the window sums."""
import pytest
import torch
import torch.nn.functional as F

import pycnn
import pycnn.functional as PF
import pycnn.nn as pnn
from reference import check_op, gradcheck


def torch_partial_conv2d(x, mask, w, b, stride=1, padding=0, dilation=1):
    """The reference: two torch convolutions and elementwise glue (Liu et al. 2018, eq. 1-2)."""
    kh, kw = w.shape[2:]
    ones = torch.ones(1, mask.shape[1], kh, kw, dtype=mask.dtype, device=mask.device)
    msum = F.conv2d(mask, ones, None, stride, padding, dilation)
    valid = msum > 0
    ratio = torch.where(valid, mask.shape[1] * kh * kw / msum.clamp_min(1e-30), torch.zeros_like(msum))
    y = F.conv2d(x * mask, w, None, stride, padding, dilation) * ratio
    if b is not None:
        y = y + b.view(1, -1, 1, 1)
    y = torch.where(valid, y, torch.zeros_like(y))
    mask_out = valid.to(x.dtype)
    if mask.shape[1] > 1:
        mask_out = mask_out.expand(-1, w.shape[0], -1, -1)
    return y, mask_out


def random_mask(shape, gen, kind="binary"):
    """Holes (zeros) in blocks and at random, so some windows see no valid pixel at all."""
    m = (torch.rand(shape, generator=gen) > 0.4).double()
    m[..., : shape[-2] // 2, : shape[-1] // 2] = 0  # a hole bigger than the kernels below
    if kind == "soft":  # values inside (0, 1] too
        m = m * torch.where(torch.rand(shape, generator=gen) > 0.5, 1.0, 0.5)
    return m


CASES = [
    # (N, C, H, W), K, (kh, kw), stride, padding, dilation, mask channels ("one" or "all"), kind
    ((2, 3, 9, 11), 4, (3, 3), 1, 1, 1, "one", "binary"),
    ((2, 3, 9, 11), 4, (3, 3), 1, 1, 1, "all", "binary"),
    ((2, 3, 10, 9), 5, (3, 3), 2, 1, 1, "one", "soft"),
    ((1, 2, 13, 7), 3, (5, 5), 1, 2, 1, "all", "soft"),
    ((2, 4, 12, 12), 8, (4, 4), 2, 1, 1, "one", "binary"),       # the U-Net encoder's shape
    ((1, 3, 11, 12), 2, (3, 2), (2, 3), (0, 2), (2, 1), "all", "binary"),  # everything asymmetric
    ((2, 1, 8, 8), 3, (7, 7), 1, 3, 1, "one", "binary"),         # C = 1, large kernel
    ((2, 3, 6, 6), 2, (1, 1), 1, 0, 1, "all", "soft"),           # pointwise
    ((1, 2, 9, 9), 3, (3, 3), 3, 4, 2, "one", "binary"),         # stride 3, padding > kernel
]


@pytest.mark.parametrize("shape,K,k,stride,padding,dilation,channels,kind", CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch(shape, K, k, stride, padding, dilation, channels, kind, bias):
    gen = torch.Generator().manual_seed(0)
    N, C, H, W = shape
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    mask = random_mask((N, 1 if channels == "one" else C, H, W), gen, kind)
    w = torch.randn(K, C, *k, generator=gen, dtype=torch.float64) / (C * k[0] * k[1]) ** 0.5
    b = torch.randn(K, generator=gen, dtype=torch.float64) if bias else None
    ours = lambda x, m, w, b: PF.partial_conv2d(x, m, w, b, stride, padding, dilation, return_mask=True)
    ref = lambda x, m, w, b: torch_partial_conv2d(x, m, w, b, stride, padding, dilation)
    y, mask_out = check_op(ours, ref, [x, mask, w, b], grad=[True, False, True, bias])
    assert 0 < mask_out.sum() < mask_out.numel(), "the case should have both valid and empty windows"


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 5, 6, generator=gen, dtype=torch.float64)
    w = torch.randn(2, 2, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(2, generator=gen, dtype=torch.float64)
    for mask in (random_mask((1, 1, 5, 6), gen, "soft"), random_mask((1, 2, 5, 6), gen)):
        gradcheck(lambda x, w, b: PF.partial_conv2d(x, mask, w, b, (2, 1), 1, (1, 2)), [x, w, b])


def test_mask_gets_no_gradient():
    x = torch.randn(1, 2, 5, 5, requires_grad=True)
    mask = torch.ones(1, 1, 5, 5, requires_grad=True)
    y, m = PF.partial_conv2d(x, mask, torch.randn(3, 2, 3, 3), padding=1, return_mask=True)
    assert not m.requires_grad
    y.sum().backward()
    assert mask.grad is None and x.grad is not None


def test_opcheck():
    f64 = dict(dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 2, 5, 6, **f64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, **f64, requires_grad=True)
    b = torch.randn(3, **f64, requires_grad=True)
    one, per_channel = random_mask((2, 1, 5, 6), gen), random_mask((2, 2, 5, 6), gen, "soft")
    op = torch.ops.pycnn.partial_conv2d.default
    torch.library.opcheck(op, (x, one, w, b, [1, 2], [1, 0, 2, 1], [1, 1]))
    torch.library.opcheck(op, (x, per_channel, w, None, [1, 1], [1, 1, 1, 1], [2, 1]))
    gy = torch.randn(2, 3, 4, 4, **f64)
    torch.library.opcheck(torch.ops.pycnn.partial_conv2d_backward.default,
                          (gy, x.detach(), one, w.detach(), [1, 2], [1, 0, 2, 1], [1, 1], [True, True, True]))


def test_empty_batch_and_noncontiguous():
    w, b = torch.randn(4, 3, 3, 3), torch.randn(4)
    x = torch.randn(0, 3, 6, 6, requires_grad=True)
    y, m = PF.partial_conv2d(x, torch.ones(0, 1, 6, 6), w, b, padding=1, return_mask=True)
    assert y.shape == (0, 4, 6, 6) and m.shape == (0, 1, 6, 6)
    y.sum().backward()
    assert x.grad.shape == x.shape
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 3, 9, generator=gen, dtype=torch.float64).transpose(1, 3)[:, ::2]  # [2, 5, 3, 8] view
    mask = random_mask((2, 5, 1, 8), gen).transpose(1, 2)[:, :, ::2]                       # [2, 1, 3, 8] view
    w = torch.randn(4, 5, 3, 3, generator=gen, dtype=torch.float64).transpose(2, 3)
    assert not (x.is_contiguous() or mask.is_contiguous() or w.is_contiguous())
    ours = lambda x, m, w, b: PF.partial_conv2d(x, m, w, b, 1, 1, 1, return_mask=True)
    ref = lambda x, m, w, b: torch_partial_conv2d(x, m, w, b, 1, 1, 1)
    check_op(ours, ref, [x, mask, w, None], grad=[True, False, True, False])


def test_unbatched_input():
    x, m, w = torch.randn(3, 6, 6), (torch.rand(1, 6, 6) > 0.5).float(), torch.randn(2, 3, 3, 3)
    y, mo = PF.partial_conv2d(x, m, w, padding=1, return_mask=True)
    y4, mo4 = PF.partial_conv2d(x[None], m[None], w, padding=1, return_mask=True)
    assert torch.equal(y, y4[0]) and torch.equal(mo, mo4[0])


@pytest.mark.parametrize("mask,message", [
    (torch.ones(2, 2, 6, 6), r"mask has shape \(2, 2, 6, 6\).*\[2, 1, 6, 6\] or \[2, 3, 6, 6\]"),
    (torch.ones(1, 1, 6, 6), r"mask has shape \(1, 1, 6, 6\)"),
    (torch.ones(2, 1, 5, 6), r"mask has shape"),
    (torch.full((2, 1, 6, 6), -0.5), r"mask values must lie in \[0, 1\]; mask\[0, 0, 0, 0\] = -0.5"),
    (torch.ones(2, 3, 6, 6).index_put_((torch.tensor(1), torch.tensor(2), torch.tensor(3), torch.tensor(4)),
                                       torch.tensor(1.5)), r"mask\[1, 2, 3, 4\] = 1.5"),
    (torch.ones(2, 1, 6, 6).index_put_((torch.tensor(1), torch.tensor(0), torch.tensor(5), torch.tensor(5)),
                                       torch.tensor(float("nan"))), r"mask\[1, 0, 5, 5\] = nan"),
    (torch.ones(2, 1, 6, 6, dtype=torch.float64), r"mask has dtype torch.float64"),
])
def test_bad_mask(mask, message):
    with pytest.raises((ValueError, TypeError), match=message):
        PF.partial_conv2d(torch.randn(2, 3, 6, 6), mask, torch.randn(4, 3, 3, 3), padding=1)


def test_bad_weight_and_bias():
    x, m = torch.randn(2, 3, 6, 6), torch.ones(2, 1, 6, 6)
    with pytest.raises(ValueError, match="partial_conv2d: weight has 2 input channels per group, input has 3"):
        PF.partial_conv2d(x, m, torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match="partial_conv2d: bias has 3 elements"):
        PF.partial_conv2d(x, m, torch.randn(4, 3, 3, 3), torch.randn(3))
    with pytest.raises(ValueError, match="partial_conv2d: kernel 7x7"):
        PF.partial_conv2d(x, m, torch.randn(4, 3, 7, 7))


def test_module():
    torch.manual_seed(0)
    layer = pnn.PartialConv2d(3, 5, 3, stride=2, padding=1)
    ref = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)
    layer.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 9, 9)
    y, m = layer(x)  # all valid: only the padded border windows are renormalised
    assert torch.equal(m, torch.ones(2, 1, 5, 5))
    torch.testing.assert_close(y[:, :, 1:4, 1:4], ref(x)[:, :, 1:4, 1:4], rtol=1e-5, atol=1e-5)
    mask = torch.ones(2, 3, 9, 9)
    mask[:, :, :5, :5] = 0
    y, m = layer(x, mask)  # a per-channel mask comes back with one channel per output channel
    assert m.shape == (2, 5, 5, 5) and m[:, :, 0, 0].sum() == 0
    ref_y, ref_m = torch_partial_conv2d(x, mask, layer.weight, layer.bias, 2, 1, 1)
    torch.testing.assert_close(y, ref_y, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="PartialConv2d: only groups=1"):
        pnn.PartialConv2d(4, 4, 3, groups=2)


@pytest.mark.skipif(not torch.cuda.is_available() or not pycnn.cuda_available(),
                    reason="needs a CUDA device and pycnn's CUDA module")
@pytest.mark.parametrize("channels", ["one", "all"])
def test_cuda_matches_torch(channels):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 11, 10, generator=gen, dtype=torch.float64)
    mask = random_mask((2, 1 if channels == "one" else 3, 11, 10), gen, "soft")
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(4, generator=gen, dtype=torch.float64)
    ours = lambda x, m, w, b: PF.partial_conv2d(x, m, w, b, 2, 1, 1, return_mask=True)
    ref = lambda x, m, w, b: torch_partial_conv2d(x, m, w, b, 2, 1, 1)
    check_op(ours, ref, [x, mask, w, b], grad=[True, False, True, True], device="cuda")
    with pytest.raises(ValueError, match="mask values must lie in"):
        PF.partial_conv2d(x.cuda(), mask.cuda() * 2, w.cuda())
