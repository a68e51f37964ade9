"""CPU seconds per training step (batch 8) of model option sets, interleaved in one process."""
import json, sys, time
import torch
torch.set_num_threads(1)
import pycnn.models as M
from pycnn import detection as D
spec = D.DEMO["full"]
splits, targets = D.load_instances(dict(spec["data_kwargs"], seed=0))
mean, std = splits.mean.tolist(), splits.std.tolist()
x = D._normalise(splits.train.tensors[0][:64], mean, std)
cfgs = [json.loads(s) for s in sys.argv[1:]]
models, opts = [], []
for c in cfgs:
    torch.manual_seed(0)
    m = M.get("mask_rcnn", **{"in_channels": 1, "num_classes": 2, **spec["model_kwargs"], **c}).train()
    models.append(m); opts.append(torch.optim.AdamW(m.parameters(), 1e-3))
times = [[] for _ in cfgs]
for rep in range(8):
    for i, (m, o) in enumerate(zip(models, opts)):
        b = slice(8 * rep, 8 * rep + 8)
        t = targets["train"][b]
        c0 = time.process_time()
        l = sum(m(x[b], t).values()); o.zero_grad(); l.backward(); o.step()
        if rep >= 2:
            times[i].append(time.process_time() - c0)
for c, t in zip(cfgs, times):
    print(json.dumps(c), f"{sum(t) / len(t) * 1000:.0f} ms/step")
