"""Model IR: every layer class and Sequential, under one name (``from shmrt.ir import layers as L``).

The classes live by family: base.py (Layer, the parameter helpers,
manual_seed), dense.py (Linear, activations, row-wise layers), norm.py
(preprocessing and per-feature normalisation), conv.py (Conv2d, pools,
Flatten), recurrent.py (RNN, LSTM, GRU), transformer.py (Embedding,
attention, encoder layers, sequence pooling), merge.py (Add, Mul, Concat, ...: layers
of several activations), rearrange.py (Permute, Transpose, Slice), graph.py (Graph, Input) and model.py (Sequential, the
fitted regressions).  This module only re-exports them, the private base
classes included: the planner and the frontends test layers by family
(``isinstance(l, L._Recurrent)``).
"""
from shmrt.ir.base import Layer, _param, _positive_int, _rng, _vector, manual_seed
from shmrt.ir.conv import (AvgPool2d, BatchNorm2d, Conv2d, Flatten, GlobalAvgPool, MaxPool2d, Reshape, Upsample,
                           _out_size, _pair, _Pool2d, returns_indices)
from shmrt.ir.convtranspose import ConvTranspose2d
from shmrt.ir.dense import (ACTIVATIONS, GELU, ArgMax, HardSigmoid, Hardsigmoid, Hardswish, Hardtanh, LayerNorm, LeakyReLU,
                            Linear, LogSoftmax, Mean, ReLU, ReLU6, RStd, Sigmoid, SiLU, Softmax, Tanh, TopK, _Elementwise,
                            _RowWise, _TrailingStat)
from shmrt.ir.graph import Graph, Input, Node, Value
from shmrt.ir.merge import BINARY_OPS, AdaptiveAvgPool2d, AdaptiveMaxPool2d, _AdaptivePool2d, Add, Concat, Div, Mul, Sub, _Binary, _Merge
from shmrt.ir.model import Sequential, linear_regression, logistic_regression
from shmrt.ir.norm import BatchNorm1d, Dropout, MinMaxScale, Select, Standardize, _Affine
from shmrt.ir.rearrange import Permute, Slice, Transpose, _Rearrange
from shmrt.ir.recurrent import GRU, LSTM, RNN, _Recurrent
from shmrt.ir.transformer import (SEQUENCE_LAYERS, Embedding, FirstToken, MaskedMeanPool, MultiheadAttention,
                                  PaddingMask, PositionalEmbedding, ScaledDotProductAttention, TransformerEncoder,
                                  TransformerEncoderLayer)

__all__ = [
    "Layer", "manual_seed", "Sequential", "linear_regression", "logistic_regression",
    "Linear", "ReLU", "Sigmoid", "Tanh", "GELU", "SiLU", "Hardswish", "LeakyReLU", "ReLU6", "Hardsigmoid", "Hardtanh", "HardSigmoid",
    "ACTIVATIONS",
    "Softmax", "LogSoftmax", "ArgMax", "TopK", "LayerNorm", "Mean", "RStd",
    "Standardize", "MinMaxScale", "BatchNorm1d", "Select", "Dropout",
    "Conv2d", "ConvTranspose2d", "BatchNorm2d", "MaxPool2d", "AvgPool2d", "GlobalAvgPool", "Flatten", "Reshape", "Upsample",
    "RNN", "LSTM", "GRU",
    "Graph", "Input", "Node", "Value", "Add", "Sub", "Mul", "Div", "Concat", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
    "BINARY_OPS", "Permute", "Transpose", "Slice",
    "Embedding", "PositionalEmbedding", "ScaledDotProductAttention", "MultiheadAttention", "TransformerEncoderLayer",
    "TransformerEncoder", "PaddingMask", "FirstToken", "MaskedMeanPool", "SEQUENCE_LAYERS",
    # the layer families (private base classes) and helpers that other modules reach through L
    "_Elementwise", "_RowWise", "_TrailingStat", "_Binary", "_Merge", "_Rearrange", "_Affine", "_Recurrent", "_Pool2d",
    "returns_indices", "_AdaptivePool2d",
    "_param", "_vector", "_positive_int", "_rng", "_pair", "_out_size",
]
