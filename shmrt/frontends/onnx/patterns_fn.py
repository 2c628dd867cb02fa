"""Function bodies (how ONNX defines an op, and what a tool that inlines functions writes) turned back
into one node, like the rewrites in patterns.py: Clip's and LeakyRelu's Where(Less(..)) forms
(rewrite_where_less), and LayerNormalization's (rewrite_layernorm_function):

    X2D = Flatten(X, axis) [-> Cast float];  Mean2D = ReduceMean(X2D, [1]);  Var = ReduceMean(X2D * X2D)
    - Mean2D * Mean2D;  StdDev = Sqrt(Var + Epsilon);  Y = Reshape((X2D - Mean2D) / StdDev [-> Cast]
    * Flatten(Scale, 0) [+ Flatten(B, 0)], Shape(X));  Mean, InvStdDev = Reshape(Mean2D, 1 / StdDev to
    ReducedShape = Concat(Shape(X)[0:axis], ConstantOfShape(rank - axis, 1)))

Every step is checked explicitly (no intermediate read elsewhere or a graph output); a group that
does not fit is left as it is."""
from __future__ import annotations

import numpy as np

from shmrt.frontends.onnx.patterns import _consumers, _number, _other, _reader
from shmrt.frontends.onnx.reading import attrs


def rewrite_layernorm_function(onnx, graph, pairs):
    nodes = [n for _, n in pairs]
    consumers = _consumers(nodes)
    producer = {o: n for n in nodes for o in n.output if o}
    pos = {id(n): k for k, (_, n) in enumerate(pairs)}
    cval = _reader(onnx, graph, nodes)
    outs = {o.name for o in graph.output}

    def uses(name):
        """The nodes reading name, each once (Mul(x, x) reads it twice), or None for a graph output."""
        if name in outs:
            return None
        seen = {}
        for n in consumers.get(name, []):
            seen.setdefault(id(n), n)
        return list(seen.values())

    def only(name, op):
        c = uses(name)
        return c[0] if c and len(c) == 1 and c[0].op_type == op and len(c[0].output) == 1 else None

    def value(name):
        """A constant, also through Cast nodes."""
        v = cval(name)
        p = producer.get(name)
        if v is None and p is not None and p.op_type == "Cast" and len(p.input) == 1:
            return value(p.input[0])
        return v

    def ints(name):
        v = value(name) if name else None
        return None if v is None or v.dtype.kind not in "iu" else [int(t) for t in v.reshape(-1)]

    def axis1_mean(n):
        if n is None or n.op_type != "ReduceMean" or len(n.output) != 1:
            return False
        a = attrs(onnx, n)
        ax = a.get("axes", ints(n.input[1]) if len(n.input) > 1 else None)
        return ax is not None and [int(t) for t in ax] in ([1], [-1]) and a.get("keepdims", 1) == 1

    def cast_float(name, members):
        """name, or the output of the one Cast(to=float) reading it (added to members)."""
        c = only(name, "Cast")
        if c is not None and attrs(onnx, c).get("to") == 1:
            members.append(c)
            return c.output[0]
        return name

    def flat0(name):
        """The input of the Flatten(axis=0) that makes name, or None."""
        p = producer.get(name)
        if p is None or p.op_type != "Flatten" or attrs(onnx, p).get("axis", 1) != 0 or uses(name) is None \
                or len(uses(name)) != 1:
            return None
        return p

    def reduced_shape(name, X, axis):
        """name is Concat(Slice(Shape(X), [0], [axis]), ConstantOfShape(.., value 1)): X's shape with the axes
        from ``axis`` on set to 1."""
        cat = producer.get(name)
        if cat is None or cat.op_type != "Concat" or len(cat.input) != 2:
            return False
        sl, cs = producer.get(cat.input[0]), producer.get(cat.input[1])
        if sl is None or cs is None or sl.op_type != "Slice" or cs.op_type != "ConstantOfShape":
            return False
        shp = producer.get(sl.input[0])
        if shp is None or shp.op_type != "Shape" or shp.input[0] != X or attrs(onnx, shp) or len(sl.input) < 3:
            return False
        if ints(sl.input[1]) != [0] or ints(sl.input[2]) != [axis] or (len(sl.input) > 3 and ints(sl.input[3]) != [0]):
            return False
        fill = attrs(onnx, cs).get("value")
        return fill is not None and onnx.numpy_helper.to_array(fill).reshape(-1).tolist() == [1]

    drop, repl = set(), {}
    for fl in nodes:
        if fl.op_type != "Flatten" or len(fl.input) != 1 or len(fl.output) != 1:
            continue
        X, axis, members = fl.input[0], attrs(onnx, fl).get("axis", 1), [fl]
        if axis == 0:  # over the batch axis too: left to be refused
            continue
        xu = cast_float(fl.output[0], members)
        us = uses(xu) or []
        rm = [n for n in us if axis1_mean(n) and n.input[0] == xu]
        sq = [n for n in us if n.op_type == "Mul" and list(n.input) == [xu, xu]]
        dev = [n for n in us if n.op_type == "Sub" and n.input[0] == xu and len(n.output) == 1]
        if len(us) != 3 or len(rm) != 1 or len(sq) != 1 or len(dev) != 1:
            continue
        rm, sq, dev = rm[0], sq[0], dev[0]
        mean2d = rm.output[0]
        rm2 = only(sq.output[0], "ReduceMean")
        mu = uses(mean2d) or []
        som = [n for n in mu if n.op_type == "Mul" and list(n.input) == [mean2d, mean2d]]
        mean_rs = [n for n in mu if n.op_type == "Reshape" and n.input[0] == mean2d]
        if dev.input[1] != mean2d or not axis1_mean(rm2) or len(som) != 1 or len(mean_rs) > 1 \
                or len(mu) != 2 + len(mean_rs) or len(uses(som[0].output[0]) or []) != 1:
            continue
        var = only(rm2.output[0], "Sub")
        if var is None or list(var.input) != [rm2.output[0], som[0].output[0]]:
            continue
        add = only(var.output[0], "Add")
        eps = _number(value(_other(add, var.output[0]) or "")) if add is not None else None
        sqrt = only(add.output[0], "Sqrt") if add is not None else None
        if eps is None or sqrt is None:
            continue
        std = sqrt.output[0]
        su = uses(std) or []
        div = [n for n in su if n.op_type == "Div" and list(n.input) == [dev.output[0], std] and len(n.output) == 1]
        rec = [n for n in su if n.op_type == "Reciprocal"]
        if len(div) != 1 or len(rec) > 1 or len(su) != 1 + len(rec) or len(uses(dev.output[0]) or []) != 1:
            continue
        members += [rm, sq, dev, rm2, som[0], var, add, sqrt, div[0]]
        h = cast_float(div[0].output[0], members)
        mul = only(h, "Mul")
        sc = flat0(_other(mul, h) or "") if mul is not None else None
        if sc is None:
            continue
        members += [mul, sc]
        h, W, Bn = mul.output[0], sc.input[0], ""
        nxt = only(h, "Add") or only(h, "Reshape")
        if nxt is not None and nxt.op_type == "Add":
            bf = flat0(_other(nxt, h) or "")
            if bf is None:
                continue
            members += [nxt, bf]
            h, Bn = nxt.output[0], bf.input[0]
            nxt = only(h, "Reshape")
        shp = producer.get(nxt.input[1]) if nxt is not None and len(nxt.input) == 2 else None
        if shp is None or shp.op_type != "Shape" or shp.input[0] != X or attrs(onnx, shp):
            continue
        members.append(nxt)
        finals = [nxt]
        mean_out = inv_out = ""
        if mean_rs:
            if not reduced_shape(mean_rs[0].input[1], X, axis):
                continue
            members.append(mean_rs[0])
            finals.append(mean_rs[0])
            mean_out = mean_rs[0].output[0]
        if rec:
            r2 = only(rec[0].output[0], "Reshape")
            if r2 is None or not reduced_shape(r2.input[1], X, axis):
                continue
            members += [rec[0], r2]
            finals.append(r2)
            inv_out = r2.output[0]
        at = min(finals, key=lambda n: pos[id(n)])  # the new node stands where the first output was made
        made = [producer.get(v) for v in (X, W, Bn) if v]
        if any(p is not None and pos[id(p)] >= pos[id(at)] for p in made) \
                or any(id(m) in drop or id(m) in repl for m in members):
            continue
        drop.update(id(m) for m in members if m is not at)
        ins = [X, W] + ([Bn] if Bn else [])
        repl[id(at)] = onnx.helper.make_node("LayerNormalization", ins, [nxt.output[0], mean_out, inv_out],
                                             axis=axis, epsilon=eps, name=f"{fl.name or 'Flatten'}(layernorm)")
    if not repl:
        return pairs
    return [(i, repl.get(id(n), n)) for i, n in pairs if id(n) not in drop]


def rewrite_where_less(onnx, graph, pairs):
    """Where(Less(x, c), c, x) -> Max(x, c); Where(Less(c, x), c, x) -> Min(x, c) (Clip's function body;
    the Max / Min handler then takes one constant scalar bound); Where(Less(x, 0), Mul(alpha, x), x) ->
    LeakyRelu(alpha) (LeakyRelu's), alpha and 0 constants also through Cast / CastLike.  The Less must
    be read by its Where only."""
    nodes = [n for _, n in pairs]
    consumers = _consumers(nodes)
    producer = {o: n for n in nodes for o in n.output if o}
    cval = _reader(onnx, graph, nodes)
    outs = {o.name for o in graph.output}

    def value(name):
        v = cval(name)
        p = producer.get(name)
        if v is None and p is not None and p.op_type in ("Cast", "CastLike") and p.input:
            return value(p.input[0])
        if v is None and p is not None and p.op_type == "Constant":
            a = attrs(onnx, p)
            return next((np.array(a[k]) for k in ("value_float", "value_int") if k in a), None)
        return v

    drop, repl = set(), {}
    for wh in nodes:
        if wh.op_type != "Where" or len(wh.input) != 3 or len(wh.output) != 1:
            continue
        cond, a, b = wh.input
        less = producer.get(cond)
        if less is None or less.op_type != "Less" or len(less.input) != 2 or cond in outs \
                or len(consumers.get(cond, [])) != 1:
            continue
        l0, l1 = less.input
        new = None
        if (l0, l1) == (b, a):
            new = onnx.helper.make_node("Max", [b, a], [wh.output[0]], name=f"{wh.name or 'Where'}(max)")
        elif (l0, l1) == (a, b):
            new = onnx.helper.make_node("Min", [b, a], [wh.output[0]], name=f"{wh.name or 'Where'}(min)")
        elif l0 == b and _number(value(l1)) == 0.0:
            mul = producer.get(a)
            alpha = _number(value(_other(mul, b) or "")) if mul is not None and mul.op_type == "Mul" else None
            if alpha is None or a in outs or len(consumers.get(a, [])) != 1:
                continue
            drop.add(id(mul))
            new = onnx.helper.make_node("LeakyRelu", [b], [wh.output[0]], alpha=alpha,
                                        name=f"{wh.name or 'Where'}(leakyrelu)")
        if new is None:
            continue
        drop.add(id(less))
        repl[id(wh)] = new
    if not repl:
        return pairs
    return [(i, repl.get(id(n), n)) for i, n in pairs if id(n) not in drop]
