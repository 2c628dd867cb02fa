"""The torch importer's transformer modules (shmrt/frontends/torch/transformer.py): nn.Embedding,
nn.MultiheadAttention, nn.TransformerEncoderLayer / nn.TransformerEncoder inside a module's forward
(padding masks, causal and constant masks) or on their own, converted by shmrt.load and run by the
float64 numpy reference against torch in float64 (real positions; the reference gives 0 at padding);
and what is refused, by name."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import shmrt  # noqa: E402
from reference import forward, rel_err  # noqa: E402
from sequences import compare, f32_double, padding, seqs  # noqa: E402

TOL = 1e-12
pytestmark = [pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors"),
              pytest.mark.filterwarnings("ignore:enable_nested_tensor is True"),
              pytest.mark.filterwarnings("ignore:Support for mismatched src_key_padding_mask")]


def run_torch(m, *xs, **kw):
    with torch.no_grad():
        return m(*[torch.from_numpy(x) for x in xs], **kw).numpy()


class TextEncoder(nn.Module):
    """Token ids and a Hugging Face style attention_mask (1: real) -> encoded tokens and the
    output of a self-attention over them."""

    def __init__(self, norm_first=False, activation="relu", nested=True):
        super().__init__()
        self.emb = nn.Embedding(30, 16, padding_idx=0)
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation=activation, batch_first=True,
                                           norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(16), enable_nested_tensor=nested)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True, bias=False)

    def forward(self, input_ids, attention_mask):
        h = self.encoder(self.emb(input_ids), src_key_padding_mask=attention_mask == 0)
        out, _ = self.attn(h, h, h, key_padding_mask=attention_mask.logical_not(), need_weights=False)
        return out


@pytest.mark.parametrize("norm_first, activation, nested", [(False, "relu", True), (True, "gelu", False),
                                                            (False, "gelu", False)])
def test_text_encoder(norm_first, activation, nested):
    m = f32_double(TextEncoder(norm_first, activation, nested))
    g = shmrt.load(m)
    assert [n for n, _ in g.inputs] == ["input_ids", "attention_mask"]
    assert [type(n.layer).__name__ for n in g.nodes].count("PaddingMask") == 2
    ids = np.random.default_rng(0).integers(1, 30, (3, 6))
    attention_mask = (~padding([6, 4, 1], 6)).astype(np.int64)
    ref = forward(g, [ids, attention_mask])
    err = compare(run_torch(m, ids, attention_mask), ref, attention_mask == 0)
    print(f"TextEncoder norm_first={norm_first} {activation}: {err:.2e}")
    assert err <= TOL


class Causal(nn.Module):
    """forward(src, src_key_padding_mask) with a causal mask: is_causal with the mask built in the
    forward, or a constant buffer (causal, or any float mask)."""

    def __init__(self, how, T=6):
        super().__init__()
        self.how = how
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        causal = nn.Transformer.generate_square_subsequent_mask(T, dtype=torch.float64)
        band = torch.where((torch.arange(T)[:, None] - torch.arange(T)[None, :]).abs() <= 1, 0.0, -0.75)
        self.register_buffer("mask", {"buffer": causal, "bool": causal.isinf(), "band": band.double()}.get(how))

    def forward(self, src, src_key_padding_mask):
        if self.how == "built":
            mask = nn.Transformer.generate_square_subsequent_mask(src.size(1), device=src.device)
            return self.encoder(src, mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=True)
        return self.encoder(src, mask=self.mask, src_key_padding_mask=src_key_padding_mask)


@pytest.mark.parametrize("how", ["built", "buffer", "bool", "band"])
def test_attention_masks(how):
    m = f32_double(Causal(how))
    g = shmrt.load(m)
    enc = g.nodes[-1].layer
    assert [n for n, _ in g.inputs] == ["src", "src_key_padding_mask"]
    assert enc.layers[0].is_causal == (how != "band")
    assert ("layers.0.attn_mask" in enc.params) == (how == "band")
    x, pad = seqs(3, 6, 8), padding([6, 3, 2], 6)
    ref = forward(g, [x, pad])
    kw = {"is_causal": True} if how == "built" else {}
    mask = m.mask if how != "built" else nn.Transformer.generate_square_subsequent_mask(6, dtype=torch.float64)
    m.train()  # dropout 0: the same function by torch's plain path; its eval path gives NaN for every row of a
    with torch.no_grad():  # padded sequence under the band mask (float64 on CPU, torch 2.13)
        y = m.encoder(torch.from_numpy(x), mask=mask, src_key_padding_mask=torch.from_numpy(pad), **kw).numpy()
    err = compare(y, ref, pad)
    print(f"mask {how}: {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("kind", ["encoder", "layer", "mha"])
def test_module_on_its_own(kind):
    """A bare module: inputs named as its forward's arguments (the padding mask included)."""
    E, T = 8, 5
    m = f32_double({"encoder": lambda: nn.TransformerEncoder(
        nn.TransformerEncoderLayer(E, 2, 16, dropout=0.0, batch_first=True, norm_first=True), 3,
        enable_nested_tensor=False),
        "layer": lambda: nn.TransformerEncoderLayer(E, 2, 16, dropout=0.0, batch_first=True, activation="gelu"),
        "mha": lambda: nn.MultiheadAttention(E, 2, batch_first=True)}[kind]())
    g = shmrt.load(m)
    names = ["query", "key_padding_mask"] if kind == "mha" else ["src", "src_key_padding_mask"]
    assert [n for n, _ in g.inputs] == names
    x, pad = seqs(2, T, E), padding([5, 3], T)
    ref = forward(g, [x, pad])
    with torch.no_grad():
        t, p = torch.from_numpy(x), torch.from_numpy(pad)
        y = (m(t, t, t, key_padding_mask=p)[0] if kind == "mha" else m(t, src_key_padding_mask=p)).numpy()
    assert compare(y, ref, pad) <= TOL


def test_embedding_on_its_own():
    m = f32_double(nn.Embedding(7, 3))
    g = shmrt.load(m)
    ids = np.array([[0, 6, 2], [1, 1, 5]])
    assert rel_err(forward(g, ids), m(torch.from_numpy(ids)).detach().numpy()) == 0


# -- refusals ---------------------------------------------------------------------------------------

class Wrap(nn.Module):
    def __init__(self, inner, call):
        super().__init__()
        self.inner, self.call = inner, call

    def forward(self, x, y):
        return self.call(self.inner, x, y)


@pytest.mark.parametrize("inner, call, match", [
    (nn.MultiheadAttention(8, 2, batch_first=True), lambda a, x, y: a(x, y, y)[0],
     r"'inner' \(MultiheadAttention\): query, key and value are different tensors \(cross-attention\); shmrt "
     r"supports self-attention"),
    (nn.MultiheadAttention(8, 2), lambda a, x, y: a(x, x, x)[0],
     r"'inner' \(MultiheadAttention\): batch_first=False is not supported; .*expected batch_first=True"),
    (nn.MultiheadAttention(8, 2, batch_first=True), lambda a, x, y: a(x, x, x)[1],
     r"\[1\] of MultiheadAttention 'inner' \(its attention weights\) is not supported"),
    (nn.MultiheadAttention(8, 2, batch_first=True, kdim=4, vdim=4), lambda a, x, y: a(x, x, x)[0],
     r"kdim=4, vdim=4: expected kdim = vdim = embed_dim \(8\)"),
    (nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), lambda a, x, y: a(x, src_mask=y),
     r"attention mask 'y' is not a constant \(a model input, or computed from one\); expected a constant "
     r"\[T, T\] tensor"),
    (nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, activation=nn.GELU("tanh")), lambda a, x, y: a(x),
     r"activation GELU\(approximate='tanh'\) is not supported; expected relu or gelu"),
    (nn.TransformerEncoderLayer(8, 2, 16, batch_first=True, activation=torch.sigmoid), lambda a, x, y: a(x),
     r"activation sigmoid is not supported; expected relu or gelu"),
    (nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=False), 1, enable_nested_tensor=False),
     lambda a, x, y: a(x), r"'layers.0.self_attn' batch_first=False is not supported"),
    (nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1, norm=nn.Identity()),
     lambda a, x, y: a(x), r"norm is Identity\(\); expected None or nn.LayerNorm\(8\)"),
    (nn.Embedding(5, 8, max_norm=1.0), lambda a, x, y: a(x), r"max_norm=1.0 is not supported"),
])
def test_refused(inner, call, match):
    with pytest.raises(ValueError, match=match):
        shmrt.load(Wrap(inner, call))


def test_is_causal_with_a_mask_that_is_not_causal_is_refused():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
            self.register_buffer("mask", torch.zeros(4, 4))

        def forward(self, x):
            return self.layer(x, src_mask=self.mask, is_causal=True)

    with pytest.raises(ValueError, match=r"'layer' \(TransformerEncoderLayer\): is_causal=True with node 'mask' "
                                         r"\(attribute self.mask\), which is not the causal mask"):
        shmrt.load(M())


class Rotary(nn.Module):
    """Self-attention with rotary position embeddings (cos/sin of position angles applied to q
    and k): no shmrt layer computes them."""

    def __init__(self, d=8):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, d, 2) / d))

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        angles = torch.outer(torch.arange(x.size(1), dtype=x.dtype), self.inv_freq)
        cos, sin = angles.cos().repeat(1, 2), angles.sin().repeat(1, 2)
        q = q * cos + torch.cat((-q[..., 4:], q[..., :4]), dim=-1) * sin
        k = k * cos + torch.cat((-k[..., 4:], k[..., :4]), dim=-1) * sin
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def test_rotary_embeddings_are_refused_by_name():
    with pytest.raises(ValueError, match=r"from_torch: node 'arange' \(torch.arange\): this operation is not "
                                         r"supported; supported modules: .*nn.TransformerEncoder"):
        shmrt.load(Rotary())
