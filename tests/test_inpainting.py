"""Inpainting: the data (masks, held-out split), pconv_unet, metrics and baseline, the commands."""
import os

import numpy as np
import pytest
import torch

import pycnn.data as D
import pycnn.models as M
from pycnn import cli
from pycnn.data import inpainting as data
from pycnn.restoration import inpainting as I

TINY = dict(train_patches=12, test_per_image=1, mask_bank=2, sources=("moon",), held_out=("camera",))


@pytest.fixture(scope="module")
def splits():
    return D.get("inpainting", **TINY)


def test_data(splits):
    images, masks = splits.test.tensors
    assert images.shape == masks.shape == (8, 1, 64, 64) and images.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert 0 <= images.min() and images.max() <= 1
    fractions = splits.extra["test"]["hole_fraction"]
    for f in data.HOLE_FRACTIONS:  # each hole covers its fraction of the area (to within one disc)
        holes = 1 - masks[fractions == f].mean(dim=(1, 2, 3))
        assert len(holes) == 2 and torch.all((holes - f).abs() < 0.03), (f, holes)
    assert splits.info["held_out"] == ("camera",) and "camera" not in splits.info["sources"]
    again = D.get("inpainting", **TINY)
    assert torch.equal(again.train.tensors[1], splits.train.tensors[1])
    assert torch.equal(again.test.tensors[0], images)


def test_data_rejects_training_on_held_out_images():
    with pytest.raises(ValueError, match="held out"):
        D.get("inpainting", sources=("moon", "camera"), held_out=("camera",))
    with pytest.raises(ValueError, match="hole_fractions"):
        D.get("inpainting", hole_fractions=(0.3,))


def test_stroke_and_square_masks():
    rng = np.random.default_rng(0)
    for f in (0.1, 0.5):
        for kind in data.MASK_KINDS:
            m = data.make_mask((40, 56), f, kind, rng)
            assert m.shape == (40, 56) and abs((1 - m.mean()) - f) < 0.05


def test_model_any_size_and_keeps_known_pixels():
    torch.manual_seed(0)
    model = M.get("pconv_unet", depth=3, width=4)
    assert M.task("pconv_unet") == "inpaint"
    x = torch.rand(2, 1, 37, 45)
    m = (torch.rand(2, 1, 37, 45) > 0.3).float()
    out = model(x * m, m)
    assert out.shape == x.shape
    out.abs().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    filled = I.predict(model, x, m)
    assert torch.equal(filled[m.bool()], x[m.bool()])
    rgb = M.get("pconv_unet", in_channels=3, depth=2, width=4)
    assert rgb(torch.rand(1, 3, 16, 20), torch.ones(1, 1, 16, 20)).shape == (1, 3, 16, 20)


def test_metrics_and_baseline(splits):
    images, masks = splits.test.tensors
    truth, hole = images[0, 0].numpy(), masks[0, 0].numpy() < 0.5
    perfect = I.image_metrics(truth, truth, hole)
    assert perfect["hole_l1"] == 0 and perfect["ssim"] == pytest.approx(1.0) and perfect["hole_psnr"] >= 99
    grey = truth.copy()
    grey[hole] = 0.5
    worse = I.image_metrics(truth, grey, hole)
    assert worse["hole_l1"] == pytest.approx(np.abs(truth[hole] - 0.5).mean(), rel=1e-5)
    base = I.biharmonic(images[:2], masks[:2])
    assert torch.equal(base[masks[:2].bool()], images[:2][masks[:2].bool()])  # known pixels kept
    assert I.image_metrics(truth, base[0, 0].numpy(), hole)["hole_l1"] < worse["hole_l1"]


def test_fit_evaluate_and_table(splits):
    torch.manual_seed(0)
    model = M.get("pconv_unet", depth=2, width=4)
    history = I.fit(model, splits, epochs=1, batch_size=4, lr=3e-3, progress=False)
    assert len(history["epochs"]) == 1 and np.isfinite(history["epochs"][-1]["loss"])
    table = I.evaluate(model, splits)
    assert set(table) == set(data.HOLE_FRACTIONS) | {"all"} and table["all"]["count"] == 8
    assert set(table[0.5]) == {"count", "ours", "fill", "biharmonic"}
    assert set(table[0.5]["ours"]) == {"hole_psnr", "hole_l1", "psnr", "ssim"}
    text = I.format_table(table)
    assert "50%" in text and "biharm" in text and "fill" in text
    images, masks = splits.test.tensors  # the fill column is smooth_fill alone, scored like the others
    fill = I.fill_only(model, images, masks)
    assert torch.equal(fill[masks.bool()], images[masks.bool()])
    sel = torch.nonzero(splits.extra["test"]["hole_fraction"] == 0.5).flatten().tolist()
    expect = np.mean([I.image_metrics(images[i, 0].numpy(), fill[i, 0].numpy(), masks[i, 0].numpy() < 0.5)["hole_l1"]
                      for i in sel])
    assert table[0.5]["fill"]["hole_l1"] == pytest.approx(expect, rel=1e-6)


def test_commands(tmp_path, capsys):
    from skimage import io
    out = tmp_path / "run"
    opts = []
    for k, v in dict(TINY, sources="('moon',)", held_out="('camera',)").items():
        opts += ["--data-option", f"{k}={v}"]
    rc = cli.main(["train", "--model", "pconv_unet", "--data", "inpainting", *opts, "--model-option", "depth=2",
                   "--model-option", "width=4", "--epochs", "1", "--batch-size", "4", "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0 and "biharm" in text and "50%" in text
    assert I.load_model(str(out / "last.pt")).normalize  # recorded by fit: a new checkpoint loads as trained
    rc = cli.main(["evaluate", "--checkpoint", str(out / "last.pt")])
    text = capsys.readouterr().out
    assert rc == 0 and "hole PSNR" in text
    # the user's own colour image, of a size the model never saw, and a mask file (white = hole)
    image = (np.random.default_rng(0).random((33, 50, 3)) * 255).astype(np.uint8)
    mask = np.zeros((33, 50), np.uint8)
    mask[10:20, 5:30] = 255
    io.imsave(tmp_path / "in.png", image, check_contrast=False)
    io.imsave(tmp_path / "mask.png", mask, check_contrast=False)
    rc = cli.main(["inpaint", "--checkpoint", str(out / "last.pt"), "--image", str(tmp_path / "in.png"),
                   "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "out.png")])
    assert rc == 0, capsys.readouterr().err
    result = io.imread(tmp_path / "out.png")
    assert result.shape == image.shape
    assert np.array_equal(result[mask == 0], image[mask == 0])  # known pixels untouched
    io.imsave(tmp_path / "small.png", mask[:20], check_contrast=False)
    rc = cli.main(["inpaint", "--checkpoint", str(out / "last.pt"), "--image", str(tmp_path / "in.png"),
                   "--mask", str(tmp_path / "small.png"), "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "must be the same size" in err


def test_demo_section(tmp_path, monkeypatch):
    from pycnn import report
    from pycnn.restoration import demo
    monkeypatch.setattr(demo, "QUICK_DATA", dict(TINY, hole_fractions=(0.25, 0.5)))
    rep = report.Report(str(tmp_path), "t")
    os.makedirs(tmp_path, exist_ok=True)
    section = demo.section({"quick": True}, rep)
    assert section.title == "Restoration: inpainting" and "biharmonic" in section.html
    assert (tmp_path / "inpainting_examples.png").read_bytes()[:4] == b"\x89PNG"


def test_smooth_fill_is_a_harmonic_fill():
    from pycnn.models.pconv_unet import smooth_fill
    torch.manual_seed(0)
    x = torch.rand(3, 2, 29, 40, dtype=torch.float64)
    m = (torch.rand(3, 1, 29, 40) > 0.4).double()
    filled = smooth_fill(x * m, m)
    assert filled.shape == x.shape and filled.dtype == torch.float64
    assert torch.equal(filled[m.expand_as(x).bool()], x[m.expand_as(x).bool()])  # known pixels untouched
    assert torch.all(torch.isfinite(filled)) and 0 <= filled.min() and filled.max() <= 1
    # a linear ramp is harmonic: a square hole in it is filled with the ramp itself
    ramp = torch.linspace(0.1, 0.9, 48, dtype=torch.float64).expand(1, 1, 48, 48).clone()
    hole = torch.ones_like(ramp)
    hole[..., 12:36, 12:36] = 0
    assert (smooth_fill(ramp * hole, hole, iters=32) - ramp).abs().max() < 0.02
    # a constant stays constant, nothing known is mid grey, a per-channel mask fills each channel apart
    small = torch.ones(1, 1, 9, 7)
    small[..., 2:6, 1:5] = 0
    assert torch.allclose(smooth_fill(torch.full((1, 1, 9, 7), 0.3) * small, small), torch.full((1, 1, 9, 7), 0.3))
    assert torch.equal(smooth_fill(torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 5, 5)), torch.full((1, 1, 5, 5), 0.5))
    two = torch.stack([torch.full((16, 16), 0.2), torch.full((16, 16), 0.8)])[None]
    per_channel = torch.ones(1, 2, 16, 16)
    per_channel[0, 0, 4:8, 4:8] = 0
    per_channel[0, 1, 8:12, 8:12] = 0
    assert torch.allclose(smooth_fill(two * per_channel, per_channel), two)


def test_untrained_model_returns_the_fill_and_learns_a_residual(splits):
    from pycnn.models.pconv_unet import smooth_fill
    torch.manual_seed(0)
    images, masks = splits.test.tensors
    model = M.get("pconv_unet", depth=2, width=4)
    assert torch.equal(model(images * masks, masks), smooth_fill(images * masks, masks, model.fill_iters))
    # the classical fill alone beats mid grey by far inside the hole
    grey = I.composite(images, masks, torch.full_like(images, 0.5))
    hole = 1 - masks
    err = lambda y: float(((y - images).abs() * hole).sum() / hole.sum())
    assert err(smooth_fill(images * masks, masks)) < 0.75 * err(grey)
    loss = I.loss_fn(model(images * masks, masks), images, masks)
    loss.backward()
    assert model.decoders[-1].weight.grad.abs().sum() > 0  # the zero-initialised last layer gets a gradient
    plain = M.get("pconv_unet", depth=2, width=4, fill_iters=0)  # the plain U-Net (no fill) is still there
    assert plain.encoders[0].weight.shape[1] == 1 and model.encoders[0].weight.shape[1] == 2
    with pytest.raises(ValueError, match="fill_iters"):
        M.get("pconv_unet", fill_iters=-1)


def test_checkpoint_of_the_plain_unet_still_loads(tmp_path):
    from pycnn.train import save_checkpoint
    torch.manual_seed(0)
    plain = M.get("pconv_unet", depth=2, width=4, fill_iters=0, normalize=False)  # as built before both options
    save_checkpoint(str(tmp_path / "old.pt"), {"model": plain.state_dict(), "epoch": 1, "task": "inpaint",
                                               "config": {"model": "pconv_unet", "model_kwargs": {"depth": 2, "width": 4}}})
    loaded = I.load_model(str(tmp_path / "old.pt"))
    assert loaded.fill_iters == 0
    x, m = torch.rand(1, 1, 16, 16), (torch.rand(1, 1, 16, 16) > 0.3).float()
    assert torch.equal(loaded(x * m, m), plain.eval()(x * m, m))


def test_loss_counts_each_images_hole_psnr():
    image = torch.full((2, 1, 16, 16), 0.7)
    image[1] = torch.rand(1, 16, 16, generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(image)
    mask[..., 4:12, 4:12] = 0
    perfect = I.loss_fn(image, image, mask)
    assert perfect == pytest.approx(I.PSNR_WEIGHT * np.log10(I.PSNR_FLOOR))
    off = image + 0.01 * (1 - mask)  # a small error in the holes
    l1_part = I.HOLE_WEIGHT * 0.01 * 0.25
    # the floored hole MSE rises from PSNR_FLOOR to 1e-4 + PSNR_FLOOR: the PSNR term outweighs the L1 term
    rise = np.log10((1e-4 + I.PSNR_FLOOR) / I.PSNR_FLOOR)
    assert I.loss_fn(off, image, mask) - perfect == pytest.approx(l1_part + I.PSNR_WEIGHT * rise, rel=1e-4)
    assert I.PSNR_WEIGHT * rise > l1_part


def test_photo_sources_and_a_test_split_that_does_not_depend_on_them(splits):
    photo = data.load_grey("china")
    assert photo.shape == (427, 640) and photo.dtype == np.float32 and 0 <= photo.min() < photo.max() <= 1
    other = D.get("inpainting", **dict(TINY, train_patches=4, sources=("grace_hopper",)))
    ref = splits
    assert torch.equal(other.test.tensors[0], ref.test.tensors[0])  # same held-out patches and masks
    assert torch.equal(other.test.tensors[1], ref.test.tensors[1])
    assert not torch.equal(other.train.tensors[0], ref.train.tensors[0])
    with pytest.raises(ValueError, match="held out"):  # scikit-image's cat is the held-out chelsea
        D.get("inpainting", sources=("cat",), held_out=("chelsea",))


def test_normalized_model_is_equivariant_to_contrast_and_brightness(monkeypatch):
    import importlib
    P = importlib.import_module("pycnn.models.pconv_unet")  # the module (pycnn.models.pconv_unet is also a function)
    monkeypatch.setattr(P, "NORM_FLOOR", 0.0)  # exact equivariance without the floor
    torch.manual_seed(0)
    model = M.get("pconv_unet", depth=2, width=4).double()  # normalize=True is the default
    for p in model.parameters():  # a non-zero correction (the last layer starts at zero)
        torch.nn.init.normal_(p, std=0.3)
    x = torch.rand(2, 1, 24, 20, dtype=torch.float64)
    m = torch.ones_like(x)
    m[..., 6:18, 4:15] = 0
    out = model(x * m, m)
    assert (out - P.smooth_fill(x * m, m)).abs().mean() > 1e-3
    y = 0.3 * x + 0.2  # less contrast, brighter: the same fill and correction, rescaled
    assert torch.allclose(model(y * m, m), 0.3 * out + 0.2, atol=1e-9)
    plain = M.get("pconv_unet", depth=2, width=4, normalize=False).double()
    plain.load_state_dict(model.state_dict())
    assert not torch.allclose(plain(y * m, m), 0.3 * plain(x * m, m) + 0.2, atol=1e-4)  # the test can fail
