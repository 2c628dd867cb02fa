"""GEMM on packed weights: out[n, m] (+)= x[n, k] @ W[:, k0:k0+k].T, with
bias and activation fused into each tile's epilogue.

The weight is packed once, when the plan is built, into the layout the
register tile (tile.py) streams: panels of NR output columns, each holding
every k as NR consecutive floats (``pack``).  A worker's column slice is a
run of whole panels (the plan splits output columns at multiples of NR); a
slice of the input features (row-parallel Linear) is a contiguous run of
every panel -- so replication and tensor-parallel slicing need no second
copy.  The packed array lives in the one shared weight store.

Blocking (Goto's scheme, MLAS's sizes): K in blocks of KC so a panel's
block (KC x NR x 4 = 32 KiB) stays in L1 while the rows of a row chunk (MC
rows x KC) stay in L2; then the panels, then MR rows at a time.  When the
rows fit one tile there is nothing to reuse and K is not blocked: each
panel streams once, front to back (the memory-bound latency case).
"""
import numpy as np
from numba import njit

from .activations import IDENTITY, RELU, bias_act, bias_act_row
from .blas import ld
from .tile import MR, NR, tile_rows, tile_rows_indirect

KC = 256  # K block: a panel's block of KC x NR floats is 32 KiB (AVX-512)
MC = 40 * MR  # rows per chunk at most: MC x KC x 4 bytes (480 KiB on AVX-512) stay in L2; every chunk
# streams all the weight's panels once, so n rows go in as few equal chunks as that allows (256 rows were
# 240 + 16: the panels streamed twice, the second time for 16 rows)
PACK_A_PANELS = 4  # panels from which the rows are packed (bench/microkernel.py: fewer, the copy does not pay)


def pack(w):
    """W[m, k] (float32) -> its panels, flat: panel p, row kk, column j at (p * k + kk) * NR + j holds
    W[p * NR + j, kk], zero past m.  A slice of columns c0:c1 (c0 a multiple of NR) starts at c0 * k."""
    w = np.asarray(w, np.float32)
    m, k = w.shape
    panels = -(-m // NR)
    padded = np.zeros((panels * NR, k), np.float32)
    padded[:m] = w
    return np.ascontiguousarray(padded.reshape(panels, NR, k).transpose(0, 2, 1)).reshape(-1)


def packed_size(m, k):
    """Floats in pack(W[m, k])."""
    return -(-m // NR) * NR * k


@njit(cache=True, inline="always")
def _k_block(k, rows):
    """K in blocks of about KC (equal ones: 288 is 144 + 144, not 256 + 32); not blocked for one tile of rows."""
    if rows <= MR or k <= KC:
        return k
    nb = (k + KC - 1) // KC
    return (k + nb - 1) // nb


@njit(cache=True, inline="always")
def _tile(aa, lda, lka, pa, pld, out, r, c0, kc, mr, nv, accumulate, edge, bias, relu, bf16):
    """out[r:r+mr, c0:c0+nv] (+)= the tile (+ bias, ReLU: tile's epilogue); a partial panel (nv < NR) goes
    through edge [MR, NR] (and bias must then point at NR floats: the driver pads it)."""
    ldo = ld(out)
    if nv == NR:
        tile_rows(aa, lda, lka, pa, pld, out.ctypes.data + 4 * (r * ldo + c0), ldo, kc, mr, accumulate, bias, relu,
                  bf16)
        return
    if accumulate:
        for i in range(mr):
            for j in range(nv):
                edge[i, j] = out[r + i, c0 + j]
    tile_rows(aa, lda, lka, pa, pld, edge.ctypes.data, NR, kc, mr, accumulate, bias, relu, bf16)
    for i in range(mr):
        for j in range(nv):
            out[r + i, c0 + j] = edge[i, j]


@njit(cache=True, error_model="numpy")  # numpy's: the epilogue's inlined divisions (GELU's erf) vectorise
def gemm_packed(x, bp, kstride, b, out, act, accumulate):
    """out[n, m] (+)= act(x[n, k] @ Wp[:, :k] + b) -- Wp the panels at bp (panel p at p * kstride floats,
    its row kk at + kk * NR), b (m floats) may be empty, act an ACT_NAMES code (IDENTITY: none).
    x and out are row-major with unit column stride (rows may be strided); bp is 1-D."""
    _gemm(x, bp, kstride, b, out, act, accumulate, False)


@njit(cache=True, error_model="numpy")
def gemm_packed_bf16(x, bp, kstride, b, out, act, accumulate):
    """gemm_packed on bfloat16 panels (qformat.pack_bf16: two weights a float32 word of bp; kstride in
    weights), each weight widened to float32 in the register tile as it is loaded."""
    _gemm(x, bp, kstride, b, out, act, accumulate, True)


@njit(cache=True, error_model="numpy", inline="always")
def _gemm(x, bp, kstride, b, out, act, accumulate, bf16):
    esize = 2 if bf16 else 4
    n, k = x.shape
    m = out.shape[1]
    if n == 0 or m == 0:
        return
    has_b = b.shape[0] > 0
    if k == 0:  # no inputs: out = act(b)
        if not accumulate:
            out[:, :] = 0
        bias_act(out, b, act)
        return
    ldx = ld(x)
    xa, ba = x.ctypes.data, bp.ctypes.data
    edge = np.empty((MR, NR), np.float32)
    bpad = np.zeros(NR, np.float32)  # the last panel's bias, padded
    panels = (m + NR - 1) // NR
    kc_max = _k_block(k, n)
    # Rows for several tiles and several panels to use them: each (row chunk, K block) of x is first
    # copied into tiles of MR rows interleaved by k (A[r, kk] at kk * MR + r), so the tile reads one
    # contiguous stream instead of MR rows whose equal stride (a power of two: 1024 or 4096 features)
    # maps them onto the same L1 sets.  With 1-3 panels the copy costs about what it saves.
    pack_a = n > MR and panels >= PACK_A_PANELS
    chunks = (n + MC - 1) // MC
    mc = (n + chunks - 1) // chunks
    mc = (mc + MR - 1) // MR * MR
    apack = np.empty(mc * kc_max if pack_a else 0, np.float32)
    aa = apack.ctypes.data
    for i0 in range(0, n, mc):
        i1 = min(i0 + mc, n)
        for k0 in range(0, k, kc_max):
            kc = min(kc_max, k - k0)
            last = k0 + kc == k
            if pack_a:
                for r in range(i0, i1):
                    t, rr = divmod(r - i0, MR)
                    base = t * MR * kc + rr
                    xr = x[r]
                    for kk in range(kc):
                        apack[base + kk * MR] = xr[k0 + kk]
            for p in range(panels):
                c0 = p * NR
                nv = min(NR, m - c0)
                pa = ba + esize * (p * kstride + k0 * NR)
                bias = 0  # the epilogue in the tile: bias and ReLU on the last K block
                if last and has_b:
                    if nv == NR:
                        bias = b.ctypes.data + 4 * c0
                    else:
                        bpad[:nv] = b[c0:m]
                        bias = bpad.ctypes.data
                relu = last and act == RELU
                for r in range(i0, i1, MR):
                    mr = min(MR, i1 - r)
                    acc = accumulate or k0 > 0
                    if pack_a:
                        _tile(aa + 4 * (r - i0) * kc, 1, MR, pa, NR, out, r, c0, kc, mr, nv, acc, edge, bias, relu,
                              bf16)
                    else:
                        _tile(xa + 4 * (r * ldx + k0), ldx, 1, pa, NR, out, r, c0, kc, mr, nv, acc, edge, bias, relu,
                              bf16)
                if last and act != IDENTITY and act != RELU:  # other activations: on the panel's rows while in
                    for r in range(i0, i1):  # cache, inlined (a call per tile cost GELU's Linear 0.3 of 0.67 ms)
                        bias_act_row(out[r, c0:c0 + nv], bpad[0:0], act)


@njit(cache=True)
def gemm_cols(a, src, offs, n, out):
    """out[m, n] = a[m, k] @ B with B[kk, j] = src[offs[kk] + j]: a stride-1 convolution's im2col columns
    read where they lie in the padded image (tile_indirect), nothing copied.  src must hold NR floats of
    slack past the last column any row reaches: the last, partial panel reads whole vectors (the extra
    lanes are computed and dropped)."""
    m, k = a.shape
    if m == 0 or n == 0:
        return
    if k == 0:
        out[:, :] = 0
        return
    lda, ldo = ld(a), ld(out)
    aa, sa, ta = a.ctypes.data, src.ctypes.data, offs.ctypes.data
    edge = np.empty((MR, NR), np.float32)
    kc_max = _k_block(k, m)
    for k0 in range(0, k, kc_max):
        kc = min(kc_max, k - k0)
        for p in range((n + NR - 1) // NR):
            c0 = p * NR
            nv = min(NR, n - c0)
            for r in range(0, m, MR):
                mr = min(MR, m - r)
                ar = aa + 4 * (r * lda + k0)
                if nv == NR:
                    tile_rows_indirect(ar, lda, 1, sa + 4 * c0, ta + 8 * k0, out.ctypes.data + 4 * (r * ldo + c0), ldo,
                                       kc, mr, k0 > 0, 0, False)
                    continue
                if k0 > 0:
                    for i in range(mr):
                        for j in range(nv):
                            edge[i, j] = out[r + i, c0 + j]
                tile_rows_indirect(ar, lda, 1, sa + 4 * c0, ta + 8 * k0, edge.ctypes.data, NR, kc, mr, k0 > 0, 0, False)
                for i in range(mr):
                    for j in range(nv):
                        out[r + i, c0 + j] = edge[i, j]
