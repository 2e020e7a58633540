#!/usr/bin/python3
"""PNG colour-conversion cases for test_png, with the pixels PIL gives (independent of our decoder).

usage: make_png_cases.py OUT

Writes OUT/<case>.png (built chunk by chunk with zlib, so bit depth, colour type, tRNS, gAMA and
interlacing are exactly as named) and OUT/<case>.ref: int32 w, int32 h, then the RGB bytes of
PIL's Image.open(png).convert('RGB'), what torchvision's ImageFolder trains on.
One exception: for 16-bit grey, Debian's PIL (9.4) opens mode I and convert('RGB') clips every
value above 255 to 255, so the reference is the high byte of each sample, computed here with numpy
from the samples written (the rule PIL applies to 16-bit RGB, RGBA and LA).
OUT/cases.txt lists the case names.
"""
import io
import os
import struct
import sys
import warnings
import zlib

import numpy as np
from PIL import Image

# Adam7: (x0, y0, dx, dy) of the seven passes.
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def pack_rows(a, depth):
    """Rows of samples (h, w*channels) -> filter byte 0 + packed bytes per row."""
    out = b""
    for row in a:
        if depth == 16:
            b = row.astype(">u2").tobytes()
        elif depth == 8:
            b = row.astype(np.uint8).tobytes()
        else:
            b = np.packbits(np.unpackbits(row.astype(np.uint8)[:, None], axis=1)[:, 8 - depth:].reshape(-1)).tobytes()
        out += b"\x00" + b
    return out


def png(samples, depth, ctype, extra=b"", interlace=False):
    """samples: (h, w, channels) array of sample values."""
    h, w, c = samples.shape
    if interlace:
        raw = b""
        for x0, y0, dx, dy in ADAM7:
            sub = samples[y0::dy, x0::dx]
            if sub.size:
                raw += pack_rows(sub.reshape(sub.shape[0], -1), depth)
    else:
        raw = pack_rows(samples.reshape(h, w * c), depth)
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 1 if interlace else 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra + chunk(b"IDAT", zlib.compress(raw)) +
            chunk(b"IEND", b""))


def write(out, name, data, ref=None):
    with open(os.path.join(out, name + ".png"), "wb") as f:
        f.write(data)
    if ref is None:
        im = Image.open(io.BytesIO(data))
        im.load()
        ref = np.asarray(im.convert("RGB"))
    assert ref.dtype == np.uint8 and ref.ndim == 3 and ref.shape[2] == 3, (name, ref.dtype, ref.shape)
    with open(os.path.join(out, name + ".ref"), "wb") as f:
        f.write(struct.pack("<ii", ref.shape[1], ref.shape[0]))
        f.write(ref.tobytes())
    return name


def read_ref(out, name):
    with open(os.path.join(out, name + ".ref"), "rb") as f:
        w, h = struct.unpack("<ii", f.read(8))
        return np.frombuffer(f.read(), np.uint8).reshape(h, w, 3)


def main():
    # "Palette images with Transparency expressed in bytes should be converted to RGBA": we want RGB.
    warnings.simplefilter("ignore", UserWarning)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7)
    gama = chunk(b"gAMA", struct.pack(">I", 45455))  # gamma 1/2.2: PIL ignores it, and so must we
    names = []
    # 16-bit grey: a ramp over the full range (rows repeat it) and random samples.
    ramp = np.tile(np.linspace(0, 65535, 37).astype(np.uint16), (3, 1))
    g16 = np.concatenate([ramp, rng.integers(0, 65536, size=(4, 37), dtype=np.uint16)])[..., None]
    names.append(write(out, "gray16", png(g16, 16, 0), np.repeat((g16 >> 8).astype(np.uint8), 3, axis=2)))
    names.append(write(out, "rgb16", png(rng.integers(0, 65536, size=(9, 13, 3), dtype=np.uint16), 16, 2, gama)))
    # RGBA with every alpha from fully transparent to opaque, colours unrelated to alpha.
    rgba = rng.integers(0, 256, size=(8, 32, 4), dtype=np.uint16)
    rgba[..., 3] = np.arange(256, dtype=np.uint16).reshape(8, 32)
    names.append(write(out, "rgba8", png(rgba, 8, 6, gama)))
    names.append(write(out, "rgba8_transparent", png(np.concatenate(
        [rng.integers(0, 256, size=(5, 6, 3)), np.zeros((5, 6, 1), int)], axis=2), 8, 6)))
    names.append(write(out, "rgba16", png(rng.integers(0, 65536, size=(7, 11, 4), dtype=np.uint16), 16, 6)))
    la = rng.integers(0, 256, size=(6, 10, 2))
    la[0, :, 1] = 0
    names.append(write(out, "la8", png(la, 8, 4)))
    names.append(write(out, "la16", png(rng.integers(0, 65536, size=(5, 9, 2), dtype=np.uint16), 16, 4)))
    # Palette with tRNS: entries 0..3 fully or partly transparent.
    pal = rng.integers(0, 256, size=(16, 3), dtype=np.uint8)
    trns = chunk(b"tRNS", bytes([0, 0, 64, 200]))
    idx = rng.integers(0, 16, size=(7, 12, 1))
    idx[0, :4, 0] = [0, 1, 2, 3]
    names.append(write(out, "palette_trns", png(idx, 8, 3, chunk(b"PLTE", pal.tobytes()) + trns)))
    names.append(write(out, "palette4_trns", png(idx, 4, 3, chunk(b"PLTE", pal.tobytes()) + trns)))
    # Grey with a transparent grey value (tRNS), and 2-bit grey (scaled 0..3 -> 0..255).
    g8 = rng.integers(0, 256, size=(6, 7, 1))
    g8[0, :3, 0] = 77
    names.append(write(out, "gray8_trns", png(g8, 8, 0, chunk(b"tRNS", struct.pack(">H", 77)))))
    names.append(write(out, "gray2", png(rng.integers(0, 4, size=(5, 9, 1)), 2, 0)))
    # Adam7-interlaced RGBA and 16-bit RGB, odd sizes so that some passes are empty or short.
    # (The fixture's own check: PIL reads back exactly the colours written.)
    a = rng.integers(0, 256, size=(11, 5, 4))
    names.append(write(out, "rgba8_interlaced", png(a, 8, 6, interlace=True)))
    assert np.array_equal(read_ref(out, names[-1]), a[..., :3]), "fixture: Adam7 packing is wrong"
    a = rng.integers(0, 65536, size=(3, 10, 3), dtype=np.uint16)
    names.append(write(out, "rgb16_interlaced", png(a, 16, 2, interlace=True)))
    assert np.array_equal(read_ref(out, names[-1]), a >> 8), "fixture: Adam7 packing is wrong"
    with open(os.path.join(out, "cases.txt"), "w") as f:
        f.write("\n".join(names) + "\n")


if __name__ == "__main__":
    main()
