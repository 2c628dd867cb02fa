"""Per-feature preprocessing and normalisation over [N, F]: the affine steps (Standardize, MinMaxScale,
BatchNorm1d), Select and Dropout."""
from __future__ import annotations

import numpy as np

from shmrt.ir.base import Layer, _features_shape, _param, _positive_int, _vector


class _Affine(Layer):
    """y = x * scale + shift per feature; ``affine()`` gives (scale, shift) in float64."""

    features: int

    def _vectors(self, **arrays):
        """Per-feature parameters: the first fixes the feature count."""
        name = type(self).__name__
        first_name, first = next(iter(arrays.items()))
        first = np.asarray(first)
        if first.ndim != 1 or first.size == 0:
            raise ValueError(f"{name}: {first_name} must be a non-empty 1-D array, got shape {first.shape}")
        self.features = first.size
        for k, v in arrays.items():
            self.params[k] = _param(v, (self.features,), k, name, 1)

    def input_shape(self):
        return (self.features,)

    output_shape = _features_shape


class Standardize(_Affine):
    """Preprocessing: y = (x - mean) / std, per feature (scikit-learn's StandardScaler)."""

    def __init__(self, mean, std):
        super().__init__()
        self._vectors(mean=mean, std=std)
        if np.any(self.params["std"] == 0) or not np.all(np.isfinite(self.params["std"])):
            raise ValueError("Standardize: std must be finite and non-zero for every feature")

    def affine(self):
        s = 1.0 / self.params["std"].astype(np.float64)
        return s, -self.params["mean"].astype(np.float64) * s

    def __repr__(self):
        return f"Standardize({self.features} features)"


class MinMaxScale(_Affine):
    """Preprocessing: y = (x - min) / (max - min), per feature (to [0, 1])."""

    def __init__(self, min, max):
        super().__init__()
        self._vectors(min=min, max=max)
        if np.any(self.params["max"] <= self.params["min"]):
            raise ValueError("MinMaxScale: max must be greater than min for every feature")

    def affine(self):
        lo, hi = self.params["min"].astype(np.float64), self.params["max"].astype(np.float64)
        s = 1.0 / (hi - lo)
        return s, -lo * s

    def __repr__(self):
        return f"MinMaxScale({self.features} features)"


class BatchNorm1d(_Affine):
    """Inference BatchNorm over features: folded into a Linear right before it
    at compile time, otherwise a per-feature affine step."""

    def __init__(self, num_features, eps=1e-5, weight=None, bias=None, running_mean=None, running_var=None):
        super().__init__()
        self.features = _positive_int(num_features, "num_features", type(self).__name__)
        self.eps = float(eps)
        n, name = self.features, f"{type(self).__name__}({num_features})"
        self.params["weight"] = _vector(weight, n, "weight", name, 1.0)
        self.params["bias"] = _vector(bias, n, "bias", name, 0.0)
        self.params["running_mean"] = _vector(running_mean, n, "running_mean", name, 0.0)
        self.params["running_var"] = _vector(running_var, n, "running_var", name, 1.0)
        if np.any(self.params["running_var"] < 0):
            raise ValueError(f"{name}: running_var must be >= 0")

    def affine(self):
        p = {k: v.astype(np.float64) for k, v in self.params.items()}
        s = p["weight"] / np.sqrt(p["running_var"] + self.eps)
        return s, p["bias"] - p["running_mean"] * s

    def config(self):
        return {"num_features": self.features, "eps": self.eps}

    def __repr__(self):
        return f"BatchNorm1d({self.features})"


class Select(Layer):
    """Preprocessing: keep the features ``indices`` (a list of ints, or a slice)."""

    def __init__(self, indices):
        super().__init__()
        self.indices = indices
        if not isinstance(indices, slice):
            idx = np.asarray(indices)
            if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu":
                raise ValueError(f"Select: indices must be a slice or a non-empty 1-D list of ints, got {indices!r}")

    def resolve(self, features):
        if isinstance(self.indices, slice):
            idx = np.arange(features)[self.indices]
        else:
            idx = np.asarray(self.indices, dtype=np.int64)
            bad = idx[(idx < -features) | (idx >= features)]
            if bad.size:
                raise ValueError(f"Select: index {int(bad[0])} is out of range for {features} features")
            idx = idx % features
        if idx.size == 0:
            raise ValueError(f"Select({self.indices!r}) selects no feature out of {features}")
        return idx

    def output_shape(self, shape):
        if len(shape) != 1:
            raise ValueError(f"Select works on dense [N, F] inputs, got (N, {', '.join(map(str, shape))})")
        return (self.resolve(shape[0]).size,)

    def config(self):
        # JSON has no slice: a slice is recorded as {"slice": [start, stop, step]}
        idx = self.indices
        return {"indices": {"slice": [idx.start, idx.stop, idx.step]} if isinstance(idx, slice)
                else [int(i) for i in np.asarray(idx)]}

    @classmethod
    def from_config(cls, config, params):
        indices = config.get("indices")
        if isinstance(indices, dict):
            if not isinstance(indices.get("slice"), list) or len(indices["slice"]) != 3:
                raise ValueError(f"Select: a recorded slice must be {{'slice': [start, stop, step]}}, got {indices!r}")
            config = dict(config, indices=slice(*indices["slice"]))
        return cls(**config, **params)

    def __repr__(self):
        return f"Select({self.indices!r})"


class Dropout(Layer):
    """Identity at inference (kept so that models move in unchanged)."""

    def __init__(self, p=0.5):
        super().__init__()
        if not 0 <= p <= 1:
            raise ValueError(f"Dropout: p must be in [0, 1], got {p!r}")
        self.p = p

    def config(self):
        return {"p": self.p}
