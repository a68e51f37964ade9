"""pycnn.viz features (filter mosaic, activations, top patches, t-SNE) and pycnn.viz.plot."""
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pycnn.viz import (activation_grid, activations, filter_mosaic, plot, top_patches, tsne)


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                         nn.Conv2d(4, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 2 * 2, 3))


def hooks_left(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_filter_mosaic_layout_and_range():
    w = torch.randn(6, 3, 5, 5)
    img = filter_mosaic(w)  # colour tiles, 2 rows x 3 columns of 5x5 with 1-pixel gaps
    assert img.shape == (2 * 6 + 1, 3 * 6 + 1, 3) and img.min() >= 0 and img.max() <= 1
    # each tile is the filter itself (HWC), stretched to [0, 1]
    f = w[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(img[1:6, 1:6], (f - f.min()) / (f.max() - f.min()), rtol=1e-6, atol=1e-6)
    grey = filter_mosaic(nn.Conv2d(2, 4, 3))  # one row per filter, one column per input channel
    assert grey.shape == (4 * 4 + 1, 2 * 4 + 1, 3)
    assert np.allclose(grey[..., 0], grey[..., 2])
    # 'all' keeps relative strength: a filter 10x weaker stays darker-contrast
    w2 = torch.stack([torch.linspace(-1, 1, 9).view(1, 3, 3), 0.1 * torch.linspace(-1, 1, 9).view(1, 3, 3)])
    tiles = filter_mosaic(w2, normalize="all", ncols=2)
    assert np.ptp(tiles[1:4, 1:4]) > 5 * np.ptp(tiles[1:4, 5:8])
    with pytest.raises(ValueError, match="4-D"):
        filter_mosaic(torch.randn(3, 3))


def test_activations_are_the_layer_outputs():
    model, x = cnn(), torch.randn(2, 3, 8, 8)
    acts = activations(model, x, ["0", model[3]])
    assert list(acts) == ["0", "3"]
    torch.testing.assert_close(acts["0"], F.conv2d(x, model[0].weight, model[0].bias, padding=1))
    # the in-place ReLU after layer 0 must not have rewritten what we captured
    assert (acts["0"] < 0).any()
    assert acts["3"].shape == (2, 5, 2, 2) and hooks_left(model) == 0
    fig, ax = activation_grid(acts["0"], title="conv0")
    assert fig is ax.figure
    with pytest.raises(ValueError, match="no layer named"):
        activations(model, x, "missing")
    assert hooks_left(model) == 0


def test_activations_stop_before_head():
    # The head only accepts 8x8 inputs; reading layer 0 on a 12x12 image must still work.
    model, x = cnn(), torch.randn(1, 3, 12, 12)
    assert activations(model, x, "0")["0"].shape == (1, 4, 12, 12)


def test_top_patches_finds_the_planted_pattern():
    # Channel 0 of a single conv responds to a bright 3x3 blob; plant it in three images.
    conv = nn.Conv2d(1, 2, 3, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0] = 1.0
        conv.weight[1] = -1.0
    model = nn.Sequential(conv, nn.ReLU())
    torch.manual_seed(0)
    images = 0.1 * torch.rand(6, 1, 10, 10)
    spots = {1: (2, 5), 4: (6, 1), 5: (0, 0)}
    for i, (r, c) in spots.items():
        images[i, 0, r:r + 3, c:c + 3] += torch.tensor([1.0, 2.0, 3.0]).view(3, 1) if i == 4 else 1.0
    res = top_patches(model, "0", 0, images, k=3)
    assert sorted(res.image_indices.tolist()) == [1, 4, 5]
    assert res.image_indices[0] == 4  # strongest blob first
    for i, box, patch in zip(res.image_indices.tolist(), res.boxes, res.patches):
        r, c = spots[i]
        assert box == (r, c, r + 3, c + 3)  # the 3x3 receptive field of the peak unit
        assert patch.shape == (1, 3, 3)
    assert (res.scores[:-1] >= res.scores[1:]).all() and hooks_left(model) == 0
    with pytest.raises(ValueError, match="channel 7"):
        top_patches(model, "0", 7, images)


def test_top_patches_receptive_field_through_pooling():
    # conv3 -> pool2 -> conv3: a unit sees 3 + 2 * (3 - 1) + 1 = 8 pixels at most; the dead-ReLU
    # units must not shrink it (ReLUs are opened when tracing the field).
    model, images = cnn(1), torch.randn(5, 3, 12, 12)
    res = top_patches(model, model[3], 2, images, k=4)
    for (t, l, b, r), patch in zip(res.boxes, res.patches):
        assert 1 <= b - t <= 8 and 1 <= r - l <= 8 and patch.shape[1:] == (b - t, r - l)


def test_tsne_separates_two_clusters():
    pytest.importorskip("sklearn")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
    images = torch.cat([torch.randn(15, 1, 4, 4) + 4, torch.randn(15, 1, 4, 4) - 4])
    labels = [0] * 15 + [1] * 15
    emb, fig, ax = tsne(model, "1", images, labels, perplexity=5, max_iter=250)
    assert emb.shape == (30, 2) and fig is ax.figure
    a, b = emb[:15].mean(0), emb[15:].mean(0)
    spread = max(emb[:15].std(0).max(), emb[15:].std(0).max())
    assert np.linalg.norm(a - b) > 2 * spread
    emb2, no_fig, _ = tsne(model, "1", images, plot=False, max_iter=250)
    assert no_fig is None and emb2.shape == (30, 2)


def test_plot_conventions(tmp_path):
    chw = torch.rand(3, 5, 7)
    img = plot.to_image(chw)
    assert img.shape == (5, 7, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img, chw.permute(1, 2, 0).numpy())
    assert plot.to_image(np.random.rand(5, 7)).shape == (5, 7, 3)          # grey -> RGB
    assert plot.to_image(torch.randn(1, 1, 5, 7)).max() <= 1.0             # stretched into [0, 1]
    fig, ax = plot.overlay(chw, torch.rand(1, 1, 2, 3), title="cam")      # heatmap upsampled
    fig2, ax2 = plot.image_grid(torch.rand(5, 1, 4, 4), titles=list("abcde"))
    fig3, ax3 = plot.show_image(chw, ax=ax2)
    assert ax3 is ax2 and fig3 is fig2
    path = plot.save(fig, str(tmp_path / "sub" / "overlay.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        plot.to_image(torch.rand(5, 4, 4, 4))


def _pycnn_report_model():
    # No skip when the model fails to run: a broken pycnn kernel must fail the tests using it.
    import pycnn.models as models

    model = models.get("lenet5", in_channels=1, num_classes=3, image_size=8)
    model(torch.zeros(1, 1, 8, 8))
    return model


def test_report_section_has_every_method(tmp_path, monkeypatch):
    # The demo's case: a pycnn model (torch.nn models are covered by every other test).
    from pycnn.viz.report_section import add_viz_section

    torch.manual_seed(0)
    model = _pycnn_report_model().train()
    images, labels = torch.rand(12, 1, 8, 8), torch.arange(12) % 3
    titles = _titles(monkeypatch)
    html = add_viz_section(str(tmp_path), model, images, labels, class_names=["cat", "dog", "emu"], quick=True,
                           max_examples=2)
    assert "failed" not in html, html
    # classes by name with the confidence, layers by kind and position (not a bare "3")
    preds = [t for t in titles if t.startswith("pred ")]
    assert len(preds) == 2 and all(t.split()[1] in ("cat", "dog", "emu") and "%" in t and "(true " in t
                                   for t in preds), preds
    assert "Grad-CAM at conv2 (layer 3)" in html and "features at conv2 (layer 3)" in html
    for t in ("filters of conv1 (layer 0)", "t-SNE of conv2 (layer 3)", "dream at conv2 (layer 3)"):
        assert any(x.startswith(t) for x in titles), (t, titles)
    assert {"cat", "dog", "emu"} <= set(titles)  # the class models
    for title in ("Attribution", "FGSM", "filters", "Feature maps", "Top patches", "t-SNE", "Class models",
                  "Deep dream", "Style transfer", "matrix"):
        assert title in html
    pngs = sorted(p.name for p in (tmp_path / "viz").iterdir())
    assert len(pngs) == 10 and all(f'src="viz/{p}"' in html for p in pngs)
    assert model.training and hooks_left(model) == 0


@pytest.fixture
def viz_checkpoint(tmp_path):
    """A 3-class LeNet-5 checkpoint that names its classes, and a 10x10 image for it."""
    import pycnn.train as T

    model = _pycnn_report_model()
    ckpt = str(tmp_path / "m.pt")
    T.save_checkpoint(ckpt, {"model": model.state_dict(), "epoch": 0, "classes": ["brick", "grass", "gravel"],
                             "config": {"model": "lenet5",
                                        "model_kwargs": {"in_channels": 1, "num_classes": 3, "image_size": 8}}})
    image = str(tmp_path / "x.npy")
    np.save(image, np.random.rand(10, 10).astype(np.float32))  # resized to the model's 8x8
    return ckpt, image


def _viz(argv):
    from pycnn.cli import main

    return main(["viz"] + argv)


def test_pycnn_viz_command(tmp_path, viz_checkpoint, capsys):
    from pycnn.viz.cli import main_viz

    ckpt, image = viz_checkpoint
    for method in ("grad_cam", "saliency", "fgsm"):
        out = str(tmp_path / f"{method}.png")
        assert _viz(["--checkpoint", ckpt, "--image", image, "--method", method, "--out", out]) == 0
        with open(out, "rb") as f:
            assert f.read(4) == b"\x89PNG"
    assert main_viz(["--checkpoint", str(tmp_path / "missing.pt"), "--image", image]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("ext,magic", [(".jpg", b"\xff\xd8\xff"), (".pdf", b"%PDF"),
                                       (".svg", b"<?xml"), ("", b"\x89PNG")])
def test_viz_writes_the_format_its_extension_names(tmp_path, viz_checkpoint, ext, magic):
    ckpt, image = viz_checkpoint
    out = str(tmp_path / f"fig{ext}")
    assert _viz(["--checkpoint", ckpt, "--image", image, "--method", "saliency", "--out", out]) == 0
    with open(out, "rb") as f:
        assert f.read(len(magic)) == magic


def test_plot_save_refuses_unknown_extensions(tmp_path):
    fig, _ = plot.show_image(torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match=r"'\.gfx'.*\.png"):
        plot.save(fig, str(tmp_path / "fig.gfx"))
    assert not (tmp_path / "fig.gfx").exists()
    assert plot.save(fig, str(tmp_path / "fig.JPG")) and (tmp_path / "fig.JPG").read_bytes()[:3] == b"\xff\xd8\xff"


def _one_line_error(rc, err, *fragments):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("pycnn viz: error: ")
    for f in fragments:
        assert f in lines[0], lines[0]


def test_viz_user_errors_are_one_line(tmp_path, viz_checkpoint, capsys):
    ckpt, image = viz_checkpoint
    text = tmp_path / "notanimage.png"
    text.write_text("hello")
    source = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_viz_features.py")
    bad_npy = tmp_path / "bad.npy"
    bad_npy.write_bytes(b"\x93NUMPY garbage")
    cases = [
        (["--image", str(text)], ["notanimage.png", "not an image"]),
        (["--image", source], ["test_viz_features.py", "not an image"]),
        (["--image", str(bad_npy)], ["bad.npy", "not an image"]),
        (["--image", str(tmp_path)], ["no such file"]),
        (["--image", str(tmp_path / "missing.png")], ["missing.png", "no such file"]),
        (["--image", image, "--out", str(tmp_path / "fig.gfx")], ["unknown image format '.gfx'"]),
        (["--image", image, "--target", "sand"], ["'sand'", "brick, grass, gravel"]),
        (["--image", image, "--target", "7"], ["--target 7", "3 classes"]),
        (["--image", image, "--layer", "nope"], ["no layer named 'nope'"]),
        (["--image", image, "--method", "filters", "--layer", "1"], ["needs a convolution layer", "0, 3"]),
        (["--image", "test:0"], ["does not name its dataset"]),
    ]
    for extra, fragments in cases:
        rc = _viz(["--checkpoint", ckpt, "--out", str(tmp_path / "fig.png")] + extra)
        _one_line_error(rc, capsys.readouterr().err, *fragments)
    assert not (tmp_path / "fig.gfx").exists()


def _titles(monkeypatch):
    """Captures the titles of every figure saved through pycnn.viz.plot.save."""
    seen = []
    original = plot.save

    def save(fig, path, **kw):
        seen.extend(ax.get_title() for ax in fig.axes)
        return original(fig, path, **kw)

    monkeypatch.setattr(plot, "save", save)
    return seen


@pytest.mark.parametrize("method,fragments", [
    ("grad_cam", ["predicted ", "%)", "Grad-CAM at conv2 (layer 3)", ", class "]),
    ("fgsm", ["FGSM: now predicted "]),
    ("activations", ["feature maps of conv2 (layer 3)"]),
])
def test_viz_figures_name_classes_and_layers(tmp_path, viz_checkpoint, monkeypatch, method, fragments):
    ckpt, image = viz_checkpoint
    titles = _titles(monkeypatch)
    assert _viz(["--checkpoint", ckpt, "--image", image, "--method", method, "--target", "grass",
                 "--out", str(tmp_path / "f.png")]) == 0
    text = " | ".join(titles)
    for f in fragments:
        assert f in text, text
    assert any(name in titles[0] for name in ("brick", "grass", "gravel")), titles  # the prediction, by name
    if method == "grad_cam":
        assert titles[1].endswith("class grass")


def test_viz_class_names_fall_back_to_the_data_set(tmp_path, monkeypatch):
    # A checkpoint without "classes" (older ones) takes the names of the data set it was trained on.
    import pycnn.models as models
    import pycnn.train as T

    model = models.get("lenet5", in_channels=1, num_classes=2, image_size=8)
    ckpt = str(tmp_path / "faces.pt")
    T.save_checkpoint(ckpt, {"model": model.state_dict(), "epoch": 0,
                             "config": {"model": "lenet5", "data": "faces", "data_kwargs": {"size": 8},
                                        "model_kwargs": {"in_channels": 1, "num_classes": 2, "image_size": 8}}})
    titles = _titles(monkeypatch)
    assert _viz(["--checkpoint", ckpt, "--image", "test:0", "--method", "saliency", "--target", "face",
                 "--out", str(tmp_path / "f.png")]) == 0
    assert re.fullmatch(r"predicted (non_)?face \(\d+%\), true (non_)?face", titles[0]), titles
    assert titles[1].endswith("class face"), titles


def test_describe_layer():
    from pycnn.viz._common import describe_layer

    model = _pycnn_report_model()
    assert describe_layer(model, "0") == "conv1 (layer 0)"
    assert describe_layer(model, "3") == "conv2 (layer 3)"
    assert describe_layer(model, "1").endswith("(layer 1)") and not describe_layer(model, "1").startswith("conv")

    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.stem(x)

    named = Named()
    assert describe_layer(named, "stem") == "stem (Conv2d)"
    assert describe_layer(named, named.stem) == "stem (Conv2d)"
