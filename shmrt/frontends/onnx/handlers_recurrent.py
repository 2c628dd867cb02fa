"""Handlers of the recurrent ops: one direction, PyTorch's semantics, weights moved to PyTorch's
gate order by the chain builder's reorder_gates."""
from __future__ import annotations

import numpy as np

from shmrt.frontends.chain import reorder_gates
from shmrt.frontends.onnx.folding import compact
from shmrt.frontends.onnx.layout import B, Poison, View, fmt
from shmrt.ir import layers as L


class RecurrentOps:
    """LSTM, GRU, RNN (one direction, batch-first or time-first input)."""

    def op_LSTM(self, node, idx, ins, a):
        return self._recurrent(node, idx, ins, a, "LSTM", 4)

    def op_GRU(self, node, idx, ins, a):
        lbr = a.get("linear_before_reset", 0)
        if lbr not in (0, 1):
            self.fail(node, idx, f"attribute linear_before_reset={lbr} is not supported (expected 0 or 1)")
        return self._recurrent(node, idx, ins, a, "GRU", 3)

    def op_RNN(self, node, idx, ins, a):
        return self._recurrent(node, idx, ins, a, "RNN", 1)

    def _recurrent(self, node, idx, ins, a, kind, G):
        defaults = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}[kind]
        acts = a.get("activations", defaults)
        nonlin = "tanh"
        if kind == "RNN" and acts in (["Relu"], ["Tanh"]):
            nonlin = acts[0].lower()
        elif [x.lower() for x in acts] != [x.lower() for x in defaults]:
            self.fail(node, idx, f"attribute activations={acts} is not supported (only {defaults}"
                                 f"{' or [Relu]' if kind == 'RNN' else ''})")
        for bad in ("activation_alpha", "activation_beta", "clip"):
            if bad in a:
                self.fail(node, idx, f"attribute {bad} is not supported")
        if a.get("direction", "forward") != "forward":
            self.fail(node, idx, f"attribute direction={a['direction']!r} is not supported (forward only)")
        if a.get("input_forget", 0):
            self.fail(node, idx, "attribute input_forget=1 is not supported")
        layout = a.get("layout", 0)
        if layout not in (0, 1):
            self.fail(node, idx, f"attribute layout={layout} is not supported")
        if kind == "LSTM" and len(ins) > 7 and ins[7] is not None:
            self.fail(node, idx, "input P (peepholes) is not supported")
        v = self.stream(node, idx, ins[0])
        want = (1, 0, 2) if layout == 0 else (0, 1, 2)
        if len(v.shape) != 3 or v.src != want or len(self.ir) != 2:
            self.fail(node, idx, f"input X of ONNX shape {fmt(v.shape)} is not the batch-first sequence "
                                 f"{'transposed to [T, N, F]' if layout == 0 else '[N, T, F]'} (shmrt layout "
                                 f"{fmt(self.full())})")
        T, F = self.ir
        lens = None  # the graph input of per-sample lengths, by name
        if len(ins) > 4 and ins[4] is not None:
            lens = self.sequence_lens(node, idx, ins[4], T)
        H = a.get("hidden_size")
        W = np.asarray(self.const(node, idx, 1, "W"), dtype=np.float32)
        R = np.asarray(self.const(node, idx, 2, "R"), dtype=np.float32)
        if H is None:
            H = R.shape[-1]
        if W.shape != (1, G * H, F) or R.shape != (1, G * H, H):
            self.fail(node, idx, f"W {W.shape} / R {R.shape} do not match hidden_size={H}, {F} input features, "
                                 f"one direction")

        def reorder(m):  # ONNX's gate order (LSTM i, o, f, c; GRU z, r, n) -> PyTorch's, which shmrt's layers take
            return reorder_gates(m, kind, src="onnx", dst="torch")

        p = {"weight_ih_l0": reorder(W[0]), "weight_hh_l0": reorder(R[0])}
        bias = len(ins) > 3 and ins[3] is not None
        if bias:
            Bv = np.asarray(self.const(node, idx, 3, "B"), dtype=np.float32)
            if Bv.shape != (1, 2 * G * H):
                self.fail(node, idx, f"B {Bv.shape} does not match hidden_size={H}")
            p["bias_ih_l0"] = reorder(Bv[0, :G * H])
            p["bias_hh_l0"] = reorder(Bv[0, G * H:])
        kw = {}
        for k, name in ((5, "h0"), (6, "c0")):
            if k < len(ins) and ins[k] is not None and (kind == "LSTM" or k == 5):
                st = self.state(node, idx, k, H, layout, name)
                if st is not None:
                    kw[name] = st
        cls = {"LSTM": L.LSTM, "GRU": L.GRU, "RNN": L.RNN}[kind]
        if kind == "RNN":
            kw["nonlinearity"] = nonlin
        if kind == "GRU":
            kw["linear_before_reset"] = a.get("linear_before_reset", 0) == 1
        used = [bool(k < len(node.output) and node.output[k] and self.uses.get(node.output[k])) for k in range(3)]
        before = self.chain.version
        outs = [Poison(f"{self.where(node, idx)}: output {n} is not computed (unused)") for n in ("Y", "Y_h", "Y_c")]
        x_in = [self.chain.current, lens] if lens else None  # with lengths: the layer reads (x, lengths)
        last = ((1, B, H) if layout == 0 else (B, 1, H), (None, 0, 1) if layout == 0 else (0, None, 1))
        if used[0] or (used[1] and not lens) or not (used[1] or used[2]):
            layer = cls(F, H, num_layers=1, bias=bias, return_sequences=True, **kw, **p)
            self.chain.emit(layer, (T, H), inputs=x_in)
            me = len(self.chain.layers) - 1
            if used[0]:  # Y is read: Y_h cannot cut it short
                self.seq_used.add(me)
            if layout == 0:
                outs[0] = View((T, 1, B, H), (1, None, 0, 2), self.chain.version)
                outs[1] = View((1, B, H), (None, 0, 1), self.chain.version, last_of=me)
            else:
                outs[0] = View((B, T, 1, H), (0, 1, None, 2), self.chain.version)
                outs[1] = View((B, 1, H), (0, None, 1), self.chain.version, last_of=me)
        if lens and used[1]:  # Y is 0 past each length: Y_h, the state at the sample's last step, from a layer of
            self.chain.switch(before)  # the same weights returning it (its last step holds the state)
            self.chain.emit(cls(F, H, num_layers=1, bias=bias, return_sequences=False, **kw, **p), (H,),
                            inputs=x_in)
            outs[1] = View(*last, self.chain.version)
        if kind == "LSTM" and used[2]:  # Y_c: a second LSTM of the same weights whose output is its last cell state
            self.chain.switch(before)
            self.chain.emit(cls(F, H, num_layers=1, bias=bias, return_sequences=False, return_cell_state=True,
                                **kw, **p), (H,), inputs=x_in)
            outs[2] = View(*last, self.chain.version)
        return outs[:3 if kind == "LSTM" else 2]

    def sequence_lens(self, node, idx, v, T):
        """The name of the graph input of per-sample lengths (zeros in Y past a sample's end, Y_h/Y_c
        its last valid state; each checked 1..T at every call), or None for a constant whose entries
        all equal T (every sequence runs every step).  Other constants are refused: they fix the batch."""
        if isinstance(v, View):
            if v.version not in self.lens_inputs:
                self.fail(node, idx, f"input sequence_lens {node.input[4]!r} is computed from the model input; "
                                     f"expected a graph input (int32 or int64 [batch], possibly Cast) or a constant")
            return self.lens_inputs[v.version]
        sl = np.asarray(v)
        if sl.ndim != 1 or sl.dtype.kind not in "iu" or not np.all(sl == T):
            shown = np.array2string(sl.reshape(-1)[:8], separator=", ") + (" ..." if sl.size > 8 else "")
            self.fail(node, idx, f"input sequence_lens {shown} (shape {list(sl.shape)}) is a constant of per-sample "
                                 f"lengths, which ties the model to one batch size: not supported; expected a graph "
                                 f"input (int32 [batch]), or a 1-D int constant whose entries all equal the "
                                 f"sequence length T={T}")
        return None

    def state(self, node, idx, k, H, layout, name):
        s = np.asarray(self.const(node, idx, k, name))
        bax, dax = (1, 0) if layout == 0 else (0, 1)
        c = compact(s)
        if s.ndim == 3 and c.shape[bax] > 1 and np.all(c == c.take([0], axis=bax)):
            c = c.take([0], axis=bax)  # a fixed-batch export: the same state for every sequence
        if s.ndim != 3 or s.shape[dax] != 1 or s.shape[2] != H or c.shape[bax] != 1:
            self.fail(node, idx, f"initial state {name} of shape {s.shape} is not supported: it must be the same for "
                                 f"every sequence (one direction, broadcast from one [{H}] vector)")
        vec = c.reshape(-1)
        vec = np.broadcast_to(vec, (H,)) if vec.size == 1 else vec
        if not np.any(vec):
            return None
        return np.asarray(vec, np.float32).reshape(1, H)
