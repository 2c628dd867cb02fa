"""The graph rewrite that reads onnxruntime's dynamic quantization as quantized weights.

``onnxruntime.quantization.quantize_dynamic`` writes every quantized MatMul / Gemm (and Conv) as

    DynamicQuantizeLinear(x) -> x_q, x_scale, x_zp
    MatMulInteger(x_q, W_q, x_zp[, W_zp]) -> Cast(to float) -> Mul(., Mul(x_scale, W_scale)) [-> Add(bias)]

(ConvInteger in place of MatMulInteger for a Conv), and onnxruntime's own graph optimiser fuses it into
the contrib op ``DynamicQuantizeMatMul(x, W_q, W_scale[, W_zp][, bias])`` (domain com.microsoft).
Each is rewritten here into ``DequantizeLinear(W_q, W_scale[, W_zp]) -> MatMul(x, .)`` (Conv, and an
Add of the bias for DynamicQuantizeMatMul): the weights are the file's own, folded at load time by
DequantizeLinear, whose int8 values and scales the importer then attaches to the Linear
(handlers_quant.py).

What differs from the peer: onnxruntime rounds each activation tensor to uint8 at run time (one
scale per tensor, from its min and max over the whole batch); after the rewrite the activation is
used as it is (shmrt's own weights="int8" path quantizes it per row instead).  A pattern that does not
fit exactly is left as it is, and the walk refuses its nodes (handlers_quant.py names what it expected).
"""
from __future__ import annotations

from shmrt.frontends.onnx.patterns import _consumers, _const_tensor, _other, _reader

FLOAT = 1  # TensorProto.FLOAT


def _consts(graph, nodes):
    """Names of the graph's constants: initializers and Constant nodes' outputs."""
    return {t.name for t in graph.initializer} | {n.output[0] for n in nodes if _const_tensor(n) is not None}


def rewrite_dynamic_quant(onnx, graph, pairs):
    """MatMulInteger / ConvInteger after DynamicQuantizeLinear, and DynamicQuantizeMatMul, -> a
    DequantizeLinear of the constant weight and a float MatMul / Conv (see the module docstring)."""
    helper = onnx.helper
    nodes = [n for _, n in pairs]
    consumers = _consumers(nodes)
    made = {o: n for n in nodes for o in n.output if o}
    consts = _consts(graph, nodes)
    cval = _reader(onnx, graph, nodes)
    outs = {o.name for o in graph.output}

    def only(name, op):
        c = consumers.get(name, []) if name and name not in outs else []
        return c[0] if len(c) == 1 and c[0].op_type == op and len(c[0].output) == 1 else None

    drop, repl = set(), {}
    for n in nodes:
        if n.op_type == "DynamicQuantizeMatMul" and n.domain == "com.microsoft" and len(n.output) == 1:
            ins = list(n.input) + [""] * (5 - len(n.input))
            x, w, w_scale, w_zp, bias = ins[:5]
            if not x or w not in consts or w_scale not in consts or (w_zp and w_zp not in consts) \
                    or (bias and bias not in consts):
                continue
            deq = f"{n.output[0]}__shmrt_weight"
            new = [helper.make_node("DequantizeLinear", [w, w_scale] + ([w_zp] if w_zp else []), [deq], axis=1,
                                    name=f"{n.name or 'DynamicQuantizeMatMul'}(weight)")]
            mm = f"{n.output[0]}__shmrt_matmul" if bias else n.output[0]
            new.append(helper.make_node("MatMul", [x, deq], [mm], name=f"{n.name or 'DynamicQuantizeMatMul'}(matmul)"))
            if bias:
                new.append(helper.make_node("Add", [mm, bias], [n.output[0]],
                                            name=f"{n.name or 'DynamicQuantizeMatMul'}(bias)"))
            repl[id(n)] = new
            continue
        if n.op_type not in ("MatMulInteger", "ConvInteger") or n.domain not in ("", "ai.onnx") \
                or len(n.output) != 1 or id(n) in drop:
            continue
        ins = list(n.input) + [""] * (4 - len(n.input))
        a, w, a_zp, w_zp = ins[:4]
        dql = made.get(a)
        if dql is None or dql.op_type != "DynamicQuantizeLinear" or len(dql.output) != 3 \
                or a_zp != dql.output[2] or w not in consts or (w_zp and w_zp not in consts):
            continue
        cast = only(n.output[0], "Cast")
        if cast is None or not any(t.name == "to" and t.i == FLOAT for t in cast.attribute):
            continue
        mul = only(cast.output[0], "Mul")
        s = _other(mul, cast.output[0]) if mul is not None else None
        smul = made.get(s) if s else None
        if smul is None or smul.op_type != "Mul" or len(smul.input) != 2 or dql.output[1] not in smul.input:
            continue
        w_scale = _other(smul, dql.output[1])
        if w_scale not in consts or id(mul) in repl or (n.op_type == "ConvInteger" and cval(w_scale).size != 1):
            continue
        deq = f"{mul.output[0]}__shmrt_weight"
        # MatMulInteger's W is [K, N], a scale per output column N (axis 1); ConvInteger's [O, C, kh, kw]
        # takes one scale only (a per-channel one would not broadcast over [N, O, H, W] in the Mul)
        dq = helper.make_node("DequantizeLinear", [w, w_scale] + ([w_zp] if w_zp else []), [deq],
                              axis=1 if n.op_type == "MatMulInteger" else 0,
                              name=f"{n.name or n.op_type}(weight)")
        if n.op_type == "MatMulInteger":
            op = helper.make_node("MatMul", [dql.input[0], deq], [mul.output[0]], name=f"{n.name or 'MatMulInteger'}"
                                  f"(matmul)")
        else:
            op = helper.make_node("Conv", [dql.input[0], deq], [mul.output[0]], name=f"{n.name or 'ConvInteger'}(conv)")
            op.attribute.extend(n.attribute)
        drop.update((id(n), id(cast)))
        repl[id(mul)] = [dq, op]
    if not repl:
        return pairs
    out = []
    for i, n in pairs:  # the new nodes stand where the last node of their pattern stood
        if id(n) in repl:
            out.extend((i, r) for r in repl[id(n)])
        elif id(n) not in drop:
            out.append((i, n))
    return out
