"""The graph rewrites the ONNX importer runs before its node-by-node walk: the multi-node forms
exporters write for SiLU, exact GELU and, before opset 17, LayerNorm, and the function bodies of
Softmax and LogSoftmax, each turned back into one node.
A rewrite decides with explicit checks whether a pattern fits; it never relies on an exception, and
one that raises is a bug in shmrt (the importer reports it as ONNXImporterBug)."""
from __future__ import annotations

import math

import numpy as np

from shmrt.frontends.onnx.reading import attrs, tensor_array


def _out0(n):
    return n.output[0] if len(n.output) else None


def _const_tensor(n):
    """The value tensor of a Constant node, or None."""
    if n.op_type == "Constant" and len(n.output) and len(n.attribute) == 1 and n.attribute[0].name == "value" \
            and n.attribute[0].type == 4:  # AttributeProto.TENSOR
        return n.attribute[0].t
    return None


def _consumers(nodes):
    out = {}
    for n in nodes:
        for x in n.input:
            if x:
                out.setdefault(x, []).append(n)
    return out


def _other(n, name):
    """The other input of a two-input node that takes ``name``, or None."""
    ins = list(n.input)
    if len(ins) != 2 or name not in ins:
        return None
    return ins[1] if ins[0] == name else ins[0]


def _reader(onnx, graph, nodes):
    """name -> the constant's array (initializers and Constant nodes), or None; read on first use."""
    protos = {t.name: t for t in graph.initializer}
    protos.update({n.output[0]: t for n in nodes for t in [_const_tensor(n)] if t is not None})
    cache = {}

    def cval(name):
        if name not in cache:
            cache[name] = tensor_array(onnx, protos[name]) if name in protos else None
        return cache[name]
    return cval


def _number(v):
    """The one real value of a constant array, or None."""
    if v is None or v.size != 1 or v.dtype.kind not in "biuf":
        return None
    return float(v.reshape(-1)[0])


# -- the SiLU pattern -----------------------------------------------------------------------
def rewrite_silu(onnx, graph, pairs):
    """Sigmoid(x) then Mul by the same x (either operand order) -> one node "SiLU", which ONNX has
    no op for: the name is shmrt's own, read by the importer's op_SiLU."""
    nodes = [n for _, n in pairs]
    consumers = _consumers(nodes)
    drop, repl = set(), {}
    for sig in nodes:
        if sig.op_type != "Sigmoid" or len(sig.input) != 1 or len(sig.output) != 1:
            continue
        users = consumers.get(sig.output[0], [])
        if len(users) != 1:
            continue
        mul = users[0]
        if mul.op_type != "Mul" or len(mul.input) != 2 or len(mul.output) != 1 or id(mul) in repl \
                or _other(mul, sig.output[0]) != sig.input[0]:
            continue
        drop.add(id(sig))
        repl[id(mul)] = onnx.helper.make_node("SiLU", [sig.input[0]], [mul.output[0]],
                                              name=f"{sig.name or 'Sigmoid'}(silu)")
    if not repl:
        return pairs
    # the SiLU stands where its Mul stood: its input is made before the Sigmoid, so before it
    return [(i, repl.get(id(n), n)) for i, n in pairs if id(n) not in drop]


# -- the GELU (erf) pattern ----------------------------------------------------------------
def rewrite_gelu(onnx, graph, pairs):
    """Div sqrt(2) (or Mul 1/sqrt(2)), Erf, Add 1, Mul x, Mul 0.5 (in any of the orders exporters write) -> Gelu."""
    nodes = [n for _, n in pairs]
    consumers = _consumers(nodes)
    cval = _reader(onnx, graph, nodes)

    def scalar(name, target):
        v = _number(cval(name)) if name else None
        return v is not None and abs(v - target) <= 1e-4 * abs(target)

    def only(name):
        c = consumers.get(name, []) if name else []
        return c[0] if len(c) == 1 else None

    drop, repl = set(), {}
    for erf in nodes:
        if erf.op_type != "Erf" or len(erf.input) != 1 or len(erf.output) != 1:
            continue
        scaled = erf.input[0]
        prod = [n for n in nodes if scaled in n.output]
        if len(prod) != 1 or len(prod[0].input) != 2:
            continue
        a = prod[0]
        inv = 1 / math.sqrt(2.0)
        if a.op_type == "Div" and scalar(a.input[1], math.sqrt(2.0)):
            x = a.input[0]
        elif a.op_type == "Mul" and (scalar(a.input[1], inv) or scalar(a.input[0], inv)):
            x = a.input[0] if scalar(a.input[1], inv) else a.input[1]
        else:
            continue
        add = only(erf.output[0])
        if add is None or add.op_type != "Add" or not scalar(_other(add, erf.output[0]), 1.0):
            continue
        m1 = only(_out0(add))
        if m1 is None or m1.op_type != "Mul":
            continue
        o1 = _other(m1, add.output[0])
        found = None
        if o1 == x:                                  # x * (1 + erf) then * 0.5
            m2 = only(_out0(m1))
            if m2 is not None and m2.op_type == "Mul" and scalar(_other(m2, m1.output[0]), 0.5):
                found = (m2, [a, erf, add, m1, m2])
        elif o1 is not None and scalar(o1, 0.5):     # (1 + erf) * 0.5 then * x
            m2 = only(_out0(m1))
            if m2 is not None and m2.op_type == "Mul" and _other(m2, m1.output[0]) == x:
                found = (m2, [a, erf, add, m1, m2])
        elif o1 is not None:                         # (x * 0.5) * (1 + erf)
            half = [n for n in nodes if o1 in n.output]
            if len(half) == 1 and half[0].op_type == "Mul" and scalar(_other(half[0], x), 0.5) \
                    and len(consumers.get(o1, [])) == 1:
                found = (m1, [a, erf, add, m1, half[0]])
        if found is None:
            continue
        last, group = found
        if len(last.output) != 1 or any(len(n.output) != 1 or len(consumers.get(n.output[0], [])) != 1
                                        for n in group if n is not last):
            continue
        gelu = onnx.helper.make_node("Gelu", [x], [last.output[0]], name=f"{erf.name or 'Erf'}(gelu)",
                                     approximate="none")
        drop.update(id(n) for n in group)
        repl[id(last)] = gelu
    if not repl:
        return pairs
    out = []
    for i, n in pairs:
        if id(n) in repl:
            out.append((i, repl[id(n)]))
        elif id(n) not in drop:
            out.append((i, n))
    # the Gelu stands where the last node of its group stood: every input is made before it
    return out


# -- the LayerNorm decomposition (opsets < 17) ----------------------------------------------
def rewrite_layernorm(onnx, graph, pairs):
    """ReduceMean, Sub, Pow 2, ReduceMean, Add eps, Sqrt, Div [, Mul w [, Add b]] -> LayerNormalization."""
    helper, nh = onnx.helper, onnx.numpy_helper
    nodes = [n for _, n in pairs]
    consumers = _consumers(nodes)
    cval = _reader(onnx, graph, nodes)
    inits = {t.name for t in graph.initializer}

    def only(name, op):
        c = consumers.get(name, []) if name else []
        return c[0] if len(c) == 1 and c[0].op_type == op and len(c[0].output) == 1 else None

    def last_axis_mean(n):
        if n is None or n.op_type != "ReduceMean" or len(n.input) not in (1, 2) or len(n.output) != 1:
            return False
        a = attrs(onnx, n)
        axes = a.get("axes")
        if axes is None and len(n.input) > 1 and n.input[1]:
            v = cval(n.input[1])
            axes = None if v is None or v.dtype.kind not in "iu" else [int(t) for t in v.reshape(-1)]
        return axes == [-1] and a.get("keepdims", 1) == 1

    drop, repl, extra = set(), {}, {}
    for rm1 in nodes:
        if not last_axis_mean(rm1):
            continue
        x = rm1.input[0]
        sub = only(rm1.output[0], "Sub")
        if sub is None or list(sub.input) != [x, rm1.output[0]]:
            continue
        cs = consumers.get(sub.output[0], [])
        pw = [n for n in cs if n.op_type == "Pow"]
        dv = [n for n in cs if n.op_type == "Div"]
        if len(cs) != 2 or len(pw) != 1 or len(dv) != 1 or len(pw[0].input) != 2 or pw[0].input[0] != sub.output[0]:
            continue
        if _number(cval(pw[0].input[1])) != 2.0 or len(pw[0].output) != 1:
            continue
        rm2 = only(pw[0].output[0], "ReduceMean")
        if not last_axis_mean(rm2):
            continue
        add = only(rm2.output[0], "Add")
        eps = _number(cval(_other(add, rm2.output[0]) or "")) if add is not None else None
        if eps is None:
            continue
        sq = only(add.output[0], "Sqrt")
        div = dv[0]
        if sq is None or len(div.output) != 1 or list(div.input) != [sub.output[0], sq.output[0]] \
                or only(sq.output[0], "Div") is not div:
            continue
        group, last = [rm1, sub, pw[0], rm2, add, sq, div], div
        one = f"{div.output[0]}__shmrt_one"
        ins = [x, one]
        mul = only(div.output[0], "Mul")
        w = _other(mul, div.output[0]) if mul is not None else None
        if w in inits:
            ins[1], last = w, mul
            group.append(mul)
            ad = only(mul.output[0], "Add")
            b = _other(ad, mul.output[0]) if ad is not None else None
            if b in inits:
                ins.append(b)
                last = ad
                group.append(ad)
        ln = helper.make_node("LayerNormalization", ins, [last.output[0]], name=f"{rm1.name or 'ReduceMean'}(layernorm)",
                              axis=-1, epsilon=eps)
        drop.update(id(n) for n in group)
        repl[id(last)] = ln
        if ins[1] == one:
            extra[id(last)] = helper.make_node("Constant", [], [one], value=nh.from_array(np.array(1, np.float32)))
    if not repl:
        return pairs
    out = []
    for i, n in pairs:
        if id(n) in repl:
            if id(n) in extra:
                out.append((i, extra[id(n)]))
            out.append((i, repl[id(n)]))
        elif id(n) not in drop:
            out.append((i, n))
    return out


# -- the Softmax / LogSoftmax pattern (their ONNX function bodies) ------------------------------
def rewrite_softmax(onnx, graph, pairs):
    """ReduceMax(x, [a], keepdims) -> Sub(x, max) -> Exp -> ReduceSum([a], keepdims) -> Div(exp, sum)
    (Softmax), or -> Log -> Sub(x - max, log) (LogSoftmax): one Softmax / LogSoftmax node of axis a,
    where no intermediate value is read elsewhere or is a graph output."""
    nodes = [n for _, n in pairs]
    consumers = _consumers(nodes)
    cval = _reader(onnx, graph, nodes)
    outs = {o.name for o in graph.output}

    def axes(n):
        a = attrs(onnx, n)
        if a.get("keepdims", 1) != 1 or len(n.output) != 1:
            return None
        if "axes" in a:
            ax = [int(v) for v in a["axes"]]
        elif len(n.input) > 1 and n.input[1]:
            v = cval(n.input[1])
            if v is None or v.dtype.kind not in "iu":
                return None
            ax = [int(v) for v in v.reshape(-1)]
        else:
            return None
        return ax if len(ax) == 1 else None

    def users(name):
        return [] if name in outs else consumers.get(name, [])

    drop, repl = set(), {}
    for mx in nodes:
        if mx.op_type != "ReduceMax" or not mx.input or axes(mx) is None:
            continue
        x, ax = mx.input[0], axes(mx)
        u = users(mx.output[0])
        if len(u) != 1 or u[0].op_type != "Sub" or list(u[0].input) != [x, mx.output[0]] or len(u[0].output) != 1:
            continue
        sub = u[0]
        ud = users(sub.output[0])
        exp = [n for n in ud if n.op_type == "Exp" and len(n.output) == 1]
        if len(exp) != 1:
            continue
        e = exp[0].output[0]
        ue = users(e)
        rs = [n for n in ue if n.op_type == "ReduceSum" and n.input[0] == e and axes(n) == ax]
        if len(rs) != 1:
            continue
        us = users(rs[0].output[0])
        if len(us) != 1 or len(us[0].output) != 1:
            continue
        last = us[0]
        if last.op_type == "Div" and list(last.input) == [e, rs[0].output[0]] and len(ud) == 1 and len(ue) == 2:
            kind, members = "Softmax", [mx, sub, exp[0], rs[0]]
        elif last.op_type == "Log" and len(ue) == 1 and len(ud) == 2:
            ul = users(last.output[0])
            if len(ul) != 1 or ul[0].op_type != "Sub" or list(ul[0].input) != [sub.output[0], last.output[0]] \
                    or not any(n is ul[0] for n in ud):
                continue
            kind, members, last = "LogSoftmax", [mx, sub, exp[0], rs[0], last], ul[0]
        else:
            continue
        if any(id(m) in drop or id(m) in repl for m in members + [last]):
            continue
        drop.update(id(m) for m in members)
        repl[id(last)] = onnx.helper.make_node(kind, [x], [last.output[0]], axis=ax[0],
                                               name=f"{mx.name or 'ReduceMax'}({kind.lower()})")
    if not repl:
        return pairs
    # the new node stands where the pattern's last node stood: its input is made before the ReduceMax
    return [(i, repl.get(id(n), n)) for i, n in pairs if id(n) not in drop]
