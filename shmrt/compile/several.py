"""Graphs of several inputs or outputs, planned as one input row and one output row.

Several inputs: each sample's inputs lie side by side in the arena's input row (input k at
column ``col``, ``width`` floats), so every per-row mechanism -- the single copy, chunking, the
solo path -- moves one row as before; each input is a view of the row (its leading dimension the
row's width).  ``cm(x1, x2)`` and ``cm({"name": x})`` pack the caller's arrays into that row
(exec/calls.pack).  Several outputs: a Concat node appended to the graph copies each output,
flattened, into one output row, which the call splits back into arrays of their own shapes."""
from __future__ import annotations

import numpy as np

from shmrt.ir import layers as L

OUTPUTS = "__outputs__"  # the value the appended Concat writes


def input_shapes(graph, input_shape):
    """[(name, per-sample shape)] of the graph's inputs: as given to compile (one shape, or a list of
    them for several inputs), as the graph fixes them, or refused naming what to pass."""
    names = [n for n, _ in graph.inputs]
    if input_shape is not None:
        given = list(input_shape) if len(names) > 1 else [input_shape]
        if len(names) > 1 and (len(given) != len(names) or not all(isinstance(s, (tuple, list)) for s in given)):
            raise ValueError(f"input_shape: this graph has {len(names)} inputs ({', '.join(names)}); expected a list of "
                             f"{len(names)} shapes, got {input_shape!r}")
        shapes = [tuple(int(v) for v in s) for s in given]
    elif len(names) == 1:
        shapes = [graph.input_shape()]
    else:
        shapes = [s for _, s in graph.inputs]
    for name, s in zip(names, shapes):
        if s is None:
            first = next(n.layer for n in graph.nodes if name in n.inputs)
            hint = (f"(T, {first.input_size}) for a sequence of T steps" if isinstance(first, L._Recurrent)
                    else f"({first.in_channels}, H, W) for images of H x W" if isinstance(
                        first, (L.Conv2d, L.ConvTranspose2d)) else "(features,)")
            raise ValueError(f"cannot infer the shape of input {name!r}: pass input_shape={hint} to compile"
                             if len(names) > 1 else
                             f"cannot infer the input shape of this model: pass input_shape={hint} to compile")
        if len(s) not in (1, 2, 3) or min(s) < 1:
            raise ValueError(f"input_shape must be (F,), (T, F) or (C, H, W) with positive sizes, got {s}")
    return list(zip(names, shapes))


def columns(specs):
    """[(name, shape, first column, width)] of values laid side by side in one row."""
    out, col = [], 0
    for name, shape in specs:
        w = int(np.prod(shape))
        out.append((name, tuple(shape), col, w))
        col += w
    return out


def pack_outputs(graph, in_shapes):
    """(graph with one output, [(name, shape, column, width)] of the original outputs, or [] when
    there was one): several outputs are flattened and concatenated into one row."""
    if len(graph.outputs) == 1:
        return graph, []
    shapes = graph.shapes([s for _, s in in_shapes])
    for n in graph.nodes:
        if n.output in graph.outputs and (isinstance(n.layer, (L.ArgMax, L.TopK))
                                          or L.returns_indices(n.layer)):
            raise NotImplementedError(f"compile: output {n.output!r} is {n.layer!r}; a graph of several outputs "
                                      f"returns float activations only")
    nodes = [(n.layer, list(n.inputs), n.output) for n in graph.nodes]
    flat = []
    for k, o in enumerate(graph.outputs):
        nodes.append((L.Flatten(), [o], f"{OUTPUTS}.{k}"))
        flat.append(f"{OUTPUTS}.{k}")
    nodes.append((L.Concat(dim=1), flat, OUTPUTS))
    packed = L.Graph.from_nodes(list(graph.inputs), nodes, [OUTPUTS], graph.classes, graph.output_1d,
                                named_outputs=graph.named_outputs)
    return packed, columns([(o, shapes[o]) for o in graph.outputs])
