"""Hugging Face transformers encoders through shmrt.load (shmrt/frontends/torch/hf.py): BertModel,
DistilBertModel and ViTModel built from small configs, their weights randomised and rounded to
float32, run in float64 by transformers and by shmrt's numpy reference of the converted graph
(real positions of padded batches; the pooler on each sequence's first real token); and the
settings that are refused, by name."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")

import shmrt  # noqa: E402
from reference import forward, rel_err  # noqa: E402
from sequences import compare, f32_double, padding  # noqa: E402

TOL = 1e-10


def hf_run(m, **inputs):
    with torch.no_grad():
        return m(**{k: torch.from_numpy(v) for k, v in inputs.items()})


def bert(**kw):
    config = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
                  max_position_embeddings=12, type_vocab_size=3)
    return tf.BertModel(tf.BertConfig(**{**config, **kw}))


@pytest.mark.parametrize("act", ["gelu", "relu"])
@pytest.mark.parametrize("left", [False, True])
def test_bert(act, left):
    m = f32_double(bert(hidden_act=act))
    g = shmrt.load(m, max_seq_len=7)
    assert g.inputs == [("input_ids", (7,)), ("attention_mask", (7,)), ("token_type_ids", (7,))]
    assert g.outputs == ["last_hidden_state", "pooler_output"]
    rng = np.random.default_rng(0)
    ids, types = rng.integers(1, 40, (3, 7)), rng.integers(0, 3, (3, 7))
    pad = padding([7, 5, 2], 7, left=left)
    attention_mask = (~pad).astype(np.int64)
    ref = forward(g, {"input_ids": ids, "attention_mask": attention_mask, "token_type_ids": types})
    out = hf_run(m, input_ids=ids, attention_mask=attention_mask, token_type_ids=types)
    h = out.last_hidden_state.numpy()
    err = compare(h, ref["last_hidden_state"], pad)
    first = h[np.arange(3), (~pad).argmax(axis=1)]  # transformers pools position 0: the first real token when
    with torch.no_grad():                            # padding is on the right
        pooled = m.pooler.activation(m.pooler.dense(torch.from_numpy(first))).numpy()
    if not left:
        assert rel_err(out.pooler_output.numpy(), pooled) == 0
    perr = max(rel_err(ref["pooler_output"][i], pooled[i]) for i in range(3))
    print(f"BertModel {act} left={left}: last_hidden_state {err:.2e}, pooler_output {perr:.2e}")
    assert err <= TOL and perr <= TOL


def test_bert_default_length_and_no_pooler():
    m = bert(max_position_embeddings=9)
    assert [s for _, s in shmrt.load(m).inputs] == [(9,)] * 3
    m = tf.BertModel(m.config, add_pooling_layer=False)
    assert shmrt.load(m).outputs == ["last_hidden_state"]


def test_converted_bert_saves_and_loads_back(tmp_path):
    g = shmrt.load(bert(), max_seq_len=5)
    g.save(tmp_path / "bert.shmrt")
    back = shmrt.load(str(tmp_path / "bert.shmrt"))
    assert back.inputs == g.inputs and back.outputs == g.outputs
    x = [np.array([[2, 3, 4, 0, 0]]), np.array([[1, 1, 1, 0, 0]]), np.array([[0, 0, 1, 0, 0]])]
    a, b = forward(g, x), forward(back, x)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_distilbert():
    m = f32_double(tf.DistilBertModel(tf.DistilBertConfig(vocab_size=40, dim=16, n_layers=2, n_heads=4, hidden_dim=32,
                                                          max_position_embeddings=10)))
    g = shmrt.load(m, max_seq_len=6)
    assert [n for n, _ in g.inputs] == ["input_ids", "attention_mask"] and g.outputs == ["last_hidden_state"]
    ids = np.random.default_rng(1).integers(1, 40, (3, 6))
    pad = padding([6, 4, 1], 6)
    attention_mask = (~pad).astype(np.int64)
    ref = forward(g, [ids, attention_mask])["last_hidden_state"]
    h = hf_run(m, input_ids=ids, attention_mask=attention_mask).last_hidden_state.numpy()
    err = compare(h, ref, pad)
    print(f"DistilBertModel: {err:.2e}")
    assert err <= TOL


@pytest.mark.parametrize("qkv_bias", [True, False])
def test_vit(qkv_bias):
    m = f32_double(tf.ViTModel(tf.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=32, image_size=8, patch_size=4, num_channels=3,
                                            qkv_bias=qkv_bias)))
    g = shmrt.load(m)
    assert g.inputs == [("pixel_values", (3, 8, 8))] and g.outputs == ["last_hidden_state", "pooler_output"]
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32).astype(np.float64)
    ref = forward(g, x)
    out = hf_run(m, pixel_values=x)
    err = max(rel_err(out.last_hidden_state.numpy(), ref["last_hidden_state"]),
              rel_err(out.pooler_output.numpy(), ref["pooler_output"]))
    print(f"ViTModel qkv_bias={qkv_bias}: {err:.2e}")
    assert err <= TOL


# -- refusals ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, match", [
    (lambda: bert(position_embedding_type="relative_key"),
     r"from_torch: BertModel: config.position_embedding_type='relative_key' \(relative position scores inside "
     r"attention: shmrt's attention takes no position bias\) is not supported; expected 'absolute' or None"),
    (lambda: bert(is_decoder=True), r"config.is_decoder=True \(a causal decoder with a key/value cache\) is not "
                                    r"supported; expected False"),
    (lambda: bert(hidden_act="gelu_new"), r"config.hidden_act='gelu_new' \(shmrt's encoder layers compute relu or "
                                          r"exact gelu\) is not supported; expected 'gelu' or 'relu'"),
    (lambda: tf.BertForSequenceClassification(bert().config),
     r"the transformers class BertForSequenceClassification is not supported; supported: BertModel, "
     r"DistilBertModel, ViTModel; for a model with a task head, convert its base model \(model.bert\)"),
    (lambda: tf.RobertaModel(tf.RobertaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1,
                                              num_attention_heads=4, intermediate_size=32)),
     r"the transformers class RobertaModel is not supported"),
])
def test_refused(make, match):
    with pytest.raises(ValueError, match=match):
        shmrt.load(make())


def test_options_are_checked():
    with pytest.raises(ValueError, match=r"max_seq_len must be an int in \[1, 12\] \(config.max_position_embeddings\), "
                                         r"got 13"):
        shmrt.load(bert(), max_seq_len=13)
    with pytest.raises(TypeError, match=r"takes no input_shape"):
        shmrt.load(bert(), input_shape=(7,))
    with pytest.raises(TypeError, match=r"max_seq_len is the sequence length of a Hugging Face model's inputs"):
        shmrt.load(torch.nn.Linear(2, 3), max_seq_len=4)
