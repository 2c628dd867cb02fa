"""The torch modules shmrt imports, one ``mod_<kind>`` method each (the kinds of graph.module_table):
each checks the module's settings, copies its parameters under PyTorch's names and emits the
shmrt layer through the converter's chain."""
from __future__ import annotations

from shmrt.frontends.torch.graph import module_kind, module_table
from shmrt.frontends.torch.transformer import SEQUENCE_KINDS
from shmrt.ir import layers as L


class Modules:
    """call_module nodes."""

    def on_call_module(self, node):
        m = self.root.get_submodule(node.target)
        kind = module_kind(self.nn, m)
        if kind is None:
            raise self.unsupported(node)
        if module_table(self.nn)[kind] in SEQUENCE_KINDS:  # they bind their arguments as their forward does
            getattr(self, "mod_" + module_table(self.nn)[kind])(node, m, kind)
            return
        rnn = module_table(self.nn)[kind] in ("rnn", "qrnn")
        if rnn and len(node.args) == 2 and not node.kwargs and self.zero_state(node.args[1]):
            pass  # rnn(x, (h0, c0)) with zero states, as rnn(x)
        elif len(node.args) != 1 or node.kwargs:
            extra = "an initial state that is not zeros" if rnn else "extra arguments"
            raise self.fail(node, f"is called with {extra}; shmrt supports module(x) with one input tensor "
                                  + ("(or a zero initial state: torch.zeros(num_layers, x.size(0), hidden_size))"
                                     if rnn else ""))
        getattr(self, "mod_" + module_table(self.nn)[kind])(node, m, kind)

    def zero_state(self, h):
        """h is torch.zeros(...) (GRU, RNN) or a tuple of two (LSTM)."""
        hs = h if isinstance(h, (tuple, list)) else (h,)
        return all(hasattr(v, "op") and self.kind.get(v) == "zeros" for v in hs)

    def mod_linear(self, node, m, kind):
        self.take(node, node.args[0])
        self.emit(node, self.make(node, L.Linear, m.in_features, m.out_features,
                                  bias=False if m.bias is None else self.param(node, m.bias, "bias"),
                                  weight=self.param(node, m.weight, "weight")), rank=2)

    def mod_conv2d(self, node, m, kind):
        self.take(node, node.args[0])
        if m.padding_mode != "zeros":
            raise self.fail(node, f"padding_mode={m.padding_mode!r} is not supported; only 'zeros'")
        self.emit(node, self.make(node, L.Conv2d, m.in_channels, m.out_channels, tuple(m.kernel_size),
                                  stride=tuple(m.stride),
                                  padding=m.padding if isinstance(m.padding, str) else tuple(m.padding),
                                  dilation=tuple(m.dilation), groups=m.groups,
                                  bias=False if m.bias is None else self.param(node, m.bias, "bias"),
                                  weight=self.param(node, m.weight, "weight")), rank=4)

    def mod_convtranspose(self, node, m, kind):
        self.take(node, node.args[0])
        if m.padding_mode != "zeros":
            raise self.fail(node, f"padding_mode={m.padding_mode!r} is not supported; only 'zeros'")
        self.emit(node, self.make(node, L.ConvTranspose2d, m.in_channels, m.out_channels, tuple(m.kernel_size),
                                  stride=tuple(m.stride), padding=tuple(m.padding),
                                  output_padding=tuple(m.output_padding), groups=m.groups, dilation=tuple(m.dilation),
                                  bias=False if m.bias is None else self.param(node, m.bias, "bias"),
                                  weight=self.param(node, m.weight, "weight")), rank=4)

    def mod_bn(self, node, m, kind):
        self.take(node, node.args[0])
        if not m.track_running_stats or m.running_mean is None or m.running_var is None:
            raise self.fail(node, "track_running_stats must be True (inference uses running_mean and running_var)")
        cls = L.BatchNorm2d if kind is self.nn.BatchNorm2d else L.BatchNorm1d
        p = {k: self.param(node, getattr(m, k), k) for k in ("weight", "bias", "running_mean", "running_var")}
        self.emit(node, self.make(node, cls, m.num_features, eps=m.eps, **p),
                  rank=4 if cls is L.BatchNorm2d else 2)

    def mod_act(self, node, m, kind):
        self.take(node, node.args[0])
        cls = next(c for c in L.ACTIVATIONS if getattr(self.nn, c.__name__) is kind)  # nn.<name> is shmrt.<name>
        self.emit(node, self.make(node, cls, **{k: getattr(m, k) for k in cls().config()}))

    def mod_softmax(self, node, m, kind):
        self.take(node, node.args[0])
        cls = L.Softmax if kind is self.nn.Softmax else L.LogSoftmax
        self.emit(node, self.softmax(node, cls, m.dim))

    def softmax(self, node, cls, dim):
        if dim is None and self.chain.rank == 2:
            dim = -1  # PyTorch's implicit dim for 2-D inputs is 1
        if dim is None or (self.chain.rank is not None and isinstance(dim, int) and dim % self.chain.rank == 0):
            rank = "an input of unknown rank" if self.chain.rank is None else f"a {self.chain.rank}-D input"
            raise self.fail(node, f"dim={dim!r} on {rank}: expected a dim other than the batch (dim 0)")
        return self.make(node, cls, dim=dim)

    def mod_dropout(self, node, m, kind):
        self.take(node, node.args[0])
        self.emit(node, L.Dropout(float(m.p)))

    def mod_identity(self, node, m, kind):
        self.take(node, node.args[0])
        self.emit(node, None)

    def mod_flatten(self, node, m, kind):
        self.take(node, node.args[0])
        self.flatten(node, m.start_dim, m.end_dim)

    def flatten(self, node, start, end):
        if start != 1 or end != -1:
            raise self.fail(node, f"flatten over dims ({start}, {end}) is not supported; only start_dim=1, "
                                  f"end_dim=-1 (keep the batch axis)")
        self.emit(node, L.Flatten(), rank=2, flatten=True)

    def mod_pool(self, node, m, kind):
        self.take(node, node.args[0])
        if kind is self.nn.MaxPool2d:
            if m.return_indices:
                raise self.fail(node, "return_indices=True is not supported")
            layer = self.make(node, L.MaxPool2d, m.kernel_size, stride=m.stride, padding=m.padding,
                              dilation=m.dilation, ceil_mode=m.ceil_mode)
        else:
            if m.divisor_override is not None:
                raise self.fail(node, f"divisor_override={m.divisor_override!r} is not supported; only None")
            layer = self.make(node, L.AvgPool2d, m.kernel_size, stride=m.stride, padding=m.padding,
                              ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad)
        self.emit(node, layer, rank=4)

    def mod_adaptive(self, node, m, kind):
        self.take(node, node.args[0])
        if kind is self.nn.AdaptiveMaxPool2d:
            if m.return_indices:
                raise self.fail(node, "return_indices=True is not supported")
            self.emit(node, self.make(node, L.AdaptiveMaxPool2d, m.output_size), rank=4)
            return
        self.emit(node, self.make(node, L.AdaptiveAvgPool2d, m.output_size), rank=4)

    def mod_upsample(self, node, m, kind):
        self.take(node, node.args[0])
        self.emit(node, self.upsample(node, m.size, m.scale_factor, m.mode, m.align_corners), rank=4)

    def upsample(self, node, size, scale_factor, mode, align_corners):
        if mode not in ("nearest", "bilinear"):
            raise self.fail(node, f"mode={mode!r} is not supported; expected 'nearest' or 'bilinear'")
        return self.make(node, L.Upsample, size=size, scale_factor=scale_factor, mode=mode,
                         align_corners=align_corners)

    def mod_layernorm(self, node, m, kind):
        self.take(node, node.args[0])
        self.emit(node, self.make(node, L.LayerNorm, list(m.normalized_shape), eps=m.eps,
                                  elementwise_affine=m.elementwise_affine,
                                  weight=self.param(node, m.weight, "weight"),
                                  bias=self.param(node, m.bias, "bias")))

    def mod_rnn(self, node, m, kind):
        self.take(node, node.args[0])
        nn = self.nn
        if not m.batch_first:
            raise self.fail(node, "batch_first=False is not supported; shmrt's layout is batch-first "
                                  "[N, T, F]: build it with batch_first=True")
        if m.bidirectional:
            raise self.fail(node, "bidirectional=True is not supported; only one direction")
        if getattr(m, "proj_size", 0):
            raise self.fail(node, f"proj_size={m.proj_size} is not supported; only 0")
        kw = dict(input_size=m.input_size, hidden_size=m.hidden_size, num_layers=m.num_layers, bias=bool(m.bias))
        if kind is nn.RNN:
            kw["nonlinearity"] = m.nonlinearity
        names = [f"{w}_{g}_l{k}" for k in range(m.num_layers) for w in ("weight", "bias") for g in ("ih", "hh")
                 if w == "weight" or m.bias]
        for name in names:
            kw[name] = self.param(node, getattr(m, name), name)
        self.rnn_layer(node, {nn.RNN: L.RNN, nn.LSTM: L.LSTM, nn.GRU: L.GRU}[kind], kw, m.num_layers)

    def rnn_layer(self, node, cls, kw, num_layers, quant=None):
        """Emit the recurrent layer (``quant``: its int8 weights, quantized.py) returning every step;
        resolve() cuts it to the last step if that is all the model uses."""
        layer = self.make(node, cls, return_sequences=True, **kw)
        if quant:
            layer.quant = quant
        self.emit(node, layer, rank=3)
        spec = {"path": node.target, "node": node, "layers": num_layers, "lstm": cls is L.LSTM}
        self.kind[node] = ("rnn", spec)
