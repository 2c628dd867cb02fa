"""Numba kernels: pure functions of input views, weight views, an output view
and slice bounds.  No kernel knows about processes, workers or the plan."""
from ._cache import configure as _configure_cache

_configure_cache()  # before any cached function below is defined
from .activations import (ACT_NAMES, GELU, GELU_TANH, HARD_SIGMOID, HARDSIGMOID, HARDSWISH, HARDTANH, IDENTITY,
                          LEAKY_RELU, RELU, RELU6,
                          SIGMOID, SILU, TANH, act1, apply_act, bias_act)
from .blas import gemm_nt
from .gemm import gemm_packed, pack, packed_size
from .tile import ISA, MR, NR
from .conv import conv2d
from .pool import global_avg_pool, pool2d, pool2d_argmax, upsample2d
from .linear import linear, reduce_partials
from .merge import merge
from .qgemm import gemm_fmt, gemm_q
from .qformat import FORMATS
from ._isa import QISA
from .norm import affine, gather, layernorm, layernorm_stat
from .recurrent import gru_cell, gru_lbr0_cell, gru_reset, lstm_cell, rnn_cell
from .rowwise import argmax, softmax, topk

__all__ = ["ACT_NAMES", "IDENTITY", "RELU", "SIGMOID", "TANH", "GELU", "GELU_TANH", "SILU", "HARDSWISH", "LEAKY_RELU", "RELU6",
           "HARDSIGMOID", "HARDTANH", "HARD_SIGMOID",
           "act1", "apply_act", "bias_act",
           "gemm_nt", "gemm_packed", "gemm_fmt", "gemm_q", "FORMATS", "QISA", "pack", "packed_size", "ISA", "MR", "NR", "conv2d", "pool2d", "pool2d_argmax", "upsample2d", "global_avg_pool", "linear", "reduce_partials", "affine", "merge", "gather", "layernorm", "layernorm_stat", "gru_cell", "gru_lbr0_cell", "gru_reset",
           "lstm_cell", "rnn_cell", "argmax", "softmax", "topk"]
