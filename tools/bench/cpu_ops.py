#!/usr/bin/python3
"""Conv timings: ddp::cpu (build/.../ddp_cpu_ops_bench) against PyTorch CPU on ResNet18's conv shapes.

usage: tools/bench/cpu_ops.py BENCH_BINARY SIZE BATCH [THREADS [REPS]]
BENCH_ROUNDS=n alternates ours and PyTorch n times per shape (default 2).
BENCH_CLOCK=cpu times process CPU time instead of wall time (meaningful with THREADS=1 on a loaded machine).
Runs PyTorch (same thread count) and our binary in one run and prints per-shape times (median ms) and
the ratio torch_time / our_time (> 1 means we are faster).
"""
import os
import subprocess
import sys
import time

import torch


CLOCK = time.process_time if os.environ.get("BENCH_CLOCK") == "cpu" else time.perf_counter


def median_ms(reps, f):
    f()
    t = []
    for _ in range(reps):
        a = CLOCK()
        f()
        t.append((CLOCK() - a) * 1e3)
    t.sort()
    return t[0]  # minimum: the machine is shared, so the fastest run is the least disturbed


def shapes(size, batch):
    out = lambda s, r, st, pd: (s + 2 * pd - r) // st + 1
    s1 = out(size, 7, 2, 3); s2 = out(s1, 3, 2, 1); s3 = out(s2, 3, 2, 1); s4 = out(s3, 3, 2, 1); s5 = out(s4, 3, 2, 1)
    return [
        ("conv1", 1, (batch, 3, size, size, 64, 7, 2, 3)),
        ("l1.3x3", 4, (batch, 64, s2, s2, 64, 3, 1, 1)),
        ("l2.0.3x3s2", 1, (batch, 64, s2, s2, 128, 3, 2, 1)),
        ("l2.3x3", 3, (batch, 128, s3, s3, 128, 3, 1, 1)),
        ("l2.ds", 1, (batch, 64, s2, s2, 128, 1, 2, 0)),
        ("l3.0.3x3s2", 1, (batch, 128, s3, s3, 256, 3, 2, 1)),
        ("l3.3x3", 3, (batch, 256, s4, s4, 256, 3, 1, 1)),
        ("l3.ds", 1, (batch, 128, s3, s3, 256, 1, 2, 0)),
        ("l4.0.3x3s2", 1, (batch, 256, s4, s4, 512, 3, 2, 1)),
        ("l4.3x3", 3, (batch, 512, s5, s5, 512, 3, 1, 1)),
        ("l4.ds", 1, (batch, 256, s4, s4, 512, 1, 2, 0)),
    ]


def torch_shape(shape, reps):
    n, c, h, w, k, r, st, pd = shape
    x = torch.randn(n, c, h, w)
    wt = torch.randn(k, c, r, r) * 0.05
    y = torch.nn.functional.conv2d(x, wt, stride=st, padding=pd)
    dy = torch.randn_like(y)
    conv = lambda: torch.nn.functional.conv2d(x, wt, stride=st, padding=pd)
    bwd = lambda mask: torch.ops.aten.convolution_backward(dy, x, wt, None, [st, st], [pd, pd], [1, 1], False,
                                                           [0, 0], 1, mask)
    with torch.no_grad():
        return (median_ms(reps, conv), median_ms(reps, lambda: bwd([True, False, False])),
                median_ms(reps, lambda: bwd([False, True, False])))


def ours_shape(binary, name, size, batch, threads, reps):
    env = dict(os.environ, BENCH_ONLY=name)
    txt = subprocess.run([binary, str(size), str(batch), str(threads), str(reps)], check=True, capture_output=True,
                         text=True, env=env).stdout
    for line in txt.splitlines():
        p = line.split()
        if p and p[0] == name:
            return tuple(float(v) for v in p[2:5])
    sys.exit(f"cpu_ops.py: {binary} printed no line for {name}")


def main():
    if len(sys.argv) < 4 or sys.argv[1] in ("-h", "--help"):
        sys.exit(__doc__)
    binary = sys.argv[1]
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        sys.exit(f"cpu_ops.py: '{binary}' is not an executable file (build ddp_cpu_ops_bench first)")

    def whole(i, name, default):
        s = sys.argv[i] if len(sys.argv) > i else str(default)
        if not s.isdigit() or int(s) < 1:
            sys.exit(f"cpu_ops.py: {name} must be a positive whole number, got '{s}'")
        return int(s)
    size, batch = whole(2, "SIZE", 0), whole(3, "BATCH", 0)
    threads, reps = whole(4, "THREADS", 2), whole(5, "REPS", 5)
    torch.set_num_threads(threads)
    # Shape by shape, alternating ours and PyTorch ROUNDS times and keeping each side's minimum, so a
    # burst of load on the shared machine hits both sides alike.
    rounds = int(os.environ.get("BENCH_ROUNDS", "2"))
    ours, ref = {}, {}
    for name, count, shape in shapes(size, batch):
        o = t = None
        for _ in range(rounds):
            a = ours_shape(binary, name, size, batch, threads, reps)
            b = torch_shape(shape, reps)
            o = a if o is None else tuple(map(min, o, a))
            t = b if t is None else tuple(map(min, t, b))
        ours[name] = o
        ref[name] = (count,) + t
    print(f"# size {size} batch {batch} threads {threads} reps {reps}; torch {torch.__version__}; "
          f"times in ms (min of reps); ratio = torch / ours")
    print(f"{'shape':12s} {'n':>2s} | {'fwd':>8s} {'torch':>8s} {'ratio':>5s} | {'dgrad':>8s} {'torch':>8s} "
          f"{'ratio':>5s} | {'wgrad':>8s} {'torch':>8s} {'ratio':>5s}")
    tot_o = [0.0, 0.0, 0.0]
    tot_t = [0.0, 0.0, 0.0]
    for name, (count, f, d, g) in ref.items():
        o = ours[name]
        t = (f, d, g)
        cols = []
        for i in range(3):
            tot_o[i] += o[i] * count
            tot_t[i] += t[i] * count
            cols.append(f"{o[i]:8.2f} {t[i]:8.2f} {t[i] / o[i]:5.2f}")
        print(f"{name:12s} {count:2d} | " + " | ".join(cols))
    cols = [f"{tot_o[i]:8.2f} {tot_t[i]:8.2f} {tot_t[i] / tot_o[i]:5.2f}" for i in range(3)]
    print(f"{'total':12s} {'':2s} | " + " | ".join(cols))
    print(f"all convs: ours {sum(tot_o):.1f} ms, torch {sum(tot_t):.1f} ms, ratio {sum(tot_t) / sum(tot_o):.2f}")


if __name__ == "__main__":
    main()
