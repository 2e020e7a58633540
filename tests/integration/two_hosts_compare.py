#!/usr/bin/env python3
"""two_hosts_compare.py A.bin B.bin ATOL RTOL: float32 files agree within |a-b| <= atol + rtol*|b|."""
import array
import sys


def load(path):
    a = array.array("f")
    with open(path, "rb") as f:
        a.frombytes(f.read())
    return a


a, b = load(sys.argv[1]), load(sys.argv[2])
atol, rtol = float(sys.argv[3]), float(sys.argv[4])
if len(a) != len(b) or not a:
    sys.exit(f"size mismatch or empty: {len(a)} vs {len(b)} floats")
bad = sum(1 for x, y in zip(a, b) if not abs(x - y) <= atol + rtol * abs(y))
worst = max(abs(x - y) for x, y in zip(a, b))
print(f"{len(a)} parameters, max |diff| {worst:.3g}, {bad} outside {atol} + {rtol}*|ref|")
sys.exit(1 if bad else 0)
