"""Hugging Face transformers encoders -> ``shmrt.Graph``, read from the model's config and state_dict.

A transformers model is recognised by its class (BertModel, DistilBertModel, ViTModel) rather than
traced: its forward branches on options and builds masks in ways torch.fx does not follow, while
its weights map one to one onto shmrt's layers.  Each family is written here as the graph it
computes: embeddings (shmrt.Embedding, PositionalEmbedding, an Add of token types, LayerNorm), a
shmrt.TransformerEncoder (query, key and value weights concatenated into PyTorch's in_proj_weight,
in that order) and the pooler (FirstToken -> Linear -> Tanh).  Inputs are named as the model's
forward names them (input_ids, attention_mask, token_type_ids; pixel_values), outputs as its
output fields (last_hidden_state, pooler_output).  The attention_mask is Hugging Face's (1: a real
token), turned into the encoder's key padding mask by shmrt.PaddingMask.  A setting shmrt cannot
compute exactly is refused, naming the setting and what is expected.

Semantics that differ from transformers only where it leaves values no one should read: outputs at
padding positions are 0, and the pooler reads each sequence's first real token (transformers reads
position 0, the same token when padding is on the right)."""
from __future__ import annotations

import numpy as np

from shmrt.ir import layers as L

HF_MODELS = ("BertModel", "DistilBertModel", "ViTModel")
_ACTS = ("gelu", "relu")  # exact GELU (transformers' "gelu" is erf-based), and relu


def is_hf(module) -> bool:
    """A transformers model (any class from the transformers package)."""
    return (type(module).__module__ or "").startswith("transformers.")


def from_hf(module, max_seq_len=None):
    """The shmrt.Graph of a transformers ``module`` (a class of HF_MODELS, built from a config or
    loaded); max_seq_len: T of the text models' inputs (default config.max_position_embeddings)."""
    name = type(module).__name__
    if name not in HF_MODELS:
        base = getattr(module, "base_model_prefix", None)
        hint = f"; for a model with a task head, convert its base model (model.{base})" if base else ""
        raise ValueError(f"from_torch: the transformers class {name} is not supported; supported: "
                         f"{', '.join(HF_MODELS)}{hint}")
    hf = _Model(module)
    if name == "ViTModel":
        if max_seq_len is not None:
            raise TypeError("from_torch: max_seq_len applies to text models; ViTModel's sequence is its patches "
                            "(config.image_size / config.patch_size)")
        return _vit(hf)
    return (_bert if name == "BertModel" else _distilbert)(hf, max_seq_len)


class _Model:
    """The model's config, modules and parameters (float32 numpy arrays by state_dict name), and
    its refusals."""

    def __init__(self, module):
        self.module, self.config, self.name = module, module.config, type(module).__name__
        self.sd = {k: v for k, v in module.state_dict().items()}

    def refuse(self, what, expected):
        return ValueError(f"from_torch: {self.name}: {what} is not supported; expected {expected}")

    def setting(self, key, allowed, why=""):
        """config.<key>, refused unless one of ``allowed`` (a missing key is allowed[0])."""
        value = getattr(self.config, key, allowed[0])
        if value not in allowed:
            raise self.refuse(f"config.{key}={value!r}{why}", " or ".join(map(repr, allowed)))
        return value

    def act(self, key):
        return self.setting(key, _ACTS, " (shmrt's encoder layers compute relu or exact gelu)")

    def p(self, key):
        if key not in self.sd:
            raise self.refuse(f"a state_dict without {key!r}", f"the parameters of a {self.name}")
        t = self.sd[key].detach()
        if not t.is_floating_point():
            raise self.refuse(f"{key} of dtype {t.dtype}", "a floating-point tensor")
        return t.cpu().float().numpy().copy()

    def eps(self, path):
        return float(self.module.get_submodule(path).eps)

    def seq_len(self, max_seq_len, positions):
        T = positions if max_seq_len is None else max_seq_len
        if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or not 1 <= T <= positions:
            raise ValueError(f"from_torch: {self.name}: max_seq_len must be an int in [1, {positions}] "
                             f"(config.max_position_embeddings), got {max_seq_len!r}")
        return int(T)

    def encoder(self, names, num_layers, heads, activation, eps, norm_first, norm=None):
        """A shmrt.TransformerEncoder of the layers whose parameters ``names`` gives ({part: state_dict
        prefix with "{i}" for the layer}: parts q, k, v, o (attention), ff1, ff2, norm1, norm2).  A
        missing q/k/v bias (ViT's qkv_bias=False) is a zero bias."""
        params = {}
        for i in range(num_layers):
            n = {k: v.format(i=i) for k, v in names.items()}
            w = [self.p(n[x] + ".weight") for x in "qkv"]
            D = w[0].shape[1]
            if any(a.shape != (D, D) for a in w):
                raise self.refuse(f"layer {i}'s query/key/value weights of shapes {[a.shape for a in w]} (pruned "
                                  f"heads)", f"[{D}, {D}] each")
            b = [self.p(n[x] + ".bias") if n[x] + ".bias" in self.sd else np.zeros(D, np.float32) for x in "qkv"]
            own = {"self_attn.in_proj_weight": np.concatenate(w), "self_attn.in_proj_bias": np.concatenate(b)}
            for part, ours in (("o", "self_attn.out_proj"), ("ff1", "linear1"), ("ff2", "linear2"),
                               ("norm1", "norm1"), ("norm2", "norm2")):
                own[f"{ours}.weight"], own[f"{ours}.bias"] = self.p(n[part] + ".weight"), self.p(n[part] + ".bias")
            params.update({f"layers.{i}.{k}": v for k, v in own.items()})
        first = {k[len("layers.0."):]: v for k, v in params.items() if k.startswith("layers.0.")}
        D, F = first["linear1.weight"].shape[1], first["linear1.weight"].shape[0]
        layer = L.TransformerEncoderLayer(D, heads, F, dropout=0.0, activation=activation, layer_norm_eps=eps,
                                          norm_first=norm_first, **first)
        if norm is not None:
            params.update({"norm.weight": self.p(norm + ".weight"), "norm.bias": self.p(norm + ".bias")})
            norm = L.LayerNorm(D, eps=self.eps(norm))
        return L.TransformerEncoder(layer, num_layers, norm=norm, **params)

    def embedding(self, key, padding_idx=None):
        w = self.p(key + ".weight")
        return L.Embedding(w.shape[0], w.shape[1], padding_idx=padding_idx, weight=w)

    def positions(self, key, T):
        """The learned position embeddings of positions 0..T-1 (the position_ids buffer, where the
        model keeps one, must count from 0)."""
        ids = getattr(self.module.get_submodule(key.rsplit(".", 1)[0]), "position_ids", None)
        if ids is not None and not np.array_equal(ids.reshape(-1)[:T].cpu().numpy(), np.arange(T)):
            raise self.refuse("a position_ids buffer that does not count 0, 1, 2, ...", "positions 0..T-1")
        w = self.p(key + ".weight")
        return L.PositionalEmbedding(w.shape[0], w.shape[1], weight=w)


def _text_inputs(T, token_types):
    names = ("input_ids", "attention_mask") + (("token_type_ids",) if token_types else ())
    return [L.Input((T,), name=n) for n in names]


def _bert(hf, max_seq_len):
    """BertModel: word + position + token type embeddings, LayerNorm, post-norm encoder layers, the
    tanh pooler over the first token."""
    c = hf.config
    hf.setting("position_embedding_type", ("absolute", None), " (relative position scores inside attention: "
               "shmrt's attention takes no position bias)")
    hf.setting("is_decoder", (False,), " (a causal decoder with a key/value cache)")
    hf.setting("add_cross_attention", (False,), " (cross-attention to encoder_hidden_states)")
    act = hf.act("hidden_act")
    T = hf.seq_len(max_seq_len, c.max_position_embeddings)
    ids, attention_mask, token_types = _text_inputs(T, True)
    word = hf.module.embeddings.word_embeddings
    h = hf.embedding("embeddings.word_embeddings", word.padding_idx)(ids)
    h = hf.positions("embeddings.position_embeddings", T)(h)
    h = L.Add()(h, hf.embedding("embeddings.token_type_embeddings")(token_types))
    ln = "embeddings.LayerNorm"
    h = L.LayerNorm(c.hidden_size, eps=hf.eps(ln), weight=hf.p(ln + ".weight"), bias=hf.p(ln + ".bias"))(h)
    pre = "encoder.layer.{i}."
    names = {"q": pre + "attention.self.query", "k": pre + "attention.self.key", "v": pre + "attention.self.value",
             "o": pre + "attention.output.dense", "ff1": pre + "intermediate.dense", "ff2": pre + "output.dense",
             "norm1": pre + "attention.output.LayerNorm", "norm2": pre + "output.LayerNorm"}
    pad = L.PaddingMask()(attention_mask)
    enc = hf.encoder(names, c.num_hidden_layers, c.num_attention_heads, act,
                     hf.eps(names["norm1"].format(i=0)), norm_first=False)
    h = enc(h, pad)
    outs = {"last_hidden_state": h}
    if hf.module.pooler is not None:
        outs["pooler_output"] = _pooler(hf, "pooler.dense", L.FirstToken()(h, pad))
    return L.Graph([ids, attention_mask, token_types], outs)


def _distilbert(hf, max_seq_len):
    """DistilBertModel: word + position embeddings, LayerNorm, post-norm encoder layers; no pooler."""
    c = hf.config
    act = hf.act("activation")
    T = hf.seq_len(max_seq_len, c.max_position_embeddings)
    ids, attention_mask = _text_inputs(T, False)
    h = hf.embedding("embeddings.word_embeddings", hf.module.embeddings.word_embeddings.padding_idx)(ids)
    h = hf.positions("embeddings.position_embeddings", T)(h)
    ln = "embeddings.LayerNorm"
    h = L.LayerNorm(c.dim, eps=hf.eps(ln), weight=hf.p(ln + ".weight"), bias=hf.p(ln + ".bias"))(h)
    pre = "transformer.layer.{i}."
    names = {"q": pre + "attention.q_lin", "k": pre + "attention.k_lin", "v": pre + "attention.v_lin",
             "o": pre + "attention.out_lin", "ff1": pre + "ffn.lin1", "ff2": pre + "ffn.lin2",
             "norm1": pre + "sa_layer_norm", "norm2": pre + "output_layer_norm"}
    enc = hf.encoder(names, c.n_layers, c.n_heads, act, hf.eps(names["norm1"].format(i=0)), norm_first=False)
    return L.Graph([ids, attention_mask], {"last_hidden_state": enc(h, L.PaddingMask()(attention_mask))})


# ViT's parameter names: transformers 5 (layers.<i>.attention.q_proj, ...) and 4 (encoder.layer.<i>...)
_VIT_NAMES = (
    {"q": "layers.{i}.attention.q_proj", "k": "layers.{i}.attention.k_proj", "v": "layers.{i}.attention.v_proj",
     "o": "layers.{i}.attention.o_proj", "ff1": "layers.{i}.mlp.fc1", "ff2": "layers.{i}.mlp.fc2",
     "norm1": "layers.{i}.layernorm_before", "norm2": "layers.{i}.layernorm_after"},
    {"q": "encoder.layer.{i}.attention.attention.query", "k": "encoder.layer.{i}.attention.attention.key",
     "v": "encoder.layer.{i}.attention.attention.value", "o": "encoder.layer.{i}.attention.output.dense",
     "ff1": "encoder.layer.{i}.intermediate.dense", "ff2": "encoder.layer.{i}.output.dense",
     "norm1": "encoder.layer.{i}.layernorm_before", "norm2": "encoder.layer.{i}.layernorm_after"})


def _vit(hf):
    """ViTModel: the patch embedding (a Conv2d of stride patch_size, its [N, D, h, w] read as h*w
    tokens), the [CLS] token prepended, learned position embeddings, pre-norm encoder layers and a
    final LayerNorm, the pooler over [CLS].  The [CLS] token is a constant row: written as the first
    patch token times 0 plus cls_token, then a Concat (shmrt's IR has no layer of a constant alone)."""
    c = hf.config
    act = hf.act("hidden_act")
    size = c.image_size if isinstance(c.image_size, (tuple, list)) else (c.image_size, c.image_size)
    patch = c.patch_size if isinstance(c.patch_size, (tuple, list)) else (c.patch_size, c.patch_size)
    H, W = (int(v) for v in size)
    if H % patch[0] or W % patch[1]:
        raise hf.refuse(f"image_size {size} with patch_size {patch}", "an image size that the patches tile")
    D, P = c.hidden_size, (H // patch[0]) * (W // patch[1])
    pixels = L.Input((c.num_channels, H, W), name="pixel_values")
    conv = "embeddings.patch_embeddings.projection"
    w = hf.p(conv + ".weight")
    tokens = L.Conv2d(c.num_channels, D, tuple(patch), stride=tuple(patch), weight=w,
                      bias=hf.p(conv + ".bias") if conv + ".bias" in hf.sd else False)(pixels)
    tokens = L.Transpose(1, 2)(L.Reshape(D, P)(tokens))
    cls = L.Add(constant=hf.p("embeddings.cls_token").reshape(1, D))(
        L.Mul(constant=np.float32(0.0))(L.Slice(1, 0, 1)(tokens)))
    h = L.Concat(dim=1)(cls, tokens)
    pos = hf.p("embeddings.position_embeddings").reshape(-1, D)
    if pos.shape[0] != P + 1:
        raise hf.refuse(f"{pos.shape[0]} position embeddings", f"{P + 1} (one per patch and [CLS])")
    h = L.PositionalEmbedding(P + 1, D, weight=pos)(h)
    names = next((n for n in _VIT_NAMES if n["q"].format(i=0) + ".weight" in hf.sd), _VIT_NAMES[0])
    enc = hf.encoder(names, c.num_hidden_layers, c.num_attention_heads, act, hf.eps(names["norm1"].format(i=0)),
                     norm_first=True, norm="layernorm")
    h = enc(h)
    outs = {"last_hidden_state": h}
    if getattr(hf.module, "pooler", None) is not None:
        hf.setting("pooler_act", ("tanh",), " (the pooler's activation)")
        outs["pooler_output"] = _pooler(hf, "pooler.dense", L.FirstToken()(h))
    return L.Graph([pixels], outs)


def _pooler(hf, key, first):
    w = hf.p(key + ".weight")
    return L.Tanh()(L.Linear(w.shape[1], w.shape[0], weight=w, bias=hf.p(key + ".bias"))(first))
