"""The built-in benchmark workloads, and the same models in plain numpy.

numpy_forward is the "numpy in one process" column of the benchmark (in
float32) and its float64 reference (in float64): shmrt.ir.reference, the
tests' yardstick too, written independently of shmrt's planner and kernels,
straight from the layers' parameters.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from shmrt.ir import layers as L
from shmrt.ir import reference


@dataclass
class Workload:
    name: str
    description: str
    model: L.Layer  # a Sequential or a Graph
    input_shape: tuple
    batches: tuple
    max_batch: int
    unit: str = "items"  # what one row is
    zero_copy: bool = False  # rows live in the shared input buffer; run_in_place, no copies
    chunk: int = 0  # > 0: stream the rows through the zero-copy tier, chunk rows at a time
    fixed_batch: bool = False  # always runs its own batch (the bench's --batches does not apply)
    runner: Callable = None  # runs it instead of harness.run_workload (same arguments and result)

    @property
    def subset(self) -> tuple:
        """The default bench's batches: one latency and one throughput batch."""
        return (min(self.batches), max(self.batches)) if len(self.batches) > 1 else self.batches


def mlp():
    L.manual_seed(1234)
    dims = (1024, 4096, 4096, 1024)
    layers = []
    for a, b in zip(dims, dims[1:]):
        layers += [L.Linear(a, b), L.ReLU()]
    return Workload("mlp", "MLP 1024-4096-4096-1024 + ReLU", L.Sequential(layers[:-1]), (1024,), (1, 256), 256)


def cnn():
    L.manual_seed(1235)
    model = L.Sequential([L.Conv2d(3, 32, 3, padding=1), L.ReLU(), L.MaxPool2d(2),
                          L.Conv2d(32, 64, 3, padding=1), L.ReLU(), L.MaxPool2d(2), L.Flatten(),
                          L.Linear(4096, 256), L.ReLU(), L.Linear(256, 10), L.Softmax()])
    return Workload("cnn", "CNN 3x32x32: conv32-pool-conv64-pool-fc256-fc10-softmax", model, (3, 32, 32),
                    (1, 64), 64, "images")


def lstm():
    L.manual_seed(1236)
    model = L.Sequential([L.LSTM(256, 1024, return_sequences=False)])
    return Workload("lstm", "LSTM input 256, hidden 1024, 64 steps (last h)", model, (64, 256), (1, 32), 32,
                    "sequences")


def deep():
    L.manual_seed(1238)
    layers = []
    for _ in range(12):
        layers += [L.Linear(256, 256), L.ReLU()]
    return Workload("deep", "deep MLP: 12 x (Linear 256-256 + ReLU), the pipeline's case", L.Sequential(layers),
                    (256,), (1, 4096), 4096)


def _logreg_model():
    L.manual_seed(1237)
    rng = np.random.default_rng(7)
    return L.logistic_regression(rng.standard_normal(64) / 8, 0.1)


def logreg():
    return Workload("logreg", "logistic regression, 64 features, 1,000,000 rows already in shared memory "
                    "(zero-copy tier: computed in place)", _logreg_model(), (64,), (1_000_000,), 1_000_000, "rows",
                    zero_copy=True, fixed_batch=True)


def logreg_copy():
    return Workload("logreg-copy", "the same 1,000,000 rows passed as an ordinary numpy array to cm(x) (the convenience "
                    "tier: moved once, each worker its own rows)", _logreg_model(), (64,), (1_000_000,), 1_000_000,
                    "rows", fixed_batch=True)


def logreg_stream():
    return Workload("logreg-stream", "the same, 1,000,000 rows streamed in chunks of 65,536, each written into a "
                    "shmrt.empty buffer (as a reader would) and computed there by cm(buffer)",
                    _logreg_model(), (64,), (1_000_000,), 65_536, "rows", chunk=65_536, fixed_batch=True)


def resnet18():
    from shmrt.bench import graphs
    return Workload("resnet18", "ResNet-18, 3x224x224 (residual graph; BatchNorm folded)", graphs.resnet18(),
                    (3, 224, 224), (1, 8), 8, "images")


def mobilenetv2():
    from shmrt.bench import graphs
    return Workload("mobilenetv2", "MobileNetV2 1.0, 3x224x224 (inverted residuals, depthwise convolutions, ReLU6)",
                    graphs.mobilenetv2(), (3, 224, 224), (1, 16), 16, "images")


GRAPH_WORKLOADS = ("resnet18", "mobilenetv2")  # in --full runs, or named: a default run stays near a minute
WORKLOADS = {"mlp": mlp, "cnn": cnn, "lstm": lstm, "deep": deep, "logreg": logreg, "logreg-copy": logreg_copy,
             "logreg-stream": logreg_stream, "resnet18": resnet18, "mobilenetv2": mobilenetv2}


def numpy_forward(model, x, dtype=np.float32):
    """The "numpy in one process" peer (float32) and the bench's float64 reference: shmrt.ir.reference,
    written independently of shmrt's planner and kernels."""
    return reference.forward(model, x, dtype)
