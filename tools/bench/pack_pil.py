#!/usr/bin/python3
"""The peer for pack_bench.sh: what a Python packer does per image with PIL, on one core:
open, convert to RGB, resize the shorter side to 256 (bilinear, antialiased), encode JPEG quality 90.

usage: pack_pil.py ROOT
"""
import io
import os
import sys
import time

from PIL import Image


def main():
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(sys.argv[1]) for f in fs)
    t0 = time.perf_counter()
    for p in files:
        img = Image.open(p).convert("RGB")
        w, h = img.size
        s = 256
        size = (s, s * h // w) if w <= h else (s * w // h, s)
        buf = io.BytesIO()
        img.resize(size, Image.BILINEAR).save(buf, "JPEG", quality=90)
    dt = time.perf_counter() - t0
    print(f"PIL: {len(files)} images in {dt:.2f} s: {len(files) / dt:.1f} img/s (1 process)")


if __name__ == "__main__":
    main()
