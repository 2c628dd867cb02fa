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


@njit(cache=True, nogil=True, fastmath=_FM)
def attention(q, k, v, hs, meta, r0, r1, h0, h1, dh, scale, mask, causal, out, scratch):
    """out[r0:r1, h*dh:(h+1)*dh] for heads h0:h1.  mask: an additive [Tm, Tm] float32 mask by
    (query position, key position), or empty.  scratch: dh * len + len floats (this sequence's
    keys transposed, one row of scores).  A query with no allowed key writes 0."""
    has_mask = mask.shape[0] > 0
    j = r0
    while j < r1:
        s0, ln = int(meta[j, 1]), int(meta[j, 2])
        j1 = min(r1, s0 + ln)
        kt = scratch[:dh * ln].reshape((dh, ln))
        sc = scratch[dh * ln:dh * ln + ln]
        for h in range(h0, h1):
            c, co = h * hs, h * dh
            for t in range(ln):
                for d in range(dh):
                    kt[d, t] = k[s0 + t, c + d]
            for i in range(j, j1):
                n = i - s0 + 1 if causal else ln  # the keys this query may see: a prefix
                for t in range(n):
                    sc[t] = 0.0
                for d in range(dh):
                    qd = q[i, c + d] * scale
                    for t in range(n):
                        sc[t] += qd * kt[d, t]
                if has_mask:
                    qp = int(meta[i, 0])
                    for t in range(n):
                        sc[t] += mask[qp, int(meta[s0 + t, 0])]
                mx = _NEG
                for t in range(n):
                    mx = max(mx, sc[t])
                o = out[i, co:co + dh]
                o[:] = 0.0
                if mx == _NEG:
                    continue  # every key masked: 0, not NaN
                tot = np.float32(0.0)
                for t in range(n):
                    e = exp32(sc[t] - mx)
                    sc[t] = e
                    tot += e
                inv = np.float32(1.0) / tot
                for t in range(n):
                    p = sc[t] * inv
                    for d in range(dh):
                        o[d] += p * v[s0 + t, c + d]
        j = j1


@njit(cache=True, nogil=True)
def lookup(ids, table, out):
    """out[r] = table[int(ids[r, 0])] (ids as floats, checked in range by the caller)."""
    for r in range(out.shape[0]):
        out[r, :] = table[int(ids[r, 0])]
