"""pycnn.data loaders: shapes, ranges, determinism, leakage-free splits, no network."""
import socket

import numpy as np
import pytest
import torch

import pycnn.data as D

SPLITS = ("train", "val", "test")
# Small builds keep the file fast; defaults are checked once each below.
FAST = {"digits": {}, "faces": {}, "textures": {"per_class": 60}, "galaxies": {"n": 60}}


@pytest.fixture(scope="module")
def built():
    return {name: D.get(name, seed=0, **kw) for name, kw in FAST.items()}


@pytest.fixture(scope="module")
def galaxies_default():
    return D.galaxies(seed=0)


def _tensors(splits):
    return [getattr(splits, s).tensors for s in SPLITS]


def test_names_and_get():
    assert set(D.NAMES) == {"digits", "faces", "textures", "galaxies", "galaxy_instances", "super_resolution", "inpainting"}
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        D.get("mnist")


@pytest.mark.parametrize("name", sorted(FAST))
def test_shapes_dtypes_ranges(built, name):
    s = built[name]
    for x, y in _tensors(s):
        assert x.dtype == torch.float32 and x.ndim == 4 and x.shape[1] == 1
        assert x.shape[0] == y.shape[0] > 0
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        assert float(x.std()) > 0.01  # not blank
        if s.task == "classification":
            assert y.dtype == torch.int64 and y.ndim == 1
            assert 0 <= int(y.min()) and int(y.max()) < s.num_classes
        else:
            assert y.dtype == torch.float32 and y.shape == (x.shape[0], 1, *x.shape[2:])
            assert set(torch.unique(y).tolist()) == {0.0, 1.0}
    assert s.mean.shape == s.std.shape == (1,)
    assert torch.allclose(s.mean, s.train.tensors[0].mean(), atol=1e-5)


def test_default_sizes(built, galaxies_default):
    assert D.digits().sizes() == {"train": 1259, "val": 269, "test": 269}
    assert built["faces"].sizes() == {"train": 140, "val": 30, "test": 30}
    assert built["faces"].image_size == (25, 25)
    t = D.textures()
    assert t.sizes() == {"train": 840, "val": 180, "test": 180} and t.image_size == (32, 32)
    assert t.classes == ("brick", "grass", "gravel", "moon")
    assert galaxies_default.sizes() == {"train": 840, "val": 180, "test": 180}
    assert galaxies_default.image_size == (64, 64)


def test_digits_resize():
    s = D.digits(size=28)
    assert s.image_size == (28, 28)
    small = D.digits()
    # Same split, same labels; the upsampled image shrunk back is close to the original.
    assert torch.equal(s.train.tensors[1], small.train.tensors[1])
    back = torch.nn.functional.interpolate(s.train.tensors[0][:20], size=8, mode="area")
    assert (back - small.train.tensors[0][:20]).abs().mean() < 0.1
    assert D.digits(size=(32, 32), mode="nearest").image_size == (32, 32)


@pytest.mark.parametrize("name", sorted(FAST))
def test_same_seed_same_data_other_seed_differs(built, name):
    again = D.get(name, seed=0, **FAST[name])
    other = D.get(name, seed=1, **FAST[name])
    for (x0, y0), (x1, y1), (x2, _) in zip(_tensors(built[name]), _tensors(again), _tensors(other)):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    assert not torch.equal(built[name].test.tensors[0], other.test.tensors[0])


@pytest.mark.parametrize("name", ["digits", "faces"])
def test_split_indices_disjoint_and_complete(built, name):
    idx = built[name].info["indices"]
    all_idx = torch.cat([idx[s] for s in SPLITS])
    assert len(torch.unique(all_idx)) == len(all_idx) == sum(built[name].sizes().values())


def test_faces_labels_follow_skimage_order(built):
    # skimage documents lfw_subset as 100 faces, then 100 non-faces.
    s = built["faces"]
    for split in SPLITS:
        assert torch.equal(getattr(s, split).tensors[1], (s.info["indices"][split] < 100).long())
    assert s.classes == ("non_face", "face")


@pytest.mark.parametrize("name", ["digits", "faces", "textures"])
def test_class_balance(built, name):
    s = built[name]
    for split in SPLITS:
        counts = torch.bincount(getattr(s, split).tensors[1], minlength=s.num_classes).float()
        assert counts.min() > 0
        assert counts.max() - counts.min() <= max(3, 0.1 * counts.mean())


def test_textures_patches_from_disjoint_regions(built):
    s = built["textures"]
    patch = s.info["patch"]
    claimed = {}  # (class, pixel-row, pixel-col) -> split, at patch granularity via a pixel map
    for split in SPLITS:
        labels, origins = getattr(s, split).tensors[1], s.info["origins"][split]
        for c in range(s.num_classes):
            cover = torch.zeros(512, 512, dtype=torch.bool)
            for top, left in origins[labels == c].tolist():
                cover[top:top + patch, left:left + patch] = True
            claimed[(c, split)] = cover
    for c in range(s.num_classes):
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            assert not (claimed[(c, a)] & claimed[(c, b)]).any(), (c, a, b)


def test_textures_patch_matches_source_image(built):
    import skimage.data
    s = built["textures"]
    x, y = s.val.tensors
    top, left = s.info["origins"]["val"][0].tolist()
    src = np.asarray(getattr(skimage.data, s.classes[int(y[0])])(), np.float32) / 255
    assert np.allclose(x[0, 0].numpy(), src[top:top + 32, left:left + 32])


def test_galaxies_masks_consistent(built):
    s = built["galaxies"]
    for split in SPLITS:
        x, union = getattr(s, split).tensors
        masks = s.extra[split]["masks"]
        assert masks.shape == (x.shape[0], 2, 64, 64) and masks.dtype == torch.float32
        assert torch.equal(union, masks.amax(1, keepdim=True))
        # Every galaxy is visible, brightest first, and the image is bright where the masks are.
        assert (masks.sum((2, 3)) > 20).all()
        assert x[union > 0].mean() > 5 * x[union == 0].mean()
        ids = s.extra[split]["galaxy_ids"]
        assert (ids[:, 0] != ids[:, 1]).all()
    # Galaxies of different splits are different catalogue objects (no leakage).
    ids = {split: set(s.extra[split]["galaxy_ids"].flatten().tolist()) for split in SPLITS}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]


def test_galaxies_targets():
    m = D.galaxies(n=30, target="masks")
    c = D.galaxies(n=30, target="class_map")
    assert m.train.tensors[1].shape[1:] == (2, 64, 64) and m.classes == ("galaxy_a", "galaxy_b")
    cm = c.train.tensors[1]
    assert cm.dtype == torch.int64 and cm.shape[1:] == (64, 64)
    assert torch.equal(cm, D.galaxy_class_map(m.train.tensors[1]))
    assert set(torch.unique(cm).tolist()) == {0, 1, 2, 3}  # overlaps exist
    assert c.classes == ("background", "a_only", "b_only", "overlap")


def test_galaxies_union_is_learnable(galaxies_default):
    # A fixed blur + threshold (what a few conv layers can represent) already segments the test
    # split well, so the task is learnable to IoU >= 0.85 by a small U-Net.
    from scipy import ndimage
    x, y = galaxies_default.test.tensors
    pred = torch.from_numpy(ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 2, 2))) > 0.1
    true = y > 0.5
    iou = float((pred & true).sum() / (pred | true).sum())
    assert iou > 0.9, iou
    # ...but not trivially: the raw pixel threshold is noticeably worse.
    raw = x > 0.1
    assert float((raw & true).sum() / (raw | true).sum()) < iou - 0.05


def test_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a data loader tried to use the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for name, kw in FAST.items():
        D.get(name, seed=3, **kw)
    # Control: the patch does intercept an ordinary download attempt.
    import urllib.request
    with pytest.raises(AssertionError, match="tried to use the network"):
        urllib.request.urlopen("http://127.0.0.1:9/", timeout=1)


@pytest.mark.parametrize("call, match", [
    (lambda: D.digits(seed=-1), "seed"),
    (lambda: D.digits(size=0), "size"),
    (lambda: D.faces(val_fraction=0.6, test_fraction=0.5), "val_fraction \\+ test_fraction"),
    (lambda: D.faces(mode="fancy", size=32), "mode"),
    (lambda: D.textures(patch=300), "patch=300 too large"),
    (lambda: D.textures(sources=("brick", "astronaut")), "sources"),
    (lambda: D.galaxies(target="boxes"), "target"),
    (lambda: D.galaxies(size=30), "size"),
])
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- your own images: pycnn.data.image_folder ------------------------------------------------

def _write_images(folder, classes, per_class, size=(6, 5), mode="L", fmt="png", seed=0):
    """Class c's images have mean brightness ~ c / len(classes); returns nothing."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            level = 40 + 160 * c // max(1, len(classes) - 1)
            a = np.clip(rng.normal(level, 10, size=size[::-1] + ((3,) if mode == "RGB" else ())), 0, 255)
            Image.fromarray(a.astype(np.uint8), mode).save(folder / name / f"{i:03d}.{fmt}")


def test_image_folder_class_subfolders_stratified_seeded(tmp_path):
    _write_images(tmp_path, ["cat", "dog", "eel"], per_class=20)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / ".hidden.png").write_bytes(b"junk")  # hidden files are skipped
    s = D.image_folder(tmp_path, val=0.2, test=0.1, seed=3)
    assert s.classes == ("cat", "dog", "eel") and s.task == "classification"
    assert s.sizes() == {"train": 42, "val": 12, "test": 6}
    for split in SPLITS:
        x, y = getattr(s, split).tensors
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 5, 6) and 0 <= x.min() and x.max() <= 1
        assert torch.bincount(y, minlength=3).tolist() == [len(y) // 3] * 3  # stratified
        # the label is the folder: class c's images are brighter with c
        assert all(abs(float(x[y == c].mean()) - (40 + 80 * c) / 255) < 0.05 for c in range(3))
    again = D.image_folder(tmp_path, val=0.2, test=0.1, seed=3)
    other = D.image_folder(tmp_path, val=0.2, test=0.1, seed=4)
    assert torch.equal(again.train.tensors[0], s.train.tensors[0])
    assert not torch.equal(other.train.tensors[0], s.train.tensors[0])
    files = [f for split in SPLITS for f in s.info["files"][split]]
    assert len(files) == len(set(files)) == 60  # disjoint splits, every image used once
    # the splits describe themselves: D.get(name, **options) rebuilds them; datasets carry classes
    assert s.name == str(tmp_path) and s.train.classes == ["cat", "dog", "eel"] and s.train.data_name == s.name
    rebuilt = D.get(s.name, **s.options)
    assert torch.equal(rebuilt.test.tensors[0], s.test.tensors[0])


def test_image_folder_explicit_splits_colour_and_resize(tmp_path):
    _write_images(tmp_path / "train", ["a", "b"], per_class=10, size=(12, 10), mode="RGB", fmt="jpg")
    _write_images(tmp_path / "test", ["a", "b"], per_class=3, size=(9, 7), mode="RGB", fmt="png", seed=1)
    s = D.image_folder(tmp_path, size=8, val=0.2, test=0.15)
    assert s.info["layout"] == "split folders" and s.classes == ("a", "b")
    assert s.sizes()["test"] == 6 and s.sizes()["train"] + s.sizes()["val"] == 20  # val cut from train/
    assert all(f.startswith("test") for f in s.info["files"]["test"])
    assert s.train.tensors[0].shape[1:] == (3, 8, 8) and s.in_channels == 3
    first = s.info["files"]["train"][0]  # one image read alone, as a model trained on the folder takes it
    torch.testing.assert_close(D.load_image(str(tmp_path / first), size=8), s.train.tensors[0][:1])
    grey = D.image_folder(tmp_path, size=(4, 6), grayscale=True)
    assert grey.train.tensors[0].shape[1:] == (1, 4, 6)


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        D.image_folder(tmp_path / "missing")
    _write_images(tmp_path / "flat_src", ["x"], per_class=1)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "000.png").write_bytes((tmp_path / "flat_src" / "x" / "000.png").read_bytes())
    with pytest.raises(ValueError, match="no class subfolders"):  # images straight in root: no labels
        D.image_folder(tmp_path / "flat")
    _write_images(tmp_path / "sizes", ["a"], per_class=2, size=(6, 5))
    _write_images(tmp_path / "sizes", ["b"], per_class=2, size=(7, 5))
    with pytest.raises(ValueError, match="differ in size.*pass size="):
        D.image_folder(tmp_path / "sizes")
    assert D.image_folder(tmp_path / "sizes", size=5, val=0, test=0).sizes() == {"train": 4, "val": 0, "test": 0}
    (tmp_path / "sizes" / "b" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image .*broken.png"):
        D.image_folder(tmp_path / "sizes", size=5)
    _write_images(tmp_path / "split" / "train", ["a"], per_class=3)
    _write_images(tmp_path / "split" / "test", ["zebra"], per_class=1)
    with pytest.raises(ValueError, match="zebra"):
        D.image_folder(tmp_path / "split")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(ValueError, match="has no images"):
        D.image_folder(tmp_path / "empty")
    with pytest.raises(ValueError, match="val must be a fraction"):
        D.image_folder(tmp_path / "sizes", val=1.5)
    with pytest.raises(ValueError, match="or give a folder of images"):
        D.get(str(tmp_path / "nope"))


def test_builtin_splits_describe_themselves():
    s = D.get("faces", size=8)
    assert s.name == "faces" and s.options["size"] == 8 and s.options["seed"] == 0
    assert s.test.classes == ["non_face", "face"] and s.test.data_options == s.options
