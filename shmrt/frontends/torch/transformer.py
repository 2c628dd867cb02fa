"""The torch transformer modules shmrt imports: nn.Embedding, nn.MultiheadAttention (self-attention),
nn.TransformerEncoderLayer and nn.TransformerEncoder (batch-first), with their masks.

Each module binds its arguments as its forward does (``encoder(src, mask=..., src_key_padding_mask=...,
is_causal=...)``).  A key padding mask is a tensor of the model (an input, or ``attention_mask == 0`` /
``attention_mask.logical_not()`` of a Hugging Face style input, which become shmrt.PaddingMask); the
layer reads it as nonzero = padding, as torch reads a bool mask (a float mask of 0 and -inf agrees).
An attention mask is a constant: a buffer or a tensor built at trace time (kept as the layer's
``attn_mask``, or ``is_causal=True`` where it is the causal mask), or
``nn.Transformer.generate_square_subsequent_mask(x.size(1))`` (causal); a mask computed otherwise
from the inputs is refused.  Outputs at padding positions are 0 (the IR's definition: what torch's
nested-tensor path gives, where its other paths leave values no one should read)."""
from __future__ import annotations

import math
import operator

import numpy as np

from shmrt.ir import layers as L

SEQUENCE_KINDS = ("embedding", "mha", "encoder_layer", "encoder")
SEQUENCE_MODULES = (
    "nn.Embedding (max_norm=None), nn.MultiheadAttention (self-attention attn(x, x, x), batch_first=True, "
    "no add_bias_kv / add_zero_attn / kdim / vdim; out, _ = attn(...) or attn(...)[0]), "
    "nn.TransformerEncoderLayer and nn.TransformerEncoder (batch_first=True, activation relu or gelu, "
    "a final nn.LayerNorm or none), with src_key_padding_mask / key_padding_mask, is_causal, and a constant "
    "or causal mask")
SEQUENCE_FUNCTIONS = (
    "key padding masks from an attention_mask input: attention_mask == 0, attention_mask.eq(0), "
    "torch.logical_not(attention_mask); causal masks: nn.Transformer.generate_square_subsequent_mask(x.size(1))")
_MASK_HINT = ("expected a constant [T, T] tensor (a buffer, or a mask built at trace time), "
              "nn.Transformer.generate_square_subsequent_mask(x.size(1)), or is_causal=True; "
              "padding belongs in the key padding mask")


def bare_graph(torch, kind):
    """The fx graph of a sequence module converted on its own: called on placeholders named as its
    forward's arguments, the input and the padding mask (MultiheadAttention as self-attention);
    None for other kinds (and nn.Embedding, a one-input layer)."""
    if kind not in ("mha", "encoder_layer", "encoder"):
        return None
    g = torch.fx.Graph()
    if kind == "mha":
        x, mask = g.placeholder("query"), g.placeholder("key_padding_mask")
        attn = g.call_module("", (x, x, x), {"key_padding_mask": mask})
        out = g.create_node("call_function", operator.getitem, (attn, 0), name="attn_output")
    else:
        x, mask = g.placeholder("src"), g.placeholder("src_key_padding_mask")
        out = g.create_node("call_module", "", (x,), {"src_key_padding_mask": mask}, name="hidden_states")
    g.output(out)
    return g


class Sequences:
    """call_module nodes of the sequence modules, and the mask expressions (call_function and
    call_method nodes the other tables do not know)."""

    def mod_embedding(self, node, m, kind):
        a = self.bind(node, ("input",))
        if m.max_norm is not None:
            raise self.fail(node, f"max_norm={m.max_norm!r} is not supported (it rewrites the weights at each "
                                  f"lookup); expected max_norm=None")
        self.take(node, a["input"])
        self.emit(node, self.make(node, L.Embedding, m.num_embeddings, m.embedding_dim, padding_idx=m.padding_idx,
                                  weight=self.param(node, m.weight, "weight")), rank=3)

    def mod_mha(self, node, m, kind):
        a = self.bind(node, ("query", "key", "value", "key_padding_mask", "need_weights", "attn_mask",
                             "average_attn_weights", "is_causal"),
                      {"key_padding_mask": None, "attn_mask": None, "is_causal": False})
        if not (a["query"] is a["key"] is a["value"]):
            raise self.fail(node, "query, key and value are different tensors (cross-attention); shmrt supports "
                                  "self-attention, attn(x, x, x)")
        params = self.attention_params(node, m)
        causal, mask = self.attn_mask(node, a["attn_mask"], a["is_causal"])
        self.take(node, a["query"], *self.padding(node, a["key_padding_mask"]))
        self.emit(node, self.make(node, L.MultiheadAttention, m.embed_dim, m.num_heads,
                                  bias="in_proj_bias" in params, is_causal=causal, attn_mask=mask, **params), rank=3)
        self.kind[node] = ("attn", {"path": node.target})

    def mod_encoder_layer(self, node, m, kind):
        a = self.bind(node, ("src", "src_mask", "src_key_padding_mask", "is_causal"),
                      {"src_mask": None, "src_key_padding_mask": None, "is_causal": False})
        config, params = self.encoder_layer(node, m, "")
        causal, mask = self.attn_mask(node, a["src_mask"], a["is_causal"])
        self.take(node, a["src"], *self.padding(node, a["src_key_padding_mask"]))
        self.emit(node, self.make(node, L.TransformerEncoderLayer, **config, is_causal=causal, attn_mask=mask,
                                  **params), rank=3)

    def mod_encoder(self, node, m, kind):
        a = self.bind(node, ("src", "mask", "src_key_padding_mask", "is_causal"),
                      {"mask": None, "src_key_padding_mask": None, "is_causal": None})
        if not len(m.layers):
            raise self.fail(node, "num_layers=0: expected at least one layer")
        layers = [self.encoder_layer(node, layer, f"layers.{i}.") for i, layer in enumerate(m.layers)]
        config, first = layers[0]
        for i, (c, _) in enumerate(layers):
            if c != config:
                diff = sorted(k for k in c if c[k] != config[k])
                raise self.fail(node, f"layers.{i} differs from layers.0 in {diff}; shmrt's TransformerEncoder "
                                      f"repeats one layer configuration (the weights may differ)")
        norm, params = None, {f"layers.{i}.{k}": v for i, (_, p) in enumerate(layers) for k, v in p.items()}
        if m.norm is not None:
            d = config["d_model"]
            if not isinstance(m.norm, self.nn.LayerNorm) or tuple(m.norm.normalized_shape) != (d,):
                raise self.fail(node, f"norm is {m.norm!r}; expected None or nn.LayerNorm({d})")
            norm = L.LayerNorm(d, eps=m.norm.eps)
            for k in ("weight", "bias"):
                if getattr(m.norm, k, None) is not None:
                    params[f"norm.{k}"] = self.param(node, getattr(m.norm, k), f"norm.{k}")
        causal, mask = self.attn_mask(node, a["mask"], a["is_causal"])
        template = self.make(node, L.TransformerEncoderLayer, **config, is_causal=causal, attn_mask=mask, **first)
        self.take(node, a["src"], *self.padding(node, a["src_key_padding_mask"]))
        self.emit(node, self.make(node, L.TransformerEncoder, template, len(layers), norm=norm, **params), rank=3)

    # -- the parts --------------------------------------------------------------------------------

    def attention_params(self, node, m, path=None):
        """A self-attention nn.MultiheadAttention's parameters, under its own names (its checks first);
        path: where it sits inside the module converted, for the messages."""
        at = _at(path + "." if path else "")
        if not m.batch_first:
            raise self.fail(node, f"{at}batch_first=False is not supported; shmrt's sequences are batch-first "
                                  f"[N, T, E]: expected batch_first=True")
        if not m._qkv_same_embed_dim:
            raise self.fail(node, f"{at}kdim={m.kdim}, vdim={m.vdim}: expected kdim = vdim = embed_dim "
                                  f"({m.embed_dim}), self-attention")
        if m.bias_k is not None or m.add_zero_attn:
            raise self.fail(node, f"{at}add_bias_kv={m.bias_k is not None}, add_zero_attn={m.add_zero_attn}: "
                                  f"expected both False")
        names = {"in_proj_weight": m.in_proj_weight, "in_proj_bias": m.in_proj_bias,
                 "out_proj.weight": m.out_proj.weight, "out_proj.bias": m.out_proj.bias}
        if (m.in_proj_bias is None) != (m.out_proj.bias is None):
            raise self.fail(node, f"{at}has in_proj_bias but not out_proj.bias (or the reverse); expected both "
                                  f"or neither (bias=True or bias=False)")
        return {k: self.param(node, t, f"{path}.{k}" if path else k) for k, t in names.items() if t is not None}

    def encoder_layer(self, node, m, prefix):
        """An nn.TransformerEncoderLayer as (shmrt constructor arguments, parameters under shmrt's names)."""
        nn = self.nn
        if not isinstance(m, nn.TransformerEncoderLayer) or type(m).forward is not nn.TransformerEncoderLayer.forward:
            raise self.fail(node, f"{_at(prefix)}is a {type(m).__name__} with a forward of its own; expected "
                                  f"nn.TransformerEncoderLayer")
        sa = m.self_attn
        params = {"self_attn." + k: v for k, v in self.attention_params(node, sa, prefix + "self_attn").items()}
        act = self.encoder_activation(node, m.activation, prefix)
        if m.norm1.eps != m.norm2.eps:
            raise self.fail(node, f"'{prefix}norm1' eps={m.norm1.eps} and '{prefix}norm2' eps={m.norm2.eps} differ; "
                                  f"expected one layer_norm_eps")
        bias = "self_attn.in_proj_bias" in params
        if (m.linear1.bias is not None) != bias or (m.linear2.bias is not None) != bias:
            raise self.fail(node, f"{_at(prefix)}has biases in some of its linear layers only; expected all "
                                  f"(bias=True) or none (bias=False)")
        for name in ("linear1", "linear2", "norm1", "norm2"):
            for k in ("weight", "bias"):
                t = getattr(getattr(m, name), k, None)
                if t is not None:
                    params[f"{name}.{k}"] = self.param(node, t, f"{prefix}{name}.{k}")
        config = dict(d_model=sa.embed_dim, nhead=sa.num_heads, dim_feedforward=m.linear1.out_features,
                      activation=act, layer_norm_eps=m.norm1.eps, norm_first=bool(m.norm_first), bias=bias)
        return config, params

    def encoder_activation(self, node, f, prefix):
        F, nn = self.F, self.nn
        if f is F.relu or type(f) is nn.ReLU:
            return "relu"
        if f is F.gelu or (type(f) is nn.GELU and f.approximate == "none"):
            return "gelu"
        got = getattr(f, "__name__", None) or repr(f)
        raise self.fail(node, f"{_at(prefix)}activation {got} is not supported; expected relu or gelu (exact: "
                              f"F.gelu, nn.GELU())")

    def padding(self, node, mask):
        """The key padding mask argument as the tensors the layer reads: [] or [mask]."""
        if mask is None:
            return []
        if not hasattr(mask, "op") or self.kind.get(mask) != "x":
            raise self.fail(node, f"key padding mask {getattr(mask, 'name', mask)!r} is not a tensor of the model; "
                                  f"expected an input [N, T] (nonzero or True: padding) or attention_mask == 0")
        return [mask]

    def attn_mask(self, node, mask, is_causal):
        """(is_causal, a constant attn_mask or None) of a module's attention mask and is_causal hint."""
        if mask is None:
            return bool(is_causal), None
        k = self.kind.get(mask) if hasattr(mask, "op") else None
        if k == "causal":
            return True, None
        if k != "attr":
            raise self.fail(node, f"attention mask {getattr(mask, 'name', mask)!r} is not a constant (a model input, "
                                  f"or computed from one); " + _MASK_HINT)
        t = self.constant(mask)
        if not isinstance(t, self.torch.Tensor) or t.ndim != 2 or t.shape[0] != t.shape[1]:
            raise self.fail(node, f"attention mask {self.where(mask)} has shape {tuple(getattr(t, 'shape', ()))}; "
                                  + _MASK_HINT)
        value = t.detach().cpu().numpy() if t.dtype == self.torch.bool else self.param(node, t, "attention mask")
        if _is_causal(value):
            return True, None
        if is_causal:
            raise self.fail(node, f"is_causal=True with {self.where(mask)}, which is not the causal mask; expected "
                                  f"the causal mask (True or -inf above the diagonal) or is_causal left out")
        return False, value

    def constant(self, node):
        """The tensor a get_attr node names (a buffer, a parameter, or a constant fx made at trace time)."""
        obj = node.graph.owning_module or self.root
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj

    # -- mask expressions -----------------------------------------------------------------------------

    def sequence_call(self, node):
        """A call_function / call_method node of a mask expression, converted; False if it is not one."""
        torch, t = self.torch, node.target
        fn = node.op == "call_function"
        if (t in (operator.eq, torch.eq) if fn else t == "eq"):
            x, other = (list(node.args) + [node.kwargs.get("other")])[:2]
            if hasattr(x, "op") and self.kind.get(x) == "x" and not hasattr(other, "op") and other == 0:
                self.take(node, x)  # attention_mask == 0: padding where the attention mask is 0
                self.emit(node, L.PaddingMask())
                return True
            raise self.fail(node, f"== {other!r} is supported only as attention_mask == 0 (a padding mask)")
        if (t is torch.logical_not if fn else t == "logical_not"):
            self.take(node, *node.args)
            self.emit(node, L.PaddingMask())
            return True
        if fn and t is torch.full and self.square_size(node.args[0] if node.args else node.kwargs.get("size")):
            fill = node.args[1] if len(node.args) > 1 else node.kwargs.get("fill_value")
            self.kind[node] = ("full", fill)
            return True
        if (t is torch.triu if fn else t == "triu"):
            src, diagonal = node.args[0], (node.args[1] if len(node.args) > 1 else node.kwargs.get("diagonal", 0))
            if self.kind.get(src) == ("full", -math.inf) and diagonal == 1:
                self.kind[node] = "causal"  # nn.Transformer.generate_square_subsequent_mask(x.size(1))
                return True
            raise self.fail(node, "torch.triu is supported only as the causal mask torch.triu(torch.full((T, T), "
                                  "-inf), diagonal=1) (nn.Transformer.generate_square_subsequent_mask)")
        return False

    def square_size(self, size):
        """(s, s) with s a size of an activation (x.size(1), x.shape[1])."""
        return (isinstance(size, (tuple, list)) and len(size) == 2 and size[0] is size[1]
                and hasattr(size[0], "op") and self.kind.get(size[0]) == "size")

    def attention_item(self, node, spec, idx):
        """attn(x, x, x)[0]: the attention output; [1], the weights, is refused."""
        if idx != 0:
            raise self.fail(node, f"[{idx!r}] of MultiheadAttention '{spec['path']}' (its attention weights) is "
                                  f"not supported; expected out, _ = attn(x, x, x) or attn(x, x, x)[0]")
        self.kind[node], self.val[node] = "x", self.val[node.args[0]]
        self.rank_of[node] = 3


def _at(prefix):
    """'layers.0' (and a space) for the parameter prefix "layers.0.", nothing for the module itself."""
    return f"'{prefix[:-1]}' " if prefix else ""


def _is_causal(m):
    """m is the causal mask of its size: True (bool) or -inf (float) exactly above the diagonal."""
    above = np.triu(np.ones(m.shape, bool), 1)
    return bool(np.array_equal(m, above) if m.dtype == bool else np.array_equal(m, np.where(above, -np.inf, 0.0)))
