#!/usr/bin/python3
"""The peer for loader_bench: torchvision ImageFolder + RandomResizedCrop(224) + RandomHorizontalFlip
+ ToTensor through a DataLoader with the same worker count; the first epoch warms up, then whole
epochs run until at least EPOCHS of them and MIN_SECONDS of time are done. Also prints images per
CPU-second (main process + workers, from /proc), which a loaded machine disturbs less than img/s.

usage: loader_torchvision.py ROOT WORKERS [BATCH EPOCHS SIZE MIN_SECONDS]
"""
import os
import sys
import time

import torch
import torchvision.datasets as datasets
import torchvision.transforms as T


def cpu_seconds(pids):
    """user + system CPU time of these processes so far (from /proc), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / tick


def main():
    root, workers = sys.argv[1], int(sys.argv[2])
    batch = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    epochs = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    size = int(sys.argv[5]) if len(sys.argv) > 5 else 224
    min_seconds = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    torch.set_num_threads(1)
    ds = datasets.ImageFolder(root, T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor()]))
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                     persistent_workers=workers > 0)
    n, secs, cpu, e = 0, 0.0, 0.0, 0
    while e <= epochs or secs < min_seconds:
        it = iter(dl)  # persistent workers: the same processes every epoch
        pids = [os.getpid()] + [w.pid for w in getattr(it, "_workers", [])]
        c0, t0 = cpu_seconds(pids), time.perf_counter()
        k = 0
        for x, y in it:
            k += x.shape[0]
        dt, dc = time.perf_counter() - t0, cpu_seconds(pids) - c0
        if e > 0:
            n += k
            secs += dt
            cpu += dc
        e += 1
    print(f"torchvision: {n} images in {secs:.2f} s: {n / secs:.1f} img/s, {n / cpu:.1f} img per CPU-second "
          f"({e - 1} epochs, {workers} workers, batch {batch}, {size}x{size}, train)")


if __name__ == "__main__":
    main()
