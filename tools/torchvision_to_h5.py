#!/usr/bin/python3
"""Convert a torchvision ResNet18 state_dict (.pth) into our HDF5 weights file.

    /usr/bin/python3 tools/torchvision_to_h5.py resnet18.pth weights.h5
    /usr/bin/python3 tools/torchvision_to_h5.py --pretrained weights.h5   # torchvision's IMAGENET1K_V1
                                                                       # (needs the download cache)

The file holds one dataset per state_dict entry under its torchvision name, in PyTorch layout (OIHW,
fp32; num_batches_tracked int64 0-d) and the attributes format="resnet18-ddp-weights",
format_version=1, num_classes. It is built in memory, written under a temporary name, flushed and
renamed; any failure (a bad input, a full disk) is one line naming the file and the cause, exit 1,
and leaves no temporary file. A state_dict without the BatchNorm *.num_batches_tracked counters
(saved before PyTorch 0.4.1, as old model-zoo files are) gets them at 0, as PyTorch's
load_state_dict gives them, with a one-line note.
"""
import argparse
import io
import os
import sys

from convert_common import PROG, check_output, fail, why, write_atomic  # the scripts' own directory

FORMAT = "resnet18-ddp-weights"
FORMAT_VERSION = 1


def load_state_dict(path):
    # Checked before torch.load, whose messages for these ("Ran out of input") name neither.
    if not os.path.exists(path):
        fail(f"{path}: no such file")
    if os.path.isdir(path):
        fail(f"{path}: is a directory, not a .pth file")
    if os.path.getsize(path) == 0:
        fail(f"{path}: empty file, not a .pth state_dict")
    import torch
    try:
        obj = torch.load(path, map_location="cpu")
    except Exception as e:  # pickle, zip and torch errors alike: any of them means "not loadable"
        fail(f"{path}: not a readable PyTorch file ({why(e)})")
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        fail(f"{path}: not a state_dict (got {type(obj).__name__})")
    # Models saved from DataParallel/DDP prefix every name with "module.".
    return {k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k: v for k, v in obj.items()}


def check_resnet18(sd, source):
    import torch
    import torchvision
    fc = sd.get("fc.weight")
    if not isinstance(fc, torch.Tensor) or fc.dim() != 2:
        fail(f"{source}: no 2-d tensor 'fc.weight'; not a torchvision ResNet18 state_dict")
    num_classes = int(fc.shape[0])
    ref = torchvision.models.resnet18(num_classes=num_classes).state_dict()
    # Files saved before PyTorch 0.4.1 (old model-zoo weights among them) have no BN batch counters,
    # and load_state_dict accepts them, starting the counters at 0: so do we, and say so.
    counters = [n for n in ref if n.endswith("num_batches_tracked")]
    absent = [n for n in counters if n not in sd]
    if absent:
        for n in absent:
            sd[n] = torch.tensor(0, dtype=torch.int64)
        which = ("no num_batches_tracked counters" if len(absent) == len(counters)
                 else f"{len(absent)} of {len(counters)} num_batches_tracked counters missing (e.g. '{absent[0]}')")
        print(f"{PROG}: note: {source}: {which} (older PyTorch saves lack them); set to 0, as "
              "PyTorch's load_state_dict does", file=sys.stderr)
    for name, t in ref.items():
        if name not in sd:
            fail(f"{source}: missing tensor '{name}'")
        if not isinstance(sd[name], torch.Tensor):
            fail(f"{source}: '{name}' is a {type(sd[name]).__name__}, not a tensor")
        if tuple(sd[name].shape) != tuple(t.shape):
            fail(f"{source}: tensor '{name}' has shape {tuple(sd[name].shape)}, ResNet18 needs {tuple(t.shape)}")
        # train_resnet18 --init-weights refuses such a file; refused here first, where the .pth is named.
        if sd[name].is_floating_point() and not bool(torch.isfinite(sd[name]).all()):
            bad = int((~torch.isfinite(sd[name])).flatten().nonzero()[0].item())
            fail(f"{source}: tensor '{name}' holds inf or NaN (flat element {bad} of {sd[name].numel()} is "
                 f"{sd[name].flatten()[bad].item()}): a diverged run's weights?")
    extra = sorted(str(k) for k in set(sd) - set(ref))
    if extra:
        fail(f"{source}: tensors that ResNet18 does not have: {', '.join(extra[:5])}")
    return num_classes, list(ref.keys())


def h5_image(sd, names, num_classes):
    import h5py
    import numpy as np
    import torch
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = np.int64(FORMAT_VERSION)
        f.attrs["num_classes"] = np.int64(num_classes)
        for name in names:
            t = sd[name].detach().cpu()
            if name.endswith("num_batches_tracked"):
                f.create_dataset(name, data=np.int64(t.item()))
            else:
                f.create_dataset(name, data=t.to(torch.float32).contiguous().numpy())
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", nargs="?", help="torchvision .pth state_dict")
    ap.add_argument("output", help="HDF5 weights file to write")
    ap.add_argument("--pretrained", action="store_true", help="use torchvision's IMAGENET1K_V1 weights")
    a = ap.parse_args()
    if a.pretrained == (a.input is not None):
        ap.error("give either an input .pth or --pretrained")
    check_output(a.output)
    if a.pretrained:
        import torchvision
        try:
            sd = torchvision.models.resnet18(weights="IMAGENET1K_V1").state_dict()
        except Exception as e:  # no network and no cache: say so in one line
            fail(f"cannot load torchvision's IMAGENET1K_V1 weights ({why(e)}); download them once "
                 "with network access or pass a .pth file")
        source = "torchvision IMAGENET1K_V1"
    else:
        sd = load_state_dict(a.input)
        source = a.input
    num_classes, names = check_resnet18(sd, source)
    write_atomic(h5_image(sd, names, num_classes), a.output)
    print(f"wrote {a.output}: {len(names)} tensors, {num_classes} classes")


if __name__ == "__main__":
    main()
