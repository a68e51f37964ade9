"""ONNX export of converted models, both torch exporters, run in onnxruntime against pycnn.

A model converted to pycnn layers is exported with torch.onnx (dynamo=True with
pycnn.onnx.translation_table(), and dynamo=False with the symbolics pycnn.onnx registers), then
onnxruntime runs the file and must give pycnn's outputs (and pooling indices, exactly).
"""
import warnings

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import pycnn.nn as pnn  # noqa: E402
import pycnn.onnx  # noqa: E402


class SmallCNN(nn.Module):
    """conv, bn, relu, maxpool, depthwise, grouped and unbiased convs, 'same' even kernel, linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8),  # depthwise
            nn.BatchNorm2d(8, affine=False),
            nn.Conv2d(8, 4, 2, padding="same", groups=2, bias=False), nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1, dilation=1))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 3 * 3, 6), nn.ReLU(), nn.Linear(6, 5, bias=False))

    def forward(self, x):
        return self.head(self.features(x))


class UpModel(nn.Module):
    """maxpool with indices, unpool (to an explicit size), transposed convs, batch-statistics bn."""

    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, return_indices=True)
        self.unpool = nn.MaxUnpool2d(3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)
        self.up2 = nn.ConvTranspose2d(4, 2, 2, stride=1, dilation=2, groups=2, bias=False)
        self.bn = nn.BatchNorm2d(2, track_running_stats=False)  # batch statistics in eval too

    def forward(self, x):
        y, idx = self.pool(x)
        z = self.unpool(y, idx, output_size=x.shape)
        return self.bn(self.up2(self.up(z))), idx


def _model(cls):
    torch.manual_seed(0)
    model = cls()
    for m in model.modules():  # running statistics that are not the identity
        if isinstance(m, nn.BatchNorm2d) and m.track_running_stats:
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    converted = pnn.convert(model).eval()
    assert all(type(m) not in (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.MaxPool2d) for m in converted.modules())
    return converted


def _export(model, x, path, exporter):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation warning
        if exporter == "torchscript":
            torch.onnx.export(model, (x,), path, dynamo=False)
        elif exporter == "dynamo-table":  # optimize=False keeps every translated node to look at
            torch.onnx.export(model, (x,), path, dynamo=True, optimize=False,
                              custom_translation_table=pycnn.onnx.translation_table())
        else:  # pycnn.onnx.export: torch.onnx.export (dynamo, optimized) with the table merged in
            pycnn.onnx.export(model, (x,), path)


# Each dynamo export costs seconds: SmallCNN goes through the helper, UpModel through the table.
@pytest.mark.parametrize("cls,exporter", [(SmallCNN, "torchscript"), (SmallCNN, "helper"),
                                          (UpModel, "torchscript"), (UpModel, "dynamo-table")])
def test_exported_model_runs_in_onnxruntime_like_pycnn(cls, exporter, tmp_path):
    model = _model(cls)
    x = torch.randn(2, 3, 11, 11)
    with torch.no_grad():
        ours = model(x)
    ours = ours if isinstance(ours, tuple) else (ours,)
    path = str(tmp_path / "model.onnx")
    _export(model, x, path, exporter)
    import onnx
    nodes = onnx.load(path).graph.node
    assert not any(n.domain == "pycnn" for n in nodes)
    # (the optimizer folds eval-mode BatchNormalization into the Conv before it)
    want = {"Conv", "MaxPool", "Gemm"} if cls is SmallCNN else {"MaxPool", "MaxUnpool", "ConvTranspose"}
    if exporter != "helper":
        want.add("BatchNormalization")
    assert want <= {n.op_type for n in nodes}
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    theirs = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert len(theirs) == len(ours)
    for t, o in zip(theirs, ours):
        if o.is_floating_point():
            np.testing.assert_allclose(t, o.numpy(), rtol=1e-4, atol=1e-5)
        else:  # pooling indices: per plane, as torch numbers them
            np.testing.assert_array_equal(t, o.numpy())

