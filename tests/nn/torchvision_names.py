#!/usr/bin/python3
"""Prints torchvision ResNet18's state_dict as lines "name dim0,dim1,..." (scalar: "name -")."""
import sys

import torchvision

for name, t in torchvision.models.resnet18(num_classes=int(sys.argv[1])).state_dict().items():
    print(name, ",".join(str(d) for d in t.shape) or "-")
