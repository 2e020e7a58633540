#!/usr/bin/python3
"""The peer for loader_bench: torchvision ImageFolder + RandomResizedCrop(224) + RandomHorizontalFlip
+ ToTensor through a DataLoader with the same worker count; the first epoch warms up, then whole
epochs run until at least EPOCHS of them and MIN_SECONDS of time are done.

usage: loader_torchvision.py ROOT WORKERS [BATCH EPOCHS SIZE MIN_SECONDS]
"""
import sys
import time

import torch
import torchvision.datasets as datasets
import torchvision.transforms as T


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
    n, secs, e = 0, 0.0, 0
    while e <= epochs or secs < min_seconds:
        t0 = time.perf_counter()
        k = 0
        for x, y in dl:
            k += x.shape[0]
        dt = time.perf_counter() - t0
        if e > 0:
            n += k
            secs += dt
        e += 1
    print(f"torchvision: {n} images in {secs:.2f} s: {n / secs:.1f} img/s ({e - 1} epochs, {workers} workers, batch {batch}, "
          f"{size}x{size}, train)")


if __name__ == "__main__":
    main()
