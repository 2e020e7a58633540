#!/usr/bin/python3
"""Convert our HDF5 weights file (or a checkpoint holding the same datasets) into a torchvision
ResNet18 state_dict (.pth), checked by loading it into torchvision.models.resnet18 (strict).

    /usr/bin/python3 tools/h5_to_torchvision.py weights.h5 resnet18.pth [--group /model]

The result loads with: m = torchvision.models.resnet18(num_classes=K); m.load_state_dict(torch.load(p)).
It is built in memory, written under a temporary name, flushed and renamed; any failure (a bad
input, a full disk) is one line naming the file and the cause, exit 1, and leaves no temporary file.
"""
import argparse
import io
import os

from convert_common import check_output, fail, why, write_atomic  # the scripts' own directory


def read_state_dict(path, group):
    # Checks that need neither torch nor h5py come first: they answer in a fraction of the import time.
    if not os.path.isfile(path):
        fail(f"{path}: {'is a directory' if os.path.isdir(path) else 'no such file'}, not an HDF5 weights file")
    import h5py
    import numpy as np
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        fail(f"{path}: not a readable HDF5 file ({why(e)})")
    with f:
        # A checkpoint of ours sets complete = 1 last (after every tensor): without it the file was cut
        # short while being written, as train_resnet18 --init-weights/--resume refuse it too.
        fmt = f.attrs.get("format")
        if isinstance(fmt, bytes):
            fmt = fmt.decode("utf-8", "replace")
        if fmt == "resnet18-ddp-checkpoint" and int(f.attrs.get("complete", 0)) != 1:
            fail(f"{path}: an incomplete checkpoint (its 'complete' attribute is not 1: the run stopped or failed "
                 "while writing it); convert an earlier checkpoint")
        where = group or "/"
        if where not in f or not isinstance(f[where], h5py.Group):
            fail(f"{path}: no group '{where}' (our weights files and checkpoints hold the tensors at the root: "
                 "leave --group out)")
        g = f[where]
        if "fc.weight" not in g:
            fail(f"{path}: no tensor 'fc.weight' under '{where}'")
        fc = g["fc.weight"]
        if not isinstance(fc, h5py.Dataset) or len(fc.shape) != 2:
            fail(f"{path}: 'fc.weight' under '{where}' is not a 2-d tensor")
        num_classes = int(fc.shape[0])
        if "num_classes" in f.attrs and int(f.attrs["num_classes"]) != num_classes:
            fail(f"{path}: attribute num_classes={int(f.attrs['num_classes'])} but fc.weight has {num_classes} rows")
        import torch
        import torchvision
        model = torchvision.models.resnet18(num_classes=num_classes)
        sd = {}
        # Only the datasets ResNet18 has: a checkpoint holds others (optimizer/, rng) beside them.
        for name, ref in model.state_dict().items():
            if name not in g or not isinstance(g[name], h5py.Dataset):
                fail(f"{path}: missing tensor '{name}' under '{where}'")
            try:
                a = np.asarray(g[name][()])
            except Exception as e:  # a damaged file fails here, not at open: name the tensor
                fail(f"{path}: cannot read tensor '{name}' ({why(e)})")
            if a.dtype.kind not in "biuf":
                fail(f"{path}: tensor '{name}' holds {a.dtype}, not numbers")
            if name.endswith("num_batches_tracked"):
                if a.size != 1:
                    fail(f"{path}: '{name}' holds {a.size} values, needs one (a counter)")
                sd[name] = torch.tensor(int(a.reshape(-1)[0]), dtype=torch.int64)
                continue
            if tuple(a.shape) != tuple(ref.shape):
                fail(f"{path}: tensor '{name}' has shape {tuple(a.shape)}, ResNet18 needs {tuple(ref.shape)}")
            sd[name] = torch.from_numpy(a.astype(np.float32))
    model.load_state_dict(sd, strict=True)
    return sd, num_classes


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="HDF5 weights file")
    ap.add_argument("output", help=".pth file to write")
    ap.add_argument("--group", default="", help="HDF5 group holding the tensors (default: the root)")
    a = ap.parse_args()
    check_output(a.output)
    sd, k = read_state_dict(a.input, a.group)
    import torch
    buf = io.BytesIO()
    torch.save(sd, buf)
    write_atomic(buf.getvalue(), a.output)
    print(f"wrote {a.output}: {len(sd)} tensors, {k} classes")


if __name__ == "__main__":
    main()
