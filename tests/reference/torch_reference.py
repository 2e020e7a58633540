#!/usr/bin/python3
"""PyTorch reference for the CPU ResNet18 (tests/reference/test_vs_pytorch.cpp runs it).

    torch_reference.py --weights W.h5 --inputs IN.h5 --out OUT.h5 [--dtype float64|float32]

W.h5: our weights file (torchvision state_dict names). IN.h5: "images" f32 [n, 3, h, w] (normalised),
"labels" i32 [n], attributes label_smoothing, lr, momentum, weight_decay, nesterov (0/1), steps.
OUT.h5 (all float64):
  eval_logits                  logits with model.eval() (running stats), before any training forward
  logits, loss                 train-mode forward (batch statistics)
  grad/<param>                 d(mean loss)/d(param) of that forward
  stats/<buffer>               running_mean / running_var after that forward
  <variant>/params/<param>     parameters after `steps` SGD steps (forward+backward+step each)
  <variant>/stats/<buffer>     running stats after those steps
  <variant>/momentum/<param>   momentum buffers after those steps
  <variant>/losses             the loss of each of those steps
  <variant>/sgd_only/params/<param>, <variant>/sgd_only/momentum/<param>
                               the optimizer alone: `steps` SGD steps from the weights with the given
                               gradients IN["sgd_grads"] [steps, param_count] (flat, state_dict order),
                               learning rate and weight decay from attributes sgd_lr, sgd_weight_decay
With --loop-only only the <variant>/{params,momentum,stats,losses} entries are written (the test runs
the loop in float32 too, to measure how far PyTorch's own fp32 drifts from fp64 over the steps).
    variant "decay_all":  weight decay on every parameter (one param group)
    variant "decay_conv": weight decay only on conv and fc weights (param groups: BN and biases wd=0)
"""
import argparse

import h5py
import numpy as np
import torch
import torchvision


def build(weights, dtype):
    with h5py.File(weights, "r") as f:
        k = int(f["fc.weight"].shape[0])
        model = torchvision.models.resnet18(num_classes=k)
        sd = {}
        for name, ref in model.state_dict().items():
            a = np.asarray(f[name][()])
            if name.endswith("num_batches_tracked"):
                sd[name] = torch.tensor(int(a.reshape(-1)[0]), dtype=torch.int64)
            else:
                assert tuple(a.shape) == tuple(ref.shape), (name, a.shape, ref.shape)
                sd[name] = torch.from_numpy(a.astype(np.float32))
    model.load_state_dict(sd, strict=True)
    return model.to(dtype)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--loop-only", action="store_true")
    a = ap.parse_args()
    dtype = getattr(torch, a.dtype)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with h5py.File(a.inputs, "r") as f:
        x = torch.from_numpy(np.asarray(f["images"][()])).to(dtype)
        y = torch.from_numpy(np.asarray(f["labels"][()]).astype(np.int64))
        eps = float(f.attrs["label_smoothing"])
        lr = float(f.attrs["lr"])
        mom = float(f.attrs["momentum"])
        wd = float(f.attrs["weight_decay"])
        nesterov = bool(int(f.attrs["nesterov"]))
        steps = int(f.attrs["steps"])
        sgd_grads = np.asarray(f["sgd_grads"][()]) if "sgd_grads" in f else None
        sgd_lr = float(f.attrs.get("sgd_lr", lr))
        sgd_wd = float(f.attrs.get("sgd_weight_decay", wd))
    crit = torch.nn.CrossEntropyLoss(label_smoothing=eps)
    out = h5py.File(a.out + ".tmp", "w")
    f64 = lambda t: t.detach().to(torch.float64).numpy()

    if not a.loop_only:
        model = build(a.weights, dtype)
        model.eval()
        with torch.no_grad():
            out["eval_logits"] = f64(model(x))
        model.train()
        logits = model(x)
        loss = crit(logits, y)
        loss.backward()
        out["logits"] = f64(logits)
        out["loss"] = np.array([loss.item()], dtype=np.float64)
        for name, p in model.named_parameters():
            out["grad/" + name] = f64(p.grad)
        for name, b in model.named_buffers():
            if not name.endswith("num_batches_tracked"):
                out["stats/" + name] = f64(b)

    def make_opt(model, variant, lr=lr, wd=wd):
        if variant == "decay_all":
            groups = [{"params": list(model.parameters()), "weight_decay": wd}]
        else:
            # Conv and fc weights are the parameters with more than one dimension.
            decay = [p for p in model.parameters() if p.dim() > 1]
            no_decay = [p for p in model.parameters() if p.dim() <= 1]
            groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.SGD(groups, lr=lr, momentum=mom, nesterov=nesterov)

    for variant in ("decay_all", "decay_conv"):
        if sgd_grads is not None and not a.loop_only:
            model = build(a.weights, dtype)
            opt = make_opt(model, variant, sgd_lr, sgd_wd)
            for s in range(steps):
                off = 0
                for p in model.parameters():
                    p.grad = torch.from_numpy(sgd_grads[s, off:off + p.numel()].reshape(p.shape)).to(dtype)
                    off += p.numel()
                assert off == sgd_grads.shape[1]
                opt.step()
            for name, p in model.named_parameters():
                out[variant + "/sgd_only/params/" + name] = f64(p)
                out[variant + "/sgd_only/momentum/" + name] = f64(opt.state[p]["momentum_buffer"])
        model = build(a.weights, dtype)
        model.train()
        opt = make_opt(model, variant)
        losses = []
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            l = crit(model(x), y)
            l.backward()
            opt.step()
            losses.append(l.item())
        out[variant + "/losses"] = np.array(losses, dtype=np.float64)
        for name, p in model.named_parameters():
            out[variant + "/params/" + name] = f64(p)
            out[variant + "/momentum/" + name] = f64(opt.state[p]["momentum_buffer"])
        for name, b in model.named_buffers():
            if not name.endswith("num_batches_tracked"):
                out[variant + "/stats/" + name] = f64(b)
    out.close()
    import os
    os.replace(a.out + ".tmp", a.out)


if __name__ == "__main__":
    main()
