"""shmrt: run model inference on every core of one machine, from plain Python.

Re-exports only; see README.md and runtime.py.  The subpackages follow the
one-way data flow: ir (layers, serialisation) <- frontends (ONNX, torch,
scikit-learn, files) -> compile (instruction set, plans, cost model) ->
exec (the interpreter the workers run) on parallel (processes, shared
memory, atomics; it knows no models); kernels are the Numba kernels the
interpreter calls, bench the benchmark (the runtime never imports it).
"""
from shmrt import _kernels_path  # noqa: F401  (first: makes shmrt.kernels importable from a source checkout)
from shmrt import kernels  # noqa: F401  (next: it points Numba's cache at a folder keyed on the compiled sources)
from shmrt.ir.layers import (GELU, AdaptiveAvgPool2d, AdaptiveMaxPool2d, Permute, Reshape, Slice, Transpose, Upsample, Add, Concat, Div, Graph, Input, Mul, Sub, GRU, LSTM, RNN, ArgMax, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, ConvTranspose2d, Dropout,
                             Flatten, GlobalAvgPool, HardSigmoid, Hardsigmoid, Hardswish, Hardtanh, Layer, LayerNorm, LeakyReLU, Linear,
                             LogSoftmax, MaxPool2d, Mean, MinMaxScale, ReLU, RStd, ReLU6, Select, Sequential, Sigmoid, SiLU, Softmax,
                             Standardize, Tanh, TopK, linear_regression, logistic_regression, manual_seed,
                             Embedding, FirstToken, MaskedMeanPool, MultiheadAttention, PaddingMask, PositionalEmbedding,
                             ScaledDotProductAttention, TransformerEncoder, TransformerEncoderLayer)
from shmrt.compare import compare
from shmrt.frontends.load import load
from shmrt.machine import machine
from shmrt.parallel.buffers import asarray, empty
from shmrt.parallel.pool import CommandError, WorkerError
from shmrt.runtime import CompiledModel, Runtime, run
from shmrt.version import __version__

__all__ = ["Runtime", "CompiledModel", "run", "compare", "load", "empty", "asarray", "machine", "WorkerError", "CommandError", "Layer", "Sequential", "Linear", "ReLU",
           "Sigmoid", "Tanh", "GELU", "Softmax", "LogSoftmax", "ArgMax", "TopK", "manual_seed", "Standardize",
           "MinMaxScale", "Select", "Dropout", "BatchNorm1d", "LayerNorm", "RNN", "LSTM", "GRU",
           "linear_regression", "logistic_regression", "Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool",
           "Flatten", "BatchNorm2d", "LeakyReLU", "SiLU", "Hardswish", "ReLU6", "Hardsigmoid",
           "Hardtanh", "HardSigmoid", "Mean", "RStd",
           "Graph", "Input", "Reshape", "Upsample", "Add", "Sub", "Mul", "Div", "Concat", "AdaptiveAvgPool2d",
           "Permute", "Transpose", "Slice", "AdaptiveMaxPool2d"]
