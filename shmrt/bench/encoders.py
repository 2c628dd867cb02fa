"""The benchmark's transformer encoder workloads (in --full runs, or named with --workloads):

- ``bert-mini`` (4 layers, hidden 256, 4 heads, intermediate 1024) and ``bert-base`` (12, 768, 12,
  3072): BERT (word + position + token type embeddings, LayerNorm, post-norm encoder layers with exact
  GELU, the tanh pooler over the first token), vocabulary 30522, every sequence 128 tokens long;
  outputs last_hidden_state and pooler_output;
- ``sentences``: sentence embeddings (masked mean pooling) of bert-mini for 16 sentences whose
  lengths are drawn uniformly from 8..128 (seeded), padded to 128 with the attention mask; and shmrt
  on the same 16 sentences every one 128 long, so the gain of computing only the real tokens reads
  off the table (the target: the mixed batch in at most 0.6 x the time of the all-128 batch).

Every implementation computes from the same float32 weights, named as PyTorch's state_dict:
shmrt's graph (shmrt.Embedding, PositionalEmbedding, TransformerEncoder, ...); torch, an nn.Module
of nn.Embedding, nn.TransformerEncoder(batch_first=True, norm_first=False, activation="gelu") and
an nn.Linear pooler (float32, eval, inference_mode, N threads: what a torch user writes; padding
as src_key_padding_mask; enable_nested_tensor=False, the faster of torch's two fast paths here);
ONNX Runtime, that module exported by torch.onnx.export(dynamo=False) at N intra-op threads; numpy,
the float32 pass of shmrt.ir.reference at N BLAS threads.  Each is checked against the float64
reference on the real tokens (rel err <= TOL) before it is timed.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np

import shmrt
from shmrt.bench import report
from shmrt.bench.peers import Impl, Skip, ort_session, torch_threads
from shmrt.bench.timing import MODES, interleaved, rel_err
from shmrt.bench.workloads import Workload
from shmrt.ir import layers as L
from shmrt.ir import reference

TOL = 1e-4  # float32 through up to 12 layers, against float64 (the other workloads: 1e-5)
EPS = 1e-12  # BERT's layer_norm_eps
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ALL128 = " all-128"  # suffix of the strategy of shmrt's row on the sentences padded to full length


@dataclass(frozen=True)
class Bert:
    layers: int
    hidden: int
    heads: int
    ff: int
    vocab: int = 30522
    seq: int = 128
    types: int = 2
    seed: int = 0


CONFIGS = {"bert-mini": Bert(4, 256, 4, 1024, seed=1250), "bert-base": Bert(12, 768, 12, 3072, seed=1251)}


@dataclass
class EncoderWorkload(Workload):
    config: Bert = None
    pooling: str = "first"  # "first": last_hidden_state + pooler_output; "mean": the sentence embedding only
    lengths: tuple = ()  # the sentences' lengths (pooling "mean"); () = every sequence full length
    weights: dict = field(default=None, repr=False)  # built on first use (bert-base: 420 MiB)


def weights(c: Bert) -> dict:
    """Seeded random float32 weights by the torch module's state_dict names: projections and
    embeddings N(0, 1/fan_in) (attention that is not uniform), LayerNorm weights near 1."""
    rng = np.random.default_rng(c.seed)
    D, F = c.hidden, c.ff

    def normal(*shape, std=None):
        std = 1 / np.sqrt(shape[-1]) if std is None else std
        return (rng.standard_normal(shape, np.float32) * np.float32(std)).astype(np.float32)

    def norm(prefix):
        return {prefix + "weight": 1 + normal(D, std=0.1), prefix + "bias": normal(D, std=0.1)}

    w = {"word.weight": normal(c.vocab, D, std=1), "position.weight": normal(c.seq, D, std=1),
         "token_type.weight": normal(c.types, D, std=1), **norm("norm.")}
    for i in range(c.layers):
        p = f"encoder.layers.{i}."
        w.update({p + "self_attn.in_proj_weight": normal(3 * D, D),
                  p + "self_attn.in_proj_bias": normal(3 * D, std=0.1),
                  p + "self_attn.out_proj.weight": normal(D, D), p + "self_attn.out_proj.bias": normal(D, std=0.1),
                  p + "linear1.weight": normal(F, D), p + "linear1.bias": normal(F, std=0.1),
                  p + "linear2.weight": normal(D, F), p + "linear2.bias": normal(D, std=0.1),
                  **norm(p + "norm1."), **norm(p + "norm2.")})
    w["pooler.weight"], w["pooler.bias"] = normal(D, D), normal(D, std=0.1)
    return w


def graph(c: Bert, w: dict, pooling="first"):
    """shmrt's graph of the encoder, from the weights by name; inputs INPUTS."""
    T, D = c.seq, c.hidden
    ids, am, tt = (L.Input((T,), name=n) for n in INPUTS)
    h = L.PositionalEmbedding(T, D, weight=w["position.weight"])(L.Embedding(c.vocab, D, weight=w["word.weight"])(ids))
    h = L.Add()(h, L.Embedding(c.types, D, weight=w["token_type.weight"])(tt))
    h = L.LayerNorm(D, eps=EPS, weight=w["norm.weight"], bias=w["norm.bias"])(h)
    pad = L.PaddingMask()(am)
    layer = L.TransformerEncoderLayer(D, c.heads, c.ff, dropout=0.0, activation="gelu", layer_norm_eps=EPS,
                                      **{k[len("encoder.layers.0."):]: v for k, v in w.items()
                                         if k.startswith("encoder.layers.0.")})
    y = L.TransformerEncoder(layer, c.layers, **{k[len("encoder."):]: v for k, v in w.items()
                                                 if k.startswith("encoder.")})(h, pad)
    if pooling == "mean":
        return L.Graph([ids, am, tt], {"sentence_embedding": L.MaskedMeanPool()(y, pad)})
    pooled = L.Tanh()(L.Linear(D, D, weight=w["pooler.weight"], bias=w["pooler.bias"])(L.FirstToken()(y, pad)))
    return L.Graph([ids, am, tt], {"last_hidden_state": y, "pooler_output": pooled})


def outputs(pooling):
    return ("sentence_embedding",) if pooling == "mean" else ("last_hidden_state", "pooler_output")


def torch_module(c: Bert, w: dict, pooling="first"):
    """The same encoder written from torch.nn pieces, float32, eval, the weights loaded by name."""
    try:
        import torch
    except ImportError:
        raise Skip("torch is not installed (pip install torch==2.13.0)")
    nn = torch.nn

    class BertEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            D = c.hidden
            self.word, self.position = nn.Embedding(c.vocab, D), nn.Embedding(c.seq, D)
            self.token_type, self.norm = nn.Embedding(c.types, D), nn.LayerNorm(D, eps=EPS)
            layer = nn.TransformerEncoderLayer(D, c.heads, c.ff, dropout=0.0, activation="gelu", layer_norm_eps=EPS,
                                               batch_first=True, norm_first=False)
            # the dense fast path (torch._transformer_encoder_layer_fwd, the mask applied): torch 2.13's
            # nested-tensor path (the default) ran bert-mini at batch 16 15-25x slower on the bench machine
            self.encoder = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
            self.pooler = nn.Linear(D, D)

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.word(input_ids) + self.position.weight[:input_ids.shape[1]] + self.token_type(token_type_ids)
            y = self.encoder(self.norm(h), src_key_padding_mask=attention_mask == 0)
            if pooling == "mean":
                keep = attention_mask.unsqueeze(-1).to(y.dtype)
                return (y * keep).sum(1) / keep.sum(1).clamp(min=1)
            return y, torch.tanh(self.pooler(y[:, 0]))

    m = BertEncoder()
    m.load_state_dict({k: torch.from_numpy(v) for k, v in w.items()})
    return m.float().eval()


def torch_peer(c, w, pooling, threads):
    import torch
    m = torch_module(c, w, pooling)
    names = outputs(pooling)

    def run(x):
        with torch.inference_mode():
            y = m(*(torch.from_numpy(np.ascontiguousarray(x[k])) for k in INPUTS))
        return dict(zip(names, (y,) if pooling == "mean" else y))
    return Impl(lambda x: {k: v.numpy() for k, v in run(x).items()}, scope=lambda: torch_threads(threads))


def onnx_bytes(c, w, pooling):
    """The torch module exported by the TorchScript exporter (dynamo=False), batch size dynamic."""
    import torch
    m = torch_module(c, w, pooling)
    x = tuple(torch.ones((2, c.seq), dtype=torch.int64) for _ in INPUTS)
    f = io.BytesIO()
    names = outputs(pooling)
    with warnings.catch_warnings():  # tracer and deprecation warnings of the exporter
        warnings.simplefilter("ignore")
        torch.onnx.export(m, x, f, input_names=list(INPUTS), output_names=list(names), dynamo=False,
                          dynamic_axes={k: {0: "N"} for k in (*INPUTS, *names)}, opset_version=17)
    return f.getvalue()


def onnxruntime_peer(c, w, pooling, threads):
    try:
        import onnxruntime  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        raise Skip(f"{e.name} is not installed (the ONNX model is exported from the torch module)")
    sess = ort_session(onnx_bytes(c, w, pooling), threads)
    names = outputs(pooling)
    return Impl(lambda x: dict(zip(names, sess.run(list(names), {k: np.asarray(x[k], np.int64) for k in INPUTS}))))


def numpy_peer(g, threads):
    from threadpoolctl import threadpool_limits
    return Impl(lambda x: reference.forward(g, x, np.float32),
                scope=lambda: threadpool_limits(threads, user_api="blas"))


PEERS = {"numpy": lambda c, w, g, pooling, n: numpy_peer(g, n),
         "onnxruntime": lambda c, w, g, pooling, n: onnxruntime_peer(c, w, pooling, n),
         "torch": lambda c, w, g, pooling, n: torch_peer(c, w, pooling, n)}


def inputs(c: Bert, b: int, lengths=(), seed=0) -> dict:
    """b sequences of random ids and token types (a first and a second segment); lengths: the real
    tokens of each (the attention mask; the rest is padding, id 0), else all full length."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, c.vocab, (b, c.seq))
    n = np.asarray(lengths if len(lengths) else [c.seq] * b)
    keep = np.arange(c.seq)[None, :] < n[:, None]
    types = (np.arange(c.seq)[None, :] >= (n[:, None] + 1) // 2).astype(np.int64)
    return {"input_ids": np.where(keep, ids, 0), "attention_mask": keep.astype(np.int64),
            "token_type_ids": np.where(keep, types, 0)}


def error(y: dict, ref: dict, mask) -> float:
    """The worst rel_err of the outputs, a sequence output on its real tokens only."""
    keep = np.asarray(mask) != 0
    return max(rel_err(np.asarray(y[k])[keep] if ref[k].ndim == 3 else np.asarray(y[k]),
                       ref[k][keep] if ref[k].ndim == 3 else ref[k]) for k in ref)


def _check(name, s, impl, x, ref, common, n, b):
    with impl.scope():
        err = error(impl.run(x), ref, x["attention_mask"])
    return dict(common, impl=name, workers=n, strategy=s, batch=b, rel_err=err, ok=err <= TOL)


def run(wl, workers, strategies, batches, mode, peers, progress, rng):
    """The harness's run_workload for an encoder workload (Workload.runner): per worker count N and
    batch, shmrt at N workers per strategy (the control compiled twice: the A/A control) and each peer
    at N threads, checked against float64, then timed interleaved; sentences also time shmrt on the
    same batch all 128 long."""
    rounds, min_time = MODES[mode][:2]
    c = wl.config
    w = wl.weights = wl.weights or weights(c)
    g = graph(c, w, wl.pooling)
    nbytes = sum(a.nbytes for l in g.layers for a in l.params.values())
    rows, notes = [], {}
    common = dict(workload=wl.name, unit=wl.unit)
    control = "auto" if "auto" in strategies else strategies[0]
    xs = {b: inputs(c, b, wl.lengths if wl.lengths else ()) for b in batches}
    refs = {b: reference.forward(g, xs[b]) for b in batches}
    full = {b: inputs(c, b) for b in batches} if wl.lengths else {}
    full_refs = {b: reference.forward(g, full[b]) for b in full}
    for n in workers:
        progress(f"{wl.name}: starting {n} worker(s)", step=False)
        with shmrt.Runtime(workers=None if n == shmrt.Runtime.default_workers() else n) as rt:
            built, skipped = {}, []
            for peer, build in (PEERS.items() if peers else []):
                name = f"{peer} ({max(n, 1)} thr)"
                try:
                    built[(name, "-")] = (build(c, w, g, wl.pooling, max(n, 1)), True)
                except Skip as e:
                    skipped.append(dict(common, impl=name, workers=n, strategy="-", skipped=str(e), ok=True,
                                        rel_err=float("nan")))
            cms = {s: rt.compile(g, strategy=s.removesuffix(report.AA), max_batch=wl.max_batch, max_seq_len=c.seq)
                   for s in [*strategies, control + report.AA]}
            try:
                for b in batches:
                    impls, timed, group = dict(built), {}, []
                    for s, cm in cms.items():
                        impls[("shmrt", s)] = (Impl(cm), False)
                    if wl.lengths:
                        cm = cms[control]
                        impls[("shmrt", control + ALL128)] = (Impl(lambda _, cm=cm, x=full[b]: cm(x)), False)
                    for (name, s), (impl, spins) in impls.items():
                        x, ref = (full[b], full_refs[b]) if s.endswith(ALL128) else (xs[b], refs[b])
                        row = _check(name, s, impl, x, ref, common, n, b)
                        if name == "shmrt":
                            cm = cms[s.removesuffix(ALL128)]
                            row["plan"] = cm.plan.strategy_for(cm.strategy, int(np.sum(x["attention_mask"])))
                            if s.endswith(ALL128):
                                row["variant"] = "all 128"  # not compared with the peers (report.versus_best_peer)
                        if row["ok"]:
                            timed[(name, s)] = (impl, spins)
                        group.append(row)
                    progress(f"{wl.name}: N={n} batch {b:,}: {len(timed)} implementations")
                    ts = interleaved(timed, xs[b], rounds, min_time, rng, 0.2 if mode == "full" else 0.05)
                    base = ts.get((f"numpy ({max(n, 1)} thr)", "-"))
                    base = float(np.median(base)) if base is not None else None
                    for row in group:
                        t = ts.get((row["impl"], row["strategy"]))
                        if t is not None:
                            row.update(report.stats(t), items_per_s=b / float(np.median(t)),
                                       speedup=base / float(np.median(t)) if base else float("nan"))
                    rows += group
                    notes.update(_speedup_note(wl, group, n, b, control))
                rows += [dict(r, batch=b) for r in skipped for b in batches]
            finally:
                for cm in cms.values():
                    cm.close()
                for impl, _ in built.values():
                    impl.close()
    return dict(rows=rows, description=f"{wl.description}, {nbytes / 2**20:.1f} MiB float32 weights", notes=notes)


def _speedup_note(wl, group, n, b, control):
    """sentences: shmrt's time on the mixed lengths over its time on the same batch all 128 long."""
    mine = {r["strategy"]: r for r in group if r["impl"] == "shmrt" and "p50_ms" in r}
    mixed, full = mine.get(control), mine.get(control + ALL128)
    if not wl.lengths or mixed is None or full is None:
        return {}
    ratio = mixed["p50_ms"] / full["p50_ms"]
    real = sum(wl.lengths)
    return {f"{wl.name} N={n} b={b}": (
        f"shmrt {control}: mixed lengths ({real:,} real tokens of {b * wl.config.seq:,}, "
        f"{real / (b * wl.config.seq):.2f}) p50 {mixed['p50_ms']:.2f} ms / all 128 p50 {full['p50_ms']:.2f} ms = "
        f"{ratio:.2f} (target <= 0.6: {'met' if ratio <= 0.6 else 'NOT met'})")}


def _bert(name):
    c = CONFIGS[name]
    return EncoderWorkload(name, f"BERT, {c.layers} layers, hidden {c.hidden}, {c.heads} heads, "
                                 f"intermediate {c.ff}, vocab {c.vocab}, every sequence {c.seq} tokens "
                                 f"(last_hidden_state + pooler_output)", None, (c.seq,), (1, 16), 16, "sequences",
                           runner=run, config=c)


def _sentences():
    c = CONFIGS["bert-mini"]
    lengths = tuple(int(v) for v in np.random.default_rng(1252).integers(8, c.seq + 1, 16))
    return EncoderWorkload("sentences", f"bert-mini sentence embeddings (masked mean pooling) of 16 "
                                        f"sentences of lengths {min(lengths)}..{max(lengths)} (uniform, seeded; "
                                        f"{sum(lengths):,} real tokens) padded to {c.seq}; shmrt also on the "
                                        f"same batch all {c.seq} long ('{ALL128.strip()}')",
                           None, (c.seq,), (16,), 16, "sentences", fixed_batch=True, runner=run, config=c,
                           pooling="mean", lengths=lengths)


# in --full runs, or named: a default run stays near a minute
ENCODERS = {"bert-mini": lambda: _bert("bert-mini"), "bert-base": lambda: _bert("bert-base"),
            "sentences": _sentences}
