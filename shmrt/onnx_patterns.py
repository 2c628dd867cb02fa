"""Graph rewrites the ONNX importer runs before its node-by-node walk: the multi-node
forms exporters write for exact GELU and (before opset 17) LayerNorm, each turned
back into one node.  A pattern that does not fit exactly is left alone."""
from __future__ import annotations

import math

import numpy as np


class UnsupportedONNX(NotImplementedError, ValueError):
    """An ONNX construct shmrt cannot express (a ValueError)."""


def tensor_array(onnx, t) -> np.ndarray:
    """A TensorProto's values; external data must have been read (from inside the model's folder)
    before, so that onnx never resolves a location against the current directory."""
    if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
        raise UnsupportedONNX(f"ONNX tensor {t.name!r} keeps its data in an external file that was not read from "
                              f"the model's folder; load the model with shmrt.load(path)")
    return onnx.numpy_helper.to_array(t)


def attrs(onnx, node) -> dict:
    """A node's attributes as Python values (strings decoded)."""
    out = {}
    for a in node.attribute:
        if a.ref_attr_name:
            raise UnsupportedONNX(f"ONNX node {node.name or node.op_type}: attribute references are not supported")
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


# -- the GELU (erf) pattern ----------------------------------------------------------------
def rewrite_gelu(onnx, graph, pairs):
    nodes = [n for _, n in pairs]
    consumers = {}
    for n in nodes:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
    const = {t.name for t in graph.initializer}
    const_val = {}
    for n in nodes:
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            const.add(n.output[0])
            const_val[n.output[0]] = tensor_array(onnx, n.attribute[0].t)

    def cval(name):
        if name in const_val:
            return const_val[name]
        for t in graph.initializer:
            if t.name == name:
                return tensor_array(onnx, t)
        return None

    def scalar(name, target):
        v = cval(name)
        return v is not None and v.size == 1 and abs(float(v.reshape(-1)[0]) - target) <= 1e-4 * abs(target)

    def other(n, name):
        ins = list(n.input)
        if len(ins) != 2 or name not in ins:
            return None
        return ins[1] if ins[0] == name else ins[0]

    def only(name):
        c = consumers.get(name, [])
        return c[0] if len(c) == 1 else None

    drop, repl = set(), {}
    for erf in nodes:
        if erf.op_type != "Erf":
            continue
        scaled = erf.input[0]
        prod = [n for n in nodes if scaled in n.output]
        if len(prod) != 1:
            continue
        a = prod[0]
        if a.op_type == "Div" and scalar(a.input[1], math.sqrt(2.0)):
            x = a.input[0]
        elif a.op_type == "Mul" and (scalar(a.input[1], 1 / math.sqrt(2.0)) or scalar(a.input[0], 1 / math.sqrt(2.0))):
            x = a.input[0] if scalar(a.input[1], 1 / math.sqrt(2.0)) else a.input[1]
        else:
            continue
        add = only(erf.output[0])
        if add is None or add.op_type != "Add" or not scalar(other(add, erf.output[0]) or "", 1.0):
            continue
        m1 = only(add.output[0])
        if m1 is None or m1.op_type != "Mul":
            continue
        o1 = other(m1, add.output[0])
        found = None
        if o1 == x:                                  # x * (1 + erf) then * 0.5
            m2 = only(m1.output[0])
            if m2 is not None and m2.op_type == "Mul" and scalar(other(m2, m1.output[0]) or "", 0.5):
                found = (m2, [a, erf, add, m1, m2])
        elif o1 is not None and scalar(o1, 0.5):     # (1 + erf) * 0.5 then * x
            m2 = only(m1.output[0])
            if m2 is not None and m2.op_type == "Mul" and other(m2, m1.output[0]) == x:
                found = (m2, [a, erf, add, m1, m2])
        else:                                        # (x * 0.5) * (1 + erf)
            half = [n for n in nodes if o1 in n.output]
            if len(half) == 1 and half[0].op_type == "Mul" and other(half[0], x) is not None \
                    and scalar(other(half[0], x), 0.5) and len(consumers.get(o1, [])) == 1:
                found = (m1, [a, erf, add, m1, half[0]])
        if found is None:
            continue
        last, group = found
        if any(len(consumers.get(n.output[0], [])) != 1 for n in group if n is not last):
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
    consumers, producer, cval = {}, {}, {}
    for n in nodes:
        for x in n.input:
            consumers.setdefault(x, []).append(n)
        for o in n.output:
            producer[o] = n
        if n.op_type == "Constant" and len(n.attribute) == 1 and n.attribute[0].name == "value":
            cval[n.output[0]] = tensor_array(onnx, n.attribute[0].t)
    for t in graph.initializer:
        cval.setdefault(t.name, None)

    def const(name):
        if name not in cval:
            return None
        if cval[name] is None:
            cval[name] = tensor_array(onnx, next(t for t in graph.initializer if t.name == name))
        return cval[name]

    def only(name, op):
        c = consumers.get(name, [])
        return c[0] if len(c) == 1 and c[0].op_type == op else None

    def last_axis_mean(n):
        if n is None or n.op_type != "ReduceMean":
            return False
        a = attrs(onnx, n)
        axes = a.get("axes")
        if axes is None and len(n.input) > 1 and n.input[1]:
            v = const(n.input[1])
            axes = None if v is None else [int(t) for t in np.asarray(v).reshape(-1)]
        return axes == [-1] and a.get("keepdims", 1) == 1

    def other(n, name):
        return n.input[1] if n.input[0] == name else n.input[0] if n.input[1] == name else None

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
        if len(cs) != 2 or len(pw) != 1 or len(dv) != 1 or pw[0].input[0] != sub.output[0]:
            continue
        two = const(pw[0].input[1])
        if two is None or two.size != 1 or float(two.reshape(-1)[0]) != 2.0:
            continue
        rm2 = only(pw[0].output[0], "ReduceMean")
        if not last_axis_mean(rm2):
            continue
        add = only(rm2.output[0], "Add")
        eps = const(other(add, rm2.output[0]) or "") if add is not None else None
        if eps is None or eps.size != 1:
            continue
        sq = only(add.output[0], "Sqrt")
        div = dv[0]
        if sq is None or list(div.input) != [sub.output[0], sq.output[0]] or only(sq.output[0], "Div") is not div:
            continue
        group, last = [rm1, sub, pw[0], rm2, add, sq, div], div
        one = f"{div.output[0]}__shmrt_one"
        ins = [x, one]
        mul = only(div.output[0], "Mul")
        w = other(mul, div.output[0]) if mul is not None else None
        if w is not None and const(w) is not None and w in {t.name for t in graph.initializer}:
            ins[1], last = w, mul
            group.append(mul)
            ad = only(mul.output[0], "Add")
            b = other(ad, mul.output[0]) if ad is not None else None
            if b is not None and const(b) is not None and b in {t.name for t in graph.initializer}:
                ins.append(b)
                last = ad
                group.append(ad)
        ln = helper.make_node("LayerNormalization", ins, [last.output[0]], name=f"{rm1.name or 'ReduceMean'}(layernorm)",
                              axis=-1, epsilon=float(np.asarray(eps).reshape(-1)[0]))
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

# -- values ----------------------------------------------------------------------------------
