#!/usr/bin/env python3
"""PyTorch peer for bench_cuda_train: torchvision ResNet18 training throughput on one GPU.

The recipe is what a PyTorch user would run for this job, tuned the usual way: synthetic data already on
the GPU (so the data path is out of the figure, as in ours), channels_last, cudnn.benchmark, SGD with
momentum, AMP autocast (fp16 with GradScaler, or bf16 without), eager or torch.compile (mode default).

Timing: warm-up steps first (cudnn.benchmark's search and torch.compile's compilation happen there), then
--windows windows of --iters steps, each timed with CUDA events; the figure is the median window.
The last line printed is `RESULT {json}`, the same convention as our bench_cuda_train.

Usage: torch_gpu_train.py --amp fp16|bf16|off --batch 256 --size 224 [--compile] [--iters N] [--warmup N]
"""
import argparse
import json
import math
import statistics
import sys
import time


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--amp", choices=["fp16", "bf16", "off"], default="fp16")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (mode default)")
    p.add_argument("--warmup", type=int, default=15, help="untimed steps before timing (compile happens here)")
    p.add_argument("--iters", type=int, default=20, help="steps per timed window")
    p.add_argument("--windows", type=int, default=5, help="timed windows; the median is reported")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-5)
    p.add_argument("--fused-sgd", action="store_true", help="SGD(fused=True) instead of the default foreach")
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--tf32", choices=["on", "off"], default="on", help="TF32 for fp32 convolutions/matmuls")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--profile-step", action="store_true",
                   help="after the warm-up, run one step between cudaProfilerStart/Stop (for ncu "
                        "--profile-from-start off: tools/gpu_profile.sh) and exit without timing")
    p.add_argument("--device", default="cuda",
                   help="cuda (the benchmark); cpu only to smoke-test this script on a machine without a GPU")
    a = p.parse_args(argv)
    for name in ("batch", "size", "iters", "windows", "classes"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1")
    if a.warmup < 1:
        p.error("--warmup must be >= 1 (the first step builds plans and compiles)")
    if a.size < 32:
        p.error("--size must be >= 32 (ResNet18 downsamples by 32)")
    return a


class Timer:
    """CUDA events on a GPU; host clock after a synchronize elsewhere (smoke tests only)."""

    def __init__(self, torch, device):
        self.torch = torch
        self.cuda = device.type == "cuda"

    def start(self):
        if self.cuda:
            self.e0 = self.torch.cuda.Event(enable_timing=True)
            self.e1 = self.torch.cuda.Event(enable_timing=True)
            self.e0.record()
        else:
            self.t0 = time.perf_counter()

    def stop_ms(self):
        if self.cuda:
            self.e1.record()
            self.e1.synchronize()
            return self.e0.elapsed_time(self.e1)
        return (time.perf_counter() - self.t0) * 1e3


def main(argv):
    a = parse_args(argv)
    import torch
    import torchvision

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("torch_gpu_train: torch.cuda.is_available() is False (no GPU or driver visible to PyTorch "
              f"{torch.__version__})", file=sys.stderr)
        return 2

    torch.manual_seed(a.seed)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = a.tf32 == "on"
    torch.backends.cudnn.allow_tf32 = a.tf32 == "on"
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "off": None}[a.amp]
    fmt = torch.contiguous_format if a.no_channels_last else torch.channels_last

    model = torchvision.models.resnet18(num_classes=a.classes).to(device=device, memory_format=fmt)
    model.train()
    crit = torch.nn.CrossEntropyLoss()
    sgd_kw = dict(lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)
    if a.fused_sgd:
        sgd_kw["fused"] = True
    opt = torch.optim.SGD(model.parameters(), **sgd_kw)
    use_scaler = a.amp == "fp16"
    if use_scaler:
        try:
            scaler = torch.amp.GradScaler(device.type)
        except (AttributeError, TypeError):  # PyTorch < 2.3
            scaler = torch.cuda.amp.GradScaler()

    # A few distinct GPU-resident batches, so no step reuses another's input; fresh random data, not zeros.
    nbuf = 2 if device.type == "cuda" else 1
    xs = [torch.randn(a.batch, 3, a.size, a.size, device=device).contiguous(memory_format=fmt) for _ in range(nbuf)]
    ys = [torch.randint(0, a.classes, (a.batch,), device=device) for _ in range(nbuf)]

    fwd = model
    if a.compile:
        if not hasattr(torch, "compile"):
            print(f"torch_gpu_train: torch {torch.__version__} has no torch.compile", file=sys.stderr)
            return 3
        fwd = torch.compile(model)

    def step(i):
        x, y = xs[i % nbuf], ys[i % nbuf]
        opt.zero_grad(set_to_none=True)
        if amp_dtype is not None:
            with torch.autocast(device_type=device.type, dtype=amp_dtype):
                loss = crit(fwd(x), y)
        else:
            loss = crit(fwd(x), y)
        if use_scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return loss

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # Warm-up: the first step carries cudnn.benchmark's search and, with --compile, the compilation.
    t0 = time.perf_counter()
    step(0)
    sync()
    first_step_s = time.perf_counter() - t0
    for i in range(1, a.warmup):
        step(i)
    sync()
    warmup_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if a.profile_step:
        if device.type != "cuda":
            print("torch_gpu_train: --profile-step needs --device cuda", file=sys.stderr)
            return 2
        torch.cuda.profiler.start()
        loss = step(a.warmup)
        sync()
        torch.cuda.profiler.stop()
        print(f"torch_gpu_train: profiled one {'compiled' if a.compile else 'eager'} {a.amp} step "
              f"(loss {float(loss.detach().float().item()):.4f})", file=sys.stderr)
        return 0

    timer = Timer(torch, device)
    window_ms = []
    n = a.warmup
    for _ in range(a.windows):
        sync()
        timer.start()
        for _ in range(a.iters):
            loss = step(n)
            n += 1
        window_ms.append(timer.stop_ms() / a.iters)
    last_loss = float(loss.detach().float().item())
    ms = statistics.median(window_ms)

    res = {
        "impl": "torch",
        "mode": "compile" if a.compile else "eager",
        "amp": a.amp,
        "batch": a.batch,
        "size": a.size,
        "classes": a.classes,
        "channels_last": not a.no_channels_last,
        "sgd": "fused" if a.fused_sgd else "foreach-default",
        "img_per_s": a.batch * 1e3 / ms,
        "ms_per_step": ms,
        "ms_per_step_windows": window_ms,
        "ms_spread_pct": 100.0 * (max(window_ms) - min(window_ms)) / ms,
        "warmup_steps": a.warmup,
        "iters_per_window": a.iters,
        "first_step_s": first_step_s,
        "warmup_s": warmup_s,
        "loss": last_loss,
        "loss_finite": math.isfinite(last_loss),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    if use_scaler:
        res["loss_scale"] = float(scaler.get_scale())
    if device.type == "cuda":
        res["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        res["gpu"] = torch.cuda.get_device_name()
        res["cuda"] = torch.version.cuda
        res["cudnn"] = torch.backends.cudnn.version()
    print(f"torch {res['mode']} {a.amp}: {res['img_per_s']:.1f} img/s, {ms:.2f} ms/step "
          f"(windows {', '.join(f'{w:.2f}' for w in window_ms)}), first step {first_step_s:.1f} s", file=sys.stderr)
    print("RESULT " + json.dumps(res), flush=True)
    return 0 if res["loss_finite"] else 4


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
