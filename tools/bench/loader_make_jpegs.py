#!/usr/bin/python3
"""Natural-looking JPEGs of ImageNet's typical size for the data benchmarks.

usage: loader_make_jpegs.py OUT N [W H]   -> OUT/train/cNN/img_NNNN.JPEG (10 classes)

Multi-octave random fields (1/f-like, as photographs are) plus fine grain, JPEG quality 90: about
470x400 and 70-80 KB by default, like ImageNet's average training image.
"""
import os
import sys

import numpy as np
from PIL import Image


def fractal(rng, w, h):
    acc = np.zeros((h, w, 3), np.float32)
    amp = 1.0
    for cells in (3, 6, 12, 24, 48, 96, 192):
        g = rng.uniform(-1, 1, size=(cells * h // w + 2, cells + 2, 3)).astype(np.float32)
        layer = np.stack([np.asarray(Image.fromarray(g[..., c]).resize((w, h), Image.BICUBIC)) for c in range(3)], -1)
        acc += amp * layer
        amp *= 0.6
    acc = (acc - acc.min()) / (acc.max() - acc.min() + 1e-6) * 235 + 10
    acc += rng.normal(0, 12, size=acc.shape)
    return Image.fromarray(np.clip(acc, 0, 255).astype(np.uint8), "RGB")


def main():
    out, n = sys.argv[1], int(sys.argv[2])
    w = int(sys.argv[3]) if len(sys.argv) > 3 else 470
    h = int(sys.argv[4]) if len(sys.argv) > 4 else 400
    rng = np.random.default_rng(2024)
    total = 0
    for i in range(n):
        d = os.path.join(out, "train", f"c{i % 10:02d}")
        os.makedirs(d, exist_ok=True)
        # sizes vary around (w, h) as ImageNet's do
        ww = int(w * rng.uniform(0.85, 1.15))
        hh = int(h * rng.uniform(0.85, 1.15))
        p = os.path.join(d, f"img_{i:04d}.JPEG")
        fractal(rng, ww, hh).save(p, "JPEG", quality=90)
        total += os.path.getsize(p)
    print(f"{n} JPEGs, mean {total / n / 1024:.0f} KB, about {w}x{h}")


if __name__ == "__main__":
    main()
