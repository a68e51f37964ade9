"""Choose a super-resolution configuration on the validation images, never the test images.

Each run trains one configuration on its sources **less the validation images**
(``pycnn.data.superres.VALIDATION_SOURCES``: flower, rocket) and prints its PSNR-Y gain over
bicubic on those whole images, one pass and with the self-ensemble, with the training CPU time.
``--final`` trains the chosen configuration on its full sources (validation images included) and
measures it once on the held-out test images. One JSON line per run goes to ``--log``.

    taskset -c 1 python scripts/superres_select.py --scale 2 --sources photographs --steps 2500
    taskset -c 1 python scripts/superres_select.py --scale 2 --sources photographs --steps 2500 --final
"""
import argparse
import json
import time

import torch

import pycnn.data as D
import pycnn.models as M
import pycnn.superres as SR
from pycnn.data.superres import without_validation


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=int, required=True)
    p.add_argument("--sources", default="default", help="photographs, default, all or comma-separated names")
    p.add_argument("--model", default="espcn")
    p.add_argument("--option", action="append", default=[], help="model option KEY=VALUE (int if it parses)")
    p.add_argument("--steps", type=int, default=2500, help="a multiple of n_train / batch")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n-train", type=int, default=8000)
    p.add_argument("--patch", type=int, default=48)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--loss", default="mse")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--final", action="store_true", help="train on the full sources and score the test images")
    p.add_argument("--log", default="superres_select.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    options = {"activation": "relu"} if args.model == "espcn" else {}
    for kv in args.option:
        k, v = kv.split("=", 1)
        try:
            v = int(v)
        except ValueError:
            pass
        options[k] = v
    sources = args.sources.split(",") if "," in args.sources else args.sources
    if not args.final:
        sources = without_validation(sources)
    torch.manual_seed(args.seed)
    model = M.get(args.model, scale=args.scale, **options)
    splits = D.get("super_resolution", scale=args.scale, sources=sources, n_train=args.n_train, patch=args.patch,
                   input=model.input_kind, seed=args.seed, test_split=False)
    per_epoch = -(-args.n_train // args.batch)
    epochs = max(1, args.steps // per_epoch)
    c0 = time.process_time()
    SR.fit(model, splits, epochs=epochs, batch_size=args.batch, lr=args.lr, loss=args.loss, seed=args.seed,
           progress=False)
    cpu = time.process_time() - c0
    model.eval()
    names = "test" if args.final else "validation"
    one, ens = SR.evaluate(model, names=names), SR.evaluate(model, names=names, ensemble=True)
    row = {"split": names, "scale": args.scale, "sources": args.sources, "model": args.model, "options": options,
           "steps": epochs * per_epoch, "batch": args.batch, "patch": args.patch, "lr": args.lr, "loss": args.loss,
           "seed": args.seed, "train_cpu_s": round(cpu, 1), "gain": round(one["gain"], 3),
           "gain_ensemble": round(ens["gain"], 3),
           **{f"{k}{tag}": round(m[k], 4) for tag, m in (("", one), ("_ensemble", ens))
              for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")},
           "per_image": {i["name"]: round(i["psnr"] - i["bicubic_psnr"], 3) for i in one["images"]},
           "per_image_ensemble": {i["name"]: round(i["psnr"] - i["bicubic_psnr"], 3) for i in ens["images"]}}
    print(json.dumps(row), flush=True)
    with open(args.log, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
