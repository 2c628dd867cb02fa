"""Transformer encoders on the runtime, against PyTorch in float64: nn.TransformerEncoder (both
norm_first, relu and gelu, key padding masks, causal, a constant attention mask, a final norm)
and a BERT-style encoder written from nn pieces (token, position and type embeddings, pooler,
masked mean pooling); every strategy, 1-3 workers, several call lengths up to max_seq_len.
Only real tokens are compared; padding positions must be exactly 0 and nothing may be NaN."""
import numpy as np
import pytest

import shmrt

torch = pytest.importorskip("torch")
nn = torch.nn

T, D, H, F, V = 12, 32, 4, 48, 50
STRATEGIES = ["data", "model", "hybrid", "auto"]
TOL = 1e-4
worst = {}


@pytest.fixture(scope="module", params=[1, 2, 3], ids=lambda w: f"{w}workers")
def rt(request):
    with shmrt.Runtime(workers=request.param) as r:
        yield r


def _err(got, ref, keep):
    assert not np.isnan(got).any()
    return float(np.abs(got[keep] - ref[keep]).max() / max(np.abs(ref[keep]).max(), 1e-30))


def _record(name, e):
    worst[name] = max(worst.get(name, 0.0), e)
    assert e <= TOL, f"{name}: relative error {e:.3g} > {TOL}"


def _encoder(norm_first, activation, final_norm, seed):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(D, H, F, dropout=0.0, activation=activation, batch_first=True,
                                       norm_first=norm_first, layer_norm_eps=1e-6)
    enc = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(D, eps=1e-6) if final_norm else None,
                                enable_nested_tensor=False).train().double()  # dropout 0: the plain path
    # (torch's eval fast path gives NaN for a float attn_mask with a bool padding mask)
    with torch.no_grad():  # LayerNorm weights away from 1/0 so that a swapped name would show
        for name, p in enc.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    sd = {k: v.float().numpy() for k, v in enc.state_dict().items()}
    return enc, sd


def _shmrt_encoder(sd, norm_first, activation, final_norm, causal=False, attn_mask=None):
    layer = shmrt.TransformerEncoderLayer(D, H, F, activation=activation, norm_first=norm_first, layer_norm_eps=1e-6,
                                          is_causal=causal, attn_mask=attn_mask)
    enc = shmrt.TransformerEncoder(layer, 2, norm=shmrt.LayerNorm(D, eps=1e-6) if final_norm else None, **sd)
    x, m = shmrt.Input((T, D), name="src"), shmrt.Input((T,), name="src_key_padding_mask")
    return shmrt.Graph([x, m], enc(x, m))


def _batch(L, lens, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(lens), L, D)).astype(np.float32)
    pad = np.array([[t >= n for t in range(L)] for n in lens])
    return x, pad


@pytest.mark.parametrize("norm_first,activation,final_norm", [(False, "relu", False), (True, "gelu", True),
                                                              (False, "gelu", True)])
def test_encoder_with_padding_matches_torch(rt, norm_first, activation, final_norm):
    enc, sd = _encoder(norm_first, activation, final_norm, 1)
    g = _shmrt_encoder(sd, norm_first, activation, final_norm)
    for strategy in STRATEGIES:
        cm = rt.compile(g, strategy=strategy, max_batch=4)
        for L, lens in ((T, [T, 5, 9]), (7, [7, 1, 4, 6]), (1, [1])):
            x, pad = _batch(L, lens, L)
            with torch.no_grad():
                ref = enc(torch.from_numpy(x).double(), src_key_padding_mask=torch.from_numpy(pad)).numpy()
            y = cm(x, pad)
            assert y.shape == (len(lens), L, D)
            assert not y[pad].any(), "padding positions must be 0"
            _record(f"TransformerEncoder norm_first={norm_first} {activation}", _err(y, ref, ~pad))


def test_causal_and_constant_attention_mask_match_torch(rt):
    enc, sd = _encoder(False, "gelu", False, 2)
    causal = nn.Transformer.generate_square_subsequent_mask(T).double()
    band = np.where(np.abs(np.arange(T)[:, None] - np.arange(T)[None]) > 3, -np.inf, 0.0)
    for name, g, tmask in (("causal", _shmrt_encoder(sd, False, "gelu", False, causal=True), causal),
                           ("attn_mask", _shmrt_encoder(sd, False, "gelu", False, attn_mask=band),
                            torch.from_numpy(band))):
        for strategy in ("data", "model"):
            cm = rt.compile(g, strategy=strategy, max_batch=3)
            x, pad = _batch(T, [T, 8, 3], 5)
            with torch.no_grad():
                ref = enc(torch.from_numpy(x).double(), mask=tmask, src_key_padding_mask=torch.from_numpy(pad),
                          is_causal=name == "causal").numpy()
            _record(f"TransformerEncoder {name}", _err(cm(x, pad), ref, ~pad))


class _Bert(nn.Module):
    """A BERT-style encoder from nn pieces: embeddings (word + position + type), LayerNorm, post-norm
    GELU layers, a tanh pooler on the first token; and masked mean pooling."""

    def __init__(self):
        super().__init__()
        self.word, self.pos, self.segment = nn.Embedding(V, D), nn.Embedding(T, D), nn.Embedding(2, D)
        self.ln = nn.LayerNorm(D, eps=1e-12)
        layer = nn.TransformerEncoderLayer(D, H, F, dropout=0.0, activation="gelu", batch_first=True,
                                           layer_norm_eps=1e-12)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.pool = nn.Linear(D, D)

    def forward(self, ids, am, tt):
        pos = torch.arange(ids.shape[1])
        h = self.ln(self.word(ids) + self.pos(pos)[None] + self.segment(tt))
        y = self.enc(h, src_key_padding_mask=am == 0)
        keep = am[..., None].to(y.dtype)
        return y, torch.tanh(self.pool(y[:, 0])), (y * keep).sum(1) / keep.sum(1).clamp(min=1)


def _shmrt_bert(sd):
    ids, am, tt = (shmrt.Input((T,), name=n) for n in ("input_ids", "attention_mask", "token_type_ids"))
    h = shmrt.Add()(shmrt.PositionalEmbedding(T, D, weight=sd["pos.weight"])(shmrt.Embedding(V, D, weight=sd["word.weight"])(ids)),
                    shmrt.Embedding(2, D, weight=sd["segment.weight"])(tt))
    h = shmrt.LayerNorm(D, eps=1e-12, weight=sd["ln.weight"], bias=sd["ln.bias"])(h)
    pad = shmrt.PaddingMask()(am)
    layers = {k[len("enc."):]: v for k, v in sd.items() if k.startswith("enc.")}
    y = shmrt.TransformerEncoder(shmrt.TransformerEncoderLayer(D, H, F, activation="gelu", layer_norm_eps=1e-12), 2,
                                 **layers)(h, pad)
    pooled = shmrt.Tanh()(shmrt.Linear(D, D, weight=sd["pool.weight"], bias=sd["pool.bias"])(shmrt.FirstToken()(y)))
    return shmrt.Graph([ids, am, tt], {"last_hidden_state": y, "pooler_output": pooled,
                                       "mean": shmrt.MaskedMeanPool()(y, pad)})


def test_bert_style_encoder_matches_torch(rt):
    torch.manual_seed(3)
    bert = _Bert().train().double()  # dropout 0: the plain path
    sd = {k: v.float().numpy() for k, v in bert.state_dict().items()}
    g = _shmrt_bert(sd)
    rng = np.random.default_rng(4)
    for strategy in STRATEGIES:
        cm = rt.compile(g, strategy=strategy, max_batch=2, max_seq_len=10)  # two chunks for 3 sentences
        for L, lens, dtype in ((10, [10, 4, 7], np.int64), (6, [2, 6, 5], np.int32)):
            ids = rng.integers(0, V, (3, L)).astype(dtype)
            am = np.array([[t < n for t in range(L)] for n in lens], np.int64)
            tt = (np.arange(L)[None] >= np.array(lens)[:, None] // 2).astype(np.int64).repeat(1, 0) * np.ones((3, 1), np.int64)
            with torch.no_grad():
                ref = [r.numpy() for r in bert(*(torch.from_numpy(a.astype(np.int64)) for a in (ids, am, tt)))]
            out = cm(ids, am, tt)
            keep = am.astype(bool)
            assert set(out) == {"last_hidden_state", "pooler_output", "mean"}
            _record("BERT-style last_hidden_state", _err(out["last_hidden_state"], ref[0], keep))
            _record("BERT-style pooler_output", _err(out["pooler_output"], ref[1], np.ones(3, bool)))
            _record("BERT-style masked mean", _err(out["mean"], ref[2], np.ones(3, bool)))
            by_name = cm({"input_ids": ids, "attention_mask": am, "token_type_ids": tt})
            assert np.array_equal(by_name["last_hidden_state"], out["last_hidden_state"])


def test_loaded_modules_run_on_the_runtime(rt):
    """shmrt.load of a torch module taking (src, src_key_padding_mask) and of a Hugging Face BertModel
    built from a config (right and left padding), compiled and run against torch in float64."""
    tf = pytest.importorskip("transformers")
    enc, _ = _encoder(True, "gelu", True, 11)

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = enc

        def forward(self, src, src_key_padding_mask):
            return self.enc(src, src_key_padding_mask=src_key_padding_mask)

    cm = rt.compile(shmrt.load(Wrap().float(), input_shape=(T, D)), strategy="auto", max_batch=4)
    enc.double()
    x, pad = _batch(9, [9, 2, 6], 12)
    with torch.no_grad():
        ref = enc(torch.from_numpy(x).double(), src_key_padding_mask=torch.from_numpy(pad)).numpy()
    _record("loaded nn.TransformerEncoder", _err(cm(x, pad), ref, ~pad))
    torch.manual_seed(5)
    config = tf.BertConfig(vocab_size=V, hidden_size=D, num_hidden_layers=2, num_attention_heads=H,
                           intermediate_size=F, max_position_embeddings=16, hidden_act="gelu")
    bert = tf.BertModel(config).eval()
    g = shmrt.load(bert, max_seq_len=T)
    bert.double()
    rng = np.random.default_rng(13)
    for strategy in ("data", "model"):
        cm = rt.compile(g, strategy=strategy, max_batch=3)
        for L, lens, left in ((T, [T, 3, 8], False), (7, [7, 5, 1], True)):
            ids = rng.integers(1, V, (3, L))
            keep = np.array([[(t >= L - n) if left else (t < n) for t in range(L)] for n in lens])
            am, types = keep.astype(np.int64), rng.integers(0, 2, (3, L))
            with torch.no_grad():
                ref = bert(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(am),
                           token_type_ids=torch.from_numpy(types)).last_hidden_state.numpy()
            out = cm(ids, am, types)
            _record("loaded transformers BertModel", _err(out["last_hidden_state"], ref, keep))


def test_vit_runs_its_patches_before_the_tokens(rt):
    """A transformers ViTModel: the patch embedding (a Conv2d over [N, C, H, W]) runs as a plan over
    samples, its [N, T, D] output becomes the token rows; against ViT in float64."""
    tf = pytest.importorskip("transformers")
    torch.manual_seed(7)
    m = tf.ViTModel(tf.ViTConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=H, intermediate_size=F,
                                 image_size=16, patch_size=4, num_channels=3)).eval()
    g = shmrt.load(m)
    m.double()
    x = np.random.default_rng(14).standard_normal((3, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ref = m(pixel_values=torch.from_numpy(x).double())
    for strategy in ("data", "model"):
        out = rt.compile(g, strategy=strategy, max_batch=2)(x)
        _record("loaded transformers ViTModel", _err(out["last_hidden_state"], ref.last_hidden_state.numpy(),
                                                      np.ones((3, 17), bool)))
        _record("loaded transformers ViTModel pooler", _err(out["pooler_output"], ref.pooler_output.numpy(),
                                                             np.ones(3, bool)))


def test_fully_masked_sequences_give_zeros_not_nan(rt):
    enc, sd = _encoder(False, "relu", False, 6)
    cm = rt.compile(_shmrt_encoder(sd, False, "relu", False), max_batch=4)
    x, pad = _batch(T, [0, 4], 7)
    y = cm(x, pad)
    assert not np.isnan(y).any() and not y[0].any() and y[1, :4].any()
    band = np.full((T, T), -np.inf)  # every key forbidden: each query gives 0
    y = rt.compile(_shmrt_encoder(sd, False, "relu", False, attn_mask=band), max_batch=2)(x, pad)
    assert not np.isnan(y).any()


def test_explain_names_heads_per_worker_and_barriers():
    with shmrt.Runtime(workers=2) as r:
        _, sd = _encoder(False, "gelu", False, 8)
        cm = r.compile(_shmrt_encoder(sd, False, "gelu", False), strategy="model", max_batch=2)
        text = cm.explain()
        assert "heads 0:2" in text and "heads 2:4" in text, text
        assert "packed token rows" in text


def test_bad_calls_are_refused_naming_what_was_expected():
    _, sd = _encoder(False, "relu", False, 9)
    torch.manual_seed(3)
    g = _shmrt_bert({k: v.float().numpy() for k, v in _Bert().state_dict().items()})
    with shmrt.Runtime(workers=1) as r:
        cm = r.compile(g, max_batch=2, max_seq_len=8)
        ids, am = np.zeros((2, 8), np.int64), np.ones((2, 8), np.int64)
        ids[1, 3] = V
        with pytest.raises(ValueError, match=rf"token id {V} at sample 1, position 3 is out of range; expected 0..{V - 1}"):
            cm(ids, am, am * 0)
        with pytest.raises(TypeError, match="token ids must be integers"):
            cm(ids.astype(np.float32), am, am * 0)
        with pytest.raises(ValueError, match="max_seq_len=8"):
            cm(np.zeros((2, 9), np.int64), np.ones((2, 9)), np.zeros((2, 9), np.int64))
        with pytest.raises(ValueError, match="max_seq_len must be a positive int up to the inputs T = 12"):
            r.compile(g, max_seq_len=13)
        with pytest.raises(ValueError, match="strategy 'pipeline' does not run sequence models"):
            r.compile(g, strategy="pipeline")
        x = shmrt.Input((T, D), name="src")
        bad = shmrt.Graph(x, shmrt.Softmax()(shmrt.TransformerEncoderLayer(D, H, F)(x)))
        with pytest.raises(NotImplementedError, match=r"graph node 'softmax_1' \(Softmax\(\), op Softmax\): is not "
                                                      r"supported in a sequence model"):
            r.compile(bad)


def test_zz_print_worst_errors():
    """Prints the worst relative error per model (pytest -s shows them)."""
    for name, e in sorted(worst.items()):
        print(f"worst relative error {name}: {e:.3g}")
    assert worst, "the tests above recorded nothing"
