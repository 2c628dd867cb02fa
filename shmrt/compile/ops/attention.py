"""Token-row layers of sequence models (compile/tokens.py): the embedding lookup and attention.

- lookup: a table row per token, by batch rows (token rows); no barrier.
- attention: reads the keys and values of every token of a query's sequence, so unless each
  worker holds whole heads it needs every row: a barrier, then query rows split across workers
  (all heads each).  Split by model, worker w owns heads h0:h1: when the QKV projection before it
  was split at head boundaries (tokens.py lays it out head-major), the columns it wrote are
  exactly its heads' q, k and v, so no barrier; its output columns h0*dh:h1*dh feed the
  row-parallel out_proj (Megatron's attention block: one reduce-scatter)."""
from __future__ import annotations

import numpy as np

from shmrt.compile.isa import ATTN, EMBED
from shmrt.compile.layout import rows_of, split
from shmrt.compile.roofline import rows, streaming_step_us
from shmrt.compile.tokens import _Attention, _Lookup
from shmrt.kernels.attention import QB


def lookup(b, op, info):
    P, i = b.P, op.index
    b.need_rows()
    out, m = b.outs[i], op.layer.params["weight"].shape[1]
    for w in range(P):
        b.emit(w, EMBED, x=b.cur_off, x_ld=b.cur_ld, table=b.w(f"{i}.weight"), width=m, out=out.off,
               out_ld=out.ld or m, **rows_of(w, P))
    info["partition"] = "token rows"
    info["slices"] = [f"tokens {w}/{P}..{w + 1}/{P}" for w in range(P)]
    b.set_cur(out, "rows" if P > 1 else "all")


def _heads_of(bounds, hs, H):
    """Whole heads per worker from a column split of the fused projection, or None."""
    if bounds is None or bounds[-1] != H * hs or any(c % hs for c in bounds):
        return None
    return [c // hs for c in bounds]


def attention(b, op, info):
    P, l, i = b.P, op.layer, op.index
    qkv, meta = b.ins[0], b.ins[-1]
    heads = _heads_of(qkv.bounds, l.hs, l.heads) if (b.split_model and l.fused and qkv.state == "cols") else None
    if heads is None:
        b.need_all()  # keys and values from rows other workers wrote
        if b.split_model:
            heads = split(l.heads, P, 1)
    src = b.ins[:3] if not l.fused else [qkv] * 3
    offs = [s.out.off + (k * l.dh if l.fused else 0) for k, s in enumerate(src)]
    ld = qkv.out.ld or qkv.out.width
    out = b.outs[i]
    sc = b.scratch
    mo = b.w(f"{i}.attn_mask")
    Tm = l.params["attn_mask"].shape[0] if "attn_mask" in l.params else 0
    for w in range(P):
        h0, h1 = (heads[w], heads[w + 1]) if heads is not None else (0, l.heads)
        r = rows_of(w, P) if heads is None else {"lo": 0, "hi": rows_of(P - 1, P)["hi"]}
        b.emit(w, ATTN, q=offs[0], k=offs[1], v=offs[2], ld=ld, hs=l.hs, meta=meta.out.off,
               meta_ld=meta.out.ld or meta.out.width, h0=h0, h1=h1, dh=l.dh, out=out.off, out_ld=out.ld or out.width,
               scale=b.w(f"{i}.scale"), mask=mo, mask_ld=Tm, causal=int(l.causal), q_lo=r["lo"], q_hi=r["hi"],
               scratch=sc["conv"] + b.wids[w] * sc["conv_per"], scratch_floats=sc["conv_per"])
    info["flops"] = 4 * l.heads * l.dh * l.T  # per token, at full length
    if heads is not None:
        info["partition"] = "heads (all tokens)"
        info["slices"] = [f"heads {heads[w]}:{heads[w + 1]}" for w in range(P)]
        b.set_cur(out, "cols", [h * l.dh for h in heads])
    else:
        info["partition"] = "query token rows (all heads)"
        info["slices"] = [f"queries {w}/{P}..{w + 1}/{P}" for w in range(P)]
        b.set_cur(out, "rows" if P > 1 else "all")


def emit(b, op, info):
    (attention if isinstance(op.layer, _Attention) else lookup)(b, op, info)


def attention_us(s, cnt, n, rates) -> float:
    """4 dh flops per (query, key, head), keys ~ min(rows, T), at about a quarter of the GEMM rate."""
    q = rows(cnt, s[ATTN.q_lo], s[ATTN.q_hi])
    T = s[ATTN.scratch_floats] // (2 * s[ATTN.dh] + QB)
    flops = 4.0 * q * min(cnt, T) * s[ATTN.dh] * (s[ATTN.h1] - s[ATTN.h0])
    return flops / (rates.gflops * 250.0)


def lookup_us(s, cnt, n, rates) -> float:
    return streaming_step_us(s, cnt, rates, read=8.0)


def tensors(op, before) -> dict:
    l = op.layer
    if isinstance(l, _Attention):
        t = {"scale": np.array([l.scale], np.float32)}
        if "attn_mask" in l.params:
            t["attn_mask"] = l.params["attn_mask"]
        return t
    return dict(l.params)


def scratch(op, before) -> int:
    """Attention: one sequence's keys and values transposed and QB rows of scores."""
    l = op.layer
    return (2 * l.dh + QB) * l.T if isinstance(l, _Attention) else 0


LAYERS = (_Lookup, _Attention)
COSTS = {ATTN.code: attention_us, EMBED.code: lookup_us}
CROSSES_ROWS = True  # attention reads the rows of other workers (plan.py: slots reused after a barrier)
