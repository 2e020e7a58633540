#!/usr/bin/python3
"""Convert our HDF5 weights file (or a checkpoint holding the same datasets) into a torchvision
ResNet18 state_dict (.pth), checked by loading it into torchvision.models.resnet18 (strict).

    /usr/bin/python3 tools/h5_to_torchvision.py weights.h5 resnet18.pth [--group /model]

The result loads with: m = torchvision.models.resnet18(num_classes=K); m.load_state_dict(torch.load(p)).
"""
import argparse
import os
import sys

import h5py
import numpy as np
import torch
import torchvision


def read_state_dict(path, group):
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        sys.exit(f"{path}: not a readable HDF5 file ({e})")
    with f:
        g = f[group] if group else f
        if "fc.weight" not in g:
            sys.exit(f"{path}: no tensor 'fc.weight' under '{group or '/'}'")
        num_classes = int(g["fc.weight"].shape[0])
        if "num_classes" in f.attrs and int(f.attrs["num_classes"]) != num_classes:
            sys.exit(f"{path}: attribute num_classes={int(f.attrs['num_classes'])} but fc.weight has {num_classes} rows")
        model = torchvision.models.resnet18(num_classes=num_classes)
        sd = {}
        for name, ref in model.state_dict().items():
            if name not in g:
                sys.exit(f"{path}: missing tensor '{name}'")
            a = np.asarray(g[name][()])
            if name.endswith("num_batches_tracked"):
                sd[name] = torch.tensor(int(a.reshape(-1)[0]), dtype=torch.int64)
                continue
            if tuple(a.shape) != tuple(ref.shape):
                sys.exit(f"{path}: tensor '{name}' has shape {tuple(a.shape)}, ResNet18 needs {tuple(ref.shape)}")
            sd[name] = torch.from_numpy(a.astype(np.float32))
    model.load_state_dict(sd, strict=True)
    return sd, num_classes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="HDF5 weights file")
    ap.add_argument("output", help=".pth file to write")
    ap.add_argument("--group", default="", help="HDF5 group holding the tensors (default: the root)")
    a = ap.parse_args()
    sd, k = read_state_dict(a.input, a.group)
    tmp = a.output + ".tmp"
    torch.save(sd, tmp)
    os.replace(tmp, a.output)
    print(f"wrote {a.output}: {len(sd)} tensors, {k} classes")


if __name__ == "__main__":
    main()
