"""Reading an ONNX model's parts: the onnx package itself (imported lazily), tensors, attributes,
and a node's fit to its op's schema."""
from __future__ import annotations

import numpy as np

from shmrt.frontends.onnx.errors import UnsupportedONNX

# 23-25 changed only element types of the ops shmrt reads (float4/8 variants, int2/uint2; TopK-24: bfloat16)
MIN_OPSET, MAX_OPSET = 13, 25


def onnx_module():
    """The onnx package; import shmrt never needs it."""
    try:
        import onnx  # noqa: F401
        from onnx import numpy_helper  # noqa: F401  (makes onnx.numpy_helper an attribute)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('shmrt: reading ONNX models needs the onnx package: pip install "shmrt[onnx]"') from e
    return onnx


def tensor_array(onnx, t, what=None) -> np.ndarray:
    """A TensorProto's values; external data must have been read (from inside the model's folder)
    before, so that onnx never resolves a location against the current directory."""
    what = what or f"tensor {t.name!r}"
    if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
        raise UnsupportedONNX(f"ONNX {what} keeps its data in an external file that was not read from "
                              f"the model's folder; load the model with shmrt.load(path)")
    try:
        return onnx.numpy_helper.to_array(t)
    except Exception as e:  # the model's bytes: a data type onnx does not know, raw data of the wrong size, ...
        raise UnsupportedONNX(f"ONNX {what}: cannot read tensor data ({type(e).__name__}: {e}); expected data "
                              f"of data type {t.data_type} that fills dims {list(t.dims)}") from None


def attrs(onnx, node) -> dict:
    """A node's attributes as Python values (strings decoded)."""
    out = {}
    for a in node.attribute:
        if a.ref_attr_name:
            raise UnsupportedONNX(f"ONNX node {node.name or node.op_type}: attribute references are not supported")
        if a.type not in _ATTR_TYPES:
            raise UnsupportedONNX(f"ONNX node {node.name or node.op_type} (op {node.op_type}): attribute {a.name!r} "
                                  f"has an unknown type {a.type}; expected one of ONNX's attribute types")
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list):
            v = [x.decode() if isinstance(x, bytes) else x for x in v]
        out[a.name] = v
    return out


_ATTR_TYPES = frozenset(range(15))  # AttributeProto.UNDEFINED .. TYPE_PROTOS


def check_node(onnx, node, opset) -> str:
    """'' if the node fits its op's schema at ``opset`` (input and output counts, required inputs and
    attributes, attribute types), else what does not fit.  An op without a schema there (one shmrt's
    rewrites make, or an unknown op, which the walk refuses) is not checked."""
    try:
        schema = onnx.defs.get_schema(node.op_type, max_inclusive_version=opset, domain="")
    except onnx.defs.SchemaError:
        return ""
    n_in, n_out = len(node.input), len(node.output)
    if not schema.min_input <= n_in <= schema.max_input:
        return f"has {n_in} inputs; {node.op_type}-{schema.since_version} takes {schema.min_input}..{schema.max_input}"
    if not schema.min_output <= n_out <= schema.max_output:
        return (f"has {n_out} outputs; {node.op_type}-{schema.since_version} gives "
                f"{schema.min_output}..{schema.max_output}")
    single = onnx.defs.OpSchema.FormalParameterOption.Single
    for k, (formal, name) in enumerate(zip(schema.inputs, node.input)):
        if formal.option == single and not name:
            return f"required input {k} ({formal.name}) is empty"
    given = {a.name: a.type for a in node.attribute if not a.ref_attr_name}
    for name, sa in schema.attributes.items():
        if sa.required and name not in given:
            return f"required attribute {name} is missing"
        if name in given and given[name] != int(sa.type):
            names = {v: k for k, v in onnx.AttributeProto.AttributeType.items()}
            return (f"attribute {name} has type {names.get(given[name], given[name])}; "
                    f"expected {names.get(int(sa.type), int(sa.type))}")
    return ""
