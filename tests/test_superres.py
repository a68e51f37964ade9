"""Super-resolution: models, data, metrics, training and the `pycnn upscale` command."""
import math

import numpy as np
import pytest
import torch

import pycnn.data as D
import pycnn.functional as PF
import pycnn.models as M
import pycnn.nn as pnn
import pycnn.superres as SR
from pycnn import cli
from pycnn.data import superres as DS

# Small, quick training sources for the tests (the full list takes seconds more to resize).
SMALL = ("coins", "page", "text", "cell")


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- models -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["srcnn", "fsrcnn", "espcn"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_models_upscale_by_scale_on_any_size(name, scale):
    torch.manual_seed(0)
    model = M.get(name, scale=scale)
    assert M.task(name) == "super_resolution" and model.scale == scale
    h, w = 7, 10  # odd, not square
    if model.input_kind == "bicubic":
        x = torch.rand(2, 1, h * scale, w * scale)
    else:
        assert model.input_kind == "low_res"
        x = torch.rand(2, 1, h, w)
    y = model(x)
    assert y.shape == (2, 1, h * scale, w * scale)
    y.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_models_are_the_published_designs():
    fsrcnn = M.get("fsrcnn", scale=3)
    up = fsrcnn.upsample
    assert isinstance(up, pnn.ConvTranspose2d) and up.stride == (3, 3) and up.kernel_size == (9, 9)
    espcn = M.get("espcn", scale=4)
    assert isinstance(espcn.shuffle, pnn.PixelShuffle) and espcn.body[-1].out_channels == 16
    srcnn = M.get("srcnn", scale=2, residual=False)
    assert [m.kernel_size for m in (srcnn.extract, srcnn.map, srcnn.reconstruct)] == [(9, 9), (1, 1), (5, 5)]
    # 9-1-5 on a constant image: without the skip the output is the layers' alone
    x = torch.full((1, 1, 12, 12), 0.7)
    assert not torch.allclose(srcnn(x), x)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_cubic_skip_is_torch_bicubic_with_its_a(scale):
    """The residual models' skip path: a transposed convolution with a cubic kernel. With torch's
    a = -0.75 it must be torch's bicubic interpolation, borders included (both repeat the edge)."""
    from pycnn.models.superres import CubicUpsample
    x = torch.rand(2, 3, 7, 9, dtype=torch.float64)
    ours = CubicUpsample(scale, channels=3, a=-0.75).double()(x)
    ref = torch.nn.functional.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    # residual models start at the (a = -0.5) cubic interpolation of their input
    lr = torch.rand(1, 1, 6, 5)
    for name in ("fsrcnn", "espcn"):
        model = M.get(name, scale=scale)
        torch.testing.assert_close(model(lr), CubicUpsample(scale)(lr), atol=0.05, rtol=0)
        assert M.get(name, scale=scale, residual=False).skip is None


@pytest.mark.parametrize("name", ["srcnn", "fsrcnn", "espcn"])
def test_models_reject_bad_scales(name):
    for bad in (1, 5, 2.0, True):
        with pytest.raises(ValueError, match=f"{name}: scale must be one of"):
            M.get(name, scale=bad)


def test_pixel_shuffle_matches_torch_forward_and_backward():
    for shape, r in (((2, 8, 3, 5), 2), ((18, 4, 4), 3), ((1, 2, 32, 2, 3), 4)):
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        ours = PF.pixel_shuffle(x, r)
        ref = torch.nn.functional.pixel_shuffle(x, r)
        assert torch.equal(ours, ref)
        g = torch.randn_like(ref)
        (ga,) = torch.autograd.grad(ours, x, g)
        (gb,) = torch.autograd.grad(ref, x, g)
        assert torch.equal(ga, gb)
    empty = torch.randn(0, 9, 2, 2, requires_grad=True)  # (torch's own backward fails on an empty batch)
    out = PF.pixel_shuffle(empty, 3)
    assert out.shape == (0, 1, 6, 6) and torch.autograd.grad(out.sum(), empty)[0].shape == empty.shape
    x = torch.randn(1, 8, 3, 3).transpose(2, 3)  # non-contiguous
    assert torch.equal(pnn.PixelShuffle(2)(x), torch.nn.PixelShuffle(2)(x))
    with pytest.raises(ValueError, match="pixel_shuffle: 6 channels are not divisible by upscale_factor\\*\\*2 = 4"):
        PF.pixel_shuffle(torch.randn(1, 6, 2, 2), 2)
    with pytest.raises(ValueError, match="pixel_shuffle: upscale_factor must be a positive int, got 0"):
        PF.pixel_shuffle(torch.randn(1, 4, 2, 2), 0)


# ---- data ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_x2():
    return D.get("super_resolution", scale=2, n_train=96, n_val=16, sources=SMALL)


def test_data_shapes_ranges_and_determinism(small_x2):
    s = small_x2
    x, y = s.train.tensors
    assert x.shape == (96, 1, 24, 24) and y.shape == (96, 1, 48, 48) and s.val.tensors[0].shape[0] == 16
    assert x.dtype == y.dtype == torch.float32
    # Y in BT.601 studio range
    assert 16 / 255 - 1e-6 <= float(y.min()) and float(y.max()) <= 235 / 255 + 1e-6
    again = D.get("super_resolution", scale=2, n_train=96, n_val=16, sources=SMALL)
    other = D.get("super_resolution", scale=2, n_train=96, n_val=16, sources=SMALL, seed=1)
    for split in ("train", "val", "test"):
        for a, b in zip(getattr(s, split).tensors, getattr(again, split).tensors):
            assert torch.equal(a, b)
    assert not torch.equal(s.train.tensors[1], other.train.tensors[1])
    # input and target are the same place: the target degraded is the input, near the centre
    i = 0
    src, top, left = (int(v) for v in s.info["origins"]["train"][i])
    hr, _, lr = DS._pair(s.info["train_sources"][src], 2)
    assert torch.equal(y[i, 0], torch.from_numpy(hr[top:top + 48, left:left + 48]))
    assert torch.equal(x[i, 0], torch.from_numpy(lr[top // 2:top // 2 + 24, left // 2:left // 2 + 24]))


def test_train_val_test_are_disjoint(small_x2):
    s = small_x2
    assert set(DS.TRAIN_SOURCES).isdisjoint(DS.TEST_SOURCES)
    assert set(s.info["train_sources"]) <= set(SMALL) and s.info["test_sources"] == DS.TEST_SOURCES
    # train and val patches of one image lie in different 2*patch blocks: no pixel is shared
    block = 2 * s.info["patch"]
    o = s.info["origins"]
    cell = lambda rows: {(int(i), int(t) // block, int(l) // block) for i, t, l in rows}  # noqa: E731
    assert cell(o["train"]).isdisjoint(cell(o["val"]))
    assert ((o["train"][:, 1] % block) + s.info["patch"] <= block).all()  # patches stay inside their block
    with pytest.raises(ValueError, match="never the held-out"):
        D.get("super_resolution", sources=("coins", "astronaut"))
    assert len(D.get("super_resolution", n_train=8, n_val=4, sources=("coins", "page"), test_split=False).test) == 0


def test_photo_sources_ship_with_installed_packages():
    """The photographs added to the training sources are files inside scikit-learn and matplotlib
    (no download), RGB, none of them a held-out image."""
    test = [DS.load_image(n) for n in DS.TEST_SOURCES]
    for name in DS.PHOTO_SOURCES:
        img = DS.load_image(name)
        assert img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 400 and img.dtype == np.float32
        assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.1
        assert not any(t.shape == img.shape and np.allclose(t, img) for t in test)
    assert set(DS.PHOTO_SOURCES) <= set(DS.TRAIN_SOURCES) and set(DS.DEFAULT_SOURCES) <= set(DS.TRAIN_SOURCES)
    assert set(DS.TRAIN_SOURCES).isdisjoint(DS.TEST_SOURCES) and "cat" not in DS.TRAIN_SOURCES  # cat is chelsea
    s = D.get("super_resolution", scale=3, n_train=24, n_val=6, sources=("flower", "grace_hopper"), test_split=False)
    assert s.info["train_sources"] == ("flower", "grace_hopper") and s.train.tensors[0].shape == (24, 1, 16, 16)
    one = D.get("super_resolution", scale=4, n_train=4, n_val=2, sources="flower", test_split=False)
    assert one.info["train_sources"] == ("flower",)
    with pytest.raises(ValueError, match="never the held-out"):
        D.get("super_resolution", sources="chelsea")


def test_validation_images_are_neither_test_images_nor_chosen_on():
    """The validation images (for choosing a configuration) are photographs that ship with the
    installed packages, not test images; while choosing, training leaves them out; evaluate()
    measures on them by name and refuses any image that is neither test nor validation."""
    assert set(DS.VALIDATION_SOURCES) <= set(DS.PHOTOGRAPHS) and set(DS.VALIDATION_SOURCES).isdisjoint(DS.TEST_SOURCES)
    for named in ("photographs", "default", "all", DS.DEFAULT_SOURCES):
        kept = DS.without_validation(named)
        assert kept and set(kept).isdisjoint(DS.VALIDATION_SOURCES)
        assert set(kept) | set(DS.VALIDATION_SOURCES) >= set(DS._named_sources(named))
    assert DS.without_validation("coins") == ("coins",) and DS.without_validation("rocket") == ()
    assert [n for n, _ in DS.whole_images(DS.VALIDATION_SOURCES)] == list(DS.VALIDATION_SOURCES)
    with pytest.raises(ValueError, match="not test .* or validation"):
        DS.whole_images(("coins",))
    torch.manual_seed(0)
    model = M.get("espcn", scale=4)  # residual: starts near bicubic
    r = SR.evaluate(model, names="validation", crop=64)
    assert [i["name"] for i in r["images"]] == list(DS.VALIDATION_SOURCES) and abs(r["gain"]) < 0.1
    assert [i["name"] for i in SR.evaluate(model, names="test", crop=32)["images"]] == list(DS.TEST_SOURCES)
    with pytest.raises(ValueError, match="whole_images"):
        SR.evaluate(model, names=("grass",), crop=32)


def test_data_rejects_bad_options():
    with pytest.raises(ValueError, match="scale must be one of"):
        D.get("super_resolution", scale=5)
    with pytest.raises(ValueError, match="patch must be a multiple of scale=3"):
        D.get("super_resolution", scale=3, patch=32)
    with pytest.raises(ValueError, match="input must be 'low_res' or 'bicubic'"):
        D.get("super_resolution", input="nearest")


def test_one_bicubic_resize_everywhere():
    rng = np.random.default_rng(0)
    hr = rng.random((30, 24, 3)).astype(np.float32)
    lr = DS.bicubic_resize(hr, (10, 8))
    # torch's antialiased bicubic is the same kernel (Keys a = -0.5, stretched when shrinking); it
    # renormalises the kernel at the border where we repeat the edge, so compare the interior
    ref = torch.nn.functional.interpolate(torch.from_numpy(hr).permute(2, 0, 1)[None].double(), size=(10, 8),
                                          mode="bicubic", antialias=True, align_corners=False)[0].permute(1, 2, 0)
    np.testing.assert_allclose(lr[2:-2, 2:-2], ref.numpy()[2:-2, 2:-2], atol=1e-5)
    y = DS.rgb_to_y(hr)
    h2, l2, b2 = DS.degrade(np.pad(y, ((0, 1), (0, 2))), 3)  # cropped to 30 x 24 first
    assert h2.shape == (30, 24) and l2.shape == (10, 8) and b2.shape == (30, 24)
    np.testing.assert_array_equal(l2, DS.bicubic_resize(y, (10, 8)))
    np.testing.assert_array_equal(b2, DS.bicubic_resize(l2, (30, 24)))
    # constant images stay constant (the weights sum to 1 at every pixel, borders included)
    np.testing.assert_allclose(DS.bicubic_resize(np.full((9, 7), 0.3), (27, 21)), 0.3, atol=1e-6)
    np.testing.assert_allclose(DS.bicubic_resize(np.full((9, 7), 0.3), (3, 2)), 0.3, atol=1e-6)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_downscale_removes_what_the_small_grid_cannot_hold(scale):
    """The cause of the small gains measured until 2026-11-30: skimage's Gaussian anti-aliasing
    (sigma (scale - 1) / 2) kept 55 / 34 / 26 % (x2 / x3 / x4) of the amplitude of stripes 1.4 times
    finer than the low-res grid can hold; they came back as false, coarser stripes (aliasing) that
    no upscaler can tell from detail. The stretched bicubic kernel keeps 11-12 % of them and 99 %
    of coarse structure."""
    n = 96 * scale
    cols = np.arange(n)
    fine = 0.5 + 0.25 * np.cos(2 * np.pi * (1.4 / (2 * scale)) * cols)  # 1.4 x the low-res Nyquist frequency
    coarse = 0.5 + 0.25 * np.cos(2 * np.pi * (0.3 / (2 * scale)) * cols)
    for signal, low, high in ((fine, 0.0, 0.15), (coarse, 0.95, 1.0)):
        img = np.tile(signal, (8 * scale, 1))
        small = DS.downscale(img, scale)[4, 4:-4]  # a row, away from the borders
        kept = small.std() / signal.std()
        assert low <= kept <= high, (scale, kept)


def test_residual_models_start_at_the_baseline():
    """Untrained residual models are the bicubic baseline, to the metric's precision: the skip is
    the baseline's own resize (until 2026-11-30 it was Keys' cubic under a cubic-spline baseline,
    0.2 dB below it before any training)."""
    from pycnn.models.superres import CubicUpsample
    lr = np.random.default_rng(3).uniform(0.2, 0.8, (11, 13)).astype(np.float32)
    for scale in (2, 3, 4):
        ours = CubicUpsample(scale)(torch.from_numpy(lr)[None, None])[0, 0].numpy()
        np.testing.assert_allclose(ours, DS.bicubic_resize(lr, (11 * scale, 13 * scale)), atol=1e-6)
    for name in ("fsrcnn", "espcn"):
        model = M.get(name, scale=3)
        assert not any("skip" in n for n, _ in model.named_parameters())  # the skip is not trained
        with torch.no_grad():
            last = model.upsample if name == "fsrcnn" else model.body[-1]
            last.weight.zero_()
            last.bias.zero_()
        r = SR.evaluate(model, names=("camera",), crop=60)
        assert r["psnr"] == pytest.approx(r["bicubic_psnr"], abs=1e-4)


@pytest.mark.parametrize("name", ["fsrcnn", "espcn"])
def test_initial_signal_reaches_the_last_layer(name):
    """With torch's default initialisation FSRCNN's features shrank ~10x over its 7 layers, so its
    last layer (and through it the rest) hardly learned: +0.00 dB after 750 steps. He
    initialisation keeps the features' scale."""
    torch.manual_seed(0)
    model = M.get(name, scale=2)
    x = torch.rand(4, 1, 24, 24)
    body = model.body if name == "fsrcnn" else model.body[:-1]
    with torch.no_grad():
        features = body(x - 0.5)
    assert float(features.std()) > 0.5 * float((x - 0.5).std()), float(features.std())


# ---- metrics ------------------------------------------------------------------------------------

def test_psnr_on_y_by_hand():
    rng = np.random.default_rng(1)
    truth = rng.random((20, 22, 3))
    pred = np.clip(truth + rng.normal(0, 0.05, truth.shape), 0, 1)
    ty, py = DS.rgb_to_y(truth), DS.rgb_to_y(pred)
    # BT.601 luma, by hand, and skimage's conversion
    r, g, b = truth[..., 0], truth[..., 1], truth[..., 2]
    np.testing.assert_allclose(ty, (16 + 65.481 * r + 128.553 * g + 24.966 * b) / 255, atol=1e-5)
    from skimage.color import rgb2ycbcr
    np.testing.assert_allclose(ty, rgb2ycbcr(truth)[..., 0] / 255, atol=1e-5)
    scale = 3
    mse = np.mean((py[3:-3, 3:-3].astype(np.float64) - ty[3:-3, 3:-3]) ** 2)
    assert math.isclose(SR.psnr(py, ty, border=scale), 10 * math.log10(1 / mse), rel_tol=1e-9)
    # the border crop matters: damage only the border and PSNR-Y with the crop is unchanged
    damaged = py.copy()
    damaged[:2] = 0
    assert SR.psnr(damaged, ty, border=scale) == SR.psnr(py, ty, border=scale)
    assert SR.psnr(damaged, ty, border=0) < SR.psnr(py, ty, border=0)
    assert SR.ssim(ty, ty, border=scale) == pytest.approx(1.0)
    assert 0 < SR.ssim(py, ty, border=scale) < 1


# ---- training and inference ---------------------------------------------------------------------

def test_short_training_lowers_the_loss(small_x2, tmp_path):
    torch.manual_seed(0)
    model = M.get("espcn", scale=2)
    h = SR.fit(model, small_x2, epochs=5, batch_size=16, lr=3e-3, progress=False, out=str(tmp_path))
    steps = h.steps
    assert len(steps) == 30
    assert np.mean(steps[-6:]) < 0.5 * np.mean(steps[:3])
    assert h.epochs[-1]["val_loss"] < h.epochs[0]["val_loss"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]
    with pytest.raises(ValueError, match="upscales x3 but the data is x2"):
        SR.fit(M.get("espcn", scale=3), small_x2, epochs=1, progress=False)
    with pytest.raises(ValueError, match="takes 'bicubic' input"):
        SR.fit(M.get("srcnn", scale=2), small_x2, epochs=1, progress=False)


def test_espcn_mid_layers_and_self_ensemble():
    torch.manual_seed(0)
    deeper = M.get("espcn", scale=2, mid_layers=2, activation="relu")
    convs = [m for m in deeper.body if isinstance(m, pnn.Conv2d)]
    assert len(convs) == 5 and [c.kernel_size for c in convs[1:]] == [(3, 3)] * 4
    for bad in (-1, 7, 1.0, True):
        with pytest.raises(ValueError, match="espcn: mid_layers must be an int in 0..6"):
            M.get("espcn", scale=2, mid_layers=bad)
    # the deepest one still sees less than upscale_y's tile margin: tiles equal one pass
    lr = np.random.default_rng(4).random((21, 26)).astype(np.float32)
    deeper = M.get("espcn", scale=2, mid_layers=6).eval()
    with torch.no_grad():
        deeper.body[-1].weight.normal_(0, 0.05)
    np.testing.assert_allclose(SR.upscale_y(deeper, lr, tile=6), SR.upscale_y(deeper, lr, tile=1000), atol=1e-5)
    # self-ensemble: the mean over the 8 orientations, each turned back; a model that is itself
    # symmetric (the bare cubic skip) gives the same image, a trained-like one a different one
    model = M.get("espcn", scale=3).eval()
    with torch.no_grad():
        model.body[-1].weight.zero_()
    np.testing.assert_allclose(SR.upscale_y(model, lr, ensemble=True), SR.upscale_y(model, lr), atol=1e-6)
    with torch.no_grad():
        model.body[-1].weight.normal_(0, 0.05)
    one = SR.upscale_y(model, lr)
    ens = SR.upscale_y(model, lr, ensemble=True)
    assert ens.shape == one.shape == (63, 78) and not np.allclose(ens, one, atol=1e-4)
    manual = np.mean([SR.upscale_y(model, lr[:, ::-1].copy())[:, ::-1],
                      SR.upscale_y(model, lr[::-1].T.copy()).T[::-1]], axis=0)  # two of the eight by hand
    pair = np.mean([SR._symmetry(SR.upscale_y(model, SR._symmetry(lr, k)), k, inverse=True) for k in (1, 6)], axis=0)
    np.testing.assert_allclose(pair, manual, atol=1e-6)


@pytest.mark.parametrize("name", ["srcnn", "fsrcnn", "espcn"])
def test_tiled_upscale_equals_a_whole_image_pass(name):
    torch.manual_seed(0)
    model = M.get(name, scale=3).eval()
    lr = np.random.default_rng(2).random((23, 31)).astype(np.float32)
    whole = SR.upscale_y(model, lr, tile=1000)
    tiled = SR.upscale_y(model, lr, tile=8)
    assert whole.shape == (69, 93)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)
    if name != "srcnn":
        with torch.no_grad():
            direct = model(torch.from_numpy(lr)[None, None])[0, 0].clamp(0, 1).numpy()
        np.testing.assert_allclose(whole, direct, atol=1e-6)


def test_evaluate_against_bicubic():
    torch.manual_seed(0)
    model = M.get("srcnn", scale=2)  # residual: starts near the bicubic image it is given
    with torch.no_grad():
        model.reconstruct.weight.zero_()
        model.reconstruct.bias.zero_()
    r = SR.evaluate(model, names=("camera", "chelsea"), crop=64)
    assert [i["name"] for i in r["images"]] == ["camera", "chelsea"]
    assert r["gain"] == pytest.approx(0.0, abs=1e-6)  # exactly bicubic
    assert 15 < r["bicubic_psnr"] < 45 and 0 < r["bicubic_ssim"] < 1


# ---- command line -------------------------------------------------------------------------------

def test_cli_train_evaluate_upscale(tmp_path, capsys):
    from skimage import io
    run = tmp_path / "run"
    rc = cli.main(["train", "--model", "espcn", "--data", "super_resolution", "--data-option", "scale=2",
                   "--data-option", "n_train=64", "--data-option", "n_val=8", "--data-option", f"sources={SMALL}",
                   "--epochs", "1", "--batch-size", "32", "--out", str(run), "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "PSNR" in out and "bicubic" in out and "hubble_deep_field" in out
    rc = cli.main(["evaluate", "--checkpoint", str(run / "last.pt")])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "mean" in out and "SSIM" in out and "self-ensemble" not in out
    rng = np.random.default_rng(0)
    for name, shape in (("rgb.png", (13, 17, 3)), ("grey.png", (9, 11))):
        src = tmp_path / name
        io.imsave(src, (rng.random(shape) * 255).astype(np.uint8), check_contrast=False)
        dst = tmp_path / ("big-" + name)
        rc = cli.main(["upscale", "--checkpoint", str(run / "best.pt"), "--image", str(src), "--out", str(dst)]
                      + (["--ensemble"] if name == "rgb.png" else []))
        out, err = capsys.readouterr()
        assert rc == 0, err
        big = io.imread(dst)
        assert big.shape == (shape[0] * 2, shape[1] * 2) + shape[2:] and big.dtype == np.uint8
    # a classifier checkpoint, a missing image: one line, exit status 2
    rc = cli.main(["upscale", "--checkpoint", str(run / "best.pt"), "--image", str(tmp_path / "nope.png"),
                   "--out", str(tmp_path / "x.png")])
    out, err = capsys.readouterr()
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "image not found" in err
    rc = cli.main(["train", "--model", "lenet5", "--data", "super_resolution", "--epochs", "1"])
    out, err = capsys.readouterr()
    assert rc == 2 and "not a super-resolution model" in err


def test_demo_run_takes_model_options_and_self_ensemble():
    from pycnn.superres import report_section
    spec = dict(model="espcn", scale=2, epochs=1, n_train=16, n_val=8, lr=1e-3, batch_size=16, crop=48,
                sources=SMALL, model_options={"activation": "relu"}, ensemble=True)
    r = report_section.run(spec)
    assert isinstance(r["model"].body[1], torch.nn.ReLU) and r["cpu_seconds"] > 0
    assert len(r["metrics"]["images"]) == len(DS.TEST_SOURCES) and math.isfinite(r["metrics"]["gain"])
    plain = SR.evaluate(r["model"], crop=48)
    assert r["metrics"]["psnr"] != plain["psnr"]  # the ensemble's, not one pass's
    assert r["one_pass"]["psnr"] == plain["psnr"]  # and one pass's beside it
    c = report_section.crops(r["model"], "camera", 10, 10, 24, ensemble=True)
    assert c["ours"][0].shape == (24, 24, 3) and math.isfinite(c["ours"][1])
    for spec in report_section.DEMO_RUNS["full"]:  # the demo's runs: photographs, never a held-out image
        assert set(spec.get("sources", DS.DEFAULT_SOURCES)) <= set(DS.DEFAULT_SOURCES) and spec["ensemble"]
