"""Instance detection: the galaxy_instances data set, Mask R-CNN's parts and forward passes, a short
training run whose loss falls, the watershed baseline and the command line."""
import math

import numpy as np
import pytest
import torch

import pycnn.data as D
import pycnn.models as M
from pycnn.models.mask_rcnn import AnchorGenerator, BoxCoder, Dihedral, Matcher, paste_masks, sample_balanced

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def data():
    return D.get("galaxy_instances", n=40, seed=3)


# ---- data --------------------------------------------------------------------------------------

def test_data_shapes_and_targets(data):
    assert data.task == "detection" and data.classes == ("galaxy",) and data.sizes() == {"train": 28, "val": 6,
                                                                                         "test": 6}
    for split in SPLITS:
        x, m = getattr(data, split).tensors
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 64, 64) and 0 <= float(x.min()) <= float(x.max()) <= 1
        assert m.shape == (len(x), 3, 64, 64) and set(torch.unique(m).tolist()) <= {0.0, 1.0}
        present = m.flatten(2).amax(2) > 0
        ids = data.extra[split]["galaxy_ids"]
        assert torch.equal(present, ids >= 0)
        assert (present.sum(1) >= 2).float().mean() > 0.9 and int(present.sum(1).max()) <= 3
        # brightest first, padding last
        flux = data.extra[split]["flux"]
        assert bool((flux[:, :-1] >= flux[:, 1:]).all())
        for t, mm in zip(D.instance_targets(m), m):
            k = len(t["boxes"])
            assert t["masks"].dtype == torch.bool and t["masks"].shape == (k, 64, 64)
            assert torch.equal(t["labels"], torch.ones(k, dtype=torch.int64))
            for box, mask in zip(t["boxes"], t["masks"]):  # the box is the mask's tight frame
                ys, xs = torch.nonzero(mask, as_tuple=True)
                assert box.tolist() == [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]
    # Blends overlap: some pixel belongs to two galaxies in most images.
    m = data.train.tensors[1]
    assert ((m.sum(1) > 1).flatten(1).any(1)).float().mean() > 0.5


def test_data_disjoint_and_seeded(data):
    ids = {s: set(data.extra[s]["galaxy_ids"].flatten().tolist()) - {-1} for s in SPLITS}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    again = D.get("galaxy_instances", n=40, seed=3)
    other = D.get("galaxy_instances", n=40, seed=4)
    assert torch.equal(again.test.tensors[0], data.test.tensors[0])
    assert not torch.equal(other.test.tensors[0], data.test.tensors[0])


def test_data_bad_arguments():
    for kwargs, word in (({"n": 2}, "n must"), ({"size": 30}, "size"), ({"flux_range": (0, 1)}, "flux_range"),
                         ({"three_fraction": 2}, "three_fraction")):
        with pytest.raises(ValueError, match=word):
            D.get("galaxy_instances", **kwargs)


def test_galaxy_blends_from_one_split_pool(data):
    from pycnn.data import galaxy_blends
    x, m, ids = galaxy_blends("train", 200, blend_seed=1, seed=3)  # the pools of `data` (seed 3)
    assert x.shape == (200, 1, 64, 64) and m.shape == (200, 3, 64, 64) and ids.shape == (200, 3)
    assert torch.equal(m.flatten(2).amax(2) > 0, ids >= 0) and 0 <= float(x.min()) <= float(x.max()) <= 1
    used = set(ids.flatten().tolist()) - {-1}
    held_out = {g for s in ("val", "test") for g in data.extra[s]["galaxy_ids"].flatten().tolist()} - {-1}
    assert len(used) > 20 and not used & held_out  # training galaxies only, many of them
    val = set(galaxy_blends("val", 50, blend_seed=1, seed=3)[2].flatten().tolist()) - {-1}
    assert not val & used and val & held_out
    few = galaxy_blends("train", 6, blend_seed=1, seed=3)[0]
    assert torch.equal(galaxy_blends("train", 6, blend_seed=1, seed=3)[0], few)  # seeded
    assert not torch.equal(galaxy_blends("train", 6, blend_seed=2, seed=3)[0], few)
    assert not torch.equal(few, data.train.tensors[0][:6])  # new blends, not the split's own
    for kwargs, word in (({"split": "x"}, "split"), ({"n": 0}, "n must"), ({"blend_seed": -1}, "seed")):
        with pytest.raises(ValueError, match=word):
            galaxy_blends(**kwargs)


def test_galaxy_blends_geometric_augmentation():
    from pycnn.data import galaxy_blends
    from pycnn.data.instances import _galaxy_pools, _varied_galaxies
    args = ("t", 3, 64, 2, 0.01, 0.1, 40, (0.5, 2.0), 0.5, 0.15, 0.15)  # galaxy_instances(seed=3) pools
    (light, smooth, radius), pools, _ = _galaxy_pools(*args)
    rng = np.random.default_rng(0)
    # No turn, size 1: one bilinear sampling of the native stamp is the upsampling itself.
    (l1, s1, r1), src = _varied_galaxies(rng, pools[0], 2, 64, 2, 0.1, 40, False, (1.0, 1.0))
    assert src.tolist() == np.repeat(pools[0], 2).tolist()
    assert np.abs(l1 - light[src]).max() < 1e-5 and np.abs(s1 - smooth[src]).max() < 1e-5
    assert np.allclose(r1, radius[src])
    # Turned: footprints keep their area; sized by 1.25: areas grow by 1.25^2, radii by 1.25.
    area = lambda s: (s > 0.1).sum((1, 2)).astype(float)  # noqa: E731
    (_, st, _), src = _varied_galaxies(rng, pools[0], 1, 64, 2, 0.1, 40, True, (1.0, 1.0))
    assert abs(np.median(area(st) / area(smooth[src])) - 1.0) < 0.05
    assert not np.allclose(st, smooth[src], atol=1e-3)
    (_, sz, rz), src = _varied_galaxies(rng, pools[0], 1, 64, 2, 0.1, 40, False, (1.25, 1.25))
    assert abs(np.median(area(sz) / area(smooth[src])) - 1.5625) < 0.1 and np.allclose(rz, 1.25 * radius[src])
    # Blends of the variants: training galaxies only, seeded, ids are catalogue indices.
    x, m, ids = galaxy_blends("train", 100, blend_seed=1, seed=3, any_angle=True, size_range=(0.8, 1.25))
    assert x.shape == (100, 1, 64, 64) and torch.equal(m.flatten(2).amax(2) > 0, ids >= 0)
    assert set(ids.flatten().tolist()) - {-1} <= set(pools[0].tolist())
    again = galaxy_blends("train", 100, blend_seed=1, seed=3, any_angle=True, size_range=(0.8, 1.25))[0]
    assert torch.equal(x, again) and not torch.equal(x, galaxy_blends("train", 100, blend_seed=1, seed=3)[0])
    for kwargs, word in (({"size_range": (0.0, 1.0)}, "size_range"), ({"size_range": (1.2, 1.1)}, "size_range"),
                         ({"variants": 0}, "variants")):
        with pytest.raises(ValueError, match=word):
            galaxy_blends(**kwargs)


def test_masks_to_boxes_edges():
    m = torch.zeros(2, 6, 8, dtype=torch.bool)
    m[0, 1:3, 2:5] = True
    assert D.masks_to_boxes(m).tolist() == [[2, 1, 5, 3], [0, 0, 0, 0]]


# ---- model parts -------------------------------------------------------------------------------

def test_box_coder_round_trip():
    coder = BoxCoder((10, 10, 5, 5))
    ref = torch.tensor([[0.0, 0, 10, 20], [5, 5, 9, 7]])
    gt = torch.tensor([[1.0, 2, 12, 18], [4, 6, 10, 8]])
    deltas = coder.encode(gt, ref)
    assert torch.allclose(coder.decode(deltas, ref), gt, atol=1e-5)
    assert torch.allclose(coder.encode(ref, ref), torch.zeros(2, 4))


def test_matcher_thresholds_and_low_quality():
    iou = torch.tensor([[0.9, 0.5, 0.2, 0.1], [0.1, 0.65, 0.35, 0.0]])
    assert Matcher(0.7, 0.3)(iou).tolist() == [0, Matcher.BETWEEN, Matcher.BETWEEN, Matcher.BELOW]
    # gt 1's best prediction (IoU 0.65) becomes its positive despite the 0.7 threshold.
    assert Matcher(0.7, 0.3, allow_low_quality=True)(iou).tolist() == [0, 1, Matcher.BETWEEN, Matcher.BELOW]
    assert Matcher(0.5, 0.5)(torch.zeros(0, 3)).tolist() == [Matcher.BELOW] * 3


def test_matcher_batched_equals_per_image():
    # The RPN matches all images at once: rows padded with IoU -1 must change nothing, including
    # the low-quality matches and an image without boxes.
    g = torch.Generator().manual_seed(3)
    per_image = [torch.rand(k, 40, generator=g) * (torch.rand(k, 40, generator=g) > 0.3) for k in (3, 1, 0, 2)]
    per_image[1][0, 7] = per_image[1][0, 9] = 0.95  # a tie: both are gt 0's best
    padded = torch.full((4, 3, 40), -1.0)
    for i, iou in enumerate(per_image):
        padded[i, :len(iou)] = iou
    for m in (Matcher(0.7, 0.3, allow_low_quality=True), Matcher(0.5, 0.5)):
        expected = torch.stack([m(iou) for iou in per_image])
        assert torch.equal(m(padded), expected)
    assert Matcher(0.7, 0.3, True)(torch.zeros(2, 0, 5)).tolist() == [[Matcher.BELOW] * 5] * 2


def test_sampler_balance():
    matches = torch.tensor([0] * 10 + [Matcher.BELOW] * 100 + [Matcher.BETWEEN] * 5)
    pos, neg = sample_balanced(matches, 16, 0.25, torch.Generator().manual_seed(0))
    assert len(pos) == 4 and len(neg) == 12
    assert bool((matches[pos] >= 0).all()) and bool((matches[neg] == Matcher.BELOW).all())
    pos, neg = sample_balanced(matches[:12], 16, 0.5)  # few negatives: all of them
    assert len(pos) == 8 and len(neg) == 2


def test_anchors_layout():
    gen = AnchorGenerator((8, 16), (0.5, 1.0, 2.0), stride=2)
    a = gen((3, 4))
    assert a.shape == (3 * 4 * 6, 4)
    centres = (a[:, :2] + a[:, 2:]) / 2
    assert torch.allclose(centres[:6], torch.tensor([[1.0, 1.0]]).expand(6, 2))   # cell (0, 0)
    assert torch.allclose(centres[6], torch.tensor([3.0, 1.0]))                    # cell (0, 1)
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    assert torch.allclose(w * h, torch.tensor([64.0, 256.0] * 3).repeat(12))
    assert torch.allclose(h[:2] / w[:2], torch.tensor([0.5, 0.5]))


def test_paste_masks():
    masks = torch.ones(2, 28, 28)
    boxes = torch.tensor([[2.0, 3.0, 10.0, 7.0], [0.0, 0.0, 16.0, 16.0]])
    pasted = paste_masks(masks, boxes, (12, 16))
    assert pasted.shape == (2, 12, 16)
    inside = torch.zeros(12, 16, dtype=torch.bool)
    inside[3:7, 2:10] = True
    assert torch.equal(pasted[0] > 0.5, inside)
    assert bool((pasted[1][:12, :16] > 0.5).all())


# ---- the model ---------------------------------------------------------------------------------

def _small_model(**kw):
    torch.manual_seed(0)
    return M.get("mask_rcnn", width=8, mask_channels=8, representation=32, box_batch_size=16, rpn_batch_size=64,
                 **kw)


def _batch(data, n, split="train"):
    x, m = getattr(data, split).tensors
    return (x[:n] - data.mean) / data.std, D.instance_targets(m[:n])


def test_forward_train_and_eval_shapes(data):
    model = _small_model()
    assert M.task("mask_rcnn") == "detect"
    x, t = _batch(data, 2)
    model.train()
    losses = model(x, t)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    assert all(v.ndim == 0 and math.isfinite(float(v.detach())) for v in losses.values())
    sum(losses.values()).backward()
    for name in ("rpn_head.objectness.weight", "cls_score.weight", "bbox_pred.weight", "mask_head.0.weight",
                 "backbone.stem.0.weight"):
        assert dict(model.named_parameters())[name].grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        dets = model(x)
        dets_odd = model(torch.randn(1, 1, 50, 37))  # any size: one feature level, anchors per map
    assert len(dets) == 2
    for d in dets + dets_odd:
        k = len(d["boxes"])
        h, w = (64, 64) if d is not dets_odd[0] else (50, 37)
        assert d["boxes"].shape == (k, 4) and d["scores"].shape == (k,) and d["labels"].shape == (k,)
        assert d["masks"].shape == (k, h, w) and d["masks"].dtype == torch.bool
        assert bool((d["scores"] >= model.score_thresh).all()) and bool((d["labels"] == 1).all())
        assert bool((d["boxes"][:, 0::2] <= w).all()) and bool((d["boxes"][:, 1::2] <= h).all())


class _FixedMaskHead(torch.nn.Module):
    """Mask logits whose probability is ``level`` on the top half of each 28x28 map (roi i gets
    levels[i % len]) and 0.1 elsewhere: a known maskness per detection."""

    def __init__(self, levels):
        super().__init__()
        self.levels = torch.tensor(levels)

    def forward(self, x):
        p = torch.full((len(x), 2, 28, 28), 0.1)
        p[:, :, :14] = self.levels[torch.arange(len(x)) % len(self.levels)][:, None, None, None]
        return torch.logit(p)


def test_mask_rescore_multiplies_by_maskness(data):
    model = _small_model().eval()
    x, _ = _batch(data, 1)
    model.mask_head = _FixedMaskHead([0.9, 0.6, 0.75])
    with torch.no_grad():
        plain = model(x)[0]
        model.mask_rescore = True
        rescored = model(x)[0]
    k = len(plain["boxes"])
    assert k >= 3
    # Same detections (NMS still ranks by class score), each score times its mask's mean probability
    # inside the mask (the top half: exactly its level), then sorted again.
    expected = plain["scores"] * torch.tensor([0.9, 0.6, 0.75]).repeat(k)[:k]
    order = expected.argsort(descending=True)
    assert torch.allclose(rescored["scores"], expected[order], atol=1e-5)
    assert torch.equal(rescored["boxes"], plain["boxes"][order])
    assert torch.equal(rescored["masks"], plain["masks"][order])


def test_forward_bad_input(data):
    model = _small_model().train()
    x, t = _batch(data, 2)
    with pytest.raises(ValueError, match="one target dict per image"):
        model(x)
    with pytest.raises(ValueError, match="needs boxes, labels and masks"):
        model(x, [{"boxes": tt["boxes"]} for tt in t])
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        model(x[0], t)
    with pytest.raises(ValueError, match="num_classes"):
        M.get("mask_rcnn", num_classes=1)


def test_image_without_objects_trains(data):
    model = _small_model().train()
    x, t = _batch(data, 2)
    t[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, 64, 64, dtype=torch.bool)}
    losses = model(x, t)
    assert all(math.isfinite(float(v.detach())) for v in losses.values())


def test_short_training_loss_falls(data):
    from pycnn.detection import fit_detection
    model = _small_model()
    x, t = _batch(data, 2)
    history = fit_detection(model, x, t, epochs=8, batch_size=2, lr=1e-2, warmup_steps=1, augment=False,
                            progress=False)
    steps = history.steps
    assert len(steps) == 8 and all(math.isfinite(s) for s in steps)
    assert np.mean(steps[-2:]) < 0.85 * np.mean(steps[:2]), steps


def test_fit_detection_fresh_data_per_epoch(data):
    from pycnn.detection import _normalise, fit_detection, reblended_training_data
    fresh = reblended_training_data({"n": 40, "seed": 3}, 2, data.mean.tolist(), data.std.tolist())
    x, t = fresh(1)
    raw, m, _ = D.galaxy_blends("train", 2, blend_seed=1, seed=3)
    assert torch.allclose(x, _normalise(raw, data.mean.tolist(), data.std.tolist()))
    assert all(torch.equal(a["masks"], b["masks"]) for a, b in zip(t, D.instance_targets(m)))
    # Blend options (the geometric augmentation of the tenth round) reach galaxy_blends.
    turned = reblended_training_data({"n": 40, "seed": 3}, 2, data.mean.tolist(), data.std.tolist(),
                                     any_angle=True, size_range=[0.8, 1.25])
    raw2, m2, _ = D.galaxy_blends("train", 2, blend_seed=1, seed=3, any_angle=True, size_range=[0.8, 1.25])
    x2, t2 = turned(1)
    assert torch.allclose(x2, _normalise(raw2, data.mean.tolist(), data.std.tolist())) and not torch.allclose(x2, x)
    assert all(torch.equal(a["masks"], b["masks"]) for a, b in zip(t2, D.instance_targets(m2)))
    seen = []

    def recording(epoch):
        seen.append(epoch)
        return fresh(epoch)
    x0, t0 = _batch(data, 2)
    history = fit_detection(_small_model(), x0, t0, epochs=3, batch_size=2, warmup_steps=1, progress=False,
                            fresh_data=recording)
    assert seen == [1, 2] and len(history.steps) == 3
    with pytest.raises(ValueError, match="fresh_data"):
        fit_detection(_small_model(), x0, t0, epochs=2, batch_size=2, progress=False,
                      fresh_data=lambda e: tuple(v[:1] for v in fresh(e)))  # fewer images than the schedule


# ---- baseline and command line -------------------------------------------------------------------

def test_watershed_separates_two_blobs():
    from pycnn.detection import watershed_instances
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    blob = lambda cy, cx: torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 30)  # noqa: E731
    img = 0.8 * blob(20, 16) + 0.5 * blob(26, 32)
    (det,) = watershed_instances(img[None, None])
    assert len(det["boxes"]) == 2 and det["masks"].shape == (2, 48, 48)
    assert float(det["scores"][0]) == 1.0 and float(det["scores"][1]) < 1.0   # brightest first
    assert not bool((det["masks"][0] & det["masks"][1]).any())


def test_cli_train_evaluate_detect(tmp_path, capsys, monkeypatch):
    from pycnn.cli import main
    out = tmp_path / "run"
    rc = main(["train", "--model", "mask_rcnn", "--data", "galaxy_instances", "--epochs", "1", "--batch-size", "4",
               "--data-option", "n=16", "--model-option", "width=8", "--model-option", "mask_channels=8",
               "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    assert rc == 0 and "mask AP" in text and "watershed baseline" in text, text
    rc = main(["evaluate", "--checkpoint", str(out / "last.pt")])
    text = capsys.readouterr().out
    assert rc == 0 and "mask AP" in text and "watershed" in text, text
    fig = tmp_path / "det.png"
    assert main(["detect", "--checkpoint", str(out / "last.pt"), "--image", "test:0", "--out", str(fig)]) == 0
    assert fig.stat().st_size > 1000
    # A user's own image file (colour PNG, another size).
    from skimage import io
    own = tmp_path / "own.png"
    io.imsave(own, (np.random.default_rng(0).random((40, 52, 3)) * 255).astype(np.uint8), check_contrast=False)
    assert main(["detect", "--checkpoint", str(out / "last.pt"), "--image", str(own), "--out", str(fig)]) == 0
    capsys.readouterr()
    # An image larger than --tile goes tile by tile (here 32-pixel tiles over 40 x 52, no TTA).
    assert main(["detect", "--checkpoint", str(out / "last.pt"), "--image", str(own), "--out", str(fig),
                 "--tile", "32", "--no-tta", "--score-threshold", "0"]) == 0
    assert "wrote" in capsys.readouterr().out and fig.stat().st_size > 1000
    # --subtract-sky --zoom 2: the model sees the prepared, enlarged image; boxes print in the file's pixels.
    import pycnn.detection as PD
    seen = []

    def fake_detect(model, images):
        seen.append(images)
        h, w = images.shape[-2:]
        return [{"boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([1]), "masks": torch.zeros(1, h, w, dtype=torch.bool)}]
    monkeypatch.setattr(PD, "detect", fake_detect)
    assert main(["detect", "--checkpoint", str(out / "last.pt"), "--image", str(own), "--out", str(fig),
                 "--subtract-sky", "--zoom", "2"]) == 0
    assert seen[0].shape == (1, 1, 80, 104)
    assert "box (5.0, 10.0, 15.0, 20.0)  score 0.900" in capsys.readouterr().out
    table = tmp_path / "cat.csv"
    assert main(["detect", "--checkpoint", str(out / "last.pt"), "--image", str(own), "--out", str(fig),
                 "--zoom", "2", "--csv", str(table)]) == 0
    lines = table.read_text().splitlines()
    assert lines[0] == "id,x1,y1,x2,y2,score,label,area,x_centroid,y_centroid,flux"
    assert lines[1].startswith("1,5.0,10.0,15.0,20.0,0.9,1,0.0,nan,nan,0.0") and len(lines) == 2
    assert main(["detect", "--checkpoint", str(out / "last.pt"), "--image", str(own), "--zoom", "0"]) == 2
    assert "zoom" in capsys.readouterr().err
    assert main(["detect", "--checkpoint", str(out / "last.pt"), "--image", str(tmp_path / "nope.png")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["train", "--model", "unet", "--data", "galaxy_instances", "--data-option", "n=9"]) == 2
    assert "detection" in capsys.readouterr().err
    assert main(["train", "--model", "lenet5", "--data", "digits", "--new-blends"]) == 2
    assert "--new-blends" in capsys.readouterr().err


def test_cli_train_detection_new_blends(tmp_path, capsys, monkeypatch):
    # --new-blends hands fit_detection a fresh_data that blends the run's own training galaxies.
    import pycnn.detection as PD
    from pycnn.cli import main
    seen = []
    fit = PD.fit_detection

    def recording_fit(*a, fresh_data=None, **kw):
        seen.append(fresh_data)
        return fit(*a, fresh_data=fresh_data, **kw)
    monkeypatch.setattr(PD, "fit_detection", recording_fit)
    rc = main(["train", "--model", "mask_rcnn", "--data", "galaxy_instances", "--epochs", "2", "--batch-size", "4",
               "--data-option", "n=12", "--model-option", "width=8", "--model-option", "mask_channels=8",
               "--out", str(tmp_path / "run"), "--quiet", "--new-blends"])
    assert rc == 0 and "new training blends every epoch" in capsys.readouterr().out
    x, t = seen[0](1)  # epoch 1's data: 8 new blends (the training split of n=12) of the data seed's pool
    _, masks, _ = D.galaxy_blends("train", 8, blend_seed=1, seed=0)
    assert len(x) == len(t) == 8 and all(torch.equal(a["masks"], b["masks"])
                                         for a, b in zip(t, D.instance_targets(masks)))


def test_cli_train_detection_defaults_to_the_demo_recipe(tmp_path, capsys, monkeypatch):
    # `pycnn train --model mask_rcnn` with no settings trains the demo's model with the demo's
    # recipe (epochs, batch, lr, weight decay, new blends, model options); each one given wins.
    import pycnn.detection as PD
    from pycnn.cli import main
    seen = []
    fit = PD.fit_detection

    def one_step_fit(model, *a, **kw):
        seen.append((model, kw))
        return fit(model, *a, **dict(kw, epochs=1, max_steps=1))
    monkeypatch.setattr(PD, "fit_detection", one_step_fit)
    assert main(["train", "--model", "mask_rcnn", "--data", "galaxy_instances", "--data-option", "n=12",
                 "--out", str(tmp_path / "a"), "--quiet"]) == 0
    text = capsys.readouterr().out
    model, kw = seen[-1]
    assert (kw["epochs"], kw["batch_size"], kw["lr"], kw["weight_decay"], kw["val_every"]) == (24, 8, 2e-3, 1e-4, 4)
    assert kw["fresh_data"] is not None and "new training blends every epoch" in text
    for key, value in PD.DEMO["full"]["model_kwargs"].items():
        assert kw["config"]["model_kwargs"][key] == value, key
    assert model.tta and model.use_mask_iou and "model options: mask_channels=16" in text
    assert main(["train", "--model", "mask_rcnn", "--data", "galaxy_instances", "--data-option", "n=12",
                 "--epochs", "3", "--batch-size", "4", "--lr", "1e-3", "--weight-decay", "0", "--no-new-blends",
                 "--model-option", "tta=False", "--model-option", "mask_channels=8",
                 "--out", str(tmp_path / "b"), "--quiet"]) == 0
    model, kw = seen[-1]
    assert (kw["epochs"], kw["batch_size"], kw["lr"], kw["weight_decay"]) == (3, 4, 1e-3, 0.0)
    assert kw["fresh_data"] is None and not model.tta and kw["config"]["model_kwargs"]["mask_channels"] == 8
    capsys.readouterr()
    # Settings of the other training loop are refused, not silently ignored.
    for flags in (["--optimizer", "sgd"], ["--schedule", "step"], ["--momentum", "0.5"], ["--loss", "hinge"]):
        assert main(["train", "--model", "mask_rcnn", "--data", "galaxy_instances", "--data-option", "n=12",
                     "--out", str(tmp_path / "d"), "--quiet", *flags]) == 2
        assert " ".join(flags) + ": not used by detection training" in capsys.readouterr().err
    assert not (tmp_path / "d").exists() and len(seen) == 2
    # Other models keep the generic defaults.
    rec = []
    import pycnn.train as T
    monkeypatch.setattr(T, "fit", lambda *a, **kw: rec.append(kw) or T.History())
    assert main(["train", "--model", "lenet5", "--data", "digits", "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert (rec[0]["epochs"], rec[0]["batch_size"], rec[0]["lr"], rec[0]["weight_decay"]) == (10, 64, 3e-3, 0.0)


def test_demo_section_quick(tmp_path):
    # The quick demo's detection run and its report section (figures, AP table) end to end.
    from pycnn.detection import demo_section, run_detection_demo
    from pycnn.report import Report
    r = run_detection_demo(quick=True, out_dir=str(tmp_path), progress=False)
    assert r["quick"] and len(r["history"].steps) <= 6 and len(r["preds"]) == len(r["images"])
    rep = Report(str(tmp_path), "t")
    section = demo_section(r, rep)
    assert section.title == "Detection and instance segmentation" and "watershed" in section.html
    assert {f.path for f in section.figures} == {"detection_examples.png", "detection_curves.png"}
    assert all((tmp_path / f.path).stat().st_size > 1000 for f in section.figures)
    # The full demo's extra figure: the model on a piece of the deep field, sky subtracted, zoomed, tiled.
    from pycnn.detection import field_detections
    norm = r["config"]["normalize"]
    image, det = field_detections(r["model"], norm["mean"], norm["std"], 2, slice(0, 60), slice(10, 80), tile=64)
    assert image.shape == (1, 120, 140) and float(image.min()) == 0.0 and det["instances"].shape == (120, 140)
    assert bool((det["scores"] >= 0.5).all()) and r["model"].tta == r["config"]["model_kwargs"]["tta"]
    r["field"] = (image, det)
    section = demo_section(r, rep)
    assert "detection_field.png" in {f.path for f in section.figures}
    assert (tmp_path / "detection_field.png").stat().st_size > 1000


def test_paste_masks_equals_grid_sample():
    # Reference: torch's grid_sample (bilinear, zero padding, align_corners=False) at the pixel centres.
    import torch.nn.functional as F
    torch.manual_seed(0)
    masks = torch.rand(4, 28, 28)
    boxes = torch.tensor([[2.0, 3, 10, 7], [-3, -2, 5, 40], [5.3, 1.2, 30.7, 20.9], [10, 10, 10.5, 10.5]])
    h, w = 24, 33
    gx = ((torch.arange(w) + 0.5)[None] - boxes[:, 0:1]) / (boxes[:, 2] - boxes[:, 0])[:, None] * 2 - 1
    gy = ((torch.arange(h) + 0.5)[None] - boxes[:, 1:2]) / (boxes[:, 3] - boxes[:, 1])[:, None] * 2 - 1
    grid = torch.stack([gx[:, None, :].expand(4, h, w), gy[:, :, None].expand(4, h, w)], -1)
    ref = F.grid_sample(masks[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]
    assert torch.allclose(paste_masks(masks, boxes, (h, w)), ref, atol=1e-5)


# ---- Soft-NMS on masks, enlarged mask RoIs, transposes ------------------------------------------

def _soft_nms_reference(iou, scores, sigma):
    """Soft-NMS written the slow, obvious way on Python floats."""
    left = {i: float(s) for i, s in enumerate(scores)}
    order, final = [], []
    while left:
        i = max(left, key=lambda j: (left[j], -j))
        order.append(i)
        final.append(left.pop(i))
        for j in left:
            left[j] *= math.exp(-float(iou[i, j]) ** 2 / sigma)
    return order, final


def test_soft_nms_against_reference():
    from pycnn.models.mask_rcnn import mask_iou, soft_nms
    gen = torch.Generator().manual_seed(0)
    for k in (0, 1, 2, 7, 30):
        masks = torch.rand(k, 12, 12, generator=gen) < 0.4
        masks[:k // 3] = masks[k // 3: 2 * (k // 3)]  # exact duplicates: IoU 1
        scores = torch.rand(k, generator=gen)
        iou = mask_iou(masks, masks)
        for sigma in (0.05, 0.3, 2.0):
            order, final = soft_nms(iou, scores, sigma)
            ref_order, ref_final = _soft_nms_reference(iou, scores, sigma)
            assert order.tolist() == ref_order
            assert torch.allclose(final, torch.tensor(ref_final, dtype=torch.float32), atol=1e-6)
            assert bool((final[:-1] >= final[1:]).all())  # pick order is descending in the decayed scores
    # Disjoint masks: nothing decays. A duplicate of the best: its score times exp(-1 / sigma).
    a = torch.zeros(3, 4, 4, dtype=torch.bool)
    a[0, :2], a[1, :2], a[2, 2:] = True, True, True
    order, final = soft_nms(mask_iou(a, a), torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert order.tolist() == [0, 2, 1]
    assert torch.allclose(final, torch.tensor([0.9, 0.7, 0.8 * math.exp(-2.0)]))
    with pytest.raises(ValueError, match="sigma"):
        soft_nms(torch.zeros(1, 1), torch.ones(1), 0.0)


def test_mask_iou_against_reference():
    from pycnn.models.mask_rcnn import mask_iou
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(5, 9, 7, generator=gen) < 0.5, torch.rand(3, 9, 7, generator=gen) < 0.3
    b[0] = False  # empty mask: IoU 0, not NaN
    iou = mask_iou(a, b)
    for i in range(5):
        for j in range(3):
            union = int((a[i] | b[j]).sum())
            expected = int((a[i] & b[j]).sum()) / union if union else 0.0
            assert abs(float(iou[i, j]) - expected) < 1e-6


def test_scale_boxes():
    from pycnn.models.mask_rcnn import scale_boxes
    boxes = torch.tensor([[2.0, 4.0, 6.0, 12.0], [-1.0, 0.0, 1.0, 1.0]])
    assert torch.equal(scale_boxes(boxes, 1.0), boxes)
    assert torch.allclose(scale_boxes(boxes, 1.5), torch.tensor([[1.0, 2.0, 7.0, 14.0], [-1.5, -0.25, 1.5, 1.25]]))


def test_soft_nms_and_enlarged_mask_rois_in_the_model(data):
    model = _small_model(mask_roi_scale=1.25, soft_nms_sigma=0.3, mask_rescore=True)
    x, t = _batch(data, 2)
    sum(model.train()(x, t).values()).backward()  # the enlarged RoIs train
    model.eval()
    model.score_thresh = 0.0  # an untrained model: keep every candidate
    with torch.no_grad():
        dets = model(x)
    for d in dets:
        k = len(d["boxes"])
        assert k > 0 and d["masks"].shape == (k, 64, 64) and d["mask_probs"].shape == (k, 64, 64)
        assert bool((d["scores"][:-1] >= d["scores"][1:]).all())
    # Enlarged RoIs: a mask of ones covers the enlarged box, so it reaches past the box itself.
    model.mask_head = _FixedMaskHead([0.99])
    with torch.no_grad():
        d = model(x[:1])[0]
    from pycnn.models.mask_rcnn import scale_boxes
    i = int(((d["boxes"][:, 2] - d["boxes"][:, 0]) * (d["boxes"][:, 3] - d["boxes"][:, 1])).argmax())
    top = scale_boxes(d["boxes"][i:i + 1], 1.25)[0]
    assert float(top[1]) < float(d["boxes"][i, 1])
    rows = torch.nonzero(d["masks"][i].any(1)).flatten()
    assert int(rows.min()) < float(d["boxes"][i, 1]) - 0.5 or float(d["boxes"][i, 1]) < 1.0
    with pytest.raises(ValueError, match="mask_roi_scale"):
        M.get("mask_rcnn", mask_roi_scale=0.8)


def test_box_head_reads_enlarged_rois_in_training_and_inference(data):
    """box_roi_scale: the box head's 7x7 RoIAlign reads each proposal (training: each sampled RoI)
    enlarged about its centre, in training and in inference alike."""
    from pycnn.models.mask_rcnn import scale_boxes
    model = _small_model(box_roi_scale=1.25)
    read, sampled = [], []
    roi_align, sample_rois = model._roi_align, model._sample_rois

    def record_roi_align(features, boxes, size):
        if size == 7:
            read.append(torch.cat(boxes))
        return roi_align(features, boxes, size)

    def record_sample_rois(proposals, targets):
        out = sample_rois(proposals, targets)
        sampled.append(torch.cat(out[0]))
        return out
    model._roi_align, model._sample_rois = record_roi_align, record_sample_rois
    x, t = _batch(data, 2)
    sum(model.train()(x, t).values()).backward()
    assert len(read) == 1 and torch.equal(read[0], scale_boxes(sampled[0], 1.25))
    assert bool(((read[0][:, 2] - read[0][:, 0]) > (sampled[0][:, 2] - sampled[0][:, 0])).any())
    model.eval()
    model.score_thresh = 0.0
    proposals = []
    model_proposals = model._proposals

    def record_proposals(*args):
        proposals.append(model_proposals(*args))
        return proposals[-1]
    model._proposals = record_proposals
    read.clear()
    with torch.no_grad():
        model(x)
    assert torch.equal(read[0], scale_boxes(torch.cat(proposals[0]), 1.25))
    with pytest.raises(ValueError, match="box_roi_scale"):
        M.get("mask_rcnn", box_roi_scale=0.5)


def test_flip_targets_transpose(data):
    from pycnn.detection import flip_targets
    from pycnn.data.instances import masks_to_boxes
    x, t = _batch(data, 3)
    yes, no = torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)
    xt, tt = flip_targets(x, t, no, no, yes)
    assert torch.equal(xt, x.transpose(-1, -2))
    for a, b in zip(t, tt):
        assert torch.equal(b["masks"], a["masks"].transpose(-1, -2))
        assert torch.equal(b["boxes"], masks_to_boxes(b["masks"]))  # boxes still fit their masks
    # All three: the boxes still fit the moved masks.
    xa, ta = flip_targets(x, t, yes, yes, yes)
    for b in ta:
        assert torch.equal(b["boxes"], masks_to_boxes(b["masks"]))
    with pytest.raises(ValueError, match="square"):
        flip_targets(torch.zeros(1, 1, 4, 6), [t[0]], no[:1], no[:1], yes[:1])


# ---- test-time augmentation and the MaskIoU head -----------------------------------------------

def test_dihedral_views_round_trip_and_agree():
    from pycnn.data.instances import masks_to_boxes
    from pycnn.models.mask_rcnn import Dihedral
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(3, 20, 20, dtype=torch.bool)
    masks[0, 2:7, 3:15], masks[1, 10:19, 0:4], masks[2, 5:6, 12:20] = True, True, True
    boxes = masks_to_boxes(masks)
    views = Dihedral.all((20, 20))
    assert len(views) == 8 and len(Dihedral.all((20, 24))) == 4
    assert len({(v.transpose, v.horizontal, v.vertical) for v in views}) == 8
    x = torch.rand(2, 1, 20, 20, generator=gen)
    for v in views:
        assert torch.equal(v.unimage(v.image(x)), x)
        assert torch.equal(v.unboxes(v.boxes(boxes)), boxes)
        assert torch.equal(v.boxes(boxes), masks_to_boxes(v.image(masks)))  # boxes move with the image


def test_pasted_mask_iou_against_reference():
    from pycnn.models.mask_rcnn import mask_iou, paste_masks, pasted_mask_iou
    gen = torch.Generator().manual_seed(2)
    probs = torch.rand(4, 28, 28, generator=gen)
    boxes = torch.tensor([[2.0, 3, 10, 7], [-3, -2, 5, 14], [5.3, 1.2, 15.7, 15.9], [0, 0, 16, 16]])
    gt = torch.rand(4, 16, 16, generator=gen) < 0.5
    iou = pasted_mask_iou(probs, boxes, gt, 0.5)
    pasted = paste_masks(probs, boxes, (16, 16)) > 0.5
    for k in range(4):
        assert abs(float(iou[k]) - float(mask_iou(pasted[k:k + 1], gt[k:k + 1])[0, 0])) < 1e-6


def test_mask_iou_head_trains_and_rescores(data):
    x, t = _batch(data, 2)
    for train_iou in (0.25, 0.5):  # with and without the near-miss negatives
        model = _small_model(mask_iou_head=True, mask_iou_train_iou=train_iou)
        losses = model.train()(x, t)
        assert "loss_mask_iou" in losses and math.isfinite(float(losses["loss_mask_iou"].detach()))
        sum(losses.values()).backward()
        assert model.maskiou_head[0].weight.grad.abs().sum() > 0
    model.eval()
    model.score_thresh = 0.0
    # A MaskIoU head that predicts known values: 0.8 for class 1 (its bias), 0 from the input.
    last = model.maskiou_head[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 0.8]))
        model.use_mask_iou = False
        plain = model(x)[0]
        model.use_mask_iou = True
        rescored = model(x)[0]
    assert torch.allclose(plain["mask_iou"], torch.full_like(plain["mask_iou"], 0.8))
    assert torch.allclose(rescored["scores"], plain["scores"] * 0.8)
    with torch.no_grad():
        model.tta = True
        tta = model(x)
    for d in tta:
        k = len(d["boxes"])
        assert k > 0 and d["masks"].shape == (k, 64, 64) and bool((d["scores"][:-1] >= d["scores"][1:]).all())


def _sorted_rows(b):
    return b[np.lexsort(b.T.numpy()[::-1])]


def test_tta_proposals_pool_every_view_in_the_image_frame(data):
    # With tta the proposals are every view's RPN candidates mapped back into the image and NMS'd
    # together. The 8 views form a group, so the proposals of a flipped/transposed image are the
    # original's proposals flipped/transposed: this fails if a view's boxes stayed in its own frame.
    x, _ = _batch(data, 2)
    model = _small_model(tta=True, tta_proposals=12).eval()
    size = tuple(x.shape[-2:])

    def proposals(images):
        with torch.no_grad():
            views = [(v, model.backbone(v.image(images))) for v in Dihedral.all(size)]
            return model._tta_proposals(views, size)

    plain = proposals(x)
    assert all(0 < len(p) <= 12 for p in plain)
    for v in (Dihedral(True, True, False, size), Dihedral(False, False, True, size)):
        for got, ref in zip(proposals(v.image(x)), plain):
            assert torch.allclose(_sorted_rows(got), _sorted_rows(v.boxes(ref)), atol=1e-3)
    # More proposals than the identity view's 50 (the RPN's test-time count) are allowed, and a
    # non-square image pools its 4 flips.
    with torch.no_grad():
        wide = model(x[..., :48])
    assert len(wide) == 2 and all(d["masks"].shape[-2:] == (64, 48) for d in wide)
    with pytest.raises(ValueError, match="tta_proposals"):
        _small_model(tta_proposals=0)


def test_mask_dice_loss_adds_the_soft_dice_of_the_mask_logits(data):
    # Same sampled RoIs (same seed) and weights: loss_mask(w) = BCE + w * mean soft Dice loss, so
    # it is linear in w, and the Dice term lies in (0, 1); the other losses do not change.
    x, t = _batch(data, 2)
    model = _small_model().train()
    captured = []
    model.mask_head.register_forward_hook(lambda m, i, o: captured.append(o.detach()))

    def losses(w):
        model.mask_dice_weight = w
        torch.manual_seed(1)
        return {k: float(v.detach()) for k, v in model(x, t).items()}

    l0, l1, l2 = losses(0.0), losses(1.0), losses(2.0)
    dice = l1["loss_mask"] - l0["loss_mask"]
    assert 0.0 < dice < 1.0
    assert abs((l2["loss_mask"] - l0["loss_mask"]) - 2 * dice) < 1e-5
    assert all(l0[k] == l1[k] for k in l0 if k != "loss_mask")
    from pycnn.models.mask_rcnn import MaskRCNN
    assert captured[0].shape[1:] == (2, 28, 28) and torch.equal(captured[0], captured[1])  # the same RoIs
    with pytest.raises(ValueError, match="mask_dice_weight"):
        MaskRCNN(mask_dice_weight=-1.0)


def test_mask_head_batch_norm(data):
    model = _small_model(mask_head_bn=True)
    norms = [m for m in model.mask_head if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 4 and all(type(m).__module__.startswith("pycnn") for m in norms)
    x, t = _batch(data, 2)
    model.train()
    sum(model(x, t).values()).backward()
    assert all(m.weight.grad.abs().sum() > 0 for m in norms)
    assert all(m.num_batches_tracked == 1 for m in norms)
    model.eval()
    with torch.no_grad():
        dets = model(x)
    assert len(dets) == 2 and all(d["masks"].shape[1:] == (64, 64) for d in dets)
    # A state dict without the norms (a model trained before the option) does not load into it.
    with pytest.raises(RuntimeError):
        model.load_state_dict(_small_model().state_dict())


def test_box_loss_weight_scales_only_the_box_head_regression(data):
    x, t = _batch(data, 2)
    model = _small_model().train()

    def losses(w):
        model.box_loss_weight = w
        torch.manual_seed(1)
        return {k: float(v.detach()) for k, v in model(x, t).items()}

    l1, l05 = losses(1.0), losses(0.5)
    assert l1["loss_box_reg"] > 0 and abs(l05["loss_box_reg"] - 0.5 * l1["loss_box_reg"]) < 1e-6
    assert all(l1[k] == l05[k] for k in l1 if k != "loss_box_reg")


def test_mask_batch_size_caps_the_mask_heads_rois_per_image(data):
    x, t = _batch(data, 3)
    model = _small_model(mask_iou_head=True).train()  # box_batch_size 16 x 0.25: up to 4 positives per image
    seen = []
    model.mask_head.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))

    def losses(cap):
        model.mask_batch_size = cap
        torch.manual_seed(1)
        return {k: float(v.detach()) for k, v in model(x, t).items()}

    everything, capped = losses(0), losses(1)
    assert seen == [12, 3]  # 4 positives per image, then the first one of each
    # The RPN and box head train on the same sampled RoIs either way; only the mask branch changes.
    assert all(everything[k] == capped[k] for k in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                                                    "loss_box_reg"))
    assert capped["loss_mask"] != everything["loss_mask"] and "loss_mask_iou" in capped
    sum(model(x, t).values()).backward()  # the capped branch still trains the heads
    assert model.mask_head[0].weight.grad.abs().sum() > 0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="mask_batch_size"):
            _small_model(mask_batch_size=bad)


def test_prepare_sky_image_matches_the_training_galaxies_preprocessing():
    from pycnn.detection import prepare_sky_image
    import torch.nn.functional as F
    img = torch.rand(1, 9, 12) * 0.2 + 0.05
    flat = prepare_sky_image(img, subtract_sky=True)
    assert float(flat.min()) == 0.0 and torch.allclose(flat, (img - img.flatten().median()).clamp_min(0))
    assert (flat == 0).sum() >= img.numel() // 2  # everything up to the median is sky
    big = prepare_sky_image(img, zoom=2)
    assert big.shape == (1, 18, 24)
    torch.testing.assert_close(big, F.interpolate(img[None], scale_factor=2, mode="bilinear", align_corners=False)[0])
    assert torch.equal(prepare_sky_image(img), img)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="zoom"):
            prepare_sky_image(img, zoom=bad)
    with pytest.raises(ValueError, match="C, H, W"):
        prepare_sky_image(img[0])


def test_tile_cores_partition_the_image_inside_their_tiles():
    from pycnn.detection import _core_bounds, _tile_starts
    for length, tile, margin in ((64, 64, 8), (100, 48, 8), (200, 64, 16), (129, 40, 0), (30, 64, 10)):
        t = min(tile, length)
        starts = _tile_starts(length, t, tile - 2 * margin)
        assert starts[0] == 0 and starts[-1] == length - t and starts == sorted(set(starts))
        cores = _core_bounds(starts, t)
        for p in np.arange(0, length, 0.5):  # every position in exactly one core ...
            owners = [i for i, (a, b) in enumerate(cores) if a <= p < b]
            assert len(owners) == 1
            s = starts[owners[0]]  # ... which lies >= margin inside its tile (image edges excepted)
            assert (p - s >= margin or s == 0) and (s + t - p >= margin or s + t == length)


def test_detect_tiled_equals_per_tile_detection_when_tiles_are_the_images(data):
    # A 2 x 2 mosaic of four images, tiles of exactly one image (no margin): detect_tiled must give
    # each image's own detections, moved to its place, and their masks in the instance map.
    from pycnn.detection import detect, detect_tiled
    x, _ = _batch(data, 4, "test")
    model = _small_model().eval()
    mosaic = torch.cat([torch.cat([x[0], x[1]], -1), torch.cat([x[2], x[3]], -1)], -2)
    got = detect_tiled(model, mosaic, tile=64, margin=0)
    want = detect(model, x)
    offsets = [(0, 0), (0, 64), (64, 0), (64, 64)]
    boxes = torch.cat([d["boxes"] + torch.tensor([ox, oy, ox, oy]) for d, (oy, ox) in zip(want, offsets)])
    scores = torch.cat([d["scores"] for d in want])
    assert len(scores) > 0 and len(got["scores"]) == len(scores)
    order = torch.argsort(scores, descending=True, stable=True)
    torch.testing.assert_close(got["scores"], scores[order])
    torch.testing.assert_close(got["boxes"], boxes[order])
    assert got["instances"].shape == (128, 128) and int(got["instances"].max()) <= len(scores)
    # The map: each pixel carries the highest-scoring detection whose mask covers it.
    canvas = torch.zeros(128, 128, dtype=torch.int32)
    flat = [(float(s), oy, ox, m) for dd, (oy, ox) in zip(want, offsets) for s, m in zip(dd["scores"], dd["masks"])]
    ranked = sorted(range(len(flat)), key=lambda i: -flat[i][0])
    for k in reversed(range(len(ranked))):
        s, oy, ox, m = flat[ranked[k]]
        canvas[oy:oy + 64, ox:ox + 64][m.bool()] = k + 1
    assert torch.equal(got["instances"], canvas)
    # A score threshold drops the rest; bad tilings are refused.
    top = detect_tiled(model, mosaic, tile=64, margin=0, score_threshold=float(scores.median()))
    assert 0 < len(top["scores"]) < len(scores) and bool((top["scores"] >= scores.median()).all())
    for tile, margin in ((4, 0), (64, 32), (64, -1)):
        with pytest.raises(ValueError, match="tile"):
            detect_tiled(model, mosaic, tile=tile, margin=margin)


def test_detect_tiled_keeps_each_detection_from_the_tile_whose_core_holds_it(data):
    # Overlapping tiles (64 wide every 32 pixels): a detection is kept from tile t only if its box
    # centre lies in t's core; without that rule the overlaps would report objects twice.
    from pycnn.detection import detect, detect_tiled
    x, _ = _batch(data, 2, "test")
    model = _small_model().eval()
    strip = torch.cat([x[0], x[1]], -1)  # [1, 64, 128]
    got = detect_tiled(model, strip, tile=64, margin=16)
    starts, cores = [0, 32, 64], [(-math.inf, 48.0), (48.0, 80.0), (80.0, math.inf)]
    want = []
    for s, (a, b), d in zip(starts, cores, detect(model, torch.stack([strip[:, :, s:s + 64] for s in starts]))):
        boxes = d["boxes"] + torch.tensor([s, 0, s, 0])
        centre = 0.5 * (boxes[:, 0] + boxes[:, 2])
        want += [(float(sc), tuple(bx.tolist())) for sc, bx, c in zip(d["scores"], boxes, centre) if a <= c < b]
    all_tiles = sum(len(d["scores"]) for d in detect(model, torch.stack([strip[:, :, s:s + 64] for s in starts])))
    assert 0 < len(want) < all_tiles
    assert sorted(want) == sorted((float(s), tuple(b.tolist())) for s, b in zip(got["scores"], got["boxes"]))


def test_detection_catalogue_areas_centroids_and_fluxes():
    from pycnn.detection import detection_catalogue
    image = torch.zeros(1, 6, 8)
    image[0, 1:3, 1:5] = 2.0  # object A: rows 1-2, columns 1-4
    image[0, 2:5, 4:7] = 1.0  # object B: rows 2-4, columns 4-6 (shares pixel (2, 4) with A)
    a = image[0] == 2.0
    b = torch.zeros(6, 8, dtype=torch.bool)
    b[2:5, 4:7] = True
    a[2, 4] = True  # A's mask also covers the shared pixel; B scores higher, so B owns it
    det = {"boxes": torch.tensor([[4.0, 2.0, 7.0, 5.0], [1.0, 1.0, 5.0, 3.0]]), "scores": torch.tensor([0.9, 0.6]),
           "labels": torch.tensor([1, 1]), "masks": torch.stack([b, a])}
    rows = detection_catalogue(det, image)
    assert [r["id"] for r in rows] == [1, 2] and rows[0]["score"] == pytest.approx(0.9)
    assert rows[0]["area"] == 9 and rows[1]["area"] == 7  # A (8 pixels of mask) loses the shared one
    assert rows[0]["x_centroid"] == pytest.approx(5.5) and rows[0]["y_centroid"] == pytest.approx(3.5)
    assert rows[0]["flux"] == pytest.approx(9.0)  # pixel (2, 4) is 1.0: A's 2.0 there was overwritten
    assert rows[1]["flux"] == pytest.approx(7 * 2.0)
    # In a zoomed image's pixels: positions and sizes scale, areas and fluxes by the pixel's area.
    half = detection_catalogue(det, image, (0.5, 0.5))
    assert half[0]["x2"] == pytest.approx(3.5) and half[0]["x_centroid"] == pytest.approx(2.75)
    assert half[0]["area"] == pytest.approx(9 / 4) and half[1]["flux"] == pytest.approx(14 / 4)
    # detect_tiled's instance map gives the same rows.
    from pycnn.detection import _paint_instances
    tiled = {k: v for k, v in det.items() if k != "masks"}
    tiled["instances"] = _paint_instances((6, 8), [(b, 0, 0), (a, 0, 0)])
    assert detection_catalogue(tiled, image) == rows
