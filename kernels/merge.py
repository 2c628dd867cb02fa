"""Elementwise ops of two activations (or of one and a constant) with broadcasting (Add, Sub, Mul,
Div), and the strided copy that Concat, Permute and Slice are made of.  Operands are rows of flat buffers: row r of a starts at a[ao + r * a_ld];
within a row, element (i0, i1, i2) of the output's three dims is at i0*sa[0] + i1*sa[1] + i2*sa[2]
of a (a stride of 0 broadcasts), and likewise for b and out."""
import numpy as np
from numba import njit

from .activations import IDENTITY, act1, add_act_row

ADD, SUB, MUL, DIV, COPY = 0, 1, 2, 3, 4  # COPY: out = a (b unused)


@njit(cache=True, inline="always")
def _op(x, y, op):
    if op == ADD:
        return x + y
    if op == SUB:
        return x - y
    if op == MUL:
        return x * y
    if op == DIV:
        return x / y
    return x


@njit(cache=True, inline="always")
def _row(o, x, y, op):
    """o = x <op> y over one contiguous run, one loop per op (each vectorises)."""
    n = o.shape[0]
    if op == ADD:
        for k in range(n):
            o[k] = x[k] + y[k]
    elif op == SUB:
        for k in range(n):
            o[k] = x[k] - y[k]
    elif op == MUL:
        for k in range(n):
            o[k] = x[k] * y[k]
    elif op == DIV:
        for k in range(n):
            o[k] = x[k] / y[k]
    else:
        o[:] = x


@njit(cache=True, inline="always")
def _row_scalar(o, x, y, op):
    """o = x <op> y with y one value (broadcast along the run)."""
    n = o.shape[0]
    if op == ADD:
        for k in range(n):
            o[k] = x[k] + y
    elif op == SUB:
        for k in range(n):
            o[k] = x[k] - y
    elif op == MUL:
        for k in range(n):
            o[k] = x[k] * y
    else:
        for k in range(n):
            o[k] = x[k] / y


@njit(cache=True)
def merge(a, ao, a_ld, b, bo, b_ld, out, oo, o_ld, r0, r1, op, d, sa, sb, so, c0, c1, act, swap):
    """out = act(a <op> b) (swap: act(b <op> a)) for rows r0:r1 and dim-0 indices c0:c1 of the output's
    dims d (three)."""
    d1, d2 = d[1], d[2]
    unit = sa[2] == 1 and so[2] == 1 and (sb[2] == 1 or op == COPY) and not swap
    bcast = sb[2] == 0 and sa[2] == 1 and so[2] == 1 and op != COPY and not swap
    zero = np.float32(0.0)
    # a flat row (a vector's (F,) is dims (F, 1, 1)): dim 0 is the contiguous run, one loop per row
    flat = d1 == 1 and d2 == 1 and sa[0] == 1 and so[0] == 1 and (sb[0] == 1 or op == COPY) and not swap
    for r in range(r0, r1):
        if flat:
            pa, pb, po = ao + r * a_ld + c0, bo + r * b_ld + c0, oo + r * o_ld + c0
            o = out[po:po + c1 - c0]
            _row(o, a[pa:pa + c1 - c0], b[pb:pb + c1 - c0], op)
            if act != IDENTITY:
                add_act_row(o, o, zero, act)
            continue
        for i0 in range(c0, c1):
            for i1 in range(d1):
                pa = ao + r * a_ld + i0 * sa[0] + i1 * sa[1]
                pb = bo + r * b_ld + i0 * sb[0] + i1 * sb[1]
                po = oo + r * o_ld + i0 * so[0] + i1 * so[1]
                o = out[po:po + d2]
                if unit:
                    _row(o, a[pa:pa + d2], b[pb:pb + d2], op)
                elif bcast:
                    _row_scalar(o, a[pa:pa + d2], b[pb], op)
                elif swap:
                    for i2 in range(d2):
                        out[po + i2 * so[2]] = _op(b[pb + i2 * sb[2]], a[pa + i2 * sa[2]], op)
                else:
                    for i2 in range(d2):
                        out[po + i2 * so[2]] = _op(a[pa + i2 * sa[2]], b[pb + i2 * sb[2]], op)
                if act == IDENTITY:
                    continue
                if so[2] == 1:
                    add_act_row(o, o, zero, act)
                else:
                    for i2 in range(d2):
                        out[po + i2 * so[2]] = act1(float(out[po + i2 * so[2]]), act, 0.0)
