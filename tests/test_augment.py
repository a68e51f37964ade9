"""pycnn.data.augment: geometry shared by image and mask, exact identities, seeding, dtypes."""
import pytest
import torch

from pycnn.data import augment as A

GEOMETRIC = {
    "crop": lambda seed: A.RandomCrop(20, padding=3, seed=seed),
    "translation": lambda seed: A.RandomTranslation(4, seed=seed),
    "flip": lambda seed: A.RandomFlip(horizontal=True, vertical=True, seed=seed),
    "rotation": lambda seed: A.RandomRotation(40, seed=seed),
    "zoom": lambda seed: A.RandomZoom((0.7, 1.4), seed=seed),
}
PHOTOMETRIC = {
    "contrast": lambda seed: A.RandomContrast((0.5, 1.5), seed=seed),
    "brightness": lambda seed: A.RandomBrightness(0.2, seed=seed),
}
ALL = {**GEOMETRIC, **PHOTOMETRIC}


def blobs(n=6, h=24, w=24, seed=0):
    """Binary masks made of a few axis-aligned rectangles, shape [n, 1, h, w] float32."""
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(n, 1, h, w)
    for i in range(n):
        for _ in range(3):
            y, x = torch.randint(0, h - 6, (2,), generator=g).tolist()
            dy, dx = torch.randint(4, 9, (2,), generator=g).tolist()
            m[i, 0, y:y + dy, x:x + dx] = 1
    return m


def images(n=6, c=3, h=24, w=24, dtype=torch.float32, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_image_and_mask_get_the_same_geometry(name):
    # Augment an image equal to its mask: wherever the geometry is exact (crop, translation, flip)
    # they must agree everywhere; with interpolation (rotation, zoom) the bilinear image, rounded,
    # may differ from the nearest-neighbour mask only along edges.
    m = blobs()
    img, mask = GEOMETRIC[name](0)(m.clone(), m.clone())
    assert img.shape == mask.shape
    if name in ("crop", "translation", "flip"):
        assert torch.equal(img, mask)
    else:
        disagree = float(((img > 0.5) != (mask > 0.5)).float().mean())
        assert disagree < 0.03, disagree
        # Control: against a differently seeded run the disagreement is far larger.
        _, other = GEOMETRIC[name](1)(m.clone(), m.clone())
        assert float(((img > 0.5) != (other > 0.5)).float().mean()) > 3 * disagree + 0.02
    assert not torch.equal(mask, m) or name == "crop"  # it did something


@pytest.mark.parametrize("name", sorted(GEOMETRIC))
def test_class_map_mask_keeps_its_values_and_dtype(name):
    cm = torch.randint(0, 4, (5, 24, 24), generator=torch.Generator().manual_seed(0))
    _, out = GEOMETRIC[name](0)(images(5), cm)
    assert out.dtype == torch.int64 and out.shape[0] == 5 and out.ndim == 3
    assert set(torch.unique(out).tolist()) <= {0, 1, 2, 3}
    b = cm > 1
    _, outb = GEOMETRIC[name](0)(images(5), b)
    assert outb.dtype == torch.bool and torch.equal(outb, out > 1)


def test_flip_twice_is_identity():
    x, m = images(), blobs()
    both = A.RandomFlip(horizontal=True, vertical=True, p=1.0)
    y, my = both(*both(x, m))
    assert torch.equal(y, x) and torch.equal(my, m)
    # Random flips with the same seed twice also undo each other, sample by sample.
    y = A.RandomFlip(vertical=True, seed=5)(A.RandomFlip(vertical=True, seed=5)(x))
    assert torch.equal(y, x)
    once = A.RandomFlip(p=1.0)(x)
    assert torch.equal(once, x.flip(-1))


def test_rotation_by_zero_and_unit_zoom_are_identity():
    x, m = images(), blobs()
    for t in (A.RandomRotation(0), A.RandomRotation((0, 0)), A.RandomZoom((1.0, 1.0))):
        y, my = t(x, m)
        torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
        assert torch.equal(my, m)


def test_rotation_geometry_is_rigid():
    # 90 degrees on a square image moves pixel centres onto pixel centres: an exact rot90.
    x = images(2, 1, 10, 10)
    y = A.RandomRotation((90, 90))(x)
    assert any(torch.allclose(y, torch.rot90(x, k, dims=(-2, -1)), atol=1e-5) for k in (1, 3))
    # 180 degrees on a non-square image is both flips (no shearing from the aspect ratio).
    x = images(2, 2, 8, 14)
    torch.testing.assert_close(A.RandomRotation((180, 180))(x), x.flip(-1).flip(-2), atol=1e-5, rtol=0)


def test_zoom_out_shrinks_towards_centre():
    x = torch.ones(1, 1, 16, 16)
    y = A.RandomZoom((0.5, 0.5))(x)
    assert float(y[0, 0, 8, 8]) == pytest.approx(1.0) and float(y[0, 0, 0, 0]) == 0.0
    assert float(y.sum()) == pytest.approx(64.0, rel=0.15)  # a quarter of the area


def test_crop_is_a_window_of_the_padded_input():
    x = images(4, 2, 12, 12)
    y = A.RandomCrop(8, padding=2, seed=0)(x)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(4):
        hits = [(t, l) for t in range(9) for l in range(9) if torch.equal(padded[i, :, t:t + 8, l:l + 8], y[i])]
        assert hits, i
    with pytest.raises(ValueError, match="larger than padded image"):
        A.RandomCrop(20, padding=2)(x)
    assert A.RandomCrop((10, 6), padding=1, padding_mode="reflect", seed=0)(x).shape == (4, 2, 10, 6)


def test_translation_is_a_whole_pixel_shift():
    x = images(8, 1, 10, 10) + 0.5  # no zeros inside, so the zero border reveals the shift
    y = A.RandomTranslation(3, seed=0)(x)
    shifts = set()
    for i in range(8):
        rows, cols = (y[i, 0] != 0).any(1).nonzero(), (y[i, 0] != 0).any(0).nonzero()
        dy = int(rows[0]) if rows[0] > 0 else -(9 - int(rows[-1]))
        dx = int(cols[0]) if cols[0] > 0 else -(9 - int(cols[-1]))
        assert abs(dy) <= 3 and abs(dx) <= 3
        assert torch.equal(y[i, 0], torch.roll(x[i, 0], (dy, dx), (0, 1)) * (y[i, 0] != 0))
        shifts.add((dy, dx))
    assert len(shifts) > 1  # per-sample parameters


@pytest.mark.parametrize("name", sorted(PHOTOMETRIC))
def test_photometric_leaves_mask_unchanged(name):
    x, m = images(), blobs()
    y, my = PHOTOMETRIC[name](0)(x, m.clone())
    assert torch.equal(my, m)
    assert not torch.allclose(y, x)


def test_contrast_and_brightness_semantics():
    x = images()
    y = A.RandomContrast((0.5, 1.5), seed=0)(x)
    torch.testing.assert_close(y.mean((2, 3)), x.mean((2, 3)), atol=1e-5, rtol=0)  # mean kept
    ratio = (y - y.mean((2, 3), keepdim=True)).std((1, 2, 3)) / (x - x.mean((2, 3), keepdim=True)).std((1, 2, 3))
    assert ((ratio > 0.5 - 1e-4) & (ratio < 1.5 + 1e-4)).all() and ratio.std() > 0.01
    d = A.RandomBrightness((-0.2, 0.1), seed=0)(x) - x
    per_sample = d.flatten(1)
    assert torch.allclose(per_sample, per_sample[:, :1], atol=1e-6)  # one constant per sample
    assert (per_sample[:, 0] >= -0.2).all() and (per_sample[:, 0] <= 0.1).all()
    clamped = A.RandomBrightness((0.5, 0.5), clamp=(0.0, 1.0))(x)
    assert float(clamped.max()) <= 1.0


@pytest.mark.parametrize("name", sorted(ALL))
def test_float64_and_empty_batch(name):
    x, m = images(dtype=torch.float64), blobs()
    y, my = ALL[name](0)(x, m)
    assert y.dtype == torch.float64 and my.dtype == m.dtype
    y32 = ALL[name](0)(x.float())
    torch.testing.assert_close(y32, y.float(), atol=1e-5, rtol=0)  # same parameters either dtype
    e, em = ALL[name](0)(x[:0], m[:0])
    assert e.shape[0] == 0 and em.shape[0] == 0


@pytest.mark.parametrize("name", sorted(ALL))
def test_seeded_reproducibility_and_per_sample_parameters(name):
    x = images(1).expand(8, -1, -1, -1).contiguous()  # eight copies of one image
    a, b, c = ALL[name](0)(x), ALL[name](0)(x), ALL[name](1)(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not all(torch.equal(a[0], a[i]) for i in range(1, 8))  # samples drawn independently
    t = ALL[name](7)
    first = t(x)
    assert not torch.equal(first, t(x))  # the stream advances between calls
    t.manual_seed(7)
    assert torch.equal(first, t(x))


def test_global_rng_when_unseeded():
    x = images()
    torch.manual_seed(123)
    a = A.RandomRotation(30)(x)
    torch.manual_seed(123)
    assert torch.equal(a, A.RandomRotation(30)(x))


def test_compose():
    x, m = images(), blobs()

    def make(seed):
        return A.Compose([A.RandomFlip(), A.RandomRotation(20), A.RandomContrast(0.2), A.RandomCrop(20, 2)], seed=seed)

    (a, ma), (b, mb) = make(0)(x, m), make(0)(x, m)
    assert torch.equal(a, b) and torch.equal(ma, mb) and a.shape == (6, 3, 20, 20) and ma.shape == (6, 1, 20, 20)
    assert not torch.equal(make(1)(x), a)
    assert make(0)(x).shape == a.shape  # no mask -> images only
    with pytest.raises(TypeError, match="callable"):
        A.Compose([3])


@pytest.mark.parametrize("call, exc, match", [
    (lambda: A.RandomFlip()(torch.rand(3, 8, 8)), ValueError, r"\[N, C, H, W\]"),
    (lambda: A.RandomFlip()(torch.ones(1, 1, 8, 8, dtype=torch.int64)), TypeError, "floating point"),
    (lambda: A.RandomFlip()([1, 2]), TypeError, "torch.Tensor"),
    (lambda: A.RandomRotation(5)(torch.rand(2, 1, 8, 8), torch.zeros(2, 8, 9)), ValueError, "mask must be"),
    (lambda: A.RandomFlip(p=2), ValueError, "p must be"),
    (lambda: A.RandomZoom((0.0, 1.0)), ValueError, "scale must be > 0"),
    (lambda: A.RandomRotation((10, -10)), ValueError, "low <= high"),
    (lambda: A.RandomCrop(-1), ValueError, "size must be >= 1"),
    (lambda: A.RandomTranslation(-2), ValueError, "max_shift"),
    (lambda: A.RandomRotation(5, padding_mode="wrap"), ValueError, "padding_mode"),
    (lambda: A.RandomFlip(seed=1, generator=torch.Generator()), ValueError, "not both"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", sorted(ALL))
def test_cuda_matches_cpu(name):
    x, m = images(), blobs()
    y, my = ALL[name](0)(x, m)
    yc, myc = ALL[name](0)(x.cuda(), m.cuda())
    assert yc.is_cuda and myc.is_cuda
    torch.testing.assert_close(yc.cpu(), y, atol=1e-5, rtol=0)
    assert float((myc.cpu() != my).float().mean()) < 0.01  # nearest may round an edge differently
