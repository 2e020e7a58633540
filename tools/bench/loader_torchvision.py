#!/usr/bin/python3
"""The peer for loader_bench: torchvision ImageFolder + RandomResizedCrop(224) + RandomHorizontalFlip
+ ToTensor through a DataLoader with the same worker count; the first epoch warms up.

usage: loader_torchvision.py ROOT WORKERS [BATCH EPOCHS SIZE]
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
    torch.set_num_threads(1)
    ds = datasets.ImageFolder(root, T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor()]))
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                     persistent_workers=workers > 0)
    n, secs = 0, 0.0
    for e in range(epochs + 1):
        t0 = time.perf_counter()
        k = 0
        for x, y in dl:
            k += x.shape[0]
        dt = time.perf_counter() - t0
        if e > 0:
            n += k
            secs += dt
    print(f"torchvision: {n} images in {secs:.2f} s: {n / secs:.1f} img/s ({workers} workers, batch {batch}, "
          f"{size}x{size}, train)")


if __name__ == "__main__":
    main()
