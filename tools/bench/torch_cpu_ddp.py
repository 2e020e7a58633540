#!/usr/bin/python3
"""PyTorch CPU peer of a multi-rank train_resnet18 run on one host: DistributedDataParallel (gloo)
over N processes, torchvision ResNet18, SGD (Nesterov momentum 0.9, weight decay 5e-4), label
smoothing 0.1, synthetic uint8 NHWC images normalised each step as our trainer does.

    torch_cpu_ddp.py --ranks 2 --threads 1 --batch 64 --size 64 [--classes 10] [--iters 30] [--warmup 5]
Prints one line: "torch_ddp img_per_s=<x> ranks=... threads=... batch=... size=... step_ms=...",
img_per_s counting every rank's images, over the slowest rank's time.
"""
import argparse
import os
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision
from torch.nn.parallel import DistributedDataParallel as DDP

from torch_cpu_train import make_step, non_negative, positive  # the same step and argument checks


def worker(rank, a, port, out):
    os.environ["MASTER_ADDR"] = "127.0.0.1"  # loopback only
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(a.threads)
    dist.init_process_group("gloo", rank=rank, world_size=a.ranks)
    torch.manual_seed(rank)
    model = DDP(torchvision.models.resnet18(num_classes=a.classes).train(), bucket_cap_mb=25)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0}],
                          lr=0.05, momentum=0.9, nesterov=True)
    crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    step = make_step(model, opt, crit, a.batch, a.size, a.size, a.classes)
    for _ in range(a.warmup):
        step()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(a.iters):
        step()
    t = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if rank == 0:
        out.put(t.item())
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=positive, default=2)
    ap.add_argument("--threads", type=positive, default=1)
    ap.add_argument("--batch", type=positive, default=64)
    ap.add_argument("--size", type=positive, default=64)
    ap.add_argument("--classes", type=positive, default=10)
    ap.add_argument("--iters", type=positive, default=30)
    ap.add_argument("--warmup", type=non_negative, default=5)
    ap.add_argument("--port", type=positive, default=29531)
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    out = ctx.SimpleQueue()
    mp.start_processes(worker, args=(a, a.port, out), nprocs=a.ranks, join=True, start_method="spawn")
    s = out.get()
    print(f"torch_ddp img_per_s={a.ranks * a.batch * a.iters / s:.2f} ranks={a.ranks} threads={a.threads} "
          f"batch={a.batch} size={a.size}x{a.size} iters={a.iters} step_ms={1000 * s / a.iters:.1f}")


if __name__ == "__main__":
    main()
