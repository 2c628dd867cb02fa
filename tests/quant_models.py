"""Trained models, held-out data and error figures for the compressed-weight accuracy tests
(test_quant_accuracy.py).

Two models trained inside the tests, seeded and deterministic, a few seconds each:
- ``digits_mlp``: scikit-learn's digits (bundled, no download), MinMaxScaler + MLPClassifier(256, 128),
  loaded with shmrt.load; 1,347 rows to train, 450 held out.
- ``sequence_lstm``: torch LSTM(8, 64) -> last step -> Linear(64, 10), trained on a synthetic task (which
  of 10 random prototype sequences, 20 steps x 8 features, plus Gaussian noise, a sequence is), loaded
  with shmrt.load; 2,000 held-out sequences.

``dequantized`` is an independent numpy model of the weight formats (the issue's definitions: bf16 by
round-to-nearest-even, int8 symmetric per output row, int4 Q4_0's blocks of 32 inputs with one scale each),
used to predict the error the formats' weights alone cause; ``figures`` computes the error figures of
one output against float32 and float64; ``ROWS`` collects them for the printed table.
"""
from __future__ import annotations

import copy
import functools

import numpy as np

import shmrt
from shmrt.ir import layers as L
from shmrt.ir.reference import forward

FORMATS = ("bf16", "int8", "int4")
ROWS = []  # figures() dicts, printed as a table at the end of the test module


# -- the trained models -----------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def digits_mlp():
    """(estimator, shmrt model of logits, X_test float32, y_test): the loaded classifier without its
    Softmax, so the error figures are of the logits (the probabilities saturate, hiding errors);
    the argmax, hence top-1, is the same."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency

    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=450, random_state=0, stratify=y)
    est = make_pipeline(MinMaxScaler(), MLPClassifier(hidden_layer_sizes=(256, 128), max_iter=300, random_state=0))
    with threadpool_limits(1):  # ~2.5 s; two BLAS threads on a busy 2-core machine took 20x longer
        est.fit(X_tr, y_tr)
    loaded = shmrt.load(est)
    assert isinstance(loaded.layers[-1], shmrt.Softmax), loaded.layers
    logits = shmrt.Sequential(loaded.layers[:-1])
    return est, logits, X_te.astype(np.float32), y_te


class _LSTMClassifier:
    """Built lazily (torch imported only when the LSTM is asked for)."""

    @staticmethod
    def make():
        import torch
        from torch import nn

        class LSTMClassifier(nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm = nn.LSTM(8, 64, batch_first=True)
                self.fc = nn.Linear(64, 10)

            def forward(self, x):
                out, _ = self.lstm(x)
                return self.fc(out[:, -1])

        return torch, LSTMClassifier


SEQ_T, SEQ_F, SEQ_CLASSES, SEQ_NOISE = 20, 8, 10, 1.6


def sequences(n, seed):
    """n noisy copies of the 10 fixed prototypes (seed 0): ([n, 20, 8] float32, labels)."""
    protos = np.random.default_rng(0).standard_normal((SEQ_CLASSES, SEQ_T, SEQ_F))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, SEQ_CLASSES, n)
    x = protos[labels] + SEQ_NOISE * rng.standard_normal((n, SEQ_T, SEQ_F))
    return x.astype(np.float32), labels


@functools.lru_cache(maxsize=None)
def sequence_lstm():
    """(torch module in eval mode, shmrt model, X_test float32 [2000, 20, 8], y_test)."""
    torch, LSTMClassifier = _LSTMClassifier.make()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic and polite on a shared 2-core machine
    try:
        torch.manual_seed(0)
        m = LSTMClassifier()
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        x_tr, y_tr = sequences(4096, seed=1)
        x_tr, y_tr = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
        gen = torch.Generator().manual_seed(0)
        for _ in range(6):  # epochs of 32 batches of 128
            for idx in torch.randperm(len(x_tr), generator=gen).split(128):
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(m(x_tr[idx]), y_tr[idx])
                loss.backward()
                opt.step()
    finally:
        torch.set_num_threads(threads)
    m.eval()
    x_te, y_te = sequences(2000, seed=2)
    return m, shmrt.load(m, input_shape=(SEQ_T, SEQ_F)), x_te, y_te


def torch_forward64(m, x):
    """The torch module's own forward in float64 (a copy; the module stays float32)."""
    import torch
    with torch.no_grad():
        return copy.deepcopy(m).double()(torch.from_numpy(np.asarray(x, np.float64))).numpy()


# -- an independent model of the formats' weights -----------------------------------------------------

def bf16_round(w):
    """float32 -> the nearest bfloat16 (ties to even), as float32."""
    bits = np.ascontiguousarray(w, np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def int8_rows(w):
    """Symmetric per-row int8: scale max|row| / 127, round to nearest; dequantized float32."""
    s = np.abs(w).max(axis=1, keepdims=True) / 127.0
    s = np.where(s > 0, s, 1.0)
    return (np.clip(np.rint(w / s), -127, 127) * s).astype(np.float32)


def int4_blocks(w, block=32):
    """Q4_0's blocks: 32 weights along the inputs share one scale s = (the block's weight of largest
    magnitude) / -8, q = round(w / s) clipped to -8..7 (the last block of a row may be short);
    dequantized float32."""
    out = np.empty_like(w)
    for k0 in range(0, w.shape[1], block):
        b = w[:, k0:k0 + block].astype(np.float64)
        s = np.take_along_axis(b, np.abs(b).argmax(axis=1)[:, None], axis=1) / -8.0
        s = np.where(s != 0, s, 1.0)
        out[:, k0:k0 + block] = np.clip(np.rint(b / s), -8, 7) * s
    return out


ROUND = {"bf16": bf16_round, "int8": int8_rows, "int4": int4_blocks}


def compressed_params(layer):
    """The names of the weights a format compresses in ``layer``: a Linear's weight when it has >= 8
    outputs, every recurrent weight matrix; none elsewhere (those layers stay float32)."""
    if isinstance(layer, L.Linear):
        return ["weight"] if layer.out_features >= 8 else []
    if isinstance(layer, (L.LSTM, L.GRU, L.RNN)):
        return [k for k in layer.params if k.startswith("weight_")]
    return []


def dequantized(model, fmt):
    """A copy of ``model`` whose compressed weights are replaced by ``fmt``'s rounding of them."""
    m = copy.deepcopy(model)
    for layer in m.layers:
        for k in compressed_params(layer):
            layer.params[k] = ROUND[fmt](layer.params[k])
    return m


def weight_errors(model, fmt):
    """Per compressed weight: max |w - fmt(w)| / max |w| (the worst weight against the layer's range)."""
    out = {}
    for i, layer in enumerate(model.layers):
        for k in compressed_params(layer):
            w = layer.params[k].astype(np.float64)
            out[f"{i}.{k}"] = float(np.abs(w - ROUND[fmt](layer.params[k])).max() / np.abs(w).max())
    return out


def weight_errors_fro(model, fmt):
    """Per layer index: ||W - fmt(W)|| / ||W|| (Frobenius) over all the layer's compressed weights, as
    shmrt.compare's "weights_rel_err" defines it."""
    out = {}
    for i, layer in enumerate(model.layers):
        names = compressed_params(layer)
        if names:
            ws = [layer.params[k].astype(np.float64) for k in names]
            num = sum(float(np.sum((w - ROUND[fmt](layer.params[k])) ** 2)) for w, k in zip(ws, names))
            out[i] = (num / sum(float(np.sum(w ** 2)) for w in ws)) ** 0.5
    return out


# -- figures --------------------------------------------------------------------------------------------

def top1(a, b):
    return float(np.mean(np.argmax(a, -1) == np.argmax(b, -1)))


def rel(y, ref):
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))


def figures(model_name, fmt, y, y32, y64, labels=None, emulated=None, classes=True, **tags):
    """One row of the table: top-1 agreement of ``y`` with float32 (y32) and with the float64 reference
    (y64), max abs and relative error against both, accuracy against the labels, and the relative error
    the independent model of the format's weights predicts (``emulated``: that model's float64 output).
    classes=False: the outputs are not class scores (the bench's mlp and lstm); no top-1 figures."""
    row = dict(model=model_name, fmt=fmt, **tags)
    row["agree32"], row["agree64"] = (top1(y, y32), top1(y, y64)) if classes else (None, None)
    row["max_abs"] = float(np.abs(np.asarray(y, np.float64) - y32).max())
    row["rel32"], row["rel64"] = rel(y, y32), rel(y, y64)
    row["acc"] = float(np.mean(np.argmax(y, -1) == labels)) if labels is not None else None
    row["emu64"] = rel(emulated, y64) if emulated is not None else None
    ROWS.append(row)
    return row


def table(rows=None):
    rows = ROWS if rows is None else rows
    head = (f"{'model':<12} {'format':<7} {'workers':>7} {'strategy':<8} {'top1 vs f32':>11} {'vs f64':>7} "
            f"{'max|d| f32':>10} {'rel f32':>8} {'rel f64':>8} {'weights-only':>12} {'accuracy':>8}")
    lines = [head, "-" * len(head)]

    def pct(v):
        return "" if v is None else f"{100 * v:.2f}%"

    def sci(v):
        return "" if v is None else f"{v:.2e}"

    for r in rows:
        lines.append(f"{r['model']:<12} {r['fmt']:<7} {str(r.get('workers', '')):>7} {r.get('strategy', ''):<8} "
                     f"{pct(r['agree32']):>11} {pct(r['agree64']):>7} {sci(r['max_abs']):>10} {sci(r['rel32']):>8} "
                     f"{sci(r['rel64']):>8} {sci(r['emu64']):>12} {pct(r['acc']):>8}")
    return "\n".join(lines)


def reference64(model, x):
    return forward(model, x, np.float64)
