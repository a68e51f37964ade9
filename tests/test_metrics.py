"""pycnn.metrics.coco_ap against hand-worked cases and against pycocotools (when installed), on
random and on real predictions; completeness and purity."""
import contextlib
import io

import numpy as np
import pytest
import torch

from pycnn.metrics import best_score_threshold, box_iou_xyxy, coco_ap, completeness_purity, mask_iou


def _box_masks(boxes, h=32, w=32):
    m = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
        m[i, y1:y2, x1:x2] = True
    return m


def _target(boxes, labels=None):
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.ones(len(boxes), dtype=torch.int64) if labels is None else torch.as_tensor(labels)
    return {"boxes": boxes, "labels": labels, "masks": _box_masks(boxes)}


def _pred(boxes, scores, labels=None):
    t = _target(boxes, labels)
    t["scores"] = torch.as_tensor(scores, dtype=torch.float32)
    return t


def test_perfect_and_empty():
    t = [_target([[1, 1, 10, 10], [12, 12, 20, 30]])]
    p = [_pred([[1, 1, 10, 10], [12, 12, 20, 30]], [0.9, 0.8])]
    for iou_type in ("bbox", "segm"):
        r = coco_ap(p, t, iou_type)
        assert all(r[k] == pytest.approx(1.0) for k in ("map", "map_50", "map_75"))
    assert coco_ap([_pred([], [])], t)["map"] == 0.0
    assert coco_ap([_pred([[0, 0, 4, 4]], [1.0])], [_target([])])["map"] == -1.0  # no ground truth at all


def test_hand_worked_precision_recall():
    # Two true boxes; detections ranked: false positive, hit, hit -> precision at recall 0.5 is 1/2,
    # at recall 1.0 is 2/3, the envelope from the right gives 2/3 everywhere: AP = 2/3 at every IoU.
    t = [_target([[0, 0, 10, 10], [20, 20, 30, 30]])]
    p = [_pred([[40, 40, 50, 50], [0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.8, 0.7])]
    r = coco_ap(p, t, "bbox")
    assert r["map"] == pytest.approx(2 / 3, abs=1e-6)
    # A detection with IoU 0.62 counts at 0.5, 0.55 and 0.6 only: 3 of 10 thresholds.
    t = [_target([[0, 0, 10, 10]])]
    p = [_pred([[0, 0, 10, 6.2]], [0.5])]
    r = coco_ap(p, t, "bbox")
    assert r["map_50"] == pytest.approx(1.0) and r["map_75"] == 0.0 and r["map"] == pytest.approx(0.3)


def test_greedy_matching_one_gt_per_detection():
    # Two detections on one object: the higher score matches, the duplicate is a false positive.
    t = [_target([[0, 0, 10, 10]])]
    p = [_pred([[0, 0, 10, 10], [0, 0, 10, 10]], [0.6, 0.9])]
    r = coco_ap(p, t, "bbox")
    assert r["map"] == pytest.approx(1.0)  # the true positive comes first, the FP after full recall
    c = completeness_purity(p, t, "bbox")
    assert c["completeness"] == 1.0 and c["purity"] == 0.5


def test_best_score_threshold_is_the_best_f1_operating_point():
    # Two objects found at scores 0.9 and 0.3, a false detection at 0.6: at threshold 0.3 both
    # objects and the false one (F1 0.8), at 0.6 one object and the false one (F1 0.5), at 0.9 one
    # object alone (F1 0.67). Ties keep the candidate tried first (0.1 finds what 0.3 finds).
    t = [_target([[0, 0, 10, 10], [20, 20, 30, 30]])]
    p = [_pred([[0, 0, 10, 10], [40, 40, 50, 50], [20, 20, 30, 30]], [0.9, 0.6, 0.3])]
    assert best_score_threshold(p, t, "bbox", candidates=(0.1, 0.3, 0.6, 0.9)) == 0.1
    assert best_score_threshold(p, t, "bbox", candidates=(0.6, 0.9, 0.3)) == 0.3
    assert best_score_threshold(p, t, "bbox", candidates=(0.6, 0.9)) == 0.9
    # no detections at all above any candidate: the first candidate, no crash on nan
    assert best_score_threshold(p, t, "bbox", candidates=(0.95, 0.99)) == 0.95


def test_iou_helpers():
    a = np.array([[0, 0, 2, 2]], float)
    b = np.array([[1, 1, 3, 3], [5, 5, 5, 5]], float)
    np.testing.assert_allclose(box_iou_xyxy(a, b), [[1 / 7, 0.0]])
    ma = _box_masks(torch.tensor([[0., 0, 2, 2]])).numpy()
    mb = _box_masks(torch.tensor([[1., 1, 3, 3], [5, 5, 5, 5]])).numpy()
    np.testing.assert_allclose(mask_iou(ma, mb), [[1 / 7, 0.0]])


def test_bad_input():
    with pytest.raises(ValueError, match="iou_type"):
        coco_ap([], [], iou_type="keypoints")
    with pytest.raises(ValueError, match="1 prediction dicts but 2 target"):
        coco_ap([_pred([], [])], [_target([]), _target([])])
    with pytest.raises(ValueError, match="lacks"):
        coco_ap([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}], [_target([])])


# ---- against pycocotools ------------------------------------------------------------------------

def _pycocotools(preds, targets, iou_type):
    pytest.importorskip("pycocotools")
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(m):
        r = mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
        r["counts"] = r["counts"].decode("ascii")
        return r

    def xywh(b):
        x1, y1, x2, y2 = b.tolist()
        return [x1, y1, x2 - x1, y2 - y1]

    h, w = targets[0]["masks"].shape[-2:]
    cats = sorted({int(c) for d in list(preds) + list(targets) for c in d["labels"].tolist()}) or [1]
    gt = {"images": [{"id": i, "height": h, "width": w} for i in range(len(targets))],
          "categories": [{"id": c} for c in cats], "annotations": []}
    for i, t in enumerate(targets):
        for b, lab, m in zip(t["boxes"], t["labels"], t["masks"]):
            bb = xywh(b)
            gt["annotations"].append({"id": len(gt["annotations"]) + 1, "image_id": i, "category_id": int(lab),
                                      "bbox": bb, "area": float(m.sum()) if iou_type == "segm" else bb[2] * bb[3],
                                      "iscrowd": 0, "segmentation": rle(m)})
    dets = []
    for i, p in enumerate(preds):
        for b, s, lab, m in zip(p["boxes"], p["scores"], p["labels"], p["masks"]):
            d = {"image_id": i, "category_id": int(lab), "score": float(s)}
            d.update({"bbox": xywh(b)} if iou_type == "bbox" else {"segmentation": rle(m)})
            dets.append(d)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets) if dets else COCO()
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": ev.stats[0], "map_50": ev.stats[1], "map_75": ev.stats[2], "mar_100": ev.stats[8]}


def _random_case(seed, n_images=12, classes=3, max_gt=5, max_det=12, size=32):
    g = torch.Generator().manual_seed(seed)

    def boxes(n):
        xy = torch.rand(n, 2, generator=g) * (size - 8)
        wh = 2 + torch.rand(n, 2, generator=g) * 14
        return torch.cat([xy, (xy + wh).clamp(max=size)], 1).round()

    preds, targets = [], []
    for i in range(n_images):
        n_gt = int(torch.randint(0, max_gt + 1, (1,), generator=g))
        tb = boxes(n_gt)
        tl = torch.randint(1, classes + 1, (n_gt,), generator=g)
        # Detections: jittered copies of some truths (varied IoU) plus random boxes; scores with ties.
        k = int(torch.randint(0, n_gt + 1, (1,), generator=g))
        jitter = (torch.randn(k, 4, generator=g) * 1.5).round()
        db = torch.cat([(tb[:k] + jitter).clamp(0, size), boxes(int(torch.randint(0, max_det, (1,), generator=g)))])
        db[:, 2:] = torch.maximum(db[:, 2:], db[:, :2] + 1)
        dl = torch.cat([tl[:k], torch.randint(1, classes + 1, (len(db) - k,), generator=g)])
        ds = (torch.rand(len(db), generator=g) * 10).round() / 10
        targets.append({"boxes": tb, "labels": tl, "masks": _box_masks(tb, size, size)})
        preds.append({"boxes": db, "labels": dl, "scores": ds, "masks": _box_masks(db, size, size)})
    return preds, targets


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pycocotools_random(seed, iou_type):
    preds, targets = _random_case(seed)
    ours = coco_ap(preds, targets, iou_type)
    ref = _pycocotools(preds, targets, iou_type)
    for k in ("map", "map_50", "map_75", "mar_100"):
        assert ours[k] == pytest.approx(ref[k], abs=1e-9), (k, ours, ref)


def test_matches_pycocotools_max_dets():
    # More than 100 detections in an image: only the 100 best count.
    preds, targets = _random_case(5, n_images=2, max_det=150, classes=1)
    ours, ref = coco_ap(preds, targets, "bbox"), _pycocotools(preds, targets, "bbox")
    assert ours["map"] == pytest.approx(ref["map"], abs=1e-9)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_matches_pycocotools_real_predictions(iou_type):
    # Real deblending output (the watershed baseline) on real blended galaxies, free-form masks.
    import pycnn.data as D
    from pycnn.detection import watershed_instances
    s = D.get("galaxy_instances", n=60)
    images, masks = s.test.tensors
    targets = D.instance_targets(masks)
    preds = watershed_instances(images)
    ours, ref = coco_ap(preds, targets, iou_type), _pycocotools(preds, targets, iou_type)
    assert 0.0 < ours["map"] < 1.0
    for k in ("map", "map_50", "map_75", "mar_100"):
        assert ours[k] == pytest.approx(ref[k], abs=1e-9), (k, ours, ref)
