#!/usr/bin/python3
"""PyTorch CPU peer of bench_cpu_train: torchvision ResNet18 training steps (forward, backward, SGD)
on synthetic uint8 images normalised each step, as our model does in set_input_u8.

    torch_cpu_train.py --batch 128 --size 32 [--width W] [--iters 10] [--warmup 2] [--threads T] [--classes 1000]
Prints one line: "torch img_per_s=<x> batch=... size=HxW threads=... iters=... step_ms=...".
"""
import argparse
import time

import torch
import torchvision


def make_step(model, opt, crit, batch, h, w, classes):
    """One training step on a fixed random uint8 NHWC batch, normalised each step (also used by
    torch_cpu_ddp.py). Returns the step function; it returns the loss."""
    img = torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8)
    labels = torch.randint(0, classes, (batch,))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def step():
        x = (img.permute(0, 3, 1, 2).float().div(255) - mean).div(std).contiguous()
        opt.zero_grad(set_to_none=True)
        loss = crit(model(x), labels)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def positive(s):
    """argparse type: a whole number >= 1 (named in argparse's one-line error otherwise)."""
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {s}")
    return v


def non_negative(s):
    """argparse type: a whole number >= 0."""
    v = int(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {s}")
    return v


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=positive, default=128)
    ap.add_argument("--size", type=positive, default=32)
    ap.add_argument("--width", type=non_negative, default=0)
    ap.add_argument("--iters", type=positive, default=10)
    ap.add_argument("--warmup", type=non_negative, default=2)
    ap.add_argument("--threads", type=non_negative, default=0)
    ap.add_argument("--classes", type=positive, default=1000)
    a = ap.parse_args()
    h, w = a.size, a.width or a.size
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=a.classes).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    crit = torch.nn.CrossEntropyLoss()
    step = make_step(model, opt, crit, a.batch, h, w, a.classes)
    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.iters):
        loss = step()
    s = time.perf_counter() - t0
    print(f"torch img_per_s={a.batch * a.iters / s:.2f} batch={a.batch} size={h}x{w} threads={torch.get_num_threads()} "
          f"iters={a.iters} step_ms={1000 * s / a.iters:.1f} loss={loss:.4f}")


if __name__ == "__main__":
    main()
