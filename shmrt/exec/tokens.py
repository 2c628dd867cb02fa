"""The interpreter's steps over packed token rows (compile/tokens.py): the embedding lookup and
attention, unpacked from their program rows."""
from __future__ import annotations

from numba import njit

from shmrt.compile.isa import ATTN, EMBED
from shmrt.exec.rows import _view
from shmrt.kernels.attention import attention, lookup


@njit(cache=True, inline="always")
def embed_step(s, weights, arena, xa, xo, r0, r1):
    if r1 > r0:
        m = s[EMBED.width]
        table = weights[s[EMBED.table]:]
        n_rows = table.shape[0] // m
        lookup(_view(xa, xo, s[EMBED.x_ld], r0, r1, 0, 1), table[:n_rows * m].reshape((n_rows, m)),
               _view(arena, s[EMBED.out], s[EMBED.out_ld], r0, r1, 0, m))


@njit(cache=True, inline="always")
def attn_step(s, weights, arena, n, r0, r1):
    """Queries r0:r1 of the n token rows; keys and values are read from every row of their sequence."""
    if r1 > r0 and s[ATTN.h1] > s[ATTN.h0]:
        ld = s[ATTN.ld]  # rows from each tensor's head-0 column (the arena's slack covers the last)
        q = _view(arena, s[ATTN.q], ld, 0, n, 0, ld)
        k = _view(arena, s[ATTN.k], ld, 0, n, 0, ld)
        v = _view(arena, s[ATTN.v], ld, 0, n, 0, ld)
        meta = _view(arena, s[ATTN.meta], s[ATTN.meta_ld], 0, n, 0, 3)
        mo, mld = s[ATTN.mask], s[ATTN.mask_ld]
        mask = weights[mo:mo + mld * mld].reshape((mld, mld)) if mo >= 0 else weights[0:0].reshape((0, 0))
        sc = s[ATTN.scratch]
        attention(q, k, v, s[ATTN.hs], meta, r0, r1, s[ATTN.h0], s[ATTN.h1], s[ATTN.dh], weights[s[ATTN.scale]],
                  mask, s[ATTN.causal] != 0, _view(arena, s[ATTN.out], s[ATTN.out_ld], 0, n, 0, s[ATTN.out_ld]),
                  arena[sc:sc + s[ATTN.scratch_floats]])
