"""Graph models: named values, nodes with several inputs, residual and branching networks.

Written by hand in the functional style::

    x = shmrt.Input((3, 32, 32))
    h = shmrt.ReLU()(shmrt.Conv2d(3, 8, 3, padding=1)(x))
    y = shmrt.Add()(shmrt.Conv2d(8, 8, 3, padding=1)(h), h)
    model = shmrt.Graph(x, y)

or built by the importers from names (``Graph.from_nodes``).  A Sequential is the special case of
a chain (``Graph.chain``); the planner plans every model as a graph.  Nodes are kept in a
topological order, each writes one value; values no output depends on are dropped."""
from __future__ import annotations

import numpy as np

from shmrt.ir import native
from shmrt.ir.base import Layer, Value, check_classes


class Node:
    """One layer applied to named values: ``output = layer(*inputs)``."""
    __slots__ = ("layer", "inputs", "output")

    def __init__(self, layer, inputs, output):
        self.layer, self.inputs, self.output = layer, tuple(inputs), output

    def __repr__(self):
        return f"{self.output} = {self.layer!r}({', '.join(self.inputs)})"


def Input(shape=None, name=None) -> Value:
    """A graph input: per-sample ``shape`` (batch excluded: (F,), (T, F) or (C, H, W)); None where the
    first layer fixes it (a Linear)."""
    if shape is not None:
        shape = tuple(shape) if isinstance(shape, (tuple, list)) else None
        if shape is None or not 1 <= len(shape) <= 3 or any(
                isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in shape):
            raise ValueError(f"Input: shape must be (F,), (T, F) or (C, H, W) with positive ints, got {shape!r}")
        shape = tuple(int(v) for v in shape)
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"Input: name must be a non-empty string, got {name!r}")
    return Value(shape=shape, name=name)


class Graph(Layer, register=False):
    """A model whose layers form a directed acyclic graph.

    ``Graph(inputs, outputs)``: inputs a Value from ``shmrt.Input`` (or a list of them), outputs a
    Value, a list or tuple of Values, or a dict {name: Value}.  ``cm(x)``, ``cm(x1, x2)`` or
    ``cm({"name": x})``; several outputs come back as a tuple (a dict when outputs was a dict).
    classes / output_1d: as Sequential's."""

    def __init__(self, inputs, outputs, classes=None, output_1d=False):
        super().__init__()
        ins = [inputs] if isinstance(inputs, Value) else list(inputs) if isinstance(inputs, (list, tuple)) else None
        if not ins or not all(isinstance(v, Value) and v.layer is None for v in ins):
            raise TypeError(f"Graph: inputs must be shmrt.Input values (one or a list), got {inputs!r}")
        self.named_outputs = isinstance(outputs, dict)
        outs = (list(outputs.values()) if self.named_outputs else [outputs] if isinstance(outputs, Value)
                else list(outputs) if isinstance(outputs, (list, tuple)) else None)
        if not outs or not all(isinstance(v, Value) for v in outs):
            raise TypeError(f"Graph: outputs must be a value, a list of values or a dict of them, got {outputs!r}")
        names, nodes, seen = {}, [], set()
        for i, v in enumerate(ins):
            names[id(v)] = v.name or (f"input{i}" if len(ins) > 1 else "input")
        if len(set(names.values())) != len(ins):
            raise ValueError(f"Graph: input names must differ, got {list(names.values())}")
        order = []

        def visit(v, path):  # depth-first, iterative enough for hundreds of layers (recursion per value)
            if id(v) in names and v.layer is None or id(v) in seen:
                return
            if v.layer is None:
                raise ValueError(f"Graph: output depends on an input {v!r} not listed in inputs")
            if id(v) in path:
                raise ValueError("Graph: the values form a cycle")
            path.add(id(v))
            for u in v.inputs:
                visit(u, path)
            path.discard(id(v))
            seen.add(id(v))
            order.append(v)

        import sys
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 10000))
        try:
            for v in outs:
                visit(v, set())
        finally:
            sys.setrecursionlimit(limit)
        for v in order:
            names[id(v)] = v.name or f"{type(v.layer).__name__.lower()}_{len(nodes)}"
            nodes.append(Node(v.layer, [names[id(u)] for u in v.inputs], names[id(v)]))
        out_names = list(outputs) if self.named_outputs else [names[id(v)] for v in outs]
        if self.named_outputs:  # the dict's keys name the outputs: rename those nodes' values
            rename = {names[id(v)]: k for k, v in outputs.items()}
            nodes = [Node(n.layer, [rename.get(u, u) for u in n.inputs], rename.get(n.output, n.output))
                     for n in nodes]
            out_names = [rename.get(names[id(v)], names[id(v)]) for v in outs]
        self._set([(names[id(v)], v.shape) for v in ins], nodes, out_names, classes, output_1d)

    @classmethod
    def from_nodes(cls, inputs, nodes, outputs, classes=None, output_1d=False, named_outputs=False):
        """The graph of ``nodes`` ((layer, [input names], output name), in any order) from ``inputs``
        ([(name, per-sample shape or None)]) to ``outputs`` ([names])."""
        g = cls.__new__(cls)
        Layer.__init__(g)
        g.named_outputs = bool(named_outputs)
        known = {n for n, _ in inputs}
        by_out = {}
        for layer, ins, out in nodes:
            if out in by_out or out in known:
                raise ValueError(f"Graph: value {out!r} is written twice")
            by_out[out] = Node(layer, ins, out)
        order, state = [], {}

        def visit(name):
            stack = [(name, False)]
            while stack:
                v, done = stack.pop()
                if v in known or state.get(v) == 2:
                    continue
                if v not in by_out:
                    raise ValueError(f"Graph: value {v!r} is read but neither an input nor written by a node")
                if done:
                    state[v] = 2
                    order.append(by_out[v])
                    continue
                if state.get(v) == 1:
                    raise ValueError(f"Graph: the values form a cycle through {v!r}")
                state[v] = 1
                stack.append((v, True))
                stack.extend((u, False) for u in reversed(by_out[v].inputs) if state.get(u) != 2)

        for o in outputs:
            visit(o)
        g._set(list(inputs), order, list(outputs), classes, output_1d)
        return g

    @classmethod
    def chain(cls, seq):
        """A Sequential as the linear graph input -> layer 0 -> ... -> output."""
        nodes = [(l, ["input" if i == 0 else f"v{i - 1}"], f"v{i}") for i, l in enumerate(seq.layers)]
        return cls.from_nodes([("input", seq.input_shape())], nodes, [f"v{len(seq.layers) - 1}"],
                              seq.classes, seq.output_1d)

    def _set(self, inputs, nodes, outputs, classes, output_1d):
        if not nodes:
            raise ValueError("Graph: no layer between the inputs and the outputs")
        self.inputs, self.nodes, self.outputs = inputs, nodes, outputs
        self.layers = [n.layer for n in nodes]
        self.classes = check_classes(classes, "Graph")
        self.output_1d = bool(output_1d)
        self._input_shape = inputs[0][1] if len(inputs) == 1 else None

    def input_shape(self):
        """The single input's per-sample shape: as given, or fixed by its first consumer."""
        if len(self.inputs) != 1:
            return None
        name, shape = self.inputs[0]
        if shape is not None:
            return shape
        users = [n.layer for n in self.nodes if name in n.inputs]
        return users[0].input_shape() if len(users) == 1 else None

    def shapes(self, in_shapes):
        """{value name: per-sample shape} for the inputs' shapes (a shape, or a list per input)."""
        if len(self.inputs) == 1 and not isinstance(in_shapes, list):
            in_shapes = [in_shapes]
        got = {name: tuple(s) for (name, _), s in zip(self.inputs, in_shapes)}
        for n in self.nodes:
            try:
                got[n.output] = tuple(n.layer.output_shape(*(got[u] for u in n.inputs)))
            except ValueError as e:
                raise ValueError(f"graph node {n.output!r} ({n.layer!r}): {e}") from None
        return got

    def consumers(self) -> dict:
        """{value name: [node indices reading it]}."""
        out = {}
        for i, n in enumerate(self.nodes):
            for u in n.inputs:
                out.setdefault(u, []).append(i)
        return out

    def save(self, path) -> None:
        """As Sequential.save: ``shmrt.load(path)`` reads it back bit-exact."""
        native.save(self, path)

    def __len__(self):
        return len(self.nodes)

    def __repr__(self):
        ins = ", ".join(f"{n}{'' if s is None else s}" for n, s in self.inputs)
        return (f"Graph(inputs=[{ins}], outputs={self.outputs},\n" + "".join(f"  {n!r},\n" for n in self.nodes)
                + ")")


native.register_model(Graph, graph=True)
