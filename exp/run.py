"""Issue #12 (rounds 4-5): one training run of the demo's Mask R-CNN with extra model options,
scored on the validation split (or test with --split test). Not part of the package."""
import argparse, json, time, sys
import torch
torch.set_num_threads(1)
import pycnn.models as M
from pycnn import detection as D
from pycnn.models.mask_rcnn import mask_iou

p = argparse.ArgumentParser()
p.add_argument("--name", required=True)
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--opts", default="{}")
p.add_argument("--split", default="val")
p.add_argument("--batch-size", type=int, default=8)
p.add_argument("--lr", type=float, default=2e-3)
p.add_argument("--reblend", action="store_true", help="new blends of the training galaxies every epoch")
a = p.parse_args()
spec = D.DEMO["full"]
splits, targets = D.load_instances(dict(spec["data_kwargs"], seed=0))
mean, std = splits.mean.tolist(), splits.std.tolist()
kw = dict({"in_channels": 1, "num_classes": 2}, **spec["model_kwargs"])
kw.update(json.loads(a.opts))
torch.manual_seed(a.seed)
model = M.get("mask_rcnn", **kw)
nparam = sum(p.numel() for p in model.parameters())
c0, t0 = time.process_time(), time.perf_counter()
fresh = (D.reblended_training_data(dict(spec["data_kwargs"], seed=0), len(splits.train), mean, std)
         if a.reblend else None)
h = D.fit_detection(model, D._normalise(splits.train.tensors[0], mean, std), targets["train"], epochs=a.epochs,
                    batch_size=a.batch_size, lr=a.lr, seed=a.seed, progress=False, fresh_data=fresh)
cpu, wall = time.process_time() - c0, time.perf_counter() - t0
torch.save({"model": model.state_dict(), "kw": kw}, f"exp/{a.name}.pt")
c1 = time.process_time()
imgs = getattr(splits, a.split).tensors[0]
tg = targets[a.split]
preds = D.detect(model, D._normalise(imgs, mean, std))
s = D.evaluate_detection(preds, None, tg)
ious = []
for pr, t in zip(preds, tg):
    k = pr["scores"] > 0.3
    if k.any() and len(t["masks"]):
        ious.append(mask_iou(pr["masks"][k], t["masks"].bool()).max(1).values)
eval_cpu = time.process_time() - c1
cand = float(torch.cat(ious).mean()) if ious else 0.0
last = h.epochs[-1]
res = {"name": a.name, "split": a.split, "epochs": a.epochs, "seed": a.seed, "lr": a.lr, "opts": json.loads(a.opts),
       "reblend": a.reblend, "epoch_cpu_s": [round(r["cpu_seconds"], 1) for r in h.epochs],
       "mask_ap": s["segm"]["map"], "mask_ap50": s["segm"]["map_50"], "mask_ap75": s["segm"]["map_75"],
       "box_ap": s["bbox"]["map"], "box_ap50": s["bbox"]["map_50"], "box_ap75": s["bbox"]["map_75"],
       "cand_iou": cand, "n_cand": int(sum(len(x) for x in ious) if ious else 0), "train_cpu_s": cpu, "train_wall_s": wall,
       "steps": len(h.steps), "eval_cpu_s": eval_cpu, "params": nparam,
       "last_losses": {k: round(v, 4) for k, v in last.items() if k.startswith("loss")}}
print(json.dumps(res))
with open("exp/results.jsonl", "a") as f:
    f.write(json.dumps(res) + "\n")
