"""Scores a model saved by exp/run.py on a split: exp/score.py NAME SPLIT"""
import json, sys
import torch
torch.set_num_threads(1)
import pycnn.models as M
from pycnn import detection as D
from pycnn.metrics import best_score_threshold
name, split = sys.argv[1], sys.argv[2]
spec = D.DEMO["full"]
splits, targets = D.load_instances(dict(spec["data_kwargs"], seed=0))
mean, std = splits.mean.tolist(), splits.std.tolist()
st = torch.load(f"exp/{name}.pt")
model = M.get("mask_rcnn", **st["kw"]); model.load_state_dict(st["model"]); model.eval()
val_raw, val_t = splits.val.tensors[0][:100], targets["val"][:100]
thr = best_score_threshold(D.detect(model, D._normalise(val_raw, mean, std)), val_t)
preds = D.detect(model, D._normalise(getattr(splits, split).tensors[0], mean, std))
s = D.evaluate_detection(preds, None, targets[split], score_threshold=thr)
print(name, split, f"thr {thr}", D.format_scores(split, s))
with open("exp/scores.txt", "a") as f:
    f.write(f"{name} {split} thr {thr} " + D.format_scores(split, s) + "\n")
