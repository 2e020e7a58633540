#!/usr/bin/python3
"""How far low-precision storage alone moves ResNet18's gradients, measured with PyTorch.

Calibrates the fp16/bf16 gradient bounds of test_cuda_model.cpp (compare_grads). torchvision's
resnet18 (10 classes) at its default initialisation gets one batch of random normal images and
random labels (label smoothing 0.1); its fp32 gradients are the reference. The same weights then run
with the CUDA backend's storage: the input, the conv weights and every Conv2d, BatchNorm2d, ReLU and
MaxPool2d output rounded to the low-precision type, and so is every gradient flowing back into those
outputs; arithmetic stays fp32 and BN parameters, the classifier and the loss stay fp32, as there. fp16
runs with loss scale 1024 (as the test). Prints the relative L2 error of some parameters' gradients.

Usage: /usr/bin/python3 tests/backend/cuda/amp_reference_error.py [batch] [size]   (Debian's python3-torch)
"""
import sys

import torch
import torchvision

NAMES = ["fc.weight", "layer4.1.bn2.weight", "layer4.1.conv2.weight", "layer3.1.conv2.weight",
         "layer2.0.conv2.weight", "conv1.weight"]


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    torch.manual_seed(5)
    ref = torchvision.models.resnet18(num_classes=10)
    x = torch.randn(n, 3, size, size)
    y = torch.randint(0, 10, (n,))
    crit = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    crit(ref(x), y).backward()
    g32 = {k: p.grad.clone() for k, p in ref.named_parameters()}

    def low_precision_grads(dtype, scale):
        m = torchvision.models.resnet18(num_classes=10)
        m.load_state_dict(ref.state_dict())

        def q(t):
            return t.to(dtype).float()

        def round_output(_mod, _inp, out):
            out = q(out)
            if out.requires_grad:
                out.register_hook(q)
            return out

        for mod in m.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU, torch.nn.MaxPool2d)):
                mod.register_forward_hook(round_output)
        with torch.no_grad():
            for mod in m.modules():
                if isinstance(mod, torch.nn.Conv2d):
                    mod.weight.copy_(q(mod.weight))
        (crit(m(q(x)), y) * scale).backward()
        return {k: p.grad / scale for k, p in m.named_parameters()}

    print(f"batch {n}, {size}x{size}: relative L2 error of the gradient against fp32")
    for dtype, scale in ((torch.float16, 1024.0), (torch.bfloat16, 1.0)):
        g = low_precision_grads(dtype, scale)
        cells = [f"{k} {float((g[k] - g32[k]).norm() / g32[k].norm()):.3f}" for k in NAMES]
        print(f"  {str(dtype).replace('torch.', ''):9s} " + ", ".join(cells))


if __name__ == "__main__":
    main()
