"""shmrt: run model inference on every core of one machine, from plain Python.

Re-exports only; see README.md and runtime.py.
"""
import kernels  # noqa: F401  (first: it points Numba's cache at a folder keyed on every source file)
from .layers import (GELU, GRU, LSTM, RNN, ArgMax, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Dropout, Flatten,
                     GlobalAvgPool, Layer, LayerNorm, Linear, LogSoftmax, MaxPool2d, MinMaxScale, ReLU, Select,
                     Sequential, Sigmoid, Softmax, Standardize, Tanh, TopK, linear_regression, logistic_regression,
                     manual_seed)
from .load import load
from .pool import CommandError, WorkerError
from .runtime import CompiledModel, Runtime, run

__version__ = "0.1.0"
__all__ = ["Runtime", "CompiledModel", "run", "load", "WorkerError", "CommandError", "Layer", "Sequential", "Linear", "ReLU",
           "Sigmoid", "Tanh", "GELU", "Softmax", "LogSoftmax", "ArgMax", "TopK", "manual_seed", "Standardize",
           "MinMaxScale", "Select", "Dropout", "BatchNorm1d", "LayerNorm", "RNN", "LSTM", "GRU",
           "linear_regression", "logistic_regression", "Conv2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool",
           "Flatten", "BatchNorm2d"]
