"""Model IR: every layer class and Sequential, under one name (``from shmrt.ir import layers as L``).

The classes live by family: base.py (Layer, the parameter helpers,
manual_seed), dense.py (Linear, activations, row-wise layers), norm.py
(preprocessing and per-feature normalisation), conv.py (Conv2d, pools,
Flatten), recurrent.py (RNN, LSTM, GRU) and model.py (Sequential, the
fitted regressions).  This module only re-exports them, the private base
classes included: the planner and the frontends test layers by family
(``isinstance(l, L._Recurrent)``).
"""
from shmrt.ir.base import Layer, _param, _positive_int, _rng, _vector, manual_seed  # noqa: F401
from shmrt.ir.conv import (AvgPool2d, BatchNorm2d, Conv2d, Flatten, GlobalAvgPool, MaxPool2d, _out_size, _pair,  # noqa: F401
                           _Pool2d)
from shmrt.ir.dense import (GELU, ArgMax, Hardswish, LayerNorm, LeakyReLU, Linear, LogSoftmax, ReLU, Sigmoid, SiLU,
                            Softmax, Tanh, TopK, _Elementwise, _RowWise)  # noqa: F401
from shmrt.ir.model import Sequential, linear_regression, logistic_regression  # noqa: F401
from shmrt.ir.norm import BatchNorm1d, Dropout, MinMaxScale, Select, Standardize, _Affine  # noqa: F401
from shmrt.ir.recurrent import GRU, LSTM, RNN, _Recurrent  # noqa: F401
