"""pycnn.explain: the convolution matrix C with conv2d(x).flatten() == C @ x.flatten() and
conv_transpose2d(y) == C.T @ y, checked against pycnn's own ops and against torch."""
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings, strategies as st

import pycnn.functional as PF
from pycnn.explain import conv_matrix, conv_matrix_figure, conv_output_shape, conv_transpose_output_padding

CASES = [
    # (in_channels, out_channels, H, W, kernel, stride, padding, dilation, groups)
    (1, 1, 4, 4, (3, 3), 1, 0, 1, 1),      # the lecture's 4x16 example
    (2, 3, 5, 6, (3, 2), 2, 1, 1, 1),
    (3, 2, 7, 7, (3, 3), (2, 1), (0, 2), (2, 1), 1),
    (4, 6, 6, 5, (2, 2), 1, 1, 1, 2),      # grouped
    (2, 2, 5, 5, (1, 1), 3, 0, 1, 1),
]


def _pycnn_or_skip(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (NotImplementedError, AttributeError) as e:  # an op still being written
        pytest.skip(f"pycnn op not available yet: {e}")
    except RuntimeError as e:
        if "not implemented" in str(e):
            pytest.skip(f"pycnn op not available yet: {e}")
        raise


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_conv_matrix_identities(case, dtype):
    cin, cout, h, w, k, s, p, d, g = case
    torch.manual_seed(0)
    weight = torch.randn(cout, cin // g, *k, dtype=dtype)
    x = torch.randn(2, cin, h, w, dtype=dtype)
    C = conv_matrix(weight, (cin, h, w), stride=s, padding=p, dilation=d, groups=g)
    co, ho, wo = conv_output_shape(weight, (cin, h, w), s, p, d, g)
    assert C.shape == (co * ho * wo, cin * h * w) and C.dtype == dtype
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    by_matrix = (C @ x.reshape(2, -1).T).T
    # against torch (the reference) ...
    torch.testing.assert_close(by_matrix, TF.conv2d(x, weight, None, s, p, d, g).reshape(2, -1), **tol)
    # ... and against pycnn's own convolution and transposed convolution
    ours = _pycnn_or_skip(PF.conv2d, x, weight, None, s, p, d, g)
    torch.testing.assert_close(by_matrix, ours.reshape(2, -1), **tol)
    y = torch.randn(2, co, ho, wo, dtype=dtype)
    op = conv_transpose_output_padding(weight, (cin, h, w), s, p, d, g)
    back = _pycnn_or_skip(PF.conv_transpose2d, y, weight, None, s, p, op, g, d)
    assert back.shape == x.shape
    torch.testing.assert_close((C.T @ y.reshape(2, -1).T).T, back.reshape(2, -1), **tol)
    # and C.T is conv2d's input-gradient (the reason the transposed convolution exists)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((TF.conv2d(xg, weight, None, s, p, d, g) * y).sum(), xg)
    torch.testing.assert_close((C.T @ y.reshape(2, -1).T).T, grad.reshape(2, -1), **tol)


def test_lecture_example_structure():
    # 3x3 kernel over a 4x4 image: 4 rows (output pixels), 16 columns, 9 nonzeros per row, each
    # row the kernel shifted (rows 0 and 1 differ by one column, rows 0 and 2 by one image row).
    weight = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    C = conv_matrix(weight, (4, 4))
    assert C.shape == (4, 16) and (C != 0).sum(1).tolist() == [9, 9, 9, 9]
    assert C[0].tolist() == [1, 2, 3, 0, 4, 5, 6, 0, 7, 8, 9, 0, 0, 0, 0, 0]
    torch.testing.assert_close(C[1], torch.roll(C[0], 1))
    torch.testing.assert_close(C[2], torch.roll(C[0], 4))
    fig, ax = conv_matrix_figure(weight, (4, 4))
    assert fig is ax.figure


@settings(max_examples=15, deadline=None)
@given(h=st.integers(3, 7), w=st.integers(3, 7), k=st.integers(1, 3), s=st.integers(1, 3), p=st.integers(0, 2),
       d=st.integers(1, 2))
def test_conv_matrix_property(h, w, k, s, p, d):
    if d * (k - 1) + 1 > min(h, w) + 2 * p:
        return
    weight = torch.randn(2, 2, k, k, dtype=torch.float64)
    x = torch.randn(1, 2, h, w, dtype=torch.float64)
    C = conv_matrix(weight, (2, h, w), s, p, d)
    torch.testing.assert_close(C @ x.flatten(), TF.conv2d(x, weight, None, s, p, d).flatten())


def test_bad_arguments():
    w = torch.randn(2, 3, 3, 3)
    with pytest.raises(ValueError, match="3 channels|expects 3"):
        conv_matrix(w, (4, 5, 5))
    with pytest.raises(ValueError, match="does not fit"):
        conv_matrix(w, (3, 2, 2))
    with pytest.raises(ValueError, match="4-D"):
        conv_matrix(torch.randn(3, 3), (3, 5, 5))
    with pytest.raises(ValueError, match="groups"):
        conv_matrix(w, (3, 5, 5), groups=4)
