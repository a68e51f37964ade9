"""pycnn.models: every model builds by name, runs forward and backward, is made of pycnn layers,
and computes what its torch.nn twin (pycnn.nn.to_torch) computes."""
import copy

import pytest
import torch
from torch import nn

import pycnn.models as M
import pycnn.nn as pnn

TORCH_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d, nn.MaxUnpool2d, nn.BatchNorm2d, nn.Linear)
PYCNN_LAYERS = (pnn.Conv2d, pnn.ConvTranspose2d, pnn.MaxPool2d, pnn.BatchNorm2d, pnn.Linear, pnn.DepthwiseConv2d)

CLASSIFIERS = {
    "linear_classifier": {}, "mlp": {"hidden": 16}, "lenet5": {}, "simple_cnn": {"width": 4, "hidden": 8},
    "resnet": {"depth": 8, "width": 4}, "separable_cnn": {"widths": (4, 8)},
}


def test_names_and_tasks():
    assert M.names() == sorted(["linear_classifier", "mlp", "lenet5", "simple_cnn", "resnet", "separable_cnn", "unet",
                                "mask_rcnn", "srcnn", "fsrcnn", "espcn", "pconv_unet"])
    assert M.task("unet") == "segment" and M.task("lenet5") == "classify" and M.task("mask_rcnn") == "detect"
    assert M.task("espcn") == "super_resolution"
    assert M.task("pconv_unet") == "inpaint"


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
@pytest.mark.parametrize("size", [8, (12, 10)])
def test_classifier_shapes_and_layers(name, size):
    torch.manual_seed(0)
    model = M.get(name, in_channels=2, num_classes=5, image_size=size, **CLASSIFIERS[name])
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.randn(3, 2, h, w)
    y = model(x)
    assert y.shape == (3, 5)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    _assert_pycnn_only(model)


def _assert_pycnn_only(model):
    kinds = [type(m) for m in model.modules()]
    assert not [k for k in kinds if k in TORCH_LAYERS], "a torch.nn layer was used where a pycnn one exists"
    assert any(issubclass(k, PYCNN_LAYERS) for k in kinds)


@pytest.mark.parametrize("name", ["mlp", "lenet5", "simple_cnn", "resnet", "separable_cnn", "unet"])
def test_activations_are_relu_modules(name):
    kw = {"in_channels": 1, "num_classes": 3}
    kw.update({} if name == "unet" else {"image_size": 8})
    assert any(isinstance(m, nn.ReLU) for m in M.get(name, **kw).modules())


def test_lenet5_classic_shape_at_28():
    """On 28 x 28 (MNIST-sized, conv1 padded by 2) LeNet-5 has its classic 16 x 5 x 5 -> 120 -> 84 head."""
    model = M.get("lenet5", in_channels=1, num_classes=10, image_size=28)
    linears = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, pnn.Linear)]
    assert linears == [(400, 120), (120, 84), (84, 10)]
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)


@pytest.mark.parametrize("hw", [(16, 16), (13, 17), (9, 8)])
def test_unet_output_matches_input_size(hw):
    torch.manual_seed(0)
    model = M.get("unet", in_channels=1, num_classes=3, depth=2, width=4)
    x = torch.randn(2, 1, *hw)
    y = model(x)
    assert y.shape == (2, 3, *hw)
    y.square().mean().backward()
    _assert_pycnn_only(model)
    assert any(isinstance(m, pnn.ConvTranspose2d) for m in model.modules())


@pytest.mark.parametrize("name,kw", [
    ("lenet5", {"image_size": 12}), ("resnet", {"image_size": 8, "depth": 8, "width": 4}),
    ("separable_cnn", {"image_size": 8, "widths": (4,)}), ("unet", {"depth": 2, "width": 4}),
])
def test_model_equals_its_torch_twin(name, kw):
    """The same weights give the same outputs and gradients with torch.nn layers (float64)."""
    torch.manual_seed(0)
    ours = M.get(name, in_channels=1, num_classes=4, **kw).double()
    ref = pnn.to_torch(copy.deepcopy(ours))
    assert not any(isinstance(m, PYCNN_LAYERS) for m in ref.modules())
    x = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    for mode in ("train", "eval"):
        getattr(ours, mode)(), getattr(ref, mode)()
        out_ours, out_ref = ours(x), ref(x)
        torch.testing.assert_close(out_ours, out_ref)
        out_ours.sum().backward()
        out_ref.sum().backward()
        for (n, a), b in zip(ours.named_parameters(), ref.parameters()):
            torch.testing.assert_close(a.grad, b.grad, msg=lambda m: f"{n}: {m}")


def test_resnet_depth_sets_block_count():
    for depth, blocks in ((8, 3), (14, 6), (20, 9)):
        model = M.get("resnet", in_channels=3, num_classes=10, depth=depth, width=4)
        assert sum(isinstance(m, M.BasicBlock) for m in model.modules()) == blocks


@pytest.mark.parametrize("name,kw,exc,match", [
    ("vgg", {}, ValueError, "unknown model 'vgg'"),
    ("resnet", {"depth": 10}, ValueError, "6n \\+ 2"),
    ("lenet5", {"colour": True}, TypeError, "lenet5"),
    ("lenet5", {"num_classes": 1}, ValueError, "num_classes"),
    ("lenet5", {"image_size": 2}, ValueError, "too small"),
    ("unet", {"depth": 0}, ValueError, "depth"),
    ("mlp", {"image_size": 0}, ValueError, "image_size"),
])
def test_bad_arguments(name, kw, exc, match):
    with pytest.raises(exc, match=match):
        M.get(name, **kw)


def test_unet_too_small_input_is_a_clear_error():
    with pytest.raises(ValueError, match="too small"):
        M.get("unet", depth=3, width=2)(torch.randn(1, 1, 4, 4))
