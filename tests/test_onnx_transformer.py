"""Transformer encoders exported by torch.onnx.export, read by shmrt.load (the ONNX sequence importer,
shmrt/frontends/onnx/seq_*.py): an nn.TransformerEncoder wrapped in a module of (src,
src_key_padding_mask) -- both norm_first, relu and gelu, with and without a final norm -- and a
Hugging Face BertModel behind a wrapper of (input_ids, attention_mask, token_type_ids) returning
(last_hidden_state, pooler_output), each exported by the legacy exporter (dynamo=False) and by the
dynamo exporter, with dynamic batch and sequence axes.  The weights are random and float32-exact;
torch in float64 is the reference (its plain path: dropout 0, real tokens only, right padding), and
shmrt's float64 numpy reference (<= 1e-6), the runtime (<= 1e-4) and onnxruntime on the same file
are compared against it at several lengths.  Then variants users export (no token_type_ids, eager
attention, opset 14, a fixed length, DistilBERT), an attention layer written by hand, and what is
refused, naming the node, op and why."""
import copy
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
tf = pytest.importorskip("transformers")
nn = torch.nn

import shmrt  # noqa: E402
from reference import forward, rel_err  # noqa: E402
from sequences import f32_double, padding  # noqa: E402
from shmrt.frontends.onnx import UnsupportedONNX  # noqa: E402

REF_TOL, RT_TOL, ORT_TOL = 1e-6, 1e-4, 1e-4
D, H, F, L_EXPORT = 16, 4, 32, 16
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]
worst = {}


@pytest.fixture(scope="module")
def rt():
    with shmrt.Runtime(workers=2) as r:
        yield r


def _record(name, e, tol):
    worst[name] = max(worst.get(name, 0.0), e)
    print(f"{name}: {e:.2e}")
    assert e <= tol, f"{name}: relative error {e:.3g} > {tol}"


def _real(y, ref, keep):
    """The worst rel_err of one sequence at its real tokens (y, ref [N, L, D]; keep [N, L])."""
    return max(rel_err(y[i][keep[i]], ref[i][keep[i]]) for i in range(len(keep)) if keep[i].any())


def _export(m, args, names, outs, path, dynamo):
    """torch.onnx.export with the batch and sequence axes of every input (and output) dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            b, t = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=64)
            torch.onnx.export(m, args, path, input_names=names, output_names=outs, dynamo=True,
                              dynamic_shapes=tuple({0: b, 1: t} for _ in args), verbose=False)
        else:
            axes = {n: {0: "batch", 1: "seq"} for n in names + outs[:1]}
            axes.update({o: {0: "batch"} for o in outs[1:]})
            torch.onnx.export(m, args, path, input_names=names, output_names=outs, dynamo=False, dynamic_axes=axes,
                              opset_version=17)
    return str(path)


# -- (a) nn.TransformerEncoder behind (src, src_key_padding_mask) ------------------------------------------------

class Encoder(nn.Module):
    def __init__(self, norm_first, activation, final_norm):
        super().__init__()
        layer = nn.TransformerEncoderLayer(D, H, F, dropout=0.0, activation=activation, batch_first=True,
                                           norm_first=norm_first)
        self.enc = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(D) if final_norm else None,
                                         enable_nested_tensor=False)

    def forward(self, src, src_key_padding_mask):
        return self.enc(src, src_key_padding_mask=src_key_padding_mask)


ENCODERS = [("legacy", False, "relu", False), ("legacy", True, "gelu", True), ("legacy", False, "gelu", True),
            ("legacy", True, "relu", False), ("dynamo", False, "gelu", False), ("dynamo", True, "relu", True)]


@pytest.mark.parametrize("exporter, norm_first, activation, final_norm", ENCODERS)
def test_torch_encoder(tmp_path, rt, exporter, norm_first, activation, final_norm):
    m = f32_double(Encoder(norm_first, activation, final_norm), seed=len(worst))
    ref_m = m.train()  # the plain path (dropout 0): torch's eval fast path leaves other values at padding
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, L_EXPORT, D)).astype(np.float32)
    pad = padding([L_EXPORT, 5], L_EXPORT)
    path = _export(copy.deepcopy(m).float().eval(), (torch.from_numpy(x), torch.from_numpy(pad)),
                   ["src", "src_key_padding_mask"], ["out"], tmp_path / "enc.onnx", exporter == "dynamo")
    g = shmrt.load(path)
    assert [type(n.layer).__name__ for n in g.nodes][0] == "TransformerEncoder", g
    assert [n for n, _ in g.inputs] == ["src", "src_key_padding_mask"]
    # the legacy exporter bakes the traced length into nn.MultiheadAttention's key Reshape: T is that length
    assert g.inputs[0][1] == ((L_EXPORT, D) if exporter == "legacy" else (512, D))
    sess = ort.InferenceSession(path)
    cm = rt.compile(g, max_batch=4, max_seq_len=L_EXPORT)
    name = f"encoder {exporter} norm_first={norm_first} {activation} final_norm={final_norm}"
    for L, lens in ((L_EXPORT, [16, 9, 3, 12]), (10, [10, 1, 7]), (5, [5, 2])):
        src = rng.standard_normal((len(lens), L, D)).astype(np.float32)
        pad = padding(lens, L)
        keep = ~pad
        with torch.no_grad():
            want = ref_m(torch.from_numpy(src).double(), torch.from_numpy(pad)).numpy()
        _record(f"{name}: reference", _real(forward(g, [src, pad]), want, keep), REF_TOL)
        got = cm(src, pad)
        assert not np.isnan(got).any() and np.all(got[pad] == 0)
        _record(f"{name}: runtime", _real(got, want, keep), RT_TOL)
        if exporter == "dynamo" or L == L_EXPORT:  # a legacy export runs in onnxruntime at its traced length only
            out = sess.run(None, {"src": src, "src_key_padding_mask": pad})[0]
            _record(f"{name}: onnxruntime", _real(out, want, keep), ORT_TOL)
            _record(f"{name}: runtime vs onnxruntime", _real(got, out, keep), ORT_TOL)


# -- (b) Hugging Face BertModel behind (input_ids, attention_mask, token_type_ids) --------------------------------

class Bert(nn.Module):
    def __init__(self):
        super().__init__()
        self.m = tf.BertModel(tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=64, vocab_size=100, max_position_embeddings=64))

    def forward(self, input_ids, attention_mask, token_type_ids):
        o = self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return o.last_hidden_state, o.pooler_output


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_bert(tmp_path, rt, exporter):
    m = f32_double(Bert(), seed=7)
    rng = np.random.default_rng(1)
    args = (rng.integers(0, 100, (2, 8)), (~padding([8, 5], 8)).astype(np.int64), rng.integers(0, 2, (2, 8)))
    path = _export(copy.deepcopy(m).float().eval(), tuple(torch.from_numpy(a) for a in args),
                   ["input_ids", "attention_mask", "token_type_ids"], ["last_hidden_state", "pooler_output"],
                   tmp_path / "bert.onnx", exporter == "dynamo")
    g = shmrt.load(path)
    assert g.inputs == [("input_ids", (64,)), ("attention_mask", (64,)), ("token_type_ids", (64,))]
    assert g.outputs == ["last_hidden_state", "pooler_output"]
    kinds = [type(n.layer).__name__ for n in g.nodes]
    assert kinds == ["Embedding", "Embedding", "Add", "PositionalEmbedding", "LayerNorm", "PaddingMask",
                     "TransformerEncoder", "FirstToken", "Linear", "Tanh"], kinds
    direct = shmrt.load(m.m, max_seq_len=64)  # the same model converted from torch (frontends/torch/hf.py)
    sess = ort.InferenceSession(path)
    cm = rt.compile(g, max_batch=4, max_seq_len=16)
    for L, lens in ((16, [16, 9, 3, 12]), (11, [11, 1, 6]), (4, [4, 2])):
        ids, types = rng.integers(0, 100, (len(lens), L)), rng.integers(0, 2, (len(lens), L))
        am = (~padding(lens, L)).astype(np.int64)
        keep = am.astype(bool)
        with torch.no_grad():
            want = [t.numpy() for t in m(*(torch.from_numpy(a) for a in (ids, am, types)))]
        feeds = {"input_ids": ids, "attention_mask": am, "token_type_ids": types}
        ref, same = forward(g, feeds), forward(direct, feeds)
        _record(f"BERT {exporter}: reference", max(_real(ref["last_hidden_state"], want[0], keep),
                                                   rel_err(ref["pooler_output"], want[1])), REF_TOL)
        _record(f"BERT {exporter}: as converted from torch", max(
            _real(ref["last_hidden_state"], same["last_hidden_state"], keep),
            rel_err(ref["pooler_output"], same["pooler_output"])), 1e-12)
        got = cm(ids, am, types)
        assert set(got) == {"last_hidden_state", "pooler_output"}
        assert np.all(got["last_hidden_state"][~keep] == 0)
        _record(f"BERT {exporter}: runtime", max(_real(got["last_hidden_state"], want[0], keep),
                                                 rel_err(got["pooler_output"], want[1])), RT_TOL)
        out = sess.run(None, feeds)
        _record(f"BERT {exporter}: onnxruntime", max(_real(out[0], want[0], keep), rel_err(out[1], want[1])),
                ORT_TOL)
        by_name = cm(feeds)
        assert np.array_equal(by_name["pooler_output"], got["pooler_output"])


class TextModel(nn.Module):
    """A transformers encoder behind a wrapper of some of (input_ids, attention_mask, token_type_ids)."""

    def __init__(self, model, token_types, pooler):
        super().__init__()
        self.m, self.token_types, self.pooler = model, token_types, pooler

    def forward(self, input_ids, attention_mask, *token_type_ids):
        kw = {"token_type_ids": token_type_ids[0]} if self.token_types else {}
        o = self.m(input_ids=input_ids, attention_mask=attention_mask, **kw)
        return (o.last_hidden_state, o.pooler_output) if self.pooler else o.last_hidden_state


def _bert_config(**kw):
    return tf.BertConfig(**{**dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                   vocab_size=100, max_position_embeddings=64), **kw})


VARIANTS = {  # name: (model, token_type_ids given, pooler, exporter, export options)
    "bert without token_type_ids (its buffered zeros)": (lambda: tf.BertModel(_bert_config()), False, True,
                                                         "legacy", {}),
    "bert eager attention, relu, opset 14 (LayerNorm expanded)": (
        lambda: tf.BertModel(_bert_config(hidden_act="relu", attn_implementation="eager")), True, True, "legacy",
        {"opset_version": 14}),
    "bert of a fixed length (position embeddings folded)": (lambda: tf.BertModel(_bert_config()), True, True,
                                                             "static", {}),
    "distilbert": (lambda: tf.DistilBertModel(tf.DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4,
                                                                  hidden_dim=64, max_position_embeddings=64)),
                   False, False, "legacy", {}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hugging_face_variants(tmp_path, rt, variant):
    make, types, pooler, exporter, opts = VARIANTS[variant]
    m = f32_double(TextModel(make(), types, pooler), seed=11)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if types else [])
    outs = ["last_hidden_state"] + (["pooler_output"] if pooler else [])
    rng = np.random.default_rng(2)
    L = 12
    args = [rng.integers(0, 100, (2, L)), (~padding([L, 7], L)).astype(np.int64)] + \
        ([rng.integers(0, 2, (2, L))] if types else [])
    path = str(tmp_path / "m.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = {} if exporter == "static" else {n: {0: "batch", 1: "seq"} for n in names + outs[:1]}
        torch.onnx.export(copy.deepcopy(m).float().eval(), tuple(torch.from_numpy(a) for a in args), path,
                          input_names=names, output_names=outs, dynamo=False, dynamic_axes=axes,
                          **{"opset_version": 17, **opts})
    g = shmrt.load(path)
    assert [n for n, _ in g.inputs] == names and g.inputs[0][1] == ((L,) if exporter == "static" else (64,))
    assert "TransformerEncoder" in [type(n.layer).__name__ for n in g.nodes]
    sess = ort.InferenceSession(path)
    cm = rt.compile(g, max_batch=4, max_seq_len=L)
    for lens in ([12, 7], [5, 1], [3, 12]):  # two sequences: a fixed-length export has a fixed batch too
        ids, am = rng.integers(0, 100, (len(lens), L)), (~padding(lens, L)).astype(np.int64)
        xs = [ids, am] + ([rng.integers(0, 2, (len(lens), L))] if types else [])
        keep = am.astype(bool)
        with torch.no_grad():
            want = m(*(torch.from_numpy(a) for a in xs))
        want = [t.numpy() for t in want] if pooler else [want.numpy()]
        ref, got, out = forward(g, xs), cm(*xs), sess.run(None, dict(zip(names, xs)))
        ref, got = ([r[o] for o in outs] if pooler else [r] for r in (ref, got))

        def err(ys):
            return max([_real(ys[0], want[0], keep)] + [rel_err(y, w) for y, w in zip(ys[1:], want[1:])])
        _record(f"{variant}: reference", err(ref), REF_TOL)
        _record(f"{variant}: runtime", err(got), RT_TOL)
        _record(f"{variant}: onnxruntime", err(out), ORT_TOL)


class Handmade(nn.Module):
    """A post-norm encoder layer written by hand: separate q / k / v Linears, heads by view / transpose, scores
    divided by head_dim (not its square root: folded into the query weights), masked_fill of the padding keys,
    Softmax, the output Linear, a GELU feed-forward block."""

    def __init__(self):
        super().__init__()
        self.emb, self.n1, self.n2 = nn.Embedding(50, D), nn.LayerNorm(D), nn.LayerNorm(D)
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))
        self.f1, self.f2 = nn.Linear(D, F), nn.Linear(F, D)

    def forward(self, input_ids, attention_mask):
        x = self.emb(input_ids)
        n, t, _ = x.shape

        def heads(a):
            return a.view(n, t, H, D // H).transpose(1, 2)
        s = heads(self.q(x)) @ heads(self.k(x)).transpose(-1, -2) / (D // H)
        s = s.masked_fill(attention_mask[:, None, None, :] == 0, float("-inf"))
        a = (torch.softmax(s, -1) @ heads(self.v(x))).transpose(1, 2).reshape(n, t, D)
        h = self.n1(x + self.o(a))
        return self.n2(h + self.f2(nn.functional.gelu(self.f1(h))))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_a_handwritten_attention_layer(tmp_path, exporter):
    m = f32_double(Handmade(), seed=5)
    rng = np.random.default_rng(3)
    args = (rng.integers(0, 50, (2, 9)), (~padding([9, 4], 9)).astype(np.int64))
    path = _export(copy.deepcopy(m).float().eval(), tuple(torch.from_numpy(a) for a in args),
                   ["input_ids", "attention_mask"], ["y"], tmp_path / "h.onnx", exporter == "dynamo")
    g = shmrt.load(path, max_seq_len=16)
    assert [type(n.layer).__name__ for n in g.nodes] == ["Embedding", "PaddingMask", "TransformerEncoderLayer"]
    for lens in ([16, 3, 8], [11, 1]):
        ids, am = rng.integers(0, 50, (len(lens), 16)), (~padding(lens, 16)).astype(np.int64)
        with torch.no_grad():
            want = m(torch.from_numpy(ids), torch.from_numpy(am)).numpy()
        _record(f"hand-written layer {exporter}: reference", _real(forward(g, [ids, am]), want, am == 1), REF_TOL)
        out = ort.InferenceSession(path).run(None, {"input_ids": ids, "attention_mask": am})[0]
        _record(f"hand-written layer {exporter}: onnxruntime", _real(out, want, am == 1), ORT_TOL)


def test_worst_errors():
    """Run last: the worst error per comparison (pytest -s shows them)."""
    for k, v in sorted(worst.items()):
        print(f"  {k}: {v:.2e}")


# -- refusals and options -------------------------------------------------------------------------------------------

def _refusal(path, **kw):
    with pytest.raises(UnsupportedONNX) as e:
        shmrt.load(path, **kw)
    msg = str(e.value)
    print("\n" + msg)
    assert msg.startswith("ONNX node ") and ", op " in msg, msg
    return msg


class Rotary(nn.Module):
    """Self-attention with rotary position embeddings (q and k rotated by Sin / Cos of the positions)."""

    def __init__(self):
        super().__init__()
        self.emb, self.qkv, self.out = nn.Embedding(50, D), nn.Linear(D, 3 * D), nn.Linear(D, D)

    def forward(self, input_ids, attention_mask):
        x = self.emb(input_ids)
        n, t, _ = x.shape
        q, k, v = (a.view(n, t, H, D // H).transpose(1, 2) for a in self.qkv(x).chunk(3, dim=-1))
        pos = torch.arange(t, dtype=torch.float32)[:, None] * (0.5 ** torch.arange(D // H // 2))[None]
        cos, sin = torch.cat([pos.cos()] * 2, -1), torch.cat([pos.sin()] * 2, -1)

        def rot(a):
            a1, a2 = a.chunk(2, dim=-1)
            return a * cos + torch.cat([-a2, a1], -1) * sin
        mask = (attention_mask[:, None, None, :] == 0).float() * -1e9
        w = torch.softmax(rot(q) @ rot(k).transpose(-1, -2) / (D // H) ** 0.5 + mask, -1)
        return self.out((w @ v).transpose(1, 2).reshape(n, t, D))


def test_rotary_embeddings_are_refused_naming_cos(tmp_path):
    ids, am = torch.randint(0, 50, (2, 6)), torch.ones(2, 6, dtype=torch.int64)
    path = _export(Rotary().eval(), (ids, am), ["input_ids", "attention_mask"], ["y"], tmp_path / "r.onnx", False)
    msg = _refusal(path)
    assert "op Mul" in msg and "Cos" in msg and "rotary" in msg, msg


class Causal(Encoder):
    def forward(self, src, src_key_padding_mask):
        return self.enc(src, mask=nn.Transformer.generate_square_subsequent_mask(src.size(1)),
                        src_key_padding_mask=src_key_padding_mask, is_causal=True)


def test_a_causal_mask_is_refused(tmp_path):
    x, pad = torch.randn(2, 6, D), torch.zeros(2, 6, dtype=torch.bool)
    path = _export(Causal(False, "relu", False).eval(), (x, pad), ["src", "src_key_padding_mask"], ["out"],
                   tmp_path / "c.onnx", False)
    msg = _refusal(path)
    assert "causal" in msg, msg


def test_cross_attention_is_refused(tmp_path):
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.attn = nn.Embedding(50, D), nn.MultiheadAttention(D, H, batch_first=True)

        def forward(self, input_ids, other_ids):
            return self.attn(self.emb(input_ids), self.emb(other_ids), self.emb(other_ids), need_weights=False)[0]
    ids = torch.randint(0, 50, (2, 6))
    path = _export(Cross().eval(), (ids, ids), ["input_ids", "other_ids"], ["y"], tmp_path / "x.onnx", False)
    msg = _refusal(path)
    assert "cross-attention" in msg, msg


def test_max_seq_len(tmp_path):
    m = Encoder(False, "relu", False).eval()
    x, pad = torch.randn(2, 6, D), torch.zeros(2, 6, dtype=torch.bool)
    legacy = _export(m, (x, pad), ["src", "src_key_padding_mask"], ["out"], tmp_path / "l.onnx", False)
    assert shmrt.load(legacy).inputs[0][1] == (6, D)
    assert shmrt.load(legacy, max_seq_len=4).inputs[0][1] == (4, D)
    msg = _refusal(legacy, max_seq_len=7)
    assert "fixes the sequence length at 6" in msg and "dynamo=True" in msg, msg
    m = Bert().eval()
    args = tuple(torch.ones(1, 4, dtype=torch.int64) for _ in range(3))
    bert = _export(m, args, ["input_ids", "attention_mask", "token_type_ids"], ["last_hidden_state", "pooler_output"],
                   tmp_path / "b.onnx", False)
    assert shmrt.load(bert, max_seq_len=20).inputs[0][1] == (20,)
    with pytest.raises(ValueError, match="position embeddings have 64 rows"):
        shmrt.load(bert, max_seq_len=65)
    with pytest.raises(TypeError, match="max_seq_len applies to transformer encoders"):
        shmrt.load(_mlp(tmp_path), max_seq_len=4)


def _mlp(tmp_path):
    path = str(tmp_path / "mlp.onnx")
    torch.onnx.export(nn.Sequential(nn.Linear(4, 3), nn.Softmax(-1)).eval(), (torch.zeros(2, 4),), path,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False)
    return path
