"""Scaled dot-product attention over packed token rows, and the token-embedding lookup.

Token rows are packed: only real tokens, the tokens of one sequence contiguous and in position
order.  ``meta`` gives each token row (pos, start, len) as floats: its position in its sequence,
the row of its sequence's first token and how many tokens the sequence has.  A query attends to
the keys of its own sequence (padding was never packed); causal: to the keys at or before it,
which in a packed sequence are a prefix (rows start .. itself).

q, k, v are views of token rows whose head h starts at column h * hs (hs = 3 * dh for the
head-major fused projection [h][q, k, v][dh], dh for separate tensors); out's head h at h * dh.
"""
import numpy as np
from numba import njit

from .fastmath32 import exp32

_FM = {"nsz", "arcp", "contract", "afn", "reassoc"}  # no nnan/ninf: masked scores are -inf
_NEG = np.float32(-np.inf)


QB = 4  # queries scored together: each key and value loaded once for QB of them


@njit(cache=True, nogil=True, fastmath=_FM)
def attention(q, k, v, hs, meta, r0, r1, h0, h1, dh, scale, mask, causal, out, scratch):
    """out[r0:r1, h*dh:(h+1)*dh] for heads h0:h1.  mask: an additive [Tm, Tm] float32 mask by
    (query position, key position), or empty.  scratch: 2 * dh * len + QB * len floats (this
    sequence's keys and values transposed, QB rows of scores).  A query with no allowed key
    writes 0.  Queries go QB at a time: scores as QB rows over the keys (a vector loop per key
    feature), outputs as QB dot products per value feature, so each key and value row is read
    once per QB queries."""
    has_mask = mask.shape[0] > 0
    j = r0
    while j < r1:
        s0, ln = int(meta[j, 1]), int(meta[j, 2])
        j1 = min(r1, s0 + ln)
        kt = scratch[:dh * ln].reshape((dh, ln))
        vt = scratch[dh * ln:2 * dh * ln].reshape((dh, ln))
        sc = scratch[2 * dh * ln:2 * dh * ln + QB * ln].reshape((QB, ln))
        for h in range(h0, h1):
            c, co = h * hs, h * dh
            for t in range(ln):
                for d in range(dh):
                    kt[d, t] = k[s0 + t, c + d]
                    vt[d, t] = v[s0 + t, c + d]
            for i in range(j, j1, QB):
                nq = min(QB, j1 - i)
                n = i + nq - s0 if causal else ln  # keys any of these queries may see: a prefix
                sc[:, :n] = 0.0
                for d in range(dh):
                    q0 = q[i, c + d] * scale
                    q1 = q[i + 1, c + d] * scale if nq > 1 else np.float32(0.0)
                    q2 = q[i + 2, c + d] * scale if nq > 2 else np.float32(0.0)
                    q3 = q[i + 3, c + d] * scale if nq > 3 else np.float32(0.0)
                    kd = kt[d]
                    for t in range(n):
                        kv = kd[t]
                        sc[0, t] += q0 * kv
                        sc[1, t] += q1 * kv
                        sc[2, t] += q2 * kv
                        sc[3, t] += q3 * kv
                for a in range(nq):
                    row = sc[a]
                    na = i + a - s0 + 1 if causal else n
                    if has_mask:
                        qp = int(meta[i + a, 0])
                        for t in range(na):
                            row[t] += mask[qp, int(meta[s0 + t, 0])]
                    mx = _NEG
                    for t in range(na):
                        mx = max(mx, row[t])
                    if mx == _NEG:
                        row[:n] = 0.0  # every key masked: 0, not NaN
                        continue
                    tot = np.float32(0.0)
                    for t in range(na):
                        e = exp32(row[t] - mx)
                        row[t] = e
                        tot += e
                    inv = np.float32(1.0) / tot
                    for t in range(na):
                        row[t] *= inv
                    row[na:n] = 0.0
                for d in range(dh):
                    vd = vt[d]
                    a0 = a1 = a2 = a3 = np.float32(0.0)
                    for t in range(n):
                        vv = vd[t]
                        a0 += sc[0, t] * vv
                        a1 += sc[1, t] * vv
                        a2 += sc[2, t] * vv
                        a3 += sc[3, t] * vv
                    out[i, co + d] = a0
                    if nq > 1:
                        out[i + 1, co + d] = a1
                    if nq > 2:
                        out[i + 2, co + d] = a2
                    if nq > 3:
                        out[i + 3, co + d] = a3
        j = j1


@njit(cache=True, nogil=True)
def lookup(ids, table, out):
    """out[r] = table[int(ids[r, 0])] (ids as floats, checked in range by the caller)."""
    for r in range(out.shape[0]):
        out[r, :] = table[int(ids[r, 0])]
