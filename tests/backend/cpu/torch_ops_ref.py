#!/usr/bin/python3
"""PyTorch reference outputs for the CPU op tests (tests/backend/cpu/test_ops_torch.cpp).

usage: torch_ops_ref.py OP DIR key=value ...
       torch_ops_ref.py --jobs FILE     (one "OP DIR key=value ..." per line: one torch start-up for all)
Reads raw little-endian float32 (int32 for labels) NAME.bin inputs from DIR, computes the op and its
gradients with torch (float64 unless noted, so the reference is more precise than the code under test),
and writes float64 outputs as NAME.out.bin into DIR.
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F


def load(d, name, shape, dtype=np.float32):
    a = np.fromfile(os.path.join(d, name + ".bin"), dtype=dtype)
    if a.size != int(np.prod(shape)):
        sys.exit(f"torch_ops_ref: {name}.bin has {a.size} values, expected {int(np.prod(shape))} for {shape}")
    return torch.from_numpy(a.reshape(shape).astype(np.float64 if dtype == np.float32 else np.int64))


def save(d, name, t):
    t.detach().to(torch.float64).contiguous().numpy().tofile(os.path.join(d, name + ".out.bin"))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--jobs":
        with open(sys.argv[2]) as f:
            for line in f:
                if line.strip():
                    run(line.split())
    elif len(sys.argv) >= 3:
        run(sys.argv[1:])
    else:
        sys.exit(__doc__)


def run(argv):
    op, d = argv[0], argv[1]
    a = {}
    for kv in argv[2:]:
        k, v = kv.split("=", 1)
        a[k] = float(v) if "." in v or "e" in v else int(v)
    torch.set_num_threads(1)

    if op == "conv":
        n, c, h, w, k, r, s = (a[x] for x in ("n", "c", "h", "w", "k", "r", "s"))
        x = load(d, "x", (n, c, h, w)).requires_grad_()
        wt = load(d, "w", (k, c, r, s)).requires_grad_()
        y = F.conv2d(x, wt, stride=a["stride"], padding=a["pad"])
        dy = load(d, "dy", tuple(y.shape))
        y.backward(dy)
        save(d, "y", y)
        save(d, "dx", x.grad)
        save(d, "dw", wt.grad)
    elif op == "bn":
        n, c, h, w = (a[x] for x in ("n", "c", "h", "w"))
        x = load(d, "x", (n, c, h, w)).requires_grad_()
        gamma = load(d, "gamma", (c,)).requires_grad_()
        beta = load(d, "beta", (c,)).requires_grad_()
        rm = load(d, "rm", (c,))
        rv = load(d, "rv", (c,))
        y = F.batch_norm(x, rm, rv, gamma, beta, training=True, momentum=a["momentum"], eps=a["eps"])
        dy = load(d, "dy", (n, c, h, w))
        y.backward(dy)
        xd = x.detach()
        mean = xd.mean(dim=(0, 2, 3))
        invstd = 1.0 / torch.sqrt(xd.var(dim=(0, 2, 3), unbiased=False) + a["eps"])
        for name, t in (("y", y), ("rm", rm), ("rv", rv), ("mean", mean), ("invstd", invstd),
                        ("dx", x.grad), ("dgamma", gamma.grad), ("dbeta", beta.grad)):
            save(d, name, t)
    elif op == "ce":
        n, classes = a["n"], a["classes"]
        z = load(d, "z", (n, classes)).requires_grad_()
        labels = load(d, "labels", (n,), np.int32)
        loss = F.cross_entropy(z, labels, label_smoothing=a["smoothing"])
        (loss * a["scale"]).backward()
        save(d, "loss", loss.reshape(1))
        save(d, "dz", z.grad)
    elif op == "maxpool":
        n, c, h, w = (a[x] for x in ("n", "c", "h", "w"))
        x = load(d, "x", (n, c, h, w)).requires_grad_()
        y, idx = F.max_pool2d(x, a["kernel"], a["stride"], a["pad"], return_indices=True)
        y.backward(load(d, "dy", tuple(y.shape)))
        save(d, "y", y)
        save(d, "argmax", idx)
        save(d, "dx", x.grad)
    elif op == "linear":
        n, i, o = a["n"], a["in"], a["out"]
        x = load(d, "x", (n, i)).requires_grad_()
        wt = load(d, "w", (o, i)).requires_grad_()
        b = load(d, "b", (o,)).requires_grad_()
        y = F.linear(x, wt, b)
        y.backward(load(d, "dy", (n, o)))
        for name, t in (("y", y), ("dx", x.grad), ("dw", wt.grad), ("db", b.grad)):
            save(d, name, t)
    else:
        sys.exit(f"torch_ops_ref: unknown op '{op}'")


if __name__ == "__main__":
    main()
