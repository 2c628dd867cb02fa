"""Constant folding: every node whose inputs are all constants is computed at load time.

Exporters emit shape arithmetic (Shape, Gather, Concat, Reshape, ...) around the model input; with
the batch axis carried as the sentinel ``B`` it folds to constants here.  Broadcast (zero-stride)
arrays stay compact, so a folded value that merely repeats does not grow with the batch size; one
that does is refused.  Ops without a numpy rule run through onnx's reference implementation."""
from __future__ import annotations

import math
import sys

import numpy as np

from shmrt.frontends.onnx.errors import UnsupportedONNX, raised_on_purpose
from shmrt.frontends.onnx.layout import B

_MAX_CONST_BYTES = 1 << 28


def _is_uniform(a):
    return a.size > 0 and all(s == 0 or n == 1 for s, n in zip(a.strides, a.shape))


def _fill(a, shape):
    """A read-only, zero-stride array of ``shape`` filled with a's single value."""
    return np.broadcast_to(np.asarray(a[(0,) * a.ndim]), tuple(int(v) for v in shape))


def compact(a):
    """Shrink zero-stride (broadcast) axes to size 1: same values under broadcasting."""
    if a.ndim == 0 or a.size == 0:
        return a
    return a[tuple(slice(0, 1) if (s == 0 and n > 1) else slice(None) for s, n in zip(a.strides, a.shape))]


_NP_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
              9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


def reshape_target(in_shape, target, allowzero):
    shape = list(target)
    for i, t in enumerate(shape):
        if t == 0 and not allowzero:
            if i >= len(in_shape):
                raise ValueError(f"0 at axis {i} has no input axis to copy")
            shape[i] = in_shape[i]
    total = int(np.prod(in_shape, dtype=object))
    if shape.count(-1) > 1:
        raise ValueError("more than one -1")
    if -1 in shape:
        rest = int(np.prod([t for t in shape if t != -1], dtype=object))
        if rest == 0 or total % rest:
            raise ValueError("the -1 axis cannot be inferred")
        shape[shape.index(-1)] = total // rest
    if int(np.prod(shape, dtype=object)) != total:
        raise ValueError(f"{shape} has a different number of elements")
    return tuple(int(t) for t in shape)


def slices(shape, ins):
    r = len(shape)
    starts = [int(t) for t in np.asarray(ins[1]).reshape(-1)]
    ends = [int(t) for t in np.asarray(ins[2]).reshape(-1)]
    axes = [int(t) for t in np.asarray(ins[3]).reshape(-1)] if len(ins) > 3 and ins[3] is not None \
        else list(range(len(starts)))
    steps = [int(t) for t in np.asarray(ins[4]).reshape(-1)] if len(ins) > 4 and ins[4] is not None \
        else [1] * len(starts)
    if not len(starts) == len(ends) == len(axes) == len(steps) or any(not -r <= t < r for t in axes) \
            or len({t % r for t in axes}) != len(axes):
        raise ValueError(f"starts {starts}, ends {ends}, axes {axes}, steps {steps} do not fit an input of rank {r} "
                         f"(expected one value each per distinct axis in {-r}..{r - 1})")
    axes = [t % r for t in axes]
    sl = [slice(None)] * r
    big = 2 ** 62
    for s, e, ax, st in zip(starts, ends, axes, steps):
        if st == 0:
            raise ValueError("a Slice step of 0")
        e = None if (st > 0 and e >= big) or (st < 0 and e <= -big) else e
        sl[ax] = slice(s, e, st)
    return tuple(sl)


_BINARY = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Equal": np.equal,
           "Less": np.less, "Greater": np.greater, "LessOrEqual": np.less_equal, "GreaterOrEqual": np.greater_equal,
           "Max": np.maximum, "Min": np.minimum, "Pow": np.power, "And": np.logical_and, "Or": np.logical_or,
           "Mod": np.fmod}
_UNARY = {"Neg": np.negative, "Abs": np.abs, "Sqrt": np.sqrt, "Floor": np.floor, "Ceil": np.ceil,
          "Not": np.logical_not, "Reciprocal": np.reciprocal, "Exp": np.exp, "Log": np.log, "Relu":
          lambda v: np.maximum(v, 0), "Sigmoid": lambda v: 1 / (1 + np.exp(-v)), "Tanh": np.tanh,
          "Sign": np.sign, "Erf": np.vectorize(math.erf, otypes=[np.float64])}


class Folding:
    """Constant nodes and folding nodes on constants."""

    def constant(self, node, idx):
        a = self.attrs(node)
        if "value" in a:
            t = next(x.t for x in node.attribute if x.name == "value")
            return self.to_array(t, f"Constant node {idx}")
        for k, conv in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                        ("value_ints", np.int64)):
            if k in a:
                return np.asarray(a[k], dtype=conv)
        self.fail(node, idx, f"attribute {sorted(a)} is not supported (value, value_float(s), value_int(s) are)")

    def fold(self, node, idx, ins):
        op = node.op_type
        a = self.attrs(node)
        try:
            out = self._fold(node, idx, op, ins, a)
        except (ValueError, IndexError) as e:
            if isinstance(e, UnsupportedONNX):
                raise
            if raised_on_purpose(e, sys.modules[__name__]):  # _reshape_target's or _slices' own check
                self.fail(node, idx, f"cannot fold it at load time: {e}")
            if all(v is None or v.size < B for v in ins):  # numpy's error: are the graph's constants invalid?
                self.reference(node, idx, op, ins)  # refuses if onnx's reference implementation rejects them too
            raise  # numpy failed where onnx does not: a bug in _fold (bugs() reports it)
        out = out if isinstance(out, list) else [out]
        for o in out:
            if o is not None and not _is_uniform(o) and o.nbytes > _MAX_CONST_BYTES:
                self.fail(node, idx, "a folded constant grows with the batch size (not supported)")
        return out

    def _fold(self, node, idx, op, ins, a):
        x = ins[0] if ins else None
        ints = lambda v: [int(t) for t in np.asarray(v).reshape(-1)]  # noqa: E731
        if op in _BINARY:
            if len(ins) != 2:
                self.fail(node, idx, "needs two inputs")
            p, q = ins
            shape = np.broadcast_shapes(p.shape, q.shape)
            r = _BINARY[op](compact(p), compact(q))
            if op == "Div" and p.dtype.kind in "iu" and q.dtype.kind in "iu":
                r = np.trunc(np.asarray(compact(p), np.float64) / compact(q)).astype(p.dtype)
            return np.broadcast_to(np.asarray(r, dtype=r.dtype), shape)
        if op in _UNARY:
            return np.broadcast_to(_UNARY[op](compact(x)), x.shape)
        if op == "Identity":
            return x
        if op == "Shape":
            s = np.array(x.shape, dtype=np.int64)
            return s[a.get("start", 0):a.get("end", None)]
        if op == "Size":
            return np.array(x.size, dtype=np.int64)
        if op == "Cast":
            dt = _NP_DTYPES.get(a["to"])
            if dt is None:
                self.fail(node, idx, f"Cast to type {a['to']} is not supported")
            return np.broadcast_to(compact(x).astype(dt), x.shape)
        if op == "ConstantOfShape":
            val = a.get("value")
            v = (self.to_array(val, f"ConstantOfShape node {idx}").reshape(-1)[0] if val is not None
                 else np.float32(0))
            return np.broadcast_to(np.asarray(v), tuple(ints(x)))
        if op == "Expand":
            return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(ints(ins[1]))))
        if op == "Reshape":
            shape = reshape_target(x.shape, ints(ins[1]), a.get("allowzero", 0))
            return _fill(x, shape) if _is_uniform(x) else x.reshape(shape)
        if op == "Flatten":
            ax = a.get("axis", 1)
            ax = ax + x.ndim if ax < 0 else ax
            shape = (int(np.prod(x.shape[:ax])), int(np.prod(x.shape[ax:])))
            return _fill(x, shape) if _is_uniform(x) else x.reshape(shape)
        if op == "Transpose":
            return np.transpose(x, a.get("perm"))
        if op == "Unsqueeze":
            axes = ints(ins[1])
            r = x.ndim + len(axes)
            return np.expand_dims(x, tuple(sorted(ax % r for ax in axes)))
        if op == "Squeeze":
            if len(ins) > 1 and ins[1] is not None:
                return np.squeeze(x, tuple(self.axis(node, idx, ax, x.ndim, "axes value") for ax in ints(ins[1])))
            return np.squeeze(x)
        if op == "Gather":
            ax = self.axis(node, idx, a.get("axis", 0), x.ndim)
            ind = np.asarray(ins[1]).astype(np.int64)
            ind = np.where(ind < 0, ind + x.shape[ax], ind)
            if ind.ndim == 0:
                return x[(slice(None),) * ax + (int(ind),)]
            if _is_uniform(x):
                return _fill(x, x.shape[:ax] + ind.shape + x.shape[ax + 1:])
            return np.take(x, ind, axis=ax)
        if op == "GatherElements":  # out[i][j] = x[ind[i][j]][j] along axis (onnx's reference mishandles some)
            ax = self.axis(node, idx, a.get("axis", 0), x.ndim)
            ind = np.asarray(ins[1]).astype(np.int64)
            if ind.ndim != x.ndim or any(i > n for k, (i, n) in enumerate(zip(ind.shape, x.shape)) if k != ax):
                self.fail(node, idx, f"indices of shape {ind.shape} do not fit data of shape {x.shape}")
            ind = np.where(ind < 0, ind + x.shape[ax], ind)
            part = x[tuple(slice(None) if k == ax else slice(0, i) for k, i in enumerate(ind.shape))]
            return np.take_along_axis(np.ascontiguousarray(part), ind, axis=ax)
        if op == "Slice":
            sl = slices(x.shape, ins)
            return x[sl]
        if op == "Concat":
            parts = [p for p in ins if p is not None]
            if len({p.ndim for p in parts}) != 1:
                self.fail(node, idx, f"inputs of ranks {[p.ndim for p in parts]}: Concat needs inputs of one rank")
            ax = self.axis(node, idx, a["axis"], parts[0].ndim)
            if all(_is_uniform(p) or p.size == 0 for p in parts):
                vals = {p[(0,) * p.ndim].item() for p in parts if p.size}
                if len(vals) == 1:
                    shape = list(parts[0].shape)
                    shape[ax] = sum(p.shape[ax] for p in parts)
                    dt = np.result_type(*parts)
                    return np.broadcast_to(np.asarray(vals.pop(), dtype=dt), shape)
            if any(p.size >= B for p in parts):
                self.fail(node, idx, "a folded constant grows with the batch size (not supported)")
            return np.concatenate(parts, axis=ax)
        if op == "Range":
            return np.arange(ins[0].item(), ins[1].item(), ins[2].item()).astype(ins[0].dtype)
        if op == "Where":
            c, p, q = ins
            shape = np.broadcast_shapes(c.shape, p.shape, q.shape)
            return np.broadcast_to(np.where(compact(c), compact(p), compact(q)), shape)
        if op in ("ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin") and (len(ins) < 2 or ins[1] is None) \
                and "axes" not in a:
            f = {"ReduceProd": np.prod, "ReduceSum": np.sum, "ReduceMax": np.max, "ReduceMin": np.min}[op]
            r = f(x)
            return np.asarray(r).reshape((1,) * x.ndim) if a.get("keepdims", 1) else np.asarray(r)
        if op == "Dropout":
            return [x, np.ones(x.shape, dtype=bool)]
        # anything else: the ONNX reference implementation, on small constants only
        if any(v is not None and v.size >= B for v in ins):
            self.fail(node, idx, "a folded constant grows with the batch size (not supported)")
        return self.reference(node, idx, op, ins)

    def reference(self, node, idx, op, ins):
        """The node run by onnx's reference implementation on its constant inputs."""
        from onnx.reference import ReferenceEvaluator
        helper = self.onnx.helper
        names = [f"i{k}" if n else "" for k, n in enumerate(node.input)]
        n2 = helper.make_node(op, names, [f"o{k}" for k in range(len(node.output))], domain=node.domain)
        n2.attribute.extend(node.attribute)
        feeds = {nm: v for nm, v in zip(names, ins) if nm}
        g = helper.make_graph([n2], "fold", [helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(
            v.dtype), v.shape) for nm, v in feeds.items()],
            [helper.make_tensor_value_info(f"o{k}", 0, None) for k in range(len(node.output))])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        try:  # onnx's reference implementation, on the graph's constants: it raises what it raises
            res = ReferenceEvaluator(m).run(None, {k: np.ascontiguousarray(v) for k, v in feeds.items()})
        except Exception as e:
            self.fail(node, idx, f"op {op} on constants could not be folded ({type(e).__name__}: {e})")
        return [np.asarray(r) for r in res]
