"""The benchmark's graph workloads, written with shmrt's functional API from the papers' definitions:
ResNet-18 (He et al. 2015: basic blocks, torchvision's layout) and MobileNetV2 (Sandler et al. 2018:
inverted residuals, ReLU6, width multiple of 8), 224x224, with BatchNorm statistics that are not
the identity (so folding them is checked against something).  The peers get the same graph
(peers.py builds each from the nodes)."""
from __future__ import annotations

import numpy as np

from shmrt.ir import layers as L


def _bn(c, rng):
    return L.BatchNorm2d(c, weight=rng.uniform(0.75, 1.25, c), bias=rng.normal(0, 0.1, c),
                         running_mean=rng.normal(0, 0.1, c), running_var=rng.uniform(0.75, 1.25, c))


def _conv_bn(x, cin, cout, k, stride, rng, act=L.ReLU, groups=1):
    h = _bn(cout, rng)(L.Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=False)(x))
    return act()(h) if act is not None else h


def resnet18(num_classes=1000):
    L.manual_seed(1240)
    rng = np.random.default_rng(1240)
    x = L.Input((3, 224, 224))
    h = _conv_bn(x, 3, 64, 7, 2, rng)
    h = L.MaxPool2d(3, stride=2, padding=1)(h)
    cin = 64
    for stage, c in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            out = _conv_bn(_conv_bn(h, cin, c, 3, stride, rng), c, c, 3, 1, rng, act=None)
            skip = h if stride == 1 and cin == c else _conv_bn(h, cin, c, 1, stride, rng, act=None)
            h, cin = L.ReLU()(L.Add()(out, skip)), c
    h = L.Flatten()(L.AdaptiveAvgPool2d(1)(h))
    return L.Graph(x, L.Linear(512, num_classes)(h))


def _divisible(v, d=8):
    new = max(d, int(v + d / 2) // d * d)
    return new + d if new < 0.9 * v else new


def mobilenetv2(num_classes=1000, width=1.0):
    L.manual_seed(1241)
    rng = np.random.default_rng(1241)
    x = L.Input((3, 224, 224))
    cin = _divisible(32 * width)
    h = _conv_bn(x, 3, cin, 3, 2, rng, act=L.ReLU6)
    for t, c, n, s in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)):
        cout = _divisible(c * width)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            y = _conv_bn(h, cin, hidden, 1, 1, rng, act=L.ReLU6) if t != 1 else h
            y = _conv_bn(y, hidden, hidden, 3, stride, rng, act=L.ReLU6, groups=hidden)
            y = _conv_bn(y, hidden, cout, 1, 1, rng, act=None)
            h, cin = (L.Add()(h, y) if stride == 1 and cin == cout else y), cout
    last = _divisible(1280 * max(1.0, width))
    h = _conv_bn(h, cin, last, 1, 1, rng, act=L.ReLU6)
    h = L.Flatten()(L.AdaptiveAvgPool2d(1)(h))
    return L.Graph(x, L.Linear(last, num_classes)(h))
