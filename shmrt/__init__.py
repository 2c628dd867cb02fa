"""shmrt: run model inference on every core of one machine, from plain Python.

Re-exports only; see README.md and runtime.py.
"""
from .layers import (GELU, ArgMax, Layer, Linear, LogSoftmax, ReLU, Sequential, Sigmoid, Softmax, Tanh,
                     TopK, manual_seed)
from .pool import WorkerError
from .runtime import CompiledModel, Runtime, run

__version__ = "0.1.0"
__all__ = ["Runtime", "CompiledModel", "run", "WorkerError", "Layer", "Sequential", "Linear", "ReLU",
           "Sigmoid", "Tanh", "GELU", "Softmax", "LogSoftmax", "ArgMax", "TopK", "manual_seed"]
