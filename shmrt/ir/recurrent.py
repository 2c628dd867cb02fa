"""Recurrent layers over [N, T, F]: RNN, LSTM, GRU (one class each, a cell name apart)."""
from __future__ import annotations

import numpy as np

from shmrt.ir.base import Layer, _param, _positive_int
from shmrt.kernels.recurrent import CELLS, GATES


class _Recurrent(Layer):
    """RNN / LSTM / GRU, batch-first [N, T, F] -> [N, T, H] (return_sequences)
    or [N, H] (the last step).  PyTorch's names: weight_ih_l{k} [G*H, F_k],
    weight_hh_l{k} [G*H, H], bias_ih_l{k}, bias_hh_l{k}; gates i, f, g, o
    (LSTM) and r, z, n (GRU).  h0 / c0: optional initial state
    [num_layers, H], the same for every sequence (zeros if left out).

    Per-sample lengths (PyTorch's pack_padded_sequence, ONNX's sequence_lens): in a shmrt.Graph,
    call the layer with a second value, ``layer(x, lengths)``, lengths of per-sample shape (1,) --
    each sequence's count of valid steps L, an integer 1..T (a graph input: the call refuses others).
    Steps t >= L leave the state as it was: the output sequence is 0 there, and the last step
    (return_sequences=False; LSTM's return_cell_state) is the state after step L - 1."""

    cell = "rnn_tanh"  # the kernels' name of the cell (shmrt.kernels.recurrent.CELLS)

    @property
    def mode(self) -> int:
        """The cell's code: 0 RNN tanh, 1 RNN relu, 2 LSTM, 3 GRU."""
        return CELLS.index(self.cell)

    @property
    def gates(self) -> int:
        return GATES[self.mode]

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=True,
                 return_sequences=True, h0=None, c0=None, **params):
        super().__init__()
        name = f"{type(self).__name__}({input_size}, {hidden_size})"
        self.input_size = _positive_int(input_size, "input_size", name)
        self.hidden_size = H = _positive_int(hidden_size, "hidden_size", name)
        self.num_layers = _positive_int(num_layers, "num_layers", name)
        if batch_first is not True:
            raise ValueError(f"{name}: only batch_first=True ([N, T, F]) is supported, got {batch_first!r}")
        self.return_sequences = bool(return_sequences)
        self.bias = bool(bias)
        G = self.gates
        known = set()
        for k in range(self.num_layers):
            fin = self.input_size if k == 0 else H
            for pname, shape in ((f"weight_ih_l{k}", (G * H, fin)), (f"weight_hh_l{k}", (G * H, H))) + (
                    ((f"bias_ih_l{k}", (G * H,)), (f"bias_hh_l{k}", (G * H,))) if self.bias else ()):
                self.params[pname] = _param(params.get(pname), shape, pname, name, H)
                known.add(pname)
        extra = set(params) - known
        if extra:
            raise TypeError(f"{name}: unexpected parameter(s) {sorted(extra)}; expected some of {sorted(known)}")
        if h0 is not None:
            self.params["h0"] = _param(h0, (self.num_layers, H), "h0", name, 1)
        if c0 is not None:
            if self.cell != "lstm":
                raise ValueError(f"{name}: c0 is for LSTM only")
            self.params["c0"] = _param(c0, (self.num_layers, H), "c0", name, 1)

    def output_shape(self, shape, lengths=None):
        if lengths is not None and tuple(lengths) != (1,):
            raise ValueError(f"{self!r}: lengths must be one value per sample, shape (N, 1), got "
                             f"(N, {', '.join(map(str, lengths))})")
        if len(shape) != 2 or shape[1] != self.input_size:
            raise ValueError(f"{self!r} expects inputs of shape (N, T, {self.input_size}), "
                             f"got (N, {', '.join(map(str, shape))})")
        return (shape[0], self.hidden_size) if self.return_sequences else (self.hidden_size,)

    def config(self):
        return {k: getattr(self, k) for k in ("input_size", "hidden_size", "num_layers", "bias", "return_sequences")}

    def __repr__(self):
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"return_sequences={self.return_sequences})")


class RNN(_Recurrent):
    """Elman RNN: h = act(x W_ih^T + b_ih + h W_hh^T + b_hh); nonlinearity 'tanh' or 'relu'."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", **kw):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.cell = "rnn_tanh" if nonlinearity == "tanh" else "rnn_relu"
        super().__init__(input_size, hidden_size, num_layers, **kw)

    def config(self):
        return dict(super().config(), nonlinearity="tanh" if self.cell == "rnn_tanh" else "relu")


class LSTM(_Recurrent):
    """return_cell_state=True: the layer's output is the last layer's final cell state c(T), [N, H]
    (ONNX's Y_c), instead of h; it needs return_sequences=False."""

    cell = "lstm"

    def __init__(self, input_size, hidden_size, num_layers=1, return_cell_state=False, **kw):
        self.return_cell_state = bool(return_cell_state)
        super().__init__(input_size, hidden_size, num_layers, **kw)
        if self.return_cell_state and self.return_sequences:
            raise ValueError(f"{self!r}: return_cell_state=True outputs the final cell state [N, H]; it needs "
                             f"return_sequences=False")

    def config(self):
        return dict(super().config(), **({"return_cell_state": True} if self.return_cell_state else {}))

    def __repr__(self):
        r = super().__repr__()
        return r[:-1] + ", return_cell_state=True)" if self.return_cell_state else r


class GRU(_Recurrent):
    """GRU with PyTorch's semantics by default: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
    linear_before_reset=False (ONNX's default, linear_before_reset=0) applies the reset gate
    before the product: n = tanh(W_in x + b_in + W_hn (r * h) + b_hn)."""

    def __init__(self, input_size, hidden_size, num_layers=1, linear_before_reset=True, **kw):
        if not isinstance(linear_before_reset, (bool, np.bool_)):
            raise ValueError(f"GRU: linear_before_reset must be True (PyTorch's GRU) or False (ONNX's "
                             f"linear_before_reset=0), got {linear_before_reset!r}")
        self.linear_before_reset = bool(linear_before_reset)
        self.cell = "gru" if self.linear_before_reset else "gru_lbr0"
        super().__init__(input_size, hidden_size, num_layers, **kw)

    def config(self):
        return dict(super().config(), linear_before_reset=self.linear_before_reset)

    def __repr__(self):
        r = super().__repr__()
        return r if self.linear_before_reset else r[:-1] + ", linear_before_reset=False)"
