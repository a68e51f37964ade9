"""Helpers shared by the training tests. They live in their own top-level module so that the
processes torch.multiprocessing.spawn starts can import ddp_worker (a test module, imported by
pytest under a package name, cannot be imported there)."""
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import TensorDataset

import pycnn.nn as pnn
import pycnn.train as T


def toy_classification(n=48, seed=0, classes=3, size=8):
    """Each class lights a different square; noise on top. Learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = 0.3 * torch.rand(n, 1, size, size, generator=g)
    for c in range(classes):
        x[y == c, :, 2 * c:2 * c + 3, 2 * c:2 * c + 3] += 1.0
    return TensorDataset(x, y)


def small_cnn(classes=3):
    return nn.Sequential(pnn.Conv2d(1, 4, 3, padding=1), pnn.BatchNorm2d(4), nn.ReLU(), pnn.MaxPool2d(2),
                         nn.Flatten(), pnn.Linear(4 * 4 * 4, classes))


def ddp_worker(rank, world, port, folder):
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same initial weights on both ranks (DDP also broadcasts rank 0's)
        model = small_cnn()
        ddp = nn.parallel.DistributedDataParallel(model)
        data = toy_classification(n=40)
        hist = T.fit(ddp, data, data, epochs=2, batch_size=8, optimizer="sgd", lr=0.05, progress=False,
                     out=os.path.join(folder, "ckpt"))
        torch.save({"params": dict(model.named_parameters()), "steps": hist.steps},
                   os.path.join(folder, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
