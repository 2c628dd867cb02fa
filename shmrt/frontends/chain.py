"""The chain builder both importers (ONNX, torch) go through.

A shmrt model from an importer is a chain of ``shmrt.ir`` layers: each layer
consumes the previous one's output.  ``Chain`` holds what every importer
tracks while it walks a source graph: the layers emitted so far, the current
activation's per-sample shape (or only its rank, batch included, where the
source does not fix the shape), and a version that changes whenever the
activation does (so a stale reference to an earlier activation is caught).
It builds the importers' refusals from one template, ``<prefix><where>:
<what>``, where ``where`` names the node and its op and ``what`` the
attribute or input at fault.

Recurrent weights arrive in the source's gate order; ``reorder_gates`` is the
one place that maps between ONNX's (LSTM i, o, f, c; GRU z, r, n) and
PyTorch's (LSTM i, f, g, o; GRU r, z, n), which shmrt's layers use.
"""
from __future__ import annotations

import numpy as np

from shmrt.ir import layers as L

# Gate order of the stacked recurrent weights, one letter per gate block, in PyTorch's letters
# (ONNX's LSTM "c" gate is PyTorch's "g"): ONNX LSTM is i, o, f, c; GRU z, r, n.
GATE_ORDERS = {
    "onnx": {"LSTM": "iofg", "GRU": "zrn", "RNN": "h"},
    "torch": {"LSTM": "ifgo", "GRU": "rzn", "RNN": "h"},
}


def reorder_gates(m, kind, src="onnx", dst="torch"):
    """The gate blocks of ``m`` (stacked along axis 0: weights [G*H, ...] or biases [G*H]) of a
    ``kind`` ("LSTM", "GRU", "RNN") cell, moved from ``src``'s gate order to ``dst``'s."""
    frm, to = GATE_ORDERS[src][kind], GATE_ORDERS[dst][kind]
    m = np.asarray(m)
    if m.shape[0] % len(frm):
        raise ValueError(f"{kind} weights of shape {m.shape}: axis 0 must stack {len(frm)} gate blocks of one size")
    H = m.shape[0] // len(frm)
    return np.concatenate([m[frm.index(g) * H:(frm.index(g) + 1) * H] for g in to], axis=0)


class Chain:
    """The layers emitted so far and the activation after them.

    shape: the per-sample shape (batch excluded) after ``layers``, or None where only the rank is
    known; rank: the activation's rank, batch included (None when unknown); version: a new number
    on every change of the activation, so that an importer can tell one activation from another.

    Graphs: every layer is also a node (layer, input value names, output value name); the
    activation is one value of them (``current``), and ``switch(version)`` makes an earlier one
    current again -- the next layer then reads it (a branch, the other operand of a residual add).
    ``model`` builds a Sequential when the nodes form a chain, else a shmrt.Graph."""

    def __init__(self, error=ValueError, prefix="", shape=None, rank=None):
        self.error, self.prefix = error, prefix
        self.layers = []
        self.nodes = []  # (layer, [input value names], output value name), where the importer names values
        self.shape = None if shape is None else tuple(shape)
        self.rank = len(self.shape) + 1 if self.shape is not None else rank
        self.version = 0
        self.counter = 0  # the newest version handed out
        self.current = "input"  # the value the activation is
        self.states = {0: (self.current, self.shape, self.rank)}  # version -> (value, shape, rank)

    # -- refusals -----------------------------------------------------------------------------------
    def refusal(self, where, what):
        """The exception that refuses a step: ``where`` names the node and its op, ``what`` the
        attribute or input at fault and what is supported instead."""
        return self.error(f"{self.prefix}{where}: {what}")

    # -- the activation -----------------------------------------------------------------------------
    def emit(self, layer, shape=None, rank=None, inputs=None, output=None):
        """Append ``layer``; the activation after it has per-sample ``shape`` (rank follows), or
        only ``rank`` (shape unknown), or, with neither, the shape it had.  inputs, output: the
        values it reads and writes, by name, for an importer that builds a graph (``model``)."""
        self.layers.append(layer)
        self.counter += 1
        output = output if output is not None else f"v{self.counter}"
        self.nodes.append((layer, list(inputs) if inputs is not None else [self.current], output))
        if shape is not None:
            self.shape = tuple(shape)
            self.rank = len(self.shape) + 1
        elif rank is not None:
            self.shape, self.rank = None, rank
        self._new(output)

    def _new(self, value):
        self.version = self.counter
        self.current = value
        self.states[self.version] = (value, self.shape, self.rank)

    def changed(self):
        """The current value's producer was changed in place (a bias folded into it): a new version."""
        self.counter += 1
        self._new(self.current)

    def add_input(self, name, shape):
        """Another graph input (per-sample ``shape``): its version, to make views of it with."""
        self.counter += 1
        self.states[self.counter] = (name, tuple(shape), len(shape) + 1)
        return self.counter

    def switch(self, version):
        """Make the activation of ``version`` current again (its value, shape and rank)."""
        if version != self.version:
            self.current, self.shape, self.rank = self.states[version]
            self.version = version

    def producer(self):
        """The layer that writes the current value, or None (the input)."""
        for layer, _, out in reversed(self.nodes):
            if out == self.current:
                return layer
        return None

    def last_recurrent(self):
        """The last layer if it is a recurrent layer that returns every time step (and writes the
        current value), else None."""
        rec = self.layers[-1] if self.layers and self.nodes[-1][2] == self.current else None
        return rec if isinstance(rec, L._Recurrent) and rec.return_sequences else None

    def take_last_step(self) -> bool:
        """Make the last (recurrent) layer return its last step only, [N, H]; False if the last
        layer is not a recurrent layer returning sequences."""
        rec = self.last_recurrent()
        if rec is None:
            return False
        rec.return_sequences = False
        self.shape, self.rank = (rec.hidden_size,), 2
        self.counter += 1
        self._new(self.current)
        return True

    def model(self, inputs, outputs, names=None, merge_recurrent=False):
        """The graph of the emitted nodes from ``inputs`` ([(name, shape or None)]) to ``outputs``
        (value names; ``names``: the keys of a dict of outputs) -- a Sequential when it is a chain:
        one input, one output, each node reading only the one before it, which no other reads."""
        nodes = self.nodes
        chain = (len(inputs) == 1 and len(outputs) == 1 and names is None and nodes
                 and nodes[-1][2] == outputs[0]
                 and all(len(ins) == 1 and ins[0] == (inputs[0][0] if k == 0 else nodes[k - 1][2])
                         for k, (_, ins, _) in enumerate(nodes)))
        if chain:
            return self.sequential(inputs[0][1], merge_recurrent)
        if names is not None:
            outs = list(outputs)
            rename = dict(zip(outs, names))
            if len(rename) != len(outs):
                raise self.error(f"{self.prefix}the model returns one value under two names")
            nodes = [(l, [rename.get(u, u) for u in ins], rename.get(o, o)) for l, ins, o in nodes]
            outputs = [rename[o] for o in outs]
        return L.Graph.from_nodes(inputs, nodes, outputs, named_outputs=names is not None)

    def sequential(self, input_shape=None, merge_recurrent=False):
        """The chain as a ``shmrt.Sequential``; merge_recurrent joins consecutive one-layer recurrent
        layers of one kind and width into one multi-layer layer (what ONNX exporters split)."""
        layers = _merge_recurrent(self.layers) if merge_recurrent else list(self.layers)
        return L.Sequential(layers, input_shape=input_shape)


def _merge_recurrent(layers):
    """Consecutive single-layer recurrent layers of one kind and width -> one multi-layer layer."""
    out = []
    for l in layers:
        prev = out[-1] if out else None
        if (isinstance(l, L._Recurrent) and type(prev) is type(l) and prev.return_sequences
                and prev.hidden_size == l.hidden_size and prev.bias == l.bias and prev.mode == l.mode
                and l.num_layers == 1):
            k = prev.num_layers
            p = dict(prev.params)
            for n, arr in l.params.items():
                if n.endswith("_l0"):
                    p[n[:-1] + str(k)] = arr
            kw = {}
            for st in ("h0", "c0"):
                if st in prev.params or st in l.params:
                    a = p.pop(st, None)
                    a = a if a is not None else np.zeros((k, prev.hidden_size), np.float32)
                    b = l.params.get(st, np.zeros((1, l.hidden_size), np.float32))
                    kw[st] = np.concatenate([a, b], axis=0)
                else:
                    p.pop(st, None)
            extra = {"nonlinearity": "relu" if l.mode == 1 else "tanh"} if isinstance(l, L.RNN) else {}
            if isinstance(l, L.GRU):
                extra["linear_before_reset"] = l.linear_before_reset
            if isinstance(l, L.LSTM) and l.return_cell_state:
                extra["return_cell_state"] = True
            merged = type(l)(prev.input_size, prev.hidden_size, num_layers=k + 1, bias=prev.bias,
                             return_sequences=l.return_sequences, **extra, **kw, **p)
            quant = dict(getattr(prev, "quant", None) or {})  # int8 weights (layer.quant), renamed like params
            quant.update({n[:-1] + str(k): v for n, v in (getattr(l, "quant", None) or {}).items()
                          if n.endswith("_l0")})
            if quant:
                merged.quant = quant
            out[-1] = merged
        else:
            out.append(l)
    return out
