"""Fitted scikit-learn estimators as shmrt models, with scikit-learn's meaning of predict.

Supported: LinearRegression, Ridge, LogisticRegression (binary and
multinomial), MLPClassifier, MLPRegressor, and a Pipeline of StandardScaler /
MinMaxScaler steps ending in one of them.  A classifier's model outputs one
probability per class, in ``classes_`` order (``predict_proba``), and
carries the labels so that ``CompiledModel.predict`` returns them.
"""
from __future__ import annotations

import numpy as np

from shmrt.ir import layers as L

SUPPORTED = ("LinearRegression, Ridge, LogisticRegression, MLPClassifier, MLPRegressor, and a Pipeline of "
             "StandardScaler / MinMaxScaler steps ending in one of them")
_ACTS = {"relu": L.ReLU, "tanh": L.Tanh, "logistic": L.Sigmoid, "identity": None}


def _fitted(est, *attrs):
    missing = [a for a in attrs if not hasattr(est, a)]
    if missing:
        raise ValueError(f"{type(est).__name__} is not fitted (no {', '.join(missing)}): call fit() before "
                         f"shmrt.load")


def _labels(classes):
    labels = np.asarray(classes)
    if labels.dtype == object:  # string labels come as an object array
        labels = labels.astype(str)
    return labels


def _binary_head(w, b):
    """One logit z per row -> probabilities [1 - sigmoid(z), sigmoid(z)] as a 2-way softmax of [0, z]."""
    w = np.asarray(w, np.float64).reshape(1, -1)
    weight = np.vstack([np.zeros_like(w), w])
    bias = np.array([0.0, float(np.ravel(b)[0])])
    return [L.Linear(w.shape[1], 2, weight=weight, bias=bias), L.Softmax()]


def _linear(est):
    _fitted(est, "coef_", "intercept_")
    coef = np.asarray(est.coef_, np.float64)
    model = L.linear_regression(coef, est.intercept_)
    return model.layers, dict(output_1d=coef.ndim == 1)


def _is_multinomial(est, features) -> bool:
    """Whether the estimator's own predict_proba is the softmax of its decision function (the rule for
    which solver and multi_class setting gives which has changed across scikit-learn versions, so ask
    the estimator, on a few probe rows)."""
    if getattr(est, "multi_class", "auto") == "ovr":
        return False
    rng = np.random.default_rng(0)
    probe = np.vstack([np.zeros(features), rng.standard_normal((4, features))])
    d = est.decision_function(probe)
    e = np.exp(d - d.max(axis=1, keepdims=True))
    return bool(np.abs(est.predict_proba(probe) - e / e.sum(axis=1, keepdims=True)).max() <= 1e-9)


def _logistic(est):
    _fitted(est, "coef_", "intercept_", "classes_")
    coef = np.asarray(est.coef_, np.float64)
    classes = _labels(est.classes_)
    if classes.size > 2 and not _is_multinomial(est, coef.shape[1]):
        raise ValueError("LogisticRegression fitted one-vs-rest (multi_class='ovr', or the liblinear solver) "
                         "with more than 2 classes is not supported: its probabilities are normalised sigmoids; "
                         "expected the multinomial (softmax) model")
    if classes.size == 2:
        return _binary_head(coef[0], est.intercept_), dict(classes=classes)
    return [L.Linear(coef.shape[1], coef.shape[0], weight=coef, bias=est.intercept_), L.Softmax()], \
        dict(classes=classes)


def _mlp(est, classifier):
    _fitted(est, "coefs_", "intercepts_", "out_activation_")
    if est.activation not in _ACTS:
        raise ValueError(f"{type(est).__name__}: activation {est.activation!r} is not supported; expected one of "
                         f"{sorted(_ACTS)}")
    def dense(w, b):  # sklearn keeps coefs_ as [in, out]
        return L.Linear(w.shape[0], w.shape[1], weight=np.asarray(w, np.float64).T, bias=b)

    layers = []
    for w, b in zip(est.coefs_[:-1], est.intercepts_[:-1]):
        layers.append(dense(w, b))
        if _ACTS[est.activation] is not None:
            layers.append(_ACTS[est.activation]())
    w, b = np.asarray(est.coefs_[-1], np.float64), est.intercepts_[-1]
    if not classifier:
        if est.out_activation_ != "identity":
            raise ValueError(f"MLPRegressor with output activation {est.out_activation_!r} (loss="
                             f"{getattr(est, 'loss', '?')!r}) is not supported; expected loss='squared_error'")
        return layers + [dense(w, b)], dict(output_1d=w.shape[1] == 1)
    classes = _labels(est.classes_)
    if est.out_activation_ == "softmax":
        layers += [dense(w, b), L.Softmax()]
    elif est.out_activation_ == "logistic" and w.shape[1] == 1 and classes.ndim == 1 and classes.size == 2:
        layers += _binary_head(w[:, 0], b)
    else:
        raise ValueError(f"MLPClassifier with output activation {est.out_activation_!r} and {w.shape[1]} outputs "
                         f"(multilabel?) is not supported; expected a binary or multiclass classifier")
    return layers, dict(classes=classes)


def _scaler(step):
    name = type(step).__name__
    if name == "StandardScaler":
        _fitted(step, "n_features_in_")
        n = step.n_features_in_
        mean = step.mean_ if getattr(step, "with_mean", True) and step.mean_ is not None else np.zeros(n)
        scale = step.scale_ if getattr(step, "with_std", True) and step.scale_ is not None else np.ones(n)
        return L.Standardize(mean=mean, std=scale)
    if name == "MinMaxScaler":
        _fitted(step, "scale_", "min_")
        if getattr(step, "clip", False):
            raise ValueError("MinMaxScaler(clip=True) is not supported; expected clip=False")
        # sklearn: x * scale_ + min_ ; MinMaxScale: (x - lo) / (hi - lo)  =>  lo = -min_/scale_, hi = lo + 1/scale_
        scale, mn = np.asarray(step.scale_, np.float64), np.asarray(step.min_, np.float64)
        lo = -mn / scale
        return L.MinMaxScale(min=lo, max=lo + 1.0 / scale)
    raise TypeError(f"Pipeline step {name} is not supported; expected StandardScaler or MinMaxScaler before "
                    f"the final estimator")


def _final(est):
    name = type(est).__name__
    if name in ("LinearRegression", "Ridge"):
        return _linear(est)
    if name == "LogisticRegression":
        return _logistic(est)
    if name in ("MLPClassifier", "MLPRegressor"):
        return _mlp(est, classifier=name == "MLPClassifier")
    raise TypeError(f"shmrt.load: scikit-learn {name} is not supported; expected {SUPPORTED}")


def from_sklearn(est) -> L.Sequential:
    """The fitted estimator (or Pipeline) ``est`` as a shmrt.Sequential."""
    pre = []
    if type(est).__name__ == "Pipeline":
        steps = [s for _, s in est.steps if s not in (None, "passthrough")]
        if not steps:
            raise ValueError("shmrt.load: the Pipeline has no steps")
        pre = [_scaler(s) for s in steps[:-1]]
        est = steps[-1]
    layers, meta = _final(est)
    return L.Sequential(pre + layers, **meta)
