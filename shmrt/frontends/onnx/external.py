"""External-data tensors of an ONNX model, and the rules that confine them.

A tensor may keep its bytes in a file next to the model.  shmrt reads those files itself (onnx
would resolve a location against the current directory): only relative locations that stay inside
the model's folder, after symlinks, are read, with offset and length checked against the file and
the tensor's size.  Nothing here unpickles anything."""
from __future__ import annotations

import os

import numpy as np

from shmrt.frontends.onnx.reading import onnx_module


def _tensors(graph):
    """Every TensorProto of a graph that can hold data: initializers (dense and sparse) and every tensor
    attribute of every node (Constant, ConstantOfShape, ...), subgraphs included."""
    out = list(graph.initializer)
    for sp in graph.sparse_initializer:
        out += [sp.values, sp.indices]
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                out.append(a.t)
            out += list(a.tensors)
            if a.HasField("sparse_tensor"):
                out += [a.sparse_tensor.values, a.sparse_tensor.indices]
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                out += _tensors(sub)
    return out


def resolve_external(model, base_dir):
    """A copy of ``model`` with every external-data tensor read into it (``model`` itself if it has
    none).  A location must be a relative path that stays inside ``base_dir``, the model's folder:
    absolute paths, drive letters, NUL bytes and paths that climb out (``..``, symlinks) are refused,
    and offset/length must fit the data file and the tensor."""
    onnx = onnx_module()
    ext = [t for t in _tensors(model.graph) if t.data_location == onnx.TensorProto.EXTERNAL]
    if not ext:
        return model
    if base_dir is None:
        raise ValueError(f"ONNX model: tensor {ext[0].name!r} keeps its data in an external file; "
                         f"load it with shmrt.frontends.onnx_import.load_onnx_file(path) or pass base_dir=")
    model = onnx.ModelProto.FromString(model.SerializeToString())  # do not modify the caller's proto
    base = os.path.realpath(base_dir)
    for t in _tensors(model.graph):
        if t.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in t.external_data}
        loc = info.get("location", "")
        where = f"ONNX tensor {t.name!r}: external data location {loc!r}"
        if not loc or os.path.isabs(loc) or loc.startswith(("/", "\\")) or (len(loc) > 1 and loc[1] == ":") \
                or "\x00" in loc:
            raise ValueError(f"{where} must be a relative path inside the model's folder {base_dir!r}")
        full = os.path.realpath(os.path.join(base, loc))
        if os.path.commonpath([base, full]) != base or full == base:
            raise ValueError(f"{where} leaves the model's folder {base_dir!r} (resolves to {full!r}); refused")
        try:
            offset = int(info.get("offset", 0) or 0)
            length = int(info["length"]) if info.get("length") not in (None, "") else None
        except ValueError:
            raise ValueError(f"{where}: offset/length must be integers, got {info}") from None
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"{where}: negative offset/length {info}")
        if not os.path.isfile(full):
            raise ValueError(f"{where}: data file {full!r} is missing")
        size = os.path.getsize(full)
        if offset > size or (length is not None and offset + length > size):
            raise ValueError(f"{where}: data file {full!r} is truncated ({size} bytes, need offset {offset} "
                             f"+ length {length})")
        with open(full, "rb") as f:
            f.seek(offset)
            data = f.read(length if length is not None else size - offset)
        if t.data_type != onnx.TensorProto.STRING:
            try:
                itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
            except KeyError:  # a data type onnx does not know: the model's bytes
                raise ValueError(f"{where}: unsupported data type {t.data_type}; expected one of "
                                 f"onnx.TensorProto's data types") from None
            need = int(np.prod(t.dims, dtype=np.int64)) * itemsize
            if len(data) != need:
                raise ValueError(f"{where}: data file {full!r} gives {len(data)} bytes, the tensor "
                                 f"{list(t.dims)} needs {need}")
        del t.external_data[:]
        t.data_location = onnx.TensorProto.DEFAULT
        t.raw_data = data
    return model
