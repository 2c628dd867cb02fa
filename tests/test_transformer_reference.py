"""shmrt.ir.reference_seq, the float64 numpy reference of the transformer layers, against PyTorch's
own modules in float64: encoder layers and encoders (padding masks, causal and constant masks,
norm_first both ways, relu and gelu, a final norm), MultiheadAttention (with and without biases),
scaled dot-product attention, and the embeddings and poolings.  Real positions must agree to
~1e-12; at padding positions the reference gives 0 (the IR's definition), which torch's nested-tensor
path also gives and its other paths do not (those are compared at real positions only)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import shmrt  # noqa: E402
from reference import forward, rel_err  # noqa: E402
from sequences import compare, f32_double, padding, seqs  # noqa: E402

TOL = 1e-12
pytestmark = [pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors"),
              pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")]


def state(m):
    return {k: v.detach().numpy() for k, v in m.state_dict().items()}


def causal_bool(T):
    return np.triu(np.ones((T, T), bool), 1)  # True: not allowed


def run_torch(m, *args, **kw):
    with torch.no_grad():
        out = m(*[torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args], **kw)
    return (out[0] if isinstance(out, tuple) else out).numpy()


def graph_of(layer, T, D, with_mask=True):
    x = shmrt.Input((T, D), name="src")
    if not with_mask:
        return shmrt.Graph([x], layer(x))
    m = shmrt.Input((T,), name="src_key_padding_mask")
    return shmrt.Graph([x, m], layer(x, m))


# -- encoder layers and encoders ----------------------------------------------------------------

@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("T, lengths", [(1, [1, 1]), (5, [5, 2, 1]), (9, [3, 9, 7, 9])])
def test_encoder_layer_with_padding(norm_first, activation, T, lengths):
    D, H = 16, 4
    tm = f32_double(nn.TransformerEncoderLayer(D, H, 24, dropout=0.0, activation=activation, batch_first=True,
                                               norm_first=norm_first, layer_norm_eps=1e-6))
    layer = shmrt.TransformerEncoderLayer(D, H, 24, activation=activation, norm_first=norm_first,
                                          layer_norm_eps=1e-6, **state(tm))
    x, pad = seqs(len(lengths), T, D), padding(lengths, T)
    ref = forward(graph_of(layer, T, D), [x, pad])
    err = compare(run_torch(tm, x, src_key_padding_mask=torch.from_numpy(pad)), ref, pad)
    print(f"encoder layer norm_first={norm_first} {activation} T={T}: {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("final_norm", [True, False])
@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder(final_norm, nested, norm_first):
    """Two layers, with and without a final LayerNorm.  torch's nested-tensor path (post-norm, no
    final norm: torch applies that after padding again, giving norm.bias) writes 0 at padding as the
    reference does; there the whole output is compared."""
    D, H, T = 12, 2, 7  # nested tensors need an even number of heads
    base = nn.TransformerEncoderLayer(D, H, 20, dropout=0.0, activation="gelu", batch_first=True,
                                      norm_first=norm_first)
    norm = nn.LayerNorm(D, eps=1e-4) if final_norm else None
    tm = f32_double(nn.TransformerEncoder(base, 2, norm=norm, enable_nested_tensor=nested))
    enc = shmrt.TransformerEncoder(shmrt.TransformerEncoderLayer(D, H, 20, activation="gelu", norm_first=norm_first),
                                   2, norm=shmrt.LayerNorm(D, eps=1e-4) if final_norm else None, **state(tm))
    x, pad = seqs(3, T, D), padding([7, 4, 2], T)
    ref = forward(graph_of(enc, T, D), [x, pad])
    y = run_torch(tm, x, src_key_padding_mask=torch.from_numpy(pad))
    err = compare(y, ref, pad)
    if nested and not norm_first and not final_norm:
        assert tm.use_nested_tensor and np.all(y[pad] == 0)  # the nested path: torch's zeros are the IR's
        err = max(err, rel_err(y, ref))
    print(f"encoder final_norm={final_norm} nested={nested} norm_first={norm_first}: {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("how", ["is_causal", "float_mask", "bool_mask"])
@pytest.mark.parametrize("norm_first", [False, True])
def test_encoder_causal(how, norm_first):
    """Causal attention three ways (is_causal; a constant float [T, T] mask with -inf; a bool
    mask), with right- and left-padded sequences.  Left padding leaves the padding queries no key:
    torch's eval fast path writes NaN there, which the next layer's keys spread to every row, so
    torch runs its plain path (train mode, dropout 0: the same function) for the comparison."""
    D, H, T = 8, 2, 6
    base = nn.TransformerEncoderLayer(D, H, 16, dropout=0.0, batch_first=True, norm_first=norm_first)
    tm = f32_double(nn.TransformerEncoder(base, 2, enable_nested_tensor=False)).train()
    causal = causal_bool(T)
    kw = {"is_causal": True} if how == "is_causal" else {
        "attn_mask": np.where(causal, -np.inf, 0.0).astype(np.float32) if how == "float_mask" else causal}
    enc = shmrt.TransformerEncoder(shmrt.TransformerEncoderLayer(D, H, 16, norm_first=norm_first, **kw), 2,
                                   **state(tm))
    x = seqs(4, T, D)
    for pad in (padding([6, 3, 1, 5], T), padding([6, 3, 1, 5], T, left=True)):
        ref = forward(graph_of(enc, T, D), [x, pad])
        y = run_torch(tm, x, mask=torch.from_numpy(causal), src_key_padding_mask=torch.from_numpy(pad),
                      is_causal=True)
        err = compare(y, ref, pad)
        print(f"causal {how} norm_first={norm_first}: {err:.2e}")
        assert err <= TOL


def test_encoder_without_mask():
    D, H, T = 8, 2, 5
    tm = f32_double(nn.TransformerEncoderLayer(D, H, 16, dropout=0.0, batch_first=True))
    layer = shmrt.TransformerEncoderLayer(D, H, 16, **state(tm))
    x = seqs(2, T, D)
    assert rel_err(run_torch(tm, x), forward(graph_of(layer, T, D, with_mask=False), x)) <= TOL


# -- attention ------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("causal", [False, True])
def test_multihead_attention(bias, causal):
    E, H, T = 12, 3, 6
    tm = f32_double(nn.MultiheadAttention(E, H, bias=bias, batch_first=True))
    mha = shmrt.MultiheadAttention(E, H, bias=bias, is_causal=causal, **state(tm))
    assert ("in_proj_bias" in mha.params) == bias
    x, pad = seqs(3, T, E), padding([6, 4, 1], T)
    ref = forward(graph_of(mha, T, E), [x, pad])
    t = torch.from_numpy(x)
    y = run_torch(tm, t, t, t, key_padding_mask=torch.from_numpy(pad), need_weights=False,
                  attn_mask=torch.from_numpy(causal_bool(T)) if causal else None, is_causal=causal)
    err = compare(y, ref, pad)
    print(f"MultiheadAttention bias={bias} causal={causal}: {err:.2e}")
    assert err <= TOL


def test_attention_row_with_no_allowed_key():
    """A real query whose every key the constant mask forbids: attention 0, so the layer gives
    out_proj.bias, as torch does (no NaN); other rows as torch."""
    E, H, T = 8, 2, 4
    tm = f32_double(nn.MultiheadAttention(E, H, batch_first=True))
    am = np.zeros((T, T), np.float32)
    am[2] = -np.inf
    am[1, 3] = -1.5
    mha = shmrt.MultiheadAttention(E, H, attn_mask=am, **state(tm))
    x = seqs(2, T, E)
    ref = forward(graph_of(mha, T, E, with_mask=False), x)
    t = torch.from_numpy(x)
    y = run_torch(tm, t, t, t, attn_mask=torch.from_numpy(am.astype(np.float64)), need_weights=False)
    assert np.all(np.isfinite(ref)) and np.array_equal(ref[:, 2], np.broadcast_to(mha.params["out_proj.bias"], (2, E)))
    assert rel_err(y, ref) <= TOL


@pytest.mark.parametrize("causal, scale", [(False, None), (True, None), (False, 0.3)])
def test_scaled_dot_product_attention(causal, scale):
    N, H, T, d = 3, 2, 5, 4
    rng = np.random.default_rng(2)
    q, k, v = (rng.standard_normal((N, T, H * d)).astype(np.float32).astype(np.float64) for _ in range(3))
    pad = padding([5, 3, 2], T)
    ins = [shmrt.Input((T, H * d), name=n) for n in "qkv"] + [shmrt.Input((T,), name="mask")]
    g = shmrt.Graph(ins, shmrt.ScaledDotProductAttention(H, is_causal=causal, scale=scale)(*ins))
    ref = forward(g, [q, k, v, pad])

    def heads(a):
        return torch.from_numpy(a).reshape(N, T, H, d).transpose(1, 2)

    allowed = torch.from_numpy(~pad)[:, None, None, :]
    if causal:
        allowed = allowed & torch.from_numpy(~causal_bool(T))
    y = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=allowed, scale=scale)
    err = compare(y.transpose(1, 2).reshape(N, T, H * d).numpy(), ref, pad)
    print(f"sdpa causal={causal} scale={scale}: {err:.2e}")
    assert err <= TOL


# -- embeddings and pooling -------------------------------------------------------------------------

def test_embeddings_and_pooling():
    """ids -> Embedding + PositionalEmbedding, a Hugging Face attention_mask -> PaddingMask; the first
    real token and the masked mean, against torch; an empty sequence pools to 0."""
    V, D, T = 11, 6, 5
    emb, pos = f32_double(nn.Embedding(V, D, padding_idx=0)), f32_double(nn.Embedding(T + 2, D), seed=3)
    ids = np.array([[3, 4, 5, 0, 0], [0, 0, 7, 10, 1], [0, 0, 0, 0, 0]], np.int64)
    attention_mask = np.array([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 0, 0, 0, 0]], np.int32)
    i, a = shmrt.Input((T,), name="input_ids"), shmrt.Input((T,), name="attention_mask")
    h = shmrt.PositionalEmbedding(T + 2, D, weight=state(pos)["weight"])(
        shmrt.Embedding(V, D, padding_idx=0, weight=state(emb)["weight"])(i))
    m = shmrt.PaddingMask()(a)
    g = shmrt.Graph([i, a], {"h": h, "first": shmrt.FirstToken()(h, m), "mean": shmrt.MaskedMeanPool()(h, m),
                             "mask": m, "cls": shmrt.FirstToken()(h)})
    ref = forward(g, {"input_ids": ids, "attention_mask": attention_mask})
    with torch.no_grad():
        th = (emb(torch.from_numpy(ids)) + pos.weight[:T]).numpy()
    real = attention_mask.astype(bool)
    assert rel_err(th, ref["h"]) <= TOL
    assert np.array_equal(ref["mask"], ~real)
    assert rel_err(ref["cls"], th[:, 0]) <= TOL
    first = np.stack([th[0, 0], th[1, 2], np.zeros(D)])
    mean = np.stack([th[0, :3].mean(0), th[1, 2:].mean(0), np.zeros(D)])
    assert rel_err(ref["first"], first) <= TOL and rel_err(ref["mean"], mean) <= TOL
    assert np.array_equal(ref["first"][2], np.zeros(D)) and np.array_equal(ref["mean"][2], np.zeros(D))


def test_embedding_refuses_a_bad_id():
    i = shmrt.Input((3,), name="input_ids")
    g = shmrt.Graph([i], shmrt.Embedding(5, 2)(i))
    with pytest.raises(ValueError, match=r"id 5 is out of range; expected integers in \[0, 5\)"):
        forward(g, np.array([[0, 5, 1]]))
    with pytest.raises(ValueError, match=r"id -1 is out of range"):
        forward(g, np.array([[0, -1, 1]]))
    with pytest.raises(ValueError, match=r"id 1\.5 is out"):
        forward(g, np.array([[0, 1.5, 1]]))
