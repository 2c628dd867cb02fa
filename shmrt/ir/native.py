"""The native model file, and the same architecture record in .npz and .safetensors.

A model file holds two things: the architecture, a JSON record of each
layer's class and constructor arguments (``config``), and the parameters,
float32 arrays named ``"{layer index}.{PyTorch name}"``.  The containers:

- native / ``.npz``: an uncompressed numpy ``.npz`` (a zip of ``.npy``
  files) with the JSON in an extra uint8 entry ``__shmrt__``; read with
  ``allow_pickle=False``, so no file can make us unpickle.
- ``.safetensors``: the tensors, with the JSON in the header's metadata
  under ``"shmrt"`` (safetensors' numpy API; extra ``shmrt[safetensors]``).

Only shmrt's built-in layer classes can be named by a file: each registers
itself here as it is defined (``Layer.__init_subclass__``), and says its own
constructor arguments (``config()``) and how to call itself back with them
(``from_config``).  This module imports no layer module -- the layers import
it, to register and to save -- so the classes reach it only through
``register`` and ``register_model``.  A round trip is bit-exact (the arrays
are stored as they are).
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

FORMAT = "shmrt-model"
VERSION = 1
_KEY = "__shmrt__"

_CLASSES: dict = {}  # the layer classes a file may name, by class name
_model_class = None  # Sequential, the class of a whole model
_graph_class = None  # Graph, the class of a graph model


def register(cls) -> None:
    """Let files name the layer class ``cls`` (by its class name, which must be new)."""
    if cls.__name__ in _CLASSES:
        raise TypeError(f"layer class name {cls.__name__!r} is taken by {_CLASSES[cls.__name__]!r}; "
                        f"a file names a layer by its class name, so each must be unique")
    _CLASSES[cls.__name__] = cls


def register_model(cls, graph=False) -> None:
    """The class that ``build`` makes a whole model with (called once by shmrt.ir.model), or with
    graph=True a graph model with (once, by shmrt.ir.graph)."""
    global _model_class, _graph_class
    if graph:
        _graph_class = cls
    else:
        _model_class = cls


def architecture(model) -> dict:
    """The JSON-able record of ``model``'s architecture (no arrays)."""
    is_graph = _graph_class is not None and isinstance(model, _graph_class)
    if not is_graph and (_model_class is None or not isinstance(model, _model_class)):
        raise TypeError(f"expected a shmrt.Sequential or a shmrt.Graph, got {type(model).__name__}")
    for l in model.layers:
        if _CLASSES.get(type(l).__name__) is not type(l):
            raise TypeError(f"cannot save layer {l!r}: only shmrt's built-in layers are saved "
                            f"({', '.join(sorted(_CLASSES))})")
    arch = {"format": FORMAT, "version": VERSION,
            "layers": [{"class": type(l).__name__, "config": l.config(), "params": list(l.params)}
                       for l in model.layers],
            "input_shape": list(model._input_shape) if model._input_shape is not None else None,
            "output_1d": model.output_1d, "classes": None}
    if model.classes is not None:
        arch["classes"] = {"dtype": model.classes.dtype.str, "labels": model.classes.tolist()}
    if is_graph:  # layer i is node i's
        arch["graph"] = {"inputs": [[n, None if s is None else list(s)] for n, s in model.inputs],
                         "nodes": [[list(n.inputs), n.output] for n in model.nodes], "outputs": list(model.outputs),
                         "named_outputs": model.named_outputs}
    return arch


def tensors(model) -> dict:
    return {f"{i}.{k}": v for i, l in enumerate(model.layers) for k, v in l.params.items()}


def build(arch, arrays, where: str):
    """The model described by ``arch``, with parameters looked up in ``arrays`` (a name -> array mapping)."""
    if not isinstance(arch, dict) or arch.get("format") != FORMAT:
        raise ValueError(f"{where}: not a shmrt model record (expected format {FORMAT!r})")
    if arch.get("version") != VERSION:
        raise ValueError(f"{where}: shmrt model record version {arch.get('version')!r}; this shmrt reads "
                         f"version {VERSION}")
    layers = []
    if not isinstance(arch.get("layers"), list) or not arch["layers"]:
        raise ValueError(f"{where}: the model record has no layers")
    for i, rec in enumerate(arch["layers"]):
        if not isinstance(rec, dict) or not isinstance(rec.get("config"), dict) or not isinstance(
                rec.get("params"), list):
            raise ValueError(f"{where}: layer {i}'s record must hold class, config and params, got {rec!r}")
        cls = _CLASSES.get(rec.get("class"))
        if cls is None:
            raise ValueError(f"{where}: layer {i} has unknown class {rec.get('class')!r}; expected one of "
                             f"{', '.join(sorted(_CLASSES))}")
        params = {}
        for name in rec["params"]:
            key = f"{i}.{name}"
            if key not in arrays:
                raise ValueError(f"{where}: parameter {key!r} of layer {i} ({rec['class']}) is missing")
            arr = np.asarray(arrays[key])
            if arr.dtype != np.float32:
                raise ValueError(f"{where}: parameter {key!r} must be float32, got {arr.dtype}")
            params[name] = arr
        try:
            layers.append(cls.from_config(rec["config"], params))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}: layer {i} ({rec['class']}): {e}") from None
    classes = arch.get("classes")
    if classes is not None:
        classes = np.asarray(classes["labels"], dtype=np.dtype(classes["dtype"]))
    g = arch.get("graph")
    if g is not None:
        try:
            nodes = [(layer, list(ins), out) for layer, (ins, out) in zip(layers, g["nodes"], strict=True)]
            inputs = [(n, None if s is None else tuple(s)) for n, s in g["inputs"]]
            return _graph_class.from_nodes(inputs, nodes, list(g["outputs"]), classes=classes,
                                           output_1d=arch.get("output_1d", False),
                                           named_outputs=bool(g.get("named_outputs")))
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{where}: the graph record is malformed: {type(e).__name__}: {e}") from None
    return _model_class(layers, input_shape=arch.get("input_shape"), classes=classes,
                        output_1d=arch.get("output_1d", False))


def atomic_write(path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it to ``path``: never a
    half-written file; if ``write`` raises, the temporary file is removed and ``path`` is untouched."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".shmrt-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(model, path) -> None:
    """Write ``model`` to ``path``: safetensors for a ``.safetensors`` name, else the native npz container."""
    path = os.fspath(path)
    if path.lower().endswith(".onnx"):
        raise ValueError(f"model.save({path!r}): shmrt writes its native format (any other name, e.g. .shmrt or "
                         f".npz) or .safetensors, not ONNX; export ONNX from the training framework")
    arch, arrays = architecture(model), tensors(model)
    text = json.dumps(arch)
    if path.lower().endswith(".safetensors"):
        st = _safetensors()
        blob = st.save({k: np.ascontiguousarray(v) for k, v in arrays.items()}, metadata={"shmrt": text})
        atomic_write(path, lambda f: f.write(blob))
    else:
        record = {_KEY: np.frombuffer(text.encode(), dtype=np.uint8), **arrays}
        atomic_write(path, lambda f: np.savez(f, **record))


def _safetensors():
    try:
        import safetensors.numpy as st
    except ImportError:
        raise ImportError('reading or writing .safetensors needs the safetensors package: '
                          'pip install "shmrt[safetensors]"') from None
    return st


def _corrupt(path, e):
    return ValueError(f"{path}: not a readable shmrt model file (truncated or corrupt?): {type(e).__name__}: {e}")


def load_npz(path):
    """The shmrt.Sequential in a native or ``.npz`` model file (never unpickles)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            arch = json.loads(bytes(z[_KEY]).decode()) if _KEY in files else None
            arrays = {k: z[k] for k in files - {_KEY}}
    except (zipfile.BadZipFile, EOFError, OSError, UnicodeDecodeError, ValueError) as e:
        raise _corrupt(path, e) from None
    if arch is None:
        raise ValueError(f"{path}: this .npz holds no shmrt architecture (no {_KEY!r} entry); "
                         f"write model files with model.save(path)")
    return build(arch, arrays, str(path))


def load_safetensors(path):
    """The shmrt.Sequential in a ``.safetensors`` file whose metadata carries the shmrt architecture."""
    _safetensors()
    from safetensors import safe_open
    try:
        with safe_open(os.fspath(path), framework="np") as f:
            meta = f.metadata() or {}
            arch = json.loads(meta["shmrt"]) if "shmrt" in meta else None
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors_rust.SafetensorError, I/O and JSON errors
        raise _corrupt(path, e) from None
    if arch is None:
        raise ValueError(f"{path}: this .safetensors file's metadata holds no shmrt architecture "
                         f"(key 'shmrt'); write model files with model.save(path)")
    return build(arch, arrays, str(path))
