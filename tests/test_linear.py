import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import pycnn.functional as PF
from reference import check_op, gradcheck


@pytest.mark.parametrize("shape_in,out_features,bias", [
    ((5, 7), 3, True), ((5, 7), 3, False), ((2, 3, 9), 4, True), ((7,), 2, True), ((0, 4), 3, True),
    ((33, 65), 17, True), ((1, 1), 1, False),
])
def test_linear_matches_torch(shape_in, out_features, bias):
    x = torch.randn(shape_in)
    w = torch.randn(out_features, shape_in[-1])
    b = torch.randn(out_features) if bias else None
    check_op(PF.linear, F.linear, [x, w, b])


def test_linear_non_contiguous_input():
    x = torch.randn(8, 6).t()  # [6, 8], not contiguous
    w = torch.randn(3, 8)[:, :]
    w_nc = torch.randn(8, 3).t()
    check_op(PF.linear, F.linear, [x, w, None])
    check_op(PF.linear, F.linear, [x, w_nc, None])


def test_linear_one_d_weight():
    check_op(PF.linear, F.linear, [torch.randn(4, 5), torch.randn(5), None])


@settings(max_examples=25, deadline=None)
@given(m=st.integers(0, 40), k=st.integers(1, 70), n=st.integers(1, 40), bias=st.booleans())
def test_linear_property(m, k, n, bias):
    check_op(PF.linear, F.linear, [torch.randn(m, k), torch.randn(n, k), torch.randn(n) if bias else None])


def test_linear_gradcheck():
    assert gradcheck(PF.linear, [torch.randn(4, 6), torch.randn(3, 6), torch.randn(3)])


def test_linear_opcheck():
    args = (torch.randn(4, 6, dtype=torch.float64, requires_grad=True),
            torch.randn(3, 6, dtype=torch.float64, requires_grad=True), torch.randn(3, dtype=torch.float64))
    torch.library.opcheck(torch.ops.pycnn.linear.default, args)


@pytest.mark.parametrize("args,exc,match", [
    ((torch.randn(4, 6), torch.randn(3, 5)), ValueError, "6 features"),
    ((torch.randn(4, 6), torch.randn(3, 6), torch.randn(4)), ValueError, r"bias of shape \(4,\) does not broadcast"),
    ((torch.randn(4, 6), torch.randn(3, 6).double()), TypeError, "float64"),
    ((torch.ones(4, 6, dtype=torch.int32), torch.ones(3, 6, dtype=torch.int32)), TypeError, "int32"),
    ((torch.randn(4, 6), torch.randn(2, 3, 6)), ValueError, "weight must be"),
    ((torch.randn(4, 6, device="meta"), torch.randn(3, 6, device="meta")), RuntimeError, "meta"),
])
def test_linear_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        PF.linear(*args)
