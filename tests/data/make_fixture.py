#!/usr/bin/python3
"""Test inputs for the data tests, made with PIL (independent of the code under test).

usage: make_fixture.py OUT

OUT/good/    train/<class>/*.JPEG (5 classes, 7..11 images each, odd sizes), val/<class>/*.JPEG
OUT/kaggle/  the same train/, val/ flat + LOC_val_solution.csv
OUT/bad/     train/<class>/ with CMYK, PNG-named-.JPEG, grayscale, progressive (all convertible) and
             truncated, zero-byte, huge, not-an-image files (all rejected)
OUT/exact/   train/<class>/*.png, 32x32 lossless sources for the exact raw round trip
OUT/odd/     train/<class>/*.JPEG, large odd sizes (1001x701, ...), decoded with DCT scaling when packed;
             OUT/refs/odd/.../*.raw64: the centre square resized to 64x64 (bilinear, PIL), .raw64dct: the
             same from PIL's DCT-scaled decode (draft) at the packer's scale
Each source image OUT/P gets OUT/refs/P.ref (PIL's RGB decode), .raw32 (centre square resized to
32x32, bilinear, PIL), .r48 (shorter side resized to 48, bilinear, PIL), and .q95 / .r48q95 (those
pixels after a quality-95 4:2:0 JPEG round trip through PIL): int32 w, int32 h, RGB bytes.
OUT/val_truth.txt: "<file> <class>" for every val image; OUT/bad_files.txt: the rejected files.
"""
import io
import os
import shutil
import struct
import sys

import numpy as np
from PIL import Image

CLASSES = ["zebra", "cat_a", "n0123", "dog_b", "apple"]  # not sorted: labels follow sorted order
COUNTS = [7, 8, 9, 10, 11]


def smooth_image(rng, w, h):
    """A natural-looking image: low-frequency colour field plus a little noise."""
    gw, gh = 5, 4
    grid = rng.uniform(0, 255, size=(gh, gw, 3)).astype(np.float32)
    small = Image.fromarray(grid.astype(np.uint8), "RGB").resize((w, h), Image.BICUBIC)
    a = np.asarray(small).astype(np.float32) + rng.normal(0, 6, size=(h, w, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def dump(path, img):
    a = np.asarray(img.convert("RGB"))
    with open(path, "wb") as f:
        f.write(struct.pack("<ii", a.shape[1], a.shape[0]))
        f.write(a.tobytes())


def refs(out, path):
    img = Image.open(path)
    ref = os.path.join(out, "refs", os.path.relpath(path, out))
    os.makedirs(os.path.dirname(ref), exist_ok=True)
    img.load()
    rgb = img.convert("RGB")
    dump(ref + ".ref", rgb)
    w, h = rgb.size
    s = min(w, h)
    left, top = (w - s) / 2, (h - s) / 2
    dump(ref + ".raw32", rgb.resize((32, 32), Image.BILINEAR, box=(left, top, left + s, top + s)))
    if w <= h:
        tw, th = 48, 48 * h // w
    else:
        tw, th = 48 * w // h, 48
    r48 = rgb.resize((tw, th), Image.BILINEAR)
    dump(ref + ".r48", r48)
    # What a quality-95 JPEG (4:2:0) of those pixels decodes to, by PIL's own encoder.
    dump(ref + ".q95", jpeg_roundtrip(rgb))
    dump(ref + ".r48q95", jpeg_roundtrip(r48))


def jpeg_roundtrip(img):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95, subsampling="4:2:0")
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    return out


def main():
    out = sys.argv[1]
    if os.path.exists(out):
        shutil.rmtree(out)
    rng = np.random.default_rng(1234)
    truth = []
    # good/ and kaggle/ share the same pixels.
    for root in ("good", "kaggle"):
        os.makedirs(os.path.join(out, root, "train"))
        os.makedirs(os.path.join(out, root, "val"))
    for ci, (c, n) in enumerate(zip(CLASSES, COUNTS)):
        for root in ("good", "kaggle"):
            os.makedirs(os.path.join(out, root, "train", c))
        os.makedirs(os.path.join(out, "good", "val", c))
        for k in range(n):
            w, h = int(rng.integers(40, 121)), int(rng.integers(30, 91))
            img = smooth_image(rng, w, h)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=90)
            for root in ("good", "kaggle"):
                p = os.path.join(out, root, "train", c, f"{c}_{k:03d}.JPEG")
                open(p, "wb").write(buf.getvalue())
            refs(out, os.path.join(out, "good", "train", c, f"{c}_{k:03d}.JPEG"))
    rows = []
    for v in range(12):
        c = CLASSES[int(rng.integers(0, len(CLASSES)))]
        img = smooth_image(rng, int(rng.integers(40, 100)), int(rng.integers(40, 100)))
        name = f"ILSVRC2012_val_{v + 1:08d}"
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        open(os.path.join(out, "good", "val", c, name + ".JPEG"), "wb").write(buf.getvalue())
        open(os.path.join(out, "kaggle", "val", name + ".JPEG"), "wb").write(buf.getvalue())
        rows.append(f"{name},{c} 1 2 30 40 {c} 3 4 20 20")
        truth.append(f"{name}.JPEG {c}")
    rows.reverse()  # CSV order must not matter
    with open(os.path.join(out, "kaggle", "LOC_val_solution.csv"), "w") as f:
        f.write("ImageId,PredictionString\n" + "\n".join(rows) + "\n")
    with open(os.path.join(out, "val_truth.txt"), "w") as f:
        f.write("\n".join(truth) + "\n")

    # bad/: two classes of good images plus every troublesome kind.
    bad_files = []
    for c in ("alpha", "beta"):
        d = os.path.join(out, "bad", "train", c)
        os.makedirs(d)
        for k in range(3):
            smooth_image(rng, 64, 48).save(os.path.join(d, f"ok_{k}.JPEG"), "JPEG", quality=90)
    d = os.path.join(out, "bad", "train", "alpha")
    base = smooth_image(rng, 72, 56)
    base.convert("CMYK").save(os.path.join(d, "cmyk.JPEG"), "JPEG", quality=95)
    base.save(os.path.join(d, "png_named.JPEG"), "PNG")
    base.convert("L").save(os.path.join(d, "gray.JPEG"), "JPEG", quality=95)
    base.save(os.path.join(d, "progressive.JPEG"), "JPEG", quality=90, progressive=True)
    d = os.path.join(out, "bad", "train", "beta")
    buf = io.BytesIO()
    smooth_image(rng, 80, 60).save(buf, "JPEG", quality=90)
    open(os.path.join(d, "truncated.JPEG"), "wb").write(buf.getvalue()[: len(buf.getvalue()) * 6 // 10])
    open(os.path.join(d, "zero.JPEG"), "wb").close()
    Image.new("RGB", (2100, 2000), (120, 60, 30)).save(os.path.join(d, "huge.JPEG"), "JPEG", quality=50)
    open(os.path.join(d, "notimage.JPEG"), "w").write("this is not an image\n")
    bad_files = [os.path.join(d, n) for n in ("huge.JPEG", "notimage.JPEG", "truncated.JPEG", "zero.JPEG")]
    for n in ("cmyk.JPEG", "png_named.JPEG", "gray.JPEG", "progressive.JPEG"):
        refs(out, os.path.join(out, "bad", "train", "alpha", n))
    with open(os.path.join(out, "bad_files.txt"), "w") as f:
        f.write("\n".join(bad_files) + "\n")

    # exact/: lossless 32x32 sources.
    for c in ("one", "two", "three"):
        d = os.path.join(out, "exact", "train", c)
        os.makedirs(d)
        for k in range(3):
            a = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            p = os.path.join(d, f"{c}_{k}.png")
            Image.fromarray(a, "RGB").save(p, "PNG")
            refs(out, p)

    # odd/: large odd-sized JPEGs (the raw packer decodes them at 1/2 or 1/4 scale, whose size is
    # rounded up: the centre square must be taken in the source's own coordinates).
    for c, sizes in (("wide", [(1001, 701), (999, 257)]), ("tall", [(701, 1001), (257, 999), (640, 479)])):
        d = os.path.join(out, "odd", "train", c)
        os.makedirs(d)
        for k, (w, h) in enumerate(sizes):
            p = os.path.join(d, f"{c}_{k}.JPEG")
            # Detail at every scale (an 8-pixel colour grid): a box misplaced by a fraction of a
            # pixel shows.
            grid = rng.uniform(0, 255, size=(h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
            Image.fromarray(grid, "RGB").resize((w, h), Image.BICUBIC).save(p, "JPEG", quality=90)
            rgb = Image.open(p).convert("RGB")
            s = min(w, h)
            left, top = (w - s) / 2, (h - s) / 2
            ref = os.path.join(out, "refs", "odd", "train", c, f"{c}_{k}.JPEG")
            os.makedirs(os.path.dirname(ref), exist_ok=True)
            dump(ref + ".raw64", rgb.resize((64, 64), Image.BILINEAR, box=(left, top, left + s, top + s)))
            # The same from libjpeg's DCT-scaled decode at the packer's scale (the coarsest at which
            # the image is still at least twice Resize(64)'s size), the square scaled with it.
            tw, th = (64, 64 * h // w) if w <= h else (64 * w // h, 64)
            small = Image.open(p)
            small.draft("RGB", (2 * tw, 2 * th))
            small = small.convert("RGB")
            den = next(n for n in (1, 2, 4, 8) if small.size == (-(-w // n), -(-h // n)))
            dump(ref + ".raw64dct", small.resize((64, 64), Image.BILINEAR,
                                                 box=(left / den, top / den, (left + s) / den, (top + s) / den)))


if __name__ == "__main__":
    main()
